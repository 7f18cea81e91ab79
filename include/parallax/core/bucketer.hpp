#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Bucketer: many tensors <-> a few flat buffers of a byte cap, the unit in
/// which gradients and parameters travel.

#include <parallax/core/concepts.hpp>
#include <parallax/core/error.hpp>

#include <algorithm>
#include <cstddef>
#include <iterator>
#include <span>
#include <string>
#include <vector>

namespace parallax {

/// Packs a list of tensors of mixed shapes (same element type) into flat
/// buffers of at most `cap_bytes` each, and unpacks them back. The tensors are
/// read as one concatenated stream cut every cap_bytes, so every bucket but
/// the last is exactly full and a tensor larger than the cap spans several
/// buckets. The buckets are allocated once by plan() and reused.
/// @code
///   parallax::Bucketer<float> buckets(1 << 20);
///   buckets.plan(grads);           // once, or whenever the sizes change
///   buckets.pack(grads);
///   for (auto& b : buckets) parallax::allreduce_sum(comm, b);
///   buckets.unpack(grads);
/// @endcode
template <MpiArithmetic T>
class Bucketer {
 public:
  explicit Bucketer(std::size_t cap_bytes = std::size_t{25} << 20);

  /// Lays out the buckets for tensors of these sizes (elements). Any range of
  /// contiguous containers of T works.
  template <class Range>
  void plan(const Range& tensors);

  std::size_t bucket_count() const { return buckets_.size(); }
  std::size_t total_size() const { return total_; }
  std::size_t cap_bytes() const { return cap_elements_ * sizeof(T); }
  std::span<T> bucket(std::size_t k) { return buckets_[k]; }
  auto begin() { return buckets_.begin(); }
  auto end() { return buckets_.end(); }

  /// The part of the buckets' storage that holds tensor i (the buckets are
  /// one contiguous run, so a tensor's elements are contiguous there too).
  std::span<T> segment(std::size_t i) {
    return std::span<T>(storage_).subspan(offsets_[i], offsets_[i + 1] - offsets_[i]);
  }
  /// All buckets as one span.
  std::span<T> storage() { return storage_; }

  /// Calls f(tensor_part, bucket_part, n) for each piece of bucket k: the
  /// general form of pack and unpack (e.g. to scale or accumulate in the pass).
  template <class Range, class F>
  void visit(std::size_t k, Range& tensors, F f);

  /// Copies the part of `tensors` that belongs in bucket k into it.
  template <class Range>
  void pack(std::size_t k, const Range& tensors);
  /// Copies bucket k back into its part of `tensors`.
  template <class Range>
  void unpack(std::size_t k, Range& tensors) const;
  template <class Range>
  void pack(const Range& tensors);
  template <class Range>
  void unpack(Range& tensors) const;

 private:
  template <class Range, class Copy>
  void for_each_piece(std::size_t k, Range& tensors, Copy copy) const;

  std::size_t cap_elements_;
  std::size_t total_ = 0;
  std::vector<std::size_t> offsets_;  // start of tensor i in the stream; back() = total_
  std::vector<T> storage_;
  std::vector<std::span<T>> buckets_;
};

// ===========================================================================
// Implementation
// ===========================================================================

template <MpiArithmetic T>
Bucketer<T>::Bucketer(std::size_t cap_bytes) : cap_elements_(cap_bytes / sizeof(T)) {
  PARALLAX_CHECK(cap_elements_ > 0, "Bucketer: a cap of " + std::to_string(cap_bytes) +
                                        " bytes holds no element of " + std::to_string(sizeof(T)) + " bytes");
}

template <MpiArithmetic T>
template <class Range>
void Bucketer<T>::plan(const Range& tensors) {
  offsets_.clear();
  total_ = 0;
  for (const auto& t : tensors) {
    offsets_.push_back(total_);
    total_ += static_cast<std::size_t>(t.size());
  }
  offsets_.push_back(total_);
  storage_.assign(total_, T{});
  buckets_.clear();
  for (std::size_t at = 0; at < total_; at += cap_elements_)
    buckets_.emplace_back(storage_.data() + at, std::min(cap_elements_, total_ - at));
}

template <MpiArithmetic T>
template <class Range, class Copy>
void Bucketer<T>::for_each_piece(std::size_t k, Range& tensors, Copy copy) const {
  PARALLAX_CHECK(k < buckets_.size(), "Bucketer: bucket " + std::to_string(k) + " of " +
                                          std::to_string(buckets_.size()));
  const std::size_t lo = k * cap_elements_;
  const std::size_t hi = lo + buckets_[k].size();
  // First tensor that ends after lo.
  auto first = std::upper_bound(offsets_.begin(), offsets_.end() - 1, lo) - 1;
  std::size_t i = static_cast<std::size_t>(first - offsets_.begin());
  for (auto it = std::next(std::begin(tensors), static_cast<std::ptrdiff_t>(i));
       i + 1 < offsets_.size() && offsets_[i] < hi; ++i, ++it) {
    const std::size_t from = std::max(lo, offsets_[i]);
    const std::size_t to = std::min(hi, offsets_[i + 1]);
    if (from >= to) continue;
    PARALLAX_CHECK(static_cast<std::size_t>(it->size()) == offsets_[i + 1] - offsets_[i],
                   "Bucketer: tensor " + std::to_string(i) + " has " + std::to_string(it->size()) +
                       " elements, the plan has " + std::to_string(offsets_[i + 1] - offsets_[i]));
    copy(it->data() + (from - offsets_[i]), buckets_[k].data() + (from - lo), to - from);
  }
}

template <MpiArithmetic T>
template <class Range, class F>
void Bucketer<T>::visit(std::size_t k, Range& tensors, F f) {
  for_each_piece(k, tensors, f);
}

template <MpiArithmetic T>
template <class Range>
void Bucketer<T>::pack(std::size_t k, const Range& tensors) {
  for_each_piece(k, tensors, [](const T* tensor, T* bucket, std::size_t n) { std::copy_n(tensor, n, bucket); });
}

template <MpiArithmetic T>
template <class Range>
void Bucketer<T>::unpack(std::size_t k, Range& tensors) const {
  for_each_piece(k, tensors, [](T* tensor, const T* bucket, std::size_t n) { std::copy_n(bucket, n, tensor); });
}

template <MpiArithmetic T>
template <class Range>
void Bucketer<T>::pack(const Range& tensors) {
  for (std::size_t k = 0; k < buckets_.size(); ++k) pack(k, tensors);
}

template <MpiArithmetic T>
template <class Range>
void Bucketer<T>::unpack(Range& tensors) const {
  for (std::size_t k = 0; k < buckets_.size(); ++k) unpack(k, tensors);
}

}  // namespace parallax
