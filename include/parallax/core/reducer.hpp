#pragma once
// SPDX-License-Identifier: BSL-1.0
/// gradient_reducer: sums a trainer's gradients over a communicator (the
/// whole world, or a pipeline stage's data-parallel group) in flat buckets,
/// with accumulation over micro-steps and the fused sum/scale/finite check;
/// it owns its buckets and its ring workspace, so nothing is process-wide.

#include <parallax/core/bucketer.hpp>
#include <parallax/core/concepts.hpp>
#include <parallax/core/error.hpp>
#include <parallax/core/ring.hpp>
#include <parallax/core/trace.hpp>
#include <parallax/detail/mpi.hpp>

#include <boost/mpi/communicator.hpp>

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <span>
#include <utility>
#include <vector>

namespace parallax {

/// Buckets of gradients and their reduction.
/// @code
///   parallax::gradient_reducer<float> reducer(comm, 16 << 20);
///   reducer.plan(grads);                       // once: sizes fixed from here on
///   reducer.accumulate(grads, n, true);         // n * mean gradient of this rank
///   bool bad = reducer.reduce(1.0f / total);    // every bucket: sum over ranks / total
///   optimizer.step(params, reducer.views());
/// @endcode
/// The buckets cut the concatenated gradients every cap bytes in tensor
/// order, so a bucket holds the tensors [first_tensor(k), last_tensor(k)];
/// reduce_bucket(k) may run as soon as those are final (the interface a
/// backward pass that reports finished layers needs to overlap).
template <std::floating_point T>
class gradient_reducer {
 public:
  gradient_reducer(mpi::communicator comm, std::size_t bucket_bytes);

  /// Lays out the buckets for tensors of these sizes.
  void plan(const std::vector<std::span<T>>& tensors);
  /// Lays out the buckets for tensors of these sizes (elements).
  void plan(const std::vector<std::size_t>& sizes);

  /// Adds weight * tensors into the buckets; `first` overwrites what is
  /// there (the first micro-step of an optimizer step).
  void accumulate(const std::vector<std::span<T>>& tensors, T weight, bool first);
  /// Makes this rank contribute nothing on the next reduction (a failed
  /// micro-step: its gradients may be garbage); keeps what earlier micro-steps
  /// accumulated only if `first` is false.
  void contribute_nothing(bool first);

  /// Collective over communicator(): bucket k becomes scale * (sum over
  /// ranks); returns whether a result is NaN or infinite (same on every rank).
  bool reduce_bucket(std::size_t k, T scale);
  /// Collective: every bucket, in order. Returns whether any is non-finite.
  bool reduce(T scale);

  /// Collective: tensors become the weighted mean over ranks,
  /// sum_r weight_r tensors_r * scale (local SGD's parameter average); the
  /// buckets are the scratch, so this must not run between accumulate() and
  /// reduce().
  void average_into(const std::vector<std::span<T>>& tensors, T weight, T scale);

  /// The reduced tensor i, inside the buckets.
  const std::vector<std::span<T>>& views() { return views_; }
  const std::vector<std::span<const T>>& const_views() const { return const_views_; }
  std::size_t bucket_count() const { return buckets_.bucket_count(); }
  const mpi::communicator& communicator() const { return comm_; }

 private:
  mpi::communicator comm_;
  Bucketer<T> buckets_;
  ring_workspace<T> workspace_;
  std::vector<std::span<T>> views_;
  std::vector<std::span<const T>> const_views_;
};

// ===========================================================================
// Implementation
// ===========================================================================

template <std::floating_point T>
gradient_reducer<T>::gradient_reducer(mpi::communicator comm, std::size_t bucket_bytes)
    : comm_(std::move(comm)), buckets_(bucket_bytes) {}

template <std::floating_point T>
void gradient_reducer<T>::plan(const std::vector<std::span<T>>& tensors) {
  std::vector<std::size_t> sizes;
  for (const auto& t : tensors) sizes.push_back(t.size());
  plan(sizes);
}

template <std::floating_point T>
void gradient_reducer<T>::plan(const std::vector<std::size_t>& sizes) {
  struct extent {  // what Bucketer::plan reads of a tensor
    std::size_t n;
    std::size_t size() const { return n; }
  };
  std::vector<extent> extents;
  for (auto n : sizes) extents.push_back({n});
  buckets_.plan(extents);
  views_.clear();
  for (std::size_t i = 0; i < sizes.size(); ++i) views_.push_back(buckets_.segment(i));
  const_views_.assign(views_.begin(), views_.end());
}

template <std::floating_point T>
void gradient_reducer<T>::accumulate(const std::vector<std::span<T>>& tensors, T weight, bool first) {
  for (std::size_t k = 0; k < buckets_.bucket_count(); ++k)
    buckets_.visit(k, tensors, [&](const T* g, T* b, std::size_t len) {
      if (first) {
        for (std::size_t i = 0; i < len; ++i) b[i] = weight * g[i];
      } else {
        for (std::size_t i = 0; i < len; ++i) b[i] += weight * g[i];
      }
    });
}

template <std::floating_point T>
void gradient_reducer<T>::contribute_nothing(bool first) {
  if (!first) return;  // the earlier micro-steps' sums stay; this one adds nothing
  auto all = buckets_.storage();
  std::fill(all.begin(), all.end(), T(0));
}

template <std::floating_point T>
bool gradient_reducer<T>::reduce_bucket(std::size_t k, T scale) {
  trace::span span("all-reduce", "communication", static_cast<std::int64_t>(k));
  return allreduce_scaled(comm_, buckets_.bucket(k), scale, &workspace_);
}

template <std::floating_point T>
bool gradient_reducer<T>::reduce(T scale) {
  bool nonfinite = false;
  for (std::size_t k = 0; k < buckets_.bucket_count(); ++k) nonfinite = reduce_bucket(k, scale) || nonfinite;
  return nonfinite;
}

template <std::floating_point T>
void gradient_reducer<T>::average_into(const std::vector<std::span<T>>& tensors, T weight, T scale) {
  accumulate(tensors, weight, true);
  reduce(scale);
  buckets_.unpack(tensors);
}

}  // namespace parallax
