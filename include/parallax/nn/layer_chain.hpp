#pragma once
// SPDX-License-Identifier: BSL-1.0
/// LayerChain<Layers...>: layers applied one after the other, owning and reusing
/// every activation and gradient buffer between them — the layers of a
/// Sequential and the body f of a Residual (y = x + f(x)).

#include <parallax/core/concepts.hpp>
#include <parallax/core/error.hpp>
#include <parallax/core/trace.hpp>
#include <parallax/detail/chain.hpp>
#include <parallax/detail/tensor_list.hpp>
#include <parallax/detail/xtensor.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace parallax::nn {

namespace detail {

/// A part's parameters (or gradients) as a std::tuple to concatenate: the
/// part's own tuple, its other tensor list wrapped in a tuple, or nothing.
template <class R>
auto as_tuple(R&& list) {
  if constexpr (std::is_reference_v<R> ||
                !parallax::detail::is_tuple_like<std::remove_cvref_t<R>>::value) {
    return std::tuple<R>(std::forward<R>(list));
  } else {
    return std::forward<R>(list);
  }
}

template <class L>
concept has_const_parameters = !HasLayerParameters<L> || requires(const L& l) {
  { l.parameters() } -> TensorList;
  { l.gradients() } -> TensorList;
};

}  // namespace detail

/// Layers applied in order, as one piece: forward keeps every layer's output
/// in buffers the chain owns (reused from call to call), backward runs from
/// the last layer to the first over them. Its owner checks the layers at
/// compile time (Sequential, Residual) and writes dL/d(the last output) into
/// output_gradient() before backward().
template <class... Layers>
class LayerChain {
  static constexpr bool ok_ = parallax::detail::layers_ok<std::tuple<Layers...>, sizeof...(Layers)>();
  template <std::size_t I>
  using layer_t = typename parallax::detail::part_at<I, Layers...>::type;

 public:
  static constexpr std::size_t layer_count = sizeof...(Layers);
  /// Whether a layer's forward and backward are collectives (CombinesRanks).
  static constexpr bool combines_ranks = (CombinesRanks<Layers> || ...);
  using input_type = typename parallax::detail::input_of<layer_t<0>>::type;
  using output_type = typename parallax::detail::output_of<layer_t<layer_count - 1>>::type;

  explicit LayerChain(Layers... layers) : layers_(std::move(layers)...) {}

  template <std::size_t I>
  auto& layer() {
    return std::get<I>(layers_);
  }
  template <std::size_t I>
  const auto& layer() const {
    return std::get<I>(layers_);
  }

  /// initialize(seed, first + i) on layer i.
  void initialize(std::uint64_t seed, std::size_t first = 0) {
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (std::get<I>(layers_).initialize(seed, first + I), ...);
    }(std::make_index_sequence<layer_count>{});
  }

  /// Every layer's parameters() concatenated into one std::tuple, in layer
  /// order; layers without parameters contribute nothing.
  auto parameters() { return collect([](auto& l) -> decltype(auto) { return l.parameters(); }); }
  auto parameters() const
    requires(detail::has_const_parameters<Layers> && ...)
  {
    return collect([](const auto& l) -> decltype(auto) { return l.parameters(); });
  }
  /// Gradients laid out like parameters().
  auto gradients() { return collect([](auto& l) -> decltype(auto) { return l.gradients(); }); }
  auto gradients() const
    requires(detail::has_const_parameters<Layers> && ...)
  {
    return collect([](const auto& l) -> decltype(auto) { return l.gradients(); });
  }
  /// Every layer's buffers() concatenated (HasLayerBuffers: BatchNorm's
  /// running statistics), in layer order; only when some layer has any.
  auto buffers()
    requires(HasLayerBuffers<Layers> || ...)
  {
    return collect<true>([](auto& l) -> decltype(auto) { return l.buffers(); });
  }
  auto buffers() const
    requires(HasLayerBuffers<const Layers> || ...)
  {
    return collect<true>([](const auto& l) -> decltype(auto) { return l.buffers(); });
  }
  /// Sets every gradient to 0.
  void zero_gradients();
  /// The number of trainable scalars.
  std::size_t parameter_count() const
    requires(detail::has_const_parameters<Layers> && ...);

  /// Runs every layer on x; returns the last layer's output (the chain's
  /// buffer). A new input shape is first checked through the whole chain
  /// (output_shape), so a mismatch names the layer; `who` names the owner.
  const output_type& forward(const input_type& x, const char* who);
  /// forward(x, who) for a backward that follows at once: the last layer's
  /// forward is skipped when its backward does not read its output
  /// (BackwardIgnoresOutput), as nothing else reads it.
  void forward_for_backward(const input_type& x, const char* who);
  /// Where the caller may write dL/d(the last output) for backward().
  output_type& output_gradient() { return std::get<layer_count - 1>(output_grads_); }
  /// From dL/d(the last output) — *dy, or without dy output_gradient() —
  /// last layer first, over the buffers of the last forward(x): adds every
  /// layer's parameter gradients and writes dL/dx into *dx; without dx, the
  /// first layer's input gradient is not computed where the layer can skip
  /// it (backward_parameters).
  void backward(const input_type& x, const output_type* dy, input_type* dx);

  /// Forwards set_training(training) / set_step(step) to the layers that have it.
  void set_training(bool training);
  void set_step(std::uint64_t step);

  /// The layers' descriptions joined by ", " ("Linear(4 -> 3), Tanh").
  std::string describe() const;
  /// The last layer's output shape for an input shape, through every
  /// layer's output_shape(); throws parallax::error "<who>: layer 2
  /// Linear(16 -> 8) cannot take the output of layer 1 ReLU, of shape ...".
  std::vector<std::size_t> output_shape(std::vector<std::size_t> input_shape, const char* who) const;

 private:
  /// get(layer) of every layer that has parameters (Buffers: buffers),
  /// concatenated into one std::tuple.
  template <bool Buffers = false, class F>
  auto collect(F get) {
    return collect_from<Buffers>(layers_, get, std::make_index_sequence<layer_count>{});
  }
  template <bool Buffers = false, class F>
  auto collect(F get) const {
    return collect_from<Buffers>(layers_, get, std::make_index_sequence<layer_count>{});
  }
  template <bool Buffers, class Tuple, class F, std::size_t... I>
  static auto collect_from(Tuple& layers, F& get, std::index_sequence<I...>) {
    return std::tuple_cat(one_part<Buffers>(std::get<I>(layers), get)...);
  }
  template <bool Buffers, class L, class F>
  static auto one_part(L& part, F& get) {
    if constexpr (Buffers ? HasLayerBuffers<L> : HasLayerParameters<std::remove_const_t<L>>) {
      return detail::as_tuple(get(part));
    } else {
      return std::tuple<>{};
    }
  }
  /// f(layer) for every layer, in order.
  template <class F>
  void for_each_layer(F f) {
    std::apply([&](auto&... layer) { (f(layer), ...); }, layers_);
  }

  /// The forwards of layers [0, Count), after the shape check.
  template <std::size_t Count>
  void run_forward(const input_type& x, const char* who);

  /// Layer I's input: x for layer 0, else layer I - 1's output.
  template <std::size_t I>
  const auto& layer_input(const input_type& x) const {
    if constexpr (I == 0) {
      return x;
    } else {
      return std::get<I - 1>(outputs_);
    }
  }

  template <class Seq>
  struct activations;
  template <std::size_t... I>
  struct activations<std::index_sequence<I...>> {
    using type = std::tuple<typename parallax::detail::output_of<layer_t<I>>::type...>;
  };
  using buffer_tuple = typename activations<std::make_index_sequence<layer_count>>::type;

  std::tuple<Layers...> layers_;
  buffer_tuple outputs_;                    // layer i's output from the last forward
  buffer_tuple output_grads_;               // dL/d(layer i's output) from the last backward
  input_type input_grad_;                   // dL/dx when the caller passes no dx but layer 0 needs one
  std::vector<std::size_t> checked_shape_;  // the last input shape checked through the chain
};

// ---------------------------------------------------------------------------

template <class... Layers>
void LayerChain<Layers...>::zero_gradients() {
  parallax::detail::for_each_tensor(gradients(), [](auto& g) {
    using V = typename std::remove_cvref_t<decltype(g)>::value_type;
    std::fill_n(g.data(), g.size(), V(0));
  });
}

template <class... Layers>
std::size_t LayerChain<Layers...>::parameter_count() const
  requires(detail::has_const_parameters<Layers> && ...)
{
  std::size_t n = 0;
  parallax::detail::for_each_tensor(parameters(), [&](const auto& p) { n += p.size(); });
  return n;
}

template <class... Layers>
auto LayerChain<Layers...>::forward(const input_type& x, const char* who) -> const output_type& {
  run_forward<layer_count>(x, who);
  return std::get<layer_count - 1>(outputs_);
}

template <class... Layers>
void LayerChain<Layers...>::forward_for_backward(const input_type& x, const char* who) {
  if constexpr (BackwardIgnoresOutput<layer_t<layer_count - 1>>) {
    run_forward<layer_count - 1>(x, who);
  } else {
    run_forward<layer_count>(x, who);
  }
}

template <class... Layers>
template <std::size_t Count>
void LayerChain<Layers...>::run_forward(const input_type& x, const char* who) {
  if constexpr (ok_) {
    if (!std::equal(x.shape().begin(), x.shape().end(), checked_shape_.begin(), checked_shape_.end())) {
      std::vector<std::size_t> shape(x.shape().begin(), x.shape().end());
      (void)output_shape(shape, who);
      checked_shape_ = std::move(shape);
    }
    auto one = [&]<std::size_t I>(std::integral_constant<std::size_t, I>) {
      auto& layer = std::get<I>(layers_);
      trace::span span([&] { return parallax::detail::layer_name(layer, I); }, "forward", static_cast<std::int64_t>(I));
      layer.forward(layer_input<I>(x), std::get<I>(outputs_));
    };
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (one(std::integral_constant<std::size_t, I>{}), ...);
    }(std::make_index_sequence<Count>{});
  }
}

template <class... Layers>
void LayerChain<Layers...>::backward(const input_type& x, const output_type* dy, input_type* dx) {
  // Last layer first: layer I reads dL/d(its output) and writes dL/d(its
  // input). Without dx nobody reads the first layer's input gradient: a
  // layer that can skip it (backward_parameters) does.
  if constexpr (ok_) {
    auto one = [&]<std::size_t I>(std::integral_constant<std::size_t, I>) {
      auto& layer = std::get<I>(layers_);
      trace::span span([&] { return parallax::detail::layer_name(layer, I); }, "backward", static_cast<std::int64_t>(I));
      const auto& grad = [&]() -> const auto& {  // dL/d(layer I's output)
        if constexpr (I + 1 == layer_count) {
          if (dy) return *dy;
        }
        return std::get<I>(output_grads_);
      }();
      if constexpr (I == 0) {
        if constexpr (HasParameterBackward<layer_t<0>>) {
          if (!dx) {
            layer.backward_parameters(x, std::get<0>(outputs_), grad);
            return;
          }
        }
        layer.backward(x, std::get<0>(outputs_), grad, dx ? *dx : input_grad_);
      } else {
        layer.backward(layer_input<I>(x), std::get<I>(outputs_), grad, std::get<I - 1>(output_grads_));
      }
    };
    [&]<std::size_t... J>(std::index_sequence<J...>) {
      (one(std::integral_constant<std::size_t, layer_count - 1 - J>{}), ...);
    }(std::make_index_sequence<layer_count>{});
  }
}

template <class... Layers>
void LayerChain<Layers...>::set_training(bool training) {
  for_each_layer([&](auto& l) {
    if constexpr (requires { l.set_training(training); }) l.set_training(training);
  });
}

template <class... Layers>
void LayerChain<Layers...>::set_step(std::uint64_t step) {
  for_each_layer([&](auto& l) {
    if constexpr (requires { l.set_step(step); }) l.set_step(step);
  });
}

template <class... Layers>
std::string LayerChain<Layers...>::describe() const {
  std::string text;
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    (
        [&](const auto& layer) {
          if constexpr (I > 0) text += ", ";
          if constexpr (requires { layer.describe(); }) {
            text += layer.describe();
          } else {
            text += "part " + std::to_string(I);
          }
        }(std::get<I>(layers_)),
        ...);
  }(std::make_index_sequence<layer_count>{});
  return text;
}

template <class... Layers>
std::vector<std::size_t> LayerChain<Layers...>::output_shape(std::vector<std::size_t> input_shape, const char* who) const {
  // Names the layer that cannot take its input, and where that input came
  // from: "Sequential: layer 2 Linear(16 -> 8) cannot take the output of
  // layer 1 ReLU, of shape (32, 32): ...".
  std::string from = "the input";
  auto one = [&]<std::size_t I>(std::integral_constant<std::size_t, I>) {
    const auto& layer = std::get<I>(layers_);
    const std::string name = parallax::detail::layer_name(layer, I);
    if constexpr (requires { layer.output_shape(input_shape); }) {
      try {
        input_shape = layer.output_shape(input_shape);
      } catch (const parallax::error& e) {
        parallax::detail::throw_error(std::string(who) + ": " + name + " cannot take " + from + ", of shape " +
                                      parallax::detail::shape_string(input_shape) + ": " +
                                      parallax::detail::cause_of(e));
      }
    }
    from = "the output of ";
    from += name;
  };
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    (one(std::integral_constant<std::size_t, I>{}), ...);
  }(std::make_index_sequence<layer_count>{});
  return input_shape;
}

}  // namespace parallax::nn
