#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Learning-rate schedules: plain functions from the step number (counting
/// from 0) to a learning rate, and factories for the common shapes. A
/// training loop sets the rate before each step:
/// @code
///   auto schedule = optim::warmup_lr(100, optim::cosine_lr(1e-3, 10'000));
///   optimizer.set_learning_rate(schedule(optimizer.steps()));
///   optimizer.step(params, grads);
/// @endcode
/// Being a function of the step count alone, a schedule resumes from a
/// checkpoint with nothing to save beyond optimizer_state::steps.
///
/// The factories do not throw for arguments out of range: they return a
/// schedule that throws that parallax::error (naming the argument and its
/// value) whenever it is called. A schedule invalid on one rank only thus
/// still reaches the trainer, whose constructor calls it inside its first
/// agreement, and every rank gets the same error.

#include <parallax/core/error.hpp>
#include <parallax/optim/optimizer.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numbers>
#include <string>
#include <utility>

namespace parallax::optim {

/// A learning-rate schedule: step (from 0) -> learning rate.
using lr_schedule = std::function<double(std::uint64_t)>;

/// lr at every step. lr must be finite and >= 0.
lr_schedule constant_lr(double lr);

/// base * gamma^(step / step_size), with integer division (PyTorch's StepLR).
/// step_size must be > 0; base and gamma finite and >= 0.
lr_schedule step_lr(double base, std::uint64_t step_size, double gamma);

/// Cosine annealing from base at step 0 to min_lr at total_steps, then
/// min_lr: min_lr + (base - min_lr) * (1 + cos(pi * min(step, total_steps) /
/// total_steps)) / 2. total_steps must be > 0; base and min_lr finite and >= 0.
lr_schedule cosine_lr(double base, std::uint64_t total_steps, double min_lr = 0);

/// Linear warm-up from start_factor * after(0) at step 0 to after(0) at
/// warmup_steps, then after(step - warmup_steps). warmup_steps may be 0 (no
/// warm-up); `after` must not be empty; start_factor must be in [0, 1].
lr_schedule warmup_lr(std::uint64_t warmup_steps, lr_schedule after, double start_factor = 0);

namespace detail {

/// `make()` when `checks()` passes; else a schedule that throws the
/// parallax::error the checks threw.
template <class Checks, class Make>
lr_schedule checked_schedule(Checks&& checks, Make&& make);

}  // namespace detail

// ---------------------------------------------------------------------------
// Implementation
// ---------------------------------------------------------------------------

namespace detail {

template <class Checks, class Make>
lr_schedule checked_schedule(Checks&& checks, Make&& make) {
  try {
    checks();
  } catch (const error& e) {
    return [e](std::uint64_t) -> double { throw e; };
  }
  return make();
}

}  // namespace detail

inline lr_schedule constant_lr(double lr) {
  return detail::checked_schedule([&] { detail::check_non_negative("constant_lr()", "lr", lr); },
                                  [&] { return [lr](std::uint64_t) { return lr; }; });
}

inline lr_schedule step_lr(double base, std::uint64_t step_size, double gamma) {
  return detail::checked_schedule(
      [&] {
        detail::check_non_negative("step_lr()", "base", base);
        PARALLAX_CHECK(step_size > 0, "step_lr(): step_size = 0 must be > 0");
        detail::check_non_negative("step_lr()", "gamma", gamma);
      },
      [&] {
        return [base, step_size, gamma](std::uint64_t step) {
          return base * std::pow(gamma, static_cast<double>(step / step_size));
        };
      });
}

inline lr_schedule cosine_lr(double base, std::uint64_t total_steps, double min_lr) {
  return detail::checked_schedule(
      [&] {
        detail::check_non_negative("cosine_lr()", "base", base);
        PARALLAX_CHECK(total_steps > 0, "cosine_lr(): total_steps = 0 must be > 0");
        detail::check_non_negative("cosine_lr()", "min_lr", min_lr);
      },
      [&] {
        return [base, total_steps, min_lr](std::uint64_t step) {
          const double progress =
              static_cast<double>(std::min(step, total_steps)) / static_cast<double>(total_steps);
          return min_lr + (base - min_lr) * (1 + std::cos(std::numbers::pi * progress)) / 2;
        };
      });
}

inline lr_schedule warmup_lr(std::uint64_t warmup_steps, lr_schedule after, double start_factor) {
  return detail::checked_schedule(
      [&] {
        PARALLAX_CHECK(static_cast<bool>(after), "warmup_lr(): the schedule after the warm-up is empty");
        detail::check_unit_interval("warmup_lr()", "start_factor", start_factor, true);
      },
      [&] {
        return [warmup_steps, after = std::move(after), start_factor](std::uint64_t step) {
          if (step >= warmup_steps) return after(step - warmup_steps);
          const double fraction = static_cast<double>(step) / static_cast<double>(warmup_steps);
          return after(0) * (start_factor + (1 - start_factor) * fraction);
        };
      });
}

}  // namespace parallax::optim
