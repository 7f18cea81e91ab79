#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The trainable part Linear and Conv2D share: a weight matrix, a bias
/// vector, their gradients, the accessors and PyTorch's default draw.

#include <parallax/core/error.hpp>
#include <parallax/detail/random.hpp>
#include <parallax/detail/xtensor.hpp>
#include <parallax/nn/detail/checks.hpp>
#include <parallax/nn/detail/strided_gemm.hpp>

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

  // The products of a layer whose weight is [in, out] and bias [out] (Linear,
  // RowParallelLinear) on `rows` contiguous rows: y = x W (+ beta y),
  // dx = dy W^T, and the gradients x^T dy and the column sums of dy added.
  void multiply(const T* x, std::size_t rows, T beta, T* y) const {
    const std::size_t in = weight_.shape()[0], out = weight_.shape()[1];
    strided_gemm(false, false, rows, out, in, T(1), x, in, weight_.data(), out, beta, y, out);
  }
  void input_gradient(const T* dy, std::size_t rows, T* dx) const {
    const std::size_t in = weight_.shape()[0], out = weight_.shape()[1];
    strided_gemm(false, true, rows, in, out, T(1), dy, out, weight_.data(), out, T(0), dx, in);
  }
  void add_gradients(const T* x, const T* dy, std::size_t rows) {
    const std::size_t in = weight_.shape()[0], out = weight_.shape()[1];
    strided_gemm(true, false, in, out, rows, T(1), x, in, dy, out, T(1), weight_grad_.data(), out);
    T* db = bias_grad_.data();
    for (std::size_t r = 0; r < rows; ++r)
      for (std::size_t j = 0; j < out; ++j) db[j] += dy[r * out + j];
  }

  xt::xtensor<T, 2> weight_;
  xt::xtensor<T, 1> bias_;
  xt::xtensor<T, 2> weight_grad_;
  xt::xtensor<T, 1> bias_grad_;
};

}  // namespace parallax::nn::detail
