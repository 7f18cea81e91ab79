#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Linear<T>: the fully connected layer y = x W + b over [batch, features],
/// with every matrix product done by BLAS (xt::blas::gemm) into buffers that
/// are reused from call to call.

#include <parallax/core/error.hpp>
#include <parallax/detail/xtensor.hpp>
#include <parallax/nn/detail/checks.hpp>
#include <parallax/nn/detail/weight_and_bias.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
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
class Linear : public detail::WeightAndBias<T> {
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

  // parameters(), gradients(), weight() and bias(): from WeightAndBias, the
  // weight [in, out] and the bias [out].

  std::size_t in_features() const { return in_; }
  std::size_t out_features() const { return out_; }

  /// "Linear(784 -> 256)".
  std::string describe() const;
  /// [batch, out] for an input [batch, in]; throws parallax::error otherwise.
  std::vector<std::size_t> output_shape(const std::vector<std::size_t>& input_shape) const;
  /// in * out + out.
  static std::size_t parameter_count(std::size_t in, std::size_t out) { return in * out + out; }

 private:
  /// Checks x's features and dy's shape [batch, out].
  void check_input(const input_type& x, const char* where) const;
  void check_backward(const input_type& x, const output_type& dy) const;

  // weight_, bias_ and their gradients live in WeightAndBias (this->).
  std::size_t in_;
  std::size_t out_;
};

// ---------------------------------------------------------------------------

template <class T>
Linear<T>::Linear(std::size_t in, std::size_t out) : in_(in), out_(out) {
  PARALLAX_CHECK(in > 0 && out > 0, "Linear: in and out features must be positive, got " + std::to_string(in) +
                                        " -> " + std::to_string(out));
  this->allocate(in, out, out, describe());
  // Usable weights from the start, as initialize(0, 0) gives them; chains
  // re-initialise each layer from (seed, its index).
  initialize(0, 0);
}

template <class T>
void Linear<T>::initialize(std::uint64_t seed, std::size_t index) {
  this->draw(seed, index, in_);
}

template <class T>
void Linear<T>::check_input(const input_type& x, const char* where) const {
  PARALLAX_CHECK(x.shape()[1] == in_, std::string("Linear::") + where + "(): input has " +
                                          std::to_string(x.shape()[1]) + " features, expected " +
                                          std::to_string(in_));
}

template <class T>
void Linear<T>::check_backward(const input_type& x, const output_type& dy) const {
  check_input(x, "backward");
  detail::check_dy_shape(dy.shape(), std::array<std::size_t, 2>{x.shape()[0], out_}, "Linear");
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
  for (std::size_t r = 0; r < batch; ++r) std::copy_n(this->bias_.data(), out_, out + r * out_);
  xt::blas::gemm(x, this->weight_, y, false, false, T(1), T(1));
}

template <class T>
void Linear<T>::backward(const input_type& x, const output_type& y, const output_type& dy, input_type& dx) {
  check_backward(x, dy);
  const std::size_t batch = x.shape()[0];
  if (dx.shape() != x.shape()) dx.resize(x.shape());
  if (batch == 0) return;
  xt::blas::gemm(dy, this->weight_, dx, false, true, T(1), T(0));
  backward_parameters(x, y, dy);
}

template <class T>
void Linear<T>::backward_parameters(const input_type& x, const output_type& /*y*/, const output_type& dy) {
  check_backward(x, dy);
  const std::size_t batch = x.shape()[0];
  if (batch == 0) return;
  xt::blas::gemm(x, dy, this->weight_grad_, true, false, T(1), T(1));
  const T* g = dy.data();
  T* db = this->bias_grad_.data();
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
