// SPDX-License-Identifier: BSL-1.0
// Suite nn: Residual<Layers...> (y = x + f(x)) — hand-computed values,
// finite differences (rank 2 and 3, nested), inside Sequential, its
// initialisation, NaN propagation and shape errors.

#include <parallax/nn/activation.hpp>
#include <parallax/nn/layer_norm.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/loss.hpp>
#include <parallax/nn/residual.hpp>
#include <parallax/nn/sequential.hpp>

#include "error_of.hpp"
#include "gradcheck.hpp"
#include "test_nn_nonfinite.hpp"

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

using parallax::nn::GELU;
using parallax::nn::LayerNorm;
using parallax::nn::Linear;
using parallax::nn::Residual;
using parallax::nn::Tanh;

using gradcheck::random_tensor;

static_assert(parallax::Layer<Residual<Linear<float>>>);
static_assert(parallax::Layer<Residual<Linear<double>, Tanh<double>, Linear<double>>>);
static_assert(parallax::HasLayerParameters<Residual<Linear<float>, Tanh<float>>>);
static_assert(parallax::Layer<Residual<Residual<Linear<double>>, Tanh<double>>>);
static_assert(!parallax::HasLayerParameters<Residual<Tanh<float>>>);
// One Residual argument nests it (the deduction guide), a copy stays a copy.
static_assert(std::is_same_v<decltype(Residual{Residual{Linear<float>(4, 4)}}), Residual<Residual<Linear<float>>>>);
static_assert(std::is_same_v<decltype(Residual{Residual{Linear<float>(4, 4)}, Tanh<float>{}}),
                             Residual<Residual<Linear<float>>, Tanh<float>>>);

}  // namespace

TEST_CASE("Residual: y = x + f(x) and dx = dy + dy W^T for a Linear body, computed by hand") {
  Residual res{Linear<double>(2, 2)};
  res.layer<0>().weight() = xt::xtensor<double, 2>{{1, 2}, {3, 4}};
  res.layer<0>().bias() = xt::xtensor<double, 1>{0.5, -1};
  const xt::xtensor<double, 2> x = {{1, -1}};
  xt::xtensor<double, 2> y, dx;
  res.forward(x, y);
  // f(x) = (1 - 3 + 0.5, 2 - 4 - 1) = (-1.5, -3).
  CHECK(nonfinite::mismatch(y, {-0.5, -4}) == "");
  const xt::xtensor<double, 2> dy = {{1, 2}};
  res.backward(x, y, dy, dx);
  // dy W^T = (1 + 4, 3 + 8) = (5, 11), plus dy through the skip.
  CHECK(nonfinite::mismatch(dx, {6, 13}) == "");
  CHECK(nonfinite::mismatch(std::get<0>(res.gradients()), {1, 2, -1, -2}) == "");  // x^T dy
  CHECK(nonfinite::mismatch(std::get<1>(res.gradients()), {1, 2}) == "");
  CHECK(res.describe() == "Residual(Linear(2 -> 2))");
}

TEST_CASE("Residual: finite-difference gradients of deeper, rank-3 and nested bodies") {
  Residual deep{Linear<double>(4, 6), Tanh<double>{}, Linear<double>(6, 4)};
  deep.initialize(3, 1);
  const auto r1 = gradcheck::check_layer(deep, random_tensor<double, 2>({3, 4}, 1, 2.0));
  CHECK_MESSAGE(r1.max_error < 1e-6, r1.where);
  Residual block{LayerNorm<double, 3>(4), Linear<double, 3>(4, 8), GELU<double, 3>{}, Linear<double, 3>(8, 4)};
  block.initialize(5, 2);
  gradcheck::fill_uniform(block.layer<0>().gain(), 6, 0.5, 1.5);
  const auto r2 = gradcheck::check_layer(block, random_tensor<double, 3>({2, 3, 4}, 2, 2.0));
  CHECK_MESSAGE(r2.max_error < 1e-6, r2.where);
  Residual nested{Residual{Linear<double>(3, 3), Tanh<double>{}}, Linear<double>(3, 3)};
  nested.initialize(7, 0);
  const auto r3 = gradcheck::check_layer(nested, random_tensor<double, 2>({2, 3}, 3, 2.0));
  CHECK_MESSAGE(r3.max_error < 1e-6, r3.where);
  Residual twice{Residual{Linear<double>(3, 3)}};  // y = x + (x + f(x))
  CHECK(twice.describe() == "Residual(Residual(Linear(3 -> 3)))");
  twice.initialize(8, 0);
  const auto r4 = gradcheck::check_layer(twice, random_tensor<double, 2>({2, 3}, 4, 2.0));
  CHECK_MESSAGE(r4.max_error < 1e-6, r4.where);
  auto copy = twice;  // copies stay copies
  CHECK(copy.describe() == twice.describe());
}

TEST_CASE("Residual: backward adds into the gradients, so micro-batches accumulate, and leaves no state behind") {
  Residual res{Linear<double>(3, 3), Tanh<double>{}};
  res.initialize(1, 0);
  const auto a = random_tensor<double, 2>({2, 3}, 4), b = random_tensor<double, 2>({2, 3}, 5);
  const auto da = random_tensor<double, 2>({2, 3}, 6), db = random_tensor<double, 2>({2, 3}, 7);
  xt::xtensor<double, 2> ya, yb, dxa, dxb, dxa_alone;
  // Both forwards first, then both backwards (two micro-batches in flight).
  res.forward(a, ya);
  res.forward(b, yb);
  res.backward(b, yb, db, dxb);
  res.backward(a, ya, da, dxa);
  const xt::xtensor<double, 2> both = std::get<0>(res.gradients());
  Residual alone{Linear<double>(3, 3), Tanh<double>{}};
  alone.initialize(1, 0);
  xt::xtensor<double, 2> y;
  alone.forward(a, y);
  alone.backward(a, y, da, dxa_alone);
  CHECK(dxa == dxa_alone);  // b's forward in between changed nothing a's backward sees
  alone.forward(b, y);
  alone.backward(b, y, db, dxb);
  CHECK(xt::allclose(both, std::get<0>(alone.gradients()), 0.0, 1e-15));
}

TEST_CASE("Residual: inside Sequential, the chain trains against finite differences of its loss") {
  using parallax::nn::MeanSquaredError;
  using parallax::nn::Sequential;
  Sequential net{Residual{Linear<double>(3, 5), Tanh<double>{}, Linear<double>(5, 3)}, Linear<double>(3, 2),
                 MeanSquaredError<double>{}};
  static_assert(parallax::Model<decltype(net)>);
  net.initialize(11);
  CHECK(net.describe() == "Sequential(Residual(Linear(3 -> 5), Tanh, Linear(5 -> 3)), Linear(3 -> 2); MeanSquaredError)");
  CHECK(net.parameter_count() == (3 * 5 + 5) + (5 * 3 + 3) + (3 * 2 + 2));
  decltype(net)::batch_type batch{random_tensor<double, 2>({4, 3}, 8), random_tensor<double, 2>({4, 2}, 9)};
  const double mean = net.loss_and_gradient(batch);
  CHECK(mean == net.loss(batch));
  const auto r = gradcheck::check_model(net, batch);
  CHECK_MESSAGE(r.max_error < 1e-7, r.where);
}

TEST_CASE("Residual: the body is initialised from (seed, index), apart from other layers and other Residuals") {
  Residual a{Linear<float>(4, 4)}, b{Linear<float>(4, 4)}, c{Linear<float>(4, 4)};
  Linear<float> plain(4, 4);
  a.initialize(9, 2);
  b.initialize(9, 2);
  c.initialize(9, 3);
  plain.initialize(9, 2);
  CHECK(a.layer<0>().weight() == b.layer<0>().weight());
  CHECK(a.layer<0>().weight() != c.layer<0>().weight());
  CHECK(a.layer<0>().weight() != plain.weight());  // not the weights of the layer it stands in for
}

TEST_CASE_TEMPLATE("Residual: a NaN in x reaches its row through both paths, and no other row", T, float, double) {
  Residual res{Linear<T>(2, 2)};
  res.initialize(1, 0);
  const auto x = nonfinite::tensor<T, 2>({2, 2}, {nonfinite::nan, 1, 0.5, -0.5});
  xt::xtensor<T, 2> y, dx;
  res.forward(x, y);
  for (std::size_t row = 0; row < 2; ++row)
    for (std::size_t j = 0; j < 2; ++j) CHECK(std::isnan(y(row, j)) == (row == 0));
  const auto dy = nonfinite::tensor<T, 2>({2, 2}, {1, 1, nonfinite::nan, 1});
  res.backward(x, y, dy, dx);
  CHECK(std::isfinite(dx(0, 0)));  // a NaN in x does not reach dx (dy W^T + dy)
  CHECK(std::isnan(dx(1, 0)));
  CHECK(std::isnan(dx(1, 1)));
}

TEST_CASE("Residual: a body that changes the shape is an error naming the Residual and both shapes") {
  Residual res{Linear<double>(4, 3)};
  const xt::xtensor<double, 2> x = xt::zeros<double>({2, 4});
  xt::xtensor<double, 2> y;
  const std::string expected = "Residual(Linear(4 -> 3)): its body maps (2, 4) to (2, 3); x + f(x) needs the same shape";
  CHECK(error_of([&] { (void)res.output_shape({2, 4}); }).find(expected) == 0);
  CHECK(error_of([&] { res.forward(x, y); }).find(expected) == 0);
  Residual fits{Linear<double>(4, 4)};
  CHECK(error_of([&] { (void)fits.output_shape({2, 5}); })
            .find("Residual: layer 0 Linear(4 -> 4) cannot take the input, of shape (2, 5)") == 0);
}

namespace {

/// y = 2 x, counting its forwards; `Reads` says whether backward reads y.
template <bool Reads>
struct Doubling {
  using input_type = xt::xtensor<double, 2>;
  using output_type = xt::xtensor<double, 2>;
  static constexpr bool backward_reads_output = Reads;
  int* forwards = nullptr;
  void initialize(std::uint64_t, std::size_t) {}
  void forward(const input_type& x, output_type& y) {
    ++*forwards;
    y = 2.0 * x;
  }
  void backward(const input_type&, const output_type&, const output_type& dy, input_type& dx) { dx = 2.0 * dy; }
};

static_assert(parallax::BackwardIgnoresOutput<Doubling<false>>);
static_assert(!parallax::BackwardIgnoresOutput<Doubling<true>>);
static_assert(!parallax::BackwardIgnoresOutput<Tanh<double>>);
static_assert(parallax::BackwardIgnoresOutput<Linear<float>>);
static_assert(parallax::BackwardIgnoresOutput<LayerNorm<double, 3>>);
static_assert(parallax::BackwardIgnoresOutput<Residual<Linear<float>>>);

}  // namespace

TEST_CASE("Residual: backward skips the forward of a last layer whose backward does not read its output") {
  int skipped = 0, kept = 0;
  Residual a{Linear<double>(3, 3), Doubling<false>{&skipped}};
  Residual b{Linear<double>(3, 3), Doubling<true>{&kept}};
  a.initialize(4, 0);
  b.initialize(4, 0);
  const auto x = random_tensor<double, 2>({2, 3}, 5);
  const auto other = random_tensor<double, 2>({2, 3}, 7);
  const auto dy = random_tensor<double, 2>({2, 3}, 6);
  xt::xtensor<double, 2> ya, yb, dxa, dxb, scratch;
  a.forward(x, ya);
  b.forward(x, yb);
  // Another micro-batch in flight: backward on x must recompute.
  a.forward(other, scratch);
  b.forward(other, scratch);
  CHECK(skipped == 2);
  CHECK(kept == 2);
  a.backward(x, ya, dy, dxa);
  b.backward(x, yb, dy, dxb);
  CHECK(skipped == 2);  // the recomputation left the last layer out
  CHECK(kept == 3);
  CHECK(ya == yb);
  CHECK(dxa == dxb);  // the same bits either way
  CHECK(std::get<0>(a.gradients()) == std::get<0>(b.gradients()));
}

TEST_CASE("Residual: backward right after a forward on the same x reuses its activations, with the same bits") {
  // Three copies of one Residual: `reuse` runs forward then backward; `again`
  // has another forward in between, so it recomputes; `fresh` is checked
  // after each kind of interruption.
  int reuse_forwards = 0, again_forwards = 0;
  Residual reuse{Linear<double>(3, 3), Tanh<double>{}, Doubling<true>{&reuse_forwards}};
  Residual again{Linear<double>(3, 3), Tanh<double>{}, Doubling<true>{&again_forwards}};
  reuse.initialize(4, 0);
  again.initialize(4, 0);
  const auto x = random_tensor<double, 2>({2, 3}, 5);
  const auto other = random_tensor<double, 2>({2, 3}, 7);
  const auto dy = random_tensor<double, 2>({2, 3}, 6);
  xt::xtensor<double, 2> y1, y2, dx1, dx2, scratch;
  reuse.forward(x, y1);
  reuse.backward(x, y1, dy, dx1);
  CHECK(reuse_forwards == 1);  // no forward in backward
  again.forward(x, y2);
  again.forward(other, scratch);
  again.backward(x, y2, dy, dx2);
  CHECK(again_forwards == 3);
  CHECK(y1 == y2);
  CHECK(dx1 == dx2);
  CHECK(std::get<0>(reuse.gradients()) == std::get<0>(again.gradients()));
  CHECK(std::get<1>(reuse.gradients()) == std::get<1>(again.gradients()));

  SUBCASE("a second backward recomputes: the first may have overwritten the activations") {
    reuse.backward(x, y1, dy, dx1);
    CHECK(reuse_forwards == 2);
  }
  SUBCASE("an input changed in place since the forward is recomputed") {
    auto changed = x;
    reuse.forward(changed, y1);
    changed(1, 2) = std::nextafter(changed(1, 2), 1.0);  // one bit
    reuse.backward(changed, y1, dy, dx1);
    CHECK(reuse_forwards == 3);
    Residual fresh{Linear<double>(3, 3), Tanh<double>{}, Doubling<true>{&again_forwards}};
    fresh.initialize(4, 0);
    xt::xtensor<double, 2> y3, dx3;
    fresh.forward(changed, y3);
    fresh.backward(changed, y3, dy, dx3);
    CHECK(dx1 == dx3);
  }
  SUBCASE("an input of another shape is recomputed") {
    reuse.forward(x, y1);
    const auto wide = random_tensor<double, 2>({3, 3}, 8);
    reuse.backward(wide, scratch, random_tensor<double, 2>({3, 3}, 9), dx1);
    CHECK(reuse_forwards == 3);
  }
  SUBCASE("an eval-mode forward keeps nothing") {
    reuse.set_training(false);
    reuse.forward(x, y1);
    reuse.backward(x, y1, dy, dx1);
    CHECK(reuse_forwards == 3);
  }
  SUBCASE("a failed forward keeps nothing of an earlier one") {
    reuse.forward(x, y1);
    CHECK_THROWS_AS(reuse.forward(xt::xtensor<double, 2>(xt::zeros<double>({2, 4})), scratch), parallax::error);
    reuse.backward(x, y1, dy, dx1);
    CHECK(reuse_forwards == 3);
  }
}
