#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Elementwise activations ReLU, Tanh, Sigmoid and GELU over tensors of any
/// rank: stateless layers whose backward reads the input (ReLU, GELU) or the
/// output (Tanh, Sigmoid), whichever gives the derivative directly. NaN and
/// infinities go through them as through PyTorch's.

#include <parallax/core/error.hpp>
#include <parallax/detail/xtensor.hpp>
#include <parallax/nn/detail/checks.hpp>
#include <parallax/nn/detail/vector_math.hpp>

#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace parallax::nn {

namespace detail {

/// The shared body of an elementwise layer: Derived provides
/// `T value(T x) const`, `T slope(T x, T y) const` (dy/dx from x and y;
/// both may be static) and `static constexpr const char* name`; optionally
/// bulk forms `values(x, y, n)` and `input_gradient(x, dy, dx, n)` that
/// forward and backward use instead (GELU<float>'s vector erf).
template <class Derived, class T, std::size_t N>
class Elementwise {
 public:
  static_assert(N >= 1, "parallax: an elementwise layer needs tensors of rank 1 or more (batch first)");
  using value_type = T;
  using input_type = xt::xtensor<T, N>;
  using output_type = xt::xtensor<T, N>;

  /// No parameters: nothing to draw.
  void initialize(std::uint64_t /*seed*/, std::size_t /*index*/) {}

  /// y = f(x) elementwise; y is resized only when its shape differs from x's.
  void forward(const input_type& x, output_type& y) const {
    if (y.shape() != x.shape()) y.resize(x.shape());
    const T* in = x.data();
    T* out = y.data();
    const std::size_t n = x.size();
    if constexpr (requires { self().values(in, out, n); }) self().values(in, out, n);  // a bulk form
    else
      for (std::size_t i = 0; i < n; ++i) out[i] = self().value(in[i]);
  }

  /// dx = f'(x) * dy elementwise, with f' from x or y.
  void backward(const input_type& x, const output_type& y, const output_type& dy, input_type& dx) const {
    PARALLAX_CHECK(y.shape() == x.shape() && dy.shape() == x.shape(),
                   std::string(Derived::name) + "::backward(): x, y and dy must have one shape, got " +
                       parallax::detail::shape_string(x.shape()) + ", " +
                       parallax::detail::shape_string(y.shape()) + " and " +
                       parallax::detail::shape_string(dy.shape()));
    if (dx.shape() != x.shape()) dx.resize(x.shape());
    const T* in = x.data();
    const T* out = y.data();
    const T* g = dy.data();
    T* d = dx.data();
    const std::size_t n = x.size();
    if constexpr (requires { self().input_gradient(in, g, d, n); }) self().input_gradient(in, g, d, n);
    else
      for (std::size_t i = 0; i < n; ++i) d[i] = self().slope(in[i], out[i]) * g[i];
  }

  /// The layer's name, e.g. "ReLU".
  std::string describe() const { return Derived::name; }

  /// The input shape itself; throws parallax::error when its rank is not N.
  std::vector<std::size_t> output_shape(const std::vector<std::size_t>& input_shape) const {
    check_input_rank(input_shape, N, Derived::name);
    return input_shape;
  }

  /// Stateless: 0.
  static std::size_t parameter_count() { return 0; }

 private:
  const Derived& self() const { return static_cast<const Derived&>(*this); }
};

}  // namespace detail

/// max(x, 0), with relu(NaN) = NaN as in PyTorch; the slope is 0 where
/// x <= 0 (0 at x = 0) and 1 elsewhere, NaN included (PyTorch passes dy
/// where relu(x) is not <= 0). dx = slope * dy, so a NaN dy stays NaN even
/// where the slope is 0 (PyTorch writes 0 there): no NaN is dropped.
template <class T, std::size_t N = 2>
class ReLU : public detail::Elementwise<ReLU<T, N>, T, N> {
 public:
  static constexpr const char* name = "ReLU";
  // `x <= 0` is false for NaN, so NaN takes the x > 0 branch; for every
  // other x this is the same select as `x > 0 ? x : 0`, as cheap and as
  // vectorizable.
  static T value(T x) { return x <= T(0) ? T(0) : x; }
  static T slope(T x, T /*y*/) { return x <= T(0) ? T(0) : T(1); }
};

/// tanh(x); the slope is 1 - y^2.
template <class T, std::size_t N = 2>
class Tanh : public detail::Elementwise<Tanh<T, N>, T, N> {
 public:
  static constexpr const char* name = "Tanh";
  static T value(T x) { return std::tanh(x); }
  static T slope(T /*x*/, T y) { return T(1) - y * y; }
};

/// 1 / (1 + exp(-x)), evaluated without overflow for large |x|; the slope is
/// y (1 - y).
template <class T, std::size_t N = 2>
class Sigmoid : public detail::Elementwise<Sigmoid<T, N>, T, N> {
 public:
  static constexpr const char* name = "Sigmoid";
  static T value(T x) {
    if (x >= T(0)) return T(1) / (T(1) + std::exp(-x));
    const T e = std::exp(x);
    return e / (T(1) + e);
  }
  static T slope(T /*x*/, T y) { return y * (T(1) - y); }
};

/// Which formula GELU evaluates, as PyTorch's `approximate` argument:
/// `exact` is x Phi(x) through erf, `tanh` the tanh approximation.
enum class gelu_approximation { exact, tanh };

/// x Phi(x), Phi the standard normal CDF, as PyTorch's F.gelu:
///   exact: 0.5 x (1 + erf(x / sqrt(2)))
///   tanh:  0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
/// The slope is the derivative of the formula chosen (from x). Evaluated in
/// T, as PyTorch's CPU kernels do: double in double; float through erff,
/// expf and tanhf, and for the exact form's forward and backward through
/// glibc's vector erff and expf (libmvec, x86-64 with GCC) in blocks of 16
/// values (nn/detail/vector_math.hpp: an element's bits do not depend on its
/// position), within a few ulp of value() and slope(), about 10x faster. A
/// NaN gives NaN forward and backward.
/// @code
///   parallax::nn::GELU<float, 3> exact;                                       // [batch, sequence, width]
///   parallax::nn::GELU<float> fast(parallax::nn::gelu_approximation::tanh);
/// @endcode
template <class T, std::size_t N = 2>
class GELU : public detail::Elementwise<GELU<T, N>, T, N> {
 public:
  static constexpr const char* name = "GELU";

  explicit GELU(gelu_approximation approximation = gelu_approximation::exact) : approximation_(approximation) {}

  gelu_approximation approximation() const { return approximation_; }

  T value(T x) const {
    if (approximation_ == gelu_approximation::exact) return T(0.5) * x * (T(1) + std::erf(x * T(sqrt1_2)));
    return T(0.5) * x * (T(1) + std::tanh(T(sqrt_2_pi) * (x + T(coefficient) * x * x * x)));
  }
  T slope(T x, T /*y*/) const {
    if (approximation_ == gelu_approximation::exact) {
      // Phi(x) + x phi(x).
      const T pdf = T(inv_sqrt_2pi) * std::exp(T(-0.5) * x * x);
      return T(0.5) * (T(1) + std::erf(x * T(sqrt1_2))) + x * pdf;
    }
    const T t = std::tanh(T(sqrt_2_pi) * (x + T(coefficient) * x * x * x));
    return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * T(sqrt_2_pi) * (T(1) + T(3 * coefficient) * x * x);
  }

  /// forward's bulk form for float: the exact form in blocks through the
  /// vector erff; the tanh form element by element.
  void values(const T* x, T* y, std::size_t n) const
    requires std::same_as<T, float>
  {
    if (approximation_ != gelu_approximation::exact) {
      for (std::size_t i = 0; i < n; ++i) y[i] = value(x[i]);
      return;
    }
    detail::for_each_block(n, &forward_block, y, x);
  }
  /// backward's bulk form for float: dx = (Phi(x) + x phi(x)) dy, the exact
  /// form in blocks through the vector erff and expf.
  void input_gradient(const T* x, const T* dy, T* dx, std::size_t n) const
    requires std::same_as<T, float>
  {
    if (approximation_ != gelu_approximation::exact) {
      for (std::size_t i = 0; i < n; ++i) dx[i] = slope(x[i], x[i]) * dy[i];
      return;
    }
    detail::for_each_block(n, &backward_block, dx, x, dy);
  }

  /// "GELU" or "GELU(tanh)".
  std::string describe() const { return approximation_ == gelu_approximation::exact ? "GELU" : "GELU(tanh)"; }
  /// Stateless: 0 (the approximation is not a parameter).
  static std::size_t parameter_count(gelu_approximation = gelu_approximation::exact) { return 0; }

 private:
  // One block each, never inlined: whole blocks and the padded tail run the
  // same machine code, so the same bits.
  [[gnu::noinline]] static void forward_block(float* out, const float* in) {
    for (std::size_t k = 0; k < detail::math_block; ++k)
      out[k] = 0.5f * in[k] * (1.0f + detail::block_erf(in[k] * float(sqrt1_2)));
  }
  [[gnu::noinline]] static void backward_block(float* out, const float* in, const float* g) {
    for (std::size_t k = 0; k < detail::math_block; ++k) {
      const float pdf = float(inv_sqrt_2pi) * detail::block_exp(-0.5f * in[k] * in[k]);
      out[k] = (0.5f * (1.0f + detail::block_erf(in[k] * float(sqrt1_2))) + in[k] * pdf) * g[k];
    }
  }
  static constexpr double sqrt1_2 = 0.70710678118654752440;       // 1 / sqrt(2)
  static constexpr double sqrt_2_pi = 0.79788456080286535588;     // sqrt(2 / pi)
  static constexpr double inv_sqrt_2pi = 0.39894228040143267794;  // 1 / sqrt(2 pi)
  static constexpr double coefficient = 0.044715;
  gelu_approximation approximation_;
};

}  // namespace parallax::nn
