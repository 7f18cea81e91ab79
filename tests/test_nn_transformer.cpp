// SPDX-License-Identifier: BSL-1.0
// The layers of a small transformer: GELU (exact and tanh forms),
// LayerNorm, Embedding and TokenCrossEntropy, and a chain of them in
// Sequential. Forward values computed independently (Python's math.erf and
// math.tanh on the formulas PyTorch documents, Python's decimal module on
// nn.LayerNorm's and F.cross_entropy's formulas, or by hand),
// finite-difference gradients (double), NaN propagation and shape errors.

#include <parallax/nn/activation.hpp>
#include <parallax/nn/embedding.hpp>
#include <parallax/nn/layer_norm.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/sequential.hpp>
#include <parallax/nn/token_cross_entropy.hpp>

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
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

using parallax::nn::Embedding;
using parallax::nn::GELU;
using parallax::nn::gelu_approximation;
using parallax::nn::LayerNorm;
using parallax::nn::Linear;
using parallax::nn::TokenCrossEntropy;
using ids = xt::xtensor<std::int64_t, 2>;

using gradcheck::random_tensor;

static_assert(parallax::Layer<GELU<float>>);
static_assert(parallax::Layer<GELU<double, 3>>);
static_assert(!parallax::HasLayerParameters<GELU<float>>);
static_assert(parallax::Layer<LayerNorm<float>>);
static_assert(parallax::Layer<LayerNorm<double, 3>>);
static_assert(parallax::HasLayerParameters<LayerNorm<float, 3>>);
static_assert(parallax::Layer<Embedding<float>>);
static_assert(parallax::HasLayerParameters<Embedding<double>>);
static_assert(parallax::HasParameterBackward<Embedding<float>>);
static_assert(parallax::Loss<TokenCrossEntropy<float>>);
static_assert(!parallax::HasCorrectCount<TokenCrossEntropy<double>>);
static_assert(!parallax::Layer<TokenCrossEntropy<double>>);

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

TEST_CASE("GELU<float>: forward and backward in blocks stay within a few ulp of the formulas, whatever the position") {
  // The exact form's float forward and backward run in blocks of 16 through
  // the vector erff and expf (where the build has them); the reference is
  // the formula in double.
  for (const auto a : {gelu_approximation::exact, gelu_approximation::tanh}) {
    GELU<float> g(a);
    const std::size_t n = 1001;  // 62 whole blocks and a tail of 9
    xt::xtensor<float, 2> x({n, 1}), y, dx, dy({n, 1}, 1.0f);
    for (std::size_t i = 0; i < n; ++i) x(i, 0) = -8.0f + 16.0f * static_cast<float>(i) / static_cast<float>(n - 1);
    g.forward(x, y);
    g.backward(x, y, dy, dx);
    double worst_y = 0, worst_dx = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const double v = x(i, 0);
      const double phi = 0.5 * (1 + std::erf(v / std::sqrt(2.0)));
      const double ref_y = a == gelu_approximation::exact ? v * phi : GELU<double>(a).value(v);
      const double ref_dx = a == gelu_approximation::exact ? phi + v * std::exp(-0.5 * v * v) / std::sqrt(2 * M_PI)
                                                           : GELU<double>(a).slope(v, 0);
      worst_y = std::max(worst_y, std::abs(y(i, 0) - ref_y) / (1 + std::abs(v)));
      worst_dx = std::max(worst_dx, std::abs(dx(i, 0) - ref_dx) / (1 + std::abs(v)));
    }
    CHECK(worst_y < 1e-6);
    CHECK(worst_dx < 1e-6);
  }
  // The same value gives the same bits in a whole block and in a tail, at
  // every length (a shard or a micro-batch of another size).
  GELU<float> g;
  const std::vector<float> values = {-3.7f, -1.1f, -0.3f, 0.0f, 0.45f, 1.9f, 5.2f};
  xt::xtensor<float, 2> first_y, first_dx;
  for (std::size_t n = 1; n <= 40; ++n) {
    xt::xtensor<float, 2> x({n, values.size()}), y, dx, dy({n, values.size()}, 0.5f);
    for (std::size_t r = 0; r < n; ++r)
      for (std::size_t c = 0; c < values.size(); ++c) x(r, c) = values[c];
    g.forward(x, y);
    g.backward(x, y, dy, dx);
    if (n == 1) {
      first_y = y;
      first_dx = dx;
      continue;
    }
    for (std::size_t r = 0; r < n; ++r)
      for (std::size_t c = 0; c < values.size(); ++c) {
        CHECK(y(r, c) == first_y(0, c));
        CHECK(dx(r, c) == first_dx(0, c));
      }
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

// ---------------------------------------------------------------------------
// LayerNorm
// ---------------------------------------------------------------------------

TEST_CASE("LayerNorm: forward and gradients match nn.LayerNorm's formulas") {
  // Expected values: nn.LayerNorm's documented formula (biased variance,
  // eps inside the square root) and its gradient, evaluated in Python's
  // decimal module at 50 digits (not by torch, which is not installed here).
  LayerNorm<double> norm(4);
  CHECK(norm.width() == 4);
  CHECK(norm.eps() == 1e-5);
  norm.gain() = xt::xtensor<double, 1>{1.0, 0.5, -2.0, 3.0};
  norm.bias() = xt::xtensor<double, 1>{0.0, 1.0, -1.0, 0.5};
  const xt::xtensor<double, 2> x = {{1.0, 2.0, 4.0, 8.0}, {-0.5, 0.25, 3.0, -2.0}};
  xt::xtensor<double, 2> y, dx;
  norm.forward(x, y);
  CHECK(nonfinite::mismatch(y, {-1.025754575496193, 0.6736235441603022, -1.1865008319083987, 5.255771213664167,
                                -0.37885954942019023, 1.0172208886100087, -4.099759949801556, -3.116386608101816},
                            1e-14) == "");
  const xt::xtensor<double, 2> dy = {{0.1, -0.2, 0.3, 0.4}, {1.0, 0.0, -1.0, 2.0}};
  norm.backward(x, y, dy, dx);
  CHECK(nonfinite::mismatch(dx, {0.15439001314142736, 0.016866008984516144, -0.295482165710986, 0.12422614358504253,
                                 -0.9243299702964899, -1.2184953957482458, 0.8256191788768835, 1.3172061871678522},
                            1e-13) == "");
  CHECK(nonfinite::mismatch(std::get<0>(norm.gradients()),
                            {-0.4814350069698095, 0.1305505823358791, -1.5219048501145185, -1.776821576912655},
                            1e-13) == "");
  CHECK(nonfinite::mismatch(std::get<1>(norm.gradients()), {1.1, -0.2, -0.7, 2.4}, 1e-15) == "");
  // Gradients accumulate: a second backward doubles them.
  norm.backward(x, y, dy, dx);
  CHECK(std::get<1>(norm.gradients())(0) == doctest::Approx(2.2).epsilon(1e-15));

  // Another eps, with the default gain 1 and bias 0.
  LayerNorm<double> wide(4, 0.5);
  wide.forward(x, y);
  CHECK(nonfinite::mismatch(y, {-0.9918365981341756, -0.6311687442672026, 0.09016696346674323, 1.532838378934635,
                                -0.353006799093124, 0.032091527190284, 1.4441187235627801, -1.12320345165994},
                            1e-14) == "");
  CHECK(wide.describe() == "LayerNorm(4, eps 0.5)");
  CHECK(norm.describe() == "LayerNorm(4)");
  CHECK(LayerNorm<float>::parameter_count(512) == 1024);
  CHECK(LayerNorm<float, 3>(8).output_shape({2, 5, 8}) == std::vector<std::size_t>{2, 5, 8});
}

TEST_CASE("LayerNorm: initialize sets gain 1 and bias 0, whatever the seed") {
  LayerNorm<float, 3> norm(3);
  norm.gain().fill(7.0f);
  norm.bias().fill(-2.0f);
  norm.initialize(12345, 6);
  CHECK(nonfinite::mismatch(norm.gain(), {1, 1, 1}) == "");
  CHECK(nonfinite::mismatch(norm.bias(), {0, 0, 0}) == "");
}

TEST_CASE("LayerNorm: finite-difference gradients, rank 2 and 3, with gain, bias and eps") {
  LayerNorm<double> n2(5);
  gradcheck::fill_uniform(n2.gain(), 11, 0.5, 2.0);
  gradcheck::fill_uniform(n2.bias(), 12);
  CHECK(gradcheck::check_layer(n2, random_tensor<double, 2>({3, 5}, 1, 3.0)).max_error < 1e-6);
  LayerNorm<double, 3> n3(4, 0.1);
  gradcheck::fill_uniform(n3.gain(), 13, -2.0, 2.0);
  gradcheck::fill_uniform(n3.bias(), 14);
  CHECK(gradcheck::check_layer(n3, random_tensor<double, 3>({2, 3, 4}, 2, 3.0)).max_error < 1e-6);
  // A constant row: the variance is 0 and eps alone keeps the scale finite.
  LayerNorm<double> flat(3);
  const xt::xtensor<double, 2> x = {{2.0, 2.0, 2.0}, {1.0, -1.0, 0.5}};
  const auto r = gradcheck::check_layer(flat, x, 7, 1e-7);
  CHECK_MESSAGE(r.max_error < 1e-5, r.where);
}

TEST_CASE_TEMPLATE("LayerNorm: a NaN makes its row NaN, and the gain gradient", T, float, double) {
  // As PyTorch's layer_norm kernels: dgain sums dy * xhat over rows (NaN
  // from the NaN row), dbias sums dy (finite).
  using nonfinite::nan;
  LayerNorm<T> norm(3);
  const auto x = nonfinite::tensor<T, 2>({2, 3}, {nan, 1, 2, 0, 1, 3});
  xt::xtensor<T, 2> y, dx;
  norm.forward(x, y);
  for (std::size_t j = 0; j < 3; ++j) {
    CHECK(std::isnan(y(0, j)));
    CHECK(std::isfinite(y(1, j)));
  }
  const auto dy = nonfinite::tensor<T, 2>({2, 3}, {1, 1, 1, 1, 1, 1});
  norm.backward(x, y, dy, dx);
  for (std::size_t j = 0; j < 3; ++j) {
    CHECK(std::isnan(dx(0, j)));
    CHECK(std::isfinite(dx(1, j)));
    CHECK(std::isnan(std::get<0>(norm.gradients())(j)));
    CHECK(std::get<1>(norm.gradients())(j) == T(2));
  }
  // A NaN gain makes its column NaN in every row.
  norm.gain()(1) = static_cast<T>(nan);
  norm.forward(nonfinite::tensor<T, 2>({1, 3}, {0, 1, 3}), y);
  CHECK(std::isfinite(y(0, 0)));
  CHECK(std::isnan(y(0, 1)));
}

TEST_CASE("LayerNorm: a wrong width or eps is an error naming the layer and the sizes") {
  LayerNorm<float, 3> norm(4);
  xt::xtensor<float, 3> y, dx;
  const xt::xtensor<float, 3> x = xt::zeros<float>({2, 3, 5});
  check_error([&] { norm.forward(x, y); }, parallax::error_kind::invalid_argument,
              {"LayerNorm::forward()", "(2, 3, 5)", "width 5", "expected 4"});
  check_error([&] { norm.backward(x, x, x, dx); }, parallax::error_kind::invalid_argument,
              {"LayerNorm::backward()", "width 5", "expected 4"});
  const xt::xtensor<float, 3> good = xt::zeros<float>({2, 3, 4});
  const xt::xtensor<float, 3> dy = xt::zeros<float>({2, 2, 4});
  check_error([&] { norm.backward(good, good, dy, dx); }, parallax::error_kind::invalid_argument,
              {"LayerNorm::backward(): dy has shape (2, 2, 4), expected (2, 3, 4)"});
  check_error([&] { (void)norm.output_shape({2, 3, 5}); }, parallax::error_kind::invalid_argument,
              {"LayerNorm(4)", "width 5"});
  check_error([&] { (void)norm.output_shape({2, 4}); }, parallax::error_kind::invalid_argument,
              {"LayerNorm(4)", "rank-3"});
  check_error([] { LayerNorm<float> bad(0); }, parallax::error_kind::invalid_argument, {"LayerNorm", "positive"});
  check_error([] { LayerNorm<float> bad(3, -1e-3); }, parallax::error_kind::invalid_argument,
              {"LayerNorm(3)", "eps", "-0.001"});
  check_error([] { LayerNorm<float> bad(3, std::nan("")); }, parallax::error_kind::invalid_argument,
              {"LayerNorm(3)", "eps", "nan"});
}

// ---------------------------------------------------------------------------
// Embedding
// ---------------------------------------------------------------------------

TEST_CASE("Embedding: forward looks rows up, backward scatter-adds, computed by hand") {
  Embedding<double> embed(5, 3);
  CHECK(embed.vocabulary() == 5);
  CHECK(embed.width() == 3);
  for (std::size_t i = 0; i < 5; ++i)
    for (std::size_t j = 0; j < 3; ++j) embed.weight()(i, j) = 10.0 * static_cast<double>(i) + static_cast<double>(j);
  const ids x = {{2, 0, 2}, {1, 1, 4}};
  xt::xtensor<double, 3> y;
  embed.forward(x, y);
  REQUIRE(y.shape() == std::array<std::size_t, 3>{2, 3, 3});
  CHECK(nonfinite::mismatch(y, {20, 21, 22, 0, 1, 2, 20, 21, 22, 10, 11, 12, 10, 11, 12, 40, 41, 42}) == "");
  // dy[b, s, j] = 100 b + 10 s + j; rows of repeated ids get the sums.
  xt::xtensor<double, 3> dy(y.shape());
  for (std::size_t b = 0; b < 2; ++b)
    for (std::size_t s = 0; s < 3; ++s)
      for (std::size_t j = 0; j < 3; ++j)
        dy(b, s, j) = 100.0 * static_cast<double>(b) + 10.0 * static_cast<double>(s) + static_cast<double>(j);
  ids dx;
  embed.backward(x, y, dy, dx);
  CHECK(dx.shape() == x.shape());
  CHECK(nonfinite::mismatch(dx, {0, 0, 0, 0, 0, 0}) == "");
  CHECK(nonfinite::mismatch(std::get<0>(embed.gradients()),
                            {10, 11, 12,      // id 0: token (0, 1)
                             210, 212, 214,   // id 1: (1, 0) + (1, 1) = 100 + 110
                             20, 22, 24,      // id 2: (0, 0) + (0, 2) = 0 + 20
                             0, 0, 0,         // id 3: unused
                             120, 121, 122})  // id 4: (1, 2)
        == "");
  // backward_parameters adds the same again.
  embed.backward_parameters(x, y, dy);
  CHECK(std::get<0>(embed.gradients())(1, 2) == 428);
  CHECK(std::get<0>(embed.gradients())(3, 0) == 0);
  CHECK(embed.describe() == "Embedding(5, 3)");
  CHECK(Embedding<float>::parameter_count(50257, 768) == 50257u * 768u);
  CHECK(embed.output_shape({4, 7}) == std::vector<std::size_t>{4, 7, 3});
}

TEST_CASE("Embedding: the weight is N(0, 1), drawn from (seed, index) only") {
  Embedding<double> a(1000, 10), b(1000, 10);
  // The constructor draws as initialize(0, 0).
  b.initialize(0, 0);
  CHECK(a.weight() == b.weight());
  a.initialize(3, 1);
  b.initialize(3, 1);
  CHECK(a.weight() == b.weight());
  b.initialize(3, 2);
  CHECK(a.weight() != b.weight());
  // 10000 draws: the mean's standard error is 0.01, the variance's about 0.014.
  double sum = 0, squares = 0;
  for (const double w : a.weight()) {
    sum += w;
    squares += w * w;
  }
  const double mean = sum / 10000.0, var = squares / 10000.0 - mean * mean;
  CHECK(std::abs(mean) < 0.05);
  CHECK(std::abs(var - 1.0) < 0.07);
  // Float draws the same numbers, rounded.
  Embedding<float> f(1000, 10);
  f.initialize(3, 1);
  CHECK(f.weight()(7, 3) == static_cast<float>(a.weight()(7, 3)));
}

TEST_CASE("Embedding: finite-difference weight gradient, repeated ids included") {
  Embedding<double> embed(6, 4);
  embed.initialize(5, 0);
  const ids x = {{0, 3, 3, 5}, {3, 1, 0, 0}};
  const auto r = gradcheck::check_parameters(embed, x);
  CHECK_MESSAGE(r.max_error < 1e-8, r.where);
}

TEST_CASE_TEMPLATE("Embedding: a NaN weight reaches the tokens of its id, a NaN dy the row of its id", T, float,
                   double) {
  using nonfinite::nan;
  Embedding<T> embed(3, 2);
  embed.weight()(1, 0) = static_cast<T>(nan);
  const ids x = {{1, 2, 1}};
  xt::xtensor<T, 3> y;
  embed.forward(x, y);
  CHECK(std::isnan(y(0, 0, 0)));
  CHECK(std::isfinite(y(0, 0, 1)));
  CHECK(std::isfinite(y(0, 1, 0)));
  CHECK(std::isnan(y(0, 2, 0)));
  const auto dy = nonfinite::tensor<T, 3>({1, 3, 2}, {1, 1, nan, 1, 1, 1});
  embed.backward_parameters(x, y, dy);
  const auto& g = std::get<0>(embed.gradients());
  CHECK(g(1, 0) == T(2));
  CHECK(std::isnan(g(2, 0)));
  CHECK(g(2, 1) == T(1));
  CHECK(g(0, 0) == T(0));
}

TEST_CASE("Embedding: an id outside the vocabulary is an error naming it, its position and the vocabulary") {
  Embedding<float> embed(10, 2);
  xt::xtensor<float, 3> y;
  check_error([&] { embed.forward(ids{{1, 2}, {3, 10}}, y); }, parallax::error_kind::invalid_argument,
              {"Embedding::forward(): id 10 at (1, 1) is outside the vocabulary [0, 10)"});
  check_error([&] { embed.forward(ids{{-1, 2}}, y); }, parallax::error_kind::invalid_argument,
              {"Embedding::forward(): id -1 at (0, 0) is outside the vocabulary [0, 10)"});
  const ids good = {{1, 2}};
  embed.forward(good, y);
  check_error([&] { embed.backward_parameters(ids{{1, 12}}, y, y); }, parallax::error_kind::invalid_argument,
              {"Embedding::backward(): id 12 at (0, 1)", "[0, 10)"});
  const xt::xtensor<float, 3> dy = xt::zeros<float>({1, 2, 3});
  check_error([&] { embed.backward_parameters(good, y, dy); }, parallax::error_kind::invalid_argument,
              {"Embedding::backward(): dy has shape (1, 2, 3), expected (1, 2, 2)"});
  check_error([&] { (void)embed.output_shape({4}); }, parallax::error_kind::invalid_argument,
              {"Embedding(10, 2)", "rank-2"});
  check_error([] { Embedding<float> bad(0, 4); }, parallax::error_kind::invalid_argument,
              {"Embedding", "positive", "0 and 4"});
}

// ---------------------------------------------------------------------------
// TokenCrossEntropy
// ---------------------------------------------------------------------------

TEST_CASE("TokenCrossEntropy: loss and gradient match F.cross_entropy over the flattened tokens") {
  // Expected values: F.cross_entropy's formula, mean over the 6 tokens of
  // logsumexp(row) - row[target], and its gradient (softmax - onehot) / 6,
  // evaluated in Python's decimal module at 50 digits.
  const xt::xtensor<double, 3> y = {{{0.0, 1.0, 2.0, 3.0}, {1.5, -0.5, 0.0, 0.25}, {10.0, 10.0, -3.0, 0.0}},
                                    {{-1.0, -2.0, -3.0, -4.0}, {0.0, 0.0, 0.0, 0.0}, {2.0, 0.5, 1.0, 7.0}}};
  const ids t = {{3, 0, 1}, {2, 1, 3}};
  TokenCrossEntropy<double> ce;
  xt::xtensor<double, 3> dy;
  CHECK(ce.loss(y, t, dy) == doctest::Approx(0.9113716911224381).epsilon(1e-14));
  CHECK(ce.value(y, t) == ce.loss(y, t, dy));
  CHECK(nonfinite::mismatch(
            dy,
            {0.005343100546680832, 0.014524053123672095, 0.03948046968165169, -0.059347623352004615,
             -0.06534771110804212, 0.013712029547764227, 0.02260731477986754, 0.029028366780410354,
             0.08333134753652306, -0.0833353191301436, 1.8835629536016133e-07, 3.783237325171362e-06,
             0.10731904331466205, 0.03948046968165169, -0.15214261354299458, 0.005343100546680832,
             0.041666666666666664, -0.125, 0.041666666666666664, 0.041666666666666664,
             0.0011110802326811425, 0.00024791551025589805, 0.00040874357509537485, -0.0017677393180324154},
            1e-14) == "");
  CHECK(ce.describe() == "TokenCrossEntropy");
}

TEST_CASE("TokenCrossEntropy: finite-difference gradient; large logits neither overflow nor lose the loss") {
  TokenCrossEntropy<double> ce;
  const auto y = random_tensor<double, 3>({2, 3, 5}, 21, 4.0);
  const ids t = {{0, 4, 2}, {4, 4, 1}};
  const auto r = gradcheck::check_loss(ce, y, t);
  CHECK_MESSAGE(r.max_error < 1e-8, r.where);
  TokenCrossEntropy<float> cf;
  const xt::xtensor<float, 3> big = {{{1000.0f, 0.0f}, {-1000.0f, 1000.0f}}};
  xt::xtensor<float, 3> dy;
  // Token 0 is right with certainty (loss 0), token 1 wrong by 2000.
  CHECK(cf.loss(big, ids{{0, 0}}, dy) == doctest::Approx(1000.0));
  CHECK(std::isfinite(dy(0, 1, 0)));
}

TEST_CASE_TEMPLATE("TokenCrossEntropy: a NaN logit makes its token's loss and gradient row NaN", T, float, double) {
  using nonfinite::nan;
  TokenCrossEntropy<T> ce;
  const auto y = nonfinite::tensor<T, 3>({1, 2, 3}, {0, nan, 1, 0, 1, 2});
  xt::xtensor<T, 3> dy;
  CHECK(std::isnan(ce.loss(y, ids{{0, 2}}, dy)));
  for (std::size_t v = 0; v < 3; ++v) {
    CHECK(std::isnan(dy(0, 0, v)));
    CHECK(std::isfinite(dy(0, 1, v)));
  }
  CHECK(std::isnan(ce.value(y, ids{{0, 2}})));
}

TEST_CASE("TokenCrossEntropy: targets outside the vocabulary or of another shape are errors") {
  TokenCrossEntropy<float> ce;
  const xt::xtensor<float, 3> y = xt::zeros<float>({2, 3, 4});
  xt::xtensor<float, 3> dy;
  check_error([&] { (void)ce.loss(y, ids{{0, 1, 2}, {3, 4, 0}}, dy); }, parallax::error_kind::invalid_argument,
              {"TokenCrossEntropy::loss(): target 4 of token (1, 1) is outside [0, 4)"});
  check_error([&] { (void)ce.value(y, ids{{0, -100, 2}, {3, 0, 0}}); }, parallax::error_kind::invalid_argument,
              {"TokenCrossEntropy::value(): target -100 of token (0, 1) is outside [0, 4)"});
  check_error([&] { (void)ce.value(y, ids{{0, 1}, {3, 0}}); }, parallax::error_kind::invalid_argument,
              {"TokenCrossEntropy::value(): logits of shape (2, 3, 4) but targets of shape (2, 2), expected (2, 3)"});
  const xt::xtensor<float, 3> empty = xt::zeros<float>({0, 3, 4});
  check_error([&] { (void)ce.value(empty, ids(std::array<std::size_t, 2>{0, 3})); },
              parallax::error_kind::invalid_argument, {"TokenCrossEntropy::value(): there are no tokens"});
}

// ---------------------------------------------------------------------------
// A chain of them
// ---------------------------------------------------------------------------

static_assert(parallax::Layer<Linear<float, 3>>);
static_assert(std::is_same_v<Linear<double>, Linear<double, 2>>);

TEST_CASE("Linear<T, 3>: every [batch, sequence] row maps as a rank-2 Linear row, computed by hand") {
  Linear<double, 3> fc(2, 3);
  fc.weight() = xt::xtensor<double, 2>{{1, 2, 3}, {4, 5, 6}};
  fc.bias() = xt::xtensor<double, 1>{0.5, -1, 2};
  const auto x = nonfinite::tensor<double, 3>({1, 2, 2}, {1, 0, 0.5, -2});
  xt::xtensor<double, 3> y;
  fc.forward(x, y);
  REQUIRE((y.shape() == std::array<std::size_t, 3>{1, 2, 3}));
  // Row 0: (1, 0) W + b; row 1: (0.5, -2) W + b.
  CHECK(nonfinite::mismatch(y, {1.5, 1, 5, -7, -10, -8.5}) == "");
  const auto dy = nonfinite::tensor<double, 3>({1, 2, 3}, {1, 1, 1, 1, 1, 1});
  xt::xtensor<double, 3> dx;
  fc.backward(x, y, dy, dx);
  CHECK(nonfinite::mismatch(dx, {6, 15, 6, 15}) == "");  // dy W^T: the rows of W summed
  CHECK(nonfinite::mismatch(std::get<0>(fc.gradients()), {1.5, 1.5, 1.5, -2, -2, -2}) == "");  // x^T dy over both rows
  CHECK(nonfinite::mismatch(std::get<1>(fc.gradients()), {2, 2, 2}) == "");
  CHECK(fc.output_shape({4, 7, 2}) == std::vector<std::size_t>{4, 7, 3});
}

TEST_CASE("Linear<T, 3>: the same bits as the rank-2 layer over the flattened rows, and finite differences") {
  Linear<double, 3> fc3(4, 3);
  Linear<double> fc2(4, 3);
  fc3.initialize(5, 2);
  fc2.initialize(5, 2);
  const auto x3 = random_tensor<double, 3>({2, 3, 4}, 8, 2.0);
  const xt::xtensor<double, 2> x2 = xt::reshape_view(x3, {6, 4});
  xt::xtensor<double, 3> y3, dx3;
  xt::xtensor<double, 2> y2, dx2;
  fc3.forward(x3, y3);
  fc2.forward(x2, y2);
  CHECK(std::equal(y3.begin(), y3.end(), y2.begin(), y2.end()));
  const auto dy3 = random_tensor<double, 3>({2, 3, 3}, 9);
  const xt::xtensor<double, 2> dy2 = xt::reshape_view(dy3, {6, 3});
  fc3.backward(x3, y3, dy3, dx3);
  fc2.backward(x2, y2, dy2, dx2);
  CHECK(std::equal(dx3.begin(), dx3.end(), dx2.begin(), dx2.end()));
  CHECK(std::get<0>(fc3.gradients()) == std::get<0>(fc2.gradients()));
  CHECK(std::get<1>(fc3.gradients()) == std::get<1>(fc2.gradients()));
  Linear<double, 3> fd(4, 3);
  fd.initialize(3, 1);
  CHECK(gradcheck::check_layer(fd, random_tensor<double, 3>({2, 3, 4}, 4, 2.0)).max_error < 1e-6);
  Linear<double, 4> fd4(3, 2);
  fd4.initialize(3, 1);
  CHECK(gradcheck::check_layer(fd4, random_tensor<double, 4>({2, 2, 2, 3}, 6, 2.0)).max_error < 1e-6);
}

TEST_CASE_TEMPLATE("Linear<T, 3>: a NaN input reaches only its own row's output", T, float, double) {
  Linear<T, 3> fc(2, 2);
  fc.initialize(1, 0);
  const auto x = nonfinite::tensor<T, 3>({1, 2, 2}, {nonfinite::nan, 1, 0.5, -0.5});
  xt::xtensor<T, 3> y;
  fc.forward(x, y);
  for (std::size_t row = 0; row < 2; ++row)
    for (std::size_t j = 0; j < 2; ++j) CHECK(std::isnan(y(0, row, j)) == (row == 0));
}

TEST_CASE("Linear<T, 3>: shape errors name the layer, the shapes and the rank") {
  Linear<float, 3> fc(8, 4);
  xt::xtensor<float, 3> x = xt::zeros<float>({2, 5, 7}), y;
  CHECK(error_of([&] { fc.forward(x, y); }).find("Linear::forward(): input has 7 features, expected 8") == 0);
  CHECK(error_of([&] { (void)fc.output_shape({2, 8}); })
            .find("Linear(8 -> 4): input shape (2, 8) does not fit the expected (batch, ..., 8) of rank 3") == 0);
  xt::xtensor<float, 3> good = xt::zeros<float>({2, 5, 8}), dx;
  fc.forward(good, y);
  xt::xtensor<float, 3> dy = xt::zeros<float>({2, 5, 3});
  CHECK(error_of([&] { fc.backward(good, y, dy, dx); }).find("Linear::backward(): dy has shape (2, 5, 3), expected (2, 5, 4)") == 0);
}

TEST_CASE("Sequential: Embedding, LayerNorm, GELU and a rank-3 Linear into TokenCrossEntropy train as one Model") {
  using parallax::nn::Sequential;
  // Width 4, mapped to logits over the vocabulary of 6 by the rank-3 Linear.
  Sequential net{Embedding<double>(6, 4), LayerNorm<double, 3>(4), GELU<double, 3>{}, Linear<double, 3>(4, 6),
                 TokenCrossEntropy<double>{}};
  static_assert(parallax::Model<decltype(net)>);
  static_assert(std::is_same_v<decltype(net)::input_type, ids>);
  net.initialize(9);
  CHECK(net.describe() == "Sequential(Embedding(6, 4), LayerNorm(4), GELU, Linear(4 -> 6); TokenCrossEntropy)");
  CHECK(net.parameter_count() == 6 * 4 + 2 * 4 + 4 * 6 + 6);
  gradcheck::fill_uniform(net.layer<1>().gain(), 3, 0.5, 1.5);
  gradcheck::fill_uniform(net.layer<1>().bias(), 4);
  decltype(net)::batch_type batch{ids{{0, 5, 5}, {2, 1, 0}}, ids{{1, 3, 0}, {2, 5, 3}}};
  const double mean = net.loss_and_gradient(batch);
  CHECK(mean == net.loss(batch));
  // Every parameter's gradient against central differences of the loss.
  const auto r = gradcheck::check_model(net, batch);
  std::vector<double*> grads;
  parallax::detail::for_each_tensor(net.gradients(), [&](auto& g) { grads.push_back(g.data()); });
  REQUIRE(grads.size() == 5);
  CHECK_MESSAGE(r.max_error < 1e-8, r.where);
  // Ids 3 and 4 appear in no input: their rows have no gradient.
  CHECK(grads[0][3 * 4] == 0.0);
  CHECK(grads[0][4 * 4 + 3] == 0.0);
  // A bad id in a batch names the layer through the chain's check.
  decltype(net)::batch_type bad{ids{{0, 6, 5}}, ids{{1, 3, 0}}};
  check_error([&] { (void)net.loss(bad); }, parallax::error_kind::invalid_argument,
              {"Embedding::forward(): id 6 at (0, 1)"});
}
