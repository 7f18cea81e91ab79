#pragma once
// SPDX-License-Identifier: BSL-1.0
/// evaluation: the result of evaluating a model over a dataset (mean loss,
/// accuracy, user metrics), identical on every rank; shared by DataParallel
/// and ModelParallel.

#include <parallax/core/concepts.hpp>
#include <parallax/core/error.hpp>

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace parallax {

/// Mean loss and accuracy of a model over a dataset, identical on every rank.
struct evaluation {
  std::size_t samples = 0;
  double loss = 0;                 ///< mean over the samples; NaN (as accuracy and metrics) without any
  std::optional<double> accuracy;  ///< when the model has correct(batch)
  std::vector<std::pair<std::string, double>> metrics;  ///< user metrics, means over samples
  double metric(const std::string& name) const;
};

/// A user metric for evaluate(): `sum(model, batch)` returns the metric
/// summed over the batch's samples; evaluate reports its mean.
template <class M>
struct metric {
  std::string name;
  std::function<double(M&, const typename detail::batch_type_of<M>::type&)> sum;
};

inline double evaluation::metric(const std::string& name) const {
  for (const auto& [n, v] : metrics)
    if (n == name) return v;
  throw error("evaluation::metric(): no metric named '" + name + "'");
}


}  // namespace parallax
