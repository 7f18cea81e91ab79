// SPDX-License-Identifier: BSL-1.0
// Fuzz target: a .npy file, written to a scratch file and read as
// data::read_npy does (into float and into int32) and as a row range (the
// seek path), and its header parsed from memory. Limits of 1 MiB of
// elements bound what one input may ask for: peak memory stays within the
// elements, the 1 MiB read chunk and the header, 3 MiB plus 64 KiB.

#include <parallax/data/npy.hpp>

#include "fuzz_support.hpp"

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace parallax;
  static const fuzz::scratch_file file("input.npy");
  file.write(data, size);
  const std::string& path = file.path;
  const data::npy_limits limits{.max_header_bytes = 4096, .max_dimensions = 8, .max_bytes = std::size_t{1} << 20};
  const std::size_t bound = 3 * limits.max_bytes + (64 << 10);
  const auto kinds = {error_kind::damaged_file, error_kind::incompatible};
  fuzz::check_reader([&] { data::parse_npy_header(std::span<const std::uint8_t>(data, size), "fuzz", limits); },
                     {error_kind::damaged_file, error_kind::incompatible}, bound);
  fuzz::check_reader([&] { data::read_npy<float>(path, limits); }, kinds, bound);
  fuzz::check_reader([&] { data::read_npy<std::int32_t>(path, limits); }, kinds, bound);
  fuzz::check_reader(
      [&] {
        const auto h = data::read_npy_header(path, limits);
        const std::size_t n = h.rows();
        data::read_npy_rows<double>(path, {n / 3, n - n / 3}, limits);
      },
      kinds, bound);
  return 0;
}
