// SPDX-License-Identifier: BSL-1.0
// Suite data_parallel: N-rank DataParallel equals single-process training
// with the same global batch (docs/design.md invariant 2), with accumulation,
// weighted shards, momentum and Adam; local SGD; sharded evaluation; and the
// failures that must end the same way on every rank.

#include "agreed.hpp"
#include "serial_reference.hpp"
#include "toy_model.hpp"

#include <parallax/data_parallel.hpp>
#include <parallax/optim/adam.hpp>
#include <parallax/optim/sgd.hpp>

#include <doctest/doctest.h>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

namespace {

using parallax::mpi::communicator;
constexpr std::size_t features = 5;
constexpr std::size_t hidden = 4;
constexpr std::uint64_t init_seed = 11;

template <class T>
std::vector<std::span<T>> spans_of(auto&& list) {
  std::vector<std::span<T>> out;
  parallax::detail::for_each_tensor(list, [&](auto& t) { out.emplace_back(t.data(), t.size()); });
  return out;
}

template <class T>
std::vector<std::span<const T>> const_spans_of(auto&& list) {
  std::vector<std::span<const T>> out;
  parallax::detail::for_each_tensor(list, [&](auto& t) { out.emplace_back(t.data(), t.size()); });
  return out;
}

/// Single-process training on the sampler's global batches (serial_reference.hpp).
template <class T>
toy::TinyMLP<T> train_serial(const toy::dataset<T>& data, parallax::data::DistributedSampler plan,
                             const parallax::optim::Optimizer<T>& optimizer, std::size_t optimizer_steps,
                             std::size_t accumulate = 1, std::size_t width = hidden) {
  return toy::train_serial(toy::TinyMLP<T>(features, width, init_seed), data, std::move(plan), optimizer,
                           optimizer_steps, accumulate);
}

/// The same steps through DataParallel (micro-steps = optimizer steps * accumulation).
template <class T>
void train_parallel(parallax::DataParallel<toy::TinyMLP<T>>& dp, const toy::dataset<T>& data,
                    parallax::data::DistributedSampler& sampler, std::size_t micro_steps) {
  std::size_t s = 0;
  for (std::size_t i = 0; i < micro_steps; ++i, ++s) {
    if (s == sampler.steps_per_epoch()) {
      sampler.next_epoch();
      s = 0;
    }
    dp.train_step(data.batch(sampler.local_indices(s)));
  }
}

template <class T>
double max_abs_difference(toy::TinyMLP<T>& a, toy::TinyMLP<T>& b) {
  auto pa = spans_of<T>(a.parameters());
  auto pb = spans_of<T>(b.parameters());
  double worst = 0;
  for (std::size_t i = 0; i < pa.size(); ++i)
    for (std::size_t j = 0; j < pa[i].size(); ++j)
      worst = std::max(worst, std::abs(static_cast<double>(pa[i][j]) - static_cast<double>(pb[i][j])));
  return worst;
}

template <class T>
double max_abs_parameter(toy::TinyMLP<T>& a) {
  double worst = 0;
  for (auto p : spans_of<T>(a.parameters()))
    for (auto x : p) worst = std::max(worst, std::abs(static_cast<double>(x)));
  return worst;
}

/// True when every rank holds bitwise the same parameters.
template <class T>
bool replicas_identical(const communicator& comm, toy::TinyMLP<T>& m) {
  std::vector<double> mine;
  for (auto p : spans_of<T>(m.parameters()))
    for (auto x : p) mine.push_back(static_cast<double>(x));
  std::vector<double> root = mine;
  parallax::broadcast(comm, std::span<double>(root), 0);
  int same = mine == root ? 1 : 0;
  int all = 0;
  parallax::mpi::all_reduce(comm, same, all, parallax::mpi::minimum<int>());
  return all == 1;
}

struct equivalence_case {
  const char* name;
  std::size_t global_batch;
  std::size_t accumulation;
  bool weighted;
};

/// Runs DataParallel and the serial reference side by side; returns the max
/// parameter difference, checks replicas stay identical.
template <class T>
double equivalence(const communicator& world, const parallax::optim::Optimizer<T>& opt, equivalence_case c,
                   std::size_t optimizer_steps = 24) {
  const auto data = toy::make_data<T>(101, features, 5);
  parallax::data::sampler_options so{.seed = 3};
  if (c.weighted)
    for (int r = 0; r < world.size(); ++r) so.weights.push_back(r + 1.0);
  parallax::DataParallel dp(toy::TinyMLP<T>(features, hidden, init_seed), opt,
                            {.bucket_bytes = 64, .accumulation_steps = c.accumulation}, world);
  auto sampler = dp.make_sampler(data.size(), c.global_batch, so);
  const auto plan = sampler;  // the serial run replays the same global batches
  train_parallel(dp, data, sampler, optimizer_steps * c.accumulation);
  auto serial = train_serial(data, plan, opt, optimizer_steps, c.accumulation);
  CHECK(dp.optimizer_steps() == optimizer_steps);
  CHECK(replicas_identical(world, dp.model()));
  return max_abs_difference(dp.model(), serial);
}

const equivalence_case cases[] = {
    {"equal shards", 12, 1, false},
    {"global batch not divisible by the rank count", 13, 1, false},
    {"accumulation over 3 micro-steps", 8, 3, false},
    {"weighted shards 1, 2, 3, 4", 20, 1, true},
    {"weighted shards with accumulation", 10, 2, true},
};

}  // namespace

TEST_CASE("DataParallel: double precision equals serial training (SGD, momentum, Adam)") {
  communicator world;
  parallax::optim::SGD<double> sgd({.lr = 0.1});
  parallax::optim::SGD<double> momentum({.lr = 0.05, .momentum = 0.9, .nesterov = true, .weight_decay = 1e-3});
  parallax::optim::Adam<double> adam({.lr = 0.01});
  const parallax::optim::Optimizer<double>* optimizers[] = {&sgd, &momentum, &adam};
  const char* names[] = {"SGD", "SGD+Nesterov momentum", "Adam"};
  for (int o = 0; o < 3; ++o)
    for (const auto& c : cases) {
      const double diff = equivalence<double>(world, *optimizers[o], c);
      CHECK_MESSAGE(diff <= 1e-12, std::string(names[o]) << ", " << std::string(c.name) << ": max |parallel - serial| = " << diff);
    }
}

TEST_CASE("DataParallel: a wide model (gradients on the ring path) equals serial training, and NaN is found there") {
  // 5 x 3000 weights: buckets of 64 KiB and more go through the ring
  // all-reduce, which scales and checks for NaN while it reduces.
  communicator world;
  const std::size_t wide = 3000;
  const auto data = toy::make_data<double>(60, features, 5);
  parallax::optim::SGD<double> sgd({.lr = 1e-4, .momentum = 0.9});
  parallax::data::sampler_options so{.seed = 3};
  for (int r = 0; r < world.size(); ++r) so.weights.push_back(r + 1.0);
  parallax::DataParallel dp(toy::TinyMLP<double>(features, wide, init_seed), sgd, {}, world);
  auto sampler = dp.make_sampler(data.size(), 10, so);
  const auto plan = sampler;
  train_parallel(dp, data, sampler, 12);
  auto serial = train_serial(data, plan, sgd, 12, 1, wide);
  toy::TinyMLP<double> initial(features, wide, init_seed);
  CHECK(max_abs_difference(dp.model(), initial) > 1e-6);  // it trained
  CHECK(max_abs_difference(dp.model(), serial) <= 1e-12);
  CHECK(replicas_identical(world, dp.model()));
  // A NaN on the last rank only is found by every rank.
  auto x = data.inputs();
  x(0, 0) = std::numeric_limits<double>::quiet_NaN();
  const toy::dataset<double> poisoned(x, data.targets());
  std::vector<std::size_t> clean = {2, 3}, bad = {0, 1};
  const bool mine = world.rank() == world.size() - 1;
  const auto message = agreed_error(world, [&] {
    dp.train_step(poisoned.batch(mine ? std::span<const std::size_t>(bad) : std::span<const std::size_t>(clean)));
  });
  CHECK(message.find("is not finite") != std::string::npos);
}

TEST_CASE("DataParallel: float equals serial training within 1e-5 relative") {
  communicator world;
  parallax::optim::SGD<float> momentum({.lr = 0.05, .momentum = 0.9});
  parallax::optim::Adam<float> adam({.lr = 0.01});
  const parallax::optim::Optimizer<float>* optimizers[] = {&momentum, &adam};
  for (auto* opt : optimizers)
    for (const auto& c : cases) {
      const auto data = toy::make_data<float>(101, features, 5);
      const double diff = equivalence<float>(world, *opt, c, 20);
      toy::TinyMLP<float> reference(features, hidden, init_seed);
      const double scale = std::max(1.0, max_abs_parameter(reference));
      CHECK_MESSAGE(diff / scale <= 1e-5, std::string(c.name) << ": relative difference " << diff / scale);
    }
}

TEST_CASE("DataParallel: training actually changes the parameters and lowers the loss") {
  // Guards the equivalence tests against a run where nothing moves.
  communicator world;
  const auto data = toy::make_data<double>(101, features, 5);
  parallax::DataParallel dp(toy::TinyMLP<double>(features, hidden, init_seed), parallax::optim::SGD<double>({.lr = 0.2}),
                            {}, world);
  auto sampler = dp.make_sampler(data.size(), 16, {.seed = 1});
  const auto before = dp.evaluate(data);
  toy::TinyMLP<double> initial(features, hidden, init_seed);
  for (int e = 0; e < 60; ++e) dp.train_epoch(data, sampler);
  const auto after = dp.evaluate(data);
  CHECK(max_abs_difference(dp.model(), initial) > 1e-2);
  CHECK(after.loss < 0.5 * before.loss);
  CHECK(sampler.epoch() == 60);
}

TEST_CASE("DataParallel: parameters are broadcast from rank 0 at construction") {
  communicator world;
  // Every rank starts from a different initialisation.
  parallax::DataParallel dp(toy::TinyMLP<double>(features, hidden, 100 + static_cast<std::uint64_t>(world.rank())),
                            parallax::optim::SGD<double>(), {}, world);
  toy::TinyMLP<double> rank0(features, hidden, 100);
  CHECK(max_abs_difference(dp.model(), rank0) == 0.0);
}

TEST_CASE("DataParallel: local SGD with k = 1 equals synchronous SGD") {
  communicator world;
  const auto data = toy::make_data<double>(101, features, 5);
  parallax::optim::SGD<double> sgd({.lr = 0.1});
  parallax::optim::SGD<double> momentum({.lr = 0.05, .momentum = 0.9});
  for (const parallax::optim::Optimizer<double>* opt : {static_cast<const parallax::optim::Optimizer<double>*>(&sgd),
                                                        static_cast<const parallax::optim::Optimizer<double>*>(&momentum)}) {
    for (bool weighted : {false, true}) {
      parallax::data::sampler_options so{.seed = 9};
      if (weighted)
        for (int r = 0; r < world.size(); ++r) so.weights.push_back(1.0 + r);
      parallax::DataParallel sync(toy::TinyMLP<double>(features, hidden, init_seed), *opt, {}, world);
      parallax::DataParallel local(toy::TinyMLP<double>(features, hidden, init_seed), *opt, {.average_every = 1}, world);
      auto s1 = sync.make_sampler(data.size(), 12, so);
      auto s2 = local.make_sampler(data.size(), 12, so);
      train_parallel(sync, data, s1, 20);
      train_parallel(local, data, s2, 20);
      CHECK(max_abs_difference(sync.model(), local.model()) <= 1e-12);
      CHECK(replicas_identical(world, local.model()));
    }
  }
}

TEST_CASE("DataParallel: local SGD with k = 4 keeps replicas apart between averages and equal after") {
  communicator world;
  const auto data = toy::make_data<double>(101, features, 5);
  parallax::DataParallel local(toy::TinyMLP<double>(features, hidden, init_seed),
                               parallax::optim::SGD<double>({.lr = 0.1}), {.average_every = 4}, world);
  auto sampler = local.make_sampler(data.size(), 12, {.seed = 2});
  train_parallel(local, data, sampler, 6);  // 6 steps: averaged at 4, local since
  if (world.size() > 1) CHECK_FALSE(replicas_identical(world, local.model()));
  train_parallel(local, data, sampler, 2);  // step 8 averages
  CHECK(replicas_identical(world, local.model()));
  // And it is not synchronous SGD (different trajectory) when ranks differ.
  parallax::DataParallel sync(toy::TinyMLP<double>(features, hidden, init_seed),
                              parallax::optim::SGD<double>({.lr = 0.1}), {}, world);
  auto s2 = sync.make_sampler(data.size(), 12, {.seed = 2});
  train_parallel(sync, data, s2, 8);
  if (world.size() > 1) CHECK(max_abs_difference(sync.model(), local.model()) > 1e-9);
}

TEST_CASE("DataParallel: evaluate counts every sample once, whatever the rank count") {
  communicator world;
  for (std::size_t n : {std::size_t{1}, std::size_t{3}, std::size_t{103}}) {
    const auto data = toy::make_data<double>(n, features, 8);
    parallax::DataParallel dp(toy::TinyMLP<double>(features, hidden, init_seed), parallax::optim::SGD<double>(), {},
                              world);
    // Reference: the model on the whole dataset in one process.
    toy::TinyMLP<double> serial(features, hidden, init_seed);
    std::vector<std::size_t> all(n);
    std::iota(all.begin(), all.end(), std::size_t{0});
    const auto whole = data.batch(all);
    std::vector<parallax::metric<toy::TinyMLP<double>>> metrics = {
        {"one", [](auto&, const auto& b) { return static_cast<double>(b.size()); }},
        {"target", [](auto&, const auto& b) { return static_cast<double>(xt::sum(b.targets)()); }}};
    const auto result = dp.evaluate(data, 7, metrics);
    CHECK(result.samples == n);
    CHECK(result.loss == doctest::Approx(serial.loss(whole)).epsilon(1e-12));
    REQUIRE(result.accuracy.has_value());
    CHECK(*result.accuracy == doctest::Approx(static_cast<double>(serial.correct(whole)) / static_cast<double>(n)));
    CHECK(result.metric("one") == doctest::Approx(1.0));
    CHECK(result.metric("target") == doctest::Approx(xt::mean(data.targets())()).epsilon(1e-12));
    CHECK_THROWS_AS(result.metric("missing"), parallax::error);
  }
}

TEST_CASE("DataParallel: the progress hook fires on rank 0 only") {
  communicator world;
  const auto data = toy::make_data<double>(50, features, 5);
  int calls = 0;
  std::size_t last_step = 0;
  parallax::DataParallel dp(toy::TinyMLP<double>(features, hidden, init_seed), parallax::optim::SGD<double>(),
                            {.on_step = [&](const parallax::step_report& r) {
                              ++calls;
                              last_step = r.step;
                              CHECK(r.samples == 8);
                              CHECK(std::isfinite(r.loss));
                            }},
                            world);
  auto sampler = dp.make_sampler(data.size(), 8, {.tail = parallax::data::tail_policy::drop});
  const auto report = dp.train_epoch(data, sampler);
  CHECK(report.steps == 6);
  CHECK(report.samples == 48);
  CHECK(calls == (world.rank() == 0 ? 6 : 0));
  if (world.rank() == 0) CHECK(last_step == 5);
}

// --- failures: the same clear error on every rank, and the test finishes ---


TEST_CASE("DataParallel: models that differ between ranks are one error on every rank") {
  communicator world;
  if (world.size() == 1) return;
  const int last = world.size() - 1;
  const auto message = agreed_error(world, [&] {
    parallax::DataParallel dp(toy::TinyMLP<double>(features, world.rank() == last ? hidden + 1 : hidden, init_seed),
                              parallax::optim::SGD<double>(), {}, world);
  });
  CHECK(message == "DataParallel: models differ between ranks: parameter 0 has shape (5, 4) on rank 0 but (5, 5) on rank " +
                       std::to_string(last));
}

TEST_CASE("DataParallel: bad sampler plans are one error on every rank") {
  communicator world;
  const int p = world.size();
  parallax::DataParallel dp(toy::TinyMLP<double>(features, hidden, init_seed), parallax::optim::SGD<double>(), {}, world);
  CHECK(agreed_error(world, [&] { dp.make_sampler(100, 0); }).find("global batch size is 0") != std::string::npos);
  CHECK(agreed_error(world, [&] { dp.make_sampler(0, 8); }).find("dataset is empty") != std::string::npos);
  if (p > 1) {
    const auto small = agreed_error(world, [&] { dp.make_sampler(static_cast<std::size_t>(p - 1), 8); });
    CHECK(small.find("fewer than the " + std::to_string(p) + " ranks") != std::string::npos);
    const auto empty = agreed_error(world, [&] { dp.make_sampler(100, static_cast<std::size_t>(p - 1)); });
    CHECK(empty.find("empty shard") != std::string::npos);
    parallax::data::sampler_options skewed;
    for (int r = 0; r < p; ++r) skewed.weights.push_back(r == 0 ? 1000.0 : 1.0);
    const auto weighted = agreed_error(world, [&] { dp.make_sampler(100, 8, skewed); });
    CHECK(weighted.find("gives it no sample") != std::string::npos);
    // Ranks asking for different plans.
    const auto differ = agreed_error(world, [&] { dp.make_sampler(100 + static_cast<std::size_t>(world.rank()), 8); });
    CHECK(differ.find("settings differ between ranks: the dataset size: rank 0 has 100, rank 1 has 101") !=
          std::string::npos);
  }
  CHECK(agreed_error(world, [&] { dp.make_sampler(5, 8, {.tail = parallax::data::tail_policy::drop}); })
            .find("no full global batch") != std::string::npos);
}

TEST_CASE("DataParallel: an empty batch or a failing model on one rank is one error on every rank") {
  communicator world;
  const int last = world.size() - 1;
  const auto data = toy::make_data<double>(40, features, 5);
  parallax::DataParallel dp(toy::TinyMLP<double>(features, hidden, init_seed), parallax::optim::SGD<double>({.lr = 0.1}),
                            {}, world);
  std::vector<std::size_t> some = {1, 2, 3};
  std::vector<std::size_t> none;
  const auto empty = agreed_error(world, [&] {
    dp.train_step(data.batch(world.rank() == last ? std::span<const std::size_t>(none) : std::span<const std::size_t>(some)));
  });
  CHECK(empty == "DataParallel::train_step(): the batch is empty [rank " + std::to_string(last) + "]");
  dp.model().throw_on_loss = world.rank() == last;
  const auto thrown = agreed_error(world, [&] { dp.train_step(data.batch(some)); });
  CHECK(thrown == "DataParallel::train_step(): TinyMLP: deliberate failure [rank " + std::to_string(last) + "]");
  dp.model().throw_on_loss = false;
  // Training goes on normally afterwards.
  CHECK(std::isfinite(dp.train_step(data.batch(some))));
  CHECK(dp.optimizer_steps() == 1);
}

TEST_CASE("DataParallel: a NaN gradient is an error on every rank, or a skipped step") {
  communicator world;
  const int last = world.size() - 1;
  auto data = toy::make_data<double>(40, features, 5);
  auto x = data.inputs();
  x(1, 0) = std::numeric_limits<double>::quiet_NaN();
  const toy::dataset<double> poisoned(x, data.targets());
  std::vector<std::size_t> clean = {2, 3};
  std::vector<std::size_t> bad = {1, 2};
  auto batch_for = [&] {
    return poisoned.batch(world.rank() == last ? std::span<const std::size_t>(bad) : std::span<const std::size_t>(clean));
  };
  {
    parallax::DataParallel dp(toy::TinyMLP<double>(features, hidden, init_seed), parallax::optim::SGD<double>(), {}, world);
    const auto message = agreed_error(world, [&] { dp.train_step(batch_for()); });
    CHECK(message.find("is not finite at optimizer step 0") != std::string::npos);
    CHECK(dp.optimizer_steps() == 0);
  }
  {
    parallax::DataParallel dp(toy::TinyMLP<double>(features, hidden, init_seed), parallax::optim::SGD<double>(),
                              {.on_nonfinite = parallax::nonfinite_policy::skip_step}, world);
    toy::TinyMLP<double> initial(features, hidden, init_seed);
    CHECK_NOTHROW(dp.train_step(batch_for()));
    CHECK(dp.skipped_steps() == 1);
    CHECK(dp.optimizer_steps() == 0);
    CHECK(max_abs_difference(dp.model(), initial) == 0.0);
    dp.train_step(poisoned.batch(clean));
    CHECK(dp.optimizer_steps() == 1);
  }
}

TEST_CASE("DataParallel: options are checked") {
  communicator world;
  CHECK_THROWS_WITH_AS(parallax::DataParallel(toy::TinyMLP<double>(features, hidden, init_seed),
                                              parallax::optim::SGD<double>(), {.accumulation_steps = 0}, world),
                       doctest::Contains("accumulation_steps must be at least 1"), parallax::error);
}
