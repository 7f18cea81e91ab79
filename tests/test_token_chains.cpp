// SPDX-License-Identifier: BSL-1.0
// Suite model_parallel: chains of the transformer layers (Embedding of
// int64 token ids, LayerNorm, GELU, TokenCrossEntropy; then a GPT-style
// model with position embeddings and pre-norm attention and MLP blocks in
// Residual) train alike serially, under DataParallel (each rank its rows of
// the batch) and under ModelParallel (one stage per rank), at 1 to 4 ranks:
// the same loss at every step and the same parameters, to 1e-12 in double.

#include <parallax/data/batch.hpp>
#include <parallax/data_parallel.hpp>
#include <parallax/detail/tensor_list.hpp>
#include <parallax/model_parallel.hpp>
#include <parallax/nn/activation.hpp>
#include <parallax/nn/attention.hpp>
#include <parallax/nn/embedding.hpp>
#include <parallax/nn/layer_norm.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/position_embedding.hpp>
#include <parallax/nn/residual.hpp>
#include <parallax/nn/sequential.hpp>
#include <parallax/nn/token_cross_entropy.hpp>
#include <parallax/optim/sgd.hpp>

#include "serial_reference.hpp"

#include <doctest/doctest.h>

#include <boost/mpi/communicator.hpp>

#include <algorithm>
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

using serial::flat;
using serial::max_difference;

/// Trains `net` on `all` for `steps` steps with the optimizer by hand; the loss of every step.
template <class Net>
std::vector<double> train_serial(Net& net, const batch& all, const parallax::optim::Optimizer<double>& optimizer) {
  return serial::train_on(net, all, optimizer, steps);
}

/// This rank's block of rows of `all` (the row count divides among 1-4 ranks).
batch my_rows(const parallax::mpi::communicator& world, const batch& all) {
  const std::size_t n = all.inputs.shape()[0] / static_cast<std::size_t>(world.size());
  batch mine;
  parallax::data::slice_rows(all.inputs, n * static_cast<std::size_t>(world.rank()), n, mine.inputs);
  parallax::data::slice_rows(all.targets, n * static_cast<std::size_t>(world.rank()), n, mine.targets);
  return mine;
}

}  // namespace

TEST_CASE("token chains: serial, DataParallel and ModelParallel train alike") {
  parallax::mpi::communicator world;
  const auto all = token_batch();
  const parallax::optim::SGD<double> sgd({.lr = 0.5, .momentum = 0.9});

  // Serial: the whole batch, the optimizer by hand.
  auto serial = make_chain();
  const auto serial_losses = train_serial(serial, all, sgd);
  CHECK(serial_losses.back() < serial_losses.front());  // it learns

  // DataParallel: each rank its block of rows.
  parallax::DataParallel dp(make_chain(), sgd, {}, world);
  const batch mine = my_rows(world, all);
  for (std::size_t s = 0; s < steps; ++s) CHECK(std::abs(dp.train_step(mine) - serial_losses[s]) < 1e-12);
  CHECK(max_difference(flat(dp.model().parameters()), flat(serial.parameters())) < 1e-12);

  // ModelParallel: five layers over up to four stages, two micro-batches.
  parallax::ModelParallel<Embedding<double>, LayerNorm<double, 3>, GELU<double, 3>, LayerNorm<double, 3>,
                          GELU<double, 3>, TokenCrossEntropy<double>>
      mp(std::make_tuple(std::make_tuple(vocabulary, width), std::make_tuple(width), std::make_tuple(),
                         std::make_tuple(width), std::make_tuple(), std::make_tuple()),
         sgd, {.micro_batches = 2, .seed = 7}, world);
  for (std::size_t s = 0; s < steps; ++s) CHECK(std::abs(mp.train_step(all) - serial_losses[s]) < 1e-12);
}

namespace {

constexpr std::size_t gpt_vocabulary = 7, gpt_width = 8, gpt_context = 6, gpt_heads = 2;

using AttentionBlock = Residual<LayerNorm<double, 3>, CausalSelfAttention<double>>;
using MlpBlock = Residual<LayerNorm<double, 3>, Linear<double, 3>, GELU<double, 3>, Linear<double, 3>>;

AttentionBlock attention_block() {
  return AttentionBlock{LayerNorm<double, 3>(gpt_width), CausalSelfAttention<double>(gpt_width, gpt_heads)};
}
MlpBlock mlp_block() {
  return MlpBlock{LayerNorm<double, 3>(gpt_width), Linear<double, 3>(gpt_width, 2 * gpt_width), GELU<double, 3>{},
                  Linear<double, 3>(2 * gpt_width, gpt_width)};
}

auto make_gpt() {
  Sequential net{Embedding<double>(gpt_vocabulary, gpt_width), PositionEmbedding<double>(gpt_context, gpt_width),
                 attention_block(), mlp_block(), LayerNorm<double, 3>(gpt_width),
                 Linear<double, 3>(gpt_width, gpt_vocabulary), TokenCrossEntropy<double>{}};
  net.initialize(11);
  return net;
}

/// 12 sequences of 5 tokens (shorter than the context) and the next token of each.
batch gpt_batch() {
  batch b;
  b.inputs = xt::zeros<std::int64_t>({std::size_t(12), std::size_t(5)});
  b.targets = xt::zeros<std::int64_t>({std::size_t(12), std::size_t(5)});
  for (std::size_t r = 0; r < 12; ++r)
    for (std::size_t s = 0; s < 5; ++s) {
      b.inputs(r, s) = static_cast<std::int64_t>((r * 3 + s * s + 1) % gpt_vocabulary);
      b.targets(r, s) = static_cast<std::int64_t>((r * 3 + (s + 1) * (s + 1) + 1) % gpt_vocabulary);
    }
  return b;
}

}  // namespace

TEST_CASE("a GPT-style chain (attention and MLP blocks): serial, DataParallel and ModelParallel train alike") {
  parallax::mpi::communicator world;
  const auto all = gpt_batch();
  const parallax::optim::SGD<double> sgd({.lr = 0.2, .momentum = 0.9});
  auto serial = make_gpt();
  const auto serial_losses = train_serial(serial, all, sgd);
  CHECK(serial_losses.back() < serial_losses.front());

  parallax::DataParallel dp(make_gpt(), sgd, {}, world);
  const batch mine = my_rows(world, all);
  for (std::size_t s = 0; s < steps; ++s) CHECK(std::abs(dp.train_step(mine) - serial_losses[s]) < 1e-12);
  CHECK(max_difference(flat(dp.model().parameters()), flat(serial.parameters())) < 1e-12);

  // Six layers over up to four stages, every schedule, with and without recomputation.
  using Gpt = parallax::ModelParallel<Embedding<double>, PositionEmbedding<double>, AttentionBlock, MlpBlock,
                                      LayerNorm<double, 3>, Linear<double, 3>, TokenCrossEntropy<double>>;
  const auto args = std::make_tuple(
      std::make_tuple(gpt_vocabulary, gpt_width), std::make_tuple(gpt_context, gpt_width),
      std::make_tuple(LayerNorm<double, 3>(gpt_width), CausalSelfAttention<double>(gpt_width, gpt_heads)),
      std::make_tuple(LayerNorm<double, 3>(gpt_width), Linear<double, 3>(gpt_width, 2 * gpt_width), GELU<double, 3>{},
                      Linear<double, 3>(2 * gpt_width, gpt_width)),
      std::make_tuple(gpt_width), std::make_tuple(gpt_width, gpt_vocabulary), std::make_tuple());
  for (auto kind : {parallax::pipeline::schedule_kind::gpipe, parallax::pipeline::schedule_kind::one_f_one_b,
                    parallax::pipeline::schedule_kind::zero_bubble})
    for (bool recompute : {false, true}) {
      CAPTURE(recompute);
      Gpt mp(args, sgd, {.micro_batches = 3, .schedule = kind, .recompute = recompute, .seed = 11}, world);
      for (std::size_t s = 0; s < steps; ++s) CHECK(std::abs(mp.train_step(all) - serial_losses[s]) < 1e-12);
      // Each rank's layers against the serial chain's.
      double worst = 0;
      [&]<std::size_t... I>(std::index_sequence<I...>) {
        (
            [&] {
              if (auto* layer = mp.template layer<I>())
                if constexpr (parallax::HasLayerParameters<std::remove_pointer_t<decltype(layer)>>)
                  worst = std::max(worst, max_difference(flat(layer->parameters()),
                                                         flat(serial.template layer<I>().parameters())));
            }(),
            ...);
      }(std::make_index_sequence<Gpt::layer_count>{});
      CHECK(worst < 1e-12);
    }
}
