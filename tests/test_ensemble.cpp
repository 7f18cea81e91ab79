// SPDX-License-Identifier: BSL-1.0
// Suite data_parallel: Ensemble — replicas per rank or per group of ranks,
// trained independently, combined by weights into the same prediction on
// every rank.

#include "agreed.hpp"
#include "toy_model.hpp"

#include <parallax/ensemble.hpp>
#include <parallax/optim/sgd.hpp>

#include <doctest/doctest.h>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>

#include <numeric>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

using parallax::mpi::communicator;

namespace {
constexpr std::size_t features = 5;
constexpr std::size_t hidden = 4;

toy::TinyMLP<double> make(std::uint64_t seed) { return toy::TinyMLP<double>(features, hidden, seed); }

/// Every rank's prediction for x, gathered (rank order).
std::vector<std::vector<double>> gather_predictions(const communicator& world, toy::TinyMLP<double>& m,
                                                    const xt::xtensor<double, 2>& x) {
  const auto mine = m.predict(x);
  std::vector<std::vector<double>> all;
  parallax::mpi::all_gather(world, std::vector<double>(mine.begin(), mine.end()), all);
  return all;
}
}  // namespace

TEST_CASE("Ensemble: the prediction is the weighted mean of the replicas' outputs, on every rank") {
  communicator world;
  const int p = world.size();
  const int per_replica = p % 2 == 0 ? 2 : 1;
  const auto data = toy::make_data<double>(60, features, 5);
  parallax::Ensemble<toy::TinyMLP<double>> ensemble(make, parallax::optim::SGD<double>({.lr = 0.1}),
                                                    {.ranks_per_replica = per_replica, .seed = 3, .bootstrap = true});
  CHECK(ensemble.replica_count() == p / per_replica);
  CHECK(ensemble.replica() == world.rank() / per_replica);
  auto sampler = ensemble.make_sampler(data.size(), 8);
  for (int e = 0; e < 3; ++e) ensemble.train_epoch(data, sampler);

  const auto x = xt::view(data.inputs(), xt::range(0, 7), xt::all());
  const xt::xtensor<double, 2> probe = x;
  const auto all = gather_predictions(world, ensemble.model(), probe);
  // Replicas trained independently: different replicas differ, ranks of one replica agree.
  for (int r = 0; r < p; ++r) {
    if (r / per_replica == world.rank() / per_replica) CHECK(all[static_cast<std::size_t>(r)] == all[static_cast<std::size_t>(world.rank())]);
    else CHECK(all[static_cast<std::size_t>(r)] != all[static_cast<std::size_t>(world.rank())]);
  }
  auto by_hand = [&](const std::vector<double>& w) {
    std::vector<double> f(probe.shape()[0], 0.0);
    for (int i = 0; i < ensemble.replica_count(); ++i)
      for (std::size_t j = 0; j < f.size(); ++j) f[j] += w[static_cast<std::size_t>(i)] * all[static_cast<std::size_t>(i * per_replica)][j];
    return f;
  };
  // Default weights 1/N.
  const auto f = ensemble.predict(probe);
  const auto expected = by_hand(std::vector<double>(static_cast<std::size_t>(ensemble.replica_count()), 1.0 / ensemble.replica_count()));
  for (std::size_t j = 0; j < expected.size(); ++j) CHECK(f(j) == doctest::Approx(expected[j]).epsilon(1e-12));
  // Chosen weights (normalised to sum 1).
  std::vector<double> w(static_cast<std::size_t>(ensemble.replica_count()));
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = 1.0 + static_cast<double>(i);
  ensemble.set_weights(w);
  const double total = std::accumulate(w.begin(), w.end(), 0.0);
  for (auto& v : w) v /= total;
  const auto g = ensemble.predict(probe);
  const auto expected_g = by_hand(w);
  for (std::size_t j = 0; j < expected_g.size(); ++j) CHECK(g(j) == doctest::Approx(expected_g[j]).epsilon(1e-12));
  // The result is bitwise the same on every rank.
  std::vector<double> mine(g.begin(), g.end()), root = mine;
  parallax::broadcast(world, std::span<double>(root), 0);
  CHECK(mine == root);
}

TEST_CASE("Ensemble: weights from each replica's score") {
  communicator world;
  parallax::Ensemble<toy::TinyMLP<double>> ensemble(make, parallax::optim::SGD<double>(), {.seed = 1});
  // Replica i scores i + 1.
  ensemble.set_weights_from_scores(ensemble.replica() + 1.0);
  const double n = ensemble.replica_count();
  const double total = n * (n + 1) / 2;
  for (int i = 0; i < ensemble.replica_count(); ++i)
    CHECK(ensemble.weights()[static_cast<std::size_t>(i)] == doctest::Approx((i + 1.0) / total));
}

TEST_CASE("Ensemble: bad splits and weights are one error on every rank") {
  communicator world;
  const int p = world.size();
  auto message = [&](auto f) { return agreed_error(world, f); };
  CHECK(message([&] {
          parallax::Ensemble<toy::TinyMLP<double>> e(make, parallax::optim::SGD<double>(), {.ranks_per_replica = p + 1});
        }).find("do not split into replicas of " + std::to_string(p + 1) + " ranks") != std::string::npos);
  parallax::Ensemble<toy::TinyMLP<double>> ensemble(make, parallax::optim::SGD<double>());
  CHECK(message([&] { ensemble.set_weights({1.0, 2.0, 3.0, 4.0, 5.0}); }).find("5 weights for") != std::string::npos);
  std::vector<double> zeros(static_cast<std::size_t>(p), 0.0);
  CHECK(message([&] { ensemble.set_weights(zeros); }).find("sum to 0") != std::string::npos);
  if (p > 1) {
    std::vector<double> differ(static_cast<std::size_t>(p), 1.0);
    differ[0] = world.rank() == 0 ? 1.0 : 2.0;
    CHECK(message([&] { ensemble.set_weights(differ); }).find("differ from rank 0") != std::string::npos);
  }
}

namespace {
/// A dataset that cannot be read on the last rank.
struct UnreadableOnLast {
  const toy::dataset<double>* data;
  std::size_t size() const { return data->size(); }
  toy::batch<double> batch(std::span<const std::size_t> indices) const {
    if (communicator().rank() == communicator().size() - 1) throw std::runtime_error("UnreadableOnLast: no data");
    return data->batch(indices);
  }
};
}  // namespace

TEST_CASE("Ensemble: a failure in one replica is one error on every rank") {
  communicator world;
  const int last = world.size() - 1;
  const auto data = toy::make_data<double>(24, features, 5);
  parallax::Ensemble<toy::TinyMLP<double>> ensemble(make, parallax::optim::SGD<double>({.lr = 0.1}), {.seed = 3});
  auto sampler = ensemble.make_sampler(data.size(), 8);
  const UnreadableOnLast broken{&data};
  CHECK(agreed_error(world, [&] { ensemble.train_epoch(broken, sampler); }) ==
        "the dataset's batch(): UnreadableOnLast: no data [rank " + std::to_string(last) + "]");
  CHECK(agreed_error(world, [&] { ensemble.evaluate_replica(broken, 8); }) ==
        "UnreadableOnLast: no data [rank " + std::to_string(last) + "]");
  // Every replica trains on afterwards.
  CHECK(ensemble.train_epoch(data, sampler).steps > 0);
}

TEST_CASE("Ensemble: options and a replica's trainer are agreed over every rank") {
  communicator world;
  const int p = world.size();
  if (p > 1) {
    // Replicas of one rank agree nothing among themselves: the world does.
    const auto seed = agreed_error(world, [&] {
      parallax::Ensemble<toy::TinyMLP<double>> e(make, parallax::optim::SGD<double>(),
                                                 {.seed = world.rank() == 0 ? 1u : 2u});
    });
    CHECK(seed.find("Ensemble: settings differ between ranks: seed: rank 0 has 1, rank 1 has 2") != std::string::npos);
    const auto lr = agreed_error(world, [&] {
      parallax::Ensemble<toy::TinyMLP<double>> e(make, parallax::optim::SGD<double>({.lr = world.rank() == 0 ? 0.1 : 0.2}));
    });
    CHECK(lr.find("lr: rank 0 has 0.1, rank 1 has 0.2") != std::string::npos);
  }
  if (p == 4) {
    // Replica 1 (ranks 2 and 3) cannot build its trainer: its two models
    // differ. Replica 0 learns it in the same constructor.
    const auto differ = agreed_error(world, [&] {
      parallax::Ensemble<toy::TinyMLP<double>> e(
          [&](std::uint64_t seed) { return toy::TinyMLP<double>(features, world.rank() == 3 ? hidden + 1 : hidden, seed); },
          parallax::optim::SGD<double>(), {.ranks_per_replica = 2});
    });
    CHECK(differ.find("parameter 0 has shape (5, 4) on rank 2 but (5, 5) on rank 3") != std::string::npos);
  }
}
