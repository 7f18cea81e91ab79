#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The checkpointable concept: what io::Checkpointer needs of a trainer
/// (DataParallel, ModelParallel, and trainers to come) — the name stored in
/// its files, which layer keys it has and which this rank writes and reads,
/// its parameter tensors keyed by (layer, index in the layer), its optimizer
/// and its communicator. The checkpointer includes no trainer: a trainer
/// provides these members.

#include <parallax/core/concepts.hpp>
#include <parallax/detail/mpi.hpp>
#include <parallax/detail/tensor_list.hpp>
#include <parallax/optim/optimizer.hpp>

#include <boost/mpi/communicator.hpp>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <utility>

namespace parallax::io {

namespace detail {
/// What for_each_keyed_tensor() is called with: f(layer, index_in_layer, tensor).
struct keyed_tensor_visitor {
  template <class Tensor>
  void operator()(std::uint64_t, std::uint64_t, Tensor&) const {}
};
}  // namespace detail

/// `static constexpr const char* checkpoint_kind`: the trainer's name in the
/// files ("DataParallel", "ModelParallel").
template <class T>
concept HasCheckpointKind = requires {
  { T::checkpoint_kind } -> std::convertible_to<const char*>;
};

/// The layer keys: how many the model has, the [begin, end) this rank writes
/// and reads, whether this rank writes a part, and whether every rank holds
/// the same parameters (then a load checks that they still agree).
template <class T>
concept HasCheckpointLayers = requires(const T& ct) {
  { ct.checkpoint_layers() } -> std::same_as<std::uint64_t>;
  { ct.checkpoint_local_layers() } -> std::same_as<std::pair<std::uint64_t, std::uint64_t>>;
  { ct.writes_checkpoint() } -> std::convertible_to<bool>;
  { ct.checkpoint_replicated() } -> std::convertible_to<bool>;
};

/// `for_each_keyed_tensor(f)`: f(layer, index_in_layer, tensor) for every
/// parameter tensor this rank holds, in the order of its optimizer's state.
template <class T>
concept HasKeyedTensors = requires(T& t, detail::keyed_tensor_visitor f) { t.for_each_keyed_tensor(f); };

/// The optimizer whose state is saved, and the ranks that save together.
template <class T>
concept HasCheckpointState = requires(T& t, const T& ct) {
  typename T::value_type;
  { t.optimizer() } -> std::convertible_to<optim::Optimizer<typename T::value_type>&>;
  { ct.communicator() } -> std::convertible_to<const mpi::communicator&>;
};

/// For a trainer's for_each_keyed_tensor(): f(layer_key, j, tensor) for the
/// j-th parameter tensor of `layer` (a layer or a whole model; nothing for
/// one without parameters).
template <class L, class F>
void for_each_layer_tensor(std::uint64_t layer_key, L& layer, F& f) {
  if constexpr (HasLayerParameters<L>) {
    std::uint64_t j = 0;
    parallax::detail::for_each_tensor(layer.parameters(), [&](auto& t) { f(layer_key, j++, t); });
  }
}

/// For a trainer's for_each_keyed_buffer(): f(layer_key, j, tensor) for the
/// j-th buffer of `layer` (HasLayerBuffers: BatchNorm's running statistics;
/// nothing for one without).
template <class L, class F>
void for_each_layer_buffer(std::uint64_t layer_key, L& layer, F& f) {
  if constexpr (HasLayerBuffers<L>) {
    std::uint64_t j = 0;
    parallax::detail::for_each_tensor(layer.buffers(), [&](auto& t) { f(layer_key, j++, t); });
  }
}

/// Optional: `for_each_keyed_buffer(f)`, f(layer, index_in_layer, tensor)
/// for every buffer this rank holds (state that is not trained): saved and
/// loaded with the parameters. A trainer without it has none.
template <class T>
concept HasKeyedBuffers = requires(T& t, detail::keyed_tensor_visitor f) { t.for_each_keyed_buffer(f); };

/// Calls trainer.for_each_keyed_buffer(f) when the trainer has it.
template <class Trainer, class F>
void for_each_trainer_buffer(Trainer& trainer, F&& f) {
  if constexpr (HasKeyedBuffers<Trainer>) trainer.for_each_keyed_buffer(f);
}

/// Optional: `pending_micro_steps()`, the micro-steps accumulated towards an
/// optimizer step not yet taken (DataParallel with accumulation_steps > 1).
/// Their gradients are not part of a checkpoint, so save() refuses while
/// there are any and maybe_save() waits for the optimizer step.
template <class T>
concept HasPendingMicroSteps = requires(const T& ct) {
  { ct.pending_micro_steps() } -> std::convertible_to<std::size_t>;
};

/// A trainer io::Checkpointer can save and load.
/// @code
///   static_assert(parallax::io::Checkpointable<parallax::DataParallel<MyNet>>);
/// @endcode
template <class T>
concept Checkpointable = HasCheckpointKind<T> && HasCheckpointLayers<T> && HasKeyedTensors<T> && HasCheckpointState<T>;

/// For Checkpointer's entry points: names the first missing piece
/// (docs/checkpoint.md, "Other trainers").
template <class T>
constexpr bool check_checkpointable() {
  if constexpr (!HasCheckpointKind<T>) {
    static_assert(parallax::detail::dependent_false<T>,
                  "parallax: a checkpointed trainer needs `static constexpr const char* checkpoint_kind`; "
                  "see docs/checkpoint.md");
  } else if constexpr (!HasCheckpointLayers<T>) {
    static_assert(parallax::detail::dependent_false<T>,
                  "parallax: a checkpointed trainer needs checkpoint_layers(), checkpoint_local_layers(), "
                  "writes_checkpoint() and checkpoint_replicated(); see docs/checkpoint.md");
  } else if constexpr (!HasKeyedTensors<T>) {
    static_assert(parallax::detail::dependent_false<T>,
                  "parallax: a checkpointed trainer needs `for_each_keyed_tensor(f)` calling f(layer, index, tensor); "
                  "see docs/checkpoint.md");
  } else if constexpr (!HasCheckpointState<T>) {
    static_assert(parallax::detail::dependent_false<T>,
                  "parallax: a checkpointed trainer needs `value_type`, `optimizer()` and `communicator()`; "
                  "see docs/checkpoint.md");
  }
  return Checkpointable<T>;
}

}  // namespace parallax::io
