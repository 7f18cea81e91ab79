#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The tail of every trainer's step, in one place: non-finite policy → clip
/// by global norm → learning-rate schedule → optimizer step. A trainer
/// computes its gradient (and, where it is spread over ranks, the agreed
/// squared norm and non-finite verdict); the updater does the rest alike for
/// DataParallel, ModelParallel and whatever trainer comes next.

#include <parallax/core/agree.hpp>
#include <parallax/core/error.hpp>
#include <parallax/core/trace.hpp>
#include <parallax/optim/clip.hpp>
#include <parallax/optim/optimizer.hpp>
#include <parallax/optim/schedule.hpp>

#include <array>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <type_traits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace parallax {

/// What a step does when its gradient holds a NaN or an infinity. The
/// verdict is the same on every rank (it comes out of the step's one
/// agreement), so every rank takes the same decision.
enum class nonfinite_policy {
  error,      ///< throw parallax::error (kind nonfinite) on every rank (default)
  skip_step,  ///< leave parameters and optimizer untouched, count the step as skipped
};

namespace training {

/// The options of the update path; each trainer's options carry them.
struct update_options {
  nonfinite_policy on_nonfinite = nonfinite_policy::error;
  double clip_norm = 0;              ///< clip the gradient to this global L2 norm (0: off)
  optim::lr_schedule lr_schedule{};  ///< learning rate per optimizer step; empty: the optimizer's own
};

/// The optimizer steps at which the trainers check and compare a schedule's
/// learning rate (a schedule is a function, compared by its values).
inline constexpr std::array<std::uint64_t, 8> schedule_probe_steps = {0, 1, 2, 10, 100, 1000, 10000, 100000};

/// Throws parallax::error naming `trainer` when the options are invalid, the
/// optimizer is (optim::Optimizer::validate()), or the schedule throws or
/// gives a learning rate that is not finite and >= 0 at one of
/// schedule_probe_steps. A local check: run it inside the trainer's first
/// agree().
template <std::floating_point T>
void check(const update_options& options, const optim::Optimizer<T>& optimizer, const std::string& trainer);

/// The settings of the update path that must match on every rank, for
/// agree_settings: the non-finite policy, clipping, whether a schedule is
/// set and its learning rate at schedule_probe_steps, the optimizer's kind,
/// learning rate and hyper-parameters. Run check() first (this calls the
/// schedule).
template <std::floating_point T>
std::vector<setting> update_settings(const update_options& options, const optim::Optimizer<T>& optimizer);

/// Applies steps to one set of parameters with one optimizer.
template <class T>
class updater {
 public:
  explicit updater(update_options options) : options_(std::move(options)) {}

  /// Whether the step needs the gradient's squared global norm (clipping).
  bool needs_norm() const { return options_.clip_norm > 0; }

  /// One step on `grads` (modified by clipping). `nonfinite` and
  /// `squared_norm` must be the same on every rank of the step: a trainer
  /// whose gradient is spread over ranks agrees them first; without
  /// `squared_norm` the norm of `grads` is taken here (a replicated
  /// gradient). A non-finite gradient throws error(nonfinite, describe())
  /// (or describe() itself, when it returns the error with its ranks)
  /// or, with skip_step, counts a skipped step. Returns whether the step
  /// was applied.
  template <class Describe>
  bool apply(optim::Optimizer<T>& optimizer, const std::vector<std::span<T>>& params,
             const std::vector<std::span<T>>& grads, const std::vector<std::span<const T>>& grads_const,
             bool nonfinite, std::optional<double> squared_norm, Describe&& describe);

  std::uint64_t skipped() const { return skipped_; }
  const update_options& options() const { return options_; }

 private:
  update_options options_;
  std::uint64_t skipped_ = 0;
};

/// The index of the first tensor holding a NaN or an infinity, or the
/// number of tensors when all are finite. One vectorisable pass per tensor
/// (x - x is NaN exactly for a NaN or infinite x), no early exit inside it.
template <class T>
std::size_t first_nonfinite(const std::vector<std::span<const T>>& tensors);

/// Whether every value of `values` is finite (the pass of first_nonfinite).
template <class T>
bool all_finite(std::span<const T> values);

/// The message of a non-finite step, alike in every trainer: "<who>: <what>
/// is not finite at optimizer step <step> (use nonfinite_policy::skip_step
/// to skip such steps)"; `what` says where, e.g. "the loss" or "the gradient
/// of parameter 3".
std::string nonfinite_message(std::string_view who, std::string_view what, std::uint64_t step);

// ===========================================================================
// Implementation
// ===========================================================================

template <std::floating_point T>
std::vector<setting> update_settings(const update_options& options, const optim::Optimizer<T>& optimizer) {
  std::vector<setting> out = {
      {"on_nonfinite", 0, options.on_nonfinite == nonfinite_policy::error ? "error" : "skip_step"},
      {"clip_norm", options.clip_norm},
      {"lr_schedule", 0, options.lr_schedule ? "set" : "none"},
      {"optimizer", 0, optimizer.state_view().kind},
      {"lr", optimizer.learning_rate()}};
  if (options.lr_schedule) {
    for (const auto step : schedule_probe_steps)
      out.push_back({"lr_schedule at step " + std::to_string(step), options.lr_schedule(step)});
  }
  for (auto& [name, value] : optimizer.hyperparameters()) out.push_back({"optimizer " + name, value});
  return out;
}

template <std::floating_point T>
void check(const update_options& options, const optim::Optimizer<T>& optimizer, const std::string& trainer) {
  optimizer.validate();
  PARALLAX_CHECK(options.clip_norm >= 0, trainer + ": clip_norm must not be negative");
  if (!options.lr_schedule) return;
  for (const auto step : schedule_probe_steps) {
    const double lr = options.lr_schedule(step);
    PARALLAX_CHECK(std::isfinite(lr) && lr >= 0, trainer + ": lr_schedule gives lr = " +
                                                     parallax::detail::number_text(lr) + " at optimizer step " +
                                                     std::to_string(step) + "; it must be finite and >= 0");
  }
}

template <class T>
bool all_finite(std::span<const T> values) {
  unsigned bad = 0;
  for (T x : values) {
    const T z = x - x;
    bad |= z != z ? 1u : 0u;
  }
  return bad == 0;
}

template <class T>
std::size_t first_nonfinite(const std::vector<std::span<const T>>& tensors) {
  std::size_t i = 0;
  while (i < tensors.size() && all_finite(tensors[i])) ++i;
  return i;
}

inline std::string nonfinite_message(std::string_view who, std::string_view what, std::uint64_t step) {
  std::string out(who);
  out += ": ";
  out += what;
  out += " is not finite at optimizer step " + std::to_string(step) +
         " (use nonfinite_policy::skip_step to skip such steps)";
  return out;
}

template <class T>
template <class Describe>
bool updater<T>::apply(optim::Optimizer<T>& optimizer, const std::vector<std::span<T>>& params,
                       const std::vector<std::span<T>>& grads, const std::vector<std::span<const T>>& grads_const,
                       bool nonfinite, std::optional<double> squared_norm, Describe&& describe) {
  if (nonfinite) {
    if (options_.on_nonfinite == nonfinite_policy::error) {
      if constexpr (std::same_as<std::invoke_result_t<Describe&>, error>) throw describe();
      else throw error(error_kind::nonfinite, describe());
    }
    ++skipped_;
    return false;
  }
  if (options_.clip_norm > 0) {
    const double sq = squared_norm ? *squared_norm : optim::squared_norm<T>(grads_const);
    const double factor = optim::clip_factor(std::sqrt(sq), options_.clip_norm);
    if (factor < 1) optim::scale<T>(grads, static_cast<T>(factor));
  }
  trace::span span("optimizer", "update");
  if (options_.lr_schedule) optimizer.set_learning_rate(options_.lr_schedule(optimizer.steps()));
  optimizer.step(params, grads_const);
  return true;
}

}  // namespace training
}  // namespace parallax
