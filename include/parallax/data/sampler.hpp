#pragma once
// SPDX-License-Identifier: BSL-1.0
/// DistributedSampler: which samples each rank takes at each step of an
/// epoch. Every rank computes the same plan from the same (seed, epoch), so no
/// communication is needed and every rank runs the same number of steps.

#include <parallax/core/error.hpp>
#include <parallax/detail/number_text.hpp>
#include <parallax/detail/random.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <iostream>
#include <limits>
#include <exception>
#include <numeric>
#include <span>
#include <string>
#include <vector>

namespace parallax::data {

/// What happens to the samples that do not fill a last global batch.
enum class tail_policy {
  pad,   ///< fill the last batch by wrapping around to the epoch's first samples: every sample is seen
  drop,  ///< leave them out: every step is a distinct full batch
};

struct sampler_options {
  std::uint64_t seed = 0;
  bool shuffle = true;  ///< a new permutation every epoch, from (seed, epoch)
  tail_policy tail = tail_policy::pad;
  /// Relative share of each rank in a global batch (heterogeneous ranks: a
  /// rank of weight 2 takes twice the samples of a rank of weight 1). Empty:
  /// all equal. Shares are rounded by largest remainder so they sum to the
  /// global batch; every rank must get at least one sample.
  std::vector<double> weights{};
  /// Draw the epoch's samples with replacement (bootstrap) instead of a
  /// permutation; used by Ensemble replicas.
  bool bootstrap = false;
  /// Samples per atom: every rank's share of a global batch is a whole
  /// number of atoms of this many consecutive samples, except that the last
  /// rank's share ends with the batch's last, possibly shorter, atom; the
  /// weights then share out atoms instead of samples. 1: shares of any size.
  /// DataParallel's reproducible mode sets it (data_parallel_options::
  /// reproducible_atom), so that no atom is cut between ranks.
  std::size_t atom = 1;
};

/// Splits each global batch of an epoch between ranks.
/// @code
///   parallax::data::DistributedSampler sampler(train.size(), 128, comm.size(), comm.rank(), {.seed = 7});
///   for (std::size_t s = 0; s < sampler.steps_per_epoch(); ++s)
///     trainer.train_step(train.batch(sampler.local_indices(s)));
///   sampler.next_epoch();   // DataParallel::train_epoch does this for you
/// @endcode
class DistributedSampler {
 public:
  DistributedSampler(std::size_t dataset_size, std::size_t global_batch, int world_size, int rank,
                     sampler_options options = {});

  std::size_t dataset_size() const { return n_; }
  std::size_t global_batch() const { return batch_; }
  std::size_t steps_per_epoch() const { return steps_; }
  /// The epoch whose plan local_indices() returns (starts at 0).
  std::uint64_t epoch() const { return epoch_; }
  /// Moves to another epoch (to resume), recomputing the plan.
  void set_epoch(std::uint64_t epoch);
  /// Moves to the next epoch: a new shuffle without the caller tracking it.
  void next_epoch() { set_epoch(epoch_ + 1); }
  /// The next step of the epoch to train (DataParallel::train_epoch starts
  /// here and advances it; a checkpoint saves it, so a resumed run continues
  /// mid-epoch). set_epoch() resets it to 0.
  std::size_t position() const { return position_; }
  void set_position(std::size_t step);

  /// This rank's sample indices for step `step` of the current epoch.
  std::span<const std::size_t> local_indices(std::size_t step) const { return indices(step, rank_); }
  /// Rank r's indices for a step.
  std::span<const std::size_t> indices(std::size_t step, int rank) const;
  /// Every rank's indices for a step, in rank order: the global batch a
  /// single process would take.
  std::span<const std::size_t> global_indices(std::size_t step) const;

  std::size_t local_batch_size() const { return local_batch_size(rank_); }
  std::size_t local_batch_size(int rank) const { return shares_[static_cast<std::size_t>(rank)]; }
  int world_size() const { return world_; }
  int rank() const { return rank_; }
  const sampler_options& options() const { return options_; }

 private:
  void plan();

  std::size_t n_;
  std::size_t batch_;
  int world_;
  int rank_;
  sampler_options options_;
  std::size_t steps_ = 0;
  std::uint64_t epoch_ = 0;
  std::size_t position_ = 0;
  std::vector<std::size_t> shares_;   // samples per rank per step
  std::vector<std::size_t> offsets_;  // start of rank r inside a global batch
  std::vector<std::size_t> order_;    // steps_ * batch_ indices for the epoch
};

// ---------------------------------------------------------------------------

inline DistributedSampler::DistributedSampler(std::size_t dataset_size, std::size_t global_batch, int world_size,
                                              int rank, sampler_options options)
    : n_(dataset_size), batch_(global_batch), world_(world_size), rank_(rank), options_(std::move(options)) {
  const std::string where = "DistributedSampler: ";
  PARALLAX_CHECK(world_ > 0 && rank_ >= 0 && rank_ < world_,
                 where + "rank " + std::to_string(rank_) + " of world size " + std::to_string(world_));
  PARALLAX_CHECK(batch_ > 0, where + "the global batch size is 0");
  PARALLAX_CHECK(n_ > 0, where + "the dataset is empty");
  const auto p = static_cast<std::size_t>(world_);
  PARALLAX_CHECK(n_ >= p, where + "the dataset has " + std::to_string(n_) + " samples, fewer than the " +
                              std::to_string(p) + " ranks: some rank would have no data");
  const std::size_t atom = options_.atom;
  PARALLAX_CHECK(atom >= 1, where + "the atom is 0 samples");
  // Shares are counted in atoms (with atom 1, in samples).
  const std::size_t units = batch_ / atom + (batch_ % atom != 0);
  PARALLAX_CHECK(units >= p, where + "the global batch of " + std::to_string(batch_) +
                                 (atom > 1 ? " makes " + std::to_string(units) + (units == 1 ? " atom" : " atoms") +
                                                 " of " + std::to_string(atom) + " samples" +
                                                 (batch_ % atom != 0 ? " (the last one shorter)" : "") +
                                                 ", fewer than the "
                                           : " is smaller than the ") +
                                 std::to_string(p) + " ranks: some rank would get an empty shard");
  // Padding allows a batch larger than the dataset (tail_policy::drop refuses
  // it below); it repeats samples within a step, which is rarely meant.
  if (batch_ > n_ && detail::world_rank() == 0 && options_.tail == tail_policy::pad)
    std::cerr << "parallax: warning: " << where << "the global batch of " << batch_ << " is larger than the " << n_
              << " samples of the dataset: each step repeats samples (tail_policy::pad)\n";
  // The plan holds one index per sample of the epoch (twice while it is built).
  const std::size_t bound = std::numeric_limits<std::size_t>::max() / (4 * sizeof(std::size_t));
  PARALLAX_CHECK(n_ <= bound, where + "a dataset of " + std::to_string(n_) + " samples needs a plan of " +
                                  std::to_string(n_) + " indices, more than this machine can address");
  auto& w = options_.weights;
  if (w.empty()) w.assign(p, 1.0);
  PARALLAX_CHECK(w.size() == p, where + std::to_string(w.size()) + " weights for " + std::to_string(p) + " ranks");
  double total = 0;
  for (std::size_t r = 0; r < p; ++r) {
    PARALLAX_CHECK(std::isfinite(w[r]) && w[r] > 0,
                   where + "weight of rank " + std::to_string(r) + " is " + detail::number_text(w[r]) + ", not positive");
    total += w[r];
  }
  // Largest remainder: floor shares, then one more to the largest remainders
  // (ties to the lower rank), so the shares sum to the batch exactly.
  shares_.assign(p, 0);
  std::vector<double> remainder(p);
  std::size_t given = 0;
  for (std::size_t r = 0; r < p; ++r) {
    const double exact = static_cast<double>(units) * w[r] / total;
    shares_[r] = static_cast<std::size_t>(std::floor(exact));
    remainder[r] = exact - static_cast<double>(shares_[r]);
    given += shares_[r];
  }
  std::vector<std::size_t> by_remainder(p);
  std::iota(by_remainder.begin(), by_remainder.end(), std::size_t{0});
  std::stable_sort(by_remainder.begin(), by_remainder.end(),
                   [&](std::size_t a, std::size_t b) { return remainder[a] > remainder[b]; });
  for (std::size_t i = 0; given < units; ++i, ++given) ++shares_[by_remainder[i % p]];
  for (std::size_t r = 0; r < p; ++r)
    PARALLAX_CHECK(shares_[r] > 0, where + "rank " + std::to_string(r) + "'s weight gives it no " +
                                       (atom > 1 ? "atom" : "sample") + " of a global batch of " +
                                       std::to_string(batch_) + ": an empty shard");
  for (auto& share : shares_) share *= atom;
  shares_[p - 1] -= units * atom - batch_;  // the last atom may be short: it ends the last rank's share
  offsets_.assign(p, 0);
  for (std::size_t r = 1; r < p; ++r) offsets_[r] = offsets_[r - 1] + shares_[r - 1];
  if (options_.tail == tail_policy::drop) {
    steps_ = n_ / batch_;
    PARALLAX_CHECK(steps_ > 0, where + "with tail_policy::drop, " + std::to_string(n_) +
                                   " samples make no full global batch of " + std::to_string(batch_));
  } else {
    steps_ = (n_ + batch_ - 1) / batch_;
  }
  plan();
}

inline void DistributedSampler::set_epoch(std::uint64_t epoch) {
  epoch_ = epoch;
  position_ = 0;
  plan();
}

inline void DistributedSampler::set_position(std::size_t step) {
  PARALLAX_CHECK(step <= steps_, "DistributedSampler::set_position(): step " + std::to_string(step) +
                                     " of an epoch of " + std::to_string(steps_) + " steps");
  position_ = step;
}

inline void DistributedSampler::plan() {
  std::vector<std::size_t> epoch_order;
  try {
    epoch_order.resize(n_);
    order_.reserve(steps_ * batch_);
  } catch (const std::exception&) {  // bad_alloc, or length_error past what a vector can hold
    detail::throw_error("DistributedSampler: cannot allocate the plan of an epoch of " + std::to_string(n_) +
                        " samples (" + std::to_string((n_ + steps_ * batch_) * sizeof(std::size_t)) + " bytes)");
  }
  detail::rng g(detail::key(options_.seed, 0x5a3d1e5ULL, epoch_));
  if (options_.bootstrap) {
    for (auto& i : epoch_order) i = static_cast<std::size_t>(g.below(n_));
  } else {
    std::iota(epoch_order.begin(), epoch_order.end(), std::size_t{0});
    if (options_.shuffle) detail::shuffle(epoch_order.begin(), epoch_order.end(), g);
  }
  order_.resize(steps_ * batch_);
  for (std::size_t i = 0; i < order_.size(); ++i) order_[i] = epoch_order[i % n_];  // pad wraps around
}

inline std::span<const std::size_t> DistributedSampler::indices(std::size_t step, int rank) const {
  PARALLAX_CHECK(step < steps_, "DistributedSampler: step " + std::to_string(step) + " of an epoch of " +
                                    std::to_string(steps_) + " steps");
  PARALLAX_CHECK(rank >= 0 && rank < world_, "DistributedSampler: no rank " + std::to_string(rank));
  const auto r = static_cast<std::size_t>(rank);
  return std::span<const std::size_t>(order_).subspan(step * batch_ + offsets_[r], shares_[r]);
}

inline std::span<const std::size_t> DistributedSampler::global_indices(std::size_t step) const {
  PARALLAX_CHECK(step < steps_, "DistributedSampler: step " + std::to_string(step) + " of an epoch of " +
                                    std::to_string(steps_) + " steps");
  return std::span<const std::size_t>(order_).subspan(step * batch_, batch_);
}

}  // namespace parallax::data
