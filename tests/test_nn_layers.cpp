// SPDX-License-Identifier: BSL-1.0
// Linear, the activations, Dropout and Flatten: hand-computed forward values,
// finite-difference gradients (double), deterministic initialisation, buffer
// reuse, shape errors, and NaN and infinities forward and backward against
// PyTorch's values.

#include <parallax/nn/activation.hpp>
#include <parallax/nn/dropout.hpp>
#include <parallax/nn/flatten.hpp>
#include <parallax/nn/linear.hpp>

#include "error_of.hpp"
#include "gradcheck.hpp"
#include "test_nn_nonfinite.hpp"
#include "xtensor_print.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>


namespace {

using parallax::nn::Dropout;
using parallax::nn::Flatten;
using parallax::nn::Linear;
using parallax::nn::ReLU;
using parallax::nn::Sigmoid;
using parallax::nn::Tanh;

template <class T, std::size_t N>
xt::xtensor<T, N> random_tensor(std::array<std::size_t, N> shape, std::uint64_t seed) {
  xt::xtensor<T, N> t(shape);
  gradcheck::fill_uniform(t, seed);
  return t;
}

static_assert(parallax::Layer<Linear<float>>);
static_assert(parallax::HasLayerParameters<Linear<double>>);
static_assert(parallax::Layer<ReLU<float>>);
static_assert(parallax::Layer<Tanh<double, 4>>);
static_assert(parallax::Layer<Sigmoid<float, 3>>);
static_assert(parallax::Layer<Dropout<float>>);
static_assert(parallax::Layer<Flatten<float, 4>>);
static_assert(!parallax::HasLayerParameters<ReLU<float>>);
static_assert(!parallax::HasLayerParameters<Dropout<double, 4>>);
static_assert(std::is_same_v<Flatten<float, 4>::output_type, xt::xtensor<float, 2>>);

}  // namespace

TEST_CASE("Linear: forward and backward of a 2 -> 3 layer match hand-computed values") {
  Linear<double> fc(2, 3);
  fc.weight() = {{1, 2, 3}, {4, 5, 6}};
  fc.bias() = {0.5, -1, 2};
  const xt::xtensor<double, 2> x = {{1, 1}, {2, -1}};
  xt::xtensor<double, 2> y;
  fc.forward(x, y);
  // Row 0: [1 + 4, 2 + 5, 3 + 6] + b; row 1: [2 - 4, 4 - 5, 6 - 6] + b.
  const xt::xtensor<double, 2> expected = {{5.5, 6, 11}, {-1.5, -2, 2}};
  CHECK(y == expected);

  const xt::xtensor<double, 2> dy = {{1, 0, 0}, {0, 1, 0}};
  xt::xtensor<double, 2> dx;
  fc.backward(x, y, dy, dx);
  // dx = dy W^T: row 0 is W's column 0, row 1 its column 1.
  CHECK(dx == xt::xtensor<double, 2>{{1, 4}, {2, 5}});
  // dW = x^T dy, db = column sums of dy.
  CHECK(std::get<0>(fc.gradients()) == xt::xtensor<double, 2>{{1, 2, 0}, {1, -1, 0}});
  CHECK(std::get<1>(fc.gradients()) == xt::xtensor<double, 1>{1, 1, 0});
  // Gradients accumulate.
  fc.backward(x, y, dy, dx);
  CHECK(std::get<0>(fc.gradients()) == xt::xtensor<double, 2>{{2, 4, 0}, {2, -2, 0}});
  CHECK(std::get<1>(fc.gradients()) == xt::xtensor<double, 1>{2, 2, 0});
}

TEST_CASE("Linear: finite-difference gradients") {
  struct shape {
    std::size_t batch, in, out;
  };
  for (const auto s : {shape{1, 1, 1}, shape{1, 3, 5}, shape{4, 7, 3}, shape{5, 2, 1}, shape{3, 1, 4}}) {
    CAPTURE(s.batch);
    CAPTURE(s.in);
    CAPTURE(s.out);
    Linear<double> fc(s.in, s.out);
    fc.initialize(11, 2);
    const auto r = gradcheck::check_layer(fc, random_tensor<double, 2>({s.batch, s.in}, 5));
    INFO(r.where);
    CHECK(r.max_error < 1e-6);
  }
}

TEST_CASE("Linear: initialize is deterministic in (seed, index) and within +-1/sqrt(in)") {
  Linear<float> a(16, 8), b(16, 8), c(16, 8), d(16, 8);
  a.initialize(42, 3);
  b.initialize(42, 3);
  c.initialize(42, 4);
  d.initialize(43, 3);
  CHECK(a.weight() == b.weight());
  CHECK(a.bias() == b.bias());
  CHECK(a.weight() != c.weight());
  CHECK(a.weight() != d.weight());
  CHECK(a.bias() != c.bias());
  const float bound = 1.0f / 4.0f;
  bool any_nonzero = false;
  for (float w : a.weight()) {
    CHECK(std::abs(w) <= bound);
    any_nonzero = any_nonzero || w != 0.0f;
  }
  for (float w : a.bias()) CHECK(std::abs(w) <= bound);
  CHECK(any_nonzero);
}

TEST_CASE("Linear: buffers are reused when their shape is right") {
  Linear<double> fc(5, 3);
  fc.initialize(1, 0);
  const auto x = random_tensor<double, 2>({4, 5}, 3);
  xt::xtensor<double, 2> y, dx;
  fc.forward(x, y);
  const auto* y_data = y.data();
  fc.forward(x, y);
  CHECK(y.data() == y_data);
  const auto dy = random_tensor<double, 2>({4, 3}, 4);
  fc.backward(x, y, dy, dx);
  const auto* dx_data = dx.data();
  fc.backward(x, y, dy, dx);
  CHECK(dx.data() == dx_data);
  // A buffer of the wrong shape is reshaped.
  xt::xtensor<double, 2> wrong(std::array<std::size_t, 2>{2, 2});
  fc.forward(x, wrong);
  CHECK(wrong.shape() == std::array<std::size_t, 2>{4, 3});
}

TEST_CASE("Linear: shape errors name the layer and the shapes") {
  Linear<float> fc(784, 256);
  CHECK(fc.describe() == "Linear(784 -> 256)");
  CHECK(Linear<float>::parameter_count(784, 256) == 784 * 256 + 256);
  CHECK(fc.output_shape({32, 784}) == std::vector<std::size_t>{32, 256});
  xt::xtensor<float, 2> x(std::array<std::size_t, 2>{2, 783}), y;
  CHECK(error_of([&] { fc.forward(x, y); }).find("Linear::forward(): input has 783 features, expected 784") == 0);
  const auto message = error_of([&] { (void)fc.output_shape({32, 783}); });
  CHECK(message.find("Linear(784 -> 256)") != std::string::npos);
  CHECK(message.find("(32, 783)") != std::string::npos);
  CHECK(message.find("(batch, 784)") != std::string::npos);
  CHECK_THROWS_AS((void)fc.output_shape({784}), parallax::error);
  CHECK_THROWS_AS(Linear<float>(0, 3), parallax::error);
}

TEST_CASE("Linear: a weight too large for memory names the layer and the bytes") {
  // 5 x 2^60 floats: no machine has them (and 2^62 bytes exceed what a vector can hold).
  const std::size_t huge = std::size_t{1} << 60;
  const auto message = error_of([&] { Linear<float> fc(5, huge); });
  CHECK(message == "Linear(5 -> 1152921504606846976): cannot allocate its weight [5, 1152921504606846976], bias "
                   "and their gradients (55340232221128654848 bytes)");  // 2 x (5 + 1) x 2^60 x 4
}

TEST_CASE("activations: forward values computed by hand") {
  const xt::xtensor<double, 2> x = {{-1.0, 0.0, 2.0}, {std::log(3.0), -std::log(3.0), std::log(2.0)}};
  xt::xtensor<double, 2> y;
  ReLU<double>{}.forward(x, y);
  CHECK(y == xt::xtensor<double, 2>{{0, 0, 2}, {std::log(3.0), 0, std::log(2.0)}});
  Sigmoid<double>{}.forward(x, y);
  // sigmoid(ln 3) = 3 / 4, sigmoid(-ln 3) = 1 / 4, sigmoid(ln 2) = 2 / 3.
  CHECK(y(0, 1) == doctest::Approx(0.5));
  CHECK(y(1, 0) == doctest::Approx(0.75));
  CHECK(y(1, 1) == doctest::Approx(0.25));
  CHECK(y(1, 2) == doctest::Approx(2.0 / 3.0));
  Tanh<double>{}.forward(x, y);
  // tanh(ln 2) = (2 - 1/2) / (2 + 1/2) = 0.6; tanh(ln 3) = (3 - 1/3) / (3 + 1/3) = 0.8.
  CHECK(y(0, 1) == 0.0);
  CHECK(y(1, 2) == doctest::Approx(0.6));
  CHECK(y(1, 0) == doctest::Approx(0.8));
  CHECK(y(1, 1) == doctest::Approx(-0.8));
  // No overflow for large |x|.
  const xt::xtensor<float, 2> big = {{-1000.0f, 1000.0f}};
  xt::xtensor<float, 2> s;
  Sigmoid<float>{}.forward(big, s);
  CHECK(s(0, 0) == 0.0f);
  CHECK(s(0, 1) == 1.0f);
}

TEST_CASE("activations: backward uses x for ReLU and y for Tanh and Sigmoid") {
  const xt::xtensor<double, 2> x = {{-1.0, 0.0, 2.0}};
  const xt::xtensor<double, 2> dy = {{3.0, 3.0, 3.0}};
  xt::xtensor<double, 2> y, dx;
  ReLU<double> relu;
  relu.forward(x, y);
  relu.backward(x, y, dy, dx);
  CHECK(dx == xt::xtensor<double, 2>{{0, 0, 3}});  // slope 0 at x = 0
  Sigmoid<double> sigmoid;
  sigmoid.forward(x, y);
  sigmoid.backward(x, y, dy, dx);
  CHECK(dx(0, 1) == doctest::Approx(3 * 0.25));  // sigmoid'(0) = 1/4
  Tanh<double> tanh_layer;
  tanh_layer.forward(x, y);
  tanh_layer.backward(x, y, dy, dx);
  CHECK(dx(0, 1) == doctest::Approx(3.0));  // tanh'(0) = 1
}

TEST_CASE("activations: finite-difference gradients") {
  for (std::uint64_t seed : {1u, 2u}) {
    ReLU<double> relu;
    Tanh<double> th;
    Sigmoid<double> sg;
    ReLU<double, 4> relu4;
    Tanh<double, 3> th3;
    Sigmoid<double, 4> sg4;
    const auto x2 = random_tensor<double, 2>({3, 5}, seed);
    const auto x1 = random_tensor<double, 2>({1, 1}, seed + 10);
    const auto x3 = random_tensor<double, 3>({1, 2, 3}, seed + 20);
    const auto x4 = random_tensor<double, 4>({2, 3, 2, 3}, seed + 30);
    // Inputs spread over [-3, 3) so the saturating parts are exercised too.
    auto wide = x2;
    for (auto& v : wide) v *= 3;
    for (const auto* r : std::array<const xt::xtensor<double, 2>*, 3>{&x2, &x1, &wide}) {
      CHECK(gradcheck::check_layer(relu, *r).max_error < 1e-6);
      CHECK(gradcheck::check_layer(th, *r).max_error < 1e-6);
      CHECK(gradcheck::check_layer(sg, *r).max_error < 1e-6);
    }
    CHECK(gradcheck::check_layer(relu4, x4).max_error < 1e-6);
    CHECK(gradcheck::check_layer(th3, x3).max_error < 1e-6);
    CHECK(gradcheck::check_layer(sg4, x4).max_error < 1e-6);
  }
}

TEST_CASE("activations: describe, output_shape and parameter_count") {
  CHECK(ReLU<float>{}.describe() == "ReLU");
  CHECK(Tanh<float>{}.describe() == "Tanh");
  CHECK(Sigmoid<float>{}.describe() == "Sigmoid");
  CHECK(ReLU<float>::parameter_count() == 0);
  CHECK(ReLU<float, 4>{}.output_shape({2, 3, 4, 5}) == std::vector<std::size_t>{2, 3, 4, 5});
  const auto message = error_of([] { (void)Tanh<float>{}.output_shape({2, 3, 4}); });
  CHECK(message.find("Tanh") == 0);
  CHECK(message.find("(2, 3, 4)") != std::string::npos);
  CHECK(message.find("rank-2") != std::string::npos);
}

TEST_CASE("Dropout: p outside [0, 1) is an error") {
  CHECK_THROWS_AS(Dropout<float>(1.0), parallax::error);
  CHECK_THROWS_AS(Dropout<float>(-0.1), parallax::error);
  CHECK_THROWS_AS(Dropout<float>(std::numeric_limits<double>::quiet_NaN()), parallax::error);
  CHECK(error_of([] { Dropout<float> d(1.5); }).find("Dropout: p must be in [0, 1)") == 0);
  CHECK_NOTHROW(Dropout<float>(0.0));
  CHECK(Dropout<float>(0.25).describe() == "Dropout(p = 0.25)");
  CHECK(Dropout<float>::parameter_count(0.5) == 0);
}

TEST_CASE("Dropout: eval mode is the identity") {
  Dropout<double> drop(0.5);
  drop.initialize(3, 1);
  drop.set_training(false);
  const auto x = random_tensor<double, 2>({4, 6}, 9);
  const auto dy = random_tensor<double, 2>({4, 6}, 10);
  xt::xtensor<double, 2> y, dx;
  drop.forward(x, y);
  drop.backward(x, y, dy, dx);
  CHECK(y == x);
  CHECK(dx == dy);
  CHECK(gradcheck::check_layer(drop, x).max_error < 1e-6);
}

TEST_CASE("Dropout: the kept fraction is near 1 - p and kept elements are scaled by 1 / (1 - p)") {
  for (double p : {0.1, 0.3, 0.5, 0.9}) {
    CAPTURE(p);
    Dropout<double> drop(p);
    drop.initialize(7, 2);
    drop.set_step(5);
    const auto x = random_tensor<double, 2>({200, 500}, 12);
    xt::xtensor<double, 2> y;
    drop.forward(x, y);
    std::size_t kept = 0;
    bool scaled = true;
    for (std::size_t i = 0; i < x.size(); ++i) {
      if (y.data()[i] != 0.0) {
        ++kept;
        scaled = scaled && std::abs(y.data()[i] - x.data()[i] / (1 - p)) <= 1e-12 * std::abs(y.data()[i]);
      }
    }
    CHECK(scaled);
    // 100000 elements: the binomial standard deviation of the fraction is below 0.0016.
    const double fraction = static_cast<double>(kept) / static_cast<double>(x.size());
    CHECK(std::abs(fraction - (1 - p)) < 0.01);
  }
}

TEST_CASE("Dropout: backward recomputes forward's mask; steps and indices change it") {
  Dropout<double> drop(0.4);
  drop.initialize(21, 5);
  drop.set_step(3);
  const auto x = random_tensor<double, 2>({8, 16}, 13);
  const auto dy = random_tensor<double, 2>({8, 16}, 14);
  xt::xtensor<double, 2> y, y_again, dx;
  drop.forward(x, y);
  drop.forward(x, y_again);
  CHECK(y == y_again);
  drop.backward(x, y, dy, dx);
  // With the mask held fixed the layer is linear: dx = dy * y / x where kept, 0 where dropped.
  std::size_t dropped = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (y.data()[i] == 0.0) {
      ++dropped;
      CHECK(dx.data()[i] == 0.0);
    } else {
      CHECK(dx.data()[i] == doctest::Approx(dy.data()[i] * y.data()[i] / x.data()[i]).epsilon(1e-12));
      CHECK(dx.data()[i] == doctest::Approx(dy.data()[i] / 0.6).epsilon(1e-12));
    }
  }
  CHECK(dropped > 0);
  CHECK(dropped < x.size());

  auto mask_differs = [&](Dropout<double>& other) {
    xt::xtensor<double, 2> z;
    other.forward(x, z);
    std::size_t differ = 0;
    for (std::size_t i = 0; i < x.size(); ++i) differ += (z.data()[i] == 0.0) != (y.data()[i] == 0.0);
    return differ;
  };
  Dropout<double> same(0.4), next_step(0.4), other_index(0.4);
  same.initialize(21, 5);
  same.set_step(3);
  next_step.initialize(21, 5);
  next_step.set_step(4);
  other_index.initialize(21, 6);
  other_index.set_step(3);
  CHECK(mask_differs(same) == 0);
  CHECK(mask_differs(next_step) > 20);
  CHECK(mask_differs(other_index) > 20);
}

TEST_CASE("Dropout: a sample's mask does not depend on how the batch is split") {
  Dropout<float, 3> drop(0.5);
  drop.initialize(1, 0);
  drop.set_step(9);
  const auto x = random_tensor<float, 3>({4, 3, 5}, 15);
  xt::xtensor<float, 3> y;
  drop.forward(x, y);
  for (std::size_t b = 0; b < 4; ++b) {
    xt::xtensor<float, 3> one(std::array<std::size_t, 3>{1, 3, 5}), out;
    std::copy_n(x.data() + b * 15, 15, one.data());
    drop.forward(one, out);
    for (std::size_t i = 0; i < 15; ++i) CHECK(out.data()[i] == y.data()[b * 15 + i]);
  }
}

TEST_CASE("Dropout: finite-difference gradients where the mask keeps everything") {
  // A mask hashed from x's bits changes when x is perturbed, so a finite
  // difference of a training-mode layer with p > 0 is meaningless; p = 0
  // runs the same masked path with every element kept (and eval mode is
  // checked above). The masked backward is checked exactly in the test above.
  Dropout<double> drop(0.0);
  drop.initialize(2, 2);
  CHECK(gradcheck::check_layer(drop, random_tensor<double, 2>({3, 4}, 16)).max_error < 1e-6);
  CHECK(gradcheck::check_layer(drop, random_tensor<double, 2>({1, 1}, 17)).max_error < 1e-6);
}

TEST_CASE("Flatten: keeps the batch and flattens the rest in row-major order") {
  Flatten<double, 3> flat;
  const xt::xtensor<double, 3> x = {{{1, 2, 3}, {4, 5, 6}}, {{7, 8, 9}, {10, 11, 12}}};
  xt::xtensor<double, 2> y;
  flat.forward(x, y);
  CHECK(y == xt::xtensor<double, 2>{{1, 2, 3, 4, 5, 6}, {7, 8, 9, 10, 11, 12}});
  xt::xtensor<double, 3> dx;
  flat.backward(x, y, y, dx);
  CHECK(dx == x);
  CHECK(flat.describe() == "Flatten");
  CHECK(Flatten<float, 4>::parameter_count() == 0);
  CHECK(Flatten<float, 4>{}.output_shape({8, 16, 5, 5}) == std::vector<std::size_t>{8, 400});
  const auto message = error_of([] { (void)Flatten<float, 4>{}.output_shape({8, 400}); });
  CHECK(message.find("Flatten") == 0);
  CHECK(message.find("(8, 400)") != std::string::npos);
}

TEST_CASE("Flatten: finite-difference gradients") {
  Flatten<double, 3> flat3;
  Flatten<double, 4> flat4;
  CHECK(gradcheck::check_layer(flat3, random_tensor<double, 3>({2, 3, 5}, 18)).max_error < 1e-6);
  CHECK(gradcheck::check_layer(flat4, random_tensor<double, 4>({1, 2, 3, 3}, 19)).max_error < 1e-6);
}

TEST_CASE("Linear: backward_parameters adds the same parameter gradients as backward, without dx") {
  parallax::nn::Linear<double> a(5, 3), b(5, 3);
  a.initialize(4, 0);
  b.initialize(4, 0);
  static_assert(parallax::HasParameterBackward<parallax::nn::Linear<double>>);
  xt::xtensor<double, 2> x({6, 5}), y, dy({6, 3}), dx;
  gradcheck::fill_uniform(x, 1);
  gradcheck::fill_uniform(dy, 2);
  a.forward(x, y);
  for (int i = 0; i < 2; ++i) {  // accumulates like backward
    a.backward(x, y, dy, dx);
    b.backward_parameters(x, y, dy);
  }
  CHECK(std::get<0>(a.gradients()) == std::get<0>(b.gradients()));
  CHECK(std::get<1>(a.gradients()) == std::get<1>(b.gradients()));
  CHECK(xt::amax(xt::abs(std::get<0>(b.gradients())))() > 0);
}

// NaN and infinities go through every layer as they go through PyTorch's
// (torch 1.13, float32 and float64 alike); the expected values are PyTorch's.

TEST_CASE_TEMPLATE("ReLU: NaN and infinities propagate forward and backward as in PyTorch", T, float, double) {
  using nonfinite::inf;
  using nonfinite::nan;
  const auto x = nonfinite::tensor<T, 2>({2, 3}, {-1, 0, 2, nan, inf, -inf});
  xt::xtensor<T, 2> y, dx;
  ReLU<T> relu;
  relu.forward(x, y);
  CHECK(nonfinite::mismatch(y, {0, 0, 2, nan, inf, 0}) == "");  // relu(NaN) = NaN
  // torch.relu's backward passes dy where relu(x) is not <= 0: at NaN too.
  relu.backward(x, y, nonfinite::tensor<T, 2>({2, 3}, {3, 3, 3, 3, 3, 3}), dx);
  CHECK(nonfinite::mismatch(dx, {0, 0, 3, 3, 3, 0}) == "");
  // A NaN dy: NaN wherever PyTorch has it (x = 2, NaN, inf); where the slope
  // is 0 parallax keeps 0 * NaN = NaN too (PyTorch writes 0 there), so an
  // upstream NaN is never dropped.
  relu.backward(x, y, nonfinite::tensor<T, 2>({2, 3}, {nan, nan, nan, nan, nan, nan}), dx);
  CHECK(nonfinite::mismatch(dx, {nan, nan, nan, nan, nan, nan}) == "");
}

TEST_CASE_TEMPLATE("Tanh and Sigmoid: NaN and infinities propagate forward and backward as in PyTorch", T, float,
                   double) {
  using nonfinite::inf;
  using nonfinite::nan;
  const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-14;
  const auto x = nonfinite::tensor<T, 2>({2, 3}, {-1, 0, 2, nan, inf, -inf});
  const auto three = nonfinite::tensor<T, 2>({2, 3}, {3, 3, 3, 3, 3, 3});
  const auto nans = nonfinite::tensor<T, 2>({2, 3}, {nan, nan, nan, nan, nan, nan});
  xt::xtensor<T, 2> y, dx;
  Tanh<T> th;
  th.forward(x, y);
  CHECK(nonfinite::mismatch(y, {-0.7615941559557649, 0, 0.9640275800758169, nan, 1, -1}, tol) == "");
  th.backward(x, y, three, dx);
  CHECK(nonfinite::mismatch(dx, {1.2599230248420783, 3, 0.2119524745594933, nan, 0, 0}, tol) == "");
  th.backward(x, y, nans, dx);
  CHECK(nonfinite::mismatch(dx, {nan, nan, nan, nan, nan, nan}) == "");
  Sigmoid<T> sg;
  sg.forward(x, y);
  CHECK(nonfinite::mismatch(y, {0.2689414213699951, 0.5, 0.8807970779778823, nan, 1, 0}, tol) == "");
  sg.backward(x, y, three, dx);
  CHECK(nonfinite::mismatch(dx, {0.5898357997244456, 0.75, 0.31498075621051985, nan, 0, 0}, tol) == "");
  sg.backward(x, y, nans, dx);
  CHECK(nonfinite::mismatch(dx, {nan, nan, nan, nan, nan, nan}) == "");
}

TEST_CASE_TEMPLATE("Dropout: a dropped NaN or infinity gives NaN, as x * mask / (1 - p) does in PyTorch", T, float,
                   double) {
  using nonfinite::inf;
  using nonfinite::nan;
  Dropout<T> drop(0.5);
  drop.initialize(5, 1);
  drop.set_step(2);
  // Two samples of 32 elements, (NaN, inf, -inf, -2) repeated: each value
  // stands at 8 positions of a sample, kept at some and dropped at others
  // (checked below, so the test cannot pass vacuously).
  xt::xtensor<T, 2> x(std::array<std::size_t, 2>{2, 32});
  const std::array<double, 4> pattern{nan, inf, -inf, -2};
  for (std::size_t i = 0; i < x.size(); ++i) x.data()[i] = static_cast<T>(pattern[i % 4]);
  std::vector<double> mask(x.size());
  std::array<std::size_t, 4> kept{}, dropped{};
  for (std::size_t i = 0; i < x.size(); ++i) {
    const bool keep = drop.kept(x.data()[i], i % 32);
    mask[i] = keep ? 1.0 : 0.0;
    ++(keep ? kept : dropped)[i % 4];
  }
  for (std::size_t k = 0; k < 4; ++k) {
    CHECK(kept[k] > 0);
    CHECK(dropped[k] > 0);
  }
  // PyTorch: y = x * mask * 1 / (1 - p), so NaN * 0 and inf * 0 are NaN.
  auto times_mask = [&](const xt::xtensor<T, 2>& v) {
    std::vector<double> out(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) out[i] = static_cast<double>(v.data()[i]) * mask[i] * 2.0;
    return out;
  };
  xt::xtensor<T, 2> y, dx;
  drop.forward(x, y);
  CHECK(nonfinite::mismatch(y, times_mask(x)) == "");
  // dx = dy * mask / (1 - p): a NaN dy stays NaN where dropped, and a finite
  // dy at a NaN x is scaled or 0 like any other.
  xt::xtensor<T, 2> dy(x.shape());
  std::fill_n(dy.data(), dy.size(), static_cast<T>(nan));
  drop.backward(x, y, dy, dx);
  CHECK(nonfinite::mismatch(dx, times_mask(dy)) == "");
  std::fill_n(dy.data(), dy.size(), T(3));
  drop.backward(x, y, dy, dx);
  CHECK(nonfinite::mismatch(dx, times_mask(dy)) == "");
}

TEST_CASE_TEMPLATE("Flatten: NaN and infinities are copied forward and backward", T, float, double) {
  using nonfinite::inf;
  using nonfinite::nan;
  Flatten<T, 3> flat;
  const auto x = nonfinite::tensor<T, 3>({1, 2, 2}, {nan, 1, -inf, 2});
  xt::xtensor<T, 2> y;
  xt::xtensor<T, 3> dx;
  flat.forward(x, y);
  CHECK(nonfinite::mismatch(y, {nan, 1, -inf, 2}) == "");
  flat.backward(x, y, nonfinite::tensor<T, 2>({1, 4}, {inf, nan, 2, 3}), dx);
  CHECK(nonfinite::mismatch(dx, {inf, nan, 2, 3}) == "");
}

TEST_CASE_TEMPLATE("Linear: a NaN in x, the weight or dy reaches what PyTorch's F.linear reaches", T, float, double) {
  using nonfinite::nan;
  // W [in = 2, out = 3] = {{1, 2, 3}, {4, 5, 6}}, b = {0.5, -1, 2}; values
  // from torch.nn.functional.linear with the weight transposed to [out, in].
  auto layer = [](double w12) {
    Linear<T> fc(2, 3);
    fc.weight() = nonfinite::tensor<T, 2>({2, 3}, {1, 2, 3, 4, 5, w12});
    fc.bias() = nonfinite::tensor<T, 1>({3}, {0.5, -1, 2});
    return fc;
  };
  const auto ones = nonfinite::tensor<T, 2>({2, 3}, {1, 1, 1, 1, 1, 1});
  xt::xtensor<T, 2> y, dx;
  {
    INFO("a NaN input");
    auto fc = layer(6);
    const auto x = nonfinite::tensor<T, 2>({2, 2}, {nan, 1, 2, -1});
    fc.forward(x, y);
    CHECK(nonfinite::mismatch(y, {nan, nan, nan, -1.5, -2, 2}) == "");
    fc.backward(x, y, ones, dx);
    CHECK(nonfinite::mismatch(dx, {6, 15, 6, 15}) == "");
    CHECK(nonfinite::mismatch(std::get<0>(fc.gradients()), {nan, nan, nan, 0, 0, 0}) == "");
    CHECK(nonfinite::mismatch(std::get<1>(fc.gradients()), {2, 2, 2}) == "");
  }
  {
    INFO("a NaN weight");
    auto fc = layer(nan);
    const auto x = nonfinite::tensor<T, 2>({2, 2}, {1, 1, 2, -1});
    fc.forward(x, y);
    CHECK(nonfinite::mismatch(y, {5.5, 6, nan, -1.5, -2, nan}) == "");
    fc.backward(x, y, ones, dx);
    CHECK(nonfinite::mismatch(dx, {6, nan, 6, nan}) == "");
    CHECK(nonfinite::mismatch(std::get<0>(fc.gradients()), {3, 3, 3, 0, 0, 0}) == "");
    CHECK(nonfinite::mismatch(std::get<1>(fc.gradients()), {2, 2, 2}) == "");
  }
  {
    INFO("a NaN dy, through backward and backward_parameters");
    auto fc = layer(6), first = layer(6);
    const auto x = nonfinite::tensor<T, 2>({2, 2}, {1, 1, 2, -1});
    const auto dy = nonfinite::tensor<T, 2>({2, 3}, {nan, 0, 0, 0, 0, 0});
    fc.forward(x, y);
    fc.backward(x, y, dy, dx);
    first.backward_parameters(x, y, dy);
    CHECK(nonfinite::mismatch(dx, {nan, nan, 0, 0}) == "");
    for (const auto* l : {&fc, &first}) {
      CHECK(nonfinite::mismatch(std::get<0>(l->gradients()), {nan, 0, 0, nan, 0, 0}) == "");
      CHECK(nonfinite::mismatch(std::get<1>(l->gradients()), {nan, 0, 0}) == "");
    }
  }
}
