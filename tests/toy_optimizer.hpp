// SPDX-License-Identifier: BSL-1.0
// An optimizer a user could write against parallax::optim::Optimizer alone,
// for the tests of what the library does with one it does not know.
#pragma once

#include <parallax/optim/optimizer.hpp>

#include <cstddef>
#include <memory>
#include <span>
#include <vector>

namespace toy {

using parallax::optim::Optimizer;
using parallax::optim::optimizer_state;

/// An optimizer written against the interface alone, as a user would:
/// p -= lr * (g + s), s = g (the last gradient), one slot "last"; it
/// implements state() and keeps the default state_view().
template <class T>
class last_gradient final : public Optimizer<T> {
 public:
  explicit last_gradient(double lr = 0.5) : Optimizer<T>(lr) {}
  void step(std::span<const std::span<T>> params, std::span<const std::span<const T>> grads) override {
    last_.resize(params.size());
    for (std::size_t k = 0; k < params.size(); ++k) {
      last_[k].resize(params[k].size());
      for (std::size_t i = 0; i < params[k].size(); ++i) {
        params[k][i] -= static_cast<T>(this->learning_rate_) * (grads[k][i] + last_[k][i]);
        last_[k][i] = grads[k][i];
      }
    }
    ++this->steps_;
  }
  std::unique_ptr<Optimizer<T>> clone() const override { return std::make_unique<last_gradient>(*this); }
  optimizer_state<T> state() const override {
    return {"last_gradient", this->steps_, this->learning_rate_, {"last"}, {last_}};
  }
  void load_state(const optimizer_state<T>& s) override {
    last_ = s.slots.at(0);
    this->steps_ = s.steps;
    this->learning_rate_ = s.learning_rate;
  }

 private:
  std::vector<std::vector<T>> last_;
};

}  // namespace toy
