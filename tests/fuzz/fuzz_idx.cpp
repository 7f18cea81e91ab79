// SPDX-License-Identifier: BSL-1.0
// Fuzz target: a plain (not gzip) IDX file held in memory, decoded as
// data::decode_idx does, into float and into uint8. Limits of 1 MiB of data
// bound what one input may ask for: peak memory stays within 4 MiB (1 MiB of
// elements as float) plus 64 KiB.

#include <parallax/data/idx.hpp>
#include <parallax/detail/gzip.hpp>

#include "fuzz_support.hpp"

#include <cstddef>
#include <cstdint>
#include <span>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace parallax;
  const std::span<const std::uint8_t> bytes(data, size);
  if (detail::is_gzip(bytes)) return 0;  // fuzz_gunzip's
  const data::idx_limits limits{.max_dimensions = 4, .max_bytes = std::size_t{1} << 20};
  fuzz::check_reader([&] { data::decode_idx<float>(bytes, "fuzz", limits); },
                     {error_kind::damaged_file, error_kind::incompatible}, 4 * limits.max_bytes + (64 << 10));
  fuzz::check_reader([&] { data::decode_idx<std::uint8_t>(bytes, "fuzz", limits); },
                     {error_kind::damaged_file, error_kind::incompatible}, limits.max_bytes + (64 << 10));
  return 0;
}
