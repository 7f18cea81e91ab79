#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Conv2D<T>: a 2-D convolution over NCHW tensors, lowered to matrix
/// products with im2col (forward) and col2im (backward) so that BLAS
/// (xt::blas::gemm) does the arithmetic.

#include <parallax/core/error.hpp>
#include <parallax/detail/xtensor.hpp>
#include <parallax/nn/detail/checks.hpp>
#include <parallax/nn/detail/weight_and_bias.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace parallax::nn {

/// A 2-D convolution (cross-correlation, as in PyTorch) of x [batch,
/// in_channels, height, width] with square kernels, a stride and zero
/// padding, giving y [batch, out_channels, out_height, out_width] with
/// out_height = (height + 2 padding - kernel) / stride + 1.
///
/// The weight is stored as a matrix [out_channels, in_channels * kernel *
/// kernel] (row index c * kernel * kernel + i * kernel + j within a row), so
/// each sample's output is weight * im2col(sample) + bias. The im2col and
/// col2im scratch matrices belong to the layer and are reused; no activation
/// is kept between forward and backward.
/// @code
///   parallax::nn::Conv2D<float> conv(1, 8, 3, 1, 1);   // 1 -> 8 channels, 3x3, same size
///   conv.initialize(seed, 0);
///   conv.forward(x, y);
/// @endcode
template <class T>
class Conv2D : public detail::WeightAndBias<T> {
 public:
  using value_type = T;
  using input_type = xt::xtensor<T, 4>;
  using output_type = xt::xtensor<T, 4>;

  /// in_channels -> out_channels with kernel x kernel filters; weights start
  /// at zero until initialize().
  Conv2D(std::size_t in_channels, std::size_t out_channels, std::size_t kernel, std::size_t stride = 1,
         std::size_t padding = 0);

  /// Weight and bias uniform in [-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in =
  /// in_channels * kernel * kernel (PyTorch's default), from (seed, index).
  void initialize(std::uint64_t seed, std::size_t index);

  /// y = conv(x) + bias; y is resized only when its shape differs.
  void forward(const input_type& x, output_type& y);

  /// dx = col2im(weight^T dy) (dx resized only when needed); adds dy
  /// im2col(x)^T to the weight gradient and dy's per-channel sums to the
  /// bias gradient.
  void backward(const input_type& x, const output_type& y, const output_type& dy, input_type& dx);
  /// backward() without dx (no col2im, one GEMM less): chains call it for
  /// their first layer, whose input gradient nobody reads.
  void backward_parameters(const input_type& x, const output_type& y, const output_type& dy);

  // parameters(), gradients(), weight() and bias(): from WeightAndBias, the
  // weight [out_channels, in_channels * kernel * kernel] and the bias
  // [out_channels].

  std::size_t in_channels() const { return in_; }
  std::size_t out_channels() const { return out_; }
  std::size_t kernel() const { return k_; }
  std::size_t stride() const { return stride_; }
  std::size_t padding() const { return pad_; }

  /// "Conv2D(3 -> 16, kernel 3, stride 1, padding 0)".
  std::string describe() const;
  /// [batch, out_channels, out_height, out_width] for an input [batch,
  /// in_channels, height, width]; throws parallax::error when it does not fit.
  std::vector<std::size_t> output_shape(const std::vector<std::size_t>& input_shape) const;
  /// out_channels * in_channels * kernel * kernel + out_channels.
  static std::size_t parameter_count(std::size_t in_channels, std::size_t out_channels, std::size_t kernel,
                                     std::size_t /*stride*/ = 1, std::size_t /*padding*/ = 0) {
    return out_channels * in_channels * kernel * kernel + out_channels;
  }

 private:
  void backward_impl(const input_type& x, const output_type& dy, input_type* dx);
  bool fits(std::size_t channels, std::size_t height, std::size_t width) const {
    return channels == in_ && height + 2 * pad_ >= k_ && width + 2 * pad_ >= k_;
  }
  std::size_t out_extent(std::size_t n) const { return (n + 2 * pad_ - k_) / stride_ + 1; }
  void check_input(const input_type& x, const char* where) const;
  /// Resizes a scratch matrix to [rows, cols] when it has another shape.
  static void reserve(xt::xtensor<T, 2>& m, std::size_t rows, std::size_t cols);
  /// What for_each_col_row passes for an input row that is all padding.
  static constexpr std::size_t padding_row = std::numeric_limits<std::size_t>::max();
  /// The walk im2col and col2im share: for each kernel tap (c, ki, kj) and
  /// output row r, f(col_at, image_at, kj) with col_at the offset of that
  /// row of the column matrix [C k k, oh * ow] and image_at the offset in
  /// the image [C, h, w] of input row r * stride + ki - padding, or
  /// padding_row.
  template <class F>
  void for_each_col_row(std::size_t h, std::size_t w, std::size_t oh, std::size_t ow, F f) const;
  /// col [C k k, oh * ow] from one sample's image [C, h, w].
  void im2col(const T* image, std::size_t h, std::size_t w, std::size_t oh, std::size_t ow, T* col) const;
  /// Adds col [C k k, oh * ow] back into one sample's image [C, h, w].
  void col2im(const T* col, std::size_t h, std::size_t w, std::size_t oh, std::size_t ow, T* image) const;

  // weight_, bias_ and their gradients live in WeightAndBias (this->).
  std::size_t in_;
  std::size_t out_;
  std::size_t k_;
  std::size_t stride_;
  std::size_t pad_;
  xt::xtensor<T, 2> col_;   // scratch: im2col of the current sample
  xt::xtensor<T, 2> dcol_;  // scratch: weight^T dy of the current sample
};

// ---------------------------------------------------------------------------

template <class T>
Conv2D<T>::Conv2D(std::size_t in_channels, std::size_t out_channels, std::size_t kernel, std::size_t stride,
                  std::size_t padding)
    : in_(in_channels),
      out_(out_channels),
      k_(kernel),
      stride_(stride),
      pad_(padding) {
  PARALLAX_CHECK(in_channels > 0 && out_channels > 0 && kernel > 0 && stride > 0,
                 "Conv2D: channels, kernel and stride must be positive, got " + describe());
  this->allocate(out_channels, in_channels * kernel * kernel, out_channels, describe());
  // Usable weights from the start, as initialize(0, 0) gives them; chains
  // re-initialise each layer from (seed, its index).
  initialize(0, 0);
}

template <class T>
void Conv2D<T>::initialize(std::uint64_t seed, std::size_t index) {
  this->draw(seed, index, in_ * k_ * k_);
}

template <class T>
void Conv2D<T>::check_input(const input_type& x, const char* where) const {
  const auto& s = x.shape();
  PARALLAX_CHECK(fits(s[1], s[2], s[3]),
                 "Conv2D::" + std::string(where) + "(): input shape " + parallax::detail::shape_string(s) +
                     " does not fit " + describe() + ", which expects (batch, " + std::to_string(in_) +
                     ", height, width) with height and width + 2 * padding >= " + std::to_string(k_));
}

template <class T>
void Conv2D<T>::reserve(xt::xtensor<T, 2>& m, std::size_t rows, std::size_t cols) {
  const std::array<std::size_t, 2> shape{rows, cols};
  if (m.shape() != shape) m.resize(shape);
}

template <class T>
template <class F>
void Conv2D<T>::for_each_col_row(std::size_t h, std::size_t w, std::size_t oh, std::size_t ow, F f) const {
  for (std::size_t c = 0; c < in_; ++c)
    for (std::size_t ki = 0; ki < k_; ++ki)
      for (std::size_t kj = 0; kj < k_; ++kj) {
        const std::size_t row = ((c * k_ + ki) * k_ + kj) * oh * ow;
        for (std::size_t r = 0; r < oh; ++r) {
          // Input row r * stride + ki - padding, kept unsigned: valid when in [pad, pad + h).
          const std::size_t i = r * stride_ + ki;
          f(row + r * ow, (i < pad_ || i - pad_ >= h) ? padding_row : (c * h + (i - pad_)) * w, kj);
        }
      }
}

template <class T>
void Conv2D<T>::im2col(const T* image, std::size_t h, std::size_t w, std::size_t oh, std::size_t ow,
                       T* col) const {
  for_each_col_row(h, w, oh, ow, [&](std::size_t col_at, std::size_t image_at, std::size_t kj) {
    T* out = col + col_at;
    if (image_at == padding_row) {
      std::fill_n(out, ow, T(0));
      return;
    }
    const T* in = image + image_at;
    for (std::size_t q = 0; q < ow; ++q) {
      const std::size_t j = q * stride_ + kj;
      out[q] = (j < pad_ || j - pad_ >= w) ? T(0) : in[j - pad_];
    }
  });
}

template <class T>
void Conv2D<T>::col2im(const T* col, std::size_t h, std::size_t w, std::size_t oh, std::size_t ow,
                       T* image) const {
  for_each_col_row(h, w, oh, ow, [&](std::size_t col_at, std::size_t image_at, std::size_t kj) {
    if (image_at == padding_row) return;
    const T* in = col + col_at;
    T* out = image + image_at;
    for (std::size_t q = 0; q < ow; ++q) {
      const std::size_t j = q * stride_ + kj;
      if (j >= pad_ && j - pad_ < w) out[j - pad_] += in[q];
    }
  });
}

template <class T>
void Conv2D<T>::forward(const input_type& x, output_type& y) {
  check_input(x, "forward");
  const std::size_t batch = x.shape()[0], h = x.shape()[2], w = x.shape()[3];
  const std::size_t oh = out_extent(h), ow = out_extent(w), plane = oh * ow;
  const std::array<std::size_t, 4> shape{batch, out_, oh, ow};
  if (y.shape() != shape) y.resize(shape);
  if (batch == 0) return;
  reserve(col_, in_ * k_ * k_, plane);
  const std::array<std::size_t, 2> out_shape{out_, plane};
  for (std::size_t b = 0; b < batch; ++b) {
    im2col(x.data() + b * in_ * h * w, h, w, oh, ow, col_.data());
    T* out = y.data() + b * out_ * plane;
    for (std::size_t o = 0; o < out_; ++o) std::fill_n(out + o * plane, plane, this->bias_(o));
    // A non-owning row-major view of this sample's [out_channels, plane] block.
    auto yb = xt::adapt(out, out_ * plane, xt::no_ownership(), out_shape);
    xt::blas::gemm(this->weight_, col_, yb, false, false, T(1), T(1));
  }
}

template <class T>
void Conv2D<T>::backward(const input_type& x, const output_type& /*y*/, const output_type& dy, input_type& dx) {
  backward_impl(x, dy, &dx);
}

template <class T>
void Conv2D<T>::backward_parameters(const input_type& x, const output_type& /*y*/, const output_type& dy) {
  backward_impl(x, dy, nullptr);
}

template <class T>
void Conv2D<T>::backward_impl(const input_type& x, const output_type& dy, input_type* dx) {
  check_input(x, "backward");
  const std::size_t batch = x.shape()[0], h = x.shape()[2], w = x.shape()[3];
  const std::size_t oh = out_extent(h), ow = out_extent(w), plane = oh * ow;
  detail::check_dy_shape(dy.shape(), std::array<std::size_t, 4>{batch, out_, oh, ow}, "Conv2D");
  if (dx) {
    if (dx->shape() != x.shape()) dx->resize(x.shape());
    std::fill_n(dx->data(), dx->size(), T(0));
  }
  if (batch == 0) return;
  reserve(col_, in_ * k_ * k_, plane);
  if (dx) reserve(dcol_, in_ * k_ * k_, plane);
  const std::array<std::size_t, 2> out_shape{out_, plane};
  T* db = this->bias_grad_.data();
  for (std::size_t b = 0; b < batch; ++b) {
    im2col(x.data() + b * in_ * h * w, h, w, oh, ow, col_.data());
    const T* g = dy.data() + b * out_ * plane;
    auto dyb = xt::adapt(g, out_ * plane, xt::no_ownership(), out_shape);
    xt::blas::gemm(dyb, col_, this->weight_grad_, false, true, T(1), T(1));
    for (std::size_t o = 0; o < out_; ++o) {
      T sum = T(0);
      for (std::size_t p = 0; p < plane; ++p) sum += g[o * plane + p];
      db[o] += sum;
    }
    if (dx) {
      xt::blas::gemm(this->weight_, dyb, dcol_, true, false, T(1), T(0));
      col2im(dcol_.data(), h, w, oh, ow, dx->data() + b * in_ * h * w);
    }
  }
}

template <class T>
std::string Conv2D<T>::describe() const {
  return "Conv2D(" + std::to_string(in_) + " -> " + std::to_string(out_) + ", kernel " + std::to_string(k_) +
         ", stride " + std::to_string(stride_) + ", padding " + std::to_string(pad_) + ")";
}

template <class T>
std::vector<std::size_t> Conv2D<T>::output_shape(const std::vector<std::size_t>& input_shape) const {
  PARALLAX_CHECK(input_shape.size() == 4 && fits(input_shape[1], input_shape[2], input_shape[3]),
                 describe() + ": input shape " + parallax::detail::shape_string(input_shape) +
                     " does not fit the expected (batch, " + std::to_string(in_) +
                     ", height, width) with height and width + 2 * padding >= " + std::to_string(k_));
  return {input_shape[0], out_, out_extent(input_shape[2]), out_extent(input_shape[3])};
}

}  // namespace parallax::nn
