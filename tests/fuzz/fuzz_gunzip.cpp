// SPDX-License-Identifier: BSL-1.0
// Fuzz target: a gzip-compressed IDX file held in memory, decoded as
// data::decode_idx does: gunzip (detail/gzip.hpp, zlib), then the IDX reader.
// With 1 MiB of data allowed, peak memory stays within the decompressed
// bytes (at most 1 MiB plus the header) and their float elements (4 MiB),
// plus 64 KiB.

#include <parallax/data/idx.hpp>
#include <parallax/detail/gzip.hpp>

#include "fuzz_support.hpp"

#include <cstddef>
#include <cstdint>
#include <span>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace parallax;
  const std::span<const std::uint8_t> bytes(data, size);
  if (!detail::is_gzip(bytes)) return 0;  // fuzz_idx's
  const data::idx_limits limits{.max_dimensions = 4, .max_bytes = std::size_t{1} << 20};
  fuzz::check_reader([&] { data::decode_idx<float>(bytes, "fuzz", limits); },
                     {error_kind::damaged_file, error_kind::incompatible}, 5 * limits.max_bytes + (64 << 10));
  return 0;
}
