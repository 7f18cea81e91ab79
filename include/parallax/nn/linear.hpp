#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Linear<T, N>: the fully connected layer y = x W + b over the last
/// dimension of rank-N tensors ([batch, features] for N = 2, [batch,
/// sequence, features] for N = 3), with every matrix product done by BLAS
/// (through xtensor-blas) on the rows in place, into buffers that are reused from
/// call to call.

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

/// A fully connected layer: y = x W + b, with x [..., in], W [in, out],
/// b [out] and y [..., out]: every one of x's rows (all dimensions but the
/// last, batch first) is mapped alike, as PyTorch's nn.Linear does.
/// @code
///   parallax::nn::Linear<float> fc(784, 256);
///   fc.initialize(seed, 0);
///   fc.forward(x, y);             // y resized to [batch, 256] only when needed
///   fc.backward(x, y, dy, dx);    // dx = dy W^T; dW += x^T dy; db += colsum(dy)
///   parallax::nn::Linear<float, 3> head(64, 96);   // [batch, sequence, 64] -> [batch, sequence, 96]
/// @endcode
template <class T, std::size_t N = 2>
class Linear : public detail::WeightAndBias<T> {
  static_assert(N >= 2, "parallax: Linear needs tensors of rank 2 or more: batch first, the features last");

 public:
  using value_type = T;
  using input_type = xt::xtensor<T, N>;
  using output_type = xt::xtensor<T, N>;
  /// backward(x, y, dy, dx) never reads y (BackwardIgnoresOutput).
  static constexpr bool backward_reads_output = false;

  /// A layer from `in` features to `out` features; weights start at zero
  /// until initialize().
  Linear(std::size_t in, std::size_t out);

  /// PyTorch's default: weight and bias uniform in [-1/sqrt(in), 1/sqrt(in)),
  /// drawn from (seed, index) only.
  void initialize(std::uint64_t seed, std::size_t index);

  /// y = x W + b; y is resized only when its shape is not x's with out last.
  void forward(const input_type& x, output_type& y) const;

  /// dx = dy W^T (dx resized only when needed); adds x^T dy to the weight
  /// gradient and the column sums of dy to the bias gradient.
  void backward(const input_type& x, const output_type& y, const output_type& dy, input_type& dx);
  /// backward() without dx: only adds the parameter gradients. Chains call it
  /// for their first layer, whose input gradient nobody reads (a GEMM saved).
  void backward_parameters(const input_type& x, const output_type& y, const output_type& dy);
  /// backward() without the parameter gradients: only dx (HasSplitBackward;
  /// the zero-bubble pipeline schedule runs backward_parameters later).
  void backward_input(const input_type& x, const output_type& y, const output_type& dy, input_type& dx);

  // parameters(), gradients(), weight() and bias(): from WeightAndBias, the
  // weight [in, out] and the bias [out].

  std::size_t in_features() const { return in_; }
  std::size_t out_features() const { return out_; }

  /// "Linear(784 -> 256)".
  std::string describe() const;
  /// x's shape with out last, for an input of rank N ending in in; throws
  /// parallax::error otherwise.
  std::vector<std::size_t> output_shape(const std::vector<std::size_t>& input_shape) const;
  /// in * out + out.
  static std::size_t parameter_count(std::size_t in, std::size_t out) { return in * out + out; }

 private:
  /// Checks x's features and dy's shape (x's with out last).
  void check_input(const input_type& x, const char* where) const;
  void check_backward(const input_type& x, const output_type& dy) const;
  /// How many rows x has.
  std::size_t row_count(const input_type& x) const { return x.size() / in_; }

  // weight_, bias_ and their gradients live in WeightAndBias (this->).
  std::size_t in_;
  std::size_t out_;
};

// ---------------------------------------------------------------------------

template <class T, std::size_t N>
Linear<T, N>::Linear(std::size_t in, std::size_t out) : in_(in), out_(out) {
  PARALLAX_CHECK(in > 0 && out > 0, "Linear: in and out features must be positive, got " + std::to_string(in) +
                                        " -> " + std::to_string(out));
  this->allocate(in, out, out, describe());
  // Usable weights from the start, as initialize(0, 0) gives them; chains
  // re-initialise each layer from (seed, its index).
  initialize(0, 0);
}

template <class T, std::size_t N>
void Linear<T, N>::initialize(std::uint64_t seed, std::size_t index) {
  this->draw(seed, index, in_);
}

template <class T, std::size_t N>
void Linear<T, N>::check_input(const input_type& x, const char* where) const {
  PARALLAX_CHECK(x.shape()[N - 1] == in_, std::string("Linear::") + where + "(): input has " +
                                              std::to_string(x.shape()[N - 1]) + " features, expected " +
                                              std::to_string(in_));
}

template <class T, std::size_t N>
void Linear<T, N>::check_backward(const input_type& x, const output_type& dy) const {
  check_input(x, "backward");
  detail::check_dy_shape(dy.shape(), detail::with_last_extent<N>(x.shape(), out_), "Linear");
}

template <class T, std::size_t N>
void Linear<T, N>::forward(const input_type& x, output_type& y) const {
  check_input(x, "forward");
  const auto shape = detail::with_last_extent<N>(x.shape(), out_);
  if (!std::equal(y.shape().begin(), y.shape().end(), shape.begin(), shape.end())) y.resize(shape);
  const std::size_t rows = row_count(x);
  if (rows == 0) return;
  // Start from the bias in every row, then accumulate x W on top (beta = 1).
  T* out = y.data();
  for (std::size_t r = 0; r < rows; ++r) std::copy_n(this->bias_.data(), out_, out + r * out_);
  this->multiply(x.data(), rows, T(1), out);
}

template <class T, std::size_t N>
void Linear<T, N>::backward(const input_type& x, const output_type& y, const output_type& dy, input_type& dx) {
  backward_input(x, y, dy, dx);
  backward_parameters(x, y, dy);
}

template <class T, std::size_t N>
void Linear<T, N>::backward_input(const input_type& x, const output_type& /*y*/, const output_type& dy,
                                  input_type& dx) {
  check_backward(x, dy);
  if (dx.shape() != x.shape()) dx.resize(x.shape());
  const std::size_t rows = row_count(x);
  if (rows == 0) return;
  this->input_gradient(dy.data(), rows, dx.data());
}

template <class T, std::size_t N>
void Linear<T, N>::backward_parameters(const input_type& x, const output_type& /*y*/, const output_type& dy) {
  check_backward(x, dy);
  const std::size_t rows = row_count(x);
  if (rows == 0) return;
  this->add_gradients(x.data(), dy.data(), rows);
}

template <class T, std::size_t N>
std::string Linear<T, N>::describe() const {
  return "Linear(" + std::to_string(in_) + " -> " + std::to_string(out_) + ")";
}

template <class T, std::size_t N>
std::vector<std::size_t> Linear<T, N>::output_shape(const std::vector<std::size_t>& input_shape) const {
  PARALLAX_CHECK(input_shape.size() == N && input_shape[N - 1] == in_,
                 describe() + ": input shape " + parallax::detail::shape_string(input_shape) + " does not fit the expected (" +
                     (N == 2 ? "batch, " : "batch, ..., ") + std::to_string(in_) + ")" +
                     (N == 2 ? "" : " of rank " + std::to_string(N)));
  auto shape = input_shape;
  shape[N - 1] = out_;
  return shape;
}

}  // namespace parallax::nn
