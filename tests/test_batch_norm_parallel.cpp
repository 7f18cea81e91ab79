// SPDX-License-Identifier: BSL-1.0
// Suite data_parallel: SyncBatchNorm under DataParallel at 1-4 ranks trains
// as one process with BatchNorm on the global batch (losses, parameters and
// running statistics to 1e-12 in double, with shards of equal and of
// unequal size, SGD with momentum and Adam), where BatchNorm alone
// normalises each rank's shard and drifts away; its errors are one error on
// every rank, and ranks out of step are a rank_mismatch, not a hang. A step
// skipped or failed leaves the running statistics as it found them, under
// DataParallel and ModelParallel.

#include <parallax/core/operation.hpp>
#include <parallax/data/batch.hpp>
#include <parallax/data_parallel.hpp>
#include <parallax/model_parallel.hpp>
#include <parallax/detail/tensor_list.hpp>
#include <parallax/nn/activation.hpp>
#include <parallax/nn/batch_norm.hpp>
#include <parallax/nn/flatten.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/loss.hpp>
#include <parallax/nn/residual.hpp>
#include <parallax/nn/sequential.hpp>
#include <parallax/optim/adam.hpp>
#include <parallax/optim/sgd.hpp>

#include "agreed.hpp"
#include "gradcheck.hpp"
#include "serial_reference.hpp"

#include <doctest/doctest.h>

#include <boost/mpi/communicator.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <tuple>
#include <string>
#include <vector>

namespace {

using namespace parallax::nn;
using parallax::mpi::communicator;
using batch = parallax::data::Batch<xt::xtensor<double, 2>, xt::xtensor<double, 2>>;
using image_batch = parallax::data::Batch<xt::xtensor<double, 4>, xt::xtensor<double, 2>>;
constexpr std::size_t steps = 3;

/// Linear, Tanh, a normalisation, a residual block with another, Linear, MSE:
/// Norm is BatchNorm serially and SyncBatchNorm under DataParallel.
template <class Norm, class... Comm>
auto make_net(const Comm&... comm) {
  // Tanh before each normalisation: a bias straight before one has a zero
  // gradient, rounding noise that Adam would scale up to whole steps.
  Sequential net{Linear<double>(3, 5),
                 Tanh<double>{},
                 Norm(5, comm..., 0.2),
                 Residual{Linear<double>(5, 5), Tanh<double>{}, Norm(5, comm...)},
                 Linear<double>(5, 2),
                 MeanSquaredError<double>{}};
  net.initialize(9);
  return net;
}

batch make_batch(std::size_t rows) {
  batch b;
  b.inputs = gradcheck::random_tensor<double, 2>({rows, 3}, 31, 2.0);
  b.targets = gradcheck::random_tensor<double, 2>({rows, 2}, 32);
  return b;
}

/// Rows [r n / size, (r + 1) n / size) of `all`: shards of unequal size when size does not divide n.
template <class B>
B my_rows(const communicator& world, const B& all) {
  const std::size_t n = all.inputs.shape()[0];
  const auto r = static_cast<std::size_t>(world.rank()), size = static_cast<std::size_t>(world.size());
  const std::size_t begin = r * n / size, end = (r + 1) * n / size;
  B mine;
  parallax::data::slice_rows(all.inputs, begin, end - begin, mine.inputs);
  parallax::data::slice_rows(all.targets, begin, end - begin, mine.targets);
  return mine;
}

using serial::flat;
using serial::max_difference;

}  // namespace

TEST_CASE("SyncBatchNorm under DataParallel equals one process with BatchNorm on the global batch") {
  communicator world;
  const parallax::optim::SGD<double> sgd({.lr = 0.1, .momentum = 0.9});
  const parallax::optim::Adam<double> adam({.lr = 0.01});
  // 12 rows divide among 1-4 ranks; 10 rows give shards of 4, 3, 3 and of 3, 3, 2, 2.
  for (const std::size_t rows : {std::size_t(12), std::size_t(10)})
    for (const parallax::optim::Optimizer<double>* optimizer :
         std::vector<const parallax::optim::Optimizer<double>*>{&sgd, &adam}) {
      CAPTURE(rows);
      CAPTURE(optimizer->state_view().kind);
      const batch all = make_batch(rows);
      auto serial = make_net<BatchNorm<double>>();
      const auto losses = serial::train_on(serial, all, *optimizer, steps);
      CHECK(losses.back() < losses.front());

      parallax::DataParallel dp(make_net<SyncBatchNorm<double>>(world), *optimizer, {}, world);
      const batch mine = my_rows(world, all);
      for (std::size_t s = 0; s < steps; ++s) CHECK(std::abs(dp.train_step(mine) - losses[s]) < 1e-12);
      CHECK(max_difference(flat(dp.model().parameters()), flat(serial.parameters())) < 1e-12);
      CHECK(max_difference(flat(dp.model().buffers()), flat(serial.buffers())) < 1e-12);
      // The running statistics moved: they are not the initial 0 and 1.
      CHECK(std::abs(flat(serial.buffers())[0]) > 1e-3);
      // Eval mode uses them and communicates nothing: evaluate on every rank's shard.
      serial.set_training(false);
      const auto report = dp.evaluate(parallax::data::TensorDataset(all.inputs, all.targets));
      CHECK(std::abs(report.loss - serial.loss(all)) < 1e-12);
    }
}

TEST_CASE("SyncBatchNorm over channels of images equals BatchNorm<T, 4> on the global batch") {
  communicator world;
  const parallax::optim::SGD<double> sgd({.lr = 0.05});
  auto make = [&](auto norm) {
    Sequential net{norm, Flatten<double, 4>{}, Linear<double>(2 * 3 * 2, 2), MeanSquaredError<double>{}};
    net.initialize(3);
    return net;
  };
  image_batch all;
  all.inputs = gradcheck::random_tensor<double, 4>({8, 2, 3, 2}, 41, 3.0);
  all.targets = gradcheck::random_tensor<double, 2>({8, 2}, 42);
  auto serial = make(BatchNorm<double, 4>(2));
  const auto losses = serial::train_on(serial, all, sgd, steps);
  parallax::DataParallel dp(make(SyncBatchNorm<double, 4>(2, world)), sgd, {}, world);
  const auto mine = my_rows(world, all);
  for (std::size_t s = 0; s < steps; ++s) CHECK(std::abs(dp.train_step(mine) - losses[s]) < 1e-12);
  CHECK(max_difference(flat(dp.model().parameters()), flat(serial.parameters())) < 1e-12);
  CHECK(max_difference(flat(dp.model().buffers()), flat(serial.buffers())) < 1e-12);
}

TEST_CASE("BatchNorm without Sync under DataParallel normalises each shard: it differs from one process") {
  // What SyncBatchNorm is for: with more than one rank, per-shard
  // statistics give other gradients (PyTorch DDP's BatchNorm alike).
  communicator world;
  if (world.size() < 2) return;
  const parallax::optim::SGD<double> sgd({.lr = 0.1, .momentum = 0.9});
  const batch all = make_batch(12);
  auto serial = make_net<BatchNorm<double>>();
  (void)serial::train_on(serial, all, sgd, steps);
  parallax::DataParallel dp(make_net<BatchNorm<double>>(), sgd, {}, world);
  const batch mine = my_rows(world, all);
  for (std::size_t s = 0; s < steps; ++s) (void)dp.train_step(mine);
  CHECK(max_difference(flat(dp.model().parameters()), flat(serial.parameters())) > 1e-4);
}

TEST_CASE("SyncBatchNorm: errors are one error on every rank, ranks out of step a rank_mismatch") {
  communicator world;
  const auto r = static_cast<std::size_t>(world.rank());
  // Channel counts that differ between ranks.
  if (world.size() > 1) {
    const auto e = agreed_error(world, [&] { SyncBatchNorm<double>(r == 1 ? 3 : 4, world); });
    CHECK(e.find("SyncBatchNorm: settings differ between ranks") != std::string::npos);
  }
  if (world.size() > 1) {
    const auto e = agreed_error(world, [&] { SyncBatchNorm<double>(4, world, r == 1 ? 0.2 : 0.1); });
    CHECK(e.find("SyncBatchNorm: settings differ between ranks") != std::string::npos);
    CHECK(e.find("momentum") != std::string::npos);
    const auto bad_eps = agreed_error(world, [&] { SyncBatchNorm<double>(4, world, 0.1, r == 0 ? -1.0 : -1.0); });
    CHECK(bad_eps.find("eps must be finite and >= 0, got -1") != std::string::npos);
  }
  SyncBatchNorm<double> norm(4, world);
  CHECK(norm.describe() == "SyncBatchNorm(4, over " + std::to_string(world.size()) +
                               (world.size() == 1 ? " rank)" : " ranks)"));
  CHECK(norm.communicator().size() == world.size());
  // One rank's input with the wrong channel count: every rank throws its error.
  xt::xtensor<double, 2> x({3, r == 0 ? std::size_t(5) : std::size_t(4)}, 1.0), y;
  const auto bad = agreed_error(world, [&] { norm.forward(x, y); });
  CHECK(bad.find("SyncBatchNorm::forward(): input of shape (3, 5) has 5 channels (extent 1), expected 4") !=
        std::string::npos);
  // A single value per channel over all ranks together.
  xt::xtensor<double, 2> one({r == 0 ? std::size_t(1) : std::size_t(0), 4}, 1.0);
  const auto single = agreed_error(world, [&] { norm.forward(one, y); });
  CHECK(single.find("SyncBatchNorm(4): training needs more than one value per channel, got 1 over every rank") == 0);
  // Rank 0 went on to another library operation (as after a failure in an
  // earlier layer) while the others normalise: one rank_mismatch, no hang.
  // On a duplicate: a mismatch leaves its communicator out of step.
  if (world.size() > 1) {
    communicator dup(world, parallax::mpi::comm_duplicate);
    SyncBatchNorm<double> on_dup(4, dup);
    xt::xtensor<double, 2> good({3, 4}, 1.0);
    const auto e = agreed_error(dup, [&] {
      if (dup.rank() == 0) {
        parallax::operation op(dup, "DataParallel::train_step()");
      } else {
        on_dup.forward(good, y);
      }
    });
    CHECK(e.find("ranks are in different library operations") != std::string::npos);
    CHECK(e.find("SyncBatchNorm::forward()") != std::string::npos);
  }
}

namespace {

/// Every buffer of a trainer's model on this rank, in order (visited as
/// the checkpoints do).
template <class Trainer>
std::vector<double> trainer_buffers(Trainer& t) {
  std::vector<double> out;
  t.for_each_keyed_buffer([&](std::uint64_t, std::uint64_t, auto& b) { out.insert(out.end(), b.begin(), b.end()); });
  return out;
}

/// A copy of b whose first target is NaN (the loss and the gradients NaN;
/// the statistics of the inputs stay finite) or, with `inputs`, whose first
/// input is NaN (the statistics of its channel NaN too).
batch poisoned(batch b, bool inputs) {
  (inputs ? b.inputs : b.targets)(0, 0) = std::numeric_limits<double>::quiet_NaN();
  return b;
}

}  // namespace

TEST_CASE_TEMPLATE("DataParallel: a skipped or failed step leaves the running statistics as it found them", Norm,
                   BatchNorm<double>, SyncBatchNorm<double>) {
  communicator world;
  const parallax::optim::SGD<double> sgd({.lr = 0.1, .momentum = 0.9});
  const batch all = make_batch(12);
  const batch mine = my_rows(world, all);
  auto make = [&] {
    if constexpr (std::is_same_v<Norm, SyncBatchNorm<double>>) return make_net<Norm>(world);
    else return make_net<Norm>();
  };
  const auto skip = parallax::nonfinite_policy::skip_step;
  // NaN targets (finite statistics) and NaN inputs (NaN statistics).
  const std::vector<bool> nan_inputs{false, true};
  SUBCASE("skip_step") {
    for (const bool in_inputs : nan_inputs) {
      CAPTURE(in_inputs);
      parallax::DataParallel dp(make(), sgd, {.on_nonfinite = skip}, world);
      (void)dp.train_step(mine);
      const auto before = trainer_buffers(dp);
      const auto parameters = flat(dp.model().parameters());
      (void)dp.train_step(poisoned(mine, in_inputs));
      CHECK(dp.skipped_steps() == 1);
      CHECK(trainer_buffers(dp) == before);
      CHECK(flat(dp.model().parameters()) == parameters);
      (void)dp.train_step(mine);  // a good step moves them again
      CHECK(trainer_buffers(dp) != before);
      if constexpr (std::is_same_v<Norm, SyncBatchNorm<double>>) {
        // Two good steps, as one process with BatchNorm on the global batch.
        auto serial = make_net<BatchNorm<double>>();
        (void)serial::train_on(serial, all, sgd, 2);
        CHECK(max_difference(flat(dp.model().buffers()), flat(serial.buffers())) < 1e-12);
        CHECK(max_difference(flat(dp.model().parameters()), flat(serial.parameters())) < 1e-12);
      }
    }
  }
  SUBCASE("skip_step after two accumulated micro-steps, the second poisoned") {
    for (const bool in_inputs : nan_inputs) {
      CAPTURE(in_inputs);
      parallax::DataParallel dp(make(), sgd, {.accumulation_steps = 2, .on_nonfinite = skip}, world);
      const auto before = trainer_buffers(dp);
      (void)dp.train_step(mine);
      CHECK(trainer_buffers(dp) != before);  // the first micro-step moved them
      (void)dp.train_step(poisoned(mine, in_inputs));
      CHECK(dp.skipped_steps() == 1);
      CHECK(trainer_buffers(dp) == before);
    }
  }
  SUBCASE("the error policy: every rank throws, the statistics as before") {
    for (const bool in_inputs : nan_inputs) {
      CAPTURE(in_inputs);
      parallax::DataParallel dp(make(), sgd, {}, world);
      (void)dp.train_step(mine);
      const auto before = trainer_buffers(dp);
      const auto e = agreed_error(world, [&] { (void)dp.train_step(poisoned(mine, in_inputs)); });
      CHECK(e.find("is not finite") != std::string::npos);
      CHECK(trainer_buffers(dp) == before);
    }
  }
  SUBCASE("one rank's input of another width: the agreed error, the statistics as before on every rank") {
    parallax::DataParallel dp(make(), sgd, {}, world);
    (void)dp.train_step(mine);
    const auto before = trainer_buffers(dp);
    batch wrong = mine;
    if (world.rank() == world.size() - 1) wrong.inputs = xt::zeros<double>({mine.inputs.shape()[0], std::size_t(4)});
    if constexpr (std::is_same_v<Norm, BatchNorm<double>>) {
      // The other ranks' backward moved theirs before the step failed.
      const auto e = agreed_error(world, [&] { (void)dp.train_step(wrong); });
      CHECK(e.find("Linear(3 -> 5)") != std::string::npos);
      CHECK(trainer_buffers(dp) == before);
    }
  }
}

TEST_CASE("ModelParallel: a skipped or failed step leaves the running statistics as it found them") {
  communicator world;
  using Pipe =
      parallax::ModelParallel<Linear<double>, Tanh<double>, BatchNorm<double>, Linear<double>, MeanSquaredError<double>>;
  const auto args = std::tuple{std::tuple{3, 4}, std::tuple{}, std::tuple{4}, std::tuple{4, 2}, std::tuple{}};
  const parallax::optim::SGD<double> sgd({.lr = 0.1});
  batch b = make_batch(8);
  b.inputs += 1.0;  // the running mean moves off 0
  for (const auto policy : {parallax::nonfinite_policy::skip_step, parallax::nonfinite_policy::error})
    for (const auto schedule : {parallax::pipeline::schedule_kind::gpipe, parallax::pipeline::schedule_kind::one_f_one_b,
                                parallax::pipeline::schedule_kind::zero_bubble}) {
      CAPTURE(static_cast<int>(policy));
      Pipe pipe(args, sgd, {.micro_batches = 2, .schedule = schedule, .seed = 5, .on_nonfinite = policy}, world);
      (void)pipe.train_step(b);
      const auto before = trainer_buffers(pipe);
      for (const bool nan_inputs : {false, true}) {
        if (policy == parallax::nonfinite_policy::skip_step) {
          (void)pipe.train_step(poisoned(b, nan_inputs));
        } else {
          const auto e = agreed_error(world, [&] { (void)pipe.train_step(poisoned(b, nan_inputs)); });
          CHECK(e.find("is not finite") != std::string::npos);
        }
        CHECK(trainer_buffers(pipe) == before);
      }
      (void)pipe.train_step(b);
      // The stage holding the BatchNorm sees them move again.
      if (!before.empty()) CHECK(trainer_buffers(pipe) != before);
    }
}

TEST_CASE("SyncBatchNorm combines ranks, so do the chains that hold one; DataParallel refuses it reproducible_atom") {
  communicator world;
  static_assert(parallax::CombinesRanks<SyncBatchNorm<double>>);
  static_assert(parallax::CombinesRanks<SyncBatchNorm<float, 4>>);
  static_assert(!parallax::CombinesRanks<BatchNorm<double>>);
  static_assert(!parallax::CombinesRanks<Linear<double>>);
  using Synced = decltype(make_net<SyncBatchNorm<double>>(world));
  using Plain = decltype(make_net<BatchNorm<double>>());
  static_assert(parallax::CombinesRanks<Synced>);
  static_assert(!parallax::CombinesRanks<Plain>);
  static_assert(parallax::CombinesRanks<Residual<Linear<double>, SyncBatchNorm<double>>>);
  static_assert(!parallax::CombinesRanks<Residual<Linear<double>, BatchNorm<double>>>);
  // Only inside a Residual: the Sequential sees it through the Residual.
  using Inner = decltype(Sequential{Linear<double>(3, 3), Residual{Linear<double>(3, 3), SyncBatchNorm<double>(3, world)},
                                    MeanSquaredError<double>{}});
  static_assert(parallax::CombinesRanks<Inner>);

  const parallax::optim::SGD<double> sgd({.lr = 0.1});
  const auto e = agreed_error(world, [&] {
    parallax::DataParallel dp(make_net<SyncBatchNorm<double>>(world), sgd, {.reproducible_atom = 2}, world);
  });
  CHECK(e.find("DataParallel: reproducible_atom does not go with a model whose layers combine ranks (SyncBatchNorm)") !=
        std::string::npos);
  // Plain BatchNorm has nothing to combine: reproducible mode trains.
  parallax::DataParallel plain(make_net<BatchNorm<double>>(), sgd, {.reproducible_atom = 2}, world);
  CHECK(std::isfinite(plain.train_step(make_batch(8))));
  // And SyncBatchNorm trains without it.
  parallax::DataParallel synced(make_net<SyncBatchNorm<double>>(world), sgd, {}, world);
  CHECK(std::isfinite(synced.train_step(make_batch(8))));
}
