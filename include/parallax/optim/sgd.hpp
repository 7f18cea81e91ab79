#pragma once
// SPDX-License-Identifier: BSL-1.0
/// SGD with momentum, dampening, Nesterov momentum and L2 weight decay, with
/// the update rule of torch.optim.SGD.

#include <parallax/core/error.hpp>
#include <parallax/optim/optimizer.hpp>

#include <concepts>
#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace parallax::optim {

/// SGD's options; the defaults are plain gradient descent with lr 0.01.
struct sgd_options {
  /// Learning rate, >= 0.
  double lr = 0.01;
  /// Momentum factor in [0, 1); 0 keeps no state.
  double momentum = 0;
  /// Dampening of the gradient in the momentum buffer, in [0, 1].
  double dampening = 0;
  /// Nesterov momentum; needs momentum > 0 and dampening 0.
  bool nesterov = false;
  /// L2 penalty added to the gradient, >= 0.
  double weight_decay = 0;
};

/// Stochastic gradient descent, step t (PyTorch's rule):
/// @code
///   d = g + weight_decay * p
///   b = d                                         at the first step
///   b = momentum * b + (1 - dampening) * d        later
///   d = nesterov ? d + momentum * b : b           (when momentum > 0)
///   p = p - lr * d
/// @endcode
/// With momentum its state is one slot, "momentum" (the buffer b).
template <std::floating_point T>
class SGD final : public Optimizer<T> {
 public:
  /// An option out of range (see sgd_options) makes validate() and step()
  /// throw parallax::error naming the option and its value.
  explicit SGD(sgd_options options = {});

  void step(std::span<const std::span<T>> params, std::span<const std::span<const T>> grads) override;
  std::unique_ptr<Optimizer<T>> clone() const override;
  /// kind "sgd"; slot {"momentum"} when momentum > 0, else no slots.
  optimizer_state<T> state() const override;
  /// state() without the copy: views of the momentum buffers.
  optimizer_state_view<T> state_view() const override;
  void load_state(const optimizer_state<T>& s) override;

  /// The options this optimizer was built with (lr as at construction; see
  /// learning_rate() for the current one).
  const sgd_options& options() const;
  std::vector<std::pair<std::string, double>> hyperparameters() const override {
    return {{"momentum", options_.momentum},
            {"dampening", options_.dampening},
            {"nesterov", options_.nesterov ? 1.0 : 0.0},
            {"weight_decay", options_.weight_decay}};
  }

 private:
  std::vector<std::string> slot_names() const;

  sgd_options options_;
  std::vector<std::vector<T>> momentum_;  // one buffer per tensor once steps_ > 0 (momentum only)
};

// ---------------------------------------------------------------------------
// Implementation
// ---------------------------------------------------------------------------

template <std::floating_point T>
SGD<T>::SGD(sgd_options options) : Optimizer<T>(options.lr), options_(options) {
  this->check_later([&] {
    const char* who = "SGD::SGD()";
    detail::check_non_negative(who, "lr", options.lr);
    detail::check_unit_interval(who, "momentum", options.momentum, false);
    detail::check_unit_interval(who, "dampening", options.dampening, true);
    detail::check_non_negative(who, "weight_decay", options.weight_decay);
    PARALLAX_CHECK(!options.nesterov || (options.momentum > 0 && options.dampening == 0),
                   std::string(who) + ": nesterov = true needs momentum > 0 and dampening = 0, got momentum = " +
                       parallax::detail::number_text(options.momentum) + ", dampening = " + parallax::detail::number_text(options.dampening));
  });
}

template <std::floating_point T>
void SGD<T>::step(std::span<const std::span<T>> params, std::span<const std::span<const T>> grads) {
  this->validate();
  const bool with_momentum = options_.momentum > 0;
  const bool first = this->steps_ == 0;
  detail::check_step("SGD::step()", params, grads, with_momentum && !first ? &momentum_ : nullptr);
  if (with_momentum && first) {
    momentum_.resize(params.size());
    for (std::size_t k = 0; k < params.size(); ++k) momentum_[k].assign(params[k].size(), T(0));
  }

  const T lr = static_cast<T>(this->learning_rate_);
  const T wd = static_cast<T>(options_.weight_decay);
  const T mu = static_cast<T>(options_.momentum);
  const T keep = static_cast<T>(1 - options_.dampening);
  const bool decay = options_.weight_decay != 0;
  const bool nesterov = options_.nesterov;

  for (std::size_t k = 0; k < params.size(); ++k) {
    T* p = params[k].data();
    const T* g = grads[k].data();
    const std::size_t n = params[k].size();
    if (!with_momentum) {
      for (std::size_t i = 0; i < n; ++i) {
        const T d = decay ? g[i] + wd * p[i] : g[i];
        p[i] -= lr * d;
      }
      continue;
    }
    T* b = momentum_[k].data();
    if (first) {
      // PyTorch starts the buffer at the (decayed) gradient, undampened.
      for (std::size_t i = 0; i < n; ++i) {
        const T d = decay ? g[i] + wd * p[i] : g[i];
        b[i] = d;
        p[i] -= lr * (nesterov ? d + mu * d : d);
      }
    } else {
      for (std::size_t i = 0; i < n; ++i) {
        const T d = decay ? g[i] + wd * p[i] : g[i];
        b[i] = mu * b[i] + keep * d;
        p[i] -= lr * (nesterov ? d + mu * b[i] : b[i]);
      }
    }
  }
  ++this->steps_;
}

template <std::floating_point T>
std::unique_ptr<Optimizer<T>> SGD<T>::clone() const {
  return std::make_unique<SGD<T>>(*this);
}

template <std::floating_point T>
optimizer_state<T> SGD<T>::state() const {
  return detail::copy_state(state_view());
}

template <std::floating_point T>
optimizer_state_view<T> SGD<T>::state_view() const {
  optimizer_state_view<T> s{"sgd", this->steps_, this->learning_rate_, slot_names(), {}, nullptr};
  if (options_.momentum > 0) s.slots.push_back(detail::slot_view(momentum_));
  return s;
}

template <std::floating_point T>
void SGD<T>::load_state(const optimizer_state<T>& s) {
  detail::check_state("SGD::load_state()", s, "sgd", slot_names());
  std::vector<std::vector<T>> momentum = options_.momentum > 0 ? s.slots[0] : std::vector<std::vector<T>>{};
  momentum_ = std::move(momentum);
  this->steps_ = s.steps;
  this->learning_rate_ = s.learning_rate;
}

template <std::floating_point T>
const sgd_options& SGD<T>::options() const {
  return options_;
}

template <std::floating_point T>
std::vector<std::string> SGD<T>::slot_names() const {
  if (options_.momentum > 0) return {"momentum"};
  return {};
}

}  // namespace parallax::optim
