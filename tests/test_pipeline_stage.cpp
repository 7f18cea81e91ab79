// SPDX-License-Identifier: BSL-1.0
// pipeline::stage without MPI: one stage holding the whole chain, and two
// stages chained by hand ([0, k) then [k, n), every k), give exactly what
// nn::Sequential gives for the same layers and seed: the output, the loss,
// the parameter gradients and the gradients at the chain's input and at the
// cut, with and without recomputation.

#include <parallax/nn/activation.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/loss.hpp>
#include <parallax/nn/sequential.hpp>
#include <parallax/pipeline/stage.hpp>

#include "gradcheck.hpp"

#include <doctest/doctest.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using namespace parallax::nn;
using matrix = xt::xtensor<double, 2>;

/// The identity, keeping the gradient it is handed: how the test reads the
/// gradient at a point of the chain from Sequential, which keeps it private.
struct Probe {
  using input_type = matrix;
  using output_type = matrix;
  matrix seen;
  void initialize(std::uint64_t, std::size_t) {}
  void forward(const input_type& x, output_type& y) { y = x; }
  void backward(const input_type&, const output_type&, const output_type& dy, input_type& dx) {
    seen = dy;
    dx = dy;
  }
};

template <class E>
std::vector<double> values(const E& t) {
  return std::vector<double>(t.begin(), t.end());
}

template <class E>
void append(std::vector<double>& out, const E& t) {
  out.insert(out.end(), t.begin(), t.end());
}

/// What the test compares: from Sequential (expected) or from the stages.
struct outcome {
  double loss = 0;
  std::vector<double> output;
  std::vector<double> gradients;  ///< every parameter gradient, in layer order
  std::vector<double> input_gradient;  ///< at the chain's input (none when layer 0 skips it)
  std::vector<double> cut_gradient;    ///< at the input of the second stage (none for one stage)
};

template <class Net, class Batch>
outcome from_sequential(Net& net, const Batch& batch) {
  outcome e;
  e.loss = net.loss_and_gradient(batch);
  auto grads = net.gradients();
  parallax::detail::for_each_tensor(grads, [&](const auto& g) { append(e.gradients, g); });
  e.output = values(net.predict(batch.inputs));
  return e;
}

template <class Stage>
void append_gradients(Stage& s, std::vector<double>& out) {
  s.for_each_layer([&](std::size_t, auto& layer) {
    if constexpr (parallax::HasLayerParameters<std::remove_cvref_t<decltype(layer)>>)
      parallax::detail::for_each_tensor(layer.gradients(), [&](const auto& g) { append(out, g); });
  });
}

/// What a pipeline does with one micro-batch, by hand: stage [0, K) then
/// stage [K, n) (one stage when K == n), forward, loss, backward.
template <std::size_t K, class Stage, class Args, class Batch>
outcome run_stages(const Args& args, const Batch& batch, std::uint64_t seed, bool recompute) {
  constexpr std::size_t n = Stage::layer_count;
  Stage first, second;
  typename Stage::activations a, b;
  outcome r;
  first.build(0, K, args, seed, K == n);
  first.zero_gradients();
  std::get<0>(a.in) = batch.inputs;
  first.forward(a, recompute);
  if constexpr (K == n) {
    auto& y = std::get<n - 1>(a.out);
    r.loss = first.loss()->loss(y, batch.targets, std::get<n - 1>(a.dy));
    r.output = values(y);
    first.backward(a, recompute);
  } else {
    second.build(K, n, args, seed, true);
    second.zero_gradients();
    std::get<K>(b.in) = std::get<K - 1>(a.out);
    second.forward(b, recompute);
    auto& y = std::get<n - 1>(b.out);
    r.loss = second.loss()->loss(y, batch.targets, std::get<n - 1>(b.dy));
    r.output = values(y);
    second.backward(b, recompute);
    std::get<K - 1>(a.dy) = std::get<K>(b.dx);
    first.backward(a, recompute);
    r.cut_gradient = values(std::get<K>(b.dx));
  }
  append_gradients(first, r.gradients);
  append_gradients(second, r.gradients);
  r.input_gradient = values(std::get<0>(a.dx));
  return r;
}

void check_same(const outcome& got, const outcome& expected) {
  CHECK(got.loss == expected.loss);
  CHECK(got.output == expected.output);
  CHECK(got.gradients == expected.gradients);
}

using ProbedParts = std::tuple<Probe, Linear<double>, Tanh<double>, Probe, Linear<double>, Sigmoid<double>,
                               Linear<double>, SoftmaxCrossEntropy<double>>;
const auto probed_args = std::tuple{std::tuple{}, std::tuple{5, 6}, std::tuple{}, std::tuple{},
                                    std::tuple{6, 4}, std::tuple{}, std::tuple{4, 3}, std::tuple{}};

template <class Tuple>
struct stage_for;
template <class... Parts>
struct stage_for<std::tuple<Parts...>> {
  using type = parallax::pipeline::stage<Parts...>;
};
using ProbedStage = stage_for<ProbedParts>::type;

}  // namespace

TEST_CASE("pipeline::stage: the whole chain and every cut into two stages equal Sequential") {
  using Stage = ProbedStage;
  static_assert(Stage::layer_count == 7);
  Sequential net{Probe{}, Linear<double>(5, 6), Tanh<double>{}, Probe{}, Linear<double>(6, 4), Sigmoid<double>{},
                 Linear<double>(4, 3), SoftmaxCrossEntropy<double>{}};
  net.initialize(11);
  decltype(net)::batch_type batch;
  batch.inputs.resize(std::array<std::size_t, 2>{9, 5});
  gradcheck::fill_uniform(batch.inputs, 21);
  batch.targets = {0, 2, 1, 1, 0, 2, 2, 1, 0};
  const outcome expected = from_sequential(net, batch);
  const auto at_input = values(net.layer<0>().seen);  // dL/d(the chain's input)
  const auto at_four = values(net.layer<3>().seen);   // dL/d(layer 4's input)
  REQUIRE(at_input.size() == 9 * 5);
  REQUIRE(at_four.size() == 9 * 6);
  for (bool recompute : {false, true}) {
    CAPTURE(recompute);
    [&]<std::size_t... J>(std::index_sequence<J...>) {
      (
          [&] {
            constexpr std::size_t k = J + 1;
            CAPTURE(k);
            const outcome got = run_stages<k, Stage>(probed_args, batch, 11, recompute);
            check_same(got, expected);
            CHECK(got.input_gradient == at_input);
            if constexpr (k == 4) CHECK(got.cut_gradient == at_four);
          }(),
          ...);
    }(std::make_index_sequence<Stage::layer_count>{});
  }
}

TEST_CASE("pipeline::stage: a first layer with backward_parameters skips the input gradient, as in Sequential") {
  using Stage = parallax::pipeline::stage<Linear<double>, ReLU<double>, Linear<double>, MeanSquaredError<double>>;
  const auto args = std::tuple{std::tuple{4, 5}, std::tuple{}, std::tuple{5, 2}, std::tuple{}};
  Sequential net{Linear<double>(4, 5), ReLU<double>{}, Linear<double>(5, 2), MeanSquaredError<double>{}};
  net.initialize(3);
  decltype(net)::batch_type batch;
  batch.inputs.resize(std::array<std::size_t, 2>{6, 4});
  batch.targets.resize(std::array<std::size_t, 2>{6, 2});
  gradcheck::fill_uniform(batch.inputs, 31);
  gradcheck::fill_uniform(batch.targets, 32);
  const outcome expected = from_sequential(net, batch);
  for (bool recompute : {false, true}) {
    CAPTURE(recompute);
    [&]<std::size_t... J>(std::index_sequence<J...>) {
      (
          [&] {
            const outcome got = run_stages<J + 1, Stage>(args, batch, 3, recompute);
            check_same(got, expected);
            CHECK(got.input_gradient.empty());
          }(),
          ...);
    }(std::make_index_sequence<Stage::layer_count>{});
  }
}

TEST_CASE("pipeline::stage: recomputation keeps only the stage input and output") {
  using Stage = ProbedStage;
  Stage s;
  s.build(1, 6, probed_args, 1, false);
  CHECK(s.part<0>() == nullptr);
  CHECK(s.part<1>() != nullptr);
  CHECK(s.part<5>() != nullptr);
  CHECK(s.part<6>() == nullptr);
  CHECK(s.loss() == nullptr);
  Stage::activations kept, all;
  matrix x = xt::zeros<double>({std::size_t(3), std::size_t(5)});
  gradcheck::fill_uniform(x, 5);
  std::get<1>(kept.in) = x;
  std::get<1>(all.in) = x;
  s.forward(kept, true);
  s.forward(all, false);
  CHECK(std::get<5>(kept.out) == std::get<5>(all.out));
  CHECK(std::get<1>(kept.out).size() == 0);
  // Input 3x5 and outputs 3x6, 3x6, 3x6, 3x4, 3x4 of doubles; recomputing keeps the input and the last.
  CHECK(s.saved_bytes(all) == (15 + 18 * 3 + 12 * 2) * sizeof(double));
  CHECK(s.saved_bytes(kept) == (15 + 12) * sizeof(double));
}
