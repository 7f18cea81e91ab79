#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Linear<T>: the fully connected layer y = x W + b over [batch, features],
/// with every matrix product done by BLAS (xt::blas::gemm) into buffers that
/// are reused from call to call.

#include <parallax/core/error.hpp>
#include <parallax/detail/random.hpp>
#include <parallax/detail/xtensor.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

namespace parallax::nn {

/// A fully connected layer: y = x W + b, with x [batch, in], W [in, out],
/// b [out] and y [batch, out].
/// @code
///   parallax::nn::Linear<float> fc(784, 256);
///   fc.initialize(seed, 0);
///   fc.forward(x, y);             // y resized to [batch, 256] only when needed
///   fc.backward(x, y, dy, dx);    // dx = dy W^T; dW += x^T dy; db += colsum(dy)
/// @endcode
template <class T>
class Linear {
 public:
  using value_type = T;
  using input_type = xt::xtensor<T, 2>;
  using output_type = xt::xtensor<T, 2>;

  /// A layer from `in` features to `out` features; weights start at zero
  /// until initialize().
  Linear(std::size_t in, std::size_t out);

  /// PyTorch's default: weight and bias uniform in [-1/sqrt(in), 1/sqrt(in)),
  /// drawn from (seed, index) only.
  void initialize(std::uint64_t seed, std::size_t index);

  /// y = x W + b; y is resized only when its shape is not [batch, out].
  void forward(const input_type& x, output_type& y) const;

  /// dx = dy W^T (dx resized only when needed); adds x^T dy to the weight
  /// gradient and the column sums of dy to the bias gradient.
  void backward(const input_type& x, const output_type& y, const output_type& dy, input_type& dx);
  /// backward() without dx: only adds the parameter gradients. Chains call it
  /// for their first layer, whose input gradient nobody reads (a GEMM saved).
  void backward_parameters(const input_type& x, const output_type& y, const output_type& dy);

  /// The weight [in, out] and the bias [out].
  auto parameters() { return std::tie(weight_, bias_); }
  auto parameters() const { return std::tie(weight_, bias_); }
  /// Gradients laid out like parameters().
  auto gradients() { return std::tie(weight_grad_, bias_grad_); }
  auto gradients() const { return std::tie(weight_grad_, bias_grad_); }

  xt::xtensor<T, 2>& weight() { return weight_; }
  const xt::xtensor<T, 2>& weight() const { return weight_; }
  xt::xtensor<T, 1>& bias() { return bias_; }
  const xt::xtensor<T, 1>& bias() const { return bias_; }

  std::size_t in_features() const { return in_; }
  std::size_t out_features() const { return out_; }

  /// "Linear(784 -> 256)".
  std::string describe() const;
  /// [batch, out] for an input [batch, in]; throws parallax::error otherwise.
  std::vector<std::size_t> output_shape(const std::vector<std::size_t>& input_shape) const;
  /// in * out + out.
  static std::size_t parameter_count(std::size_t in, std::size_t out) { return in * out + out; }

 private:
  void check_input(const input_type& x, const char* where) const;

  std::size_t in_;
  std::size_t out_;
  xt::xtensor<T, 2> weight_;
  xt::xtensor<T, 1> bias_;
  xt::xtensor<T, 2> weight_grad_;
  xt::xtensor<T, 1> bias_grad_;
};

// ---------------------------------------------------------------------------

template <class T>
Linear<T>::Linear(std::size_t in, std::size_t out)
    : in_(in),
      out_(out),
      weight_(std::array<std::size_t, 2>{in, out}, T(0)),
      bias_(std::array<std::size_t, 1>{out}, T(0)),
      weight_grad_(std::array<std::size_t, 2>{in, out}, T(0)),
      bias_grad_(std::array<std::size_t, 1>{out}, T(0)) {
  PARALLAX_CHECK(in > 0 && out > 0, "Linear: in and out features must be positive, got " + std::to_string(in) +
                                        " -> " + std::to_string(out));
  // Usable weights from the start, as initialize(0, 0) gives them; chains
  // re-initialise each layer from (seed, its index).
  initialize(0, 0);
}

template <class T>
void Linear<T>::initialize(std::uint64_t seed, std::size_t index) {
  parallax::detail::rng g(parallax::detail::key(seed, index));
  const double bound = 1.0 / std::sqrt(static_cast<double>(in_));
  for (auto& w : weight_) w = static_cast<T>((2.0 * g.uniform() - 1.0) * bound);
  for (auto& b : bias_) b = static_cast<T>((2.0 * g.uniform() - 1.0) * bound);
}

template <class T>
void Linear<T>::check_input(const input_type& x, const char* where) const {
  PARALLAX_CHECK(x.shape()[1] == in_, std::string("Linear::") + where + "(): input has " +
                                          std::to_string(x.shape()[1]) + " features, expected " +
                                          std::to_string(in_));
}

template <class T>
void Linear<T>::forward(const input_type& x, output_type& y) const {
  check_input(x, "forward");
  const std::size_t batch = x.shape()[0];
  const std::array<std::size_t, 2> shape{batch, out_};
  if (y.shape() != shape) y.resize(shape);
  if (batch == 0) return;
  // Start from the bias in every row, then accumulate x W on top (beta = 1).
  T* out = y.data();
  for (std::size_t r = 0; r < batch; ++r) std::copy_n(bias_.data(), out_, out + r * out_);
  xt::blas::gemm(x, weight_, y, false, false, T(1), T(1));
}

template <class T>
void Linear<T>::backward(const input_type& x, const output_type& y, const output_type& dy, input_type& dx) {
  check_input(x, "backward");
  const std::size_t batch = x.shape()[0];
  PARALLAX_CHECK(dy.shape()[0] == batch && dy.shape()[1] == out_,
                 "Linear::backward(): dy has shape " + parallax::detail::shape_string(dy.shape()) + ", expected (" +
                     std::to_string(batch) + ", " + std::to_string(out_) + ")");
  if (dx.shape() != x.shape()) dx.resize(x.shape());
  if (batch == 0) return;
  xt::blas::gemm(dy, weight_, dx, false, true, T(1), T(0));
  backward_parameters(x, y, dy);
}

template <class T>
void Linear<T>::backward_parameters(const input_type& x, const output_type& /*y*/, const output_type& dy) {
  check_input(x, "backward");
  const std::size_t batch = x.shape()[0];
  PARALLAX_CHECK(dy.shape()[0] == batch && dy.shape()[1] == out_,
                 "Linear::backward(): dy has shape " + parallax::detail::shape_string(dy.shape()) + ", expected (" +
                     std::to_string(batch) + ", " + std::to_string(out_) + ")");
  if (batch == 0) return;
  xt::blas::gemm(x, dy, weight_grad_, true, false, T(1), T(1));
  const T* g = dy.data();
  T* db = bias_grad_.data();
  for (std::size_t r = 0; r < batch; ++r)
    for (std::size_t j = 0; j < out_; ++j) db[j] += g[r * out_ + j];
}

template <class T>
std::string Linear<T>::describe() const {
  return "Linear(" + std::to_string(in_) + " -> " + std::to_string(out_) + ")";
}

template <class T>
std::vector<std::size_t> Linear<T>::output_shape(const std::vector<std::size_t>& input_shape) const {
  PARALLAX_CHECK(input_shape.size() == 2 && input_shape[1] == in_,
                 describe() + ": input shape " + parallax::detail::shape_string(input_shape) +
                     " does not fit the expected (batch, " + std::to_string(in_) + ")");
  return {input_shape[0], out_};
}

}  // namespace parallax::nn
