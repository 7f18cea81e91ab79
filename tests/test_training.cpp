// SPDX-License-Identifier: BSL-1.0
// The training core: the update path, the epoch loop's hooks (stopping every
// rank at the same step), evaluation's training-mode guard, the gradient
// reducer on sub-communicators, and the trainer concept.
#include "agreed.hpp"
#include "toy_model.hpp"
#include <parallax/core/reducer.hpp>
#include <parallax/data_parallel.hpp>
#include <parallax/detail/tensor_list.hpp>
#include <parallax/optim/sgd.hpp>
#include <parallax/training/loop.hpp>
#include <parallax/training/trainer.hpp>
#include <parallax/training/update.hpp>

#include <doctest/doctest.h>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

using boost::mpi::communicator;

namespace {

constexpr std::size_t features = 3;
constexpr std::size_t hidden = 4;

using Toy = toy::TinyMLP<double>;
static_assert(parallax::training::Trainer<parallax::DataParallel<Toy>>);

/// TinyMLP with a training switch, whose loss() can be made to throw.
struct SwitchedToy : Toy {
  bool training = true;
  bool throw_in_eval = false;
  using Toy::Toy;
  void set_training(bool on) { training = on; }
  double loss(const batch_type& b) const {
    if (throw_in_eval) throw std::runtime_error("SwitchedToy: deliberate evaluation failure");
    return Toy::loss(b);
  }
};

/// A dataset whose batch() (and size(), when asked) throws on one rank:
/// batch() from sample `from` on, while armed.
struct FlakyData {
  const toy::dataset<double>* data;
  int bad_rank = 0;
  std::size_t from = 0;
  bool armed = true;
  bool size_throws = false;
  std::size_t size() const {
    if (size_throws && communicator().rank() == bad_rank) throw std::runtime_error("FlakyData: no index");
    return data->size();
  }
  toy::batch<double> batch(std::span<const std::size_t> indices) const {
    if (armed && communicator().rank() == bad_rank && std::ranges::any_of(indices, [&](auto i) { return i >= from; }))
      throw std::runtime_error("FlakyData: sample unreadable");
    return data->batch(indices);
  }
};

/// The parameters of a DataParallel trainer, gathered: every rank's equal.
template <class DP>
bool replicas_equal(const communicator& world, DP& dp) {
  std::vector<double> mine;
  parallax::detail::for_each_tensor(dp.model().parameters(), [&](auto& t) { mine.insert(mine.end(), t.begin(), t.end()); });
  std::vector<std::vector<double>> all;
  boost::mpi::all_gather(world, mine, all);
  for (const auto& a : all)
    if (a != all[0]) return false;
  return true;
}

}  // namespace

TEST_CASE("training: a batch that fails to load on one rank is one error on every rank; training goes on") {
  communicator world;
  const auto data = toy::make_data<double>(40, features, 3);
  const int last = world.size() - 1;
  for (std::size_t accumulation : {1u, 2u}) {
    CAPTURE(accumulation);
    parallax::DataParallel dp(Toy(features, hidden, 1), parallax::optim::SGD<double>({.lr = 0.05}),
                              {.accumulation_steps = accumulation}, world);
    auto sampler = dp.make_sampler(data.size(), 4, {.seed = 2});  // 10 steps of 4
    // Rank `last` cannot read samples 20 and later: the first of its steps
    // that holds one fails, and every rank gets that error.
    FlakyData flaky{&data, last, 20};
    const auto message = agreed_error(world, [&] { dp.train_epoch(flaky, sampler); });
    CHECK(message == "the dataset's batch(): FlakyData: sample unreadable [rank " + std::to_string(last) + "]");
    // The failed step is taken again once the data reads; the replicas stay equal.
    const auto failed_at = sampler.position();
    CHECK(failed_at < sampler.steps_per_epoch());
    flaky.armed = false;
    const auto rest = dp.train_epoch(flaky, sampler);
    CHECK(rest.steps == sampler.steps_per_epoch() - failed_at);
    CHECK(replicas_equal(world, dp));
  }
}

TEST_CASE("training: an on_step or after_step hook that throws on one rank is one error on every rank") {
  communicator world;
  const auto data = toy::make_data<double>(24, features, 3);
  const int last = world.size() - 1;
  std::size_t after_calls = 0;
  parallax::DataParallel dp(Toy(features, hidden, 1), parallax::optim::SGD<double>({.lr = 0.05}),
                            {.on_step = [&](const parallax::step_report& r) {
                               if (r.step == 1) throw std::runtime_error("progress bar broke");
                             },
                             .after_step = [&](const parallax::step_report& r) {
                               ++after_calls;  // runs on rank 0 too, after its on_step threw
                               if (r.step == 2 && world.rank() == last) throw std::runtime_error("saver broke");
                             }},
                            world);
  auto sampler = dp.make_sampler(data.size(), 4);  // 6 steps
  CHECK(agreed_error(world, [&] { dp.train_epoch(data, sampler); }) == "on_step hook: progress bar broke [rank 0]");
  CHECK(after_calls == 2);
  CHECK(sampler.position() == 2);  // past the step whose hook failed
  CHECK(agreed_error(world, [&] { dp.train_epoch(data, sampler); }) ==
        "after_step hook: saver broke [rank " + std::to_string(last) + "]");
  CHECK(dp.train_epoch(data, sampler).steps == 3);
  CHECK(replicas_equal(world, dp));
}

TEST_CASE("training: a dataset smaller than the sampler, or of another size on some rank, is one error") {
  communicator world;
  const auto data = toy::make_data<double>(24, features, 3);
  const auto fewer = toy::make_data<double>(20, features, 3);
  const int last = world.size() - 1;
  parallax::DataParallel dp(Toy(features, hidden, 1), parallax::optim::SGD<double>(), {}, world);
  auto sampler = dp.make_sampler(data.size(), 4);
  const auto& mine = world.rank() == last ? fewer : data;
  CHECK(agreed_error(world, [&] { dp.train_epoch(mine, sampler); }) ==
        "train_epoch(): the dataset holds 20 samples but the sampler was made for 24 [rank " + std::to_string(last) + "]");
  CHECK(sampler.position() == 0);
  // evaluate(): sizes that differ between ranks, size() or a batch size of 0 on one rank.
  if (world.size() > 1) {
    CHECK(agreed_error(world, [&] { dp.evaluate(mine, 8); }) ==
          "DataParallel::evaluate(): the dataset size differs between ranks: rank 0 has 24, rank " +
              std::to_string(last) + " has 20");
  }
  FlakyData no_size{&data, last, 0, false, true};
  CHECK(agreed_error(world, [&] { dp.evaluate(no_size, 8); }) == "FlakyData: no index [rank " + std::to_string(last) + "]");
  CHECK(agreed_error(world, [&] { dp.evaluate(data, world.rank() == last ? 0 : 8); }) ==
        "DataParallel::evaluate(): batch_size is 0 [rank " + std::to_string(last) + "]");
  FlakyData unreadable{&data, last, 10};
  // The last rank's shard is the end of the dataset: it reads sample 10 or later.
  CHECK(agreed_error(world, [&] { dp.evaluate(unreadable, 8); }) ==
        "FlakyData: sample unreadable [rank " + std::to_string(last) + "]");
  CHECK(dp.evaluate(data, 8).samples == 24);
}

TEST_CASE("training: the update path clips by global norm, then schedules, then steps") {
  // One parameter tensor [1, 1], gradient [3, 4] (norm 5), clip to 1, lr
  // from the schedule 0.5 at step 0: p - 0.5 * g / (5 + 1e-6).
  parallax::optim::SGD<double> sgd({.lr = 0.1});
  std::vector<double> p = {1, 1}, g = {3, 4};
  std::vector<std::span<double>> params = {std::span<double>(p)}, grads = {std::span<double>(g)};
  std::vector<std::span<const double>> grads_const = {std::span<const double>(g)};
  parallax::training::updater<double> up({.clip_norm = 1, .lr_schedule = [](std::uint64_t s) { return 0.5 / double(s + 1); }});
  CHECK(up.apply(sgd, params, grads, grads_const, false, std::nullopt, [] { return std::string(); }));
  const double f = 1.0 / (5.0 + 1e-6);
  CHECK(p[0] == doctest::Approx(1 - 0.5 * 3 * f).epsilon(1e-15));
  CHECK(p[1] == doctest::Approx(1 - 0.5 * 4 * f).epsilon(1e-15));
  CHECK(sgd.steps() == 1);
  // An agreed squared norm given by the caller wins over the local one:
  // norm 10 -> factor 1 / (10 + 1e-6); lr 0.25 at step 1.
  g = {3, 4};
  const double before0 = p[0];
  CHECK(up.apply(sgd, params, grads, grads_const, false, 100.0, [] { return std::string(); }));
  CHECK(p[0] == doctest::Approx(before0 - 0.25 * 3 / (10.0 + 1e-6)).epsilon(1e-15));
  // Non-finite: an error of kind nonfinite, or a skipped step.
  try {
    up.apply(sgd, params, grads, grads_const, true, std::nullopt, [] { return std::string("bad gradient"); });
    FAIL("no error");
  } catch (const parallax::error& e) {
    CHECK(e.kind() == parallax::error_kind::nonfinite);
    CHECK(std::string(e.what()) == "bad gradient");
  }
  parallax::training::updater<double> skipping({.on_nonfinite = parallax::nonfinite_policy::skip_step});
  const auto kept = p;
  CHECK_FALSE(skipping.apply(sgd, params, grads, grads_const, true, std::nullopt, [] { return std::string(); }));
  CHECK(skipping.skipped() == 1);
  CHECK(p == kept);
  CHECK(sgd.steps() == 2);
}

TEST_CASE("training: a stop_when hook on one rank stops every rank at the same step") {
  communicator world;
  const auto data = toy::make_data<double>(40, features, 3);
  const int last = world.size() - 1;
  std::size_t after_calls = 0;
  parallax::DataParallel dp(Toy(features, hidden, 1), parallax::optim::SGD<double>({.lr = 0.05}),
                            {.after_step = [&](const parallax::step_report&) { ++after_calls; },
                             .stop_when = [&](const parallax::step_report& r) {
                               return world.rank() == last && r.step == 2;
                             }},
                            world);
  auto sampler = dp.make_sampler(data.size(), 8, {.seed = 4});  // 5 steps per epoch
  const auto first = dp.train_epoch(data, sampler);
  CHECK(first.stopped);
  CHECK(first.steps == 3);
  CHECK(after_calls == 3);
  CHECK(dp.optimizer_steps() == 3);
  CHECK(sampler.position() == 3);
  CHECK(sampler.epoch() == 0);  // the next call continues this epoch
  const auto rest = dp.train_epoch(data, sampler);
  CHECK_FALSE(rest.stopped);
  CHECK(rest.steps == 2);
  CHECK(dp.optimizer_steps() == 5);
  CHECK(sampler.epoch() == 1);
  CHECK(sampler.position() == 0);
  // The same on every rank.
  std::vector<std::uint64_t> steps;
  boost::mpi::all_gather(world, static_cast<std::uint64_t>(dp.optimizer_steps()), steps);
  for (auto s : steps) CHECK(s == 5);
}

TEST_CASE("training: stopped mid-accumulation, the next train_epoch continues the optimizer step the stop left") {
  communicator world;
  const auto data = toy::make_data<double>(40, features, 3);
  const parallax::optim::SGD<double> sgd({.lr = 0.05, .momentum = 0.9});
  auto parameters = [](Toy& m) {
    std::vector<double> out;
    parallax::detail::for_each_tensor(m.parameters(), [&](auto& t) { out.insert(out.end(), t.begin(), t.end()); });
    return out;
  };
  // 5 micro-steps per epoch in pairs: optimizer steps after micro-steps 2
  // and 4, and the epoch's end applies the fifth alone.
  parallax::DataParallel full(Toy(features, hidden, 1), sgd, {.accumulation_steps = 2}, world);
  auto s_full = full.make_sampler(data.size(), 8, {.seed = 4});
  for (int e = 0; e < 2; ++e) full.train_epoch(data, s_full);
  REQUIRE(full.optimizer_steps() == 6);
  parallax::DataParallel dp(Toy(features, hidden, 1), sgd,
                            {.accumulation_steps = 2,
                             .stop_when = [&](const parallax::step_report& r) { return r.epoch == 0 && r.step == 2; }},
                            world);
  auto sampler = dp.make_sampler(data.size(), 8, {.seed = 4});
  CHECK(dp.train_epoch(data, sampler).stopped);
  CHECK(dp.optimizer_steps() == 1);
  CHECK(dp.pending_micro_steps() == 1);  // not applied alone at the stop
  dp.train_epoch(data, sampler);         // micro-step 4 completes the pair of 3 and 4
  dp.train_epoch(data, sampler);
  CHECK(dp.optimizer_steps() == 6);
  CHECK(parameters(dp.model()) == parameters(full.model()));
}

TEST_CASE("training: samplers built by hand with another plan, epoch or position on some rank are one error on every rank") {
  communicator world;
  if (world.size() < 2) return;
  const auto data = toy::make_data<double>(64, features, 3);
  parallax::DataParallel dp(Toy(features, hidden, 1), parallax::optim::SGD<double>({.lr = 0.05}), {}, world);
  const bool odd = world.rank() == 1;
  SUBCASE("global batch") {
    parallax::data::DistributedSampler s(data.size(), odd ? 16 : 8, world.size(), world.rank());
    const auto message = agreed_error(world, [&] { dp.train_epoch(data, s); });
    CHECK(message.find("train_epoch(): the samplers: settings differ between ranks: the global batch: rank 0 has 8, "
                       "rank 1 has 16") != std::string::npos);
  }
  SUBCASE("seed") {
    parallax::data::DistributedSampler s(data.size(), 8, world.size(), world.rank(), {.seed = odd ? 5u : 4u});
    const auto message = agreed_error(world, [&] { dp.train_epoch(data, s); });
    CHECK(message.find("seed: rank 0 has 4, rank 1 has 5") != std::string::npos);
  }
  SUBCASE("position") {
    parallax::data::DistributedSampler s(data.size(), 8, world.size(), world.rank());
    if (odd) s.set_position(2);
    const auto message = agreed_error(world, [&] { dp.train_epoch(data, s); });
    CHECK(message.find("the sampler's position: rank 0 has 0, rank 1 has 2") != std::string::npos);
  }
  CHECK(dp.optimizer_steps() == 0);
}

TEST_CASE("training: an epoch whose sampler is already at its end trains nothing and reports a NaN loss") {
  communicator world;
  const auto data = toy::make_data<double>(40, features, 3);
  parallax::DataParallel dp(Toy(features, hidden, 1), parallax::optim::SGD<double>({.lr = 0.05}), {}, world);
  auto sampler = dp.make_sampler(data.size(), 8, {.seed = 4});  // 5 steps per epoch
  sampler.set_position(5);  // as restored from a checkpoint saved at the epoch's last step
  const auto report = dp.train_epoch(data, sampler);
  CHECK(report.steps == 0);
  CHECK(report.samples == 0);
  CHECK(std::isnan(report.loss));  // no step: no mean loss, not a loss of 0
  CHECK(dp.optimizer_steps() == 0);
  CHECK(sampler.epoch() == 1);
  CHECK(sampler.position() == 0);
  const auto next = dp.train_epoch(data, sampler);
  CHECK(next.steps == 5);
  CHECK(std::isfinite(next.loss));
}

TEST_CASE("training: a stop_when hook that throws on one rank is one error on every rank") {
  communicator world;
  const auto data = toy::make_data<double>(24, features, 3);
  const int last = world.size() - 1;
  parallax::DataParallel dp(Toy(features, hidden, 1), parallax::optim::SGD<double>(),
                            {.stop_when = [&](const parallax::step_report&) -> bool {
                              if (world.rank() == last) throw std::runtime_error("hook broke");
                              return false;
                            }},
                            world);
  auto sampler = dp.make_sampler(data.size(), 8);
  const auto message = agreed_error(world, [&] { dp.train_epoch(data, sampler); });
  CHECK(message == "stop_when hook: hook broke [rank " + std::to_string(last) + "]");
}

TEST_CASE("training: evaluate restores training mode after a throwing batch") {
  communicator world;
  const auto data = toy::make_data<double>(30, features, 5);
  parallax::DataParallel dp(SwitchedToy(features, hidden, 1), parallax::optim::SGD<double>(), {}, world);
  CHECK(dp.model().training);
  dp.model().throw_in_eval = world.rank() == 0;
  const auto message = agreed_error(world, [&] { dp.evaluate(data, 4); });
  CHECK(message == "SwitchedToy: deliberate evaluation failure [rank 0]");
  CHECK(dp.model().training);
  dp.model().throw_in_eval = false;
  CHECK(dp.evaluate(data, 4).samples == 30);
  CHECK(dp.model().training);
}

TEST_CASE("training: the gradient reducer sums over a sub-communicator, bucket by bucket") {
  communicator world;
  // Two groups: even and odd ranks (a pipeline stage's data-parallel group
  // is such a sub-communicator).
  const communicator group = world.split(world.rank() % 2);
  // 20000 + 7 doubles: large enough for the ring path; 64 KiB buckets cut
  // inside the first tensor.
  std::vector<double> a(20000), b(7);
  const double r = world.rank();
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = r + static_cast<double>(i % 5);
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = 2 * r - static_cast<double>(i);
  std::vector<std::span<double>> tensors = {std::span<double>(a), std::span<double>(b)};
  parallax::gradient_reducer<double> reducer(group, std::size_t{64} << 10);
  reducer.plan(tensors);
  CHECK(reducer.bucket_count() == 3);
  reducer.accumulate(tensors, 1.0, true);
  reducer.accumulate(tensors, 2.0, false);  // 3 * tensors in all
  // Sum of 3 * rank over the group's members, divided by the group's size.
  double rank_sum = 0;
  for (int q = world.rank() % 2; q < world.size(); q += 2) rank_sum += q;
  const double members = static_cast<double>(group.size());
  bool nonfinite = false;
  for (std::size_t k = 0; k < reducer.bucket_count(); ++k)
    nonfinite = reducer.reduce_bucket(k, 1.0 / members) || nonfinite;
  CHECK_FALSE(nonfinite);
  const auto views = reducer.views();
  bool all_equal = true;
  for (std::size_t i = 0; i < a.size(); ++i)
    all_equal = all_equal && views[0][i] == doctest::Approx(3 * (rank_sum + members * double(i % 5)) / members);
  CHECK(all_equal);
  for (std::size_t i = 0; i < b.size(); ++i)
    CHECK(views[1][i] == doctest::Approx(3 * (2 * rank_sum - members * double(i)) / members));
  // The tensors themselves are untouched; a NaN on one member is found by all.
  CHECK(a[1] == r + 1);
  if (group.rank() == 0) a[12345] = std::numeric_limits<double>::quiet_NaN();
  reducer.accumulate(tensors, 1.0, true);
  CHECK(reducer.reduce(1.0));
  // Weighted averaging into the tensors (local SGD's use): weight 1 each, scale 1 / size.
  a[12345] = 0;
  reducer.average_into(tensors, 1.0, 1.0 / members);
  CHECK(b[0] == doctest::Approx(2 * rank_sum / members));
}
