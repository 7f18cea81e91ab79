#pragma once
// SPDX-License-Identifier: BSL-1.0
// IDX files built in memory, for the IDX tests and the fuzz seeds.

#include <cstdint>
#include <vector>

namespace parallax::test {

inline void put_be32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<std::uint8_t>(v >> shift));
}

/// An IDX file: magic (0, 0, type, dimensions), big-endian extents, payload.
inline std::vector<std::uint8_t> make_idx(std::uint8_t type, const std::vector<std::uint32_t>& shape,
                                          const std::vector<std::uint8_t>& payload) {
  std::vector<std::uint8_t> out = {0, 0, type, static_cast<std::uint8_t>(shape.size())};
  for (const auto extent : shape) put_be32(out, extent);
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

}  // namespace parallax::test
