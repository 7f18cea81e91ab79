#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Adam (L2 weight decay added to the gradient) and AdamW (decoupled weight
/// decay), with the update rules of torch.optim.Adam and torch.optim.AdamW.

#include <parallax/core/error.hpp>
#include <parallax/optim/optimizer.hpp>

#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <type_traits>
#include <vector>

namespace parallax::optim {

/// Options of Adam and AdamW (AdamW's default weight decay is 0.01).
struct adam_options {
  /// Learning rate, >= 0.
  double lr = 1e-3;
  /// Decay of the first moment, in [0, 1).
  double beta1 = 0.9;
  /// Decay of the second moment, in [0, 1).
  double beta2 = 0.999;
  /// Added to the square root of the bias-corrected second moment, > 0.
  double eps = 1e-8;
  /// Weight decay, >= 0: an L2 term in Adam, decoupled in AdamW.
  double weight_decay = 0;
};

/// Adam, step t = 1, 2, ... (PyTorch's rule):
/// @code
///   d = g + weight_decay * p
///   m = beta1 * m + (1 - beta1) * d
///   v = beta2 * v + (1 - beta2) * d * d
///   p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
/// @endcode
/// Its state is two slots, "m" and "v", which start at zero.
template <std::floating_point T>
class Adam final : public Optimizer<T> {
 public:
  /// Throws parallax::error naming the option and its value when an option
  /// is out of range (see adam_options).
  explicit Adam(adam_options options = {});

  void step(std::span<const std::span<T>> params, std::span<const std::span<const T>> grads) override;
  std::unique_ptr<Optimizer<T>> clone() const override;
  /// kind "adam", slots {"m", "v"}.
  optimizer_state<T> state() const override;
  void load_state(const optimizer_state<T>& s) override;

  /// The options this optimizer was built with (lr as at construction).
  const adam_options& options() const;

 private:
  adam_options options_;
  std::vector<std::vector<T>> m_;  // one buffer per tensor once steps_ > 0
  std::vector<std::vector<T>> v_;
};

/// AdamW: first p = p * (1 - lr * weight_decay), then the Adam step above
/// without the weight-decay term (PyTorch's rule). Same slots as Adam.
template <std::floating_point T>
class AdamW final : public Optimizer<T> {
 public:
  /// Throws parallax::error naming the option and its value when an option
  /// is out of range (see adam_options).
  explicit AdamW(adam_options options = {.weight_decay = 0.01});

  void step(std::span<const std::span<T>> params, std::span<const std::span<const T>> grads) override;
  std::unique_ptr<Optimizer<T>> clone() const override;
  /// kind "adamw", slots {"m", "v"}.
  optimizer_state<T> state() const override;
  void load_state(const optimizer_state<T>& s) override;

  /// The options this optimizer was built with (lr as at construction).
  const adam_options& options() const;

 private:
  adam_options options_;
  std::vector<std::vector<T>> m_;  // one buffer per tensor once steps_ > 0
  std::vector<std::vector<T>> v_;
};

namespace detail {

/// Throws parallax::error naming `who`, the option and its value when an
/// Adam/AdamW option is out of range.
inline void check_adam_options(std::string_view who, const adam_options& o);

/// The step Adam and AdamW share; `decoupled` selects AdamW's weight decay.
/// `steps` is the number of steps before this one.
template <std::floating_point T>
void adam_step(std::string_view who, std::span<const std::span<T>> params, std::span<const std::span<const T>> grads,
               double lr, std::uint64_t steps, const adam_options& o, bool decoupled,
               std::vector<std::vector<T>>& m, std::vector<std::vector<T>>& v);

/// The state of Adam or AdamW.
template <std::floating_point T>
optimizer_state<T> adam_state(std::string kind, std::uint64_t steps, double lr, const std::vector<std::vector<T>>& m,
                              const std::vector<std::vector<T>>& v);

}  // namespace detail

// ---------------------------------------------------------------------------
// Implementation
// ---------------------------------------------------------------------------

namespace detail {

inline void check_adam_options(std::string_view who, const adam_options& o) {
  check_non_negative(who, "lr", o.lr);
  check_unit_interval(who, "beta1", o.beta1, false);
  check_unit_interval(who, "beta2", o.beta2, false);
  PARALLAX_CHECK(std::isfinite(o.eps) && o.eps > 0,
                 std::string(who) + ": eps = " + number(o.eps) + " must be finite and > 0");
  check_non_negative(who, "weight_decay", o.weight_decay);
}

template <class T>
struct adam_constants {
  T step_size, bias2_sqrt, b1, b2, one_minus_b1, one_minus_b2, eps, wd, keep;
  bool l2, shrink;
};

// The update of one tensor. GCC vectorises this loop only when it may ignore
// errno for sqrt (-fno-math-errno, which parallax's own build uses): the
// square root only ever sees v >= 0, so nothing is lost.
template <class T>
void adam_kernel(T* __restrict p, const T* __restrict g, T* __restrict m, T* __restrict v, std::size_t n,
                 const adam_constants<T> c) {
  for (std::size_t i = 0; i < n; ++i) {
    const T pi = c.shrink ? p[i] * c.keep : p[i];
    const T d = c.l2 ? g[i] + c.wd * pi : g[i];
    m[i] = c.b1 * m[i] + c.one_minus_b1 * d;
    v[i] = c.b2 * v[i] + c.one_minus_b2 * d * d;
    const T denom = std::sqrt(v[i]) / c.bias2_sqrt + c.eps;
    p[i] = pi - c.step_size * (m[i] / denom);
  }
}

template <std::floating_point T>
void adam_step(std::string_view who, std::span<const std::span<T>> params, std::span<const std::span<const T>> grads,
               double lr, std::uint64_t steps, const adam_options& o, bool decoupled,
               std::vector<std::vector<T>>& m, std::vector<std::vector<T>>& v) {
  const bool first = steps == 0;
  check_step(who, params, grads, first ? nullptr : &m);
  if (first) {
    m.resize(params.size());
    v.resize(params.size());
    for (std::size_t k = 0; k < params.size(); ++k) {
      m[k].assign(params[k].size(), T(0));
      v[k].assign(params[k].size(), T(0));
    }
  }

  // Scalars in double, as PyTorch computes them, then rounded once to T.
  const double t = static_cast<double>(steps + 1);
  const double bias1 = 1 - std::pow(o.beta1, t);
  const double bias2 = 1 - std::pow(o.beta2, t);
  const T step_size = static_cast<T>(lr / bias1);
  const T bias2_sqrt = static_cast<T>(std::sqrt(bias2));
  const T b1 = static_cast<T>(o.beta1);
  const T b2 = static_cast<T>(o.beta2);
  const T one_minus_b1 = static_cast<T>(1 - o.beta1);
  const T one_minus_b2 = static_cast<T>(1 - o.beta2);
  const T eps = static_cast<T>(o.eps);
  const bool l2 = !decoupled && o.weight_decay != 0;
  const T wd = static_cast<T>(o.weight_decay);
  const bool shrink = decoupled && o.weight_decay != 0;
  const T keep = static_cast<T>(1 - lr * o.weight_decay);

  const adam_constants<T> c{step_size, bias2_sqrt, b1, b2, one_minus_b1, one_minus_b2, eps, wd, keep, l2, shrink};
  for (std::size_t k = 0; k < params.size(); ++k)
    adam_kernel(params[k].data(), grads[k].data(), m[k].data(), v[k].data(), params[k].size(), c);
}

template <std::floating_point T>
optimizer_state<T> adam_state(std::string kind, std::uint64_t steps, double lr, const std::vector<std::vector<T>>& m,
                              const std::vector<std::vector<T>>& v) {
  optimizer_state<T> s;
  s.kind = std::move(kind);
  s.steps = steps;
  s.learning_rate = lr;
  s.slot_names = {"m", "v"};
  s.slots = {m, v};
  return s;
}

}  // namespace detail

template <std::floating_point T>
Adam<T>::Adam(adam_options options) : Optimizer<T>(options.lr), options_(options) {
  detail::check_adam_options("Adam::Adam()", options);
}

template <std::floating_point T>
void Adam<T>::step(std::span<const std::span<T>> params, std::span<const std::span<const T>> grads) {
  detail::adam_step("Adam::step()", params, grads, this->learning_rate_, this->steps_, options_, false, m_, v_);
  ++this->steps_;
}

template <std::floating_point T>
std::unique_ptr<Optimizer<T>> Adam<T>::clone() const {
  return std::make_unique<Adam<T>>(*this);
}

template <std::floating_point T>
optimizer_state<T> Adam<T>::state() const {
  return detail::adam_state("adam", this->steps_, this->learning_rate_, m_, v_);
}

template <std::floating_point T>
void Adam<T>::load_state(const optimizer_state<T>& s) {
  detail::check_state("Adam::load_state()", s, "adam", {"m", "v"});
  std::vector<std::vector<T>> m = s.slots[0];
  std::vector<std::vector<T>> v = s.slots[1];
  m_ = std::move(m);
  v_ = std::move(v);
  this->steps_ = s.steps;
  this->learning_rate_ = s.learning_rate;
}

template <std::floating_point T>
const adam_options& Adam<T>::options() const {
  return options_;
}

template <std::floating_point T>
AdamW<T>::AdamW(adam_options options) : Optimizer<T>(options.lr), options_(options) {
  detail::check_adam_options("AdamW::AdamW()", options);
}

template <std::floating_point T>
void AdamW<T>::step(std::span<const std::span<T>> params, std::span<const std::span<const T>> grads) {
  detail::adam_step("AdamW::step()", params, grads, this->learning_rate_, this->steps_, options_, true, m_, v_);
  ++this->steps_;
}

template <std::floating_point T>
std::unique_ptr<Optimizer<T>> AdamW<T>::clone() const {
  return std::make_unique<AdamW<T>>(*this);
}

template <std::floating_point T>
optimizer_state<T> AdamW<T>::state() const {
  return detail::adam_state("adamw", this->steps_, this->learning_rate_, m_, v_);
}

template <std::floating_point T>
void AdamW<T>::load_state(const optimizer_state<T>& s) {
  detail::check_state("AdamW::load_state()", s, "adamw", {"m", "v"});
  std::vector<std::vector<T>> m = s.slots[0];
  std::vector<std::vector<T>> v = s.slots[1];
  m_ = std::move(m);
  v_ = std::move(v);
  this->steps_ = s.steps;
  this->learning_rate_ = s.learning_rate;
}

template <std::floating_point T>
const adam_options& AdamW<T>::options() const {
  return options_;
}

}  // namespace parallax::optim
