// SPDX-License-Identifier: BSL-1.0
// Sequential: the Model concept, deduction, initialisation by index,
// concatenated parameters, loss_and_gradient against the same layers run by
// hand and against finite differences, learning XOR-like data, accuracy,
// no allocation per step once the buffers have their shapes, and a NaN
// weight or input that reaches the loss and every gradient.

#include <parallax/nn/activation.hpp>
#include <parallax/nn/conv2d.hpp>
#include <parallax/nn/dropout.hpp>
#include <parallax/nn/flatten.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/loss.hpp>
#include <parallax/nn/maxpool2d.hpp>
#include <parallax/nn/sequential.hpp>

#include "gradcheck.hpp"
#include "test_nn_nonfinite.hpp"
#include "error_of.hpp"
#include "xtensor_print.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <new>
#include <string>
#include <type_traits>
#include <vector>


// Counts every allocation of this test program, so that a test can assert a
// training step makes none.
namespace {
std::atomic<std::size_t> allocation_count{0};
}  // namespace

void* operator new(std::size_t size) {
  allocation_count.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
// GCC sees free() meet a pointer from operator new; here that operator new is malloc.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace {

using namespace parallax::nn;
using labels = xt::xtensor<std::int32_t, 1>;

using Mlp = Sequential<Linear<double>, Tanh<double>, Linear<double>, SoftmaxCrossEntropy<double>>;

static_assert(parallax::Model<Mlp>);
static_assert(parallax::HasEvalLoss<Mlp>);
static_assert(parallax::HasAccuracy<Mlp>);
static_assert(parallax::Model<Sequential<Linear<float>, MeanSquaredError<float>>>);
static_assert(!parallax::HasAccuracy<Sequential<Linear<float>, MeanSquaredError<float>>>);
static_assert(std::is_same_v<Mlp::batch_type, parallax::data::Batch<xt::xtensor<double, 2>, labels>>);
static_assert(std::is_same_v<Mlp::value_type, double>);
static_assert(Mlp::layer_count == 3);
static_assert(parallax::Model<Sequential<Conv2D<float>, ReLU<float, 4>, MaxPool2D<float>, Flatten<float, 4>,
                                         Dropout<float>, Linear<float>, SoftmaxCrossEntropy<float>>>);

Mlp::batch_type random_batch(std::size_t n, std::size_t features, std::size_t classes, std::uint64_t seed) {
  Mlp::batch_type batch;
  batch.inputs.resize(std::array<std::size_t, 2>{n, features});
  gradcheck::fill_uniform(batch.inputs, seed);
  batch.targets.resize(std::array<std::size_t, 1>{n});
  parallax::detail::rng g(seed + 1);
  for (auto& t : batch.targets) t = static_cast<std::int32_t>(g.below(classes));
  return batch;
}

}  // namespace

TEST_CASE("Sequential: deduction guide, types and parts") {
  Sequential net{Linear<float>(784, 256), ReLU<float>{}, Linear<float>(256, 10), SoftmaxCrossEntropy<float>{}};
  using Net = decltype(net);
  static_assert(std::is_same_v<Net, Sequential<Linear<float>, ReLU<float>, Linear<float>, SoftmaxCrossEntropy<float>>>);
  static_assert(parallax::Model<Net>);
  static_assert(std::is_same_v<Net::input_type, xt::xtensor<float, 2>>);
  static_assert(std::is_same_v<Net::output_type, xt::xtensor<float, 2>>);
  static_assert(std::is_same_v<Net::target_type, labels>);
  static_assert(std::is_same_v<Net::value_type, float>);
  CHECK(net.layer<0>().in_features() == 784);
  CHECK(net.layer<2>().out_features() == 10);
  CHECK(net.loss_function().describe() == "SoftmaxCrossEntropy");
  CHECK(net.parameter_count() == Linear<float>::parameter_count(784, 256) + Linear<float>::parameter_count(256, 10));
  CHECK(net.describe() == "Sequential(Linear(784 -> 256), ReLU, Linear(256 -> 10); SoftmaxCrossEntropy)");
  CHECK(net.output_shape({32, 784}) == std::vector<std::size_t>{32, 10});
  CHECK_THROWS_AS((void)net.output_shape({32, 783}), parallax::error);
}

TEST_CASE("Sequential: layer i is initialised with (seed, i); parameters concatenate in order") {
  Mlp net{Linear<double>(3, 4), Tanh<double>{}, Linear<double>(4, 2), SoftmaxCrossEntropy<double>{}};
  net.initialize(17);
  Linear<double> first(3, 4), last(4, 2);
  first.initialize(17, 0);
  last.initialize(17, 2);
  CHECK(net.layer<0>().weight() == first.weight());
  CHECK(net.layer<0>().bias() == first.bias());
  CHECK(net.layer<2>().weight() == last.weight());
  CHECK(net.layer<2>().bias() == last.bias());

  auto params = net.parameters();
  static_assert(std::tuple_size_v<decltype(params)> == 4);  // Tanh contributes nothing
  CHECK(&std::get<0>(params) == &net.layer<0>().weight());
  CHECK(&std::get<1>(params) == &net.layer<0>().bias());
  CHECK(&std::get<2>(params) == &net.layer<2>().weight());
  CHECK(&std::get<3>(params) == &net.layer<2>().bias());
  auto grads = net.gradients();
  CHECK(&std::get<2>(grads) == &std::get<0>(net.layer<2>().gradients()));
  const Mlp& const_net = net;
  CHECK(parallax::detail::tensor_count(const_net.parameters()) == 4);
  CHECK(const_net.parameter_count() == 3 * 4 + 4 + 4 * 2 + 2);
}

TEST_CASE("Sequential: loss_and_gradient equals its layers run by hand") {
  Mlp net{Linear<double>(3, 4), Tanh<double>{}, Linear<double>(4, 2), SoftmaxCrossEntropy<double>{}};
  net.initialize(5);
  const auto batch = random_batch(6, 3, 2, 50);

  Linear<double> l0(3, 4), l2(4, 2);
  l0.initialize(5, 0);
  l2.initialize(5, 2);
  Tanh<double> act;
  SoftmaxCrossEntropy<double> ce;
  xt::xtensor<double, 2> h0, h1, out, dout, dh1, dh0, dx;
  l0.forward(batch.inputs, h0);
  act.forward(h0, h1);
  l2.forward(h1, out);
  const double expected = ce.loss(out, batch.targets, dout);
  l2.backward(h1, out, dout, dh1);
  act.backward(h0, h1, dh1, dh0);
  l0.backward(batch.inputs, h0, dh0, dx);

  // Twice: the second call must overwrite (zero) the gradients of the first.
  for (int round = 0; round < 2; ++round) {
    CHECK(net.loss_and_gradient(batch) == expected);
    CHECK(net.layer<0>().gradients() == l0.gradients());
    CHECK(net.layer<2>().gradients() == l2.gradients());
  }
  CHECK(net.loss(batch) == expected);
  CHECK(net.predict(batch.inputs) == out);
}

TEST_CASE("Sequential: finite-difference gradient of the whole chain through its parameters") {
  auto check_chain = [](auto& net, const auto& batch) {
    net.initialize(3);
    net.loss_and_gradient(batch);
    std::vector<double> analytic;
    for (const auto& g : parallax::detail::tensor_spans<double>(net.gradients()))
      analytic.insert(analytic.end(), g.data.begin(), g.data.end());
    gradcheck::result r;
    std::size_t k = 0;
    const double h = 1e-6;
    for (const auto& p : parallax::detail::tensor_spans<double>(net.parameters())) {
      for (double& v : p.data) {
        const double saved = v;
        v = saved + h;
        const double plus = net.loss(batch);
        v = saved - h;
        const double minus = net.loss(batch);
        v = saved;
        gradcheck::record(r, analytic[k], (plus - minus) / (2 * h), "parameter " + std::to_string(k));
        ++k;
      }
    }
    CHECK(k == analytic.size());
    INFO(r.where);
    CHECK(r.max_error < 1e-6);
  };

  Mlp mlp{Linear<double>(3, 5), Tanh<double>{}, Linear<double>(5, 3), SoftmaxCrossEntropy<double>{}};
  check_chain(mlp, random_batch(7, 3, 3, 60));
  check_chain(mlp, random_batch(1, 3, 3, 61));

  Sequential regression{Linear<double>(2, 3), Sigmoid<double>{}, Linear<double>(3, 2), MeanSquaredError<double>{}};
  decltype(regression)::batch_type targets;
  targets.inputs = {{0.5, -0.2}, {0.1, 0.9}, {-0.7, 0.3}};
  targets.targets = {{1.0, 0.0}, {0.0, 1.0}, {0.5, 0.5}};
  check_chain(regression, targets);

  Sequential cnn{Conv2D<double>(1, 2, 3, 1, 1), ReLU<double, 4>{}, MaxPool2D<double>(2), Flatten<double, 4>{},
                 Linear<double>(8, 3), SoftmaxCrossEntropy<double>{}};
  decltype(cnn)::batch_type images;
  images.inputs.resize(std::array<std::size_t, 4>{2, 1, 4, 4});
  gradcheck::fill_uniform(images.inputs, 62);
  images.targets = {2, 0};
  check_chain(cnn, images);
}

TEST_CASE("Sequential: a small MLP learns XOR-like data with plain gradient descent") {
  // Points in the four quadrants, away from the axes; class 1 where x0 x1 > 0.
  Mlp::batch_type batch;
  const std::size_t n = 64;
  batch.inputs.resize(std::array<std::size_t, 2>{n, 2});
  batch.targets.resize(std::array<std::size_t, 1>{n});
  parallax::detail::rng g(70);
  for (std::size_t i = 0; i < n; ++i) {
    const double sx = (i & 1) ? 1.0 : -1.0, sy = (i & 2) ? 1.0 : -1.0;
    batch.inputs(i, 0) = sx * (0.2 + 0.8 * g.uniform());
    batch.inputs(i, 1) = sy * (0.2 + 0.8 * g.uniform());
    batch.targets(i) = sx * sy > 0 ? 1 : 0;
  }
  Mlp net{Linear<double>(2, 16), Tanh<double>{}, Linear<double>(16, 2), SoftmaxCrossEntropy<double>{}};
  net.initialize(1);
  const double first = net.loss(batch);
  double last = first;
  for (int step = 0; step < 1500; ++step) {
    last = net.loss_and_gradient(batch);
    auto params = parallax::detail::tensor_spans<double>(net.parameters());
    auto grads = parallax::detail::tensor_spans<double>(net.gradients());
    for (std::size_t t = 0; t < params.size(); ++t)
      for (std::size_t i = 0; i < params[t].data.size(); ++i) params[t].data[i] -= 0.5 * grads[t].data[i];
  }
  last = net.loss(batch);
  INFO("loss " << first << " -> " << last);
  CHECK(first > 0.5);
  CHECK(last < first / 20);
  CHECK(net.correct(batch) == n);
}

TEST_CASE("Sequential: correct counts samples whose largest output is the target") {
  Sequential net{Linear<double>(2, 2), SoftmaxCrossEntropy<double>{}};
  net.layer<0>().weight() = {{1, 0}, {0, 1}};  // the identity: outputs are the inputs
  net.layer<0>().bias() = {0, 0};
  decltype(net)::batch_type batch;
  batch.inputs = {{1, 0}, {0, 1}, {2, 3}, {5, -1}};
  batch.targets = {0, 1, 0, 0};
  // Largest outputs: 0, 1, 1, 0; the third is wrong.
  CHECK(net.correct(batch) == 3);
  batch.targets = {1, 0, 0, 1};
  CHECK(net.correct(batch) == 0);
}

TEST_CASE("Sequential: set_training and set_step reach Dropout") {
  Sequential net{Linear<double>(4, 64), Dropout<double>(0.5), Linear<double>(64, 2), SoftmaxCrossEntropy<double>{}};
  net.initialize(8);
  Sequential plain{Linear<double>(4, 64), Linear<double>(64, 2), SoftmaxCrossEntropy<double>{}};
  plain.layer<0>() = net.layer<0>();
  plain.layer<1>() = net.layer<2>();
  const auto batch = random_batch(5, 4, 2, 80);
  net.set_step(1);
  const auto step1 = net.predict(batch.inputs);
  CHECK(net.predict(batch.inputs) == step1);
  net.set_step(2);
  CHECK(net.predict(batch.inputs) != step1);
  net.set_training(false);
  CHECK(net.layer<1>().training() == false);
  CHECK(net.predict(batch.inputs) == plain.predict(batch.inputs));
}

TEST_CASE("Sequential: a step allocates nothing once its buffers have their shapes") {
  Sequential net{Linear<float>(8, 16), ReLU<float>{}, Linear<float>(16, 16), Sigmoid<float>{}, Linear<float>(16, 4),
                 SoftmaxCrossEntropy<float>{}};
  net.initialize(2);
  decltype(net)::batch_type batch;
  batch.inputs.resize(std::array<std::size_t, 2>{10, 8});
  gradcheck::fill_uniform(batch.inputs, 90);
  batch.targets.resize(std::array<std::size_t, 1>{10});
  for (std::size_t i = 0; i < 10; ++i) batch.targets(i) = static_cast<std::int32_t>(i % 4);
  net.loss_and_gradient(batch);  // sizes the buffers

  const std::size_t before = allocation_count.load();
  double sum = 0;
  for (int i = 0; i < 3; ++i) sum += net.loss_and_gradient(batch);
  sum += net.loss(batch);
  const std::size_t correct = net.correct(batch);
  const std::size_t during = allocation_count.load() - before;
  CHECK(during == 0);
  CHECK(std::isfinite(sum));
  CHECK(correct <= 10);
  // The counter does count: predict returns a fresh tensor.
  const std::size_t before_predict = allocation_count.load();
  const auto prediction = net.predict(batch.inputs);
  CHECK(allocation_count.load() > before_predict);
  CHECK(prediction.shape()[1] == 4);

  // The layers and losses alone, too.
  Linear<float> fc(8, 4);
  SoftmaxCrossEntropy<float> ce;
  xt::xtensor<float, 2> y, dy, dx;
  fc.forward(batch.inputs, y);
  ce.loss(y, batch.targets, dy);
  fc.backward(batch.inputs, y, dy, dx);
  const std::size_t start = allocation_count.load();
  fc.forward(batch.inputs, y);
  ce.loss(y, batch.targets, dy);
  fc.backward(batch.inputs, y, dy, dx);
  CHECK(allocation_count.load() - start == 0);

  // Conv2D reuses its im2col scratch; MaxPool2D and the activations keep nothing.
  Conv2D<float> conv(2, 3, 3, 2, 1);
  MaxPool2D<float> pool(2);
  ReLU<float, 4> relu;
  conv.initialize(4, 0);
  xt::xtensor<float, 4> image(std::array<std::size_t, 4>{2, 2, 9, 9}), c, r, p, dp, dr, dc, dimage;
  gradcheck::fill_uniform(image, 91);
  auto conv_step = [&] {
    conv.forward(image, c);
    relu.forward(c, r);
    pool.forward(r, p);
    pool.backward(r, p, p, dp);
    relu.backward(c, r, dp, dr);
    conv.backward(image, c, dr, dimage);
  };
  conv_step();
  const std::size_t conv_start = allocation_count.load();
  conv_step();
  CHECK(allocation_count.load() - conv_start == 0);
}

TEST_CASE("Sequential: an input that does not fit names the layer at fault and where its input came from") {
  using namespace parallax::nn;
  Sequential net{Linear<double>(4, 32), ReLU<double>{}, Linear<double>(16, 3), SoftmaxCrossEntropy<double>{}};
  parallax::data::Batch<xt::xtensor<double, 2>, xt::xtensor<std::int32_t, 1>> batch{xt::zeros<double>({5, 4}),
                                                                                   xt::zeros<std::int32_t>({5})};
  const auto message = error_of([&] { net.loss_and_gradient(batch); });
  CHECK(contains(message, "Sequential: layer 2 Linear(16 -> 3) cannot take the output of layer 1 ReLU, of shape (5, 32)"));
  parallax::data::Batch<xt::xtensor<double, 2>, xt::xtensor<std::int32_t, 1>> wrong{xt::zeros<double>({5, 7}),
                                                                                   xt::zeros<std::int32_t>({5})};
  Sequential ok{Linear<double>(4, 3), SoftmaxCrossEntropy<double>{}};
  CHECK(contains(error_of([&] { ok.loss_and_gradient(wrong); }), "layer 0 Linear(4 -> 3) cannot take the input, of shape (5, 7)"));
}

namespace {

/// How many of the chain's gradient tensors hold a NaN.
template <class Net>
std::size_t gradients_with_nan(Net& net) {
  std::size_t with = 0;
  parallax::detail::for_each_tensor(net.gradients(), [&](const auto& g) {
    with += std::any_of(g.begin(), g.end(), [](auto v) { return std::isnan(v); }) ? 1 : 0;
  });
  return with;
}

}  // namespace

TEST_CASE("Sequential: a NaN weight before a ReLU makes the loss and every gradient NaN, as in PyTorch") {
  // The corrupt weight must show in the loss and the gradients, or the
  // trainers' non-finite check cannot see it.
  Sequential net{Linear<double>(4, 6), ReLU<double>{}, Linear<double>(6, 3), SoftmaxCrossEntropy<double>{}};
  net.initialize(3);
  const auto batch = random_batch(5, 4, 3, 81);
  CHECK(std::isfinite(net.loss_and_gradient(batch)));
  CHECK(gradients_with_nan(net) == 0);
  net.layer<0>().weight()(1, 2) = std::numeric_limits<double>::quiet_NaN();
  CHECK(std::isnan(net.loss_and_gradient(batch)));
  CHECK(std::isnan(net.loss(batch)));
  CHECK(gradients_with_nan(net) == 4);  // both weights and both biases
}

TEST_CASE("Sequential: a NaN pixel that is not the first of its pooling window reaches the loss") {
  using Net = Sequential<Conv2D<float>, MaxPool2D<float>, Flatten<float, 4>, Linear<float>,
                         SoftmaxCrossEntropy<float>>;
  Net net{Conv2D<float>(1, 2, 1), MaxPool2D<float>(2), Flatten<float, 4>{}, Linear<float>(8, 3),
          SoftmaxCrossEntropy<float>{}};
  net.initialize(4);
  Net::batch_type batch;
  batch.inputs = xt::xtensor<float, 4>(std::array<std::size_t, 4>{2, 1, 4, 4});
  gradcheck::fill_uniform(batch.inputs, 82);
  batch.targets = {0, 2};
  CHECK(std::isfinite(net.loss_and_gradient(batch)));
  batch.inputs(1, 0, 2, 3) = std::numeric_limits<float>::quiet_NaN();  // the bottom-right window's second element
  CHECK(std::isnan(net.loss_and_gradient(batch)));
  CHECK(gradients_with_nan(net) == 4);  // both weights and both biases
}
