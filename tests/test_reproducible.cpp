// SPDX-License-Identifier: BSL-1.0
// Suite data_parallel: reproducible mode (data_parallel_options::
// reproducible_atom). The same training on the first w ranks, for every w
// from 1 to the ranks running the test, must end with bitwise the same
// parameters, optimizer state, step losses and evaluation; and close to
// plain serial training, so that the mode trains what it should.

#include "agreed.hpp"
#include "serial_reference.hpp"
#include "toy_model.hpp"

#include <parallax/data_parallel.hpp>
#include <parallax/nn/activation.hpp>
#include <parallax/nn/dropout.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/loss.hpp>
#include <parallax/nn/sequential.hpp>
#include <parallax/optim/adam.hpp>
#include <parallax/optim/sgd.hpp>

#include <doctest/doctest.h>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>
#include <boost/serialization/vector.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

namespace {

using parallax::mpi::communicator;
constexpr std::size_t features = 5;
constexpr std::size_t hidden = 4;
constexpr std::uint64_t init_seed = 11;

/// The bytes of what must be reproducible: parameters, optimizer state
/// (steps, learning rate, every slot) and the given numbers (losses, ...).
struct fingerprint {
  std::vector<unsigned char> bytes;
  std::vector<double> parameters;  // for comparisons with a tolerance

  template <class V>
  void add(const V& value) {
    const auto* p = reinterpret_cast<const unsigned char*>(&value);
    bytes.insert(bytes.end(), p, p + sizeof(V));
  }
  template <class T>
  void add_tensors(auto&& list) {
    parallax::detail::for_each_tensor(list, [&](auto& t) {
      for (T x : t) {
        add(x);
        parameters.push_back(static_cast<double>(x));
      }
    });
  }
  template <class T>
  void add_state(const parallax::optim::Optimizer<T>& opt) {
    const auto s = opt.state();
    add(s.steps);
    add(s.learning_rate);
    for (const auto& slot : s.slots)
      for (const auto& tensor : slot)
        for (T x : tensor) add(x);
  }
  /// What a run ends with: an evaluation, the parameters, the optimizer state.
  template <class T, class Trainer>
  void add_end(Trainer& dp, const parallax::evaluation& e) {
    add(e.loss);
    add(e.accuracy.value_or(-1));
    add_tensors<T>(dp.model().parameters());
    add_state(dp.optimizer());
  }
};

/// Runs `train(comm)` on the first w ranks for w = 1 .. world.size(); returns
/// rank 0's fingerprint of each run, on every rank.
template <class F>
std::vector<fingerprint> at_every_world_size(const communicator& world, F&& train) {
  std::vector<fingerprint> out;
  for (int w = 1; w <= world.size(); ++w) {
    communicator group = world.split(world.rank() < w ? 0 : 1);
    fingerprint mine;
    if (world.rank() < w) mine = train(group);
    boost::mpi::broadcast(world, mine.bytes, 0);
    boost::mpi::broadcast(world, mine.parameters, 0);
    out.push_back(std::move(mine));
  }
  return out;
}

/// Every run's bytes are the one-rank run's, compared with memcmp.
void check_bitwise_equal(const std::vector<fingerprint>& runs) {
  REQUIRE(!runs.empty());
  REQUIRE(!runs[0].bytes.empty());
  for (std::size_t w = 1; w < runs.size(); ++w) {
    INFO("world size " << w + 1 << " against 1");
    REQUIRE(runs[w].bytes.size() == runs[0].bytes.size());
    CHECK(std::memcmp(runs[w].bytes.data(), runs[0].bytes.data(), runs[0].bytes.size()) == 0);
  }
}

using serial::max_difference;

struct toy_case {
  const char* name;
  std::size_t global_batch;
  std::size_t atom;
  std::size_t accumulation;
  bool weighted;
};

// Every case keeps at least 4 atoms per global batch, so it runs at 1-4 ranks.
const toy_case toy_cases[] = {
    {"atoms of 1", 9, 1, 1, false},
    {"a global batch of 13 in atoms of 3 (the last atom short)", 13, 3, 1, false},
    {"accumulation over 3 micro-steps", 10, 2, 3, false},
    {"weighted shards 1, 2, 3, 4", 21, 2, 1, true},
};

/// TinyMLP trained for `steps` micro-steps of `c` through DataParallel on
/// comm; the step losses go into the fingerprint, then evaluate()'s result.
template <class T>
fingerprint train_toy(const communicator& comm, const parallax::optim::Optimizer<T>& opt, const toy_case& c,
                      std::size_t steps, std::size_t atom) {
  const auto data = toy::make_data<T>(67, features, 5);
  parallax::data::sampler_options so{.seed = 3};
  if (c.weighted)
    for (int r = 0; r < comm.size(); ++r) so.weights.push_back(r + 1.0);
  parallax::DataParallel dp(toy::TinyMLP<T>(features, hidden, init_seed), opt,
                            {.bucket_bytes = 64, .accumulation_steps = c.accumulation, .reproducible_atom = atom},
                            comm);
  auto sampler = dp.make_sampler(data.size(), c.global_batch, so);
  fingerprint f;
  std::size_t s = 0;
  for (std::size_t i = 0; i < steps; ++i, ++s) {
    if (s == sampler.steps_per_epoch()) {
      sampler.next_epoch();
      s = 0;
    }
    f.add(dp.train_step(data.batch(sampler.local_indices(s))));
  }
  f.add_end<T>(dp, dp.evaluate(data, 7));
  return f;
}

/// Plain serial training (no DataParallel) on the same global batches.
template <class T>
std::vector<double> serial_toy(const parallax::optim::Optimizer<T>& optimizer, const toy_case& c, std::size_t steps) {
  const auto data = toy::make_data<T>(67, features, 5);
  parallax::data::DistributedSampler plan(data.size(), c.global_batch, 1, 0, {.seed = 3});
  auto model = toy::train_serial(toy::TinyMLP<T>(features, hidden, init_seed), data, plan, optimizer,
                                 steps / c.accumulation, c.accumulation);
  fingerprint f;
  f.add_tensors<T>(model.parameters());
  return f.parameters;
}

template <class T>
void check_toy_cases(const communicator& world, const parallax::optim::Optimizer<T>& opt, double tolerance) {
  for (const auto& c : toy_cases) {
    INFO(c.name);
    const std::size_t steps = 12 * c.accumulation;
    const auto runs = at_every_world_size(world, [&](const communicator& comm) {
      return train_toy<T>(comm, opt, c, steps, c.atom);
    });
    check_bitwise_equal(runs);
    // The mode trains what plain training does (the sums are exact; only
    // the rounding differs).
    CHECK(max_difference(runs[0].parameters, serial_toy<T>(opt, c, steps)) < tolerance);
  }
}

}  // namespace

TEST_CASE("DataParallel reproducible: double, bitwise equal at every world size (SGD, momentum, Adam)") {
  communicator world;
  parallax::optim::SGD<double> sgd({.lr = 0.1});
  parallax::optim::SGD<double> momentum({.lr = 0.05, .momentum = 0.9, .nesterov = true, .weight_decay = 1e-3});
  parallax::optim::Adam<double> adam({.lr = 0.01});
  SUBCASE("SGD") { check_toy_cases(world, sgd, 1e-12); }
  SUBCASE("momentum") { check_toy_cases(world, momentum, 1e-12); }
  SUBCASE("Adam") { check_toy_cases(world, adam, 1e-12); }
}

TEST_CASE("DataParallel reproducible: float, bitwise equal at every world size (SGD, momentum, Adam)") {
  communicator world;
  parallax::optim::SGD<float> sgd({.lr = 0.1});
  parallax::optim::SGD<float> momentum({.lr = 0.05, .momentum = 0.9});
  parallax::optim::Adam<float> adam({.lr = 0.01});
  SUBCASE("SGD") { check_toy_cases(world, sgd, 1e-5); }
  SUBCASE("momentum") { check_toy_cases(world, momentum, 1e-5); }
  SUBCASE("Adam") { check_toy_cases(world, adam, 1e-4); }
}

namespace {

using parallax::nn::Dropout;
using parallax::nn::Linear;
using parallax::nn::SoftmaxCrossEntropy;
using parallax::nn::Tanh;
using Chain = parallax::nn::Sequential<Linear<float>, Tanh<float>, Dropout<float>, Linear<float>, SoftmaxCrossEntropy<float>>;

parallax::data::TensorDataset<xt::xtensor<float, 2>, xt::xtensor<std::int32_t, 1>> chain_data(std::size_t n) {
  parallax::detail::rng g(21);
  xt::xtensor<float, 2> x = xt::zeros<float>({n, std::size_t(6)});
  xt::xtensor<std::int32_t, 1> y = xt::zeros<std::int32_t>({n});
  for (auto& v : x) v = static_cast<float>(2 * g.uniform() - 1);
  for (auto& t : y) t = static_cast<std::int32_t>(g.below(3));
  return {std::move(x), std::move(y)};
}

}  // namespace

TEST_CASE("DataParallel reproducible: a Sequential with dropout through train_epoch, bitwise equal at every world size") {
  communicator world;
  const auto data = chain_data(61);
  parallax::optim::Adam<float> adam({.lr = 0.01});
  // 61 samples, global batch 17: 4 steps per epoch, so with accumulation over
  // 3 micro-steps each epoch ends with one left for flush() to apply.
  for (const std::size_t accumulation : {std::size_t{1}, std::size_t{3}}) {
    INFO("accumulation_steps " << accumulation);
    const auto runs = at_every_world_size(world, [&](const communicator& comm) {
      Chain net{Linear<float>(6, 24), Tanh<float>{}, Dropout<float>(0.3), Linear<float>(24, 3), SoftmaxCrossEntropy<float>{}};
      net.initialize(5);
      parallax::DataParallel dp(std::move(net), adam,
                                {.accumulation_steps = accumulation, .reproducible_atom = 4, .clip_norm = 0.5}, comm);
      auto sampler = dp.make_sampler(data.size(), 17, {.seed = 9});
      fingerprint f;
      for (int e = 0; e < 3; ++e) f.add(dp.train_epoch(data, sampler).loss);
      f.add_end<float>(dp, dp.evaluate(data, 8));
      return f;
    });
    check_bitwise_equal(runs);
  }
}

TEST_CASE("DataParallel reproducible: the default mode is what differs (at 2 or more ranks, float)") {
  // The check above can fail: without the mode, the same training at two
  // world sizes differs in its last bits (not a promise, a witness).
  communicator world;
  if (world.size() < 2) return;
  parallax::optim::SGD<float> sgd({.lr = 0.1});
  const toy_case c{"default", 13, 1, 1, false};
  const auto runs = at_every_world_size(world, [&](const communicator& comm) { return train_toy<float>(comm, sgd, c, 24, 0); });
  bool some_differ = false;
  for (std::size_t w = 1; w < runs.size(); ++w) some_differ = some_differ || runs[w].bytes != runs[0].bytes;
  CHECK(some_differ);
}

TEST_CASE("DataParallel reproducible: evaluate() of an empty dataset, and of the shards evaluation_rows() names") {
  communicator world;
  const auto data = toy::make_data<double>(37, features, 5);  // 5 chunks of 8
  parallax::optim::SGD<double> sgd({.lr = 0.1});
  const auto runs = at_every_world_size(world, [&](const communicator& comm) {
    parallax::DataParallel dp(toy::TinyMLP<double>(features, hidden, init_seed), sgd, {.reproducible_atom = 2}, comm);
    const auto empty = dp.evaluate(toy::make_data<double>(0, features, 5), 8);
    CHECK(empty.samples == 0);
    CHECK(std::isnan(empty.loss));  // no sample, no mean
    if (empty.accuracy) CHECK(std::isnan(*empty.accuracy));
    const auto whole = dp.evaluate(data, 8);
    // This rank's rows: whole chunks of 8, not block_of(37, size, rank).
    const auto rows = dp.evaluation_rows(data.size(), 8);
    CHECK(rows.begin % 8 == 0);
    std::vector<std::size_t> mine(rows.size());
    std::iota(mine.begin(), mine.end(), rows.begin);
    auto b = data.batch(mine);
    const parallax::data::ShardDataset shard(toy::dataset<double>(std::move(b.inputs), std::move(b.targets)), rows.begin,
                                             data.size());
    const auto from_shard = dp.evaluate(shard, 8);
    CHECK(std::memcmp(&from_shard.loss, &whole.loss, sizeof(double)) == 0);
    CHECK(from_shard.samples == 37);
    if (comm.size() == 2) {
      // block_of(37, 2, r) is [0, 19) and [19, 37); the chunks are [0, 24) and [24, 37).
      const auto held = parallax::block_of(data.size(), comm.size(), comm.rank());
      std::vector<std::size_t> other(held.size());
      std::iota(other.begin(), other.end(), held.begin);
      auto c = data.batch(other);
      const parallax::data::ShardDataset misfit(toy::dataset<double>(std::move(c.inputs), std::move(c.targets)),
                                                held.begin, data.size());
      const auto message = agreed_error(comm, [&] { dp.evaluate(misfit, 8); });
      CHECK(message.find("DataParallel::evaluate(): this rank evaluates rows [0, 24) but its shard holds [0, 19); "
                         "load the rows trainer.evaluation_rows(37, 8) gives") != std::string::npos);
    }
    fingerprint f;
    f.add(whole.loss);
    f.add(empty.loss);
    return f;
  });
  check_bitwise_equal(runs);
}

TEST_CASE("DataParallel reproducible: misuse is one clear error on every rank") {
  communicator world;
  const auto data = toy::make_data<double>(40, features, 5);
  parallax::optim::SGD<double> sgd({.lr = 0.1});
  auto make = [&](parallax::data_parallel_options o) {
    return parallax::DataParallel(toy::TinyMLP<double>(features, hidden, init_seed), sgd, o, world);
  };
  SUBCASE("not with local SGD") {
    const auto message = agreed_error(world, [&] { make({.average_every = 2, .reproducible_atom = 2}); });
    CHECK(message.find("reproducible_atom and average_every (local SGD) do not go together") != std::string::npos);
  }
  SUBCASE("fewer atoms than ranks") {
    if (world.size() < 2) return;
    auto dp = make({.reproducible_atom = 4});
    const std::size_t batch = 4 * static_cast<std::size_t>(world.size() - 1);  // one atom too few
    const auto message = agreed_error(world, [&] { dp.make_sampler(data.size(), batch); });
    CHECK(message.find("the global batch of " + std::to_string(batch) + " makes " + std::to_string(world.size() - 1) +
                       (world.size() == 2 ? " atom" : " atoms") + " of 4 samples, fewer than the " +
                       std::to_string(world.size()) + " ranks") !=
          std::string::npos);
  }
  SUBCASE("a sampler of other atoms") {
    auto dp = make({.reproducible_atom = 2});
    const auto message = agreed_error(world, [&] { dp.make_sampler(data.size(), 12, {.atom = 3}); });
    CHECK(message.find("reproducible mode cuts batches into atoms of 2 samples, the sampler's shares are of atoms of 3 "
                       "(leave sampler_options::atom at 1: make_sampler() sets it to reproducible_atom)") !=
          std::string::npos);
    parallax::data::DistributedSampler plain(data.size(), 8, world.size(), world.rank());
    const auto in_epoch = agreed_error(world, [&] { dp.train_epoch(data, plain); });
    CHECK(in_epoch.find("atoms of 1 (make it with DataParallel::make_sampler())") != std::string::npos);
  }
  SUBCASE("evaluate() with batch sizes that differ between ranks") {
    if (world.size() < 2) return;
    auto dp = make({.reproducible_atom = 2});
    const auto message = agreed_error(world, [&] { dp.evaluate(data, world.rank() == 1 ? 16 : 8); });
    CHECK(message.find("DataParallel::evaluate(): batch_size differs between ranks: rank 0 has 8, rank 1 has 16") !=
          std::string::npos);
  }
  SUBCASE("a rank's batch that is not whole atoms, below the last rank") {
    if (world.size() < 2) return;
    auto dp = make({.reproducible_atom = 2});
    std::vector<std::size_t> three = {0, 1, 2};
    const auto message = agreed_error(world, [&] { dp.train_step(data.batch(three)); });
    CHECK(message.find("the batch of 3 samples is not a whole number of atoms of 2") != std::string::npos);
    CHECK(dp.optimizer_steps() == 0);
    std::vector<std::size_t> two = {0, 1};
    CHECK_NOTHROW(dp.train_step(data.batch(two)));  // the trainer stays usable
    CHECK(dp.optimizer_steps() == 1);
  }
}

TEST_CASE("DataParallel reproducible: a NaN gradient is an error on every rank, or a skipped step") {
  communicator world;
  auto data = toy::make_data<double>(40, features, 5);
  auto x = data.inputs();
  x(1, 0) = std::numeric_limits<double>::quiet_NaN();
  const toy::dataset<double> poisoned(x, data.targets());
  const bool last = world.rank() == world.size() - 1;
  std::vector<std::size_t> clean = {2, 3}, bad = {1, 2};
  auto batch_for = [&] { return poisoned.batch(last ? bad : clean); };
  {
    parallax::DataParallel dp(toy::TinyMLP<double>(features, hidden, init_seed), parallax::optim::SGD<double>(),
                              {.reproducible_atom = 2}, world);
    const auto message = agreed_error(world, [&] { dp.train_step(batch_for()); });
    CHECK(message.find("is not finite at optimizer step 0") != std::string::npos);
    CHECK(dp.optimizer_steps() == 0);
  }
  {
    parallax::DataParallel dp(toy::TinyMLP<double>(features, hidden, init_seed), parallax::optim::SGD<double>(),
                              {.reproducible_atom = 2, .on_nonfinite = parallax::nonfinite_policy::skip_step}, world);
    CHECK_NOTHROW(dp.train_step(batch_for()));
    CHECK(dp.skipped_steps() == 1);
    dp.train_step(poisoned.batch(clean));
    CHECK(dp.optimizer_steps() == 1);
  }
}
