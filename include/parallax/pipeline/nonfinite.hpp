#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Where a pipeline step's first non-finite value appeared. The step itself
/// only learns that some stage's gradient is not finite (one flag in its one
/// agreement); under the error policy the step is then run once more with
/// every stage watching its tensors in the order they are computed
/// (nonfinite_watch), and each stage names what it can tell is an origin,
/// not a value it received already broken:
///   - on stage 0, the input batch itself;
///   - a layer's output that is not finite while its input was;
///   - on the last stage, the loss (its inputs finite) or the loss's gradient;
///   - in backward, while the gradient flowing back was finite: the first
///     layer (last layer first) whose parameter gradient or input gradient
///     is not.
/// A stage whose input or received gradient was already not finite names
/// nothing: the stage it came from does. The watch costs nothing in a step
/// that stays finite.

#include <parallax/core/concepts.hpp>
#include <parallax/detail/chain.hpp>
#include <parallax/detail/tensor_list.hpp>
#include <parallax/training/update.hpp>

#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <type_traits>

namespace parallax::pipeline {

/// The first non-finite tensor one stage saw in a watched run.
class nonfinite_watch {
 public:
  enum class first {
    nothing,
    input,               ///< the stage input
    output,              ///< the output of layer()
    output_gradient,     ///< the gradient of the stage output (received, or the loss's)
    parameter_gradient,  ///< parameter parameter() of layer()
    input_gradient,      ///< the input gradient of layer()
  };

  void reset() { first_ = first::nothing; }
  first seen() const { return first_; }
  std::size_t layer() const { return layer_; }
  std::size_t parameter() const { return parameter_; }

  template <class Tensor>
  void input(const Tensor& x) {
    note(first::input, 0, 0, x);
  }
  template <class Tensor>
  void output(std::size_t layer, const Tensor& y) {
    note(first::output, layer, 0, y);
  }
  template <class Tensor>
  void output_gradient(const Tensor& dy) {
    note(first::output_gradient, 0, 0, dy);
  }
  /// After layer `index`'s backward: its parameter gradients, then its input
  /// gradient `dx` (nullptr when the layer skipped it).
  template <class Layer, class Tensor>
  void backward(std::size_t index, Layer& layer, const Tensor* dx) {
    if constexpr (HasLayerParameters<Layer>) {
      std::size_t k = 0;
      parallax::detail::for_each_tensor(layer.gradients(),
                                        [&](auto& g) { note(first::parameter_gradient, index, k++, g); });
    }
    if (dx) note(first::input_gradient, index, 0, *dx);
  }

 private:
  template <class Tensor>
  void note(first what, std::size_t layer, std::size_t parameter, const Tensor& t) {
    using V = std::remove_cv_t<std::remove_reference_t<decltype(*t.data())>>;
    if constexpr (std::is_floating_point_v<V>) {  // integer inputs (token ids) are always finite
      if (first_ != first::nothing || training::all_finite(std::span<const V>(t.data(), t.size()))) return;
      first_ = what;
      layer_ = layer;
      parameter_ = parameter;
    }
  }

  first first_ = first::nothing;
  std::size_t layer_ = 0;
  std::size_t parameter_ = 0;
};

/// What stage `s` can name as an origin after a watched run (see above), as
/// the subject of a sentence ("the output of layer 2 ReLU"), or nothing.
/// `loss_finite`: whether the last stage's loss was finite (ignored elsewhere).
template <class Stage>
std::optional<std::string> nonfinite_origin(Stage& s, const nonfinite_watch& watch, bool loss_finite) {
  using first = nonfinite_watch::first;
  const bool last = s.loss() != nullptr;
  std::string layer;
  s.for_each_layer([&](std::size_t index, auto& l) {
    if (index == watch.layer()) layer = parallax::detail::layer_name(l, index);
  });
  switch (watch.seen()) {
    case first::input:
      if (s.begin() == 0) return "the input batch";
      return std::nullopt;
    case first::output:
      return "the output of " + layer;
    case first::output_gradient:
      if (last) return loss_finite ? "the gradient of the loss" : "the loss";
      return std::nullopt;
    case first::parameter_gradient:
      return "the gradient of parameter " + std::to_string(watch.parameter()) + " of " + layer;
    case first::input_gradient:
      return "the input gradient of " + layer;
    case first::nothing:
      break;
  }
  if (last && !loss_finite) return "the loss";
  return std::nullopt;
}

}  // namespace parallax::pipeline
