#pragma once
// SPDX-License-Identifier: BSL-1.0
/// lane_sum: a sum over a row in double, in independent partial sums, for
/// the per-row reductions of LayerNorm and of the attention's softmax.

#include <cstddef>

namespace parallax::nn::detail {

/// Partial sums of a lane_sum: enough independent additions to hide the
/// latency of one, a whole number of vectors at every x86-64 width.
inline constexpr std::size_t sum_lanes = 8;

/// sum_{j < n} term(j) in double: term j goes to partial sum j % sum_lanes,
/// and the partial sums are added pairwise at the end. A fixed order, so
/// the same row always gives the same bits; a NaN term makes the sum NaN.
/// Strictly sequential additions (one sum) wait on each other; these do not,
/// and the compiler may put them in vectors.
template <class Term>
#if defined(__GNUC__)
[[gnu::always_inline]]  // a call per row, and term not inlined into it, would cost more than the sum
#endif
inline double lane_sum(std::size_t n, Term&& term) {
  double s[sum_lanes] = {};
  std::size_t j = 0;
  for (; j + sum_lanes <= n; j += sum_lanes)
    for (std::size_t k = 0; k < sum_lanes; ++k) s[k] += term(j + k);
  for (std::size_t k = 0; j < n; ++j, ++k) s[k] += term(j);
  for (std::size_t width = sum_lanes / 2; width > 0; width /= 2)
    for (std::size_t k = 0; k < width; ++k) s[k] += s[k + width];
  return s[0];
}

}  // namespace parallax::nn::detail
