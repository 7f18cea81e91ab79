#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Compile-time checks of a chain of layers ending in a loss, shared by
/// Sequential and ModelParallel: every part but the last is a Layer, the
/// last a Loss, and each output_type is the next part's input_type. Each
/// check goes through a template that carries the part's index, so the
/// compiler's instantiation context names the part at fault. Also how
/// run-time messages name a layer of a chain.

#include <parallax/core/concepts.hpp>

#include <cstddef>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace parallax::detail {

/// Stands in for a type that a malformed part does not name, so that one
/// clear diagnostic is not followed by a cascade of unrelated ones.
struct missing_type {
  using value_type = double;
};

/// Part I of a chain, or missing_type when I is past its end.
template <std::size_t I, class... Parts>
struct part_at {
  using type = missing_type;
};
template <std::size_t I, class... Parts>
  requires(I < sizeof...(Parts))
struct part_at<I, Parts...> {
  using type = std::tuple_element_t<I, std::tuple<Parts...>>;
};

template <class L>
using input_type_t = typename L::input_type;
template <class L>
using output_type_t = typename L::output_type;
template <class L>
using target_type_t = typename L::target_type;
template <class L>
using input_of = member_type_or<missing_type, input_type_t, L>;
template <class L>
using output_of = member_type_or<missing_type, output_type_t, L>;
template <class L>
using target_of = member_type_or<missing_type, target_type_t, L>;

/// Checks that part I (not the last) is a Layer; the instantiation context
/// of a failure shows I.
template <std::size_t I, class L>
struct layer_part {
  static constexpr bool check() {
    if constexpr (Loss<L> && !HasLayerTypes<L>) {
      static_assert(dependent_false<L>,
                    "parallax: part I of the chain of layers is a Loss, but only the last part may be one: the parts "
                    "before it must be Layers; see docs/layer.md");
    } else if constexpr (!HasLayerTypes<L>) {
      static_assert(dependent_false<L>,
                    "parallax: layer I of the chain is not a Layer: it needs `using input_type = ...;` and "
                    "`using output_type = ...;` naming xtensor containers (batch first); see docs/layer.md");
    } else if constexpr (!HasForward<L>) {
      static_assert(dependent_false<L>,
                    "parallax: layer I of the chain is not a Layer: it needs `forward(const input_type& x, "
                    "output_type& y)`; see docs/layer.md");
    } else if constexpr (!HasBackward<L>) {
      static_assert(dependent_false<L>,
                    "parallax: layer I of the chain is not a Layer: it needs `backward(const input_type& x, "
                    "const output_type& y, const output_type& dy, input_type& dx)`; see docs/layer.md");
    } else if constexpr (!HasInitialize<L>) {
      static_assert(dependent_false<L>,
                    "parallax: layer I of the chain is not a Layer: it needs `initialize(std::uint64_t seed, "
                    "std::size_t index)`; see docs/layer.md");
    }
    return true;
  }
  static constexpr bool value = check();
};

/// Checks that layer I's output feeds layer I + 1; the instantiation context
/// of a failure shows I.
template <std::size_t I, class A, class B>
struct layer_pair {
  static constexpr bool check() {
    if constexpr (HasLayerTypes<A> && HasLayerTypes<B>) {
      static_assert(std::is_same_v<typename A::output_type, typename B::input_type>,
                    "parallax: in the chain of layers, the output_type of layer I does not match the input_type of layer "
                    "I + 1; see docs/layer.md");
    }
    return true;
  }
  static constexpr bool value = check();
};

/// Checks that the last part (part I) is a Loss that takes the output of the
/// last layer (layer I - 1).
template <std::size_t I, class A, class L>
struct loss_part {
  static constexpr bool check() {
    if constexpr (!Loss<L> && Layer<L>) {
      static_assert(dependent_false<L>,
                    "parallax: the last part of the chain (part I) is a Layer, not a Loss: end the chain with a "
                    "loss such as SoftmaxCrossEntropy or MeanSquaredError; see docs/layer.md");
    } else if constexpr (!Loss<L>) {
      static_assert(dependent_false<L>,
                    "parallax: the last part of the chain (part I) is not a Loss: it needs input_type, "
                    "target_type, `double loss(y, t, dy)` and `double value(y, t)`; see docs/layer.md");
    } else if constexpr (HasLayerTypes<A>) {
      static_assert(std::is_same_v<typename A::output_type, typename L::input_type>,
                    "parallax: in the chain of layers, the output_type of the last layer (layer I - 1) does not match the "
                    "input_type of the loss (part I); see docs/layer.md");
    }
    return true;
  }
  static constexpr bool value = check();
};

/// The checks of the first N parts of the tuple Parts as layers, each
/// feeding the next (diagnostics name the layer); true once they are out.
template <class Parts, std::size_t N>
constexpr bool check_layers() {
  return []<std::size_t... I>(std::index_sequence<I...>) {
    return (layer_part<I, std::tuple_element_t<I, Parts>>::value && ...);
  }(std::make_index_sequence<N>{}) &&
         []<std::size_t... I>(std::index_sequence<I...>) {
           return (layer_pair<I, std::tuple_element_t<I, Parts>, std::tuple_element_t<I + 1, Parts>>::value && ...);
         }(std::make_index_sequence<N - 1>{});
}

/// check_layers as a plain bool without diagnostics: whether the first N
/// parts of Parts are layers, each output_type the next one's input_type.
template <class Parts, std::size_t N>
constexpr bool layers_ok() {
  constexpr bool all_layers = []<std::size_t... I>(std::index_sequence<I...>) {
    return (Layer<std::tuple_element_t<I, Parts>> && ...);
  }(std::make_index_sequence<N>{});
  if constexpr (N == 0 || !all_layers) {
    return false;
  } else {
    return []<std::size_t... I>(std::index_sequence<I...>) {
      return (std::is_same_v<typename std::tuple_element_t<I, Parts>::output_type,
                             typename std::tuple_element_t<I + 1, Parts>::input_type> &&
              ...);
    }(std::make_index_sequence<N - 1>{});
  }
}

/// Every check of a chain; true once the diagnostics (if any) are out.
template <class... Parts>
constexpr bool check_chain() {
  if constexpr (sizeof...(Parts) < 2) {
    static_assert(dependent_false<Parts...>,
                  "parallax: a chain (Sequential, ModelParallel) needs at least one layer followed by a loss; see docs/layer.md");
  } else {
    using parts = std::tuple<Parts...>;
    constexpr std::size_t layers = sizeof...(Parts) - 1;
    [[maybe_unused]] constexpr bool ok =
        check_layers<parts, layers>() &&
        loss_part<layers, std::tuple_element_t<layers - 1, parts>, std::tuple_element_t<layers, parts>>::value;
  }
  return true;
}

/// The same checks as check_chain, as a plain bool without diagnostics:
/// Sequential and ModelParallel compile their bodies only for a well-formed chain, so a user
/// sees the one diagnostic and not a cascade from forward and backward.
template <class... Parts>
constexpr bool chain_ok() {
  if constexpr (sizeof...(Parts) < 2) {
    return false;
  } else {
    using parts = std::tuple<Parts...>;
    constexpr std::size_t layers = sizeof...(Parts) - 1;
    using loss = std::tuple_element_t<layers, parts>;
    if constexpr (!layers_ok<parts, layers>() || !Loss<loss>) {
      return false;
    } else {
      return std::is_same_v<typename std::tuple_element_t<layers - 1, parts>::output_type, typename loss::input_type>;
    }
  }
}

/// "layer 2 Linear(8 -> 3)": a layer of a chain as every message names it,
/// by its index and, when it has describe(), its description.
template <class L>
std::string layer_name(const L& layer, std::size_t index) {
  // Appended piece by piece: GCC 12 warns falsely (-Wrestrict) on
  // "literal" + std::string&& here.
  std::string name = "layer ";
  name += std::to_string(index);
  if constexpr (requires { layer.describe(); }) {
    name += ' ';
    name += layer.describe();
  }
  return name;
}

}  // namespace parallax::detail
