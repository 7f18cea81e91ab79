#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Batch<X, Y>: inputs and targets of some samples, the batch type of
/// Sequential and of TensorDataset; TensorDataset, an in-memory dataset of
/// two tensors whose leading extent is the sample; and ShardDataset, the rows
/// of such a dataset that one rank holds.

#include <parallax/core/block.hpp>
#include <parallax/core/error.hpp>
#include <parallax/detail/xtensor.hpp>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace parallax::data {

/// Inputs and targets of `size()` samples; the leading extent of both is the
/// sample.
template <class X, class Y>
struct Batch {
  using input_type = X;
  using target_type = Y;
  X inputs;
  Y targets;
  std::size_t size() const { return inputs.dimension() == 0 ? 0 : inputs.shape()[0]; }
};

/// Copies rows `indices` of `source` (leading extent = sample) into `out`,
/// resizing it to [indices.size(), ...] (no allocation when already that shape).
template <class E>
void gather_rows(const E& source, std::span<const std::size_t> indices, E& out) {
  auto shape = source.shape();
  const std::size_t n = source.dimension() == 0 ? 0 : shape[0];
  const std::size_t row = n == 0 ? 0 : source.size() / n;
  shape[0] = indices.size();
  if (!std::equal(out.shape().begin(), out.shape().end(), shape.begin(), shape.end())) out.resize(shape);
  auto* dst = out.data();
  for (std::size_t i = 0; i < indices.size(); ++i) {
    PARALLAX_CHECK(indices[i] < n, "gather_rows(): index " + std::to_string(indices[i]) + " is past the " +
                                       std::to_string(n) + " samples");
    std::copy_n(source.data() + indices[i] * row, row, dst + i * row);
  }
}

/// Copies rows [begin, begin + count) of `source` into `out`, resizing it to
/// [count, ...] (no allocation when already that shape).
template <class E>
void slice_rows(const E& source, std::size_t begin, std::size_t count, E& out) {
  auto shape = source.shape();
  const std::size_t n = source.dimension() == 0 ? 0 : shape[0];
  PARALLAX_CHECK(begin + count <= n, "slice_rows(): rows [" + std::to_string(begin) + ", " +
                                         std::to_string(begin + count) + ") of " + std::to_string(n));
  const std::size_t row = n == 0 ? 0 : source.size() / n;
  shape[0] = count;
  if (!std::equal(out.shape().begin(), out.shape().end(), shape.begin(), shape.end())) out.resize(shape);
  std::copy_n(source.data() + begin * row, count * row, out.data());
}

/// Copies samples [begin, begin + count) of `source` into `out`.
/// DataParallel's reproducible mode cuts a batch into atoms with it; a batch
/// type of one's own gets the same by declaring
/// `void slice_batch(const MyBatch&, std::size_t begin, std::size_t count, MyBatch& out)`
/// in its namespace.
template <class X, class Y>
void slice_batch(const Batch<X, Y>& source, std::size_t begin, std::size_t count, Batch<X, Y>& out) {
  slice_rows(source.inputs, begin, count, out.inputs);
  slice_rows(source.targets, begin, count, out.targets);
}

}  // namespace parallax::data

namespace parallax::detail {

using data::slice_batch;  // with the user's overloads, found by argument-dependent lookup

/// Whether samples of a B can be cut out: slice_batch(b, begin, count, out).
template <class B>
concept SliceableBatch = requires(const B& b, B& out) { slice_batch(b, std::size_t{}, std::size_t{}, out); };

template <SliceableBatch B>
void slice_samples(const B& b, std::size_t begin, std::size_t count, B& out) {
  slice_batch(b, begin, count, out);
}

}  // namespace parallax::detail

namespace parallax::data {

/// An in-memory dataset of inputs [n, ...] and targets [n, ...]; meets the
/// Dataset concept for Batch<X, Y>.
template <class X, class Y>
class TensorDataset {
 public:
  using batch_type = Batch<X, Y>;

  TensorDataset() = default;
  TensorDataset(X inputs, Y targets) : inputs_(std::move(inputs)), targets_(std::move(targets)) {
    PARALLAX_CHECK(inputs_.dimension() >= 1 && targets_.dimension() >= 1,
                   "TensorDataset: inputs and targets need a leading sample dimension");
    PARALLAX_CHECK(inputs_.shape()[0] == targets_.shape()[0],
                   "TensorDataset: " + std::to_string(inputs_.shape()[0]) + " inputs but " +
                       std::to_string(targets_.shape()[0]) + " targets");
  }

  std::size_t size() const { return inputs_.dimension() == 0 ? 0 : inputs_.shape()[0]; }

  batch_type batch(std::span<const std::size_t> indices) const {
    batch_type b;
    batch_into(indices, b);
    return b;
  }
  /// As batch(), reusing b's buffers.
  void batch_into(std::span<const std::size_t> indices, batch_type& b) const {
    gather_rows(inputs_, indices, b.inputs);
    gather_rows(targets_, indices, b.targets);
  }

  const X& inputs() const { return inputs_; }
  const Y& targets() const { return targets_; }

 private:
  X inputs_;
  Y targets_;
};

/// Rows [rows().begin, rows().end) of a dataset of size() samples, held in
/// memory: what a rank keeps when it reads only its shard of a file
/// (data/npy.hpp, data/csv.hpp). Samples keep the numbers they have in the
/// whole dataset, so the block DataParallel::evaluate gives this rank
/// (block_of) names the same samples as on a rank that holds everything. A
/// sample outside the rows held is an error naming it and the rows;
/// local() is the same rows numbered from 0, for a sampler over this shard
/// alone (docs/datasets.md).
template <class X, class Y>
class ShardDataset {
 public:
  using batch_type = Batch<X, Y>;

  ShardDataset() = default;
  /// `held` is rows [first, first + held.size()) of a dataset of `total`.
  ShardDataset(TensorDataset<X, Y> held, std::size_t first, std::size_t total)
      : held_(std::move(held)), first_(first), total_(total) {
    PARALLAX_CHECK(first_ <= total_ && held_.size() <= total_ - first_,
                   "ShardDataset: rows [" + std::to_string(first_) + ", " + std::to_string(first_ + held_.size()) +
                       ") of a dataset of " + std::to_string(total_));
  }

  /// Samples in the whole dataset.
  std::size_t size() const { return total_; }
  /// The rows this object holds.
  block rows() const { return {first_, first_ + held_.size()}; }
  const TensorDataset<X, Y>& local() const { return held_; }

  batch_type batch(std::span<const std::size_t> indices) const {
    batch_type b;
    batch_into(indices, b);
    return b;
  }
  void batch_into(std::span<const std::size_t> indices, batch_type& b) const {
    std::vector<std::size_t> local(indices.size());
    for (std::size_t i = 0; i < indices.size(); ++i) {
      PARALLAX_CHECK(indices[i] >= first_ && indices[i] - first_ < held_.size(),
                     "ShardDataset: sample " + std::to_string(indices[i]) + " is not in the rows [" +
                         std::to_string(first_) + ", " + std::to_string(first_ + held_.size()) +
                         ") this shard holds (train_epoch's sampler draws from the whole dataset; see docs/datasets.md)");
      local[i] = indices[i] - first_;
    }
    held_.batch_into(local, b);
  }

 private:
  TensorDataset<X, Y> held_;
  std::size_t first_ = 0;
  std::size_t total_ = 0;
};

/// Loads the samples `indices` of `dataset` into `batch`: through the
/// dataset's batch_into() when it has one (reusing the buffers), else its
/// batch(). The one place the trainers' loops read a dataset.
template <class D, class B>
void load_batch(const D& dataset, std::span<const std::size_t> indices, B& batch) {
  if constexpr (requires { dataset.batch_into(indices, batch); }) dataset.batch_into(indices, batch);
  else batch = dataset.batch(indices);
}

}  // namespace parallax::data
