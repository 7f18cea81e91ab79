#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Partitioning a chain by measured time: each layer's forward + backward
/// time on a sample, one layer alive at a time, and the boundaries that
/// balance those costs over the ranks (ModelParallel::profile_boundaries).

#include <parallax/core/comm.hpp>
#include <parallax/core/error.hpp>
#include <parallax/pipeline/partition.hpp>

#include <boost/mpi/communicator.hpp>

#include <chrono>
#include <cstddef>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <optional>
#include <vector>

namespace parallax::pipeline {

/// Seconds of forward + backward of each layer of Chain (a type with
/// layer_count, part_t<I>, in_t<I> and out_t<I>, such as pipeline::stage),
/// averaged over `repeats`: layer I is built from its constructor
/// arguments, initialised with (0, I), timed on the output of layer I - 1
/// (`sample` for layer 0) with dy = 1, and destroyed before layer I + 1.
template <class Chain, class... Args>
std::vector<double> measure_layer_costs(const std::tuple<Args...>& part_args,
                                        const typename Chain::template in_t<0>& sample, int repeats);

/// Collective. Rank 0 measures (measure_layer_costs); every rank gets the
/// contiguous partition that minimises the slowest stage (weighted by
/// stage_speeds). A failure on rank 0 is one error on every rank.
template <class Chain, class... Args>
boundaries profile_boundaries(const std::tuple<Args...>& part_args, const typename Chain::template in_t<0>& sample,
                              const std::vector<double>& stage_speeds, const mpi::communicator& comm, int repeats);

// ---------------------------------------------------------------------------

template <class Chain, class... Args>
std::vector<double> measure_layer_costs(const std::tuple<Args...>& part_args,
                                        const typename Chain::template in_t<0>& sample, int repeats) {
  std::vector<double> costs(Chain::layer_count, 0.0);
  // One layer at a time: build, time forward + backward on the current
  // activation, keep its output as the next layer's input, destroy it.
  auto run_from = [&]<std::size_t I>(auto& self, const typename Chain::template in_t<I>& x,
                                     std::integral_constant<std::size_t, I>) -> void {
    auto layer = std::make_from_tuple<typename Chain::template part_t<I>>(std::get<I>(part_args));
    layer.initialize(0, I);
    typename Chain::template out_t<I> y;
    typename Chain::template in_t<I> dx;
    layer.forward(x, y);
    typename Chain::template out_t<I> dy = y;
    dy.fill(1);
    const auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < repeats; ++r) {
      layer.forward(x, y);
      layer.backward(x, y, dy, dx);
    }
    costs[I] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / repeats;
    if constexpr (I + 1 < Chain::layer_count) self(self, y, std::integral_constant<std::size_t, I + 1>{});
  };
  run_from(run_from, sample, std::integral_constant<std::size_t, 0>{});
  return costs;
}

template <class Chain, class... Args>
boundaries profile_boundaries(const std::tuple<Args...>& part_args, const typename Chain::template in_t<0>& sample,
                              const std::vector<double>& stage_speeds, const mpi::communicator& comm, int repeats) {
  std::vector<double> costs(Chain::layer_count, 0.0);
  if (comm.rank() == 0) {
    agree(comm, [&] { costs = measure_layer_costs<Chain>(part_args, sample, repeats); });
  } else {
    agree(comm, std::optional<error>());
  }
  broadcast(comm, std::span<double>(costs), 0);
  return agree(comm, [&] { return balanced_boundaries(costs, static_cast<std::size_t>(comm.size()), stage_speeds); });
}

}  // namespace parallax::pipeline
