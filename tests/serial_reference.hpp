// SPDX-License-Identifier: BSL-1.0
// The serial reference of the parallel tests: one process, no trainer, the
// optimizer stepping a model by hand (serial::step, serial::train_on), and
// the toy model on a sampler's global batches (toy::train_serial).
#pragma once

#include "toy_model.hpp"

#include <parallax/data/sampler.hpp>
#include <parallax/detail/tensor_list.hpp>
#include <parallax/optim/optimizer.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <vector>

namespace serial {

/// One optimizer step of `model` from the gradients it holds.
template <class T, class M>
void step(M& model, parallax::optim::Optimizer<T>& optimizer) {
  std::vector<std::span<T>> params;
  std::vector<std::span<const T>> grads;
  parallax::detail::for_each_tensor(model.parameters(), [&](auto& t) { params.emplace_back(t.data(), t.size()); });
  parallax::detail::for_each_tensor(model.gradients(), [&](auto& t) { grads.emplace_back(t.data(), t.size()); });
  optimizer.step(params, grads);
}

/// `steps` optimizer steps of `model` on the same batch; each step's loss.
template <class T, class M, class B>
std::vector<double> train_on(M& model, const B& batch, const parallax::optim::Optimizer<T>& optimizer,
                             std::size_t steps) {
  auto rule = optimizer.clone();
  std::vector<double> losses;
  for (std::size_t s = 0; s < steps; ++s) {
    losses.push_back(model.loss_and_gradient(batch));
    step(model, *rule);
  }
  return losses;
}

/// Every tensor of a tensor list, flattened into one vector in order.
template <class List>
std::vector<double> flat(List&& list) {
  std::vector<double> out;
  parallax::detail::for_each_tensor(list, [&](auto& t) { out.insert(out.end(), t.begin(), t.end()); });
  return out;
}

/// The largest |a[i] - b[i]|; the sizes must be equal.
inline double max_difference(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
  return worst;
}

}  // namespace serial

namespace toy {

/// `model` trained for `optimizer_steps` steps on the sampler's global
/// batches, `accumulate` consecutive global batches forming one batch.
template <class T>
TinyMLP<T> train_serial(TinyMLP<T> model, const dataset<T>& data, parallax::data::DistributedSampler plan,
                        const parallax::optim::Optimizer<T>& optimizer, std::size_t optimizer_steps,
                        std::size_t accumulate = 1) {
  auto opt = optimizer.clone();
  std::size_t s = 0;
  for (std::size_t step = 0; step < optimizer_steps; ++step) {
    std::vector<std::size_t> indices;
    for (std::size_t k = 0; k < accumulate; ++k, ++s) {
      if (s == plan.steps_per_epoch()) {
        plan.next_epoch();
        s = 0;
      }
      const auto g = plan.global_indices(s);
      indices.insert(indices.end(), g.begin(), g.end());
    }
    model.loss_and_gradient(data.batch(indices));
    serial::step(model, *opt);
  }
  return model;
}

}  // namespace toy
