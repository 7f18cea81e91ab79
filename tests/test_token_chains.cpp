// SPDX-License-Identifier: BSL-1.0
// Suite model_parallel: a chain of the transformer layers (Embedding of
// int64 token ids, LayerNorm, GELU, TokenCrossEntropy) trains alike serially,
// under DataParallel (each rank its rows of the batch) and under
// ModelParallel (one stage per rank), at 1 to 4 ranks: the same loss at
// every step and, for DataParallel, the same parameters, to 1e-12 in double.

#include <parallax/data/batch.hpp>
#include <parallax/data_parallel.hpp>
#include <parallax/detail/tensor_list.hpp>
#include <parallax/model_parallel.hpp>
#include <parallax/nn/activation.hpp>
#include <parallax/nn/embedding.hpp>
#include <parallax/nn/layer_norm.hpp>
#include <parallax/nn/sequential.hpp>
#include <parallax/nn/token_cross_entropy.hpp>
#include <parallax/optim/sgd.hpp>

#include <doctest/doctest.h>

#include <boost/mpi/communicator.hpp>

#include <cmath>
#include <cstdint>
#include <span>
#include <tuple>
#include <vector>

namespace {

using namespace parallax::nn;
using ids = xt::xtensor<std::int64_t, 2>;
using batch = parallax::data::Batch<ids, ids>;
constexpr std::size_t vocabulary = 6, width = 6, rows = 12, sequence = 3, steps = 3;

/// Token ids in [0, vocabulary): the inputs, and as targets the next-token-like ids.
batch token_batch() {
  batch b;
  b.inputs = xt::zeros<std::int64_t>({rows, sequence});
  b.targets = xt::zeros<std::int64_t>({rows, sequence});
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t s = 0; s < sequence; ++s) {
      b.inputs(r, s) = static_cast<std::int64_t>((r * 5 + s * 3) % vocabulary);
      b.targets(r, s) = static_cast<std::int64_t>((r + s * 2 + 1) % vocabulary);
    }
  return b;
}

auto make_chain() {
  Sequential net{Embedding<double>(vocabulary, width), LayerNorm<double, 3>(width), GELU<double, 3>{},
                 LayerNorm<double, 3>(width), GELU<double, 3>{}, TokenCrossEntropy<double>{}};
  net.initialize(7);
  return net;
}

template <class Net>
std::vector<double> flat(Net& net) {
  std::vector<double> out;
  parallax::detail::for_each_tensor(net.parameters(), [&](auto& t) { out.insert(out.end(), t.begin(), t.end()); });
  return out;
}

}  // namespace

TEST_CASE("token chains: serial, DataParallel and ModelParallel train alike") {
  parallax::mpi::communicator world;
  const auto all = token_batch();
  const parallax::optim::SGD<double> sgd({.lr = 0.5, .momentum = 0.9});

  // Serial: the whole batch, the optimizer by hand.
  auto serial = make_chain();
  auto rule = sgd.clone();
  std::vector<double> serial_losses;
  for (std::size_t s = 0; s < steps; ++s) {
    serial_losses.push_back(serial.loss_and_gradient(all));
    std::vector<std::span<double>> p;
    std::vector<std::span<const double>> g;
    parallax::detail::for_each_tensor(serial.parameters(), [&](auto& t) { p.emplace_back(t.data(), t.size()); });
    parallax::detail::for_each_tensor(serial.gradients(), [&](auto& t) { g.emplace_back(t.data(), t.size()); });
    rule->step(p, g);
  }
  CHECK(serial_losses.back() < serial_losses.front());  // it learns

  // DataParallel: each rank its block of rows (12 divides among 1-4 ranks).
  parallax::DataParallel dp(make_chain(), sgd, {}, world);
  const std::size_t n = rows / static_cast<std::size_t>(world.size());
  batch mine;
  parallax::data::slice_rows(all.inputs, n * static_cast<std::size_t>(world.rank()), n, mine.inputs);
  parallax::data::slice_rows(all.targets, n * static_cast<std::size_t>(world.rank()), n, mine.targets);
  for (std::size_t s = 0; s < steps; ++s) CHECK(std::abs(dp.train_step(mine) - serial_losses[s]) < 1e-12);
  const auto ours = flat(dp.model()), theirs = flat(serial);
  REQUIRE(ours.size() == theirs.size());
  double worst = 0;
  for (std::size_t i = 0; i < ours.size(); ++i) worst = std::max(worst, std::abs(ours[i] - theirs[i]));
  CHECK(worst < 1e-12);

  // ModelParallel: five layers over up to four stages, two micro-batches.
  parallax::ModelParallel<Embedding<double>, LayerNorm<double, 3>, GELU<double, 3>, LayerNorm<double, 3>,
                          GELU<double, 3>, TokenCrossEntropy<double>>
      mp(std::make_tuple(std::make_tuple(vocabulary, width), std::make_tuple(width), std::make_tuple(),
                         std::make_tuple(width), std::make_tuple(), std::make_tuple()),
         sgd, {.micro_batches = 2, .seed = 7}, world);
  for (std::size_t s = 0; s < steps; ++s) CHECK(std::abs(mp.train_step(all) - serial_losses[s]) < 1e-12);
}
