#pragma once
// SPDX-License-Identifier: BSL-1.0
// A fresh temporary directory for the dataset tests, removed with everything
// in it at the end of the test, and files written into it byte by byte.

#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace parallax::test {

struct temp_dir {
  std::filesystem::path path;
  explicit temp_dir(const std::string& tag) {
    std::random_device seed;
    path = std::filesystem::temp_directory_path() /
           ("parallax-test-" + tag + "-" + std::to_string(seed()) + "-" + std::to_string(seed()));
    std::filesystem::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

inline void write_file(const std::string& path, std::string_view data) {
  std::ofstream out(path, std::ios::binary);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  REQUIRE(out.good());
}

inline void write_file(const std::string& path, const std::vector<std::uint8_t>& data) {
  write_file(path, std::string_view(reinterpret_cast<const char*>(data.data()), data.size()));
}

}  // namespace parallax::test
