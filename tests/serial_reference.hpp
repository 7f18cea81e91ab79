// SPDX-License-Identifier: BSL-1.0
// The serial reference of the data-parallel tests: one process, no
// DataParallel, stepping a model on the sampler's global batches.
#pragma once

#include "toy_model.hpp"

#include <parallax/data/sampler.hpp>
#include <parallax/detail/tensor_list.hpp>
#include <parallax/optim/optimizer.hpp>

#include <cstddef>
#include <span>
#include <vector>

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
    std::vector<std::span<T>> params;
    std::vector<std::span<const T>> grads;
    parallax::detail::for_each_tensor(model.parameters(), [&](auto& t) { params.emplace_back(t.data(), t.size()); });
    parallax::detail::for_each_tensor(model.gradients(), [&](auto& t) { grads.emplace_back(t.data(), t.size()); });
    opt->step(params, grads);
  }
  return model;
}

}  // namespace toy
