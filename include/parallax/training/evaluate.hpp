#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The pieces of every trainer's evaluate(): a guard that holds the model in
/// evaluation mode and restores training mode however the scope ends, the
/// walk over a range of samples in batches, and the result from global sums.

#include <parallax/core/agree.hpp>
#include <parallax/core/error.hpp>
#include <parallax/core/trace.hpp>
#include <parallax/data/batch.hpp>
#include <parallax/detail/mpi.hpp>
#include <parallax/evaluation.hpp>

#include <boost/mpi/communicator.hpp>

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
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

/// Collective, at the start of an evaluation: the dataset's size, checked to
/// be the same on every rank, and batch_size > 0 and the same on every rank — a failure (also one
/// thrown by the dataset's size()) on any rank is the same error on every
/// rank; `who` names the caller.
template <class D>
std::size_t agreed_size(const mpi::communicator& comm, const D& dataset, std::size_t batch_size,
                        const std::string& who);

/// Calls f(batch, rows) for the samples [begin, end) of `dataset` in batches of
/// at most batch_size (the last may be short), reusing `batch`'s buffers
/// when the dataset has batch_into(). When f also takes a
/// std::optional<error>, a batch that fails to load is passed to it as that
/// failure (with the buffers as they are) instead of thrown: a pipeline run
/// then agrees it with the other ranks.
template <class D, class B, class F>
void for_each_batch(const D& dataset, std::size_t begin, std::size_t end, std::size_t batch_size, B& batch, F&& f);

/// The global sums of an evaluation: samples, loss summed over samples,
/// correct predictions (when the model counts them), metric sums.
struct eval_sums {
  double samples = 0;
  double loss = 0;
  double correct = 0;
};

/// The evaluation from global sums: means over the samples (NaN without any).
evaluation make_evaluation(const eval_sums& total, bool has_accuracy, const std::vector<std::string>& metric_names = {},
                           std::span<const double> metric_sums = {});

// ===========================================================================
// Implementation
// ===========================================================================

template <class D>
std::size_t agreed_size(const mpi::communicator& comm, const D& dataset, std::size_t batch_size,
                        const std::string& who) {
  const std::size_t n = agree(comm, [&] {
    PARALLAX_CHECK(batch_size > 0, who + ": batch_size is 0");
    return static_cast<std::size_t>(dataset.size());
  });
  agree_equal(comm, static_cast<std::uint64_t>(n), who + ": the dataset size");
  agree_equal(comm, static_cast<std::uint64_t>(batch_size), who + ": batch_size");
  return n;
}

template <class D, class B, class F>
void for_each_batch(const D& dataset, std::size_t begin, std::size_t end, std::size_t batch_size, B& batch, F&& f) {
  std::vector<std::size_t> indices;
  for (std::size_t at = begin; at < end; at += batch_size) {
    indices.clear();
    for (std::size_t i = at; i < std::min(end, at + batch_size); ++i) indices.push_back(i);
    const std::span<const std::size_t> view(indices);
    trace::span span("evaluate batch", "evaluate", static_cast<std::int64_t>(at / batch_size));
    auto load = [&] { data::load_batch(dataset, view, batch); };
    if constexpr (std::invocable<F&, const B&, std::size_t, std::optional<error>>) {
      auto failed = parallax::detail::capture(load, "the dataset's batch(): ");
      f(std::as_const(batch), indices.size(), std::move(failed));
    } else {
      load();
      f(std::as_const(batch), indices.size());
    }
  }
}

inline evaluation make_evaluation(const eval_sums& total, bool has_accuracy, const std::vector<std::string>& metric_names,
                                  std::span<const double> metric_sums) {
  evaluation result;
  result.samples = static_cast<std::size_t>(total.samples);
  // No sample, no mean: NaN rather than a loss or an accuracy of 0, as an
  // epoch without steps reports.
  const double n = total.samples > 0 ? total.samples : std::numeric_limits<double>::quiet_NaN();
  result.loss = total.loss / n;
  if (has_accuracy) result.accuracy = total.correct / n;
  for (std::size_t m = 0; m < metric_names.size(); ++m) result.metrics.emplace_back(metric_names[m], metric_sums[m] / n);
  return result;
}

}  // namespace parallax::training
