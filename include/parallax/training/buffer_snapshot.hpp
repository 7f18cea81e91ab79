#pragma once
// SPDX-License-Identifier: BSL-1.0
/// buffer_snapshot: a model's buffers (BatchNorm's running statistics) as an
/// optimizer step starts, put back when the step is skipped or fails, so
/// that such a step leaves the buffers as it leaves the parameters.

#include <algorithm>
#include <cstddef>
#include <vector>

namespace parallax::training {

/// The values of every buffer, in visiting order. A trainer take()s them as
/// an optimizer step starts and runs the step's end (its communication and
/// update) through finish(), which puts them back when the step is skipped
/// or throws. `visit(f)` calls f(tensor)
/// on each buffer (a tensor of T with data() and size()), the same buffers
/// in the same order each time; a model without buffers visits none, and
/// then take() and restore() do nothing.
template <class T>
class buffer_snapshot {
 public:
  /// Copies the buffers' values (the storage reused from step to step).
  template <class Visit>
  void take(Visit&& visit) {
    values_.clear();
    visit([&](const auto& t) { values_.insert(values_.end(), t.data(), t.data() + t.size()); });
    taken_ = true;
  }

  /// step() (returning the step's loss), then the buffers of the last
  /// take() written back when it threw or when `skipped()` (the updater's
  /// count of skipped steps) moved. A step that ends over several calls
  /// (accumulated micro-steps, each communicating) may finish() each.
  template <class Visit, class Skipped, class Step>
  double finish(Visit&& visit, Skipped&& skipped, Step&& step) {
    const auto before = skipped();
    double loss = 0;
    try {
      loss = step();
    } catch (...) {
      restore(visit);
      throw;
    }
    if (skipped() != before) restore(visit);
    return loss;
  }

  /// Writes the copied values back, once per take().
  template <class Visit>
  void restore(Visit&& visit) {
    if (!taken_) return;
    std::size_t at = 0;
    visit([&](auto& t) {
      const std::size_t n = std::min(t.size(), values_.size() - std::min(at, values_.size()));
      std::copy(values_.begin() + static_cast<std::ptrdiff_t>(at), values_.begin() + static_cast<std::ptrdiff_t>(at + n),
                t.data());
      at += n;
    });
    taken_ = false;
  }

 private:
  std::vector<T> values_;
  bool taken_ = false;
};

}  // namespace parallax::training
