// SPDX-License-Identifier: BSL-1.0
// CausalSelfAttention and PositionEmbedding: values worked out by hand (and
// with Python's math module), a plain-loop reference of nanoGPT's
// attention formulas, causality, finite-difference gradients (double), two
// micro-batches in flight, NaN propagation, shape and size errors, and a
// GPT-style Sequential (token and position embeddings, pre-norm attention
// and MLP blocks in Residual) whose gradients match central differences.

#include <parallax/nn/activation.hpp>
#include <parallax/nn/attention.hpp>
#include <parallax/nn/embedding.hpp>
#include <parallax/nn/layer_norm.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/position_embedding.hpp>
#include <parallax/nn/residual.hpp>
#include <parallax/nn/sequential.hpp>
#include <parallax/nn/token_cross_entropy.hpp>

#include "error_of.hpp"
#include "gradcheck.hpp"
#include "xtensor_print.hpp"

#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

namespace {

using parallax::nn::CausalSelfAttention;
using parallax::nn::PositionEmbedding;
using gradcheck::random_tensor;
using ids = xt::xtensor<std::int64_t, 2>;

static_assert(parallax::Layer<CausalSelfAttention<float>>);
static_assert(parallax::HasLayerParameters<CausalSelfAttention<double>>);
static_assert(parallax::Layer<PositionEmbedding<float>>);
static_assert(parallax::HasLayerParameters<PositionEmbedding<double>>);

/// nanoGPT's CausalSelfAttention.forward written as plain loops in double:
/// qkv = x W + b, per head scores q.k / sqrt(d) with -inf above the
/// diagonal, softmax, the weighted sum of v, then the output projection.
xt::xtensor<double, 3> reference_attention(const xt::xtensor<double, 3>& x, const CausalSelfAttention<double>& a) {
  const std::size_t B = x.shape()[0], S = x.shape()[1], E = x.shape()[2], H = a.heads(), d = E / H;
  const auto& wq = a.qkv().weight();
  const auto& bq = a.qkv().bias();
  const auto& wo = a.output().weight();
  const auto& bo = a.output().bias();
  xt::xtensor<double, 3> qkv({B, S, 3 * E});
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t s = 0; s < S; ++s)
      for (std::size_t c = 0; c < 3 * E; ++c) {
        double v = bq(c);
        for (std::size_t i = 0; i < E; ++i) v += x(b, s, i) * wq(i, c);
        qkv(b, s, c) = v;
      }
  xt::xtensor<double, 3> heads({B, S, E});
  const double inf = std::numeric_limits<double>::infinity();
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t h = 0; h < H; ++h)
      for (std::size_t i = 0; i < S; ++i) {
        std::vector<double> score(S);
        double top = -inf;
        for (std::size_t j = 0; j < S; ++j) {
          double dot = 0;
          for (std::size_t c = 0; c < d; ++c) dot += qkv(b, i, h * d + c) * qkv(b, j, E + h * d + c);
          score[j] = j <= i ? dot / std::sqrt(static_cast<double>(d)) : -inf;
          top = std::max(top, score[j]);
        }
        double z = 0;
        for (auto& v : score) z += (v = std::exp(v - top));
        for (std::size_t c = 0; c < d; ++c) {
          double v = 0;
          for (std::size_t j = 0; j < S; ++j) v += score[j] / z * qkv(b, j, 2 * E + h * d + c);
          heads(b, i, h * d + c) = v;
        }
      }
  xt::xtensor<double, 3> y({B, S, E});
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t s = 0; s < S; ++s)
      for (std::size_t c = 0; c < E; ++c) {
        double v = bo(c);
        for (std::size_t i = 0; i < E; ++i) v += heads(b, s, i) * wo(i, c);
        y(b, s, c) = v;
      }
  return y;
}

double max_difference(const xt::xtensor<double, 3>& a, const xt::xtensor<double, 3>& b) {
  REQUIRE(a.shape() == b.shape());
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a.data()[i] - b.data()[i]));
  return m;
}

}  // namespace

TEST_CASE("CausalSelfAttention: one head with q = k = v = x, worked out by hand") {
  CausalSelfAttention<double> a(2, 1);
  // Wqkv = [I | I | I], Wo = I, biases 0.
  auto& wq = a.qkv().weight();
  wq.fill(0);
  for (std::size_t i = 0; i < 2; ++i)
    for (std::size_t part = 0; part < 3; ++part) wq(i, part * 2 + i) = 1;
  a.qkv().bias().fill(0);
  a.output().weight() = xt::xtensor<double, 2>{{1, 0}, {0, 1}};
  a.output().bias().fill(0);
  const xt::xtensor<double, 3> x{{{1, 0}, {0, 1}, {1, 1}}};
  xt::xtensor<double, 3> y;
  a.forward(x, y);
  REQUIRE(y.shape() == x.shape());
  // Token 0 sees only itself: y = v0.
  CHECK(y(0, 0, 0) == doctest::Approx(1.0).epsilon(1e-15));
  CHECK(y(0, 0, 1) == doctest::Approx(0.0));
  // Token 1: softmax(0, 1/sqrt 2) over v0, v1 (Python's math.exp).
  CHECK(y(0, 1, 0) == doctest::Approx(0.3302384506733431).epsilon(1e-14));
  CHECK(y(0, 1, 1) == doctest::Approx(0.6697615493266569).epsilon(1e-14));
  // Token 2: scores (1, 1, 2) / sqrt 2 over v0, v1, v2.
  CHECK(y(0, 2, 0) == doctest::Approx(0.7517449217422769).epsilon(1e-14));
  CHECK(y(0, 2, 1) == doctest::Approx(0.7517449217422769).epsilon(1e-14));
}

TEST_CASE("CausalSelfAttention: equals a plain-loop reference of nanoGPT's formulas, 1, 2 and 4 heads") {
  for (std::size_t heads : {1, 2, 4}) {
    CAPTURE(heads);
    CausalSelfAttention<double> a(8, heads);
    a.initialize(3, heads);
    gradcheck::fill_uniform(a.qkv().bias(), 11);
    const auto x = random_tensor<double, 3>({3, 5, 8}, 17 + heads);
    xt::xtensor<double, 3> y;
    a.forward(x, y);
    CHECK(max_difference(y, reference_attention(x, a)) < 1e-13);
    // A sequence of one token: its own value, projected.
    const auto one = random_tensor<double, 3>({2, 1, 8}, 5);
    a.forward(one, y);
    CHECK(max_difference(y, reference_attention(one, a)) < 1e-13);
  }
  // float agrees with the double reference to float precision.
  CausalSelfAttention<float> f(8, 2);
  CausalSelfAttention<double> d(8, 2);
  f.initialize(4, 0);
  d.initialize(4, 0);
  const auto x = random_tensor<float, 3>({2, 6, 8}, 9);
  xt::xtensor<float, 3> yf;
  f.forward(x, yf);
  const auto yd = reference_attention(xt::xtensor<double, 3>(xt::cast<double>(x)), d);
  double worst = 0;
  for (std::size_t i = 0; i < yf.size(); ++i) worst = std::max(worst, std::abs(yf.data()[i] - yd.data()[i]));
  CHECK(worst < 1e-5);
}

TEST_CASE("CausalSelfAttention: a token's output depends on no later token") {
  CausalSelfAttention<double> a(6, 3);
  a.initialize(1, 2);
  auto x = random_tensor<double, 3>({2, 5, 6}, 21);
  xt::xtensor<double, 3> before, after;
  a.forward(x, before);
  for (std::size_t c = 0; c < 6; ++c) x(1, 3, c) += 0.5;  // sample 1, token 3
  a.forward(x, after);
  for (std::size_t s = 0; s < 5; ++s)
    for (std::size_t c = 0; c < 6; ++c) {
      CHECK(after(0, s, c) == before(0, s, c));             // the other sample: the same bits
      if (s < 3) CHECK(after(1, s, c) == before(1, s, c));  // earlier tokens: the same bits
    }
  CHECK(after(1, 3, 0) != before(1, 3, 0));
  CHECK(after(1, 4, 0) != before(1, 4, 0));
}

TEST_CASE("CausalSelfAttention: finite-difference gradients of x and of both projections") {
  for (std::size_t heads : {1, 2, 3}) {
    CAPTURE(heads);
    CausalSelfAttention<double> a(6, heads);
    a.initialize(5, heads);
    gradcheck::fill_uniform(a.qkv().bias(), 12);
    gradcheck::fill_uniform(a.output().bias(), 13);
    const auto r = gradcheck::check_layer(a, random_tensor<double, 3>({2, 4, 6}, 31 + heads));
    CHECK_MESSAGE(r.max_error < 1e-8, r.where);
  }
  // Large scores (a sharp softmax) too.
  CausalSelfAttention<double> sharp(4, 2);
  sharp.initialize(6, 0);
  sharp.qkv().weight() *= 4.0;
  const auto r = gradcheck::check_layer(sharp, random_tensor<double, 3>({1, 5, 4}, 41, 2.0));
  CHECK_MESSAGE(r.max_error < 1e-7, r.where);
}

TEST_CASE("CausalSelfAttention: two micro-batches in flight give each one's own gradient") {
  CausalSelfAttention<double> a(4, 2), fresh(4, 2);
  a.initialize(8, 1);
  fresh.initialize(8, 1);
  const auto x1 = random_tensor<double, 3>({2, 3, 4}, 51);
  const auto x2 = random_tensor<double, 3>({3, 5, 4}, 52);  // another batch and sequence
  const auto dy1 = random_tensor<double, 3>({2, 3, 4}, 53);
  xt::xtensor<double, 3> y1, y2, dx_interleaved, dx_alone, y_alone;
  a.forward(x1, y1);
  a.forward(x2, y2);
  a.backward(x1, y1, dy1, dx_interleaved);
  fresh.forward(x1, y_alone);
  fresh.backward(x1, y_alone, dy1, dx_alone);
  CHECK(max_difference(dx_interleaved, dx_alone) == 0.0);
  CHECK(std::get<0>(a.qkv().gradients()) == std::get<0>(fresh.qkv().gradients()));
  CHECK(std::get<0>(a.output().gradients()) == std::get<0>(fresh.output().gradients()));
}

TEST_CASE_TEMPLATE("CausalSelfAttention: backward reuses the forward's scratch only for the same bits of x", T, float,
                   double) {
  // `a` runs each case; `fresh` (initialised alike) recomputes everything
  // from a forward on another input just before.
  CausalSelfAttention<T> a(8, 2), fresh(8, 2);
  a.initialize(3, 1);
  fresh.initialize(3, 1);
  auto x = random_tensor<T, 3>({2, 5, 8}, 71);
  const auto other = random_tensor<T, 3>({2, 5, 8}, 72);
  const auto dy = random_tensor<T, 3>({2, 5, 8}, 73);
  xt::xtensor<T, 3> y, dx, y_fresh, dx_fresh, scratch;
  auto expect_fresh = [&](const xt::xtensor<T, 3>& input) {
    fresh.forward(input, y_fresh);
    fresh.forward(other, scratch);
    fresh.backward(input, y_fresh, dy, dx_fresh);
    CHECK(dx == dx_fresh);
  };
  SUBCASE("forward then backward") {
    a.forward(x, y);
    a.backward(x, y, dy, dx);
    expect_fresh(x);
    CHECK(std::get<0>(a.qkv().gradients()) == std::get<0>(fresh.qkv().gradients()));
    CHECK(std::get<0>(a.output().gradients()) == std::get<0>(fresh.output().gradients()));
  }
  SUBCASE("x changed in place between them") {
    a.forward(x, y);
    x(1, 4, 7) += T(1);  // the last token of the last sample: only its probabilities change
    a.backward(x, y, dy, dx);
    expect_fresh(x);
  }
  SUBCASE("an eval-mode forward") {
    a.set_training(false);
    a.forward(x, y);
    a.backward(x, y, dy, dx);
    expect_fresh(x);
  }
}

TEST_CASE_TEMPLATE("CausalSelfAttention: a NaN reaches every output of its sample, and only of its sample", T, float,
                   double) {
  CausalSelfAttention<T> a(4, 2);
  a.initialize(2, 0);
  auto x = random_tensor<T, 3>({2, 4, 4}, 61);
  x(0, 2, 1) = std::numeric_limits<T>::quiet_NaN();
  xt::xtensor<T, 3> y, dx;
  a.forward(x, y);
  for (std::size_t s = 0; s < 4; ++s)
    for (std::size_t c = 0; c < 4; ++c) {
      CHECK(std::isnan(y(0, s, c)));
      CHECK(std::isfinite(y(1, s, c)));
    }
  const auto dy = random_tensor<T, 3>({2, 4, 4}, 62);
  a.backward(x, y, dy, dx);
  for (std::size_t s = 0; s < 4; ++s)
    for (std::size_t c = 0; c < 4; ++c) CHECK(std::isfinite(dx(1, s, c)));
  CHECK(std::isnan(dx(0, 2, 1)));
  // The weight gradients sum over samples: NaN.
  CHECK(std::isnan(std::get<0>(a.qkv().gradients())(0, 0)));
}

TEST_CASE("CausalSelfAttention: sizes that do not fit are errors naming the layer and the sizes") {
  check_error([] { CausalSelfAttention<float>(10, 4); }, parallax::error_kind::invalid_argument,
              {"4 heads do not divide the width 10"});
  check_error([] { CausalSelfAttention<float>(0, 1); }, parallax::error_kind::invalid_argument, {"must be positive"});
  check_error([] { CausalSelfAttention<float>(8, 0); }, parallax::error_kind::invalid_argument, {"must be positive"});
  CausalSelfAttention<float> a(8, 2);
  CHECK(a.describe() == "CausalSelfAttention(8, 2 heads)");
  CHECK(CausalSelfAttention<float>(8, 1).describe() == "CausalSelfAttention(8, 1 head)");
  CHECK(a.head_width() == 4);
  CHECK(CausalSelfAttention<float>::parameter_count(8, 2) == 8 * 24 + 24 + 8 * 8 + 8);
  xt::xtensor<float, 3> x = xt::zeros<float>({2, 3, 6}), y;
  check_error([&] { a.forward(x, y); }, parallax::error_kind::invalid_argument,
              {"CausalSelfAttention::forward(): input of shape (2, 3, 6) has width 6, expected 8"});
  check_error([&] { (void)a.output_shape({2, 3, 6}); }, parallax::error_kind::invalid_argument,
              {"CausalSelfAttention(8, 2 heads)", "width 6, expected 8"});
  CHECK(a.output_shape({2, 3, 8}) == std::vector<std::size_t>{2, 3, 8});
  xt::xtensor<float, 3> good = xt::zeros<float>({2, 3, 8}), bad_dy = xt::zeros<float>({2, 4, 8}), dx;
  a.forward(good, y);
  check_error([&] { a.backward(good, y, bad_dy, dx); }, parallax::error_kind::invalid_argument, {"CausalSelfAttention"});
  // An empty batch or sequence gives an empty output.
  xt::xtensor<float, 3> empty = xt::zeros<float>({2, 0, 8});
  a.forward(empty, y);
  CHECK(y.size() == 0);
}

TEST_CASE("PositionEmbedding: adds row s to position s of every sample, by hand") {
  PositionEmbedding<double> p(3, 2);
  p.weight() = xt::xtensor<double, 2>{{1, 2}, {3, 4}, {5, 6}};
  const xt::xtensor<double, 3> x{{{0, 0}, {1, 1}}, {{10, 20}, {30, 40}}};
  xt::xtensor<double, 3> y, dx;
  p.forward(x, y);
  CHECK(y == xt::xtensor<double, 3>{{{1, 2}, {4, 5}}, {{11, 22}, {33, 44}}});
  const xt::xtensor<double, 3> dy{{{1, 0}, {0, 1}}, {{2, 3}, {4, 5}}};
  p.backward(x, y, dy, dx);
  CHECK(dx == dy);
  CHECK(std::get<0>(p.gradients()) == xt::xtensor<double, 2>{{3, 3}, {4, 6}, {0, 0}});
  const auto r = gradcheck::check_layer(p, random_tensor<double, 3>({2, 3, 2}, 71));
  CHECK_MESSAGE(r.max_error < 1e-9, r.where);
}

TEST_CASE("PositionEmbedding: N(0, 1) from (seed, index); a sequence past the context is an error naming both") {
  PositionEmbedding<double> a(64, 8), b(64, 8), c(64, 8);
  a.initialize(1, 2);
  b.initialize(1, 2);
  c.initialize(1, 3);
  CHECK(a.weight() == b.weight());
  CHECK(a.weight() != c.weight());
  double sum = 0, squares = 0;
  for (double v : a.weight()) {
    sum += v;
    squares += v * v;
  }
  const double n = static_cast<double>(a.weight().size());
  CHECK(std::abs(sum / n) < 0.15);              // 512 draws: 3.4 standard errors
  CHECK(std::abs(squares / n - 1.0) < 0.25);
  CHECK(a.describe() == "PositionEmbedding(64, 8)");
  CHECK(PositionEmbedding<float>::parameter_count(64, 8) == 512);
  PositionEmbedding<float> p(4, 3);
  xt::xtensor<float, 3> x = xt::zeros<float>({1, 5, 3}), y;
  check_error([&] { p.forward(x, y); }, parallax::error_kind::invalid_argument,
              {"PositionEmbedding::forward()", "a sequence of 5 tokens is longer than the context of 4 positions"});
  check_error([&] { (void)p.output_shape({1, 5, 3}); }, parallax::error_kind::invalid_argument,
              {"PositionEmbedding(4, 3)", "longer than the context"});
  check_error([&] { (void)p.output_shape({1, 4, 2}); }, parallax::error_kind::invalid_argument,
              {"has width 2, expected 3"});
  check_error([] { PositionEmbedding<float>(0, 3); }, parallax::error_kind::invalid_argument, {"must be positive"});
  CHECK(p.output_shape({2, 4, 3}) == std::vector<std::size_t>{2, 4, 3});
}

TEST_CASE("A GPT-style Sequential: embeddings, pre-norm attention and MLP blocks; gradients match central differences") {
  using namespace parallax::nn;
  const std::size_t V = 7, W = 6, C = 5;
  Sequential gpt{Embedding<double>(V, W),
                 PositionEmbedding<double>(C, W),
                 Residual{LayerNorm<double, 3>(W), CausalSelfAttention<double>(W, 2)},
                 Residual{LayerNorm<double, 3>(W), Linear<double, 3>(W, 4 * W), GELU<double, 3>{}, Linear<double, 3>(4 * W, W)},
                 LayerNorm<double, 3>(W),
                 Linear<double, 3>(W, V),
                 TokenCrossEntropy<double>{}};
  static_assert(parallax::Model<decltype(gpt)>);
  gpt.initialize(3);
  CHECK(gpt.describe() ==
        "Sequential(Embedding(7, 6), PositionEmbedding(5, 6), Residual(LayerNorm(6), CausalSelfAttention(6, 2 heads)), "
        "Residual(LayerNorm(6), Linear(6 -> 24), GELU, Linear(24 -> 6)), LayerNorm(6), Linear(6 -> 7); "
        "TokenCrossEntropy)");
  decltype(gpt)::batch_type batch{ids{{0, 5, 6, 1}, {2, 1, 0, 3}}, ids{{5, 6, 1, 2}, {1, 0, 3, 4}}};
  const auto r = gradcheck::check_model(gpt, batch);
  CHECK_MESSAGE(r.max_error < 1e-7, r.where);
  // A batch past the context names the position layer through the chain.
  decltype(gpt)::batch_type long_batch{ids(xt::zeros<std::int64_t>({1, 6})), ids(xt::zeros<std::int64_t>({1, 6}))};
  check_error([&] { (void)gpt.loss(long_batch); }, parallax::error_kind::invalid_argument,
              {"a sequence of 6 tokens is longer than the context of 5 positions"});
}
