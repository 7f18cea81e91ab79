#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The shape checks several reference layers make, with one wording each.

#include <parallax/core/error.hpp>
#include <parallax/detail/xtensor.hpp>

#include <algorithm>
#include <cstddef>
#include <string>
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

}  // namespace parallax::nn::detail
