#pragma once
// SPDX-License-Identifier: BSL-1.0
/// One pipeline stage's layers, [begin, end) of a chain ending in a loss:
/// forward and backward of one micro-batch's saved activations, with or
/// without recomputing the inner outputs. Where activations come from and
/// go is not its business (no MPI here), so a stage can be checked against
/// nn::Sequential on its own.

#include <parallax/core/concepts.hpp>
#include <parallax/core/error.hpp>
#include <parallax/core/trace.hpp>
#include <parallax/detail/chain.hpp>
#include <parallax/detail/tensor_list.hpp>
#include <parallax/pipeline/nonfinite.hpp>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace parallax::pipeline {

/// Calls f(std::integral_constant<std::size_t, I>{}) for each I in [lo, hi)
/// below N, in order: the bridge from a stage's run-time layer range to the
/// compile-time types of its layers.
template <std::size_t N, class F>
void for_range(std::size_t lo, std::size_t hi, F&& f);
/// As for_range, last index first.
template <std::size_t N, class F>
void for_range_reverse(std::size_t lo, std::size_t hi, F&& f);

/// Layers [begin(), end()) of the chain Parts... (layers, then a loss),
/// built on this rank only, with the loss on the last stage. The buffers of
/// a micro-batch in flight (activations) live outside, so that several
/// micro-batches can be in flight at once (1F1B).
/// @code
///   pipeline::stage<Linear<double>, Tanh<double>, Linear<double>, MeanSquaredError<double>> s;
///   s.build(0, 2, std::tuple{std::tuple{5, 7}, std::tuple{}, std::tuple{7, 3}}, seed, false);
///   decltype(s)::activations a;
///   std::get<0>(a.in) = x;
///   s.forward(a, false);   // std::get<1>(a.out): the stage's output
/// @endcode
template <class... Parts>
class stage {
 public:
  static constexpr std::size_t layer_count = sizeof...(Parts) - 1;
  template <std::size_t I>
  using part_t = std::tuple_element_t<I, std::tuple<Parts...>>;
  template <std::size_t I>
  using in_t = typename part_t<I>::input_type;
  template <std::size_t I>
  using out_t = typename part_t<I>::output_type;
  using loss_type = part_t<layer_count>;
  using value_type = typename out_t<layer_count - 1>::value_type;

 private:
  template <class S>
  struct buffers;
  template <std::size_t... I>
  struct buffers<std::index_sequence<I...>> {
    using inputs = std::tuple<in_t<I>...>;
    using outputs = std::tuple<out_t<I>...>;
  };

 public:
  /// One tensor per layer of the whole chain: types are known at compile
  /// time, the stage's range only at run time; a stage uses its own indices.
  using inputs_tuple = typename buffers<std::make_index_sequence<layer_count>>::inputs;
  using outputs_tuple = typename buffers<std::make_index_sequence<layer_count>>::outputs;

  /// What one micro-batch keeps on this stage from its forward to its backward.
  struct activations {
    inputs_tuple in;    ///< the stage input, at index begin()
    outputs_tuple out;  ///< layer outputs (only the stage output, at end() - 1, when recomputing)
    outputs_tuple dy;   ///< gradient of the stage output, at index end() - 1
    inputs_tuple dx;    ///< gradient of the stage input, at index begin()
    /// After backward_input() ran the split: the parameter gradients wait
    /// for backward_weight(), which reads the layer outputs' gradients,
    /// kept in dy at every index of the stage.
    bool weights_pending = false;
  };

  /// Builds layers [begin, end) from their tuples of constructor arguments
  /// and initialises layer i with initialize(seed, i), whatever the cut; with
  /// `with_loss`, the loss too (from its tuple when part_args has one per
  /// part, else default-constructed).
  template <class... Args>
  void build(std::size_t begin, std::size_t end, const std::tuple<Args...>& part_args, std::uint64_t seed,
             bool with_loss);

  std::size_t begin() const { return begin_; }
  std::size_t end() const { return end_; }
  /// Part I (layer, or the loss at layer_count) if this stage holds it, else nullptr.
  template <std::size_t I>
  part_t<I>* part() {
    auto& slot = std::get<I>(parts_);
    return slot ? &*slot : nullptr;
  }
  loss_type* loss() { return part<layer_count>(); }
  /// Calls f(index, layer) for each layer of the stage, in order.
  template <class F>
  void for_each_layer(F&& f);
  void zero_gradients();
  /// Appends each layer's parameters and gradients, in layer order, as flat
  /// spans: the optimizer's view of the stage.
  void parameter_spans(std::vector<std::span<value_type>>& parameters, std::vector<std::span<value_type>>& gradients);
  /// Forwards set_training(training) to the layers that have it (Dropout).
  void set_training(bool training);
  /// While set, forward() and backward() show `watch` every tensor they
  /// compute or receive, in order (nonfinite.hpp; nullptr: off, free).
  void watch(nonfinite_watch* watch) { watch_ = watch; }

  /// a.in at begin() through the layers into a.out. With `recompute`, only
  /// the stage output lands in a; the inner outputs go to scratch that
  /// backward() recomputes.
  void forward(activations& a, bool recompute);
  /// a.dy at end() - 1 back through the layers into a.dx at begin(), adding
  /// to the layers' parameter gradients. Layer 0 skips its input gradient
  /// when it can (backward_parameters): nobody reads it.
  void backward(activations& a, bool recompute);
  /// The first half of backward(): a.dx and every input gradient in
  /// between, keeping each layer output's gradient in a.dy. Layers with
  /// backward_input (HasSplitBackward) leave their parameter gradients, and
  /// the first layer its backward_parameters, to backward_weight(); other
  /// layers run their whole backward here. With `recompute`, or while a
  /// watch is set, the whole backward runs here.
  void backward_input(activations& a, bool recompute);
  /// The second half: the parameter gradients backward_input() left, from
  /// the saved inputs and output gradients (nothing when it left none).
  void backward_weight(activations& a);
  /// After a failure the neighbours still wait for a tensor: the stage
  /// output (input gradient) becomes zeros of the expected shape.
  void zero_output(activations& a, const std::vector<std::size_t>& shape);
  void zero_input_gradient(activations& a, const std::vector<std::size_t>& shape);
  /// Bytes that a holds from forward to backward: the stage input and the
  /// outputs, and after backward_input() the output gradients that
  /// backward_weight() reads.
  std::size_t saved_bytes(const activations& a) const;

 private:
  /// Layer I's input: the stage input for the first layer, else the output
  /// of layer I - 1 (in scratch when recomputing).
  template <std::size_t I>
  const in_t<I>& input_of(activations& a, bool recompute);
  /// Where layer I's output lives: the stage output in a; inner outputs in a,
  /// or in scratch when recomputing.
  template <std::size_t I>
  out_t<I>& output_of(activations& a, bool recompute);
  /// Forward of layers [begin(), hi), each output shown to `watch` if set.
  void forward_to(activations& a, std::size_t hi, bool recompute, nonfinite_watch* watch);

  std::size_t begin_ = 0;
  std::size_t end_ = 0;
  std::tuple<std::optional<Parts>...> parts_;
  outputs_tuple recomputed_;  // inner outputs when recomputing, shared by the micro-batches
  nonfinite_watch* watch_ = nullptr;
  inputs_tuple dx_scratch_;   // gradients between the stage's layers
};

namespace detail {
/// x becomes zeros of this shape.
template <class E, class Shape>
void zero_fill(E& x, const Shape& shape) {
  x.resize(shape);
  x.fill(0);
}
}  // namespace detail

// ---------------------------------------------------------------------------

template <std::size_t N, class F>
void for_range(std::size_t lo, std::size_t hi, F&& f) {
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    ((I >= lo && I < hi ? (f(std::integral_constant<std::size_t, I>{}), 0) : 0), ...);
  }(std::make_index_sequence<N>{});
}

template <std::size_t N, class F>
void for_range_reverse(std::size_t lo, std::size_t hi, F&& f) {
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    ((N - 1 - I >= lo && N - 1 - I < hi ? (f(std::integral_constant<std::size_t, N - 1 - I>{}), 0) : 0), ...);
  }(std::make_index_sequence<N>{});
}

template <class... Parts>
template <class... Args>
void stage<Parts...>::build(std::size_t begin, std::size_t end, const std::tuple<Args...>& part_args,
                            std::uint64_t seed, bool with_loss) {
  begin_ = begin;
  end_ = end;
  for_range<layer_count>(begin_, end_, [&](auto I) {
    auto& part = std::get<I()>(parts_);
    // A failure names the layer; running out of memory says so.
    try {
      part.emplace(std::make_from_tuple<part_t<I()>>(std::get<I()>(part_args)));
      part->initialize(seed, I());
    } catch (const std::bad_alloc& e) {
      parallax::detail::throw_error("ModelParallel: building layer " + std::to_string(I()) +
                                    " ran out of memory (" + e.what() +
                                    "): its constructor arguments ask for more than this rank can allocate");
    } catch (const std::exception& e) {
      throw error(parallax::detail::kind_of(e),
                  "ModelParallel: building layer " + std::to_string(I()) + ": " + parallax::detail::cause_of(e),
                  parallax::detail::this_rank());
    }
  });
  if (with_loss) {
    if constexpr (sizeof...(Args) == sizeof...(Parts)) {
      std::get<layer_count>(parts_).emplace(std::make_from_tuple<loss_type>(std::get<layer_count>(part_args)));
    } else {
      std::get<layer_count>(parts_).emplace();
    }
  }
}

template <class... Parts>
template <class F>
void stage<Parts...>::for_each_layer(F&& f) {
  for_range<layer_count>(begin_, end_, [&](auto I) { f(I(), *std::get<I()>(parts_)); });
}

template <class... Parts>
void stage<Parts...>::zero_gradients() {
  for_each_layer([](std::size_t, auto& layer) {
    if constexpr (HasLayerParameters<std::remove_cvref_t<decltype(layer)>>)
      parallax::detail::for_each_tensor(layer.gradients(), [](auto& g) { g.fill(0); });
  });
}

template <class... Parts>
void stage<Parts...>::parameter_spans(std::vector<std::span<value_type>>& parameters,
                                      std::vector<std::span<value_type>>& gradients) {
  for_each_layer([&](std::size_t, auto& layer) {
    if constexpr (HasLayerParameters<std::remove_cvref_t<decltype(layer)>>) {
      using parallax::detail::for_each_tensor;
      for_each_tensor(layer.parameters(), [&](auto& t) { parameters.emplace_back(t.data(), t.size()); });
      for_each_tensor(layer.gradients(), [&](auto& t) { gradients.emplace_back(t.data(), t.size()); });
    }
  });
}

template <class... Parts>
void stage<Parts...>::set_training(bool training) {
  for_each_layer([&](std::size_t, auto& layer) {
    if constexpr (requires { layer.set_training(training); }) layer.set_training(training);
  });
}

template <class... Parts>
template <std::size_t I>
auto stage<Parts...>::input_of(activations& a, bool recompute) -> const in_t<I>& {
  if constexpr (I == 0) {
    return std::get<0>(a.in);
  } else {
    if (I == begin_) return std::get<I>(a.in);
    return recompute ? std::get<I - 1>(recomputed_) : std::get<I - 1>(a.out);
  }
}

template <class... Parts>
template <std::size_t I>
auto stage<Parts...>::output_of(activations& a, bool recompute) -> out_t<I>& {
  return recompute && I + 1 < end_ ? std::get<I>(recomputed_) : std::get<I>(a.out);
}

template <class... Parts>
void stage<Parts...>::forward_to(activations& a, std::size_t hi, bool recompute, nonfinite_watch* watch) {
  for_range<layer_count>(begin_, hi, [&](auto I) {
    auto& y = output_of<I()>(a, recompute);
    auto& layer = *std::get<I()>(parts_);
    trace::span span([&] { return parallax::detail::layer_name(layer, I()); }, recompute ? "recompute" : "forward",
                     static_cast<std::int64_t>(I()));
    layer.forward(input_of<I()>(a, recompute), y);
    if (watch) watch->output(I(), y);
  });
}

template <class... Parts>
void stage<Parts...>::forward(activations& a, bool recompute) {
  if (watch_) for_range<layer_count>(begin_, begin_ + 1, [&](auto I) { watch_->input(std::get<I()>(a.in)); });
  forward_to(a, end_, recompute, watch_);
}

template <class... Parts>
void stage<Parts...>::backward(activations& a, bool recompute) {
  if (watch_) for_range<layer_count>(end_ - 1, end_, [&](auto I) { watch_->output_gradient(std::get<I()>(a.dy)); });
  if (recompute) forward_to(a, end_ - 1, true, nullptr);  // the inner outputs, from the saved stage input
  for_range_reverse<layer_count>(begin_, end_, [&](auto I) {
    auto& layer = *std::get<I()>(parts_);
    trace::span span([&] { return parallax::detail::layer_name(layer, I()); }, "backward", static_cast<std::int64_t>(I()));
    const auto& y = output_of<I()>(a, recompute);
    const auto& dy = [&]() -> const out_t<I()>& {
      if constexpr (I() + 1 < layer_count) {
        if (I() + 1 < end_) return std::get<I() + 1>(dx_scratch_);
      }
      return std::get<I()>(a.dy);
    }();
    auto& dx = I() == begin_ ? std::get<I()>(a.dx) : std::get<I()>(dx_scratch_);
    if constexpr (I() == 0 && HasParameterBackward<part_t<0>>) {
      layer.backward_parameters(input_of<0>(a, recompute), y, dy);
      if (watch_) watch_->backward(I(), layer, static_cast<const in_t<0>*>(nullptr));
    } else {
      layer.backward(input_of<I()>(a, recompute), y, dy, dx);
      if (watch_) watch_->backward(I(), layer, &dx);
    }
  });
}

template <class... Parts>
void stage<Parts...>::backward_input(activations& a, bool recompute) {
  if (recompute || watch_) {
    backward(a, recompute);
    return;
  }
  a.weights_pending = true;
  for_range_reverse<layer_count>(begin_, end_, [&](auto I) {
    using layer_type = part_t<I()>;
    auto& layer = *std::get<I()>(parts_);
    trace::span span([&] { return parallax::detail::layer_name(layer, I()); }, "backward input",
                     static_cast<std::int64_t>(I()));
    const auto& x = input_of<I()>(a, false);
    const auto& y = std::get<I()>(a.out);
    const auto& dy = std::get<I()>(a.dy);
    auto& dx = [&]() -> in_t<I()>& {
      if constexpr (I() > 0) {
        if (I() > begin_) return std::get<I() - 1>(a.dy);
      }
      return std::get<I()>(a.dx);
    }();
    if constexpr (I() == 0 && HasParameterBackward<layer_type>) {
      // Nobody reads the chain input's gradient: all of it is backward_weight's.
    } else if constexpr (HasSplitBackward<layer_type>) {
      layer.backward_input(x, y, dy, dx);
    } else {
      layer.backward(x, y, dy, dx);
    }
  });
}

template <class... Parts>
void stage<Parts...>::backward_weight(activations& a) {
  if (!a.weights_pending) return;
  a.weights_pending = false;
  for_range_reverse<layer_count>(begin_, end_, [&](auto I) {
    using layer_type = part_t<I()>;
    if constexpr ((I() == 0 && HasParameterBackward<layer_type>) || HasSplitBackward<layer_type>) {
      auto& layer = *std::get<I()>(parts_);
      trace::span span([&] { return parallax::detail::layer_name(layer, I()); }, "backward weight",
                       static_cast<std::int64_t>(I()));
      layer.backward_parameters(input_of<I()>(a, false), std::get<I()>(a.out), std::get<I()>(a.dy));
    }
  });
}

template <class... Parts>
void stage<Parts...>::zero_output(activations& a, const std::vector<std::size_t>& shape) {
  for_range<layer_count>(end_ - 1, end_, [&](auto I) { detail::zero_fill(std::get<I()>(a.out), shape); });
}

template <class... Parts>
void stage<Parts...>::zero_input_gradient(activations& a, const std::vector<std::size_t>& shape) {
  for_range<layer_count>(begin_, begin_ + 1, [&](auto I) { detail::zero_fill(std::get<I()>(a.dx), shape); });
}

template <class... Parts>
std::size_t stage<Parts...>::saved_bytes(const activations& a) const {
  std::size_t elements = 0;
  for_range<layer_count>(begin_, end_, [&](auto I) {
    elements += std::get<I()>(a.out).size() + (a.weights_pending ? std::get<I()>(a.dy).size() : 0);
  });
  for_range<layer_count>(begin_, begin_ + 1, [&](auto I) { elements += std::get<I()>(a.in).size(); });
  return elements * sizeof(value_type);
}

}  // namespace parallax::pipeline
