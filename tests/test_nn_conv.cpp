// SPDX-License-Identifier: BSL-1.0
// Conv2D and MaxPool2D: hand-computed forward values, finite-difference
// gradients (double) over strides and paddings, deterministic
// initialisation, buffer reuse, shape errors, and NaN and infinities forward
// and backward against PyTorch's values.

#include <parallax/nn/conv2d.hpp>
#include <parallax/nn/maxpool2d.hpp>

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

using parallax::nn::Conv2D;
using parallax::nn::MaxPool2D;

xt::xtensor<double, 4> random_image(std::array<std::size_t, 4> shape, std::uint64_t seed) {
  xt::xtensor<double, 4> t(shape);
  gradcheck::fill_uniform(t, seed);
  return t;
}

/// 1..9 as one 3x3 image [1, 1, 3, 3].
xt::xtensor<double, 4> one_to_nine() { return {{{{1, 2, 3}, {4, 5, 6}, {7, 8, 9}}}}; }

static_assert(parallax::Layer<Conv2D<float>>);
static_assert(parallax::HasLayerParameters<Conv2D<double>>);
static_assert(parallax::Layer<MaxPool2D<float>>);
static_assert(!parallax::HasLayerParameters<MaxPool2D<double>>);

}  // namespace

TEST_CASE("Conv2D: a 2x2 kernel over a 3x3 image, computed by hand") {
  Conv2D<double> conv(1, 1, 2);
  conv.weight() = {{1, 2, 3, 4}};  // [[1, 2], [3, 4]]
  conv.bias() = {1};
  xt::xtensor<double, 4> y;
  conv.forward(one_to_nine(), y);
  // y00 = 1*1 + 2*2 + 3*4 + 4*5 = 37; y01 = 1*2 + 2*3 + 3*5 + 4*6 = 47;
  // y10 = 1*4 + 2*5 + 3*7 + 4*8 = 67; y11 = 1*5 + 2*6 + 3*8 + 4*9 = 77; plus the bias.
  CHECK(y == xt::xtensor<double, 4>{{{{38, 48}, {68, 78}}}});

  // dy = 1 at y00 only: dx is the kernel placed at the top left, dW the top-left window.
  const xt::xtensor<double, 4> dy = {{{{1, 0}, {0, 0}}}};
  xt::xtensor<double, 4> dx;
  conv.backward(one_to_nine(), y, dy, dx);
  CHECK(dx == xt::xtensor<double, 4>{{{{1, 2, 0}, {3, 4, 0}, {0, 0, 0}}}});
  CHECK(std::get<0>(conv.gradients()) == xt::xtensor<double, 2>{{1, 2, 4, 5}});
  CHECK(std::get<1>(conv.gradients()) == xt::xtensor<double, 1>{1});
}

TEST_CASE("Conv2D: stride 2 and padding 1, computed by hand") {
  Conv2D<double> conv(1, 1, 3, 2, 1);
  conv.weight() = xt::ones<double>({1, 9});
  conv.bias() = {0};
  xt::xtensor<double, 4> y;
  conv.forward(one_to_nine(), y);
  // Output (3 + 2 - 3) / 2 + 1 = 2 per side; each 3x3 window centred on a
  // corner covers the 2x2 block of the image at that corner (the rest is padding).
  CHECK(y == xt::xtensor<double, 4>{{{{1 + 2 + 4 + 5, 2 + 3 + 5 + 6}, {4 + 5 + 7 + 8, 5 + 6 + 8 + 9}}}});
}

TEST_CASE("Conv2D: channels mix through the weight matrix [out, in * k * k]") {
  Conv2D<double> conv(2, 2, 1);
  conv.weight() = {{1, 2}, {-1, 0.5}};
  conv.bias() = {0, 10};
  const xt::xtensor<double, 4> x = {{{{1, 2}}, {{3, 4}}}};  // [1, 2, 1, 2]
  xt::xtensor<double, 4> y;
  conv.forward(x, y);
  // out 0 = 1 * c0 + 2 * c1; out 1 = -c0 + 0.5 * c1 + 10.
  CHECK(y == xt::xtensor<double, 4>{{{{7, 10}}, {{10.5, 10}}}});
}

TEST_CASE("Conv2D: finite-difference gradients") {
  struct config {
    std::size_t batch, in, out, kernel, stride, padding, height, width;
  };
  for (const auto c : {config{1, 1, 1, 3, 1, 0, 5, 5}, config{2, 2, 3, 3, 2, 1, 7, 6}, config{3, 3, 2, 2, 1, 1, 4, 5},
                       config{1, 2, 2, 1, 1, 0, 3, 3}, config{2, 1, 2, 3, 2, 0, 5, 5}, config{1, 2, 1, 3, 1, 1, 1, 1},
                       config{1, 1, 3, 2, 2, 1, 3, 4}}) {
    CAPTURE(c.batch);
    CAPTURE(c.in);
    CAPTURE(c.out);
    CAPTURE(c.kernel);
    CAPTURE(c.stride);
    CAPTURE(c.padding);
    CAPTURE(c.height);
    CAPTURE(c.width);
    Conv2D<double> conv(c.in, c.out, c.kernel, c.stride, c.padding);
    conv.initialize(5, 1);
    const auto r = gradcheck::check_layer(conv, random_image({c.batch, c.in, c.height, c.width}, 31));
    INFO(r.where);
    CHECK(r.max_error < 1e-6);
  }
}

TEST_CASE("Conv2D: initialize is deterministic and within +-1/sqrt(in * k * k)") {
  Conv2D<float> a(4, 6, 3), b(4, 6, 3), c(4, 6, 3);
  a.initialize(9, 0);
  b.initialize(9, 0);
  c.initialize(9, 1);
  CHECK(a.weight() == b.weight());
  CHECK(a.bias() == b.bias());
  CHECK(a.weight() != c.weight());
  const float bound = 1.0f / 6.0f;
  for (float w : a.weight()) CHECK(std::abs(w) <= bound);
  for (float w : a.bias()) CHECK(std::abs(w) <= bound);
  CHECK(a.weight().shape() == std::array<std::size_t, 2>{6, 36});
}

TEST_CASE("Conv2D: output buffers are reused") {
  Conv2D<double> conv(2, 3, 3, 1, 1);
  conv.initialize(1, 0);
  const auto x = random_image({2, 2, 5, 5}, 32);
  xt::xtensor<double, 4> y, dx;
  conv.forward(x, y);
  const auto* y_data = y.data();
  conv.forward(x, y);
  CHECK(y.data() == y_data);
  conv.backward(x, y, y, dx);
  const auto* dx_data = dx.data();
  conv.backward(x, y, y, dx);
  CHECK(dx.data() == dx_data);
}

TEST_CASE("Conv2D: describe, output_shape, parameter_count and shape errors") {
  Conv2D<float> conv(3, 16, 3, 2, 1);
  CHECK(conv.describe() == "Conv2D(3 -> 16, kernel 3, stride 2, padding 1)");
  CHECK(Conv2D<float>::parameter_count(3, 16, 3, 2, 1) == 16 * 27 + 16);
  CHECK(conv.output_shape({8, 3, 28, 28}) == std::vector<std::size_t>{8, 16, 14, 14});
  CHECK(conv.output_shape({8, 3, 1, 1}) == std::vector<std::size_t>{8, 16, 1, 1});
  const auto message = error_of([&] { (void)conv.output_shape({8, 4, 28, 28}); });
  CHECK(message.find("Conv2D(3 -> 16, kernel 3, stride 2, padding 1)") == 0);
  CHECK(message.find("(8, 4, 28, 28)") != std::string::npos);
  CHECK(message.find("(batch, 3, height, width)") != std::string::npos);
  CHECK_THROWS_AS((void)conv.output_shape({8, 3, 28}), parallax::error);
  xt::xtensor<float, 4> x(std::array<std::size_t, 4>{1, 2, 8, 8}), y;
  CHECK(error_of([&] { conv.forward(x, y); }).find("Conv2D::forward(): input shape (1, 2, 8, 8) does not fit") == 0);
  Conv2D<float> big(1, 1, 5);
  xt::xtensor<float, 4> small(std::array<std::size_t, 4>{1, 1, 4, 9});
  CHECK_THROWS_AS(big.forward(small, y), parallax::error);
  CHECK_THROWS_AS(Conv2D<float>(1, 1, 3, 0), parallax::error);
}

TEST_CASE("MaxPool2D: forward and backward computed by hand, first maximum wins") {
  MaxPool2D<double> pool(2);
  const xt::xtensor<double, 4> x = {{{{1, 5, 2, 2}, {3, 4, 2, 2}, {0, -1, 9, 8}, {-2, 7, 8, 9}}}};
  xt::xtensor<double, 4> y;
  pool.forward(x, y);
  CHECK(y == xt::xtensor<double, 4>{{{{5, 2}, {7, 9}}}});
  const xt::xtensor<double, 4> dy = {{{{10, 20}, {30, 40}}}};
  xt::xtensor<double, 4> dx;
  pool.backward(x, y, dy, dx);
  // Ties: the top-right window is all 2 (its top-left element takes the
  // gradient); the bottom-right has 9 twice (the first, row 2, wins).
  CHECK(dx == xt::xtensor<double, 4>{{{{0, 10, 20, 0}, {0, 0, 0, 0}, {0, 0, 40, 0}, {0, 30, 0, 0}}}});
}

TEST_CASE("MaxPool2D: overlapping windows add their gradients") {
  MaxPool2D<double> pool(2, 1);
  const xt::xtensor<double, 4> x = {{{{1, 2, 1}, {2, 9, 3}, {1, 4, 1}}}};
  xt::xtensor<double, 4> y, dx;
  pool.forward(x, y);
  CHECK(y == xt::xtensor<double, 4>{{{{9, 9}, {9, 9}}}});
  pool.backward(x, y, xt::xtensor<double, 4>{{{{1, 2}, {3, 4}}}}, dx);
  CHECK(dx == xt::xtensor<double, 4>{{{{0, 0, 0}, {0, 10, 0}, {0, 0, 0}}}});
}

TEST_CASE("MaxPool2D: finite-difference gradients") {
  struct config {
    std::size_t batch, channels, height, width, kernel, stride;
  };
  for (const auto c : {config{1, 1, 4, 4, 2, 2}, config{2, 3, 5, 7, 3, 2}, config{2, 2, 5, 5, 2, 1},
                       config{1, 1, 3, 3, 3, 3}, config{3, 2, 6, 4, 2, 3}}) {
    CAPTURE(c.height);
    CAPTURE(c.width);
    CAPTURE(c.kernel);
    CAPTURE(c.stride);
    MaxPool2D<double> pool(c.kernel, c.stride);
    const auto r = gradcheck::check_layer(pool, random_image({c.batch, c.channels, c.height, c.width}, 33));
    INFO(r.where);
    CHECK(r.max_error < 1e-6);
  }
}

TEST_CASE("MaxPool2D: describe, output_shape and shape errors") {
  MaxPool2D<float> pool(2);
  CHECK(pool.describe() == "MaxPool2D(kernel 2, stride 2)");
  CHECK(MaxPool2D<float>(3, 1).describe() == "MaxPool2D(kernel 3, stride 1)");
  CHECK(MaxPool2D<float>::parameter_count(2) == 0);
  CHECK(pool.output_shape({4, 8, 28, 28}) == std::vector<std::size_t>{4, 8, 14, 14});
  CHECK(pool.output_shape({4, 8, 5, 5}) == std::vector<std::size_t>{4, 8, 2, 2});
  const auto message = error_of([&] { (void)pool.output_shape({4, 8, 1, 28}); });
  CHECK(message.find("MaxPool2D(kernel 2, stride 2)") == 0);
  CHECK(message.find("(4, 8, 1, 28)") != std::string::npos);
  xt::xtensor<float, 4> x(std::array<std::size_t, 4>{1, 1, 1, 5}), y;
  CHECK(error_of([&] { pool.forward(x, y); }).find("MaxPool2D::forward(): input shape (1, 1, 1, 5)") == 0);
  CHECK_THROWS_AS(MaxPool2D<float>(0), parallax::error);
}

TEST_CASE("Conv2D: backward_parameters adds the same parameter gradients as backward, without dx") {
  Conv2D<double> a(2, 3, 3, 2, 1), b(2, 3, 3, 2, 1);
  a.initialize(5, 1);
  b.initialize(5, 1);
  static_assert(parallax::HasParameterBackward<Conv2D<double>>);
  auto x = random_image({2, 2, 7, 6}, 3);
  xt::xtensor<double, 4> y, dx;
  a.forward(x, y);
  xt::xtensor<double, 4> dy(y.shape());
  gradcheck::fill_uniform(dy, 4);
  a.backward(x, y, dy, dx);
  b.backward_parameters(x, y, dy);
  CHECK(std::get<0>(a.gradients()) == std::get<0>(b.gradients()));
  CHECK(std::get<1>(a.gradients()) == std::get<1>(b.gradients()));
}

// NaN and infinities go through Conv2D and MaxPool2D as they go through
// PyTorch's (torch 1.13, float32 and float64 alike); the expected values are
// PyTorch's.

TEST_CASE_TEMPLATE("Conv2D: a NaN in the weight, x or dy reaches what PyTorch's F.conv2d reaches", T, float, double) {
  using nonfinite::nan;
  const auto x9 = nonfinite::tensor<T, 4>({1, 1, 3, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9});
  xt::xtensor<T, 4> y, dx;
  {
    // Stride 2, padding 1: the NaN kernel tap meets padding in every window
    // (0 * NaN is NaN) and only the centre pixel in backward.
    INFO("a NaN weight, stride 2, padding 1");
    Conv2D<T> conv(1, 1, 2, 2, 1);
    conv.weight() = nonfinite::tensor<T, 2>({1, 4}, {nan, 2, 3, 4});
    conv.bias() = nonfinite::tensor<T, 1>({1}, {1});
    conv.forward(x9, y);
    CHECK(nonfinite::mismatch(y, {nan, nan, nan, nan}) == "");
    conv.backward(x9, y, xt::ones<T>(y.shape()), dx);
    CHECK(nonfinite::mismatch(dx, {4, 3, 4, 2, nan, 2, 4, 3, 4}) == "");
    CHECK(nonfinite::mismatch(std::get<0>(conv.gradients()), {5, 10, 10, 20}) == "");
    CHECK(nonfinite::mismatch(std::get<1>(conv.gradients()), {4}) == "");
  }
  {
    INFO("a NaN input pixel");
    Conv2D<T> conv(1, 1, 2);
    conv.weight() = nonfinite::tensor<T, 2>({1, 4}, {1, 2, 3, 4});
    conv.bias() = nonfinite::tensor<T, 1>({1}, {1});
    const auto x = nonfinite::tensor<T, 4>({1, 1, 3, 3}, {nan, 2, 3, 4, 5, 6, 7, 8, 9});
    conv.forward(x, y);
    CHECK(nonfinite::mismatch(y, {nan, 48, 68, 78}) == "");
    conv.backward(x, y, xt::ones<T>(y.shape()), dx);
    CHECK(nonfinite::mismatch(dx, {1, 3, 2, 4, 10, 6, 3, 7, 4}) == "");
    CHECK(nonfinite::mismatch(std::get<0>(conv.gradients()), {nan, 16, 24, 28}) == "");
    CHECK(nonfinite::mismatch(std::get<1>(conv.gradients()), {4}) == "");
  }
  {
    INFO("a NaN dy, through backward and backward_parameters");
    Conv2D<T> conv(1, 1, 2), first(1, 1, 2);
    for (auto* c : {&conv, &first}) {
      c->weight() = nonfinite::tensor<T, 2>({1, 4}, {1, 2, 3, 4});
      c->bias() = nonfinite::tensor<T, 1>({1}, {1});
    }
    const auto dy = nonfinite::tensor<T, 4>({1, 1, 2, 2}, {nan, 0, 0, 0});
    conv.forward(x9, y);
    CHECK(nonfinite::mismatch(y, {38, 48, 68, 78}) == "");
    conv.backward(x9, y, dy, dx);
    first.backward_parameters(x9, y, dy);
    CHECK(nonfinite::mismatch(dx, {nan, nan, 0, nan, nan, 0, 0, 0, 0}) == "");
    for (const auto* c : {&conv, &first}) {
      CHECK(nonfinite::mismatch(std::get<0>(c->gradients()), {nan, nan, nan, nan}) == "");
      CHECK(nonfinite::mismatch(std::get<1>(c->gradients()), {nan}) == "");
    }
  }
}

TEST_CASE_TEMPLATE("MaxPool2D: a window with a NaN gives NaN and its gradient goes to the NaN, as in PyTorch", T,
                   float, double) {
  using nonfinite::inf;
  using nonfinite::nan;
  MaxPool2D<T> pool(2);
  // The top-left window has two NaNs: PyTorch routes the gradient to the
  // last one in row-major order (it takes a NaN as the new maximum whenever
  // it meets one); the bottom-right window's maximum is +inf.
  const auto x = nonfinite::tensor<T, 4>({1, 1, 4, 4}, {1, nan, 2, 2, nan, 4, 2, 2, 0, -1, 9, inf, -2, 7, 8, 9});
  xt::xtensor<T, 4> y, dx;
  pool.forward(x, y);
  CHECK(nonfinite::mismatch(y, {nan, 2, 7, inf}) == "");
  pool.backward(x, y, nonfinite::tensor<T, 4>({1, 1, 2, 2}, {10, 20, 30, 40}), dx);
  CHECK(nonfinite::mismatch(dx, {0, 0, 20, 0, 10, 0, 0, 0, 0, 0, 0, 40, 0, 30, 0, 0}) == "");

  // Overlapping windows that all hold the NaN: all NaN, every gradient to it.
  MaxPool2D<T> overlap(2, 1);
  const auto centre = nonfinite::tensor<T, 4>({1, 1, 3, 3}, {1, 2, 1, 2, nan, 3, 1, 4, 1});
  overlap.forward(centre, y);
  CHECK(nonfinite::mismatch(y, {nan, nan, nan, nan}) == "");
  overlap.backward(centre, y, nonfinite::tensor<T, 4>({1, 1, 2, 2}, {1, 2, 3, 4}), dx);
  CHECK(nonfinite::mismatch(dx, {0, 0, 0, 0, 10, 0, 0, 0, 0}) == "");

  // A NaN dy goes to the window's maximum; a window of -inf sends its
  // gradient to the first element.
  const auto finite = nonfinite::tensor<T, 4>({1, 1, 2, 2}, {5, 1, 2, 3});
  pool.forward(finite, y);
  pool.backward(finite, y, nonfinite::tensor<T, 4>({1, 1, 1, 1}, {nan}), dx);
  CHECK(nonfinite::mismatch(dx, {nan, 0, 0, 0}) == "");
  const auto low = nonfinite::tensor<T, 4>({1, 1, 2, 2}, {-inf, -inf, -inf, -inf});
  pool.forward(low, y);
  CHECK(nonfinite::mismatch(y, {-inf}) == "");
  pool.backward(low, y, nonfinite::tensor<T, 4>({1, 1, 1, 1}, {1}), dx);
  CHECK(nonfinite::mismatch(dx, {1, 0, 0, 0}) == "");
}
