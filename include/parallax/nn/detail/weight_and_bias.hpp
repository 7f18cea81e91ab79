#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The trainable part Linear and Conv2D share: a weight matrix, a bias
/// vector, their gradients, the accessors and PyTorch's default draw.

#include <parallax/core/error.hpp>
#include <parallax/detail/random.hpp>
#include <parallax/detail/xtensor.hpp>
#include <parallax/nn/detail/checks.hpp>

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <tuple>

namespace parallax::nn::detail {

/// A weight [rows, cols] and a bias [bias_size] with gradients laid out
/// alike, all zero until draw(). A layer derives from it publicly, so its
/// parameters(), gradients(), weight() and bias() are these.
template <class T>
class WeightAndBias {
 public:
  /// The weight and the bias, in that order.
  auto parameters() { return std::tie(weight_, bias_); }
  auto parameters() const { return std::tie(weight_, bias_); }
  /// Gradients laid out like parameters().
  auto gradients() { return std::tie(weight_grad_, bias_grad_); }
  auto gradients() const { return std::tie(weight_grad_, bias_grad_); }

  xt::xtensor<T, 2>& weight() { return weight_; }
  const xt::xtensor<T, 2>& weight() const { return weight_; }
  xt::xtensor<T, 1>& bias() { return bias_; }
  const xt::xtensor<T, 1>& bias() const { return bias_; }

 protected:
  WeightAndBias() = default;

  /// The weight [rows, cols], the bias [bias_size] and their gradients, all
  /// zero; when they do not fit in memory, an error naming `layer` (its
  /// describe()) and the bytes asked for.
  void allocate(std::size_t rows, std::size_t cols, std::size_t bias_size, const std::string& layer) {
    try {
      weight_ = xt::xtensor<T, 2>(std::array<std::size_t, 2>{rows, cols}, T(0));
      bias_ = xt::xtensor<T, 1>(std::array<std::size_t, 1>{bias_size}, T(0));
      weight_grad_ = xt::xtensor<T, 2>(std::array<std::size_t, 2>{rows, cols}, T(0));
      bias_grad_ = xt::xtensor<T, 1>(std::array<std::size_t, 1>{bias_size}, T(0));
    } catch (const std::exception&) {  // bad_alloc, or length_error past what a vector can hold
      const double values = static_cast<double>(rows) * static_cast<double>(cols) + static_cast<double>(bias_size);
      throw_allocation_error(layer, "its weight [" + std::to_string(rows) + ", " + std::to_string(cols) +
                                        "], bias and their gradients", 2.0 * values, sizeof(T));
    }
  }

  /// PyTorch's default: the weight, then the bias, uniform in
  /// [-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn from (seed, index) only.
  void draw(std::uint64_t seed, std::size_t index, std::size_t fan_in) {
    parallax::detail::rng g(parallax::detail::key(seed, index));
    const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
    for (auto& w : weight_) w = static_cast<T>((2.0 * g.uniform() - 1.0) * bound);
    for (auto& b : bias_) b = static_cast<T>((2.0 * g.uniform() - 1.0) * bound);
  }

  xt::xtensor<T, 2> weight_;
  xt::xtensor<T, 1> bias_;
  xt::xtensor<T, 2> weight_grad_;
  xt::xtensor<T, 1> bias_grad_;
};

}  // namespace parallax::nn::detail
