#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Samplers made and checked collectively for a trainer: every rank must ask
/// for the same plan (dataset size, global batch, seed, options), and a
/// sampler must belong to the shard the trainer reads.

#include <parallax/core/agree.hpp>
#include <parallax/core/error.hpp>
#include <parallax/core/operation.hpp>
#include <parallax/data/sampler.hpp>
#include <parallax/detail/mpi.hpp>
#include <parallax/detail/random.hpp>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace parallax::training {

/// Collective. A sampler over `shards` shards of which this rank reads
/// `shard` (data parallel: one shard per rank; a pipeline: one shard that
/// every rank reads whole); `who` names the caller in messages.
data::DistributedSampler make_sampler(const mpi::communicator& comm, std::size_t dataset_size,
                                      std::size_t global_batch, data::sampler_options options, int shards, int shard,
                                      const std::string& who);

/// Collective. Throws on every rank when some rank's sampler was not made
/// for shard `shard` of `shards`.
void check_sampler(const mpi::communicator& comm, const data::DistributedSampler& sampler, int shards, int shard,
                   const std::string& who);

// ===========================================================================
// Implementation
// ===========================================================================

inline data::DistributedSampler make_sampler(const mpi::communicator& comm, std::size_t dataset_size,
                                             std::size_t global_batch, data::sampler_options options, int shards,
                                             int shard, const std::string& who) {
  operation op(comm, who);
  agree_equal(comm, static_cast<std::uint64_t>(dataset_size), who + ": the dataset size");
  agree_equal(comm, static_cast<std::uint64_t>(global_batch), who + ": the global batch");
  agree_equal(comm, options.seed, who + ": the seed");
  std::vector<std::uint64_t> plan = {static_cast<std::uint64_t>(options.tail), options.shuffle, options.bootstrap,
                                     options.weights.size()};
  for (double w : options.weights) plan.push_back(std::bit_cast<std::uint64_t>(w));
  agree_equal(comm, detail::words_hash(plan),
              who + ": the sampler options (tail, shuffle, weights)");
  return agree(comm, [&] { return data::DistributedSampler(dataset_size, global_batch, shards, shard, std::move(options)); });
}

inline void check_sampler(const mpi::communicator& comm, const data::DistributedSampler& sampler, int shards,
                          int shard, const std::string& who) {
  agree(comm, [&] {
    PARALLAX_CHECK(sampler.world_size() == shards && sampler.rank() == shard,
                   who + ": the sampler was made for rank " + std::to_string(sampler.rank()) + " of " +
                       std::to_string(sampler.world_size()) + ", this trainer reads shard " + std::to_string(shard) +
                       " of " + std::to_string(shards));
  });
}

}  // namespace parallax::training
