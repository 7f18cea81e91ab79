// SPDX-License-Identifier: BSL-1.0
// The layers of a small transformer, so far GELU (exact and tanh forms).
// Forward values computed independently (Python's math.erf and math.tanh on
// the formulas PyTorch documents, or by hand), finite-difference gradients
// (double), NaN propagation and shape errors.

#include <parallax/nn/activation.hpp>

#include "error_of.hpp"
#include "gradcheck.hpp"
#include "test_nn_nonfinite.hpp"
#include "xtensor_print.hpp"

#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace {

using parallax::nn::GELU;
using parallax::nn::gelu_approximation;

template <class T, std::size_t N>
xt::xtensor<T, N> random_tensor(std::array<std::size_t, N> shape, std::uint64_t seed, double scale = 1.0) {
  xt::xtensor<T, N> t(shape);
  gradcheck::fill_uniform(t, seed, -scale, scale);
  return t;
}

static_assert(parallax::Layer<GELU<float>>);
static_assert(parallax::Layer<GELU<double, 3>>);
static_assert(!parallax::HasLayerParameters<GELU<float>>);

}  // namespace

TEST_CASE("GELU: exact and tanh forms match PyTorch's formulas") {
  // Expected values: Python's math.erf / math.tanh on
  // 0.5 x (1 + erf(x / sqrt 2)) and 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))).
  const xt::xtensor<double, 2> x = {{-1.0, 0.0, 0.5, 2.0}};
  xt::xtensor<double, 2> y;
  GELU<double> exact;
  exact.forward(x, y);
  CHECK(nonfinite::mismatch(y, {-0.15865525393145707, 0, 0.34573123063700656, 1.9544997361036416}, 1e-15) == "");
  GELU<double> fast(gelu_approximation::tanh);
  fast.forward(x, y);
  CHECK(nonfinite::mismatch(y, {-0.15880800939172324, 0, 0.34571400982514394, 1.954597694087775}, 1e-15) == "");
  // The slope at 0 is Phi(0) = 1/2 in both forms.
  xt::xtensor<double, 2> dx;
  const xt::xtensor<double, 2> zero = {{0.0}}, one = {{1.0}};
  exact.forward(zero, y);
  exact.backward(zero, y, one, dx);
  CHECK(dx(0, 0) == 0.5);
  fast.backward(zero, y, one, dx);
  CHECK(dx(0, 0) == 0.5);
  CHECK(exact.describe() == "GELU");
  CHECK(fast.describe() == "GELU(tanh)");
  CHECK(GELU<float>::parameter_count() == 0);
  CHECK(GELU<float, 3>{}.output_shape({2, 3, 4}) == std::vector<std::size_t>{2, 3, 4});
  CHECK(error_of([] { (void)GELU<float, 3>{}.output_shape({2, 3}); }).find("GELU") == 0);
}

TEST_CASE("GELU: finite-difference gradients, both forms") {
  for (const auto a : {gelu_approximation::exact, gelu_approximation::tanh}) {
    GELU<double> g2(a);
    GELU<double, 3> g3(a);
    CHECK(gradcheck::check_layer(g2, random_tensor<double, 2>({3, 5}, 1, 4.0)).max_error < 1e-6);
    CHECK(gradcheck::check_layer(g3, random_tensor<double, 3>({2, 3, 4}, 2, 4.0)).max_error < 1e-6);
  }
}

TEST_CASE_TEMPLATE("GELU: a NaN gives NaN forward and backward", T, float, double) {
  using nonfinite::nan;
  for (const auto a : {gelu_approximation::exact, gelu_approximation::tanh}) {
    GELU<T> g(a);
    const auto x = nonfinite::tensor<T, 2>({1, 3}, {nan, 0, 1});
    xt::xtensor<T, 2> y, dx;
    g.forward(x, y);
    CHECK(std::isnan(y(0, 0)));
    CHECK(y(0, 1) == T(0));
    CHECK(std::isfinite(y(0, 2)));
    g.backward(x, y, nonfinite::tensor<T, 2>({1, 3}, {1, nan, 1}), dx);
    CHECK(std::isnan(dx(0, 0)));  // NaN slope
    CHECK(std::isnan(dx(0, 1)));  // NaN dy
    CHECK(std::isfinite(dx(0, 2)));
  }
}
