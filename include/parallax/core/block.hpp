#pragma once
// SPDX-License-Identifier: BSL-1.0
/// block_of: how n elements split over ranks, as evenly as possible — the
/// shard rule of evaluation, reduce-scatter and the ring's blocks.

#include <algorithm>
#include <cstddef>

namespace parallax {

/// The part [begin, end) of n elements that rank `rank` of `size` owns when n
/// is split as evenly as possible (the first n % size ranks get one more).
struct block {
  std::size_t begin = 0;
  std::size_t end = 0;
  std::size_t size() const { return end - begin; }
};
block block_of(std::size_t n, int size, int rank);

// ===========================================================================
// Implementation
// ===========================================================================

inline block block_of(std::size_t n, int size, int rank) {
  const auto p = static_cast<std::size_t>(size);
  const auto r = static_cast<std::size_t>(rank);
  const std::size_t base = n / p;
  const std::size_t extra = n % p;
  const std::size_t begin = r * base + std::min(r, extra);
  return {begin, begin + base + (r < extra ? 1 : 0)};
}

}  // namespace parallax
