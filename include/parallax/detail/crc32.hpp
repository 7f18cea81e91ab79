#pragma once
// SPDX-License-Identifier: BSL-1.0
/// CRC-32 as gzip, zip, PNG, zlib and boost::crc_32_type compute it: the one
/// checksum of gzip members (detail/inflate.hpp) and checkpoint files
/// (io/file.hpp).

#include <parallax/detail/bytes.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

namespace parallax::detail {

/// CRC-32 (reflected polynomial 0xEDB88320) of `bytes`, continuing from
/// `crc`, so that data fed in pieces gives the checksum of the whole:
/// crc32(b, crc32(a)) == crc32(a followed by b), and crc32("123456789") ==
/// 0xCBF43926.
/// @code
///   std::uint32_t crc = 0;
///   for (auto chunk : chunks) crc = parallax::detail::crc32(chunk, crc);
/// @endcode
std::uint32_t crc32(std::span<const std::uint8_t> bytes, std::uint32_t crc = 0) noexcept;

// ---------------------------------------------------------------------------
// Implementation
// ---------------------------------------------------------------------------

/// The eight tables of slicing-by-8: crc32_tables[k][b] is the CRC
/// contribution of byte b followed by k zero bytes. Eight bytes per step
/// because Boost.CRC's crc_32_type, one table lookup per byte, ran at about
/// 0.5 GB/s here, which made checksumming, not the disk, the limit of
/// checkpoint writes; this runs about 2 GB/s. tests/test_crc32.cpp holds it
/// to crc_32_type at every length and alignment.
inline constexpr std::array<std::array<std::uint32_t, 256>, 8> crc32_tables = [] {
  std::array<std::array<std::uint32_t, 256>, 8> t{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    t[0][i] = c;
  }
  for (std::size_t k = 1; k < 8; ++k)
    for (std::size_t i = 0; i < 256; ++i) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xffu];
  return t;
}();

inline std::uint32_t crc32(std::span<const std::uint8_t> bytes, std::uint32_t crc) noexcept {
  const auto& t = crc32_tables;
  std::uint32_t c = ~crc;
  const std::uint8_t* p = bytes.data();
  std::size_t n = bytes.size();
  for (; n >= 8; p += 8, n -= 8) {
    const std::uint32_t a = c ^ load_le32(p);
    const std::uint32_t b = load_le32(p + 4);
    c = t[7][a & 0xffu] ^ t[6][(a >> 8) & 0xffu] ^ t[5][(a >> 16) & 0xffu] ^ t[4][a >> 24] ^ t[3][b & 0xffu] ^
        t[2][(b >> 8) & 0xffu] ^ t[1][(b >> 16) & 0xffu] ^ t[0][b >> 24];
  }
  for (; n > 0; ++p, --n) c = t[0][(c ^ *p) & 0xffu] ^ (c >> 8);
  return ~c;
}

}  // namespace parallax::detail
