// SPDX-License-Identifier: BSL-1.0
// Suite model_parallel: ColumnParallelLinear, RowParallelLinear and
// ParallelCausalSelfAttention, at every tensor-parallel size t that divides
// the world (1-4 ranks), equal the unsplit layers: forward, backward (input
// gradient, each shard's weight and bias gradients), and whole training
// steps — an MLP block (Column, GELU, Row) and a GPT-style model with split
// attention and MLP — under DataParallel on a d x t grid of
// sub-communicators, against the unsplit models trained serially, to 1e-12
// in double. Sizes that t does not divide, and an input that differs on one
// rank, are one error on every rank.

#include "agreed.hpp"
#include "error_of.hpp"
#include "gradcheck.hpp"
#include "serial_reference.hpp"

#include <parallax/data/batch.hpp>
#include <parallax/data_parallel.hpp>
#include <parallax/detail/tensor_list.hpp>
#include <parallax/nn/activation.hpp>
#include <parallax/nn/attention.hpp>
#include <parallax/nn/embedding.hpp>
#include <parallax/nn/layer_norm.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/loss.hpp>
#include <parallax/nn/position_embedding.hpp>
#include <parallax/nn/residual.hpp>
#include <parallax/nn/sequential.hpp>
#include <parallax/nn/parallel_attention.hpp>
#include <parallax/nn/tensor_parallel.hpp>
#include <parallax/nn/token_cross_entropy.hpp>
#include <parallax/optim/adam.hpp>
#include <parallax/optim/sgd.hpp>

#include <doctest/doctest.h>

#include <boost/mpi/communicator.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

using parallax::mpi::communicator;
using namespace parallax::nn;
using gradcheck::random_tensor;

namespace {

/// The tensor-parallel sizes that divide the world: 1 and the world size,
/// and 2 at 4 ranks.
std::vector<int> tensor_sizes(int world) {
  std::vector<int> out;
  for (int t = 1; t <= world; ++t)
    if (world % t == 0) out.push_back(t);
  return out;
}

/// Ranks [k t, (k + 1) t) form tensor-parallel group k; the ranks with the
/// same position in their group form a data-parallel group.
struct grid {
  communicator tp, dp;
  grid(const communicator& world, int t) : tp(world.split(world.rank() / t)), dp(world.split(world.rank() % t)) {}
};

double max_difference(const double* a, const double* b, std::size_t n) {
  double m = 0;
  for (std::size_t i = 0; i < n; ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

/// max |shard - the block of the unsplit matrix [rows, cols] at (row0, col0)|.
double block_difference(const xt::xtensor<double, 2>& shard, const xt::xtensor<double, 2>& full, std::size_t row0,
                        std::size_t col0) {
  double m = 0;
  for (std::size_t i = 0; i < shard.shape()[0]; ++i)
    for (std::size_t j = 0; j < shard.shape()[1]; ++j) m = std::max(m, std::abs(shard(i, j) - full(row0 + i, col0 + j)));
  return m;
}

double vector_block_difference(const xt::xtensor<double, 1>& shard, const xt::xtensor<double, 1>& full,
                               std::size_t first) {
  return max_difference(shard.data(), full.data() + first, shard.size());
}

/// max |shard - the unsplit matrix's columns| for a column-parallel shard
/// (its column j is the unsplit column unsplit_column(j)).
template <class Column>
double columns_difference(const Column& layer, const xt::xtensor<double, 2>& shard, const xt::xtensor<double, 1>& bias,
                          const xt::xtensor<double, 2>& full, const xt::xtensor<double, 1>& full_bias) {
  double m = 0;
  for (std::size_t j = 0; j < shard.shape()[1]; ++j) {
    const std::size_t c = layer.unsplit_column(j);
    for (std::size_t i = 0; i < shard.shape()[0]; ++i) m = std::max(m, std::abs(shard(i, j) - full(i, c)));
    m = std::max(m, std::abs(bias(j) - full_bias(c)));
  }
  return m;
}

/// The worst of a value over all ranks.
double worst(const communicator& world, double mine) {
  double all = 0;
  parallax::mpi::all_reduce(world, mine, all, parallax::mpi::maximum<double>());
  return all;
}

}  // namespace

TEST_CASE("tensor parallel: Column then Row equal the unsplit pair, forward and backward, at every t") {
  communicator world;
  for (int t : tensor_sizes(world.size())) {
    CAPTURE(t);
    grid g(world, t);
    // in 6 -> hidden 12 -> out 5: 12 divides by 1-4.
    ColumnParallelLinear<double> column(6, 12, g.tp);
    RowParallelLinear<double> row(12, 5, g.tp);
    column.initialize(7, 0);
    row.initialize(7, 2);
    Linear<double> full_column(6, 12), full_row(12, 5);
    full_column.initialize(7, 0);
    full_row.initialize(7, 2);
    // The shards are the unsplit layers' blocks.
    CHECK(block_difference(column.shard().weight(), full_column.weight(), 0, column.first_column()) == 0.0);
    CHECK(vector_block_difference(column.shard().bias(), full_column.bias(), column.first_column()) == 0.0);
    CHECK(block_difference(row.weight(), full_row.weight(), row.first_row(), 0) == 0.0);
    CHECK(row.bias() == full_row.bias());

    const auto x = random_tensor<double, 2>({4, 6}, 11);
    const auto dy = random_tensor<double, 2>({4, 5}, 12);
    xt::xtensor<double, 2> h, y, dh, dx;
    column.forward(x, h);
    row.forward(h, y);
    xt::xtensor<double, 2> fh, fy, fdh, fdx;
    full_column.forward(x, fh);
    full_row.forward(fh, fy);
    REQUIRE(y.shape() == fy.shape());
    CHECK(h.shape()[1] == 12 / static_cast<std::size_t>(t));
    CHECK(worst(world, max_difference(y.data(), fy.data(), y.size())) < 1e-12);
    row.backward(h, y, dy, dh);
    column.backward(x, h, dh, dx);
    full_row.backward(fh, fy, dy, fdh);
    full_column.backward(x, fh, fdh, fdx);
    REQUIRE(dx.shape() == fdx.shape());
    CHECK(worst(world, max_difference(dx.data(), fdx.data(), dx.size())) < 1e-12);
    const auto& [cw, cb] = column.gradients();
    const auto& [fcw, fcb] = full_column.gradients();
    const auto& [rw, rb] = row.gradients();
    const auto& [frw, frb] = full_row.gradients();
    CHECK(worst(world, block_difference(cw, fcw, 0, column.first_column())) < 1e-12);
    CHECK(worst(world, vector_block_difference(cb, fcb, column.first_column())) < 1e-12);
    CHECK(worst(world, block_difference(rw, frw, row.first_row(), 0)) < 1e-12);
    CHECK(worst(world, vector_block_difference(rb, frb, 0)) < 1e-12);
    // Replicated results are the same bits on every rank of the group.
    std::vector<double> first_y(y.begin(), y.end()), first_dx(dx.begin(), dx.end());
    parallax::mpi::broadcast(g.tp, first_y, 0);
    parallax::mpi::broadcast(g.tp, first_dx, 0);
    CHECK(std::equal(first_y.begin(), first_y.end(), y.begin()));
    CHECK(std::equal(first_dx.begin(), first_dx.end(), dx.begin()));
  }
}

TEST_CASE("tensor parallel: an MLP block trained under DataParallel on a d x t grid equals the unsplit block serially") {
  communicator world;
  using batch = parallax::data::Batch<xt::xtensor<double, 2>, xt::xtensor<std::int32_t, 1>>;
  // 12 samples of 6 features, 3 classes: every d in 1-4 divides 12.
  batch all{random_tensor<double, 2>({12, 6}, 21), xt::xtensor<std::int32_t, 1>(xt::zeros<std::int32_t>({12}))};
  for (std::size_t i = 0; i < 12; ++i) all.targets(i) = static_cast<std::int32_t>((i * 7) % 3);
  const parallax::optim::SGD<double> sgd({.lr = 0.3, .momentum = 0.9});
  const parallax::optim::Adam<double> adam({.lr = 0.01});
  for (const parallax::optim::Optimizer<double>* optimizer :
       std::vector<const parallax::optim::Optimizer<double>*>{&sgd, &adam}) {
    // Serial: the unsplit block on the whole batch.
    Sequential serial{Linear<double>(6, 12), GELU<double>{}, Linear<double>(12, 6), Tanh<double>{},
                      Linear<double>(6, 3), SoftmaxCrossEntropy<double>{}};
    serial.initialize(5);
    const auto losses = serial::train_on(serial, all, *optimizer, 4);
    for (int t : tensor_sizes(world.size())) {
      CAPTURE(t);
      grid g(world, t);
      Sequential net{ColumnParallelLinear<double>(6, 12, g.tp), GELU<double>{}, RowParallelLinear<double>(12, 6, g.tp),
                     Tanh<double>{}, Linear<double>(6, 3), SoftmaxCrossEntropy<double>{}};
      net.initialize(5);
      parallax::DataParallel dp(std::move(net), *optimizer, {}, g.dp);
      // Each data-parallel rank its block of rows.
      const std::size_t d = static_cast<std::size_t>(g.dp.size()), n = 12 / d,
                        first = n * static_cast<std::size_t>(g.dp.rank());
      batch mine;
      parallax::data::slice_rows(all.inputs, first, n, mine.inputs);
      parallax::data::slice_rows(all.targets, first, n, mine.targets);
      double loss_error = 0;
      for (int s = 0; s < 4; ++s) loss_error = std::max(loss_error, std::abs(dp.train_step(mine) - losses[s]));
      CHECK(worst(world, loss_error) < 1e-12);
      auto& m = dp.model();
      const auto& c = m.layer<0>();
      const auto& r = m.layer<2>();
      double e = block_difference(c.shard().weight(), serial.layer<0>().weight(), 0, c.first_column());
      e = std::max(e, vector_block_difference(c.shard().bias(), serial.layer<0>().bias(), c.first_column()));
      e = std::max(e, block_difference(r.weight(), serial.layer<2>().weight(), r.first_row(), 0));
      e = std::max(e, vector_block_difference(r.bias(), serial.layer<2>().bias(), 0));
      e = std::max(e, block_difference(m.layer<4>().weight(), serial.layer<4>().weight(), 0, 0));
      CHECK(worst(world, e) < 1e-12);
    }
  }
}

TEST_CASE("tensor parallel: sizes t does not divide, and an input that differs on one rank, are one error everywhere") {
  communicator world;
  if (world.size() < 2) return;  // nothing is cut at t = 1
  const int t = world.size();
  const std::size_t odd = static_cast<std::size_t>(t) * 3 + 1;
  const auto e1 = agreed_error(world, [&] { ColumnParallelLinear<float>(4, odd, world); });
  CHECK(contains(e1, "ColumnParallelLinear: the tensor-parallel size " + std::to_string(t) +
                                 " does not divide the output width " + std::to_string(odd)));
  const auto e2 = agreed_error(world, [&] { RowParallelLinear<float>(odd, 4, world); });
  CHECK(contains(e2, "does not divide the input width " + std::to_string(odd)));
  ColumnParallelLinear<double> column(4, 2 * static_cast<std::size_t>(t), world);
  RowParallelLinear<double> row(2 * static_cast<std::size_t>(t), 3, world);
  CHECK(column.describe() == "ColumnParallelLinear(4 -> " + std::to_string(2 * t) + ", 2 columns on each of " +
                                 std::to_string(t) + " ranks)");
  CHECK(row.describe() == "RowParallelLinear(" + std::to_string(2 * t) + " -> 3, 2 rows on each of " +
                              std::to_string(t) + " ranks)");
  CHECK(column.output_shape({5, 4}) == std::vector<std::size_t>{5, 2});
  CHECK(row.output_shape({5, 2}) == std::vector<std::size_t>{5, 3});
  // Rank 1's input has the wrong width: every rank throws, none waits.
  xt::xtensor<double, 2> x = xt::zeros<double>({std::size_t(2), std::size_t(world.rank() == 1 ? 5 : 4)}), h, y;
  const auto e3 = agreed_error(world, [&] { column.forward(x, h); });
  CHECK(contains(e3, "Linear::forward(): input has 5 features, expected 4"));
  // Rank 0 has one more row: the all-reduce sizes differ, and every rank says so.
  xt::xtensor<double, 2> hx = xt::zeros<double>({std::size_t(world.rank() == 0 ? 3 : 2), std::size_t(2)});
  const auto e4 = agreed_error(world, [&] { row.forward(hx, y); });
  CHECK(contains(e4, "RowParallelLinear::forward(): the output's shape: settings differ between ranks"));
  // The same number of values in another shape is caught too.
  xt::xtensor<double, 3> swapped = xt::zeros<double>(
      {std::size_t(world.rank() == 0 ? 2 : 3), std::size_t(world.rank() == 0 ? 3 : 2), std::size_t(2)});
  xt::xtensor<double, 3> y3;
  RowParallelLinear<double, 3> row3(2 * static_cast<std::size_t>(t), 3, world);
  const auto e5 = agreed_error(world, [&] { row3.forward(swapped, y3); });
  CHECK(contains(e5, "the output's shape: settings differ between ranks"));
  // Layers built with other sizes on one rank: one error naming them.
  const auto e6 = agreed_error(world, [&] {
    ColumnParallelLinear<float>(4, static_cast<std::size_t>(t) * (world.rank() == 1 ? 4 : 2), world);
  });
  CHECK(contains(e6, "ColumnParallelLinear: settings differ between ranks"));
  const auto e7 = agreed_error(world, [&] { ColumnParallelLinear<float>(4, 10, world, 3); });
  CHECK(contains(e7, "3 output groups do not divide the output width 10"));
  // Rank 0 failed before the group's collective and went on to its trainer's
  // step while the others entered the layer: one rank_mismatch naming both
  // operations, not a hang. On a duplicate: it stays out of step afterwards.
  communicator dup(world, parallax::mpi::comm_duplicate);
  ColumnParallelLinear<double> on_dup(4, 2 * static_cast<std::size_t>(t), dup);
  RowParallelLinear<double> row_on_dup(2 * static_cast<std::size_t>(t), 3, dup);
  xt::xtensor<double, 2> good = xt::zeros<double>({std::size_t(2), std::size_t(4)});
  const auto e8 = agreed_error(dup, [&] {
    if (dup.rank() == 0) {
      parallax::operation op(dup, "DataParallel::train_step()");
    } else {
      on_dup.forward(good, h);
      row_on_dup.forward(h, y);
    }
  });
  CHECK(contains(e8, "ranks are in different library operations"));
  CHECK(contains(e8, "ColumnParallelLinear::forward()"));
  CHECK(contains(e8, "DataParallel::train_step()"));
}

TEST_CASE("tensor parallel: ParallelCausalSelfAttention equals CausalSelfAttention at every t, forward and backward") {
  communicator world;
  for (int t : tensor_sizes(world.size())) {
    CAPTURE(t);
    grid g(world, t);
    // 12 heads of width 2: t = 1-4 divides them.
    ParallelCausalSelfAttention<double> split(24, 12, g.tp);
    CausalSelfAttention<double> whole(24, 12);
    split.initialize(3, 1);
    whole.initialize(3, 1);
    CHECK(split.local_heads() == 12 / static_cast<std::size_t>(t));
    const auto x = random_tensor<double, 3>({2, 5, 24}, 31);
    const auto dy = random_tensor<double, 3>({2, 5, 24}, 32);
    xt::xtensor<double, 3> y, dx, fy, fdx;
    split.forward(x, y);
    whole.forward(x, fy);
    CHECK(worst(world, max_difference(y.data(), fy.data(), y.size())) < 1e-12);
    split.backward(x, y, dy, dx);
    whole.backward(x, fy, dy, fdx);
    CHECK(worst(world, max_difference(dx.data(), fdx.data(), dx.size())) < 1e-12);
    const auto& [sqw, sqb, sow, sob] = split.gradients();
    const auto& [fqw, fqb, fow, fob] = whole.gradients();
    CHECK(worst(world, columns_difference(split.qkv(), sqw, sqb, fqw, fqb)) < 1e-12);
    CHECK(worst(world, block_difference(sow, fow, split.output().first_row(), 0)) < 1e-12);
    CHECK(worst(world, vector_block_difference(sob, fob, 0)) < 1e-12);
    // The weights themselves are the unsplit layer's blocks.
    const auto& [pqw, pqb, pow_, pob] = split.parameters();
    const auto& [wqw, wqb, wow, wob] = whole.parameters();
    CHECK(columns_difference(split.qkv(), pqw, pqb, wqw, wqb) == 0.0);
    CHECK(block_difference(pow_, wow, split.output().first_row(), 0) == 0.0);
    CHECK(pob == wob);
  }
}

namespace {

constexpr std::size_t V = 7, W = 24, C = 6, H = 12;
using ids = xt::xtensor<std::int64_t, 2>;
using token_batch = parallax::data::Batch<ids, ids>;

auto serial_gpt() {
  Sequential net{Embedding<double>(V, W),
                 PositionEmbedding<double>(C, W),
                 Residual{LayerNorm<double, 3>(W), CausalSelfAttention<double>(W, H)},
                 Residual{LayerNorm<double, 3>(W), Linear<double, 3>(W, 2 * W), GELU<double, 3>{}, Linear<double, 3>(2 * W, W)},
                 LayerNorm<double, 3>(W),
                 Linear<double, 3>(W, V),
                 TokenCrossEntropy<double>{}};
  net.initialize(13);
  return net;
}

auto split_gpt(const communicator& tp) {
  Sequential net{Embedding<double>(V, W),
                 PositionEmbedding<double>(C, W),
                 Residual{LayerNorm<double, 3>(W), ParallelCausalSelfAttention<double>(W, H, tp)},
                 Residual{LayerNorm<double, 3>(W), ColumnParallelLinear<double, 3>(W, 2 * W, tp), GELU<double, 3>{},
                          RowParallelLinear<double, 3>(2 * W, W, tp)},
                 LayerNorm<double, 3>(W),
                 Linear<double, 3>(W, V),
                 TokenCrossEntropy<double>{}};
  net.initialize(13);
  return net;
}

}  // namespace

TEST_CASE("tensor parallel: a GPT-style model with split attention and MLP on a d x t grid equals the unsplit one serially") {
  communicator world;
  token_batch all;
  all.inputs = xt::zeros<std::int64_t>({std::size_t(12), std::size_t(5)});
  all.targets = xt::zeros<std::int64_t>({std::size_t(12), std::size_t(5)});
  for (std::size_t r = 0; r < 12; ++r)
    for (std::size_t s = 0; s < 5; ++s) {
      all.inputs(r, s) = static_cast<std::int64_t>((r * 5 + s * 3 + 1) % V);
      all.targets(r, s) = static_cast<std::int64_t>((r * 5 + s * 3 + 4) % V);
    }
  // SGD with momentum: Adam divides by the root of each gradient's square,
  // which turns the last bits of a near-zero gradient into visible
  // differences (the MLP test above runs Adam).
  const parallax::optim::SGD<double> sgd({.lr = 0.2, .momentum = 0.9});
  auto serial = serial_gpt();
  const auto losses = serial::train_on(serial, all, sgd, 3);
  CHECK(losses.back() < losses.front());
  for (int t : tensor_sizes(world.size())) {
    CAPTURE(t);
    grid g(world, t);
    parallax::DataParallel dp(split_gpt(g.tp), sgd, {}, g.dp);
    const std::size_t n = 12 / static_cast<std::size_t>(g.dp.size()), first = n * static_cast<std::size_t>(g.dp.rank());
    token_batch mine;
    parallax::data::slice_rows(all.inputs, first, n, mine.inputs);
    parallax::data::slice_rows(all.targets, first, n, mine.targets);
    double loss_error = 0;
    for (int s = 0; s < 3; ++s) loss_error = std::max(loss_error, std::abs(dp.train_step(mine) - losses[s]));
    CHECK(worst(world, loss_error) < 1e-12);
    // The replicated layers, and the attention's output bias, against the serial model's.
    auto& m = dp.model();
    double e = max_difference(m.layer<0>().weight().data(), serial.layer<0>().weight().data(), V * W);
    e = std::max(e, max_difference(m.layer<5>().weight().data(), serial.layer<5>().weight().data(), W * V));
    const auto& attention = m.layer<2>().layer<1>();
    const auto& whole = serial.layer<2>().layer<1>();
    e = std::max(e, columns_difference(attention.qkv(), attention.qkv().shard().weight(), attention.qkv().shard().bias(),
                                       whole.qkv().weight(), whole.qkv().bias()));
    e = std::max(e, block_difference(attention.output().weight(), whole.output().weight(), attention.output().first_row(), 0));
    CHECK(worst(world, e) < 1e-12);
  }
}

TEST_CASE("tensor parallel: heads that t does not divide are one error on every rank") {
  communicator world;
  if (world.size() < 2) return;
  const std::size_t heads = static_cast<std::size_t>(world.size()) + 1;
  const auto mixed = agreed_error(world, [&] {
    ParallelCausalSelfAttention<float>(16 * static_cast<std::size_t>(world.size()),
                                       static_cast<std::size_t>(world.size()) * (world.rank() == 1 ? 2 : 1), world);
  });
  CHECK(contains(mixed, "ParallelCausalSelfAttention: settings differ between ranks"));
  const auto named = agreed_error(world, [&] { ParallelCausalSelfAttention<float>(8, 3, world); });
  CHECK(contains(named, "ParallelCausalSelfAttention: 3 heads do not divide the width 8"));
  const auto e = agreed_error(world, [&] { ParallelCausalSelfAttention<float>(heads * 2, heads, world); });
  CHECK(contains(e, "ParallelCausalSelfAttention: the tensor-parallel size " + std::to_string(world.size()) +
                        " does not divide the " + std::to_string(heads) + " heads"));
  ParallelCausalSelfAttention<float> a(8 * static_cast<std::size_t>(world.size()), 2 * static_cast<std::size_t>(world.size()), world);
  CHECK(a.describe() == "ParallelCausalSelfAttention(" + std::to_string(8 * world.size()) + ", " +
                            std::to_string(2 * world.size()) + " heads, 2 on each of " + std::to_string(world.size()) +
                            " ranks)");
  xt::xtensor<float, 3> x = xt::zeros<float>({std::size_t(1), std::size_t(2), std::size_t(world.rank() == 0 ? 3 : 8 * world.size())}), y;
  const auto bad = agreed_error(world, [&] { a.forward(x, y); });
  CHECK(contains(bad, "ParallelCausalSelfAttention::forward(): input of shape (1, 2, 3) has width 3"));
}
