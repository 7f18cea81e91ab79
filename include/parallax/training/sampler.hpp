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
#include <parallax/detail/number_text.hpp>

#include <cstddef>
#include <cstdint>
#include <source_location>
#include <string>
#include <utility>
#include <vector>

namespace parallax::training {

/// Collective. A sampler over `shards` shards of which this rank reads
/// `shard` (data parallel: one shard per rank; a pipeline: one shard that
/// every rank reads whole); `who` names the caller in messages.
data::DistributedSampler make_sampler(const mpi::communicator& comm, std::size_t dataset_size,
                                      std::size_t global_batch, data::sampler_options options, int shards, int shard,
                                      const std::string& who, std::source_location site);

/// Throws (on this rank only: Trainer::check_sampler is agreed by the
/// epoch loop's first agreement) when `sampler` was not made for shard
/// `shard` of `shards`.
void check_sampler(const data::DistributedSampler& sampler, int shards, int shard, const std::string& who);

// ===========================================================================
// Implementation
// ===========================================================================

inline data::DistributedSampler make_sampler(const mpi::communicator& comm, std::size_t dataset_size,
                                             std::size_t global_batch, data::sampler_options options, int shards,
                                             int shard, const std::string& who, std::source_location site) {
  operation op(comm, who, -1, site);
  std::string weights;
  for (double w : options.weights) weights += (weights.empty() ? "" : ", ") + detail::number_text(w);
  agree_settings(comm,
                 {{"the dataset size", 0, std::to_string(dataset_size)},
                  {"the global batch", 0, std::to_string(global_batch)},
                  {"seed", 0, std::to_string(options.seed)},
                  {"shuffle", 0, options.shuffle ? "true" : "false"},
                  {"tail", 0, options.tail == data::tail_policy::pad ? "pad" : "drop"},
                  {"weights", 0, "{" + weights + "}"},
                  {"bootstrap", 0, options.bootstrap ? "true" : "false"},
                  {"atom", static_cast<double>(options.atom)}},
                 who);
  return agree(comm, [&] { return data::DistributedSampler(dataset_size, global_batch, shards, shard, std::move(options)); });
}

inline void check_sampler(const data::DistributedSampler& sampler, int shards, int shard, const std::string& who) {
  PARALLAX_CHECK(sampler.world_size() == shards && sampler.rank() == shard,
                 who + ": the sampler was made for rank " + std::to_string(sampler.rank()) + " of " +
                     std::to_string(sampler.world_size()) + ", this trainer reads shard " + std::to_string(shard) +
                     " of " + std::to_string(shards));
}

}  // namespace parallax::training
