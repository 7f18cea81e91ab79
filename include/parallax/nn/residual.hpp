#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Residual<Layers...>: y = x + f(x), f the chain of Layers, as one layer —
/// so it nests in Sequential, in pipeline stages and in another Residual.

#include <parallax/core/concepts.hpp>
#include <parallax/core/error.hpp>
#include <parallax/detail/chain.hpp>
#include <parallax/detail/random.hpp>
#include <parallax/detail/tensor_list.hpp>
#include <parallax/detail/xtensor.hpp>
#include <parallax/nn/detail/last_input.hpp>
#include <parallax/nn/layer_chain.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace parallax::nn {

namespace detail {

/// Compile-time checks of a Residual's body: layers, each feeding the next,
/// the last one's output of the first one's input type (x + f(x) needs
/// both). The instantiation context of a failure names the layer.
template <class... Layers>
constexpr bool check_residual() {
  if constexpr (sizeof...(Layers) == 0) {
    static_assert(parallax::detail::dependent_false<Layers...>,
                  "parallax: Residual<Layers...> needs at least one layer; see docs/layer.md");
  } else {
    using parts = std::tuple<Layers...>;
    constexpr std::size_t n = sizeof...(Layers);
    [[maybe_unused]] constexpr bool layers = parallax::detail::check_layers<parts, n>();
    using first = std::tuple_element_t<0, parts>;
    using last = std::tuple_element_t<n - 1, parts>;
    if constexpr (HasLayerTypes<first> && HasLayerTypes<last>) {
      static_assert(std::is_same_v<typename first::input_type, typename last::output_type>,
                    "parallax: Residual<Layers...> computes x + f(x): the last layer's output_type must be the first "
                    "layer's input_type; see docs/layer.md");
    }
  }
  return true;
}

}  // namespace detail

/// y = x + f(x), f the layers in order (a LayerChain), as one layer. f's output
/// must have x's type and shape.
///
/// A layer keeps no activations between forward and backward (several
/// micro-batches may be in flight through it), so backward needs f's
/// activations for x: when the Residual's last call was a training-mode
/// forward on the same bits of x (a step's forward then backward), the
/// body's buffers still hold them and are used; otherwise (a pipeline's
/// micro-batches in flight) backward runs f's forward on x again, one more
/// forward of the body, with the same result. f's parameters are the Residual's, in
/// layer order; layer i of the body is initialised from (a key of the
/// Residual's seed and index, i), so nested bodies never share weights.
/// @code
///   using namespace parallax::nn;
///   Sequential net{Linear<float>(16, 32),
///                  Residual{LayerNorm<float>(32), Linear<float>(32, 32), GELU<float>{}},
///                  Linear<float>(32, 10), SoftmaxCrossEntropy<float>{}};
/// @endcode
template <class... Layers>
class Residual {
  static_assert(detail::check_residual<Layers...>());
  using chain_type = LayerChain<Layers...>;
  static constexpr bool ok_ = parallax::detail::layers_ok<std::tuple<Layers...>, sizeof...(Layers)>() &&
                              std::is_same_v<typename chain_type::input_type, typename chain_type::output_type>;

 public:
  using input_type = typename chain_type::input_type;
  using output_type = typename chain_type::output_type;
  /// backward(x, y, dy, dx) never reads y (BackwardIgnoresOutput).
  static constexpr bool backward_reads_output = false;
  /// Whether a layer of the body's forward and backward are collectives (CombinesRanks).
  static constexpr bool combines_ranks = chain_type::combines_ranks;
  using value_type = typename output_type::value_type;

  explicit Residual(Layers... layers) : body_(std::move(layers)...) {}

  /// Layer I of the body.
  template <std::size_t I>
  auto& layer() {
    return body_.template layer<I>();
  }
  template <std::size_t I>
  const auto& layer() const {
    return body_.template layer<I>();
  }

  /// Body layer i from (key(seed, index), i).
  void initialize(std::uint64_t seed, std::size_t index) { body_.initialize(parallax::detail::key(seed, index), 0); }

  /// y = x + f(x); y is resized only when its shape differs from x's.
  void forward(const input_type& x, output_type& y);
  /// dx = dy + (df/dx)^T dy, over the body's activations of the forward
  /// just before on the same x, else after f's forward on x again; adds the
  /// body's parameter gradients.
  void backward(const input_type& x, const output_type& y, const output_type& dy, input_type& dx);

  /// The body's parameters and gradients (only when some body layer has any).
  auto parameters()
    requires(HasLayerParameters<Layers> || ...)
  {
    return body_.parameters();
  }
  auto parameters() const
    requires(HasLayerParameters<Layers> || ...) && requires(const chain_type& c) { c.parameters(); }
  {
    return body_.parameters();
  }
  auto gradients()
    requires(HasLayerParameters<Layers> || ...)
  {
    return body_.gradients();
  }
  auto gradients() const
    requires(HasLayerParameters<Layers> || ...) && requires(const chain_type& c) { c.gradients(); }
  {
    return body_.gradients();
  }

  /// The body's buffers (only when some body layer has any: BatchNorm).
  auto buffers()
    requires(HasLayerBuffers<Layers> || ...)
  {
    return body_.buffers();
  }
  auto buffers() const
    requires(HasLayerBuffers<const Layers> || ...)
  {
    return body_.buffers();
  }

  /// Forwards the mode to the body; an eval-mode forward keeps no copy of x.
  void set_training(bool training) {
    training_ = training;
    body_.set_training(training);
  }
  void set_step(std::uint64_t step) { body_.set_step(step); }

  /// The trainable scalars of a Residual built from these layers: what
  /// ModelParallel's partition by parameter count asks of a layer.
  static std::size_t parameter_count(const Layers&... layers)
    requires(detail::has_const_parameters<Layers> && ...)
  {
    std::size_t n = 0;
    auto add = [&](const auto& layer) {
      if constexpr (HasLayerParameters<std::remove_cvref_t<decltype(layer)>>)
        parallax::detail::for_each_tensor(layer.parameters(), [&](const auto& t) { n += t.size(); });
    };
    (add(layers), ...);
    return n;
  }

  /// "Residual(LayerNorm(32), Linear(32 -> 32), GELU)".
  std::string describe() const { return "Residual(" + body_.describe() + ")"; }
  /// x's shape, once it is checked through the body, whose output must have it.
  std::vector<std::size_t> output_shape(const std::vector<std::size_t>& input_shape) const;

 private:
  chain_type body_;
  bool training_ = true;
  detail::last_input<input_type> last_input_;  // x of the forward whose activations the body holds
};

template <class... Layers>
Residual(Layers...) -> Residual<Layers...>;
/// One Residual argument nests it: `Residual{Residual{Linear<float>(4, 4)}}`
/// is x + (x + f(x)), not a copy (class template argument deduction would
/// otherwise take the copy constructor). Copy with `auto copy = r;`.
template <class... Inner>
Residual(Residual<Inner...>) -> Residual<Residual<Inner...>>;

// ---------------------------------------------------------------------------

template <class... Layers>
void Residual<Layers...>::forward(const input_type& x, output_type& y) {
  if constexpr (ok_) {
    last_input_.forget();
    const auto& f = body_.forward(x, "Residual");
    PARALLAX_CHECK(f.shape() == x.shape(), describe() + ": its body maps " + parallax::detail::shape_string(x.shape()) +
                                               " to " + parallax::detail::shape_string(f.shape()) +
                                               "; x + f(x) needs the same shape");
    if (y.shape() != x.shape()) y.resize(x.shape());
    const auto* a = x.data();
    const auto* b = f.data();
    auto* out = y.data();
    for (std::size_t i = 0; i < x.size(); ++i) out[i] = a[i] + b[i];
    if (training_) last_input_.remember(x);
  }
}

template <class... Layers>
void Residual<Layers...>::backward(const input_type& x, const output_type& /*y*/, const output_type& dy,
                                   input_type& dx) {
  if constexpr (ok_) {
    PARALLAX_CHECK(dy.shape() == x.shape(), "Residual::backward(): dy has shape " +
                                                parallax::detail::shape_string(dy.shape()) + ", expected " +
                                                parallax::detail::shape_string(x.shape()));
    if (!last_input_.take(x)) body_.forward_for_backward(x, "Residual");  // the body's activations, recomputed
    body_.backward(x, &dy, &dx);
    // The skip path: dL/dx gets dy itself as well.
    auto* out = dx.data();
    const auto* d = dy.data();
    for (std::size_t i = 0; i < dx.size(); ++i) out[i] += d[i];
  }
}

template <class... Layers>
std::vector<std::size_t> Residual<Layers...>::output_shape(const std::vector<std::size_t>& input_shape) const {
  const auto out = body_.output_shape(input_shape, "Residual");
  PARALLAX_CHECK(out == input_shape, describe() + ": its body maps " + parallax::detail::shape_string(input_shape) +
                                         " to " + parallax::detail::shape_string(out) +
                                         "; x + f(x) needs the same shape");
  return out;
}

}  // namespace parallax::nn
