#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The last pipeline stage's loss over the micro-batches of one run: in
/// training, each micro-batch's loss and the gradient of the batch mean; in
/// forward-only runs, the loss and correct count (evaluate) and the
/// collected outputs (predict).

#include <parallax/core/concepts.hpp>
#include <parallax/data/batch.hpp>

#include <algorithm>
#include <cstddef>

namespace parallax::pipeline {

/// Sums over one run of the loss Loss, micro-batch by micro-batch.
template <class Loss>
class loss_head {
 public:
  using input_type = typename Loss::input_type;
  using target_type = typename Loss::target_type;
  using value_type = typename input_type::value_type;

  /// A new run over a batch of `batch_rows` rows: the sums start at zero.
  void start(std::size_t batch_rows);
  /// predict(): forward-only runs copy each micro-batch's output into `out`
  /// (shaped like the whole batch's output) at its rows; nullptr: they do not.
  void collect_into(input_type* out) { collect_ = out; }

  /// Rows [first, first + rows) of `batch`, whose output is y: their targets
  /// into `target` when the batch has targets, then with `dy` (training)
  /// the loss and dy = d(batch mean)/dy, else (forward-only) the loss and
  /// correct count when there are targets, and the collected output.
  template <class Batch>
  void micro_batch(Loss& loss, const Batch& batch, std::size_t first, std::size_t rows, const input_type& y,
                   target_type& target, input_type* dy);

  /// Sum over the run's samples of the loss.
  double loss_sum() const { return loss_sum_; }
  /// Samples classified right in the run (forward-only, when Loss has correct()).
  double correct_sum() const { return correct_sum_; }

 private:
  std::size_t batch_rows_ = 0;
  double loss_sum_ = 0;
  double correct_sum_ = 0;
  input_type* collect_ = nullptr;
};

// ---------------------------------------------------------------------------

template <class Loss>
void loss_head<Loss>::start(std::size_t batch_rows) {
  batch_rows_ = batch_rows;
  loss_sum_ = 0;
  correct_sum_ = 0;
}

template <class Loss>
template <class Batch>
void loss_head<Loss>::micro_batch(Loss& loss, const Batch& batch, std::size_t first, std::size_t rows,
                                  const input_type& y, target_type& target, input_type* dy) {
  const bool has_targets = batch.targets.size() > 0;
  if (has_targets) data::slice_rows(batch.targets, first, rows, target);
  if (dy) {
    const double l = static_cast<double>(loss.loss(y, target, *dy));
    // d(batch mean)/dy = (rows / B) d(micro-batch mean)/dy.
    const auto scale = static_cast<value_type>(static_cast<double>(rows) / static_cast<double>(batch_rows_));
    for (auto& v : *dy) v *= scale;
    loss_sum_ += l * static_cast<double>(rows);
    return;
  }
  if (has_targets) {
    loss_sum_ += static_cast<double>(loss.value(y, target)) * static_cast<double>(rows);
    if constexpr (HasCorrectCount<Loss>) correct_sum_ += static_cast<double>(loss.correct(y, target));
  }
  if (collect_) {
    const std::size_t row = y.size() / std::max<std::size_t>(1, rows);
    std::copy_n(y.data(), y.size(), collect_->data() + first * row);
  }
}

}  // namespace parallax::pipeline
