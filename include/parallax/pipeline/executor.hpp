#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The one pipeline executor: runs a stage's list of schedule operations
/// (pipeline/schedule.hpp) in order, handing each to a worker that knows
/// what the operation does; any schedule, any worker.

#include <parallax/core/trace.hpp>
#include <parallax/pipeline/schedule.hpp>

#include <cstddef>
#include <span>

namespace parallax::pipeline {

/// What a stage does for each kind of op (a micro-batch index each), and
/// progress(mb), called before each op so that posted receives move along
/// while the stage computes.
template <class W>
concept worker = requires(W& w, std::size_t mb) {
  w.progress(mb);
  w.receive_activation(mb);
  w.forward(mb);
  w.send_activation(mb);
  w.receive_gradient(mb);
  w.backward(mb);
  w.send_gradient(mb);
  w.backward_input(mb);
  w.backward_weight(mb);
};

/// The name of an op kind on the trace's timeline.
constexpr const char* op_name(op_kind k) {
  switch (k) {
    case op_kind::recv_activation: return "receive activation";
    case op_kind::forward: return "forward";
    case op_kind::send_activation: return "send activation";
    case op_kind::recv_gradient: return "receive gradient";
    case op_kind::backward: return "backward";
    case op_kind::send_gradient: return "send gradient";
    case op_kind::backward_input: return "backward input";
    case op_kind::backward_weight: return "backward weight";
  }
  return "op";
}

/// Runs `ops` (one stage's list) on `w`, in order (each op a span of the
/// trace, core/trace.hpp).
template <worker W>
void execute(std::span<const op> ops, W& w);

// ---------------------------------------------------------------------------

template <worker W>
void execute(std::span<const op> ops, W& w) {
  for (const auto& o : ops) {
    w.progress(o.micro_batch);
    trace::span span(op_name(o.kind), "pipeline", static_cast<std::int64_t>(o.micro_batch));
    switch (o.kind) {
      case op_kind::recv_activation: w.receive_activation(o.micro_batch); break;
      case op_kind::forward: w.forward(o.micro_batch); break;
      case op_kind::send_activation: w.send_activation(o.micro_batch); break;
      case op_kind::recv_gradient: w.receive_gradient(o.micro_batch); break;
      case op_kind::backward: w.backward(o.micro_batch); break;
      case op_kind::send_gradient: w.send_gradient(o.micro_batch); break;
      case op_kind::backward_input: w.backward_input(o.micro_batch); break;
      case op_kind::backward_weight: w.backward_weight(o.micro_batch); break;
    }
  }
}

}  // namespace parallax::pipeline
