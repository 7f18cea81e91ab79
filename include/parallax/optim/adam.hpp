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

namespace detail {

/// What Adam and AdamW share: the moments, the step, the state. `Decoupled`
/// selects AdamW's weight decay; `Derived` is the final class (for clone()).
template <std::floating_point T, bool Decoupled, class Derived>
class adam_family : public Optimizer<T> {
 public:
  void step(std::span<const std::span<T>> params, std::span<const std::span<const T>> grads) override;
  std::unique_ptr<Optimizer<T>> clone() const override;
  /// kind "adam" or "adamw", slots {"m", "v"}.
  optimizer_state<T> state() const override;
  /// state() without the copy: views of the moments.
  optimizer_state_view<T> state_view() const override;
  void load_state(const optimizer_state<T>& s) override;

  /// The options this optimizer was built with (lr as at construction).
  const adam_options& options() const { return options_; }
  std::vector<std::pair<std::string, double>> hyperparameters() const override {
    return {{"beta1", options_.beta1}, {"beta2", options_.beta2}, {"eps", options_.eps},
            {"weight_decay", options_.weight_decay}};
  }

 protected:
  explicit adam_family(adam_options options);

 private:
  static constexpr const char* kind() { return Decoupled ? "adamw" : "adam"; }
  // Names for messages, fixed at compile time (no allocation per step).
  static constexpr std::string_view constructor_name = Decoupled ? "AdamW::AdamW()" : "Adam::Adam()";
  static constexpr std::string_view step_name = Decoupled ? "AdamW::step()" : "Adam::step()";
  static constexpr std::string_view load_name = Decoupled ? "AdamW::load_state()" : "Adam::load_state()";
  adam_options options_;
  std::vector<std::vector<T>> m_;  // one buffer per tensor once steps_ > 0
  std::vector<std::vector<T>> v_;
};

}  // namespace detail

/// Adam, step t = 1, 2, ... (PyTorch's rule):
/// @code
///   d = g + weight_decay * p
///   m = beta1 * m + (1 - beta1) * d
///   v = beta2 * v + (1 - beta2) * d * d
///   p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
/// @endcode
/// Its state is two slots, "m" and "v", which start at zero. An option out
/// of range (see adam_options) makes validate() and step() throw
/// parallax::error naming the option and its value.
template <std::floating_point T>
class Adam final : public detail::adam_family<T, false, Adam<T>> {
 public:
  explicit Adam(adam_options options = {}) : detail::adam_family<T, false, Adam<T>>(options) {}
};

/// AdamW: first p = p * (1 - lr * weight_decay), then the Adam step above
/// without the weight-decay term (PyTorch's rule). Same slots as Adam.
template <std::floating_point T>
class AdamW final : public detail::adam_family<T, true, AdamW<T>> {
 public:
  explicit AdamW(adam_options options = {.weight_decay = 0.01}) : detail::adam_family<T, true, AdamW<T>>(options) {}
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
                 std::string(who) + ": eps = " + parallax::detail::number_text(o.eps) + " must be finite and > 0");
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

template <std::floating_point T, bool Decoupled, class Derived>
adam_family<T, Decoupled, Derived>::adam_family(adam_options options) : Optimizer<T>(options.lr), options_(options) {
  this->check_later([&] { check_adam_options(constructor_name, options); });
}

template <std::floating_point T, bool Decoupled, class Derived>
void adam_family<T, Decoupled, Derived>::step(std::span<const std::span<T>> params,
                                              std::span<const std::span<const T>> grads) {
  this->validate();
  adam_step(step_name, params, grads, this->learning_rate_, this->steps_, options_, Decoupled,
            m_, v_);
  ++this->steps_;
}

template <std::floating_point T, bool Decoupled, class Derived>
std::unique_ptr<Optimizer<T>> adam_family<T, Decoupled, Derived>::clone() const {
  return std::make_unique<Derived>(static_cast<const Derived&>(*this));
}

template <std::floating_point T, bool Decoupled, class Derived>
optimizer_state<T> adam_family<T, Decoupled, Derived>::state() const {
  return copy_state(state_view());
}

template <std::floating_point T, bool Decoupled, class Derived>
optimizer_state_view<T> adam_family<T, Decoupled, Derived>::state_view() const {
  return {kind(), this->steps_, this->learning_rate_, {"m", "v"}, {slot_view(m_), slot_view(v_)}, nullptr};
}

template <std::floating_point T, bool Decoupled, class Derived>
void adam_family<T, Decoupled, Derived>::load_state(const optimizer_state<T>& s) {
  check_state(load_name, s, kind(), {"m", "v"});
  std::vector<std::vector<T>> m = s.slots[0];
  std::vector<std::vector<T>> v = s.slots[1];
  m_ = std::move(m);
  v_ = std::move(v);
  this->steps_ = s.steps;
  this->learning_rate_ = s.learning_rate;
}

}  // namespace detail

}  // namespace parallax::optim
