#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The micro-batch slots of a pipeline stage: a pool of buffers that a
/// micro-batch holds from its forward to its backward (or, in a forward-only
/// run, until its output is gone), reused from step to step, and the count
/// of micro-batches and bytes held at once.

#include <algorithm>
#include <cstddef>
#include <memory>
#include <vector>

namespace parallax::pipeline {

/// A pool of Slot, one per micro-batch in flight. Slot::wait_sends() blocks
/// until nothing reads the slot's buffers any more (its sends are done): a
/// freed slot is reused only after it.
template <class Slot>
class slot_pool {
 public:
  /// A new run of `micro_batches`: nobody holds a slot or saved bytes.
  void reset(std::size_t micro_batches);
  /// A slot for micro-batch mb: a freed one, or a new one when none is free.
  Slot& acquire(std::size_t mb);
  /// The slot micro-batch mb holds.
  Slot& operator[](std::size_t mb) { return *pool_[slot_of_[mb]]; }
  /// Micro-batch mb is done with its slot.
  void release(std::size_t mb) { free_.push_back(slot_of_[mb]); }
  /// The end of a run: every send from every slot has completed.
  void wait_all();

  /// A micro-batch now keeps `bytes` of activations for its backward.
  void hold(std::size_t bytes);
  /// ... and its backward has begun: they are no longer counted.
  void drop(std::size_t bytes);
  /// A micro-batch held `before` bytes and now holds `after` (the first half
  /// of a split backward: the gradients for the second half).
  void resize_held(std::size_t before, std::size_t after);
  /// The most micro-batches (bytes) held at once since the pool was made.
  std::size_t peak_micro_batches() const { return peak_micro_batches_; }
  std::size_t peak_saved_bytes() const { return peak_saved_bytes_; }

 private:
  // Slots are never moved: sends in flight read their buffers.
  std::vector<std::unique_ptr<Slot>> pool_;
  std::vector<std::size_t> free_;
  std::vector<std::size_t> slot_of_;  // micro-batch -> pool index
  std::size_t in_flight_ = 0;
  std::size_t saved_now_ = 0;
  std::size_t peak_micro_batches_ = 0;
  std::size_t peak_saved_bytes_ = 0;
};

// ---------------------------------------------------------------------------

template <class Slot>
void slot_pool<Slot>::reset(std::size_t micro_batches) {
  in_flight_ = 0;
  saved_now_ = 0;
  slot_of_.assign(micro_batches, 0);
}

template <class Slot>
Slot& slot_pool<Slot>::acquire(std::size_t mb) {
  std::size_t index;
  if (!free_.empty()) {
    index = free_.back();
    free_.pop_back();
    pool_[index]->wait_sends();  // the buffers may still be on their way out
  } else {
    index = pool_.size();
    pool_.push_back(std::make_unique<Slot>());
  }
  slot_of_[mb] = index;
  return *pool_[index];
}

template <class Slot>
void slot_pool<Slot>::wait_all() {
  for (auto& s : pool_) s->wait_sends();
}

template <class Slot>
void slot_pool<Slot>::hold(std::size_t bytes) {
  ++in_flight_;
  peak_micro_batches_ = std::max(peak_micro_batches_, in_flight_);
  saved_now_ += bytes;
  peak_saved_bytes_ = std::max(peak_saved_bytes_, saved_now_);
}

template <class Slot>
void slot_pool<Slot>::resize_held(std::size_t before, std::size_t after) {
  saved_now_ = saved_now_ - before + after;
  peak_saved_bytes_ = std::max(peak_saved_bytes_, saved_now_);
}

template <class Slot>
void slot_pool<Slot>::drop(std::size_t bytes) {
  saved_now_ -= bytes;
  --in_flight_;
}

}  // namespace parallax::pipeline
