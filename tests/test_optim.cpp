// SPDX-License-Identifier: BSL-1.0
// Suite optim: SGD, Adam and AdamW against steps worked out by hand, their
// checks, state round trips and clones; gradient clipping; learning-rate
// schedules. No MPI.

#include <parallax/optim/adam.hpp>
#include <parallax/optim/clip.hpp>
#include <parallax/optim/optimizer.hpp>
#include <parallax/optim/schedule.hpp>
#include <parallax/optim/sgd.hpp>

#include <parallax/core/error.hpp>

#include "toy_optimizer.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <limits>
#include <memory>
#include <numbers>
#include <span>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <vector>

namespace {

using namespace parallax::optim;

template <class T>
using tensors = std::vector<std::vector<T>>;

/// Tensors of element type T from double literals.
template <class T>
tensors<T> make(std::initializer_list<std::initializer_list<double>> values) {
  tensors<T> out;
  for (const auto& tensor : values) {
    std::vector<T> flat;
    for (double x : tensor) flat.push_back(static_cast<T>(x));
    out.push_back(flat);
  }
  return out;
}

template <class T>
std::vector<std::span<T>> views(tensors<T>& t) {
  std::vector<std::span<T>> out;
  for (auto& x : t) out.emplace_back(x);
  return out;
}

template <class T>
std::vector<std::span<const T>> cviews(const tensors<T>& t) {
  std::vector<std::span<const T>> out;
  for (const auto& x : t) out.emplace_back(x);
  return out;
}

template <class T>
void step(Optimizer<T>& opt, tensors<T>& params, const tensors<T>& grads) {
  opt.step(views(params), cviews(grads));
}

/// Relative tolerance for comparing with values worked out in double: a few
/// roundings of T.
template <class T>
double tolerance() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-12;
}

template <class T>
void check_values(const tensors<T>& got, std::initializer_list<std::initializer_list<double>> want) {
  REQUIRE(got.size() == want.size());
  std::size_t k = 0;
  for (const auto& tensor : want) {
    REQUIRE(got[k].size() == tensor.size());
    std::size_t i = 0;
    for (double x : tensor) {
      INFO("tensor " << k << ", element " << i);
      CHECK(static_cast<double>(got[k][i]) == doctest::Approx(x).epsilon(tolerance<T>()));
      ++i;
    }
    ++k;
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// SGD
// ---------------------------------------------------------------------------

TEST_CASE_TEMPLATE("SGD: plain step matches a hand-computed step", T, float, double) {
  SGD<T> sgd(sgd_options{.lr = 0.1});
  auto p = make<T>({{1, 2, 3}});
  step(sgd, p, make<T>({{0.5, -1, 2}}));
  // p - 0.1 g = {1 - 0.05, 2 + 0.1, 3 - 0.2}
  check_values(p, {{0.95, 2.1, 2.8}});
  step(sgd, p, make<T>({{1, 1, 1}}));
  check_values(p, {{0.85, 2.0, 2.7}});
  CHECK(sgd.steps() == 2);
  CHECK(sgd.state().slots.empty());  // no momentum, no state
}

TEST_CASE_TEMPLATE("SGD: momentum matches a hand-computed step", T, float, double) {
  SGD<T> sgd(sgd_options{.lr = 0.1, .momentum = 0.9});
  auto p = make<T>({{1, -1}});
  // step 1: the buffer starts at the gradient: b = {1, 0.5};
  //   p = {1 - 0.1, -1 - 0.05} = {0.9, -1.05}
  step(sgd, p, make<T>({{1, 0.5}}));
  check_values(p, {{0.9, -1.05}});
  // step 2: b = 0.9 b + g = {0.9 + 2, 0.45 + 0.5} = {2.9, 0.95};
  //   p = {0.9 - 0.29, -1.05 - 0.095} = {0.61, -1.145}
  step(sgd, p, make<T>({{2, 0.5}}));
  check_values(p, {{0.61, -1.145}});
  // step 3: b = {2.61 - 1, 0.855 + 0.5} = {1.61, 1.355};
  //   p = {0.61 - 0.161, -1.145 - 0.1355} = {0.449, -1.2805}
  step(sgd, p, make<T>({{-1, 0.5}}));
  check_values(p, {{0.449, -1.2805}});
  const auto s = sgd.state();
  REQUIRE(s.slots.size() == 1);
  check_values(s.slots[0], {{1.61, 1.355}});
}

TEST_CASE_TEMPLATE("SGD: dampening matches a hand-computed step", T, float, double) {
  SGD<T> sgd(sgd_options{.lr = 0.1, .momentum = 0.9, .dampening = 0.5});
  auto p = make<T>({{1}});
  // step 1: the buffer starts at the undampened gradient: b = 1; p = 0.9
  step(sgd, p, make<T>({{1}}));
  check_values(p, {{0.9}});
  // step 2: b = 0.9 * 1 + 0.5 * 2 = 1.9; p = 0.9 - 0.19 = 0.71
  step(sgd, p, make<T>({{2}}));
  check_values(p, {{0.71}});
  // step 3: b = 0.9 * 1.9 + 0.5 * (-1) = 1.21; p = 0.71 - 0.121 = 0.589
  step(sgd, p, make<T>({{-1}}));
  check_values(p, {{0.589}});
}

TEST_CASE_TEMPLATE("SGD: nesterov matches a hand-computed step", T, float, double) {
  SGD<T> sgd(sgd_options{.lr = 0.1, .momentum = 0.9, .nesterov = true});
  auto p = make<T>({{1, 0}});
  // step 1: b = g = {1, -2}; d = g + 0.9 b = {1.9, -3.8};
  //   p = {1 - 0.19, 0 + 0.38} = {0.81, 0.38}
  step(sgd, p, make<T>({{1, -2}}));
  check_values(p, {{0.81, 0.38}});
  // step 2: b = 0.9 b + g = {0.9 + 2, -1.8 + 0} = {2.9, -1.8};
  //   d = g + 0.9 b = {2 + 2.61, 0 - 1.62} = {4.61, -1.62};
  //   p = {0.81 - 0.461, 0.38 + 0.162} = {0.349, 0.542}
  step(sgd, p, make<T>({{2, 0}}));
  check_values(p, {{0.349, 0.542}});
}

TEST_CASE_TEMPLATE("SGD: weight decay matches a hand-computed step", T, float, double) {
  {
    SGD<T> sgd(sgd_options{.lr = 0.1, .weight_decay = 0.1});
    auto p = make<T>({{2}});
    // step 1: d = 1 + 0.1 * 2 = 1.2; p = 2 - 0.12 = 1.88
    step(sgd, p, make<T>({{1}}));
    check_values(p, {{1.88}});
    // step 2: d = 1 + 0.188 = 1.188; p = 1.88 - 0.1188 = 1.7612
    step(sgd, p, make<T>({{1}}));
    check_values(p, {{1.7612}});
  }
  {
    SGD<T> sgd(sgd_options{.lr = 0.1, .momentum = 0.5, .weight_decay = 0.1});
    auto p = make<T>({{2}});
    // step 1: d = 1.2; b = 1.2; p = 1.88
    step(sgd, p, make<T>({{1}}));
    check_values(p, {{1.88}});
    // step 2: d = 1.188; b = 0.5 * 1.2 + 1.188 = 1.788; p = 1.88 - 0.1788 = 1.7012
    step(sgd, p, make<T>({{1}}));
    check_values(p, {{1.7012}});
    check_values(sgd.state().slots[0], {{1.788}});
  }
}

TEST_CASE_TEMPLATE("SGD: several tensors of different sizes in one step", T, float, double) {
  SGD<T> sgd(sgd_options{.lr = 0.1, .momentum = 0.5});
  auto p = make<T>({{1}, {1, 2, 3}, {-1, 4}});
  const auto g = make<T>({{2}, {1, 0, -1}, {0.5, -2}});
  // step 1: b = g; p -= 0.1 g
  step(sgd, p, g);
  check_values(p, {{0.8}, {0.9, 2, 3.1}, {-1.05, 4.2}});
  // step 2: b = 0.5 g + g = 1.5 g; p -= 0.15 g
  step(sgd, p, g);
  check_values(p, {{0.5}, {0.75, 2, 3.25}, {-1.125, 4.5}});
  const auto s = sgd.state();
  REQUIRE(s.slots.size() == 1);
  check_values(s.slots[0], {{3}, {1.5, 0, -1.5}, {0.75, -3}});
}

TEST_CASE_TEMPLATE("an optimizer with an option out of range throws at validate() and step(), not when built", T,
                   float, double) {
  using parallax::error;
  std::unique_ptr<Optimizer<T>> bad;
  SUBCASE("SGD") {
    CHECK_NOTHROW(bad = std::make_unique<SGD<T>>(sgd_options{.lr = -1}));
  }
  SUBCASE("Adam") {
    CHECK_NOTHROW(bad = std::make_unique<Adam<T>>(adam_options{.eps = 0}));
  }
  REQUIRE(bad);
  tensors<T> p = {{1, 2}};
  const tensors<T> g = {{0.5, 0.5}};
  CHECK_THROWS_AS(bad->validate(), error);
  CHECK_THROWS_AS(step(*bad, p, g), error);
  check_values(p, {{1, 2}});  // the failed step changed nothing
  CHECK(bad->steps() == 0);
  CHECK_THROWS_AS(bad->clone()->validate(), error);  // a copy is as invalid
  CHECK_NOTHROW(SGD<T>(sgd_options{.lr = 0.1}).validate());
}

TEST_CASE_TEMPLATE("SGD: option validation names the class, the option and the value", T, float, double) {
  using parallax::error;
  CHECK_THROWS_WITH_AS(SGD<T>(sgd_options{.lr = -1}).validate(), "SGD::SGD(): lr = -1 must be finite and >= 0", error);
  CHECK_THROWS_WITH_AS(SGD<T>(sgd_options{.lr = std::numeric_limits<double>::quiet_NaN()}).validate(),
                       "SGD::SGD(): lr = nan must be finite and >= 0", error);
  CHECK_THROWS_WITH_AS(SGD<T>(sgd_options{.momentum = 1}).validate(), "SGD::SGD(): momentum = 1 is outside [0, 1)", error);
  CHECK_THROWS_WITH_AS(SGD<T>(sgd_options{.momentum = -0.5}).validate(), "SGD::SGD(): momentum = -0.5 is outside [0, 1)",
                       error);
  CHECK_THROWS_WITH_AS(SGD<T>(sgd_options{.momentum = 0.9, .dampening = 1.5}).validate(),
                       "SGD::SGD(): dampening = 1.5 is outside [0, 1]", error);
  CHECK_THROWS_WITH_AS(SGD<T>(sgd_options{.nesterov = true}).validate(),
                       "SGD::SGD(): nesterov = true needs momentum > 0 and dampening = 0, got momentum = 0, "
                       "dampening = 0",
                       error);
  CHECK_THROWS_WITH_AS(SGD<T>(sgd_options{.momentum = 0.9, .dampening = 0.1, .nesterov = true}).validate(),
                       "SGD::SGD(): nesterov = true needs momentum > 0 and dampening = 0, got momentum = 0.9, "
                       "dampening = 0.1",
                       error);
  CHECK_THROWS_WITH_AS(SGD<T>(sgd_options{.weight_decay = -0.01}).validate(),
                       "SGD::SGD(): weight_decay = -0.01 must be finite and >= 0", error);
  // The edges of the ranges are accepted.
  CHECK_NOTHROW(SGD<T>(sgd_options{.lr = 0, .momentum = 0, .dampening = 1}));
  CHECK_NOTHROW(SGD<T>(sgd_options{.momentum = 0.99, .nesterov = true}));
  CHECK(SGD<T>().learning_rate() == 0.01);
}

// ---------------------------------------------------------------------------
// Adam and AdamW
// ---------------------------------------------------------------------------

TEST_CASE_TEMPLATE("Adam: bias correction at steps 1 and 2 matches a hand-computed step", T, float, double) {
  // Round numbers: beta1 = 0.5, beta2 = 0.75, and an eps large enough that
  // adding it before or after the bias correction would differ.
  Adam<T> adam(adam_options{.lr = 0.1, .beta1 = 0.5, .beta2 = 0.75, .eps = 0.5});
  auto p = make<T>({{1, -2}, {0.5}});
  // Step 1: 1 - beta1 = 0.5, 1 - beta2 = 0.25.
  //   element (0,0), g = 2:  m = 1,    v = 1,    m^ = 2,  v^ = 4, denom = 2 + 0.5;
  //                          p = 1 - 0.1 * 2 / 2.5 = 0.92
  //   element (0,1), g = -1: m = -0.5, v = 0.25, m^ = -1, v^ = 1, denom = 1.5;
  //                          p = -2 + 0.1 / 1.5 = -1.9333...
  //   element (1,0), g = 0:  m = v = 0: no move
  step(adam, p, make<T>({{2, -1}, {0}}));
  check_values(p, {{0.92, -2 + 0.1 / 1.5}, {0.5}});
  // Step 2: 1 - beta1^2 = 0.75, 1 - beta2^2 = 0.4375.
  //   (0,0), g = -2: m = 0.5 - 1 = -0.5, v = 0.75 + 1 = 1.75,
  //                  m^ = -2/3, v^ = 1.75 / 0.4375 = 4, denom = 2.5; p = 0.92 + 0.1 * (2/3) / 2.5
  //   (0,1), g = 3:  m = -0.25 + 1.5 = 1.25, v = 0.1875 + 2.25 = 2.4375,
  //                  m^ = 1.25 / 0.75, v^ = 2.4375 / 0.4375
  //   (1,0), g = 1:  m = 0.5, v = 0.25, m^ = 0.5 / 0.75, v^ = 0.25 / 0.4375 = 4/7
  step(adam, p, make<T>({{-2, 3}, {1}}));
  const double p00 = 0.92 + 0.1 * (2.0 / 3.0) / 2.5;
  const double p01 = -2 + 0.1 / 1.5 - 0.1 * (1.25 / 0.75) / (std::sqrt(2.4375 / 0.4375) + 0.5);
  const double p10 = 0.5 - 0.1 * (0.5 / 0.75) / (std::sqrt(4.0 / 7.0) + 0.5);
  CHECK(p00 == doctest::Approx(0.946666666666667));
  check_values(p, {{p00, p01}, {p10}});
  const auto s = adam.state();
  REQUIRE(s.slots.size() == 2);
  check_values(s.slots[0], {{-0.5, 1.25}, {0.5}});
  check_values(s.slots[1], {{1.75, 2.4375}, {0.25}});
}

TEST_CASE_TEMPLATE("Adam: default options, the first step moves each parameter by about lr", T, float, double) {
  Adam<T> adam;
  auto p = make<T>({{1, -1}});
  // g = {0.5, -4}: m = 0.1 g, v = 0.001 g^2; bias-corrected m^ = g, v^ = g^2, so
  // the step is lr * g / (|g| + 1e-8). Without the correction it would be
  // lr * 0.1 g / (sqrt(0.001) |g|), about 3.2 lr.
  step(adam, p, make<T>({{0.5, -4}}));
  check_values(p, {{1 - 1e-3 * 0.5 / (0.5 + 1e-8), -1 + 1e-3 * 4 / (4 + 1e-8)}});
  CHECK(adam.learning_rate() == 1e-3);
}

TEST_CASE_TEMPLATE("Adam: L2 weight decay is added to the gradient", T, float, double) {
  Adam<T> adam(adam_options{.lr = 0.1, .beta1 = 0.5, .beta2 = 0.75, .eps = 0.5, .weight_decay = 0.5});
  auto p = make<T>({{1, -2}});
  const auto g = make<T>({{1, 0}});
  // Step 1, element 0: d = 1 + 0.5 * 1 = 1.5, m = 0.75, v = 0.5625, m^ = 1.5,
  //   v^ = 2.25, denom = 1.5 + 0.5 = 2; p = 1 - 0.1 * 1.5 / 2 = 0.925.
  // Element 1 has no gradient, only decay: d = -1, m = -0.5, v = 0.25,
  //   m^ = -1, v^ = 1, denom = 1.5; p = -2 + 0.1 / 1.5.
  step(adam, p, g);
  check_values(p, {{0.925, -2 + 0.1 / 1.5}});
  // Step 2 (bias corrections 0.75 and 0.4375), element 0: d = 1 + 0.5 * 0.925.
  const double d0 = 1.4625;
  const double m0 = 0.5 * 0.75 + 0.5 * d0;
  const double v0 = 0.75 * 0.5625 + 0.25 * d0 * d0;
  const double p0 = 0.925 - 0.1 * (m0 / 0.75) / (std::sqrt(v0 / 0.4375) + 0.5);
  // Element 1: d = 0.5 * p.
  const double p1_before = -2 + 0.1 / 1.5;
  const double d1 = 0.5 * p1_before;
  const double m1 = 0.5 * -0.5 + 0.5 * d1;
  const double v1 = 0.75 * 0.25 + 0.25 * d1 * d1;
  const double p1 = p1_before - 0.1 * (m1 / 0.75) / (std::sqrt(v1 / 0.4375) + 0.5);
  step(adam, p, g);
  check_values(p, {{p0, p1}});
  CHECK(p0 == doctest::Approx(0.850456).epsilon(1e-5));
}

TEST_CASE_TEMPLATE("AdamW: decoupled weight decay matches a hand-computed step", T, float, double) {
  AdamW<T> adamw(adam_options{.lr = 0.1, .beta1 = 0.5, .beta2 = 0.75, .eps = 0.5, .weight_decay = 0.5});
  auto p = make<T>({{1, -2}});
  const auto g = make<T>({{1, 0}});
  // Step 1: p *= 1 - 0.1 * 0.5 = 0.95, then Adam without decay.
  //   element 0: 0.95; m = 0.5, v = 0.25, m^ = 1, v^ = 1, denom = 1.5; p = 0.95 - 0.1 / 1.5
  //   element 1: -1.9; no gradient, so no Adam move (Adam with L2 would move it)
  step(adamw, p, g);
  check_values(p, {{0.95 - 0.1 / 1.5, -1.9}});
  // Step 2: element 0: p = 0.95 (0.95 - 1/15); m = 0.25 + 0.5 = 0.75, v = 0.1875 + 0.25 = 0.4375,
  //   m^ = 0.75 / 0.75 = 1, v^ = 0.4375 / 0.4375 = 1, denom = 1.5; p -= 1/15
  //   element 1: -1.9 * 0.95 = -1.805
  step(adamw, p, g);
  check_values(p, {{0.7725, -1.805}});
  CHECK(adamw.state().kind == "adamw");
  CHECK(AdamW<T>().options().weight_decay == 0.01);
  CHECK(AdamW<T>().learning_rate() == 1e-3);
}

TEST_CASE_TEMPLATE("Adam: option validation names the class, the option and the value", T, float, double) {
  using parallax::error;
  CHECK_THROWS_WITH_AS(Adam<T>(adam_options{.lr = -0.1}).validate(), "Adam::Adam(): lr = -0.1 must be finite and >= 0", error);
  CHECK_THROWS_WITH_AS(Adam<T>(adam_options{.beta1 = 1}).validate(), "Adam::Adam(): beta1 = 1 is outside [0, 1)", error);
  CHECK_THROWS_WITH_AS(Adam<T>(adam_options{.beta2 = -0.1}).validate(), "Adam::Adam(): beta2 = -0.1 is outside [0, 1)", error);
  CHECK_THROWS_WITH_AS(Adam<T>(adam_options{.eps = 0}).validate(), "Adam::Adam(): eps = 0 must be finite and > 0", error);
  CHECK_THROWS_WITH_AS(Adam<T>(adam_options{.weight_decay = -1}).validate(),
                       "Adam::Adam(): weight_decay = -1 must be finite and >= 0", error);
  CHECK_THROWS_WITH_AS(AdamW<T>(adam_options{.beta2 = 1.5}).validate(), "AdamW::AdamW(): beta2 = 1.5 is outside [0, 1)",
                       error);
  CHECK_THROWS_WITH_AS(AdamW<T>(adam_options{.eps = -1e-8}).validate(), "AdamW::AdamW(): eps = -1e-08 must be finite and > 0",
                       error);
  CHECK_THROWS_WITH_AS(AdamW<T>(adam_options{.weight_decay = -0.01}).validate(),
                       "AdamW::AdamW(): weight_decay = -0.01 must be finite and >= 0", error);
  CHECK_NOTHROW(Adam<T>(adam_options{.lr = 0, .beta1 = 0, .beta2 = 0}));
}

// ---------------------------------------------------------------------------
// What every optimizer shares
// ---------------------------------------------------------------------------

namespace {

/// One optimizer of each kind, with every option in play.
template <class T>
std::vector<std::function<std::unique_ptr<Optimizer<T>>()>> every_kind() {
  return {
      [] { return std::make_unique<SGD<T>>(sgd_options{.lr = 0.1}); },
      [] {
        return std::make_unique<SGD<T>>(
            sgd_options{.lr = 0.1, .momentum = 0.9, .nesterov = true, .weight_decay = 0.01});
      },
      [] { return std::make_unique<SGD<T>>(sgd_options{.lr = 0.1, .momentum = 0.8, .dampening = 0.3}); },
      [] { return std::make_unique<Adam<T>>(adam_options{.lr = 0.01, .weight_decay = 0.1}); },
      [] { return std::make_unique<AdamW<T>>(adam_options{.lr = 0.01, .weight_decay = 0.1}); },
  };
}

/// Gradients for step i: different at every step.
template <class T>
tensors<T> gradients(int i) {
  const double s = 1 + 0.25 * i;
  return make<T>({{0.3 * s, -1.1}, {0.7, -0.2 * s, 1.3 / s}, {}});
}

}  // namespace

TEST_CASE_TEMPLATE("Optimizer: size mismatches name the tensor index and both sizes", T, float, double) {
  using parallax::error;
  SGD<T> sgd(sgd_options{.lr = 0.1, .momentum = 0.5});
  auto p = make<T>({{1, 2}, {3, 4, 5}});
  CHECK_THROWS_WITH_AS(step(sgd, p, make<T>({{1, 1}})), "SGD::step(): 2 parameter tensors but 1 gradient tensors",
                       error);
  CHECK_THROWS_WITH_AS(step(sgd, p, make<T>({{1, 1}, {1, 1}})),
                       "SGD::step(): tensor 1 has 3 parameters but 2 gradients", error);
  // A step that throws changes nothing.
  check_values(p, {{1, 2}, {3, 4, 5}});
  CHECK(sgd.steps() == 0);

  step(sgd, p, make<T>({{1, 1}, {1, 1, 1}}));
  check_values(p, {{0.9, 1.9}, {2.9, 3.9, 4.9}});
  // Once state exists, the tensors must keep their sizes.
  auto bigger = make<T>({{1, 2}, {3, 4, 5, 6}});
  CHECK_THROWS_WITH_AS(step(sgd, bigger, make<T>({{1, 1}, {1, 1, 1, 1}})),
                       "SGD::step(): tensor 1 has 4 parameters but the optimizer state (created at the first "
                       "step) has 3",
                       error);
  auto fewer = make<T>({{1, 2}});
  CHECK_THROWS_WITH_AS(step(sgd, fewer, make<T>({{1, 1}})),
                       "SGD::step(): 1 parameter tensors but the optimizer state (created at the first step) has 2",
                       error);
  check_values(bigger, {{1, 2}, {3, 4, 5, 6}});
  CHECK(sgd.steps() == 1);

  Adam<T> adam;
  CHECK_THROWS_WITH_AS(step(adam, p, make<T>({{1, 1}, {1, 1, 1, 1}})),
                       "Adam::step(): tensor 1 has 3 parameters but 4 gradients", error);
  AdamW<T> adamw;
  step(adamw, p, make<T>({{1, 1}, {1, 1, 1}}));
  CHECK_THROWS_WITH_AS(step(adamw, bigger, make<T>({{1, 1}, {1, 1, 1, 1}})),
                       "AdamW::step(): tensor 1 has 4 parameters but the optimizer state (created at the first "
                       "step) has 3",
                       error);
  CHECK(adamw.steps() == 1);
}

TEST_CASE_TEMPLATE("Optimizer: state() and load_state() resume bitwise like an uninterrupted run", T, float,
                   double) {
  for (const auto& make_optimizer : every_kind<T>()) {
    auto uninterrupted = make_optimizer();
    auto p = make<T>({{0.5, -1.5}, {2, 0.25, -0.75}, {}});
    step(*uninterrupted, p, gradients<T>(0));
    uninterrupted->set_learning_rate(uninterrupted->learning_rate() / 2);
    step(*uninterrupted, p, gradients<T>(1));

    const optimizer_state<T> saved = uninterrupted->state();
    CHECK(saved.steps == 2);
    CHECK(saved.learning_rate == uninterrupted->learning_rate());
    auto resumed = make_optimizer();
    resumed->set_learning_rate(123);
    resumed->load_state(saved);
    CHECK(resumed->steps() == 2);
    CHECK(resumed->learning_rate() == uninterrupted->learning_rate());
    CHECK(resumed->state() == saved);

    auto q = p;  // the parameters travel with the model, not the optimizer
    for (int i = 2; i < 5; ++i) {
      step(*uninterrupted, p, gradients<T>(i));
      step(*resumed, q, gradients<T>(i));
    }
    CHECK(p == q);
    CHECK(resumed->state() == uninterrupted->state());
    CHECK(resumed->steps() == 5);
  }
}

TEST_CASE_TEMPLATE("Optimizer: state() reports the kind, steps, learning rate and slots", T, float, double) {
  SGD<T> plain;
  CHECK(plain.state() == optimizer_state<T>{"sgd", 0, 0.01, {}, {}});
  SGD<T> momentum(sgd_options{.lr = 0.5, .momentum = 0.9});
  CHECK(momentum.state() == optimizer_state<T>{"sgd", 0, 0.5, {"momentum"}, {{}}});
  Adam<T> adam;
  CHECK(adam.state() == optimizer_state<T>{"adam", 0, 1e-3, {"m", "v"}, {{}, {}}});

  auto p = make<T>({{1, 2}, {3}});
  step(adam, p, make<T>({{0.5, -1}, {2}}));
  const auto s = adam.state();
  CHECK(s.kind == "adam");
  CHECK(s.steps == 1);
  // m = 0.1 g, v = 0.001 g^2
  check_values(s.slots[0], {{0.05, -0.1}, {0.2}});
  check_values(s.slots[1], {{0.00025, 0.001}, {0.004}});
}

TEST_CASE_TEMPLATE("Optimizer: state_view() lends the buffers state() copies; the default views a copy", T, float,
                   double) {
  auto every = every_kind<T>();
  every.push_back([] { return std::make_unique<toy::last_gradient<T>>(); });
  for (std::size_t kind = 0; kind < every.size(); ++kind) {
    CAPTURE(kind);
    auto o = every[kind]();
    auto p = make<T>({{0.5, -1.5}, {2, 0.25, -0.75}, {}});
    for (int i = 0; i < 2; ++i) {
      // Before the first step and after it: the view shows what state() holds.
      const auto view = o->state_view();
      CHECK(parallax::optim::detail::copy_state(view) == o->state());
      CHECK(view.slots.size() == view.slot_names.size());
      const bool lends = kind + 1 < every.size();  // the library's optimizers
      CHECK((view.copy == nullptr) == lends);
      if (i == 1 && !view.slots.empty()) {
        // Lent spans point at the optimizer's buffers: the same memory on
        // every call; the default's point into its own copy.
        const auto again = o->state_view();
        CHECK((again.slots[0][0].data() == view.slots[0][0].data()) == lends);
        if (!lends) CHECK(view.slots[0][0].data() == view.copy->slots[0][0].data());
      }
      step(*o, p, gradients<T>(i));
    }
  }
}

TEST_CASE_TEMPLATE("Optimizer: load_state() rejects another kind, other slots and malformed states", T, float,
                   double) {
  using parallax::error;
  SGD<T> momentum(sgd_options{.lr = 0.1, .momentum = 0.9});
  SGD<T> plain(sgd_options{.lr = 0.1});
  Adam<T> adam;
  AdamW<T> adamw;
  auto p = make<T>({{1, 2}, {3}});
  const auto g = make<T>({{1, 1}, {1}});
  step(momentum, p, g);
  step(adam, p, g);

  CHECK_THROWS_WITH_AS(adam.load_state(momentum.state()),
                       "Adam::load_state(): the state is of kind \"sgd\", expected \"adam\"", error);
  CHECK_THROWS_WITH_AS(adamw.load_state(adam.state()),
                       "AdamW::load_state(): the state is of kind \"adam\", expected \"adamw\"", error);
  CHECK_THROWS_WITH_AS(plain.load_state(momentum.state()),
                       "SGD::load_state(): the state has slots {\"momentum\"} but this optimizer keeps {} (were "
                       "they built with different options?)",
                       error);
  CHECK_THROWS_WITH_AS(momentum.load_state(plain.state()),
                       "SGD::load_state(): the state has slots {} but this optimizer keeps {\"momentum\"} (were "
                       "they built with different options?)",
                       error);

  const auto good = adam.state();
  auto bad = good;
  bad.slots.pop_back();
  CHECK_THROWS_WITH_AS(adam.load_state(bad), "Adam::load_state(): the state names 2 slots but holds 1", error);
  bad = good;
  bad.slots[1].pop_back();
  CHECK_THROWS_WITH_AS(adam.load_state(bad), "Adam::load_state(): slot \"v\" holds 1 tensors but slot \"m\" holds 2",
                       error);
  bad = good;
  bad.slots[1][0].push_back(0);
  CHECK_THROWS_WITH_AS(adam.load_state(bad),
                       "Adam::load_state(): tensor 0 has 3 values in slot \"v\" but 2 in slot \"m\"", error);
  bad = good;
  bad.steps = 0;
  CHECK_THROWS_WITH_AS(adam.load_state(bad),
                       "Adam::load_state(): the state has 0 steps but slot \"m\" holds 2 tensors (state is created "
                       "at the first step)",
                       error);
  bad = good;
  bad.learning_rate = -1;
  CHECK_THROWS_WITH_AS(adam.load_state(bad), "Adam::load_state(): learning_rate = -1 must be finite and >= 0", error);
  // A rejected state changes nothing.
  CHECK(adam.state() == good);

  // A well-formed state for other tensors is caught at the next step.
  Adam<T> other;
  other.load_state(good);
  auto wrong = make<T>({{1, 2, 3}, {4}});
  CHECK_THROWS_WITH_AS(step(other, wrong, make<T>({{1, 1, 1}, {1}})),
                       "Adam::step(): tensor 0 has 3 parameters but the optimizer state (created at the first step) "
                       "has 2",
                       error);
}

TEST_CASE_TEMPLATE("Optimizer: clone() continues identically and independently", T, float, double) {
  for (const auto& make_optimizer : every_kind<T>()) {
    auto original = make_optimizer();
    auto p = make<T>({{0.5, -1.5}, {2, 0.25, -0.75}, {}});
    step(*original, p, gradients<T>(0));
    step(*original, p, gradients<T>(1));
    original->set_learning_rate(0.05);

    auto copy = original->clone();
    const Optimizer<T>& copy_ref = *copy;
    const Optimizer<T>& original_ref = *original;
    CHECK(typeid(copy_ref) == typeid(original_ref));
    CHECK(copy->learning_rate() == 0.05);
    CHECK(copy->state() == original->state());

    auto q = p;
    step(*original, p, gradients<T>(2));
    step(*copy, q, gradients<T>(2));
    CHECK(p == q);

    // Stepping the copy leaves the original's state alone.
    const auto before = original->state();
    step(*copy, q, gradients<T>(3));
    copy->set_learning_rate(1);
    CHECK(original->state() == before);
    CHECK(original->steps() == 3);
    CHECK(copy->steps() == 4);
  }
}

TEST_CASE_TEMPLATE("Optimizer: a schedule drives the learning rate through the base interface", T, float, double) {
  std::unique_ptr<Optimizer<T>> opt = std::make_unique<SGD<T>>();
  const lr_schedule schedule = step_lr(0.1, 2, 0.5);
  auto p = make<T>({{1}});
  for (int i = 0; i < 4; ++i) {
    opt->set_learning_rate(schedule(opt->steps()));
    step(*opt, p, make<T>({{1}}));
  }
  // rates 0.1, 0.1, 0.05, 0.05 with g = 1: p = 1 - 0.3
  check_values(p, {{0.7}});
  CHECK(opt->steps() == 4);
  CHECK(opt->learning_rate() == doctest::Approx(0.05));
  CHECK_THROWS_WITH_AS(opt->set_learning_rate(-1), "Optimizer::set_learning_rate(): lr = -1 must be finite and >= 0",
                       parallax::error);
  CHECK_THROWS_AS(opt->set_learning_rate(std::numeric_limits<double>::infinity()), parallax::error);
  CHECK(opt->learning_rate() == doctest::Approx(0.05));
}

// ---------------------------------------------------------------------------
// Clipping
// ---------------------------------------------------------------------------

TEST_CASE_TEMPLATE("clip: squared norm of several tensors", T, float, double) {
  const auto g = make<T>({{3, 4}, {}, {12}});
  // 9 + 16 + 144 = 169 = 13^2
  CHECK(squared_norm<T>(cviews(g)) == 169.0);
  CHECK(squared_norm<T>(cviews(make<T>({}))) == 0.0);
}

TEST_CASE_TEMPLATE("clip: scale multiplies every gradient", T, float, double) {
  auto g = make<T>({{3, 4}, {-12}});
  scale<T>(views(g), T(0.5));
  check_values(g, {{1.5, 2}, {-6}});
}

TEST_CASE("clip: the factor follows PyTorch's clip_grad_norm_ rule") {
  CHECK(clip_factor(13, 6.5) == 6.5 / (13 + 1e-6));
  CHECK(clip_factor(13, 6.5) == doctest::Approx(0.5));
  CHECK(clip_factor(13, 13) < 1.0);  // 13 / 13.000001
  CHECK(clip_factor(13, 13) == 13 / 13.000001);
  CHECK(clip_factor(13, 20) == 1.0);
  CHECK(clip_factor(0, 1) == 1.0);
  CHECK(clip_factor(std::numeric_limits<double>::quiet_NaN(), 1) == 1.0);
  CHECK_THROWS_WITH_AS(clip_factor(1, 0), "clip_factor(): max_norm = 0 must be finite and > 0", parallax::error);
  CHECK_THROWS_WITH_AS(clip_factor(1, -2), "clip_factor(): max_norm = -2 must be finite and > 0", parallax::error);
  CHECK_THROWS_WITH_AS(clip_factor(-1, 1), "clip_factor(): total_norm = -1 is negative", parallax::error);
}

TEST_CASE_TEMPLATE("clip: gradients over the limit are scaled to max_norm", T, float, double) {
  auto g = make<T>({{3, 4}, {}, {12}});
  const double norm = clip_by_global_norm<T>(views(g), 6.5);
  CHECK(norm == 13.0);  // the norm before clipping
  const double f = 6.5 / 13.000001;
  check_values(g, {{3 * f, 4 * f}, {}, {12 * f}});
  // 13 * 6.5 / 13.000001: just under max_norm, as in PyTorch
  CHECK(std::sqrt(squared_norm<T>(cviews(g))) == doctest::Approx(13 * f).epsilon(tolerance<T>()));
  CHECK(std::sqrt(squared_norm<T>(cviews(g))) < 6.5 + tolerance<T>());
}

TEST_CASE_TEMPLATE("clip: gradients under the limit are left unchanged", T, float, double) {
  auto g = make<T>({{0.3, -0.4}, {1.2}});
  const auto before = g;
  const double norm = clip_by_global_norm<T>(views(g), 2.0);
  CHECK(norm == doctest::Approx(1.3).epsilon(tolerance<T>()));
  CHECK(g == before);  // bitwise
  CHECK_THROWS_WITH_AS(clip_by_global_norm<T>(views(g), 0),
                       "clip_by_global_norm(): max_norm = 0 must be finite and > 0", parallax::error);
  CHECK(g == before);
}

// ---------------------------------------------------------------------------
// Schedules
// ---------------------------------------------------------------------------

TEST_CASE("schedule: constant_lr and step_lr at chosen steps") {
  const lr_schedule constant = constant_lr(0.05);
  CHECK(constant(0) == 0.05);
  CHECK(constant(123456) == 0.05);

  const lr_schedule stepped = step_lr(0.1, 3, 0.5);
  // 0.1 * 0.5^(step / 3), integer division
  CHECK(stepped(0) == doctest::Approx(0.1));
  CHECK(stepped(2) == doctest::Approx(0.1));
  CHECK(stepped(3) == doctest::Approx(0.05));
  CHECK(stepped(5) == doctest::Approx(0.05));
  CHECK(stepped(6) == doctest::Approx(0.025));
  CHECK(stepped(9) == doctest::Approx(0.0125));
}

TEST_CASE("schedule: cosine_lr at chosen steps") {
  const lr_schedule cosine = cosine_lr(1.0, 10, 0.1);
  CHECK(cosine(0) == doctest::Approx(1.0));
  // cos(pi/5) = (1 + sqrt 5) / 4: 0.1 + 0.9 (1 + 0.809017) / 2
  CHECK(cosine(2) == doctest::Approx(0.1 + 0.9 * (1 + (1 + std::sqrt(5.0)) / 4) / 2));
  CHECK(cosine(2) == doctest::Approx(0.9140576474687264));
  CHECK(cosine(5) == doctest::Approx(0.55));  // cos(pi/2) = 0: halfway
  CHECK(cosine(10) == doctest::Approx(0.1));
  CHECK(cosine(25) == doctest::Approx(0.1));  // stays at min_lr after total_steps

  const lr_schedule to_zero = cosine_lr(2.0, 4);
  CHECK(to_zero(1) == doctest::Approx(1 + std::sqrt(2.0) / 2));  // 2 (1 + cos(pi/4)) / 2
  CHECK(to_zero(2) == doctest::Approx(1.0));
  CHECK(to_zero(4) == doctest::Approx(0.0));
}

TEST_CASE("schedule: warmup_lr rises linearly, then hands over") {
  const lr_schedule warm = warmup_lr(4, constant_lr(0.2), 0.25);
  // 0.2 * (0.25 + 0.75 * step / 4)
  CHECK(warm(0) == doctest::Approx(0.05));
  CHECK(warm(1) == doctest::Approx(0.0875));
  CHECK(warm(2) == doctest::Approx(0.125));
  CHECK(warm(3) == doctest::Approx(0.1625));
  CHECK(warm(4) == doctest::Approx(0.2));
  CHECK(warm(100) == doctest::Approx(0.2));

  // From 0 (the default) into a step decay 1, 1, 0.1, 0.1, ... shifted by 5.
  const lr_schedule from_zero = warmup_lr(5, step_lr(1.0, 2, 0.1));
  CHECK(from_zero(0) == 0.0);
  CHECK(from_zero(1) == doctest::Approx(0.2));
  CHECK(from_zero(5) == doctest::Approx(1.0));
  CHECK(from_zero(6) == doctest::Approx(1.0));
  CHECK(from_zero(7) == doctest::Approx(0.1));

  const lr_schedule none = warmup_lr(0, cosine_lr(1.0, 10));
  CHECK(none(0) == doctest::Approx(1.0));
  CHECK(none(5) == doctest::Approx(0.5));
}

TEST_CASE("schedule: arguments are validated") {
  using parallax::error;
  // A factory given a bad argument does not throw; its schedule throws at
  // every step.
  lr_schedule bad;
  CHECK_NOTHROW(bad = cosine_lr(-1, 10));
  CHECK_THROWS_AS(bad(0), error);
  CHECK_THROWS_AS(bad(7), error);
  CHECK_THROWS_WITH_AS(constant_lr(-1)(0), "constant_lr(): lr = -1 must be finite and >= 0", error);
  CHECK_THROWS_WITH_AS(step_lr(0.1, 0, 0.5)(0), "step_lr(): step_size = 0 must be > 0", error);
  CHECK_THROWS_WITH_AS(step_lr(0.1, 1, -0.5)(0), "step_lr(): gamma = -0.5 must be finite and >= 0", error);
  CHECK_THROWS_WITH_AS(step_lr(-0.1, 1, 0.5)(0), "step_lr(): base = -0.1 must be finite and >= 0", error);
  CHECK_THROWS_WITH_AS(cosine_lr(1, 0)(0), "cosine_lr(): total_steps = 0 must be > 0", error);
  CHECK_THROWS_WITH_AS(cosine_lr(1, 10, -0.1)(0), "cosine_lr(): min_lr = -0.1 must be finite and >= 0", error);
  CHECK_THROWS_WITH_AS(warmup_lr(3, lr_schedule{})(0), "warmup_lr(): the schedule after the warm-up is empty", error);
  CHECK_THROWS_WITH_AS(warmup_lr(3, constant_lr(1), 1.5)(0), "warmup_lr(): start_factor = 1.5 is outside [0, 1]", error);
}
