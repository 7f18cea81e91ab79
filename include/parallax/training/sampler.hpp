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
/// every rank reads whole); `who` names the caller in messages. `check`
/// (the trainer's own conditions on the options) may throw; like every
/// failure here it is agreed.
template <class Check = void (*)(const data::sampler_options&)>
data::DistributedSampler make_sampler(const mpi::communicator& comm, std::size_t dataset_size,
                                      std::size_t global_batch, data::sampler_options options, int shards, int shard,
                                      const std::string& who, std::source_location site,
                                      Check check = [](const data::sampler_options&) {});

/// The plan's settings that every rank's sampler must share, for
/// agree_settings.
std::vector<setting> plan_settings(std::size_t dataset_size, std::size_t global_batch,
                                   const data::sampler_options& options);

/// Collective, at the start of an epoch: every rank's sampler has the same
/// plan (plan_settings), epoch and position; otherwise a rank_mismatch on
/// every rank naming what differs (a sampler built by hand with another
/// batch or seed on some rank would train on steps the others do not take).
void agree_sampler(const mpi::communicator& comm, const data::DistributedSampler& sampler, const std::string& who);

/// Throws (on this rank only: Trainer::check_sampler is agreed by the
/// epoch loop's first agreement) when `sampler` was not made for shard
/// `shard` of `shards`.
void check_sampler(const data::DistributedSampler& sampler, int shards, int shard, const std::string& who);

// ===========================================================================
// Implementation
// ===========================================================================

template <class Check>
data::DistributedSampler make_sampler(const mpi::communicator& comm, std::size_t dataset_size,
                                      std::size_t global_batch, data::sampler_options options, int shards, int shard,
                                      const std::string& who, std::source_location site, Check check) {
  operation op(comm, who, -1, site);
  agree_settings(comm, plan_settings(dataset_size, global_batch, options), who);
  return agree(comm, [&] {
    check(std::as_const(options));
    return data::DistributedSampler(dataset_size, global_batch, shards, shard, std::move(options));
  });
}

inline std::vector<setting> plan_settings(std::size_t dataset_size, std::size_t global_batch,
                                          const data::sampler_options& options) {
  std::string weights;
  for (double w : options.weights) weights += (weights.empty() ? "" : ", ") + detail::number_text(w);
  return {{"the dataset size", 0, std::to_string(dataset_size)},
          {"the global batch", 0, std::to_string(global_batch)},
          {"seed", 0, std::to_string(options.seed)},
          {"shuffle", 0, options.shuffle ? "true" : "false"},
          {"tail", 0, options.tail == data::tail_policy::pad ? "pad" : "drop"},
          {"weights", 0, "{" + weights + "}"},
          {"bootstrap", 0, options.bootstrap ? "true" : "false"},
          {"atom", static_cast<double>(options.atom)}};
}

inline void agree_sampler(const mpi::communicator& comm, const data::DistributedSampler& sampler,
                          const std::string& who) {
  auto settings = plan_settings(sampler.dataset_size(), sampler.global_batch(), sampler.options());
  settings.push_back({"the sampler's epoch", 0, std::to_string(sampler.epoch())});
  settings.push_back({"the sampler's position", 0, std::to_string(sampler.position())});
  agree_settings(comm, settings, who);
}

inline void check_sampler(const data::DistributedSampler& sampler, int shards, int shard, const std::string& who) {
  PARALLAX_CHECK(sampler.world_size() == shards && sampler.rank() == shard,
                 who + ": the sampler was made for rank " + std::to_string(sampler.rank()) + " of " +
                     std::to_string(sampler.world_size()) + ", this trainer reads shard " + std::to_string(shard) +
                     " of " + std::to_string(shards));
}

}  // namespace parallax::training
