#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Sequential<Parts...>: a chain of layers ending in a loss, as one
/// parallax::Model that owns and reuses every activation and gradient buffer
/// of the chain, with compile-time diagnostics that name the part at fault.

#include <parallax/core/concepts.hpp>
#include <parallax/core/error.hpp>
#include <parallax/core/trace.hpp>
#include <parallax/data/batch.hpp>
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

/// Layers followed by exactly one loss, trained as a single model. The
/// chain is checked when it is built: every part but the last must be a
/// parallax::Layer, the last a parallax::Loss, and each output_type must be
/// the next part's input_type; a failure names the index of the part.
///
/// Sequential owns one output and one gradient buffer per layer and reuses
/// them from step to step: with the same batch shape, a chain of Linear and
/// activation layers allocates nothing after its first step.
/// @code
///   using namespace parallax::nn;
///   Sequential net{Linear<float>(784, 256), ReLU<float>{}, Linear<float>(256, 10),
///                  SoftmaxCrossEntropy<float>{}};
///   net.initialize(seed);
///   static_assert(parallax::Model<decltype(net)>);
///   double loss = net.loss_and_gradient(batch);   // mean loss; gradients() set
/// @endcode
template <class... Parts>
class Sequential {
  static_assert(parallax::detail::check_chain<Parts...>());
  static constexpr bool chain_ok_ = parallax::detail::chain_ok<Parts...>();

  using parts_tuple = std::tuple<Parts...>;
  template <std::size_t I>
  using part_t = typename parallax::detail::part_at<I, Parts...>::type;

 public:
  /// How many layers precede the loss.
  static constexpr std::size_t layer_count = sizeof...(Parts) == 0 ? 0 : sizeof...(Parts) - 1;

  using loss_type = part_t<layer_count>;
  /// The first layer's input.
  using input_type = typename parallax::detail::input_of<part_t<0>>::type;
  /// The last layer's output (what predict returns and the loss reads).
  using output_type = typename parallax::detail::output_of<part_t<layer_count - 1>>::type;
  /// What the loss compares the output with.
  using target_type = typename parallax::detail::target_of<loss_type>::type;
  /// Inputs and targets of some samples.
  using batch_type = parallax::data::Batch<input_type, target_type>;
  /// The element type of the output (and, for the reference layers, of the
  /// parameters).
  using value_type = typename output_type::value_type;

  /// The parts, in order: layers, then the loss.
  explicit Sequential(Parts... parts) : parts_(std::move(parts)...) {}

  /// Layer I (0-based).
  template <std::size_t I>
  auto& layer() {
    static_assert(I < layer_count, "parallax: Sequential::layer<I>(): I is past the last layer");
    return std::get<I>(parts_);
  }
  template <std::size_t I>
  const auto& layer() const {
    static_assert(I < layer_count, "parallax: Sequential::layer<I>(): I is past the last layer");
    return std::get<I>(parts_);
  }
  /// The loss at the end of the chain.
  loss_type& loss_function() { return std::get<layer_count>(parts_); }
  const loss_type& loss_function() const { return std::get<layer_count>(parts_); }

  /// Calls initialize(seed, i) on layer i: the weights depend only on the
  /// seed and each layer's index, never on how the chain is split.
  void initialize(std::uint64_t seed);

  /// Every layer's parameters() concatenated into one std::tuple, in layer
  /// order; layers without parameters contribute nothing.
  auto parameters() { return collect([](auto& l) -> decltype(auto) { return l.parameters(); }); }
  auto parameters() const
    requires(detail::has_const_parameters<Parts> && ...)
  {
    return collect([](const auto& l) -> decltype(auto) { return l.parameters(); });
  }
  /// Gradients laid out like parameters().
  auto gradients() { return collect([](auto& l) -> decltype(auto) { return l.gradients(); }); }
  auto gradients() const
    requires(detail::has_const_parameters<Parts> && ...)
  {
    return collect([](const auto& l) -> decltype(auto) { return l.gradients(); });
  }

  /// Zeroes the gradients, runs forward and backward over the batch and
  /// returns the mean loss; gradients() then hold the gradient of that mean.
  double loss_and_gradient(const batch_type& batch);
  /// The mean loss over the batch, without gradients.
  double loss(const batch_type& batch);
  /// How many samples of the batch the output classifies right (when the
  /// loss has correct()).
  std::size_t correct(const batch_type& batch)
    requires HasCorrectCount<loss_type>;
  /// The last layer's output for x (a copy of the chain's buffer), in the
  /// current mode: call set_training(false) first to predict without dropout.
  output_type predict(const input_type& x);

  /// Forwards set_training(training) to the layers that have it (Dropout).
  void set_training(bool training);
  /// Forwards set_step(step) to the layers that have it (Dropout's masks).
  void set_step(std::uint64_t step);

  /// The number of trainable scalars.
  std::size_t parameter_count() const
    requires(detail::has_const_parameters<Parts> && ...);
  /// "Sequential(Linear(784 -> 256), ReLU, Linear(256 -> 10); SoftmaxCrossEntropy)".
  std::string describe() const;
  /// The last layer's output shape for an input shape, through every
  /// layer's output_shape() (throws parallax::error naming the layer that
  /// does not fit).
  std::vector<std::size_t> output_shape(std::vector<std::size_t> input_shape) const;

 private:
  template <class F>
  auto collect(F get) {
    return collect_from(parts_, get, std::make_index_sequence<layer_count>{});
  }
  template <class F>
  auto collect(F get) const {
    return collect_from(parts_, get, std::make_index_sequence<layer_count>{});
  }
  template <class Tuple, class F, std::size_t... I>
  static auto collect_from(Tuple& parts, F& get, std::index_sequence<I...>) {
    return std::tuple_cat(one_part(std::get<I>(parts), get)...);
  }
  template <class L, class F>
  static auto one_part(L& part, F& get) {
    if constexpr (HasLayerParameters<std::remove_const_t<L>>) {
      return detail::as_tuple(get(part));
    } else {
      return std::tuple<>{};
    }
  }

  /// Layer I's input: the batch's inputs for layer 0, else layer I - 1's output.
  template <std::size_t I>
  const auto& layer_input(const input_type& x) const {
    if constexpr (I == 0) {
      return x;
    } else {
      return std::get<I - 1>(outputs_);
    }
  }
  /// Where layer I writes dL/d(its input).
  template <std::size_t I>
  auto& input_gradient() {
    if constexpr (I == 0) {
      return input_grad_;
    } else {
      return std::get<I - 1>(output_grads_);
    }
  }
  /// f(part) for every part, layers and loss, in order.
  template <class F>
  void for_each_part(F f);
  void forward_all(const input_type& x);
  void backward_all(const input_type& x);
  void zero_gradients();
  const output_type& last_output() const { return std::get<layer_count - 1>(outputs_); }

  template <class Seq>
  struct buffers;
  template <std::size_t... I>
  struct buffers<std::index_sequence<I...>> {
    using type = std::tuple<typename parallax::detail::output_of<part_t<I>>::type...>;
  };
  using buffer_tuple = typename buffers<std::make_index_sequence<layer_count>>::type;
  std::vector<std::size_t> checked_shape_;  // the last input shape checked through the chain

  parts_tuple parts_;
  buffer_tuple outputs_;       // layer i's output from the last forward
  buffer_tuple output_grads_;  // dL/d(layer i's output) from the last backward
  input_type input_grad_;      // dL/d(the batch's inputs), a by-product of layer 0's backward
};

/// `Sequential net{Linear<float>(4, 2), SoftmaxCrossEntropy<float>{}};`
/// deduces Sequential<Linear<float>, SoftmaxCrossEntropy<float>>.
template <class... Parts>
Sequential(Parts...) -> Sequential<Parts...>;

// ---------------------------------------------------------------------------

template <class... Parts>
void Sequential<Parts...>::initialize(std::uint64_t seed) {
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    (std::get<I>(parts_).initialize(seed, I), ...);
  }(std::make_index_sequence<layer_count>{});
}

template <class... Parts>
void Sequential<Parts...>::forward_all(const input_type& x) {
  if constexpr (chain_ok_) {
    // A new input shape is checked through the whole chain first, so a
    // mismatch names the layer (the layers' own checks cannot know their index).
    if (!std::equal(x.shape().begin(), x.shape().end(), checked_shape_.begin(), checked_shape_.end())) {
      std::vector<std::size_t> shape(x.shape().begin(), x.shape().end());
      (void)output_shape(shape);
      checked_shape_ = std::move(shape);
    }
    auto one = [&]<std::size_t I>(std::integral_constant<std::size_t, I>) {
      auto& layer = std::get<I>(parts_);
      trace::span span([&] { return parallax::detail::layer_name(layer, I); }, "forward", static_cast<std::int64_t>(I));
      layer.forward(layer_input<I>(x), std::get<I>(outputs_));
    };
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (one(std::integral_constant<std::size_t, I>{}), ...);
    }(std::make_index_sequence<layer_count>{});
  }
}

template <class... Parts>
void Sequential<Parts...>::backward_all(const input_type& x) {
  // Last layer first: layer I reads dL/d(its output) and writes dL/d(its
  // input). Nobody reads the first layer's input gradient: a layer that can
  // skip it (backward_parameters) does.
  if constexpr (chain_ok_) {
    auto one = [&]<std::size_t I>(std::integral_constant<std::size_t, I>) {
      auto& layer = std::get<I>(parts_);
      trace::span span([&] { return parallax::detail::layer_name(layer, I); }, "backward", static_cast<std::int64_t>(I));
      if constexpr (I == 0 && HasParameterBackward<part_t<0>>) {
        layer.backward_parameters(layer_input<0>(x), std::get<0>(outputs_), std::get<0>(output_grads_));
      } else {
        layer.backward(layer_input<I>(x), std::get<I>(outputs_), std::get<I>(output_grads_), input_gradient<I>());
      }
    };
    [&]<std::size_t... J>(std::index_sequence<J...>) {
      (one(std::integral_constant<std::size_t, layer_count - 1 - J>{}), ...);
    }(std::make_index_sequence<layer_count>{});
  }
}

template <class... Parts>
void Sequential<Parts...>::zero_gradients() {
  parallax::detail::for_each_tensor(gradients(), [](auto& g) {
    using V = typename std::remove_cvref_t<decltype(g)>::value_type;
    std::fill_n(g.data(), g.size(), V(0));
  });
}

template <class... Parts>
double Sequential<Parts...>::loss_and_gradient(const batch_type& batch) {
  if constexpr (chain_ok_) {
    zero_gradients();
    forward_all(batch.inputs);
    const double mean =
        loss_function().loss(last_output(), batch.targets, std::get<layer_count - 1>(output_grads_));
    backward_all(batch.inputs);
    return mean;
  } else {
    return 0.0;  // unreachable: the chain's diagnostic stops the build
  }
}

template <class... Parts>
double Sequential<Parts...>::loss(const batch_type& batch) {
  if constexpr (chain_ok_) {
    forward_all(batch.inputs);
    return loss_function().value(last_output(), batch.targets);
  } else {
    return 0.0;  // unreachable: the chain's diagnostic stops the build
  }
}

template <class... Parts>
std::size_t Sequential<Parts...>::correct(const batch_type& batch)
  requires HasCorrectCount<loss_type>
{
  if constexpr (chain_ok_) {
    forward_all(batch.inputs);
    return static_cast<std::size_t>(loss_function().correct(last_output(), batch.targets));
  } else {
    return 0;  // unreachable: the chain's diagnostic stops the build
  }
}

template <class... Parts>
auto Sequential<Parts...>::predict(const input_type& x) -> output_type {
  forward_all(x);
  return last_output();
}

template <class... Parts>
template <class F>
void Sequential<Parts...>::for_each_part(F f) {
  std::apply([&](auto&... part) { (f(part), ...); }, parts_);
}

template <class... Parts>
void Sequential<Parts...>::set_training(bool training) {
  for_each_part([&](auto& p) {
    if constexpr (requires { p.set_training(training); }) p.set_training(training);
  });
}

template <class... Parts>
void Sequential<Parts...>::set_step(std::uint64_t step) {
  for_each_part([&](auto& p) {
    if constexpr (requires { p.set_step(step); }) p.set_step(step);
  });
}

template <class... Parts>
std::size_t Sequential<Parts...>::parameter_count() const
  requires(detail::has_const_parameters<Parts> && ...)
{
  std::size_t n = 0;
  parallax::detail::for_each_tensor(parameters(), [&](const auto& p) { n += p.size(); });
  return n;
}

template <class... Parts>
std::string Sequential<Parts...>::describe() const {
  std::string text = "Sequential(";
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    (
        [&](const auto& part) {
          if constexpr (I > 0) text += I == layer_count ? "; " : ", ";
          if constexpr (requires { part.describe(); }) {
            text += part.describe();
          } else {
            text += "part " + std::to_string(I);
          }
        }(std::get<I>(parts_)),
        ...);
  }(std::make_index_sequence<layer_count + 1>{});
  return text + ")";
}

template <class... Parts>
std::vector<std::size_t> Sequential<Parts...>::output_shape(std::vector<std::size_t> input_shape) const {
  // Names the layer that cannot take its input, and where that input came
  // from: "Sequential: layer 2 Linear(16 -> 8) cannot take the output of
  // layer 1 ReLU, of shape (32, 32): ...".
  std::string from = "the input";
  auto one = [&]<std::size_t I>(std::integral_constant<std::size_t, I>) {
    const auto& layer = std::get<I>(parts_);
    const std::string name = parallax::detail::layer_name(layer, I);
    if constexpr (requires { layer.output_shape(input_shape); }) {
      try {
        input_shape = layer.output_shape(input_shape);
      } catch (const parallax::error& e) {
        parallax::detail::throw_error("Sequential: " + name + " cannot take " + from + ", of shape " +
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
