#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Broadcast and reduce-scatter of contiguous buffers with native MPI
/// datatypes (the all-reduce is core/ring.hpp).

#include <parallax/core/block.hpp>
#include <parallax/core/concepts.hpp>
#include <parallax/core/error.hpp>
#include <parallax/detail/mpi.hpp>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>
#include <mpi.h>

#include <cstddef>
#include <span>
#include <string>
#include <vector>

namespace parallax {

/// Collective: data on every rank becomes the root's data. Sizes must agree.
template <MpiArithmetic T>
void broadcast(const mpi::communicator& comm, std::span<T> data, int root = 0);

/// Collective: sums `in` over all ranks and leaves on each rank only its block
/// (block_of(in.size(), comm.size(), comm.rank())) in `out`.
template <MpiArithmetic T>
void reduce_scatter_sum(const mpi::communicator& comm, std::span<const T> in, std::span<T> out);

// ===========================================================================
// Implementation
// ===========================================================================

template <MpiArithmetic T>
void broadcast(const mpi::communicator& comm, std::span<T> data, int root) {
  PARALLAX_CHECK(root >= 0 && root < comm.size(),
                 "broadcast(): root " + std::to_string(root) + " is not a rank of a communicator of size " +
                     std::to_string(comm.size()));
  if (comm.size() == 1 || data.empty()) return;
  mpi::broadcast(comm, data.data(), detail::checked_count(data.size(), "broadcast()"), root);
}

template <MpiArithmetic T>
void reduce_scatter_sum(const mpi::communicator& comm, std::span<const T> in, std::span<T> out) {
  const int p = comm.size();
  const auto mine = block_of(in.size(), p, comm.rank());
  PARALLAX_CHECK(out.size() == mine.size(), "reduce_scatter_sum(): output holds " + std::to_string(out.size()) +
                                                " elements, this rank's block has " +
                                                std::to_string(mine.size()));
  std::vector<int> counts(static_cast<std::size_t>(p));
  for (int r = 0; r < p; ++r)
    counts[static_cast<std::size_t>(r)] =
        detail::checked_count(block_of(in.size(), p, r).size(), "reduce_scatter_sum()");
  detail::mpi_check(MPI_Reduce_scatter(in.data(), out.data(), counts.data(), detail::mpi_type<T>(), MPI_SUM,
                                       MPI_Comm(comm)),
                    "MPI_Reduce_scatter");
}

}  // namespace parallax
