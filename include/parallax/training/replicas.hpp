#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Replicas of one model on several ranks must hold the same tensors: the
/// check every replicating trainer (data parallel, and each stage's group in
/// a hybrid grid) runs before it broadcasts parameters, naming the first
/// difference and the ranks.

#include <parallax/core/error.hpp>
#include <parallax/detail/element_type.hpp>
#include <parallax/detail/mpi.hpp>
#include <parallax/detail/random.hpp>
#include <parallax/detail/tensor_list.hpp>
#include <parallax/detail/xtensor.hpp>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/operations.hpp>
#include <boost/serialization/vector.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace parallax::training {

/// Collective: every rank has the same number, shapes and element type of
/// tensors; otherwise every rank throws (kind rank_mismatch) "<who>: models
/// differ between ranks: ..." naming the first differing tensor. One small
/// all-reduce when all agree.
template <class T>
void check_replicas(const mpi::communicator& comm, const std::vector<detail::tensor_span<T>>& tensors,
                    const std::string& who);

// ===========================================================================
// Implementation
// ===========================================================================

}  // namespace parallax::training

namespace parallax::detail {

/// Same element pattern on every rank: [tensor count, element code, then per
/// tensor: rank, extents...].
template <class T>
std::vector<std::uint64_t> parameter_signature(const std::vector<tensor_span<T>>& tensors) {
  std::vector<std::uint64_t> sig = {tensors.size(), type_code<T>()};
  for (const auto& t : tensors) {
    sig.push_back(t.shape.size());
    for (auto e : t.shape) sig.push_back(e);
  }
  return sig;
}

/// Decodes a signature into per-tensor shapes (for messages).
inline std::vector<std::vector<std::uint64_t>> signature_shapes(const std::vector<std::uint64_t>& sig) {
  std::vector<std::vector<std::uint64_t>> shapes;
  std::size_t at = 2;
  for (std::uint64_t i = 0; i < sig[0] && at < sig.size(); ++i) {
    const auto rank = sig[at++];
    shapes.emplace_back(sig.begin() + static_cast<std::ptrdiff_t>(at),
                        sig.begin() + static_cast<std::ptrdiff_t>(std::min<std::size_t>(at + rank, sig.size())));
    at += rank;
  }
  return shapes;
}

/// The first difference between two ranks' signatures, in words.
inline std::string signature_difference(const std::vector<std::uint64_t>& a, int rank_a,
                                        const std::vector<std::uint64_t>& b, int rank_b) {
  const auto ra = "rank " + std::to_string(rank_a);
  const auto rb = "rank " + std::to_string(rank_b);
  if (a[1] != b[1])
    return "parameters are " + type_code_name(a[1]) + " on " + ra + " but " + type_code_name(b[1]) + " on " + rb;
  const auto sa = signature_shapes(a);
  const auto sb = signature_shapes(b);
  for (std::size_t i = 0; i < std::min(sa.size(), sb.size()); ++i)
    if (sa[i] != sb[i])
      return "parameter " + std::to_string(i) + " has shape " + shape_string(sa[i]) + " on " + ra + " but " +
             shape_string(sb[i]) + " on " + rb;
  return ra + " has " + std::to_string(sa.size()) + " parameter tensors but " + rb + " has " +
         std::to_string(sb.size());
}

}  // namespace parallax::detail

namespace parallax::training {

template <class T>
void check_replicas(const mpi::communicator& comm, const std::vector<detail::tensor_span<T>>& tensors,
                    const std::string& who) {
  const auto sig = detail::parameter_signature(tensors);
  const std::uint64_t h = detail::words_hash(sig);
  std::array<std::uint64_t, 2> mine{h, ~h};
  std::array<std::uint64_t, 2> most{};
  mpi::all_reduce(comm, mine.data(), 2, most.data(), mpi::maximum<std::uint64_t>());
  if (most[0] == h && most[1] == ~h) return;  // max == min: all equal
  std::vector<std::vector<std::uint64_t>> all;
  mpi::all_gather(comm, sig, all);
  std::vector<int> world;  // the message names world ranks, also on a sub-communicator
  mpi::all_gather(comm, detail::world_rank(), world);
  for (std::size_t r = 1; r < all.size(); ++r)
    if (all[r] != all[0])
      throw error(error_kind::rank_mismatch, who + ": models differ between ranks: " +
                                                 detail::signature_difference(all[0], world[0], all[r], world[r]));
}

}  // namespace parallax::training
