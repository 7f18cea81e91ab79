// SPDX-License-Identifier: BSL-1.0
// BatchNorm<T, N>: forward, backward, running statistics and eval mode
// against PyTorch's documented nn.BatchNorm1d/2d formulas (evaluated in
// Python's decimal module at 50 digits: two-pass statistics, not the sums
// the layer adds), finite differences, NaN, and bad input. SyncBatchNorm
// under DataParallel is in test_batch_norm_parallel.cpp (suite data_parallel).

#include <parallax/data/batch.hpp>
#include <parallax/nn/batch_norm.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/loss.hpp>
#include <parallax/nn/residual.hpp>
#include <parallax/nn/sequential.hpp>

#include "error_of.hpp"
#include "gradcheck.hpp"
#include "test_nn_nonfinite.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstddef>
#include <string>
#include <tuple>
#include <vector>

namespace {

using parallax::nn::BatchNorm;
using gradcheck::random_tensor;

static_assert(parallax::Layer<BatchNorm<float>>);
static_assert(parallax::Layer<BatchNorm<double, 4>>);
static_assert(parallax::HasLayerParameters<BatchNorm<double, 3>>);
static_assert(parallax::HasLayerBuffers<BatchNorm<double, 3>>);
static_assert(parallax::BackwardIgnoresOutput<BatchNorm<double>>);

/// x[b, c, h, w] = sin(1 + 7b + 3c + 2h + w) (c + 1) + c and dy = cos(5b + c + 3h + 2w) on [2, 2, 2, 3].
template <class T>
std::pair<xt::xtensor<T, 4>, xt::xtensor<T, 4>> image_case() {
  xt::xtensor<T, 4> x({2, 2, 2, 3}), dy({2, 2, 2, 3});
  for (std::size_t b = 0; b < 2; ++b)
    for (std::size_t c = 0; c < 2; ++c)
      for (std::size_t h = 0; h < 2; ++h)
        for (std::size_t w = 0; w < 3; ++w) {
          x(b, c, h, w) = static_cast<T>(std::sin(double(1 + 7 * b + 3 * c + 2 * h + w)) * double(c + 1) + double(c));
          dy(b, c, h, w) = static_cast<T>(std::cos(double(5 * b + c + 3 * h + 2 * w)));
        }
  return {x, dy};
}

}  // namespace

TEST_CASE("BatchNorm: [batch, features] matches nn.BatchNorm1d's formulas, training then eval") {
  BatchNorm<double> norm(3);
  CHECK(norm.channels() == 3);
  CHECK(norm.momentum() == 0.1);
  CHECK(norm.eps() == 1e-5);
  CHECK(norm.training());
  norm.gain() = xt::xtensor<double, 1>{1.0, 0.5, -2.0};
  norm.bias() = xt::xtensor<double, 1>{0.0, 1.0, -0.5};
  const xt::xtensor<double, 2> x = {{1.0, 2.0, -1.0}, {0.5, -3.0, 2.0}, {4.0, 0.0, 0.25}, {-2.0, 1.5, 1.0}};
  const xt::xtensor<double, 2> dy = {{0.1, -0.2, 0.3}, {1.0, 0.0, -1.0}, {0.5, 2.0, 0.25}, {-0.3, 0.7, 1.5}};
  xt::xtensor<double, 2> y, dx;
  norm.forward(x, y);
  CHECK(nonfinite::mismatch(y, {0.05862097371316394, 1.4811245907453974, 2.3536388297937267, -0.1758629211394918,
                                0.19812568209100445, -3.1253477234102287, 1.4655243428290985, 0.9679250272836402,
                                0.07072776595874533, -1.3482823954027707, 1.352824699879958, -1.2990188723422436},
                            1e-14) == "");
  // forward changes nothing: the running statistics move in backward.
  CHECK(nonfinite::mismatch(norm.running_mean(), {0, 0, 0}) == "");
  CHECK(nonfinite::mismatch(norm.running_var(), {1, 1, 1}) == "");
  norm.backward(x, y, dy, dx);
  CHECK(nonfinite::mismatch(dx, {-0.11216547735032954, -0.2223864493410708, 0.7216015211957089, 0.3364964320509886,
                                 -0.14255548122663916, 1.5788584296114334, -0.0841237534674316, 0.35353747517416445,
                                 0.18084688126050147, -0.14020720123322747, 0.011404455393545508, -2.4813068320676437},
                            1e-13) == "");
  CHECK(nonfinite::mismatch(std::get<0>(norm.gradients()), {0.967246066267205, 0.17320485266834298, -1.2127965026623337},
                            1e-13) == "");
  CHECK(nonfinite::mismatch(std::get<1>(norm.gradients()), {1.3, 2.5, 1.05}, 1e-14) == "");
  // The unbiased variance goes into the running one (4 values: x 4/3).
  CHECK(nonfinite::mismatch(norm.running_mean(), {0.0875, 0.0125, 0.05625}, 1e-15) == "");
  CHECK(nonfinite::mismatch(norm.running_var(), {1.50625, 1.40625, 1.0598958333333333}, 1e-15) == "");

  // Eval mode: the running statistics normalise, nothing moves.
  norm.set_training(false);
  norm.forward(x, y);
  CHECK(nonfinite::mismatch(y, {0.7435033018439667, 1.8380006003922271, 1.551932529483515, 0.3361042323404233,
                                -0.270177010657401, -4.276041518753687, 3.187897718865227, 0.9947295559723759,
                                -0.8763899906153193, -1.7008911151772936, 1.6271828392872645, -2.3333835026746197},
                            1e-14) == "");
  norm.backward(x, y, dy, dx);
  CHECK(nonfinite::mismatch(norm.running_mean(), {0.0875, 0.0125, 0.05625}, 1e-15) == "");
  // A single sample normalises in eval mode.
  const xt::xtensor<double, 2> one = {{1.0, 2.0, -1.0}};
  norm.forward(one, y);
  CHECK(y.shape()[0] == 1);
}

TEST_CASE("BatchNorm: [batch, channels, height, width] matches nn.BatchNorm2d's, with momentum and eps") {
  BatchNorm<double, 4> norm(2, 0.3, 0.01);
  CHECK(norm.describe() == "BatchNorm(2, momentum 0.3, eps 0.01)");
  norm.gain() = xt::xtensor<double, 1>{1.5, -0.5};
  norm.bias() = xt::xtensor<double, 1>{0.25, 2.0};
  norm.running_mean() = xt::xtensor<double, 1>{0.5, -1.0};
  norm.running_var() = xt::xtensor<double, 1>{2.0, 0.5};
  const auto [x, dy] = image_case<double>();
  xt::xtensor<double, 4> y, dx;
  norm.forward(x, y);
  CHECK(nonfinite::mismatch(
            y, {2.1717456446277663, 2.313895161479768,   0.7039618421771691,  0.7039618421771691,  -1.1778890441011163,
                -1.6014924711108378, 2.5480761785198496, 2.6895239147641243,  2.2139938729467765,  2.2139938729467765,
                1.5586861804955296,  1.3260877077438005, 2.4816852815930126,  1.2719158945057956,  -0.7319453960137393,
                -0.7319453960137393, -1.6875577607417445, -0.716335598579503, 2.718262446162314,   2.393956344113318,
                1.7244159253793623,  1.7244159253793623, 1.3252135632006055,  1.5633740683481805},
            1e-14) == "");
  norm.backward(x, y, dy, dx);
  CHECK(nonfinite::mismatch(
            dx, {1.838553096613706,    -1.1488822285369291, -1.4257900680747015,  -2.130704386994272,
                 0.7967324375967573,   1.8403591856267627,  -0.19474282615853353, 0.33946629723163185,
                 -0.10198537689052423, 0.22598468377411446, -0.3328998054494886,  0.05604112150890796,
                 0.2947500486778871,   1.4462148761139024,  -1.7684634031717992,  -0.16386844329225714,
                 -1.4863629455155005,  1.9074618309564435,  -0.3431641104327106,  0.04658859157168013,
                 0.2952008784810218,   0.320414748715268,   0.003588764548204838, -0.314492966899572},
            1e-13) == "");
  CHECK(nonfinite::mismatch(std::get<0>(norm.gradients()), {1.17810517026664, 0.1517849066027023}, 1e-13) == "");
  CHECK(nonfinite::mismatch(std::get<1>(norm.gradients()), {-0.03650194043538885, -0.028660431972068884}, 1e-14) ==
        "");
  CHECK(nonfinite::mismatch(norm.running_mean(), {0.32735382608293767, -0.38417733880363086}, 1e-15) == "");
  CHECK(nonfinite::mismatch(norm.running_var(), {1.564375756313865, 1.01498507588398}, 1e-14) == "");
  norm.set_training(false);
  norm.forward(x, y);
  CHECK(nonfinite::mismatch(
            y, {0.8646093474603765, 0.9456935216834188,   0.02736388792374865, 0.02736388792374865, -1.0460715236340816,
                -1.287701146004834,  2.063920226504457,    2.2635633435195572,  1.5923875276069934,  1.5923875276069934,
                0.6674687286309163,  0.3391730248883505,   1.04140347296192,    0.351333229146654,   -0.7916987107259469,
                -0.7916987107259469, -1.336794052498879,   -0.7827946527820722, 2.304125675156046,   1.8463913713120756,
                0.9013841219008805,  0.9013841219008805,   0.33793923390689706, 0.6740853388925623},
            1e-14) == "");
  // float: the same within float's precision (statistics in double).
  BatchNorm<float, 4> single(2, 0.3, 0.01);
  single.gain() = xt::xtensor<float, 1>{1.5f, -0.5f};
  single.bias() = xt::xtensor<float, 1>{0.25f, 2.0f};
  const auto [xf, dyf] = image_case<float>();
  xt::xtensor<float, 4> yf, dxf;
  single.forward(xf, yf);
  CHECK(std::abs(yf(0, 0, 0, 0) - 2.1717456446277663) < 1e-5);
  single.backward(xf, yf, dyf, dxf);
  CHECK(std::abs(dxf(1, 1, 1, 2) - -0.314492966899572) < 1e-5);
}

TEST_CASE("BatchNorm: finite-difference gradients, rank 2, 3 and 4, training and eval") {
  BatchNorm<double> n2(3);
  gradcheck::fill_uniform(n2.gain(), 11, 0.5, 2.0);
  gradcheck::fill_uniform(n2.bias(), 12);
  auto r = gradcheck::check_layer(n2, random_tensor<double, 2>({5, 3}, 1, 3.0));
  CHECK_MESSAGE(r.max_error < 1e-6, r.where);
  BatchNorm<double, 3> n3(2, 0.5, 0.1);
  gradcheck::fill_uniform(n3.gain(), 13, -2.0, 2.0);
  r = gradcheck::check_layer(n3, random_tensor<double, 3>({3, 2, 4}, 2, 3.0));
  CHECK_MESSAGE(r.max_error < 1e-6, r.where);
  BatchNorm<double, 4> n4(3);
  gradcheck::fill_uniform(n4.gain(), 14, 0.5, 2.0);
  r = gradcheck::check_layer(n4, random_tensor<double, 4>({2, 3, 2, 2}, 3, 2.0));
  CHECK_MESSAGE(r.max_error < 1e-6, r.where);
  n4.set_training(false);
  gradcheck::fill_uniform(n4.running_var(), 15, 0.5, 2.0);
  r = gradcheck::check_layer(n4, random_tensor<double, 4>({2, 3, 2, 2}, 4, 2.0));
  CHECK_MESSAGE(r.max_error < 1e-6, r.where);
}

TEST_CASE("BatchNorm: a chain with it equals the hand-written one, and its buffers are the chain's") {
  using parallax::nn::Linear;
  using parallax::nn::MeanSquaredError;
  using parallax::nn::Residual;
  parallax::nn::Sequential net{Linear<double>(3, 4), BatchNorm<double>(4), Residual{Linear<double>(4, 4), BatchNorm<double>(4)},
                               Linear<double>(4, 2), MeanSquaredError<double>{}};
  net.initialize(5);
  static_assert(parallax::HasLayerBuffers<decltype(net)>);
  std::size_t buffers = 0;
  parallax::detail::for_each_tensor(net.buffers(), [&](auto& t) {
    CHECK(t.size() == 4);
    ++buffers;
  });
  CHECK(buffers == 4);  // two layers, mean and variance each
  CHECK(net.describe().find("BatchNorm(4)") != std::string::npos);
  // The two BatchNorms' running statistics move in the chain's backward.
  parallax::data::Batch<xt::xtensor<double, 2>, xt::xtensor<double, 2>> b;
  b.inputs = random_tensor<double, 2>({6, 3}, 21, 2.0);
  b.targets = random_tensor<double, 2>({6, 2}, 22);
  (void)net.loss_and_gradient(b);
  CHECK(std::get<0>(net.buffers())(0) != 0.0);
  CHECK(std::get<2>(net.buffers())(0) != 0.0);
  // Eval mode reaches them through the chain: the loss no longer depends on the batch's statistics.
  net.set_training(false);
  const double whole = net.loss(b);
  decltype(b) half;
  parallax::data::slice_rows(b.inputs, 0, 3, half.inputs);
  parallax::data::slice_rows(b.targets, 0, 3, half.targets);
  decltype(b) rest;
  parallax::data::slice_rows(b.inputs, 3, 3, rest.inputs);
  parallax::data::slice_rows(b.targets, 3, 3, rest.targets);
  CHECK(std::abs((net.loss(half) + net.loss(rest)) / 2 - whole) < 1e-14);
}

TEST_CASE("BatchNorm: a large common offset keeps the variance (two passes, not E[x^2] - mean^2)") {
  // Values 1e8 + {-3, -1, 1, 3}: mean 1e8, biased variance 5 (E[x^2] - mean^2
  // in double would lose it almost entirely).
  BatchNorm<double> norm(1, 1.0);  // momentum 1: the running statistics are the batch's
  const xt::xtensor<double, 2> x = {{1e8 - 3}, {1e8 - 1}, {1e8 + 1}, {1e8 + 3}};
  xt::xtensor<double, 2> y, dx;
  norm.forward(x, y);
  CHECK(std::abs(y(3, 0) - 3 / std::sqrt(5 + 1e-5)) < 1e-9);
  norm.backward(x, y, xt::xtensor<double, 2>({4, 1}, 1.0), dx);
  CHECK(std::abs(norm.running_mean()(0) - 1e8) < 1e-6);
  CHECK(std::abs(norm.running_var()(0) - 20.0 / 3.0) < 1e-9);  // unbiased: 5 x 4 / 3
}

TEST_CASE_TEMPLATE("BatchNorm: a NaN makes its channel NaN for the whole batch", T, float, double) {
  using nonfinite::nan;
  BatchNorm<T> norm(2);
  const auto x = nonfinite::tensor<T, 2>({3, 2}, {nan, 1, 2, 0, 1, 3});
  xt::xtensor<T, 2> y, dx;
  norm.forward(x, y);
  for (std::size_t b = 0; b < 3; ++b) {
    CHECK(std::isnan(y(b, 0)));
    CHECK(std::isfinite(y(b, 1)));
  }
  norm.backward(x, y, nonfinite::tensor<T, 2>({3, 2}, {1, 1, 1, 1, 1, 1}), dx);
  for (std::size_t b = 0; b < 3; ++b) {
    CHECK(std::isnan(dx(b, 0)));
    CHECK(std::isfinite(dx(b, 1)));
  }
  CHECK(std::isnan(norm.running_mean()(0)));
  CHECK(std::isnan(norm.running_var()(0)));
  CHECK(std::isfinite(norm.running_mean()(1)));
}

TEST_CASE("BatchNorm: bad settings and inputs are errors naming them") {
  CHECK(error_of([] { BatchNorm<float> b(0); }) == "BatchNorm: the channel count must be positive, got 0");
  CHECK(error_of([] { BatchNorm<float> b(3, 1.5); }) == "BatchNorm(3): momentum must be in [0, 1], got 1.5");
  CHECK(error_of([] { BatchNorm<float> b(3, 0.1, -1); }) == "BatchNorm(3): eps must be finite and >= 0, got -1");
  BatchNorm<double, 3> norm(4);
  xt::xtensor<double, 3> x({2, 3, 5}, 1.0), y, dx;
  CHECK(error_of([&] { norm.forward(x, y); }) ==
        "BatchNorm::forward(): input of shape (2, 3, 5) has 3 channels (extent 1), expected 4");
  CHECK(error_of([&] { (void)norm.output_shape({2, 3, 5}); }) ==
        "BatchNorm(4): input shape (2, 3, 5) has 3 channels (extent 1), expected 4");
  CHECK(norm.output_shape({2, 4, 5}) == std::vector<std::size_t>{2, 4, 5});
  // One value per channel cannot give a variance in training mode.
  xt::xtensor<double, 3> single({1, 4, 1}, 1.0);
  CHECK(error_of([&] { norm.forward(single, y); }) ==
        "BatchNorm(4): training needs more than one value per channel, got 1 (batch x spatial positions); use eval "
        "mode for a single value");
  xt::xtensor<double, 3> good({2, 4, 5}, 1.0), bad_dy({2, 4, 4}, 1.0);
  norm.forward(good, y);
  CHECK(error_of([&] { norm.backward(good, y, bad_dy, dx); }) ==
        "BatchNorm::backward(): dy has shape (2, 4, 4), expected (2, 4, 5)");
  CHECK(BatchNorm<float, 4>::parameter_count(16) == 32);
}
