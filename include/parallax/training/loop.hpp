#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The one epoch loop every trainer runs: load each step's batch from the
/// sampler, take the step, report it, call the hooks, stop where a hook says
/// (at the same step on every rank), and sum up the epoch.

#include <parallax/core/agree.hpp>
#include <parallax/core/concepts.hpp>
#include <parallax/core/error.hpp>
#include <parallax/core/operation.hpp>
#include <parallax/core/trace.hpp>
#include <parallax/data/batch.hpp>
#include <parallax/data/sampler.hpp>
#include <parallax/training/sampler.hpp>
#include <parallax/training/trainer.hpp>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/operations.hpp>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <utility>

namespace parallax {

/// What the hooks see after each step.
struct step_report {
  std::uint64_t epoch = 0;
  std::size_t step = 0;             ///< step within the epoch (0-based)
  std::size_t steps_per_epoch = 0;
  std::uint64_t optimizer_step = 0; ///< optimizer steps taken so far
  double loss = 0;                  ///< mean loss of this step (global, or this rank's in local SGD)
  std::size_t samples = 0;          ///< samples of this step over all ranks
  double seconds = 0;               ///< wall time of this step
  bool skipped = false;             ///< a non-finite gradient skipped the optimizer step
};

/// What train_epoch returns, the same on every rank.
struct epoch_report {
  /// Mean training loss over the epoch's samples (all ranks); NaN when the
  /// epoch had no step (the sampler was already at its end: a run resumed
  /// from a checkpoint saved at an epoch's last step).
  double loss = std::numeric_limits<double>::quiet_NaN();
  std::size_t samples = 0;
  std::size_t steps = 0;  ///< sampler steps (micro-steps with accumulation), not optimizer steps
  double seconds = 0;
  bool stopped = false;  ///< a stop_when hook ended the epoch early (the sampler stays at that step)
};

namespace training {

/// The hooks of the loop; each trainer's options hold them.
/// A hook that throws, on any rank, is the same error on every rank after
/// that step: every hook of the step still runs on every rank (collective
/// work in after_step stays matched), then one small all-reduce per step,
/// only when some rank set a hook, agrees the failures and the stop votes.
struct hooks {
  /// After every step, on rank 0 only (progress output); other ranks stay silent.
  const std::function<void(const step_report&)>& on_step;
  /// After every step, on every rank: collective work such as periodic
  /// checkpoints goes here; the sampler's position is already past the step.
  const std::function<void(const step_report&)>& after_step;
  /// After every step, on every rank: true stops training after this step.
  /// The ranks' answers are combined (any rank's true stops all), so every
  /// rank stops at the same step; costs one small all-reduce per step, only
  /// when set.
  const std::function<bool(const step_report&)>& stop_when;
};

/// Collective. The rest of the sampler's epoch (from sampler.position()) over
/// `dataset`, then moves the sampler to the next epoch (not when a hook
/// stopped it: the next call continues from there). Leftover accumulated
/// micro-steps are applied at the end of the epoch (not when a hook stopped
/// it: the next call goes on accumulating them, or flush() applies them). The dataset must hold at least the
/// sampler's dataset_size() samples. An exception from the dataset (size(),
/// batch()) on some ranks is the same error on every rank, at the latest
/// when the step communicates (Trainer::fail_step); the trainer stays usable.
template <Trainer T, class D>
epoch_report run_epoch(T& trainer, const D& dataset, data::DistributedSampler& sampler, const hooks& h);

// ===========================================================================
// Implementation
// ===========================================================================

template <Trainer T, class D>
epoch_report run_epoch(T& trainer, const D& dataset, data::DistributedSampler& sampler, const hooks& h) {
  using clock = std::chrono::steady_clock;
  const auto& comm = trainer.communicator();
  // One agreement before the first step: the sampler fits the trainer and
  // the dataset, and whether any rank set a hook (on_step is often set on
  // rank 0 only): then every rank agrees the hooks after every step.
  const auto unfit = detail::capture([&] {
    trainer.check_sampler(sampler);
    const std::size_t n = dataset.size();
    PARALLAX_CHECK(n >= sampler.dataset_size(), "train_epoch(): the dataset holds " + std::to_string(n) +
                                                    " samples but the sampler was made for " +
                                                    std::to_string(sampler.dataset_size()));
  });
  const bool hooked = sum_and_agree(comm, std::array{h.on_step || h.after_step || h.stop_when ? 1.0 : 0.0}, unfit)[0] > 0;
  agree_sampler(comm, sampler, "train_epoch(): the samplers");
  const auto start = clock::now();
  epoch_report report;
  double weighted_loss = 0;
  typename T::batch_type batch{};
  const std::size_t steps = sampler.steps_per_epoch();
  for (std::size_t s = sampler.position(); s < steps && !report.stopped; ++s) {
    const auto t0 = clock::now();
    trace::span step_span("step", "train", static_cast<std::int64_t>(s));
    const auto indices = trainer.step_indices(sampler, s);
    auto load_failure = detail::capture(
        [&] {
          trace::span span("batch", "data", static_cast<std::int64_t>(s));
          data::load_batch(dataset, indices, batch);
        },
        "the dataset's batch(): ");
    const std::uint64_t skipped_before = trainer.skipped_steps();
    const double loss = load_failure ? trainer.fail_step(std::move(*load_failure)) : trainer.train_step(batch);
    const std::size_t step_samples = sampler.global_batch();
    weighted_loss += loss * static_cast<double>(step_samples);
    report.samples += step_samples;
    ++report.steps;
    sampler.set_position(s + 1);
    const step_report step{sampler.epoch(), s, steps, trainer.optimizer().steps(), loss, step_samples,
                           std::chrono::duration<double>(clock::now() - t0).count(),
                           trainer.skipped_steps() > skipped_before};
    if (hooked) {
      trace::span hooks_span("hooks", "train");
      // Every hook runs, the first failure is kept; one all-reduce carries
      // the stop votes and the failures (0 go on, 1 stop, 2 failed), and the
      // failure is agreed only then.
      std::optional<error> failure;
      auto keep = [&](std::optional<error> f) {
        if (f && !failure) failure = std::move(f);
      };
      if (h.on_step && comm.rank() == 0) keep(detail::capture([&] { h.on_step(step); }, "on_step hook: "));
      if (h.after_step) keep(detail::capture([&] { h.after_step(step); }, "after_step hook: "));
      bool stop = false;
      if (h.stop_when) keep(detail::capture([&] { stop = h.stop_when(step); }, "stop_when hook: "));
      const int mine = failure ? 2 : stop ? 1 : 0;
      // An operation of its own: a hook that entered a collective library
      // call on some ranks only (a save on rank 0) meets the others here.
      operation vote(comm, "train_epoch(): the step's hooks", static_cast<std::int64_t>(step.optimizer_step));
      int most = 0;
      mpi::all_reduce(comm, mine, most, mpi::maximum<int>());
      if (most == 2) agree(comm, failure);
      report.stopped = most == 1;
    }
  }
  // A stopped epoch keeps its accumulated micro-steps: the next call
  // continues the optimizer step where the stop left it.
  if (!report.stopped) {
    trainer.flush();
    sampler.next_epoch();
  }
  report.loss = report.samples ? weighted_loss / static_cast<double>(report.samples) : report.loss;
  if (!trainer.step_losses_are_global()) {
    // Step losses were this rank's on some steps: report the global mean.
    double pair[2] = {weighted_loss, static_cast<double>(report.samples)};
    double total[2] = {0, 0};
    mpi::all_reduce(comm, pair, 2, total, std::plus<double>());
    if (total[1] > 0) report.loss = total[0] / total[1];
  }
  report.seconds = std::chrono::duration<double>(clock::now() - start).count();
  return report;
}

}  // namespace training
}  // namespace parallax
