#pragma once
// SPDX-License-Identifier: BSL-1.0
/// A file a dataset reader takes as untrusted input (IDX, .npy, CSV): how its
/// messages start, and the i/o errors every reader gives alike (no such
/// file, not a regular file, cannot open, a read that stops short).

#include <parallax/core/error.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <ios>
#include <string>
#include <string_view>
#include <system_error>

namespace parallax::detail {

/// "f(): 'name'": the start of every message about one file.
std::string file_where(std::string_view function, const std::string& name);

/// The size in bytes of the regular file at `path`; error_kind::io when it
/// does not exist, cannot be inspected or is not a regular file. `where`
/// starts every message.
std::uintmax_t input_file_size(const std::string& path, const std::string& where);

/// `path` opened for binary reading; error_kind::io when it cannot be.
std::ifstream open_input(const std::string& path, const std::string& where);

/// Reads exactly `count` bytes at byte offset `offset` of `in` into `out`;
/// error_kind::io naming the offset when the read stops short.
void read_exactly(std::ifstream& in, std::uint64_t offset, char* out, std::size_t count, const std::string& where);

// ---------------------------------------------------------------------------
// Implementation
// ---------------------------------------------------------------------------

inline std::string file_where(std::string_view function, const std::string& name) {
  return std::string(function) + ": '" + name + "'";
}

inline std::uintmax_t input_file_size(const std::string& path, const std::string& where) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  PARALLAX_CHECK_KIND(status.type() != fs::file_type::not_found, error_kind::io, where + ": no such file");
  PARALLAX_CHECK_KIND(!ec, error_kind::io, where + ": cannot access the file: " + ec.message());
  PARALLAX_CHECK_KIND(fs::is_regular_file(status), error_kind::io, where + ": not a regular file");
  const std::uintmax_t size = fs::file_size(path, ec);
  PARALLAX_CHECK_KIND(!ec, error_kind::io, where + ": cannot read the file size: " + ec.message());
  return size;
}

inline std::ifstream open_input(const std::string& path, const std::string& where) {
  std::ifstream in(path, std::ios::binary);
  PARALLAX_CHECK_KIND(in.is_open(), error_kind::io, where + ": cannot open the file for reading");
  return in;
}

inline void read_exactly(std::ifstream& in, std::uint64_t offset, char* out, std::size_t count,
                         const std::string& where) {
  in.clear();
  in.seekg(static_cast<std::streamoff>(offset));
  in.read(out, static_cast<std::streamsize>(count));
  const auto got = in ? static_cast<std::streamsize>(count) : in.gcount();
  PARALLAX_CHECK_KIND(got == static_cast<std::streamsize>(count), error_kind::io,
                      where + ": at byte offset " + std::to_string(offset) + ": read error after " +
                          std::to_string(got) + " of " + std::to_string(count) + " bytes");
}

}  // namespace parallax::detail
