#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The trainer concept: what the shared epoch loop needs of a trainer
/// (DataParallel, ModelParallel, and trainers to come) — one step on a batch,
/// which samples this rank loads for a step of a sampler, and the step's
/// counters.

#include <parallax/core/error.hpp>
#include <parallax/data/sampler.hpp>
#include <parallax/detail/mpi.hpp>
#include <parallax/optim/optimizer.hpp>

#include <boost/mpi/communicator.hpp>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>

namespace parallax::training {

/// A trainer the loop can drive.
/// @code
///   static_assert(parallax::training::Trainer<parallax::DataParallel<MyNet>>);
/// @endcode
template <class T>
concept Trainer = requires(T& t, const T& ct, const typename T::batch_type& batch,
                           const data::DistributedSampler& sampler, std::size_t step) {
  typename T::value_type;
  typename T::batch_type;
  /// Collective: one step (or micro-step) on this rank's batch; the step's loss.
  { t.train_step(batch) } -> std::convertible_to<double>;
  /// Collective, in place of train_step() on a rank that could not take part
  /// (its batch failed to load): the step runs its agreement without
  /// training, so every rank throws `cause` (with the ranks) when the step
  /// communicates. Returns like train_step() when it does not throw.
  { t.fail_step(std::declval<error>()) } -> std::convertible_to<double>;
  /// Collective: applies what accumulated steps left pending.
  t.flush();
  /// The samples this rank loads for `step` of the sampler's epoch.
  { ct.step_indices(sampler, step) } -> std::convertible_to<std::span<const std::size_t>>;
  /// Throws, on this rank, when the sampler does not fit the trainer (the
  /// loop agrees it in its first agreement, so it is one error on every rank).
  ct.check_sampler(sampler);
  /// Whether train_step() returns the global loss of every step (else the
  /// loop reduces the epoch's loss itself).
  { ct.step_losses_are_global() } -> std::convertible_to<bool>;
  { ct.skipped_steps() } -> std::convertible_to<std::uint64_t>;
  { t.optimizer() } -> std::convertible_to<optim::Optimizer<typename T::value_type>&>;
  { ct.communicator() } -> std::convertible_to<const mpi::communicator&>;
};

}  // namespace parallax::training
