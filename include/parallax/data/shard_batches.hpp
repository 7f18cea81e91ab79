#pragma once
// SPDX-License-Identifier: BSL-1.0
/// shard_batches: batches for training on a fixed split (docs/datasets.md,
/// "Reading only a rank's shard"), where each rank draws its samples from the
/// rows of its own shard only and every rank runs the same number of steps.

#include <parallax/core/agree.hpp>
#include <parallax/core/operation.hpp>
#include <parallax/data/batch.hpp>
#include <parallax/data/sampler.hpp>

#include <boost/mpi/collectives/all_reduce.hpp>
#include <boost/mpi/communicator.hpp>
#include <boost/mpi/operations.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <source_location>
#include <string>

namespace parallax::data {

/// Each step, `local_batch` samples of this rank's shard (a DistributedSampler
/// over shard.local() alone, tail_policy::drop, shuffled each epoch from
/// seed + rank); steps() is the same on every rank: the full local batches of
/// the smallest shard, so the ranks' collective train_step calls match.
/// Rows of larger shards past steps() · local_batch sit out an epoch
/// (different ones each epoch). Holds a reference to `shard`.
/// @code
///   const auto shard = parallax::data::load_hdf5_shard<X, Y>(comm, "train.h5");
///   parallax::data::shard_batches batches(comm, shard, 32, 7);
///   for (std::size_t s = 0; s < batches.steps(); ++s) trainer.train_step(batches.batch(s));
///   batches.next_epoch();
/// @endcode
template <class X, class Y>
class shard_batches {
 public:
  /// Collective over `comm`: a shard without one full local batch on any
  /// rank is the same error on every rank.
  shard_batches(const mpi::communicator& comm, const ShardDataset<X, Y>& shard, std::size_t local_batch,
                std::uint64_t seed, std::source_location site = std::source_location::current());

  /// Steps of an epoch, equal on every rank.
  std::size_t steps() const { return steps_; }
  /// This rank's samples of step `step` (< steps()) of the current epoch.
  Batch<X, Y> batch(std::size_t step) const { return shard_->local().batch(sampler_->local_indices(step)); }
  /// A new shuffle of every rank's rows.
  void next_epoch() { sampler_->next_epoch(); }
  /// The sampler over this rank's rows (numbered from 0 in shard.local()).
  const DistributedSampler& sampler() const { return *sampler_; }

 private:
  const ShardDataset<X, Y>* shard_;
  std::optional<DistributedSampler> sampler_;
  std::size_t steps_ = 0;
};

// ---------------------------------------------------------------------------

template <class X, class Y>
shard_batches<X, Y>::shard_batches(const mpi::communicator& comm, const ShardDataset<X, Y>& shard,
                                   std::size_t local_batch, std::uint64_t seed, std::source_location site)
    : shard_(&shard) {
  operation op(comm, "shard_batches::shard_batches()", -1, site);
  // The sampler's checks are local (an empty or small shard on one rank):
  // agreed before the all-reduce every rank must reach.
  agree(comm, detail::capture([&] {
    try {
      sampler_.emplace(shard.local().size(), local_batch, 1, 0,
                       sampler_options{.seed = seed + static_cast<std::uint64_t>(comm.rank()),
                                       .tail = tail_policy::drop});
    } catch (const error& e) {
      detail::throw_error(e.kind(), "shard_batches: this rank's shard of " + std::to_string(shard.local().size()) +
                                        " rows: " + e.cause());
    }
  }));
  mpi::all_reduce(comm, sampler_->steps_per_epoch(), steps_, mpi::minimum<std::size_t>());
}

}  // namespace parallax::data
