#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Sequential<Parts...>: a chain of layers ending in a loss, as one
/// parallax::Model that owns and reuses every activation and gradient buffer
/// of the chain (its layers are a LayerChain), with compile-time diagnostics that
/// name the part at fault.

#include <parallax/core/concepts.hpp>
#include <parallax/core/error.hpp>
#include <parallax/core/trace.hpp>
#include <parallax/data/batch.hpp>
#include <parallax/detail/chain.hpp>
#include <parallax/detail/tensor_list.hpp>
#include <parallax/detail/xtensor.hpp>
#include <parallax/nn/layer_chain.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace parallax::nn {

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

  template <std::size_t I>
  using part_t = typename parallax::detail::part_at<I, Parts...>::type;
  template <class Seq>
  struct chain_of;
  template <std::size_t... I>
  struct chain_of<std::index_sequence<I...>> {
    using type = LayerChain<part_t<I>...>;
  };

 public:
  /// How many layers precede the loss.
  static constexpr std::size_t layer_count = sizeof...(Parts) == 0 ? 0 : sizeof...(Parts) - 1;
  /// Whether a layer's forward and backward are collectives (CombinesRanks:
  /// SyncBatchNorm, also inside a Residual).
  static constexpr bool combines_ranks = (CombinesRanks<Parts> || ...);

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

  /// The layers, as a LayerChain.
  using chain_type = typename chain_of<std::make_index_sequence<layer_count>>::type;

  /// The parts, in order: layers, then the loss.
  explicit Sequential(Parts... parts)
      : Sequential(std::tuple<Parts...>(std::move(parts)...), std::make_index_sequence<layer_count>{}) {}

  /// Layer I (0-based).
  template <std::size_t I>
  auto& layer() {
    static_assert(I < layer_count, "parallax: Sequential::layer<I>(): I is past the last layer");
    return chain_.template layer<I>();
  }
  template <std::size_t I>
  const auto& layer() const {
    static_assert(I < layer_count, "parallax: Sequential::layer<I>(): I is past the last layer");
    return chain_.template layer<I>();
  }
  /// The loss at the end of the chain.
  loss_type& loss_function() { return loss_; }
  const loss_type& loss_function() const { return loss_; }

  /// Calls initialize(seed, i) on layer i: the weights depend only on the
  /// seed and each layer's index, never on how the chain is split.
  void initialize(std::uint64_t seed) { chain_.initialize(seed, 0); }

  /// Every layer's parameters() concatenated into one std::tuple, in layer
  /// order; layers without parameters contribute nothing.
  auto parameters() { return chain_.parameters(); }
  auto parameters() const
    requires requires(const chain_type& c) { c.parameters(); }
  {
    return chain_.parameters();
  }
  /// Gradients laid out like parameters().
  auto gradients() { return chain_.gradients(); }
  auto gradients() const
    requires requires(const chain_type& c) { c.gradients(); }
  {
    return chain_.gradients();
  }
  /// Every layer's buffers() (BatchNorm's running statistics), in layer
  /// order; only when some layer has any.
  auto buffers()
    requires requires(chain_type& c) { c.buffers(); }
  {
    return chain_.buffers();
  }
  auto buffers() const
    requires requires(const chain_type& c) { c.buffers(); }
  {
    return chain_.buffers();
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

  /// Forwards set_training(training) to the layers that have it (Dropout,
  /// BatchNorm).
  void set_training(bool training);
  /// Forwards set_step(step) to the layers that have it (Dropout's masks).
  void set_step(std::uint64_t step);

  /// The number of trainable scalars.
  std::size_t parameter_count() const
    requires requires(const chain_type& c) { c.parameter_count(); }
  {
    return chain_.parameter_count();
  }
  /// "Sequential(Linear(784 -> 256), ReLU, Linear(256 -> 10); SoftmaxCrossEntropy)".
  std::string describe() const;
  /// The last layer's output shape for an input shape, through every
  /// layer's output_shape() (throws parallax::error naming the layer that
  /// does not fit).
  std::vector<std::size_t> output_shape(std::vector<std::size_t> input_shape) const;

 private:
  template <std::size_t... I>
  Sequential(std::tuple<Parts...>&& parts, std::index_sequence<I...>)
      : chain_(std::get<I>(std::move(parts))...), loss_(std::get<layer_count>(std::move(parts))) {}

  const output_type& forward_all(const input_type& x) { return chain_.forward(x, "Sequential"); }

  chain_type chain_;
  loss_type loss_;
};

/// `Sequential net{Linear<float>(4, 2), SoftmaxCrossEntropy<float>{}};`
/// deduces Sequential<Linear<float>, SoftmaxCrossEntropy<float>>.
template <class... Parts>
Sequential(Parts...) -> Sequential<Parts...>;

// ---------------------------------------------------------------------------

template <class... Parts>
double Sequential<Parts...>::loss_and_gradient(const batch_type& batch) {
  if constexpr (chain_ok_) {
    chain_.zero_gradients();
    const double mean = loss_.loss(forward_all(batch.inputs), batch.targets, chain_.output_gradient());
    chain_.backward(batch.inputs, nullptr, nullptr);  // dy: the loss's, in output_gradient(); no dL/d(inputs)
    return mean;
  } else {
    return 0.0;  // unreachable: the chain's diagnostic stops the build
  }
}

template <class... Parts>
double Sequential<Parts...>::loss(const batch_type& batch) {
  if constexpr (chain_ok_) {
    return loss_.value(forward_all(batch.inputs), batch.targets);
  } else {
    return 0.0;  // unreachable: the chain's diagnostic stops the build
  }
}

template <class... Parts>
std::size_t Sequential<Parts...>::correct(const batch_type& batch)
  requires HasCorrectCount<loss_type>
{
  if constexpr (chain_ok_) {
    return static_cast<std::size_t>(loss_.correct(forward_all(batch.inputs), batch.targets));
  } else {
    return 0;  // unreachable: the chain's diagnostic stops the build
  }
}

template <class... Parts>
auto Sequential<Parts...>::predict(const input_type& x) -> output_type {
  if constexpr (chain_ok_) {
    return forward_all(x);
  } else {
    return {};  // unreachable: the chain's diagnostic stops the build
  }
}

template <class... Parts>
void Sequential<Parts...>::set_training(bool training) {
  chain_.set_training(training);
  if constexpr (requires { loss_.set_training(training); }) loss_.set_training(training);
}

template <class... Parts>
void Sequential<Parts...>::set_step(std::uint64_t step) {
  chain_.set_step(step);
  if constexpr (requires { loss_.set_step(step); }) loss_.set_step(step);
}

template <class... Parts>
std::string Sequential<Parts...>::describe() const {
  std::string text = "Sequential(" + chain_.describe() + "; ";
  if constexpr (requires { loss_.describe(); }) {
    text += loss_.describe();
  } else {
    text += "part " + std::to_string(layer_count);
  }
  return text + ")";
}

template <class... Parts>
std::vector<std::size_t> Sequential<Parts...>::output_shape(std::vector<std::size_t> input_shape) const {
  return chain_.output_shape(std::move(input_shape), "Sequential");
}

}  // namespace parallax::nn
