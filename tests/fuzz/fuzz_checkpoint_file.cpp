// SPDX-License-Identifier: BSL-1.0
// Fuzz target: a whole checkpoint part file as raw bytes (header, checksum,
// payload), read as io::detail::read_part does, as float or double tensors
// by the header's element code. Peak memory stays within 6 times the file's
// size plus 64 KiB.

#include <parallax/detail/element_type.hpp>
#include <parallax/io/checkpoint_format.hpp>

#include "fuzz_support.hpp"

#include <cstddef>
#include <cstdint>
#include <span>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace parallax;
  const std::span<const char> file(reinterpret_cast<const char*>(data), size);
  const bool is_double = size >= 16 && detail::load_le32(data + 12) == detail::type_code<double>();
  fuzz::check_reader(
      [&] {
        if (is_double)
          io::detail::parse_part<double>(file, "fuzz");
        else
          io::detail::parse_part<float>(file, "fuzz");
      },
      {error_kind::damaged_file}, 6 * size + (64 << 10));
  return 0;
}
