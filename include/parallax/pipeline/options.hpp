#pragma once
// SPDX-License-Identifier: BSL-1.0
/// What ModelParallel is told (pipeline_options) and what it reports
/// (pipeline_stats): plain data, kept apart from the trainer's class.

#include <parallax/core/agree.hpp>
#include <parallax/optim/optimizer.hpp>
#include <parallax/optim/schedule.hpp>
#include <parallax/pipeline/partition.hpp>
#include <parallax/pipeline/schedule.hpp>
#include <parallax/training/loop.hpp>
#include <parallax/training/update.hpp>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace parallax {

struct pipeline_options {
  /// Micro-batches per step. A batch that is not a multiple of it is cut
  /// into sizes that differ by at most one; the loss is still the exact mean
  /// over the batch. A batch smaller than it is an error.
  std::size_t micro_batches = 4;
  pipeline::schedule_kind schedule = pipeline::schedule_kind::one_f_one_b;
  /// Keep only each micro-batch's stage input (and output) and recompute the
  /// stage's forward during its backward: compute for memory.
  bool recompute = false;
  /// Layer i is initialised with initialize(seed, i), whatever the partition.
  std::uint64_t seed = 0;
  /// Stage s holds layers [boundaries[s], boundaries[s + 1]). Empty: balanced
  /// by parameter count (layers need a static parameter_count(args...)), or
  /// use ModelParallel::profile_boundaries() to balance by measured time.
  pipeline::boundaries boundaries{};
  /// Relative speed of each rank (stage) for the balanced partition; empty:
  /// all equal.
  std::vector<double> stage_speeds{};
  /// Clip the gradient to this global norm (summed over all stages); 0: off.
  double clip_norm = 0;
  /// Learning rate per step; empty: the optimizer's own.
  optim::lr_schedule lr_schedule{};
  /// What a step does when some stage's gradient holds a NaN or an infinity.
  nonfinite_policy on_nonfinite = nonfinite_policy::error;
  /// train_epoch's hooks (training::hooks): after every step on rank 0
  /// only, on every rank, and a vote to stop (any rank's true stops all at
  /// the same step).
  std::function<void(const step_report&)> on_step{};
  std::function<void(const step_report&)> after_step{};
  std::function<bool(const step_report&)> stop_when{};
};

/// What a stage held and did, for reports and tests.
struct pipeline_stats {
  std::size_t peak_micro_batches = 0;  ///< most micro-batches with saved activations at once, this stage
  std::size_t peak_saved_bytes = 0;    ///< most bytes of saved activations at once, this stage
  std::size_t local_parameters = 0;    ///< parameters (elements) this rank holds
  double last_step_seconds = 0;
};

/// The pipeline's settings that every rank must share, for agree_settings:
/// the partition `cut`, micro-batches, schedule, recompute and seed, then
/// the update path's (training::update_settings, with `optimizer`).
template <std::floating_point T>
std::vector<setting> pipeline_settings(const pipeline_options& o, const pipeline::boundaries& cut,
                                       const optim::Optimizer<T>& optimizer) {
  std::string text;
  for (auto b : cut) text += (text.empty() ? "" : ", ") + std::to_string(b);
  std::vector<setting> out = {{"the partition (pipeline_options::boundaries or stage_speeds)", 0, "{" + text + "}"},
                              {"micro_batches", static_cast<double>(o.micro_batches)},
                              {"schedule", 0, pipeline::schedule_name(o.schedule)},
                              {"recompute", o.recompute ? 1.0 : 0.0},
                              {"seed", 0, std::to_string(o.seed)}};
  const auto update = training::update_settings({o.on_nonfinite, o.clip_norm, o.lr_schedule}, optimizer);
  out.insert(out.end(), update.begin(), update.end());
  return out;
}

}  // namespace parallax
