#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The concepts user types meet, each built from small named pieces so that a
/// compiler's "because ... was not satisfied" points at the missing piece:
/// element types that travel raw over MPI, tensors and tensor lists, the
/// Model a DataParallel trains, the Dataset it samples, and the Layer and Loss
/// that Sequential and ModelParallel chain. Check your own type in one line:
/// @code
///   static_assert(parallax::Model<MyNet>);
/// @endcode
/// docs/model.md and docs/layer.md explain each piece with examples.

#include <parallax/detail/tensor_list.hpp>
#include <parallax/detail/xtensor.hpp>

#include <boost/mpi/datatype.hpp>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <span>
#include <type_traits>

namespace parallax {

// ---------------------------------------------------------------------------
// Elements and tensors
// ---------------------------------------------------------------------------

/// An arithmetic element type that MPI carries natively (float, double, the
/// integer types): buffers of it travel raw, never serialized.
/// Accepted: float, double, int, std::uint64_t. Rejected: bool, std::string.
template <class T>
concept MpiArithmetic = std::is_arithmetic_v<T> && !std::is_same_v<T, bool> &&
                        boost::mpi::is_mpi_datatype<T>::value;

/// One contiguous run of elements with data() and size():
/// xt::xarray, xt::xtensor, std::vector, std::array.
template <class C>
concept ContiguousBuffer = detail::contiguous_buffer<C>;

/// An xtensor container (xt::xarray<T> or xt::xtensor<T, N>) of an
/// MpiArithmetic element type: what parameters, gradients and activations are.
/// Rejected: views and lazy expressions (they are not contiguous storage).
template <class E>
concept Tensor = detail::xcontainer<E> && MpiArithmetic<typename E::value_type>;

/// A tensor, or a tuple/pair/range of tensor lists, or a reference_wrapper or
/// pointer to one, nested to any depth: `std::tie(w_, b_)`,
/// `std::vector<xt::xarray<float>>&`. See detail/tensor_list.hpp.
template <class L>
concept TensorList = detail::is_tensor_list<L>();

// ---------------------------------------------------------------------------
// Batches and datasets
// ---------------------------------------------------------------------------

/// How many samples a batch holds: `b.size()` when the batch has it, else
/// the leading extent of a tensor batch. Customise for your own batch type by
/// giving it a `size()` member.
template <class B>
  requires requires(const B& b) {
    { b.size() } -> std::convertible_to<std::size_t>;
  }
std::size_t batch_size(const B& b) {
  if constexpr (detail::xcontainer<B>) {
    return b.dimension() == 0 ? 1 : b.shape()[0];
  } else {
    return static_cast<std::size_t>(b.size());
  }
}

/// A batch parallax can count: it has `size()` (the number of samples).
template <class B>
concept HasBatchSize = requires(const B& b) { parallax::batch_size(b); };

/// A dataset a DataParallel samples: `size()` samples, and `batch(indices)`
/// builds the batch of those samples.
template <class D, class Batch>
concept Dataset = requires(const D& d, std::span<const std::size_t> indices) {
  { d.size() } -> std::convertible_to<std::size_t>;
  { d.batch(indices) } -> std::convertible_to<Batch>;
};

// ---------------------------------------------------------------------------
// Model: what DataParallel<Model> trains (docs/model.md)
// ---------------------------------------------------------------------------

/// Piece 1: the model names what one training step consumes.
template <class M>
concept HasBatchType = requires { typename M::batch_type; };

/// Piece 2: `parameters()` returns the trainable tensors as a tensor list.
template <class M>
concept HasParameters = requires(M& m) {
  { m.parameters() } -> TensorList;
};

/// Piece 3: `gradients()` returns tensors laid out like parameters().
template <class M>
concept HasGradients = requires(M& m) {
  { m.gradients() } -> TensorList;
};

/// Piece 4: `loss_and_gradient(batch)` returns the mean loss over the batch
/// and sets gradients() to the gradient of that mean (overwriting them).
template <class M>
concept HasLoss = HasBatchType<M> && requires(M& m, const typename M::batch_type& b) {
  { m.loss_and_gradient(b) } -> std::convertible_to<double>;
};

/// Piece 5: the batch type can say how many samples it holds (`size()`).
template <class M>
concept HasCountableBatch = HasBatchType<M> && HasBatchSize<typename M::batch_type>;

/// Piece 6: parameters are floating point, all of one type (float or double).
template <class M>
concept HasFloatingParameters =
    HasParameters<M> &&
    std::floating_point<detail::list_value_t<decltype(std::declval<M&>().parameters())>> &&
    detail::all_elements_are<decltype(std::declval<M&>().parameters()),
                             detail::list_value_t<decltype(std::declval<M&>().parameters())>>() &&
    detail::all_elements_are<decltype(std::declval<M&>().gradients()),
                             detail::list_value_t<decltype(std::declval<M&>().parameters())>>();

/// A user model: a plain type with these pieces, no base class, no
/// registration.
/// @code
///   struct LogisticRegression {
///     using batch_type = Samples;            // Samples has size()
///     xt::xtensor<double, 1> w, dw;
///     auto parameters() { return std::tie(w); }
///     auto gradients() { return std::tie(dw); }
///     double loss_and_gradient(const Samples& batch);  // mean loss; sets dw
///   };
///   static_assert(parallax::Model<LogisticRegression>);
/// @endcode
template <class M>
concept Model = HasBatchType<M> && HasParameters<M> && HasGradients<M> && HasLoss<M> &&
                HasCountableBatch<M> && HasFloatingParameters<M>;

/// The element type of a model's parameters.
template <HasParameters M>
using model_value_t = detail::list_value_t<decltype(std::declval<M&>().parameters())>;

/// Optional: `loss(batch)`, the mean loss without gradients (evaluate uses it
/// when present, and loss_and_gradient otherwise).
template <class M>
concept HasEvalLoss = HasBatchType<M> && requires(M& m, const typename M::batch_type& b) {
  { m.loss(b) } -> std::convertible_to<double>;
};

/// Optional: `correct(batch)`, how many samples the model classifies right
/// (evaluate's accuracy).
template <class M>
concept HasAccuracy = HasBatchType<M> && requires(M& m, const typename M::batch_type& b) {
  { m.correct(b) } -> std::convertible_to<std::size_t>;
};

namespace detail {
template <class...>
inline constexpr bool dependent_false = false;

/// Stands in for a type the user's model lacks, so that an entry point's
/// class body instantiates far enough for check_model() to speak first.
struct missing_piece {
  std::size_t size() const { return 0; }
};
/// `Member<T>` when T names it, else `Fallback`: how an entry point reads a
/// type the user's type may lack without a cascade of errors after the one
/// check_model() or a chain check gives.
template <class Fallback, template <class> class Member, class T>
struct member_type_or {
  using type = Fallback;
};
template <class Fallback, template <class> class Member, class T>
  requires requires { typename Member<T>; }
struct member_type_or<Fallback, Member, T> {
  using type = Member<T>;
};
template <class M>
using batch_type_t = typename M::batch_type;
template <class M>
using batch_type_of = member_type_or<missing_piece, batch_type_t, M>;
template <class M>
struct value_type_of {
  using type = double;
};
template <HasParameters M>
  requires std::floating_point<model_value_t<M>>
struct value_type_of<M> {
  using type = model_value_t<M>;
};
template <class M>
  requires(!HasParameters<M>) && requires { typename M::value_type; } && std::floating_point<typename M::value_type>
struct value_type_of<M> {
  using type = typename M::value_type;
};
}  // namespace detail

/// Compile-time diagnosis for entry points: names the first missing piece of
/// the Model concept, in the user's words, and where to read more.
template <class M>
constexpr bool check_model() {
  if constexpr (!HasBatchType<M>) {
    static_assert(detail::dependent_false<M>,
                  "parallax: your model needs `using batch_type = ...;` naming what one training step "
                  "consumes; see docs/model.md#batch_type");
  } else if constexpr (!HasParameters<M>) {
    static_assert(detail::dependent_false<M>,
                  "parallax: your model needs `parameters()` returning its trainable xtensor containers "
                  "(e.g. `return std::tie(w_, b_);`); see docs/model.md#parameters");
  } else if constexpr (!HasGradients<M>) {
    static_assert(detail::dependent_false<M>,
                  "parallax: your model needs `gradients()` returning xtensor containers laid out like "
                  "parameters(); see docs/model.md#gradients");
  } else if constexpr (!HasLoss<M>) {
    static_assert(detail::dependent_false<M>,
                  "parallax: your model needs `double loss_and_gradient(const batch_type&)` returning the "
                  "mean loss and setting gradients(); see docs/model.md#loss_and_gradient");
  } else if constexpr (!HasCountableBatch<M>) {
    static_assert(detail::dependent_false<M>,
                  "parallax: your model's batch_type needs `size()` (how many samples it holds); see "
                  "docs/model.md#batch_size");
  } else if constexpr (!HasFloatingParameters<M>) {
    static_assert(detail::dependent_false<M>,
                  "parallax: your model's parameters and gradients must all be float or all be double; see "
                  "docs/model.md#parameters");
  }
  return true;
}

// ---------------------------------------------------------------------------
// Layer and Loss: what Sequential and ModelParallel chain (docs/layer.md)
// ---------------------------------------------------------------------------

/// Piece 1: the layer names its input and output tensor types, batch first
/// (e.g. xt::xtensor<float, 2> for [batch, features]). Neighbours in a chain
/// must match: layer i's output_type is layer i + 1's input_type.
template <class L>
concept HasLayerTypes = requires {
  typename L::input_type;
  typename L::output_type;
} && Tensor<typename L::input_type> && Tensor<typename L::output_type>;

/// Piece 2: `forward(x, y)` writes the output for input x into y (resizing y
/// when its shape is not already right, so buffers are reused).
template <class L>
concept HasForward = HasLayerTypes<L> &&
                     requires(L& l, const typename L::input_type& x, typename L::output_type& y) {
                       l.forward(x, y);
                     };

/// Piece 3: `backward(x, y, dy, dx)` writes dL/dx into dx and adds this
/// batch's parameter gradients into gradients() (accumulates; the caller
/// zeroes). x and y are what forward saw and produced: a layer keeps no
/// activations between the calls, so several micro-batches can be in flight.
template <class L>
concept HasBackward = HasLayerTypes<L> &&
                      requires(L& l, const typename L::input_type& x, const typename L::output_type& y,
                               const typename L::output_type& dy, typename L::input_type& dx) {
                        l.backward(x, y, dy, dx);
                      };

/// Piece 4: `initialize(seed, index)` sets the parameters from the seed and
/// the layer's index in the whole chain only, so any partition of a chain
/// starts from the same weights.
template <class L>
concept HasInitialize = requires(L& l, std::uint64_t seed, std::size_t index) { l.initialize(seed, index); };

/// A layer. Parameters are optional: a layer with weights also has
/// parameters() and gradients() (tensor lists); stateless layers have none.
template <class L>
concept Layer = HasLayerTypes<L> && HasForward<L> && HasBackward<L> && HasInitialize<L>;

/// Optional for a Layer: trainable tensors.
template <class L>
concept HasLayerParameters = HasParameters<L> && HasGradients<L>;

/// Optional for a Layer (and a Model): `buffers()`, tensors that are state
/// but not trained (BatchNorm's running statistics). Checkpoints save and
/// load them with the parameters; the optimizer never sees them. Sequential,
/// Residual and the trainers reach them through buffers() like parameters().
template <class L>
concept HasLayerBuffers = requires(L& l) {
  { l.buffers() } -> TensorList;
};

/// Optional for a Layer (and a Model): `static constexpr bool
/// combines_ranks = true` declares that its training forward and backward
/// are collectives over a communicator it was given (SyncBatchNorm), so
/// every rank of it must call them the same number of times. LayerChain,
/// Sequential and Residual combine ranks when one of their layers does.
/// DataParallel refuses reproducible_atom for such a model: its atoms are
/// forwards that the ranks run different numbers of.
template <class L>
concept CombinesRanks = requires { requires L::combines_ranks; };

/// Optional for a Layer: `backward_parameters(x, y, dy)`, backward without
/// dx. A chain calls it for its first layer, whose input gradient nobody
/// reads (for Linear, one GEMM less per step).
template <class L>
concept HasParameterBackward = HasLayerTypes<L> &&
                               requires(L& l, const typename L::input_type& x, const typename L::output_type& y,
                                        const typename L::output_type& dy) { l.backward_parameters(x, y, dy); };

/// Optional for a Layer, with backward_parameters: `backward_input(x, y, dy,
/// dx)`, backward that writes dx and leaves the parameter gradients alone.
/// backward(x, y, dy, dx) is then backward_input followed by
/// backward_parameters, and the zero-bubble pipeline schedule runs the two
/// halves at different times (Linear has it).
template <class L>
concept HasSplitBackward = HasParameterBackward<L> &&
                           requires(L& l, const typename L::input_type& x, const typename L::output_type& y,
                                    const typename L::output_type& dy, typename L::input_type& dx) {
                             l.backward_input(x, y, dy, dx);
                           };

/// Optional for a Layer: `static constexpr bool backward_reads_output =
/// false` declares that backward(x, y, dy, dx) never reads y. A Residual
/// that recomputes its body for backward then skips the forward of the
/// body's last layer, whose output nothing else reads (Linear, LayerNorm and
/// the attention layers declare it: one forward less per step).
template <class L>
concept BackwardIgnoresOutput = requires { requires !L::backward_reads_output; };

/// The end of a chain: turns the last layer's output and the batch's targets
/// into a mean loss and its gradient.
///   input_type  the last layer's output_type
///   target_type what the batch carries as labels or targets
///   loss(y, t, dy) -> mean loss, writes d(mean loss)/dy into dy
///   value(y, t)    -> mean loss, no gradient
template <class L>
concept Loss = requires {
  typename L::input_type;
  typename L::target_type;
} && requires(L& l, const typename L::input_type& y, const typename L::target_type& t, typename L::input_type& dy) {
  { l.loss(y, t, dy) } -> std::convertible_to<double>;
  { l.value(y, t) } -> std::convertible_to<double>;
};

/// Optional for a Loss: `correct(y, t)`, the number of samples classified
/// right (accuracy).
template <class L>
concept HasCorrectCount = Loss<L> && requires(L& l, const typename L::input_type& y, const typename L::target_type& t) {
  { l.correct(y, t) } -> std::convertible_to<std::size_t>;
};

}  // namespace parallax
