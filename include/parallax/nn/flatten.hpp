#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Flatten<T, N>: reshapes [batch, d1, ..., d(N-1)] into [batch, d1 * ... *
/// d(N-1)], the bridge from convolutional to fully connected layers.

#include <parallax/core/error.hpp>
#include <parallax/detail/xtensor.hpp>
#include <parallax/nn/detail/checks.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace parallax::nn {

/// Keeps the batch extent and flattens the rest, in row-major order (a copy:
/// activations live in buffers the caller owns).
/// @code
///   parallax::nn::Flatten<float, 4> flat;   // [batch, 16, 5, 5] -> [batch, 400]
/// @endcode
template <class T, std::size_t N>
class Flatten {
 public:
  static_assert(N >= 2, "parallax: Flatten needs an input of rank 2 or more (batch first)");
  using value_type = T;
  using input_type = xt::xtensor<T, N>;
  using output_type = xt::xtensor<T, 2>;

  /// No parameters: nothing to draw.
  void initialize(std::uint64_t /*seed*/, std::size_t /*index*/) {}

  /// y = x reshaped to [batch, rest]; y is resized only when needed.
  void forward(const input_type& x, output_type& y) const {
    const std::array<std::size_t, 2> shape{x.shape()[0], rest(x)};
    if (y.shape() != shape) y.resize(shape);
    std::copy_n(x.data(), x.size(), y.data());
  }

  /// dx = dy reshaped to x's shape; dx is resized only when needed.
  void backward(const input_type& x, const output_type& /*y*/, const output_type& dy, input_type& dx) const {
    PARALLAX_CHECK(dy.size() == x.size() && dy.shape()[0] == x.shape()[0],
                   "Flatten::backward(): dy has shape " + parallax::detail::shape_string(dy.shape()) +
                       ", which does not flatten " + parallax::detail::shape_string(x.shape()));
    if (dx.shape() != x.shape()) dx.resize(x.shape());
    std::copy_n(dy.data(), dy.size(), dx.data());
  }

  /// "Flatten".
  std::string describe() const { return "Flatten"; }

  /// [batch, d1 * ... * d(N-1)]; throws parallax::error when the input's
  /// rank is not N.
  std::vector<std::size_t> output_shape(const std::vector<std::size_t>& input_shape) const {
    detail::check_input_rank(input_shape, N, "Flatten");
    std::size_t product = 1;
    for (std::size_t d = 1; d < input_shape.size(); ++d) product *= input_shape[d];  // size() is N here
    return {input_shape[0], product};
  }

  /// Stateless: 0.
  static std::size_t parameter_count() { return 0; }

 private:
  static std::size_t rest(const input_type& x) {
    std::size_t product = 1;
    for (std::size_t d = 1; d < N; ++d) product *= x.shape()[d];
    return product;
  }
};

}  // namespace parallax::nn
