// SPDX-License-Identifier: BSL-1.0
// Suite data_parallel: DistributedSampler — disjoint shards, every sample
// visited, a new order every epoch, the same plan on every rank, weighted
// shares and bootstrap draws; shard_batches — a fixed split's batches from
// each rank's own rows, the same steps on every rank.

#include <parallax/core/comm.hpp>
#include <parallax/data/sampler.hpp>
#include <parallax/data/shard_batches.hpp>

#include <doctest/doctest.h>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>
#include <boost/serialization/string.hpp>

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

using parallax::data::DistributedSampler;
using parallax::data::tail_policy;
using parallax::mpi::communicator;

namespace {
/// Every rank's indices of one epoch, gathered through MPI (not through the
/// sampler's own global view), in step-major, rank-minor order.
std::vector<std::size_t> gathered_epoch(const communicator& world, const DistributedSampler& s) {
  std::vector<std::size_t> out;
  for (std::size_t step = 0; step < s.steps_per_epoch(); ++step) {
    const auto mine = s.local_indices(step);
    std::vector<std::vector<std::size_t>> all;
    parallax::mpi::all_gather(world, std::vector<std::size_t>(mine.begin(), mine.end()), all);
    for (const auto& part : all) out.insert(out.end(), part.begin(), part.end());
  }
  return out;
}
}  // namespace

TEST_CASE("sampler: drop policy visits each index at most once, all of them when the batch divides the data") {
  communicator world;
  const int p = world.size();
  for (std::size_t n : {std::size_t{48}, std::size_t{50}, std::size_t{97}}) {
    DistributedSampler s(n, 12, p, world.rank(), {.seed = 4, .tail = tail_policy::drop});
    CHECK(s.steps_per_epoch() == n / 12);
    const auto seen = gathered_epoch(world, s);
    CHECK(seen.size() == (n / 12) * 12);
    const std::set<std::size_t> distinct(seen.begin(), seen.end());
    CHECK(distinct.size() == seen.size());  // no index twice
    CHECK(*distinct.rbegin() < n);
    if (n % 12 == 0) CHECK(distinct.size() == n);
  }
}

TEST_CASE("sampler: pad policy visits every index at least once and runs the same steps on every rank") {
  communicator world;
  for (std::size_t n : {std::size_t{5}, std::size_t{50}, std::size_t{97}}) {
    DistributedSampler s(n, 12, world.size(), world.rank(), {.seed = 4});
    CHECK(s.steps_per_epoch() == (n + 11) / 12);
    const auto seen = gathered_epoch(world, s);
    CHECK(seen.size() == s.steps_per_epoch() * 12);
    const std::set<std::size_t> distinct(seen.begin(), seen.end());
    CHECK(distinct.size() == n);
    int steps = static_cast<int>(s.steps_per_epoch());
    int most = 0;
    parallax::mpi::all_reduce(world, steps, most, parallax::mpi::maximum<int>());
    CHECK(most == steps);
  }
}

TEST_CASE("sampler: shards of a step are disjoint and match the global batch") {
  communicator world;
  DistributedSampler s(100, 13, world.size(), world.rank(), {.seed = 8});
  for (std::size_t step = 0; step < s.steps_per_epoch(); ++step) {
    std::vector<std::size_t> joined;
    for (int r = 0; r < world.size(); ++r) {
      const auto part = s.indices(step, r);
      joined.insert(joined.end(), part.begin(), part.end());
    }
    const auto global = s.global_indices(step);
    CHECK(std::equal(joined.begin(), joined.end(), global.begin(), global.end()));
  }
  std::size_t total = 0;
  for (int r = 0; r < world.size(); ++r) total += s.local_batch_size(r);
  CHECK(total == 13);
}

TEST_CASE("sampler: the order changes every epoch and is the same on every rank") {
  communicator world;
  DistributedSampler s(64, 8, world.size(), world.rank(), {.seed = 21});
  const auto e0 = gathered_epoch(world, s);
  s.next_epoch();
  CHECK(s.epoch() == 1);
  const auto e1 = gathered_epoch(world, s);
  CHECK(e0 != e1);
  CHECK(std::is_permutation(e0.begin(), e0.end(), e1.begin()));
  // Each rank's own view of the global order equals what rank 0 sees.
  std::vector<std::size_t> mine;
  for (std::size_t step = 0; step < s.steps_per_epoch(); ++step) {
    const auto g = s.global_indices(step);
    mine.insert(mine.end(), g.begin(), g.end());
  }
  std::vector<std::size_t> root = mine;
  parallax::broadcast(world, std::span<std::size_t>(root), 0);
  CHECK(mine == root);
  // Same seed and epoch: same plan, also from a fresh sampler (resume).
  DistributedSampler again(64, 8, world.size(), world.rank(), {.seed = 21});
  again.set_epoch(1);
  CHECK(gathered_epoch(world, again) == e1);
  // Another seed: another order.
  DistributedSampler other(64, 8, world.size(), world.rank(), {.seed = 22});
  CHECK(gathered_epoch(world, other) != e0);
}

TEST_CASE("sampler: without shuffle the order is 0, 1, 2, ...") {
  communicator world;
  DistributedSampler s(10, 4, world.size(), world.rank(), {.shuffle = false});
  const auto seen = gathered_epoch(world, s);
  const std::vector<std::size_t> expected = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1};
  CHECK(seen == expected);
}

TEST_CASE("sampler: weighted shares follow the weights and sum to the global batch") {
  DistributedSampler s(100, 12, 3, 0, {.weights = {1, 2, 3}});
  CHECK(s.local_batch_size(0) == 2);
  CHECK(s.local_batch_size(1) == 4);
  CHECK(s.local_batch_size(2) == 6);
  // 10 over weights 1, 1, 1: 3.33 each; the remainder goes to the lowest rank.
  DistributedSampler t(100, 10, 3, 1, {});
  CHECK(t.local_batch_size(0) == 4);
  CHECK(t.local_batch_size(1) == 3);
  CHECK(t.local_batch_size(2) == 3);
  CHECK(t.local_indices(0).size() == 3);
  // 7 over weights 1, 2: 2.33 and 4.67 -> 2 and 5.
  DistributedSampler u(100, 7, 2, 0, {.weights = {1, 2}});
  CHECK(u.local_batch_size(0) == 2);
  CHECK(u.local_batch_size(1) == 5);
}

TEST_CASE("sampler: with an atom, shares are whole atoms and the last rank ends with the short one") {
  // 14 samples in atoms of 4: atoms of 4, 4, 4 and 2; over 3 ranks 2, 1, 1 atoms.
  DistributedSampler s(100, 14, 3, 0, {.atom = 4});
  CHECK(s.local_batch_size(0) == 8);
  CHECK(s.local_batch_size(1) == 4);
  CHECK(s.local_batch_size(2) == 2);
  // Weights share out atoms: 5 atoms over weights 1, 3 -> 1.25 and 3.75 -> 1 and 4.
  DistributedSampler w(100, 10, 2, 1, {.weights = {1, 3}, .atom = 2});
  CHECK(w.local_batch_size(0) == 2);
  CHECK(w.local_batch_size(1) == 8);
  // Atom 1 is the plan without atoms.
  DistributedSampler one(100, 10, 3, 0, {.atom = 1});
  DistributedSampler plain(100, 10, 3, 0);
  for (int r = 0; r < 3; ++r) CHECK(one.local_batch_size(r) == plain.local_batch_size(r));
  CHECK_THROWS_WITH_AS(DistributedSampler(100, 8, 3, 0, {.atom = 4}),
                       doctest::Contains("the global batch of 8 makes 2 atoms of 4 samples, fewer than the 3 ranks"),
                       parallax::error);
  CHECK_THROWS_WITH_AS(DistributedSampler(100, 8, 1, 0, {.atom = 0}), doctest::Contains("the atom is 0 samples"),
                       parallax::error);
  CHECK_THROWS_WITH_AS(DistributedSampler(100, 7, 2, 0, {.atom = 8}),
                       doctest::Contains("the global batch of 7 makes 1 atom of 8 samples (the last one shorter), "
                                         "fewer than the 2 ranks"),
                       parallax::error);
  // 15 samples in atoms of 4 make 4 atoms; weights 1, 1, 0.3 give 1.74, 1.74
  // and 0.52 of them -> 2, 2, 0: the last rank would hold no atom at all.
  CHECK_THROWS_WITH_AS(DistributedSampler(100, 15, 3, 2, {.weights = {1, 1, 0.3}, .atom = 4}),
                       doctest::Contains("rank 2's weight gives it no atom of a global batch of 15"), parallax::error);
  // The same weights over samples leave rank 2 two of them.
  DistributedSampler samples(100, 15, 3, 2, {.weights = {1, 1, 0.3}});
  CHECK(samples.local_batch_size(2) == 2);
}

TEST_CASE("sampler: bad plans are errors") {
  CHECK_THROWS_WITH_AS(DistributedSampler(10, 0, 2, 0), doctest::Contains("global batch size is 0"), parallax::error);
  CHECK_THROWS_WITH_AS(DistributedSampler(0, 4, 2, 0), doctest::Contains("dataset is empty"), parallax::error);
  CHECK_THROWS_WITH_AS(DistributedSampler(3, 4, 4, 0), doctest::Contains("fewer than the 4 ranks"), parallax::error);
  CHECK_THROWS_WITH_AS(DistributedSampler(10, 3, 4, 0), doctest::Contains("empty shard"), parallax::error);
  CHECK_THROWS_WITH_AS(DistributedSampler(10, 4, 2, 2), doctest::Contains("rank 2 of world size 2"), parallax::error);
  CHECK_THROWS_WITH_AS(DistributedSampler(10, 4, 2, 0, {.weights = {1}}), doctest::Contains("1 weights for 2 ranks"),
                       parallax::error);
  CHECK_THROWS_WITH_AS(DistributedSampler(10, 4, 2, 0, {.weights = {1, -1}}), doctest::Contains("not positive"),
                       parallax::error);
  CHECK_THROWS_WITH_AS(DistributedSampler(10, 4, 2, 0, {.weights = {100, 1}}), doctest::Contains("gives it no sample"),
                       parallax::error);
  DistributedSampler s(10, 4, 2, 0);
  CHECK_THROWS_AS(s.local_indices(3), parallax::error);
}

TEST_CASE("sampler: bootstrap draws with replacement, differently per seed") {
  DistributedSampler a(200, 200, 1, 0, {.seed = 1, .bootstrap = true});
  DistributedSampler b(200, 200, 1, 0, {.seed = 2, .bootstrap = true});
  const auto ia = a.local_indices(0);
  const auto ib = b.local_indices(0);
  const std::set<std::size_t> da(ia.begin(), ia.end());
  // With replacement, about 1 - 1/e = 63% of the samples appear.
  CHECK(da.size() < 160);
  CHECK(da.size() > 100);
  CHECK(!std::equal(ia.begin(), ia.end(), ib.begin()));
}

TEST_CASE("shard_batches: each rank's batches come from its own rows, the same steps on every rank") {
  const communicator world;
  using X = xt::xtensor<double, 2>;
  using Y = xt::xtensor<std::int64_t, 1>;
  // Rank r holds 40 + 7 r rows starting at 100 r; inputs and targets carry
  // the row's number in the whole dataset.
  const std::size_t rank = static_cast<std::size_t>(world.rank()), rows = 40 + 7 * rank, first = 100 * rank;
  X x = xt::zeros<double>({rows, std::size_t{2}});
  Y y = xt::zeros<std::int64_t>({rows});
  for (std::size_t i = 0; i < rows; ++i) {
    x(i, 0) = x(i, 1) = static_cast<double>(first + i);
    y(i) = static_cast<std::int64_t>(first + i);
  }
  const parallax::data::ShardDataset<X, Y> shard({x, y}, first, 100 * static_cast<std::size_t>(world.size()));
  parallax::data::shard_batches batches(world, shard, 8, 3);
  CHECK(batches.steps() == 5);  // rank 0's 40 rows: 5 full batches of 8, the fewest
  std::vector<std::vector<std::int64_t>> epochs;
  for (int epoch = 0; epoch < 2; ++epoch) {
    std::vector<std::int64_t> seen;
    for (std::size_t s = 0; s < batches.steps(); ++s) {
      const auto b = batches.batch(s);
      REQUIRE(b.size() == 8);
      for (std::size_t i = 0; i < 8; ++i) {
        CHECK(b.inputs(i, 0) == static_cast<double>(b.targets(i)));
        CHECK(b.targets(i) >= static_cast<std::int64_t>(first));
        CHECK(b.targets(i) < static_cast<std::int64_t>(first + rows));
        seen.push_back(b.targets(i));
      }
    }
    CHECK(std::set<std::int64_t>(seen.begin(), seen.end()).size() == seen.size());  // no row twice in an epoch
    epochs.push_back(seen);
    batches.next_epoch();
  }
  CHECK(epochs[0] != epochs[1]);  // a new shuffle each epoch
  // A shard without one full batch on the last rank: the same error on every rank.
  const std::size_t few = world.rank() == world.size() - 1 ? 3 : 20;
  const parallax::data::ShardDataset<X, Y> small({X(xt::view(x, xt::range(0, few), xt::all())), Y(xt::view(y, xt::range(0, few)))},
                                                 first, 100 * static_cast<std::size_t>(world.size()));
  std::string message;
  try {
    parallax::data::shard_batches tiny(world, small, 8, 3);
  } catch (const parallax::error& e) {
    message = e.what();
  }
  std::vector<std::string> all;
  parallax::mpi::all_gather(world, message, all);
  for (const auto& m : all) CHECK(m == message);
  CHECK(message.find("shard_batches: this rank's shard of 3 rows: ") != std::string::npos);
  CHECK(message.find("3 samples make no full global batch of 8") != std::string::npos);
  CHECK(message.find("[rank " + std::to_string(world.size() - 1) + "]") != std::string::npos);
}

