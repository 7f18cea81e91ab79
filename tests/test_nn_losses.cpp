// SPDX-License-Identifier: BSL-1.0
// SoftmaxCrossEntropy and MeanSquaredError: hand-computed values and
// gradients, numerical stability, finite-difference gradients (double),
// accuracy counts, label and shape errors, buffer reuse, and NaN and
// infinities against PyTorch's values.

#include <parallax/nn/loss.hpp>

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
#include <type_traits>
#include <vector>


namespace {

using parallax::nn::MeanSquaredError;
using parallax::nn::SoftmaxCrossEntropy;
using labels = xt::xtensor<std::int32_t, 1>;

static_assert(parallax::Loss<SoftmaxCrossEntropy<float>>);
static_assert(parallax::HasCorrectCount<SoftmaxCrossEntropy<double>>);
static_assert(parallax::Loss<MeanSquaredError<double>>);
static_assert(parallax::Loss<MeanSquaredError<float, 4>>);
static_assert(!parallax::HasCorrectCount<MeanSquaredError<double>>);
static_assert(!parallax::Layer<SoftmaxCrossEntropy<float>>);

}  // namespace

TEST_CASE("SoftmaxCrossEntropy: loss and gradient computed by hand") {
  SoftmaxCrossEntropy<double> ce;
  // Row 0: logits (0, 0), label 0: softmax (1/2, 1/2), loss ln 2.
  // Row 1: logits (0, ln 3), label 1: softmax (1/4, 3/4), loss -ln(3/4).
  const xt::xtensor<double, 2> y = {{0.0, 0.0}, {0.0, std::log(3.0)}};
  const labels t = {0, 1};
  xt::xtensor<double, 2> dy;
  const double expected = (std::log(2.0) - std::log(0.75)) / 2;
  CHECK(ce.loss(y, t, dy) == doctest::Approx(expected).epsilon(1e-14));
  CHECK(ce.value(y, t) == doctest::Approx(expected).epsilon(1e-14));
  // (softmax - onehot) / batch.
  CHECK(dy(0, 0) == doctest::Approx(-0.25));
  CHECK(dy(0, 1) == doctest::Approx(0.25));
  CHECK(dy(1, 0) == doctest::Approx(0.125));
  CHECK(dy(1, 1) == doctest::Approx(-0.125));
}

TEST_CASE("SoftmaxCrossEntropy: large logits neither overflow nor lose the loss") {
  SoftmaxCrossEntropy<float> ce;
  const xt::xtensor<float, 2> y = {{1000.0f, 0.0f}, {1000.0f, -1000.0f}, {-1000.0f, -1000.0f}};
  xt::xtensor<float, 2> dy;
  // Rows: label 0 -> about 0; label 1 -> 2000; equal logits -> ln 2.
  const double loss = ce.loss(y, labels{0, 1, 1}, dy);
  CHECK(std::isfinite(loss));
  CHECK(loss == doctest::Approx((0.0 + 2000.0 + std::log(2.0)) / 3).epsilon(1e-6));
  for (float g : dy) CHECK(std::isfinite(g));
  CHECK(dy(1, 1) == doctest::Approx(-1.0 / 3).epsilon(1e-6));
}

TEST_CASE("SoftmaxCrossEntropy: finite-difference gradients") {
  struct shape {
    std::size_t batch, classes;
  };
  for (const auto s : {shape{1, 3}, shape{4, 5}, shape{7, 2}, shape{1, 1}, shape{3, 10}}) {
    CAPTURE(s.batch);
    CAPTURE(s.classes);
    xt::xtensor<double, 2> y(std::array<std::size_t, 2>{s.batch, s.classes});
    gradcheck::fill_uniform(y, 41, -3.0, 3.0);
    labels t(std::array<std::size_t, 1>{s.batch});
    for (std::size_t b = 0; b < s.batch; ++b) t(b) = static_cast<std::int32_t>((b * 7 + 3) % s.classes);
    SoftmaxCrossEntropy<double> ce;
    const auto r = gradcheck::check_loss(ce, y, t);
    INFO(r.where);
    CHECK(r.max_error < 1e-6);
  }
}

TEST_CASE("SoftmaxCrossEntropy: correct counts rows whose largest logit is the label") {
  SoftmaxCrossEntropy<float> ce;
  const xt::xtensor<float, 2> y = {{0.1f, 0.9f, 0.0f}, {2.0f, 1.0f, 3.0f}, {5.0f, 5.0f, 1.0f}, {-1.0f, -2.0f, -3.0f}};
  CHECK(ce.correct(y, labels{1, 2, 0, 0}) == 4);  // a tie goes to the first class
  CHECK(ce.correct(y, labels{1, 0, 1, 0}) == 2);
  CHECK(ce.correct(y, labels{0, 0, 1, 2}) == 0);
}

TEST_CASE("SoftmaxCrossEntropy: labels out of range and mismatched batches are clear errors") {
  SoftmaxCrossEntropy<float> ce;
  const xt::xtensor<float, 2> y = xt::zeros<float>({2, 3});
  xt::xtensor<float, 2> dy;
  CHECK(error_of([&] { ce.loss(y, labels{0, 3}, dy); }) ==
        "SoftmaxCrossEntropy::loss(): label 3 of sample 1 is outside [0, 3)");
  CHECK(error_of([&] { (void)ce.value(y, labels{-1, 0}); }) ==
        "SoftmaxCrossEntropy::value(): label -1 of sample 0 is outside [0, 3)");
  CHECK(error_of([&] { (void)ce.correct(y, labels{0, 7}); }).find("label 7 of sample 1") != std::string::npos);
  CHECK(error_of([&] { ce.loss(y, labels{0, 1, 2}, dy); }) ==
        "SoftmaxCrossEntropy::loss(): 2 rows of logits but 3 labels");
  const xt::xtensor<float, 2> empty(std::array<std::size_t, 2>{0, 3});
  CHECK(error_of([&] { ce.loss(empty, labels(std::array<std::size_t, 1>{0}), dy); }).find("empty") != std::string::npos);
  CHECK(ce.describe() == "SoftmaxCrossEntropy");
}

TEST_CASE("MeanSquaredError: the mean over all elements, computed by hand") {
  MeanSquaredError<double> mse;
  const xt::xtensor<double, 2> y = {{1, 2}, {3, 4}};
  const xt::xtensor<double, 2> t = {{0, 2}, {3, 6}};
  xt::xtensor<double, 2> dy;
  // Differences 1, 0, 0, -2: (1 + 4) / 4; gradient 2 d / 4.
  CHECK(mse.loss(y, t, dy) == 1.25);
  CHECK(mse.value(y, t) == 1.25);
  CHECK(dy == xt::xtensor<double, 2>{{0.5, 0}, {0, -1}});
  CHECK(mse.describe() == "MeanSquaredError");
}

TEST_CASE("MeanSquaredError: finite-difference gradients") {
  MeanSquaredError<double> mse2;
  MeanSquaredError<double, 3> mse3;
  xt::xtensor<double, 2> y2(std::array<std::size_t, 2>{3, 4}), t2(std::array<std::size_t, 2>{3, 4});
  gradcheck::fill_uniform(y2, 42);
  gradcheck::fill_uniform(t2, 43);
  CHECK(gradcheck::check_loss(mse2, y2, t2).max_error < 1e-6);
  xt::xtensor<double, 3> y3(std::array<std::size_t, 3>{1, 2, 3}), t3(std::array<std::size_t, 3>{1, 2, 3});
  gradcheck::fill_uniform(y3, 44);
  gradcheck::fill_uniform(t3, 45);
  CHECK(gradcheck::check_loss(mse3, y3, t3).max_error < 1e-6);
  xt::xtensor<double, 2> y1 = {{0.3}}, t1 = {{-0.2}};
  CHECK(gradcheck::check_loss(mse2, y1, t1).max_error < 1e-6);
}

TEST_CASE("MeanSquaredError: shape mismatch is a clear error") {
  MeanSquaredError<float> mse;
  const xt::xtensor<float, 2> y = xt::zeros<float>({2, 3});
  const xt::xtensor<float, 2> t = xt::zeros<float>({3, 2});
  xt::xtensor<float, 2> dy;
  CHECK(error_of([&] { mse.loss(y, t, dy); }) ==
        "MeanSquaredError::loss(): prediction shape (2, 3) differs from target shape (3, 2)");
}

TEST_CASE("losses: the gradient buffer is reused when its shape is right") {
  SoftmaxCrossEntropy<double> ce;
  MeanSquaredError<double> mse;
  xt::xtensor<double, 2> y(std::array<std::size_t, 2>{4, 3});
  gradcheck::fill_uniform(y, 46);
  xt::xtensor<double, 2> dy;
  ce.loss(y, labels{0, 1, 2, 0}, dy);
  const auto* data = dy.data();
  ce.loss(y, labels{2, 1, 0, 0}, dy);
  CHECK(dy.data() == data);
  mse.loss(y, y, dy);
  CHECK(dy.data() == data);
}

// NaN and infinities go through the losses as they go through PyTorch's
// F.cross_entropy and F.mse_loss (torch 1.13, float32 and float64 alike);
// the expected values are PyTorch's.

TEST_CASE_TEMPLATE("SoftmaxCrossEntropy: NaN and infinite logits give PyTorch's loss and gradient", T, float,
                   double) {
  using nonfinite::inf;
  using nonfinite::nan;
  const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-14;
  SoftmaxCrossEntropy<T> ce;
  const labels t = {2, 0};
  // Row 1 is (0, 1, 2) with label 0 throughout: its gradient stays finite.
  const std::vector<double> row1{-0.4549847134148098, 0.12236423552739882, 0.3326204778874109};
  struct example {
    std::vector<double> row0;
    double loss;
    std::vector<double> grad0;
  };
  const double p = 0.13447071068499755;
  for (const auto& e : {example{{nan, 0, 1}, nan, {nan, nan, nan}}, example{{0, nan, 1}, nan, {nan, nan, nan}},
                        example{{inf, 0, 1}, nan, {nan, nan, nan}}, example{{-inf, -inf, -inf}, nan, {nan, nan, nan}},
                        example{{-inf, 0, 1}, 1.3604338259813018, {0, p, -p}},
                        example{{0, 1, -inf}, inf, {p, 0.36552928931500245, -0.5}}}) {
    CAPTURE(e.row0[0]);
    CAPTURE(e.row0[1]);
    CAPTURE(e.row0[2]);
    const auto y = nonfinite::tensor<T, 2>({2, 3}, {e.row0[0], e.row0[1], e.row0[2], 0, 1, 2});
    xt::xtensor<T, 2> dy;
    const xt::xtensor<double, 1> losses = {ce.loss(y, t, dy), ce.value(y, t)};
    CHECK(nonfinite::mismatch(losses, {e.loss, e.loss}, tol) == "");
    std::vector<double> grad = e.grad0;
    grad.insert(grad.end(), row1.begin(), row1.end());
    CHECK(nonfinite::mismatch(dy, grad, tol) == "");
  }
}

TEST_CASE_TEMPLATE("SoftmaxCrossEntropy: correct takes a NaN as the largest logit, as torch.argmax does", T, float,
                   double) {
  using nonfinite::nan;
  SoftmaxCrossEntropy<T> ce;
  // torch.argmax: the first NaN of a row, else the first maximum: (1, 1, 0).
  const auto y = nonfinite::tensor<T, 2>({3, 4}, {1, nan, 3, nan, 1, 5, 3, 5, nan, 5, 9, 1});
  CHECK(ce.correct(y, labels{1, 1, 0}) == 3);
  CHECK(ce.correct(y, labels{2, 3, 2}) == 0);
}

TEST_CASE_TEMPLATE("MeanSquaredError: NaN and infinities give PyTorch's loss and gradient", T, float, double) {
  using nonfinite::inf;
  using nonfinite::nan;
  MeanSquaredError<T> mse;
  struct example {
    std::vector<double> y, t;
    double loss;
    std::vector<double> grad;
  };
  for (const auto& e : {example{{1, nan}, {0, 0}, nan, {1, nan}}, example{{1, 2}, {nan, 0}, nan, {nan, 2}},
                        example{{inf, 2}, {inf, 0}, nan, {nan, 2}}, example{{inf, 2}, {0, 0}, inf, {inf, 2}}}) {
    CAPTURE(e.y[0]);
    CAPTURE(e.t[0]);
    const auto y = nonfinite::tensor<T, 2>({1, 2}, {e.y[0], e.y[1]});
    const auto t = nonfinite::tensor<T, 2>({1, 2}, {e.t[0], e.t[1]});
    xt::xtensor<T, 2> dy;
    const xt::xtensor<double, 1> losses = {mse.loss(y, t, dy), mse.value(y, t)};
    CHECK(nonfinite::mismatch(losses, {e.loss, e.loss}) == "");
    CHECK(nonfinite::mismatch(dy, e.grad) == "");
  }
}
