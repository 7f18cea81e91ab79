#pragma once
// SPDX-License-Identifier: BSL-1.0
/// MaxPool2D<T>: 2-D max pooling over NCHW tensors, whose backward finds the
/// maximum of each window again from the input instead of storing it.

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

/// Max pooling with square windows of `kernel` and a `stride` (the kernel by
/// default), no padding: x [batch, channels, height, width] gives y [batch,
/// channels, (height - kernel) / stride + 1, (width - kernel) / stride + 1].
///
/// The gradient of each window goes to its maximum, recomputed from x in
/// backward. On ties the first maximum in row-major window order (top row
/// first, left to right) wins, in forward and backward alike. A NaN is the
/// maximum of its window, as in PyTorch: the window gives NaN and its
/// gradient goes to the NaN (the last one in row-major order, where PyTorch
/// sends it, when the window has several). When windows overlap (stride <
/// kernel) an input that is the maximum of several windows receives the sum
/// of their gradients.
/// @code
///   parallax::nn::MaxPool2D<float> pool(2);   // [b, c, 28, 28] -> [b, c, 14, 14]
/// @endcode
template <class T>
class MaxPool2D {
 public:
  using value_type = T;
  using input_type = xt::xtensor<T, 4>;
  using output_type = xt::xtensor<T, 4>;

  /// Windows of kernel x kernel, moved by `kernel`.
  explicit MaxPool2D(std::size_t kernel) : MaxPool2D(kernel, kernel) {}
  /// Windows of kernel x kernel, moved by `stride`.
  MaxPool2D(std::size_t kernel, std::size_t stride);

  /// No parameters: nothing to draw.
  void initialize(std::uint64_t /*seed*/, std::size_t /*index*/) {}

  /// y = the maximum of each window; y is resized only when needed.
  void forward(const input_type& x, output_type& y) const;
  /// dx = dy routed to each window's maximum (see above); dx resized only
  /// when needed.
  void backward(const input_type& x, const output_type& y, const output_type& dy, input_type& dx) const;

  std::size_t kernel() const { return k_; }
  std::size_t stride() const { return stride_; }

  /// "MaxPool2D(kernel 2, stride 2)".
  std::string describe() const {
    return "MaxPool2D(kernel " + std::to_string(k_) + ", stride " + std::to_string(stride_) + ")";
  }
  /// [batch, channels, out_height, out_width]; throws parallax::error when
  /// the input is not rank 4 or smaller than a window.
  std::vector<std::size_t> output_shape(const std::vector<std::size_t>& input_shape) const;
  /// Stateless: 0.
  static std::size_t parameter_count(std::size_t /*kernel*/, std::size_t /*stride*/ = 1) { return 0; }

 private:
  std::size_t out_extent(std::size_t n) const { return (n - k_) / stride_ + 1; }
  void check_input(const input_type& x, const char* where) const;
  /// Offset within one [h, w] plane of the first maximum (or the last NaN)
  /// of window (r, q).
  std::size_t argmax(const T* plane, std::size_t w, std::size_t r, std::size_t q) const;

  std::size_t k_;
  std::size_t stride_;
};

// ---------------------------------------------------------------------------

template <class T>
MaxPool2D<T>::MaxPool2D(std::size_t kernel, std::size_t stride) : k_(kernel), stride_(stride) {
  PARALLAX_CHECK(kernel > 0 && stride > 0, "MaxPool2D: kernel and stride must be positive, got " + describe());
}

template <class T>
void MaxPool2D<T>::check_input(const input_type& x, const char* where) const {
  PARALLAX_CHECK(x.shape()[2] >= k_ && x.shape()[3] >= k_,
                 "MaxPool2D::" + std::string(where) + "(): input shape " +
                     parallax::detail::shape_string(x.shape()) + " is smaller than the " + std::to_string(k_) +
                     "x" + std::to_string(k_) + " window of " + describe());
}

template <class T>
std::size_t MaxPool2D<T>::argmax(const T* plane, std::size_t w, std::size_t r, std::size_t q) const {
  std::size_t best = r * stride_ * w + q * stride_;
  for (std::size_t i = 0; i < k_; ++i)
    for (std::size_t j = 0; j < k_; ++j) {
      const std::size_t at = (r * stride_ + i) * w + q * stride_ + j;
      // PyTorch's rule: a NaN replaces the maximum so far, whatever it is.
      if (plane[at] > plane[best] || plane[at] != plane[at]) best = at;
    }
  return best;
}

template <class T>
void MaxPool2D<T>::forward(const input_type& x, output_type& y) const {
  check_input(x, "forward");
  const std::size_t planes = x.shape()[0] * x.shape()[1], h = x.shape()[2], w = x.shape()[3];
  const std::size_t oh = out_extent(h), ow = out_extent(w);
  const std::array<std::size_t, 4> shape{x.shape()[0], x.shape()[1], oh, ow};
  if (y.shape() != shape) y.resize(shape);
  for (std::size_t p = 0; p < planes; ++p) {
    const T* in = x.data() + p * h * w;
    T* out = y.data() + p * oh * ow;
    for (std::size_t r = 0; r < oh; ++r)
      for (std::size_t q = 0; q < ow; ++q) out[r * ow + q] = in[argmax(in, w, r, q)];
  }
}

template <class T>
void MaxPool2D<T>::backward(const input_type& x, const output_type& /*y*/, const output_type& dy,
                            input_type& dx) const {
  check_input(x, "backward");
  const std::size_t planes = x.shape()[0] * x.shape()[1], h = x.shape()[2], w = x.shape()[3];
  const std::size_t oh = out_extent(h), ow = out_extent(w);
  detail::check_dy_shape(dy.shape(), std::array<std::size_t, 4>{x.shape()[0], x.shape()[1], oh, ow}, "MaxPool2D");
  if (dx.shape() != x.shape()) dx.resize(x.shape());
  std::fill_n(dx.data(), dx.size(), T(0));
  for (std::size_t p = 0; p < planes; ++p) {
    const T* in = x.data() + p * h * w;
    const T* g = dy.data() + p * oh * ow;
    T* d = dx.data() + p * h * w;
    for (std::size_t r = 0; r < oh; ++r)
      for (std::size_t q = 0; q < ow; ++q) d[argmax(in, w, r, q)] += g[r * ow + q];
  }
}

template <class T>
std::vector<std::size_t> MaxPool2D<T>::output_shape(const std::vector<std::size_t>& input_shape) const {
  PARALLAX_CHECK(input_shape.size() == 4 && input_shape[2] >= k_ && input_shape[3] >= k_,
                 describe() + ": input shape " + parallax::detail::shape_string(input_shape) +
                     " does not fit the expected (batch, channels, height >= " + std::to_string(k_) +
                     ", width >= " + std::to_string(k_) + ")");
  return {input_shape[0], input_shape[1], out_extent(input_shape[2]), out_extent(input_shape[3])};
}

}  // namespace parallax::nn
