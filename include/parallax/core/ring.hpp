#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The sum all-reduce of contiguous buffers: one MPI_Allreduce for small
/// buffers, a ring (reduce-scatter, then all-gather) over a caller-owned
/// workspace for large ones; the mean and scaled forms fuse the scaling and
/// the non-finite check into the last reduction step.

#include <parallax/core/block.hpp>
#include <parallax/core/concepts.hpp>
#include <parallax/core/error.hpp>
#include <parallax/detail/mpi.hpp>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>
#include <boost/mpi/operations.hpp>
#include <mpi.h>

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <functional>
#include <span>
#include <vector>

namespace parallax {

/// Scratch the ring reuses between calls: one block of a piece. Whoever
/// reduces often (a trainer's gradient reducer) owns one; the forms without
/// a workspace make one per call.
template <class T>
class ring_workspace {
 public:
  /// At least n elements, grown on demand and never shrunk.
  T* get(std::size_t n) {
    if (scratch_.size() < n) scratch_.resize(n);
    return scratch_.data();
  }

 private:
  std::vector<T> scratch_;
};

/// Collective, in place: data[i] becomes the sum of data[i] over all ranks.
/// Buffers from allreduce_ring_min_bytes up are reduced by a ring
/// (reduce-scatter, then all-gather) in pieces of allreduce_piece_bytes over
/// the workspace (or scratch made for the call); smaller ones by one MPI_Allreduce. Every rank ends
/// with the same bits.
template <MpiArithmetic T>
void allreduce_sum(const mpi::communicator& comm, std::span<T> data, ring_workspace<T>* workspace = nullptr);

/// Collective, in place: data[i] becomes the mean of data[i] over all ranks,
/// computed as sum * (1 / size). On the ring path the scaling is fused into
/// the last reduction step, so it costs no extra pass over memory.
template <std::floating_point T>
void allreduce_mean(const mpi::communicator& comm, std::span<T> data, ring_workspace<T>* workspace = nullptr);

/// Buffers of at least this many bytes take the ring path. Below it one MPI
/// call's latency wins; above it the ring moves 2 (p - 1) / p of the buffer
/// per rank, splits the additions between ranks, and avoids the temporary
/// buffer Open MPI allocates per call for large messages.
inline constexpr std::size_t allreduce_ring_min_bytes = std::size_t{64} << 10;

/// The ring reduces a large buffer this many bytes at a time, so the scratch
/// it needs stays small and each piece stays in cache between its two phases.
inline constexpr std::size_t allreduce_piece_bytes = std::size_t{2} << 20;

/// Collective, in place: data[i] becomes scale * (sum of data[i] over all
/// ranks); returns whether any result is NaN or infinite — the same answer
/// on every rank. The scaling and the check are fused into the reduction (no
/// extra pass over the buffer): DataParallel turns gradient sums into means
/// this way.
template <std::floating_point T>
bool allreduce_scaled(const mpi::communicator& comm, std::span<T> data, T scale,
                      ring_workspace<T>* workspace = nullptr);

// ===========================================================================
// Implementation
// ===========================================================================

namespace detail {

/// Ring all-reduce of one piece: p - 1 reduce-scatter steps (each rank adds
/// the block its left neighbour sends into its own copy), then p - 1
/// all-gather steps passing the finished blocks on. Block b is reduced on one
/// rank only, so every rank ends with the same bits. With `scaled`, the last
/// addition of each block multiplies by `scale`.
template <class T>
void ring_piece(MPI_Comm comm, int p, int rank, T* data, std::size_t n, T* scratch, bool scaled, T scale,
                unsigned* nonfinite) {
  const int right = (rank + 1) % p;
  const int left = (rank + p - 1) % p;
  const auto type = mpi_type<T>();
  auto block_at = [&](int b) { return block_of(n, p, ((b % p) + p) % p); };
  for (int step = 0; step < p - 1; ++step) {
    const auto out = block_at(rank - step);
    const auto in = block_at(rank - step - 1);
    mpi_check(MPI_Sendrecv(data + out.begin, static_cast<int>(out.size()), type, right, 1, scratch,
                           static_cast<int>(in.size()), type, left, 1, comm, MPI_STATUS_IGNORE),
              "MPI_Sendrecv");
    T* target = data + in.begin;
    if (scaled && step == p - 2 && nonfinite) {
      // x - x is NaN exactly for an infinite or NaN x; the integer OR keeps
      // the loop vectorisable.
      unsigned bad = 0;
      for (std::size_t i = 0; i < in.size(); ++i) {
        target[i] = (target[i] + scratch[i]) * scale;
        const T z = target[i] - target[i];
        bad |= z != z ? 1u : 0u;
      }
      *nonfinite |= bad;
    } else if (scaled && step == p - 2) {
      for (std::size_t i = 0; i < in.size(); ++i) target[i] = (target[i] + scratch[i]) * scale;
    } else {
      for (std::size_t i = 0; i < in.size(); ++i) target[i] += scratch[i];
    }
  }
  // Rank r now holds the finished block r + 1.
  for (int step = 0; step < p - 1; ++step) {
    const auto out = block_at(rank + 1 - step);
    const auto in = block_at(rank - step);
    mpi_check(MPI_Sendrecv(data + out.begin, static_cast<int>(out.size()), type, right, 2, data + in.begin,
                           static_cast<int>(in.size()), type, left, 2, comm, MPI_STATUS_IGNORE),
              "MPI_Sendrecv");
  }
}

/// Scales in place; returns 1 when a result is NaN or infinite (when asked).
template <class T>
unsigned scale_and_check(std::span<T> data, T scale, bool check) {
  unsigned bad = 0;
  if (check) {
    for (auto& x : data) {
      x *= scale;
      const T z = x - x;
      bad |= z != z ? 1u : 0u;
    }
  } else {
    for (auto& x : data) x *= scale;
  }
  return bad;
}

/// The sum all-reduce behind allreduce_sum/mean/scaled. With `nonfinite`,
/// also finds whether any result is NaN or infinite: on the ring each rank
/// checks the blocks it finishes and one integer all-reduce shares the
/// verdict, so every rank answers the same.
template <class T>
void allreduce(const mpi::communicator& comm, std::span<T> data, bool scaled, T scale, bool* nonfinite,
               ring_workspace<T>* workspace) {
  const int p = comm.size();
  if (p == 1 || data.size_bytes() < allreduce_ring_min_bytes) {
    if (p > 1)
      mpi::all_reduce(comm, mpi::inplace(data.data()), checked_count(data.size(), "allreduce_sum()"),
                      std::plus<T>());
    if (scaled || nonfinite) {
      const unsigned bad = scale_and_check(data, scaled ? scale : T(1), nonfinite != nullptr);
      if (nonfinite) *nonfinite = bad != 0;
    }
    return;
  }
  const MPI_Comm ring = private_comm(MPI_Comm(comm));
  const std::size_t piece = std::max<std::size_t>(static_cast<std::size_t>(p), allreduce_piece_bytes / sizeof(T));
  ring_workspace<T> local;
  T* scratch = (workspace ? *workspace : local).get(std::min(piece, data.size()) / static_cast<std::size_t>(p) + 1);
  unsigned bad = 0;
  for (std::size_t at = 0; at < data.size(); at += piece)
    ring_piece(ring, p, comm.rank(), data.data() + at, std::min(piece, data.size() - at), scratch,
               scaled || nonfinite, scaled ? scale : T(1), nonfinite ? &bad : nullptr);
  if (nonfinite) {
    unsigned any = 0;
    mpi::all_reduce(comm, bad, any, mpi::maximum<unsigned>());
    *nonfinite = any != 0;
  }
}

}  // namespace detail

template <MpiArithmetic T>
void allreduce_sum(const mpi::communicator& comm, std::span<T> data, ring_workspace<T>* workspace) {
  if (comm.size() == 1 || data.empty()) return;
  detail::allreduce(comm, data, false, T(1), nullptr, workspace);
}

template <std::floating_point T>
void allreduce_mean(const mpi::communicator& comm, std::span<T> data, ring_workspace<T>* workspace) {
  if (comm.size() == 1 || data.empty()) return;
  detail::allreduce(comm, data, true, T(1) / static_cast<T>(comm.size()), nullptr, workspace);
}

template <std::floating_point T>
bool allreduce_scaled(const mpi::communicator& comm, std::span<T> data, T scale, ring_workspace<T>* workspace) {
  if (data.empty()) return false;
  bool nonfinite = false;
  detail::allreduce(comm, data, true, scale, &nonfinite, workspace);
  return nonfinite;
}

}  // namespace parallax
