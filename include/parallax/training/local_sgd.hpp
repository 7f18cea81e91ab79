#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Local SGD: every rank steps its own optimizer on its own gradient, and
/// every k optimizer steps the parameters are averaged over the ranks,
/// weighted by the samples each rank trained on since the last average. This
/// changes results against synchronous data parallel (except k = 1 with
/// plain SGD), so it is off unless asked for.

#include <parallax/core/agree.hpp>
#include <parallax/core/error.hpp>
#include <parallax/core/reducer.hpp>
#include <parallax/optim/optimizer.hpp>
#include <parallax/training/update.hpp>

#include <boost/mpi/collectives.hpp>

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace parallax::training {

/// The averaging schedule and the samples it weighs by.
class local_sgd {
 public:
  /// every = 0: off (synchronous data parallel).
  explicit local_sgd(std::size_t every) : every_(every) {}

  bool enabled() const { return every_ > 0; }

  /// After a local optimizer step (or a failed one) over `samples` samples of
  /// this rank: whether the parameters are due for averaging now.
  bool step_done(double samples) {
    samples_ += samples;
    return ++steps_ % every_ == 0;
  }

  /// This rank's own step, no communication: the gradient summed over
  /// `samples` in the reducer's buckets becomes their mean and goes through
  /// `up`, unless `failure` is pending or there were no samples. A
  /// non-finite gradient or loss skips the step under skip_step; under the
  /// error policy it becomes this rank's `failure` (error(nonfinite,
  /// describe(index of the first non-finite gradient tensor, or
  /// std::nullopt for the loss))), agreed at the next averaging. Returns whether the averaging is due.
  template <class T, class Describe>
  bool step(updater<T>& up, optim::Optimizer<T>& optimizer, const std::vector<std::span<T>>& params,
            gradient_reducer<T>& reducer, double loss_sum, double samples, std::optional<error>& failure,
            Describe&& describe);

  /// Collective over the reducer's communicator: the parameters become
  /// sum_r n_r theta_r / sum_r n_r (n_r: samples since the last average), so
  /// unequal shards average like one process would. A failure pending on
  /// any rank (`failure`, cleared here) is thrown on every rank first;
  /// `who` names the caller in the error when no rank trained on a sample.
  template <class T>
  void average(gradient_reducer<T>& reducer, const std::vector<std::span<T>>& params,
               std::optional<error>& failure, std::string_view who);

 private:
  std::size_t every_;
  std::uint64_t steps_ = 0;
  double samples_ = 0;  // this rank's samples since the last average
};

// ===========================================================================
// Implementation
// ===========================================================================

template <class T, class Describe>
bool local_sgd::step(updater<T>& up, optim::Optimizer<T>& optimizer, const std::vector<std::span<T>>& params,
                     gradient_reducer<T>& reducer, double loss_sum, double samples, std::optional<error>& failure,
                     Describe&& describe) {
  bool stepped = !failure && samples > 0;
  if (stepped) {
    const T inv = T(1) / static_cast<T>(samples);
    for (auto g : reducer.views())
      for (auto& x : g) x *= inv;
    const std::size_t first = first_nonfinite(reducer.const_views());
    const std::optional<std::size_t> bad = first < params.size() ? std::optional(first) : std::nullopt;
    const bool nonfinite = bad || !std::isfinite(loss_sum);
    if (nonfinite && up.options().on_nonfinite == nonfinite_policy::error) {
      failure = error(error_kind::nonfinite, describe(bad), parallax::detail::this_rank());
      stepped = false;
    } else {
      up.apply(optimizer, params, reducer.views(), reducer.const_views(), nonfinite, std::nullopt,
               [] { return std::string(); });
    }
  }
  return step_done(stepped ? samples : 0.0);
}

template <class T>
void local_sgd::average(gradient_reducer<T>& reducer, const std::vector<std::span<T>>& params,
                        std::optional<error>& failure, std::string_view who) {
  // As for gradients: the counts first, then the weighted sums divided
  // inside the all-reduce.
  const auto pending = std::move(failure);
  failure.reset();
  const double mine = samples_;
  samples_ = 0;
  const auto [total] = sum_and_agree(reducer.communicator(), std::array{mine}, pending);
  PARALLAX_CHECK(total > 0, std::string(who) + ": no rank trained on any sample");
  reducer.average_into(params, static_cast<T>(mine), T(1) / static_cast<T>(total));
}

}  // namespace parallax::training
