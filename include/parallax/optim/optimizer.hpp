#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The optimizer interface every update rule implements (SGD, Adam, AdamW),
/// optimizer_state, the plain data a checkpoint saves to resume one, and
/// optimizer_state_view, the same state lent without a copy.
///
/// Optimizers work on flat buffers: one std::span per parameter tensor and one
/// per gradient tensor, in the same order. Their own state (momentum, Adam's
/// moments) is one buffer per tensor, created at the first step; after that,
/// steps allocate nothing.
/// @code
///   parallax::optim::SGD<double> sgd({.lr = 0.1, .momentum = 0.9});
///   std::vector<std::span<double>> params = {w, b};
///   std::vector<std::span<const double>> grads = {dw, db};
///   sgd.step(params, grads);
/// @endcode

#include <parallax/core/error.hpp>
#include <parallax/detail/number_text.hpp>

#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace parallax::optim {

/// Everything an optimizer needs to resume: saved in checkpoints. The options
/// (momentum, betas, ...) are not part of it: they belong to the code that
/// builds the optimizer, and load_state() checks that the kind and the slots
/// agree with them.
template <std::floating_point T>
struct optimizer_state {
  /// "sgd", "adam" or "adamw".
  std::string kind;
  /// step() calls so far.
  std::uint64_t steps = 0;
  /// The learning rate at the time of saving (a schedule may have changed it).
  double learning_rate = 0;
  /// What each slot holds, e.g. {"momentum"} or {"m", "v"}; {} for plain SGD.
  std::vector<std::string> slot_names;
  /// [slot][tensor index] -> flat values. Before the first step every slot
  /// holds no tensors.
  std::vector<std::vector<std::vector<T>>> slots;

  /// Field by field, values compared exactly.
  friend bool operator==(const optimizer_state&, const optimizer_state&) = default;
};

/// The state as views of an optimizer's own buffers: what a checkpoint
/// writes, without the copy state() makes. The fields are state()'s, each
/// slot one span per tensor. Valid until the optimizer's next step(),
/// load_state() or destruction.
template <std::floating_point T>
struct optimizer_state_view {
  std::string kind;
  std::uint64_t steps = 0;
  double learning_rate = 0;
  std::vector<std::string> slot_names;
  /// [slot][tensor index] -> the values where the optimizer keeps them.
  std::vector<std::vector<std::span<const T>>> slots;
  /// What the spans point into when the optimizer lends no buffers of its
  /// own (the default Optimizer::state_view() copies state() here); null
  /// when they point into the optimizer.
  std::shared_ptr<const optimizer_state<T>> copy;
};

/// The interface of every optimizer. Copying goes through clone(), so a
/// caller holding an Optimizer<T>& never slices.
template <std::floating_point T>
class Optimizer {
 public:
  virtual ~Optimizer() = default;

  /// One update of every parameter tensor from its gradient (same order, same
  /// sizes; checked with PARALLAX_CHECK with a message naming the tensor index
  /// and both sizes). State is created at the first step, one buffer per
  /// tensor; later steps must pass tensors of the same sizes. A step that
  /// throws has changed nothing.
  virtual void step(std::span<const std::span<T>> params, std::span<const std::span<const T>> grads) = 0;

  /// The learning rate the next step uses.
  double learning_rate() const;
  /// Sets the learning rate of the next steps (a schedule calls this before
  /// each step). Throws parallax::error unless lr is finite and >= 0.
  void set_learning_rate(double lr);
  /// step() calls so far (restored by load_state()).
  std::uint64_t steps() const;

  /// An independent copy with the same options and state.
  virtual std::unique_ptr<Optimizer<T>> clone() const = 0;
  /// A copy of the state, for a checkpoint.
  virtual optimizer_state<T> state() const = 0;
  /// The state without a copy, for a checkpoint to write (see
  /// optimizer_state_view; the library's optimizers lend their buffers).
  /// The default copies state() and views the copy, so an optimizer that
  /// implements only state() still saves.
  virtual optimizer_state_view<T> state_view() const;
  /// Restores a state saved by state(). Throws parallax::error, and changes
  /// nothing, when the kind or the slot names differ from this optimizer's
  /// (e.g. a state saved with momentum loaded into SGD without momentum) or
  /// when the state is malformed.
  virtual void load_state(const optimizer_state<T>& s) = 0;

  /// The options that decide a step, by name ({"momentum", 0.9}, ...), for
  /// the trainers' check that every rank uses the same; the learning rate is
  /// learning_rate(). An optimizer without options may keep the default.
  virtual std::vector<std::pair<std::string, double>> hyperparameters() const { return {}; }

  /// Throws the parallax::error of an option out of range at construction
  /// (naming the option and its value); does nothing for a valid optimizer.
  /// The constructors do not throw for such options: an optimizer invalid
  /// on one rank only still reaches the trainer, whose constructor calls
  /// validate() inside its first agreement, so every rank gets the same
  /// error. step() calls it first, for an optimizer used on its own.
  void validate() const {
    if (invalid_) throw *invalid_;
  }

 protected:
  explicit Optimizer(double learning_rate) : learning_rate_(learning_rate) {}
  /// Runs a constructor's checks of its options, keeping the first
  /// parallax::error for validate() instead of throwing it.
  template <class Checks>
  void check_later(Checks&& checks) {
    try {
      checks();
    } catch (const error& e) {
      invalid_ = e;
    }
  }
  Optimizer(const Optimizer&) = default;
  Optimizer& operator=(const Optimizer&) = default;
  Optimizer(Optimizer&&) = default;
  Optimizer& operator=(Optimizer&&) = default;

  double learning_rate_;
  std::uint64_t steps_ = 0;
  std::optional<error> invalid_;  // an option out of range, for validate()
};

namespace detail {

/// Throws unless `value` is finite and >= 0: "<who>: <option> = <value> must be
/// finite and >= 0".
inline void check_non_negative(std::string_view who, std::string_view option, double value);

/// Throws unless 0 <= value < 1 (or <= 1 when `closed`).
inline void check_unit_interval(std::string_view who, std::string_view option, double value, bool closed);

/// The checks every step() makes before touching anything: as many gradient
/// tensors as parameter tensors, the same size tensor by tensor, and, once
/// state exists (`buffers` not null), the sizes the state was created with.
template <std::floating_point T>
void check_step(std::string_view who, std::span<const std::span<T>> params,
                std::span<const std::span<const T>> grads, const std::vector<std::vector<T>>* buffers);

/// Views of every tensor's buffer of one slot.
template <std::floating_point T>
std::vector<std::span<const T>> slot_view(const std::vector<std::vector<T>>& buffers);

/// The state a view shows, copied: what state() returns, built from
/// state_view().
template <std::floating_point T>
optimizer_state<T> copy_state(const optimizer_state_view<T>& view);

/// Slot names for messages: {"m", "v"}, or {} for none.
inline std::string slots_text(const std::vector<std::string>& names) {
  std::string text = "{";
  for (std::size_t i = 0; i < names.size(); ++i) text += (i == 0 ? "\"" : ", \"") + names[i] + "\"";
  return text + "}";
}

/// The checks every load_state() makes before changing anything: the kind,
/// the slot names, one buffer list per slot, the same tensor sizes in every
/// slot, no buffers before the first step, and a valid learning rate.
template <std::floating_point T>
void check_state(std::string_view who, const optimizer_state<T>& s, std::string_view kind,
                 const std::vector<std::string>& slot_names);

}  // namespace detail

// ---------------------------------------------------------------------------
// Implementation
// ---------------------------------------------------------------------------

template <std::floating_point T>
double Optimizer<T>::learning_rate() const {
  return learning_rate_;
}

template <std::floating_point T>
void Optimizer<T>::set_learning_rate(double lr) {
  detail::check_non_negative("Optimizer::set_learning_rate()", "lr", lr);
  learning_rate_ = lr;
}

template <std::floating_point T>
std::uint64_t Optimizer<T>::steps() const {
  return steps_;
}

template <std::floating_point T>
optimizer_state_view<T> Optimizer<T>::state_view() const {
  auto copy = std::make_shared<const optimizer_state<T>>(state());
  optimizer_state_view<T> v{copy->kind, copy->steps, copy->learning_rate, copy->slot_names, {}, copy};
  for (const auto& slot : copy->slots) v.slots.push_back(detail::slot_view(slot));
  return v;
}

namespace detail {

template <std::floating_point T>
std::vector<std::span<const T>> slot_view(const std::vector<std::vector<T>>& buffers) {
  return {buffers.begin(), buffers.end()};
}

template <std::floating_point T>
optimizer_state<T> copy_state(const optimizer_state_view<T>& view) {
  optimizer_state<T> s{view.kind, view.steps, view.learning_rate, view.slot_names, {}};
  for (const auto& slot : view.slots) {
    auto& buffers = s.slots.emplace_back();
    for (const auto t : slot) buffers.emplace_back(t.begin(), t.end());
  }
  return s;
}

inline void check_non_negative(std::string_view who, std::string_view option, double value) {
  PARALLAX_CHECK(std::isfinite(value) && value >= 0,
                 std::string(who) + ": " + std::string(option) + " = " + parallax::detail::number_text(value) + " must be finite and >= 0");
}

inline void check_unit_interval(std::string_view who, std::string_view option, double value, bool closed) {
  PARALLAX_CHECK(value >= 0 && (closed ? value <= 1 : value < 1),
                 std::string(who) + ": " + std::string(option) + " = " + parallax::detail::number_text(value) + " is outside [0, 1" +
                     (closed ? "]" : ")"));
}

template <std::floating_point T>
void check_step(std::string_view who, std::span<const std::span<T>> params,
                std::span<const std::span<const T>> grads, const std::vector<std::vector<T>>* buffers) {
  const std::string w(who);
  PARALLAX_CHECK(params.size() == grads.size(), w + ": " + std::to_string(params.size()) +
                                                    " parameter tensors but " + std::to_string(grads.size()) +
                                                    " gradient tensors");
  if (buffers != nullptr) {
    PARALLAX_CHECK(buffers->size() == params.size(),
                   w + ": " + std::to_string(params.size()) +
                       " parameter tensors but the optimizer state (created at the first step) has " +
                       std::to_string(buffers->size()));
  }
  for (std::size_t k = 0; k < params.size(); ++k) {
    PARALLAX_CHECK(params[k].size() == grads[k].size(), w + ": tensor " + std::to_string(k) + " has " +
                                                            std::to_string(params[k].size()) +
                                                            " parameters but " + std::to_string(grads[k].size()) +
                                                            " gradients");
    if (buffers != nullptr) {
      PARALLAX_CHECK((*buffers)[k].size() == params[k].size(),
                     w + ": tensor " + std::to_string(k) + " has " + std::to_string(params[k].size()) +
                         " parameters but the optimizer state (created at the first step) has " +
                         std::to_string((*buffers)[k].size()));
    }
  }
}

template <std::floating_point T>
void check_state(std::string_view who, const optimizer_state<T>& s, std::string_view kind,
                 const std::vector<std::string>& slot_names) {
  const std::string w(who);
  PARALLAX_CHECK(s.kind == kind,
                 w + ": the state is of kind \"" + s.kind + "\", expected \"" + std::string(kind) + "\"");
  PARALLAX_CHECK(s.slot_names == slot_names, w + ": the state has slots " + slots_text(s.slot_names) +
                                                 " but this optimizer keeps " + slots_text(slot_names) +
                                                 " (were they built with different options?)");
  PARALLAX_CHECK(s.slots.size() == s.slot_names.size(), w + ": the state names " +
                                                            std::to_string(s.slot_names.size()) +
                                                            " slots but holds " + std::to_string(s.slots.size()));
  for (std::size_t j = 0; j < s.slots.size(); ++j) {
    PARALLAX_CHECK(s.slots[j].size() == s.slots[0].size(),
                   w + ": slot \"" + s.slot_names[j] + "\" holds " + std::to_string(s.slots[j].size()) +
                       " tensors but slot \"" + s.slot_names[0] + "\" holds " + std::to_string(s.slots[0].size()));
    for (std::size_t k = 0; k < s.slots[j].size(); ++k) {
      PARALLAX_CHECK(s.slots[j][k].size() == s.slots[0][k].size(),
                     w + ": tensor " + std::to_string(k) + " has " + std::to_string(s.slots[j][k].size()) +
                         " values in slot \"" + s.slot_names[j] + "\" but " +
                         std::to_string(s.slots[0][k].size()) + " in slot \"" + s.slot_names[0] + "\"");
    }
    PARALLAX_CHECK(s.steps > 0 || s.slots[j].empty(),
                   w + ": the state has 0 steps but slot \"" + s.slot_names[j] + "\" holds " +
                       std::to_string(s.slots[j].size()) + " tensors (state is created at the first step)");
  }
  check_non_negative(w, "learning_rate", s.learning_rate);
}

}  // namespace detail
}  // namespace parallax::optim
