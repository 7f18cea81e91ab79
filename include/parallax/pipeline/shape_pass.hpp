#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The shape pass before a pipeline run: stage 0 checks the batch and sends
/// its output shape to stage 1, which checks it against its layers, and so
/// on, so that a layer that cannot take its input is named (with the layer
/// that produced it) before any tensor moves. A failure travels on as a flag
/// so that no stage waits; agree_shape_pass then agrees the verdict.

#include <parallax/core/agree.hpp>
#include <parallax/core/error.hpp>
#include <parallax/detail/chain.hpp>
#include <parallax/detail/random.hpp>
#include <parallax/detail/xtensor.hpp>
#include <parallax/pipeline/links.hpp>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>
#include <boost/mpi/operations.hpp>
#include <boost/serialization/string.hpp>
#include <boost/serialization/vector.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <optional>
#include <string>
#include <vector>

namespace parallax::pipeline {

/// What a stage tells the next one in the shape pass (small metadata:
/// Boost.Serialization).
struct shape_message {
  std::vector<std::size_t> shape;  ///< full-batch shape of the next stage's input (when not failed)
  std::string from;                ///< the layer that produced it, for messages: "layer 3 Tanh on stage 1"
  bool failed = false;             ///< an earlier stage failed; it reports the failure itself

  template <class Archive>
  void serialize(Archive& archive, unsigned /*version*/) {
    archive & shape & from & failed;
  }
};

/// This stage's side of the shape pass.
struct shape_result {
  std::vector<std::size_t> in;   ///< full-batch shape of the stage input
  std::vector<std::size_t> out;  ///< and of its output
  std::optional<error> failure;  ///< this stage's failure
};

/// Point-to-point along the pipeline (every stage calls it; stage s waits
/// for stage s - 1). `layers` is this stage's; stage 0 reads the batch's
/// inputs (with `training`, at least `micro_batches` rows), the last stage
/// its targets (needed with `training`, else optional).
template <class Stage, class Batch>
shape_result shape_pass(const mpi::communicator& pipe, int stage, int stages, Stage& layers, const Batch& batch,
                        bool training, std::size_t micro_batches);

/// Collective over `comm` (every rank of the pipeline): agrees the shape
/// pass's verdict and that every rank passed the same batch, in one
/// all-reduce; throws the same error on every rank otherwise. Stage 0 reads
/// the inputs and the last stage the targets, so different batches would
/// train on mismatched pairs without a word.
template <class Batch>
void agree_shape_pass(const mpi::communicator& comm, const shape_result& shapes, const Batch& batch);

namespace detail {

/// A layer's output shape for an input shape: output_shape() when the layer
/// has it, else the shape of a forward pass on one zero sample.
template <class L>
std::vector<std::size_t> layer_output_shape(L& layer, const std::vector<std::size_t>& in) {
  if constexpr (requires { layer.output_shape(in); }) {
    auto s = layer.output_shape(in);
    return std::vector<std::size_t>(s.begin(), s.end());
  } else {
    typename L::input_type x;
    auto shape = x.shape();
    PARALLAX_CHECK(in.size() == shape.size(), "layer expects rank " + std::to_string(shape.size()) +
                                                  " input, got " + parallax::detail::shape_string(in));
    std::copy(in.begin(), in.end(), shape.begin());
    const std::size_t batch = shape.empty() ? 1 : shape[0];
    if (!shape.empty()) shape[0] = 1;
    x.resize(shape);
    x.fill(0);
    typename L::output_type y;
    layer.forward(x, y);
    std::vector<std::size_t> out(y.shape().begin(), y.shape().end());
    if (!out.empty()) out[0] = batch;
    return out;
  }
}

}  // namespace detail

// ---------------------------------------------------------------------------

template <class Stage, class Batch>
shape_result shape_pass(const mpi::communicator& pipe, int stage, int stages, Stage& layers, const Batch& batch,
                        bool training, std::size_t micro_batches) {
  auto failure_of = [](std::string cause, error_kind kind = error_kind::invalid_argument) {
    return std::optional<error>(error(kind, std::move(cause), parallax::detail::this_rank()));
  };
  shape_result r;
  bool upstream_failed = false;
  std::string from;  // the layer that produced the input, for messages
  if (stage == 0) {
    const auto& x = batch.inputs;
    r.in.assign(x.shape().begin(), x.shape().end());
    if (x.dimension() == 0 || r.in[0] == 0) r.failure = failure_of("ModelParallel: the batch is empty");
    else if (training && r.in[0] < micro_batches)
      r.failure = failure_of("ModelParallel: a batch of " + std::to_string(r.in[0]) + " samples cannot be cut into " +
                            std::to_string(micro_batches) + " micro-batches");
  } else {
    shape_message message;
    pipe.recv(stage - 1, shape_tag, message);
    r.in = std::move(message.shape);
    from = std::move(message.from);
    upstream_failed = message.failed;
  }
  r.out = r.in;
  if (!upstream_failed && !r.failure) {
    layers.for_each_layer([&](std::size_t i, auto& layer) {
      if (r.failure) return;
      try {
        auto next = detail::layer_output_shape(layer, r.out);
        from = parallax::detail::layer_name(layer, i) + " on stage " + std::to_string(stage);
        r.out = std::move(next);
      } catch (const std::exception& e) {
        // The layer's own check keeps its kind; anything else the layer
        // threw is the user's exception.
        const std::string where =
            i == layers.begin() && stage > 0 ? "stage " + std::to_string(stage) + " begins with " : "";
        r.failure = failure_of("ModelParallel: " + where + parallax::detail::layer_name(layer, i) +
                                   ", which cannot take " +
                                   (from.empty() ? std::string("the batch's inputs") : "the output of " + from) +
                                   " of shape " + parallax::detail::shape_string(r.out) + ": " +
                                   parallax::detail::cause_of(e),
                               parallax::detail::kind_of(e));
      }
    });
  }
  const bool failed = upstream_failed || r.failure.has_value();
  if (stage + 1 < stages) {
    pipe.send(stage + 1, shape_tag, shape_message{failed ? std::vector<std::size_t>{} : r.out, from, failed});
  } else if (!failed && (training || batch.targets.size() > 0)) {
    const auto rows = batch.targets.dimension() == 0 ? 0 : batch.targets.shape()[0];
    if (rows != r.out[0])
      r.failure = failure_of("ModelParallel: the batch has " + std::to_string(r.out[0]) + " inputs but " +
                            std::to_string(rows) + " targets");
  }
  return r;
}

template <class Batch>
void agree_shape_pass(const mpi::communicator& comm, const shape_result& shapes, const Batch& batch) {
  using input_value = typename decltype(batch.inputs)::value_type;
  using target_value = typename decltype(batch.targets)::value_type;
  const std::uint64_t h = parallax::detail::content_hash(
      batch.targets.data(), batch.targets.size() * sizeof(target_value),
      parallax::detail::content_hash(batch.inputs.data(), batch.inputs.size() * sizeof(input_value)));
  std::array<std::uint64_t, 3> mine{h, ~h, shapes.failure ? 1u : 0u}, most{};
  mpi::all_reduce(comm, mine.data(), 3, most.data(), mpi::maximum<std::uint64_t>());
  if (most[2] != 0) agree(comm, shapes.failure);
  if (most[0] != h || most[1] != ~h)
    throw error(error_kind::rank_mismatch,
                "ModelParallel: the ranks passed different batches: every rank must pass the same batch (stage 0 "
                "reads its inputs, the last stage its targets)");
}

}  // namespace parallax::pipeline
