#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The shape checks several reference layers make, and the error when their
/// tensors do not fit in memory, with one wording each.

#include <parallax/core/error.hpp>
#include <parallax/detail/number_text.hpp>
#include <parallax/detail/xtensor.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

namespace parallax::nn::detail {

/// Throws parallax::error "<layer>::backward(): dy has shape (..), expected
/// (..)" unless dy's shape is `expected`. The message is built only on
/// failure: a step allocates nothing.
template <class Shape, class Expected>
void check_dy_shape(const Shape& dy, const Expected& expected, const char* layer) {
  PARALLAX_CHECK(std::equal(dy.begin(), dy.end(), expected.begin(), expected.end()),
                 std::string(layer) + "::backward(): dy has shape " + parallax::detail::shape_string(dy) +
                     ", expected " + parallax::detail::shape_string(expected));
}

/// Throws parallax::error "<who>: input shape (..) does not fit the expected
/// rank-<rank> shape (batch, ...)" unless the input shape has that rank.
inline void check_input_rank(const std::vector<std::size_t>& input_shape, std::size_t rank, const std::string& who) {
  PARALLAX_CHECK(input_shape.size() == rank, who + ": input shape " + parallax::detail::shape_string(input_shape) +
                                                 " does not fit the expected rank-" + std::to_string(rank) +
                                                 " shape (batch, ...)");
}

/// Whether an integer id (a class label, a token id) names one of `count`
/// classes or tokens: in [0, count).
template <class I>
bool id_in_range(I id, std::size_t count) {
  if constexpr (std::is_signed_v<I>) {
    if (id < 0) return false;
  }
  return static_cast<std::uint64_t>(id) < count;
}

/// Throws parallax::error "<layer>: cannot allocate <what> (<bytes> bytes)":
/// a layer's tensors, `values` elements of `element_size` bytes in all, do
/// not fit in memory (bad_alloc, or length_error past what a vector holds).
[[noreturn]] inline void throw_allocation_error(const std::string& layer, const std::string& what, double values,
                                                std::size_t element_size) {
  parallax::detail::throw_error(layer + ": cannot allocate " + what + " (" +
                                parallax::detail::number_text(values * static_cast<double>(element_size)) +
                                " bytes)");
}

/// A rank-N shape with `last` as its last extent (a layer's output shape
/// from its input's, for the layers that map the last dimension).
template <std::size_t N, class Shape>
std::array<std::size_t, N> with_last_extent(const Shape& shape, std::size_t last) {
  std::array<std::size_t, N> out{};
  for (std::size_t d = 0; d < N; ++d) out[d] = shape[d];
  out[N - 1] = last;
  return out;
}

}  // namespace parallax::nn::detail
