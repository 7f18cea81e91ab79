#pragma once
// SPDX-License-Identifier: BSL-1.0
/// LayerNorm<T, N>: normalisation of every row of the last dimension to mean
/// 0 and variance 1, then a learnable gain and bias, as PyTorch's
/// nn.LayerNorm(width, eps, elementwise_affine=True).

#include <parallax/core/error.hpp>
#include <parallax/detail/number_text.hpp>
#include <parallax/detail/xtensor.hpp>
#include <parallax/nn/detail/checks.hpp>
#include <parallax/nn/detail/gain_and_bias.hpp>
#include <parallax/nn/detail/lane_sum.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

namespace parallax::nn {

/// Layer normalisation over the last dimension, of a width fixed at
/// construction: for every row x of `width` values (every position of every
/// sample),
///   y = (x - mean(x)) / sqrt(var(x) + eps) * gain + bias,
/// var the biased variance (divided by width), as PyTorch's nn.LayerNorm.
/// gain (PyTorch's `weight`) starts at 1 and bias at 0. Row statistics are
/// taken in double, and backward recomputes them from x: nothing is kept
/// between the calls. A NaN in a row makes that row's output and input
/// gradient NaN, and the gain gradient NaN (it sums over rows), as in PyTorch.
/// @code
///   parallax::nn::LayerNorm<float, 3> norm(512);    // [batch, sequence, 512]
///   norm.forward(x, y);
///   norm.backward(x, y, dy, dx);                     // dgain += sum dy xhat; dbias += sum dy
/// @endcode
template <class T, std::size_t N = 2>
class LayerNorm : public detail::GainAndBias<T> {
  static_assert(N >= 2, "parallax: LayerNorm needs tensors of rank 2 or more: batch first, the normalised width last");

 public:
  using value_type = T;
  using input_type = xt::xtensor<T, N>;
  using output_type = xt::xtensor<T, N>;

  /// backward(x, y, dy, dx) never reads y (BackwardIgnoresOutput).
  static constexpr bool backward_reads_output = false;

  /// PyTorch's default eps.
  static constexpr double default_eps = 1e-5;

  /// A layer normalising rows of `width` values (> 0), eps (>= 0, finite)
  /// added to the variance.
  explicit LayerNorm(std::size_t width, double eps = default_eps);

  /// gain 1 and bias 0, as PyTorch: nothing is drawn, so the seed and the
  /// index do not matter.
  void initialize(std::uint64_t seed, std::size_t index);

  /// y = (x - mean) / sqrt(var + eps) * gain + bias, row by row; y is
  /// resized only when its shape differs from x's.
  void forward(const input_type& x, output_type& y) const;

  /// dx = (g - mean(g) - xhat mean(g xhat)) / sqrt(var + eps) with
  /// g = dy * gain (dx resized only when needed); adds sum dy xhat to the
  /// gain gradient and sum dy to the bias gradient, summed over rows.
  void backward(const input_type& x, const output_type& y, const output_type& dy, input_type& dx);

  // parameters() (the gain, then the bias, each [width]), gradients(),
  // gain() (PyTorch's `weight`) and bias(): detail::GainAndBias's.

  /// The normalised width (the last dimension).
  std::size_t width() const { return width_; }
  /// What is added to the variance.
  double eps() const { return eps_; }

  /// "LayerNorm(512)", "LayerNorm(512, eps 1e-06)" for another eps.
  std::string describe() const;
  /// The input shape itself; throws parallax::error when its rank is not N
  /// or its last extent is not width.
  std::vector<std::size_t> output_shape(const std::vector<std::size_t>& input_shape) const;
  /// 2 * width: the gain and the bias.
  static std::size_t parameter_count(std::size_t width, double /*eps*/ = default_eps) { return 2 * width; }

 private:
  /// Throws parallax::error unless x's last extent is width.
  void check_input(const input_type& x, const char* where) const;
  /// The mean and 1 / sqrt(var + eps) of one row.
  struct statistics {
    double mean;
    double inv_std;
  };
  statistics row_statistics(const T* row) const;

  std::size_t width_;
  double eps_;
  using detail::GainAndBias<T>::gain_;
  using detail::GainAndBias<T>::bias_;
  using detail::GainAndBias<T>::gain_grad_;
  using detail::GainAndBias<T>::bias_grad_;
};

// ---------------------------------------------------------------------------

template <class T, std::size_t N>
LayerNorm<T, N>::LayerNorm(std::size_t width, double eps)
    : detail::GainAndBias<T>(width), width_(width), eps_(eps) {
  PARALLAX_CHECK(width > 0, "LayerNorm: the width must be positive, got 0");
  PARALLAX_CHECK(std::isfinite(eps) && eps >= 0,
                 "LayerNorm(" + std::to_string(width) + "): eps must be finite and >= 0, got " +
                     parallax::detail::number_text(eps));
}

template <class T, std::size_t N>
void LayerNorm<T, N>::initialize(std::uint64_t /*seed*/, std::size_t /*index*/) {
  this->reset_gain_and_bias();
}

template <class T, std::size_t N>
void LayerNorm<T, N>::check_input(const input_type& x, const char* where) const {
  PARALLAX_CHECK(x.shape()[N - 1] == width_, std::string("LayerNorm::") + where + "(): input of shape " +
                                                 parallax::detail::shape_string(x.shape()) + " has width " +
                                                 std::to_string(x.shape()[N - 1]) + ", expected " +
                                                 std::to_string(width_));
}

template <class T, std::size_t N>
auto LayerNorm<T, N>::row_statistics(const T* row) const -> statistics {
  // Two passes (mean, then the squares about it) in double, as exact as a
  // row of float or double needs; a NaN anywhere in the row reaches both.
  const double n = static_cast<double>(width_);
  const double mean = detail::lane_sum(width_, [&](std::size_t j) { return static_cast<double>(row[j]); }) / n;
  const double squares = detail::lane_sum(width_, [&](std::size_t j) {
    const double d = static_cast<double>(row[j]) - mean;
    return d * d;
  });
  return {mean, 1.0 / std::sqrt(squares / n + eps_)};
}

template <class T, std::size_t N>
void LayerNorm<T, N>::forward(const input_type& x, output_type& y) const {
  check_input(x, "forward");
  if (y.shape() != x.shape()) y.resize(x.shape());
  const std::size_t rows = x.size() / width_;
  const T* g = gain_.data();
  const T* b = bias_.data();
  for (std::size_t r = 0; r < rows; ++r) {
    const T* in = x.data() + r * width_;
    T* out = y.data() + r * width_;
    const statistics s = row_statistics(in);
    for (std::size_t j = 0; j < width_; ++j)
      out[j] = static_cast<T>((static_cast<double>(in[j]) - s.mean) * s.inv_std * static_cast<double>(g[j]) +
                              static_cast<double>(b[j]));
  }
}

template <class T, std::size_t N>
void LayerNorm<T, N>::backward(const input_type& x, const output_type& /*y*/, const output_type& dy, input_type& dx) {
  check_input(x, "backward");
  detail::check_dy_shape(dy.shape(), x.shape(), "LayerNorm");
  if (dx.shape() != x.shape()) dx.resize(x.shape());
  const std::size_t rows = x.size() / width_;
  const double n = static_cast<double>(width_);
  const T* gain = gain_.data();
  T* dgain = gain_grad_.data();
  T* dbias = bias_grad_.data();
  for (std::size_t r = 0; r < rows; ++r) {
    const T* in = x.data() + r * width_;
    const T* grad = dy.data() + r * width_;
    T* d = dx.data() + r * width_;
    const statistics s = row_statistics(in);
    auto xhat = [&](std::size_t j) { return (static_cast<double>(in[j]) - s.mean) * s.inv_std; };
    auto g = [&](std::size_t j) { return static_cast<double>(grad[j]) * static_cast<double>(gain[j]); };
    // mean(g) and mean(g xhat), g = dy * gain: the two terms the
    // normalisation's Jacobian subtracts.
    const double mean_g = detail::lane_sum(width_, g) / n;
    const double mean_g_xhat = detail::lane_sum(width_, [&](std::size_t j) { return g(j) * xhat(j); }) / n;
    for (std::size_t j = 0; j < width_; ++j) {
      dgain[j] += static_cast<T>(static_cast<double>(grad[j]) * xhat(j));
      dbias[j] += grad[j];
      d[j] = static_cast<T>((g(j) - mean_g - xhat(j) * mean_g_xhat) * s.inv_std);
    }
  }
}

template <class T, std::size_t N>
std::string LayerNorm<T, N>::describe() const {
  std::string text = "LayerNorm(";
  text += std::to_string(width_);
  if (eps_ != default_eps) {
    text += ", eps ";
    text += parallax::detail::number_text(eps_);
  }
  return text + ")";
}

template <class T, std::size_t N>
std::vector<std::size_t> LayerNorm<T, N>::output_shape(const std::vector<std::size_t>& input_shape) const {
  detail::check_input_rank(input_shape, N, describe());
  PARALLAX_CHECK(input_shape[N - 1] == width_, describe() + ": input shape " +
                                                   parallax::detail::shape_string(input_shape) + " has width " +
                                                   std::to_string(input_shape[N - 1]) + ", expected " +
                                                   std::to_string(width_));
  return input_shape;
}

}  // namespace parallax::nn
