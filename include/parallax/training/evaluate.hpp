#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The pieces of every trainer's evaluate(): a guard that holds the model in
/// evaluation mode and restores training mode however the scope ends, the
/// walk over a range of samples in batches, and the result from global sums.

#include <parallax/evaluation.hpp>

#include <algorithm>
#include <cstddef>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace parallax::training {

/// Calls set_training(false) now and set_training(true) when the scope ends,
/// also when a batch throws: a failed evaluation leaves the model training.
template <class SetTraining>
class eval_mode {
 public:
  explicit eval_mode(SetTraining set_training) : set_(std::move(set_training)) { set_(false); }
  ~eval_mode() { set_(true); }
  eval_mode(const eval_mode&) = delete;
  eval_mode& operator=(const eval_mode&) = delete;

 private:
  SetTraining set_;
};

/// Calls f(batch, rows) for the samples [begin, end) of `dataset` in batches of
/// at most batch_size (the last may be short), reusing `batch`'s buffers
/// when the dataset has batch_into().
template <class D, class B, class F>
void for_each_batch(const D& dataset, std::size_t begin, std::size_t end, std::size_t batch_size, B& batch, F&& f);

/// The global sums of an evaluation: samples, loss summed over samples,
/// correct predictions (when the model counts them), metric sums.
struct eval_sums {
  double samples = 0;
  double loss = 0;
  double correct = 0;
};

/// The evaluation from global sums: means over the samples.
evaluation make_evaluation(const eval_sums& total, bool has_accuracy, const std::vector<std::string>& metric_names = {},
                           std::span<const double> metric_sums = {});

// ===========================================================================
// Implementation
// ===========================================================================

template <class D, class B, class F>
void for_each_batch(const D& dataset, std::size_t begin, std::size_t end, std::size_t batch_size, B& batch, F&& f) {
  std::vector<std::size_t> indices;
  for (std::size_t at = begin; at < end; at += batch_size) {
    indices.clear();
    for (std::size_t i = at; i < std::min(end, at + batch_size); ++i) indices.push_back(i);
    const std::span<const std::size_t> view(indices);
    if constexpr (requires { dataset.batch_into(view, batch); }) dataset.batch_into(view, batch);
    else batch = dataset.batch(view);
    f(batch, indices.size());
  }
}

inline evaluation make_evaluation(const eval_sums& total, bool has_accuracy, const std::vector<std::string>& metric_names,
                                  std::span<const double> metric_sums) {
  evaluation result;
  result.samples = static_cast<std::size_t>(total.samples);
  const double n = total.samples > 0 ? total.samples : 1.0;
  result.loss = total.loss / n;
  if (has_accuracy) result.accuracy = total.correct / n;
  for (std::size_t m = 0; m < metric_names.size(); ++m) result.metrics.emplace_back(metric_names[m], metric_sums[m] / n);
  return result;
}

}  // namespace parallax::training
