#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Pipeline schedules as data: for each stage, the ordered list of forward,
/// backward, send and receive operations of one training step. GPipe (all
/// forwards, then all backwards), 1F1B (one forward, one backward in the
/// steady state), zero-bubble ZB-H1 (1F1B with each backward split into its
/// input-gradient part and its weight-gradient part, the weight parts moved
/// into the waits) and forward-only runs. One executor (executor.hpp) runs
/// any schedule; a simulator here checks a training schedule without MPI:
/// every send is received, no stage waits forever, and how many
/// micro-batches a stage holds at once.

#include <parallax/core/error.hpp>

#include <algorithm>
#include <cstddef>
#include <string>
#include <vector>

namespace parallax::pipeline {

enum class op_kind {
  recv_activation,  ///< receive micro-batch mb's input from the previous stage
  forward,          ///< forward of micro-batch mb through this stage (and the loss on the last)
  send_activation,  ///< send micro-batch mb's output to the next stage
  recv_gradient,    ///< receive the gradient of micro-batch mb's output from the next stage
  backward,         ///< backward of micro-batch mb through this stage: backward_input, then backward_weight
  send_gradient,    ///< send the gradient of micro-batch mb's input to the previous stage
  backward_input,   ///< the input-gradient part of the backward ("B"): what the previous stage waits for
  backward_weight,  ///< the parameter-gradient part ("W"), after backward_input of the same micro-batch
};

struct op {
  op_kind kind;
  std::size_t micro_batch;
  friend bool operator==(const op&, const op&) = default;
};

/// One list of operations per stage.
using schedule = std::vector<std::vector<op>>;

enum class schedule_kind { gpipe, one_f_one_b, zero_bubble };

/// The schedule's name as options and reports spell it: "gpipe", "1f1b",
/// "zero_bubble".
constexpr const char* schedule_name(schedule_kind kind);

/// GPipe: every stage runs the forwards of all m micro-batches, then their
/// backwards (in reverse order, so the last stage starts the backward with
/// the micro-batch it just finished). A stage holds all m at once.
schedule gpipe(std::size_t stages, std::size_t micro_batches);

/// 1F1B (PipeDream-Flush): stage s runs min(p - s - 1, m) warm-up forwards,
/// then alternates one forward and one backward, then drains the remaining
/// backwards. Stage s holds at most min(p - s, m) micro-batches at once.
schedule one_f_one_b(std::size_t stages, std::size_t micro_batches);

/// Zero bubble, ZB-H1 style (Qi et al. 2023): each backward is split into
/// backward_input (B), which the previous stage waits for, and
/// backward_weight (W), which nobody waits for and fills what would be idle
/// time. The order is the list schedule of a simulation with unit costs
/// (F = B = W) and messages that arrive one unit later: whenever a stage is
/// free it runs the next B whose gradient is there, else the next F whose
/// input is there (while it holds fewer than min(p - s + 1, m)
/// micro-batches: one more than 1F1B), else its oldest pending W. Each
/// stage runs the W's in micro-batch order, as 1F1B runs its backwards, so
/// the parameter gradients are summed in the same order. With unit costs,
/// p = 2 and m = 4 take 13 units where 1F1B takes 15 (ideal 12).
schedule zero_bubble(std::size_t stages, std::size_t micro_batches);

schedule make_schedule(schedule_kind kind, std::size_t stages, std::size_t micro_batches);

/// Forward only (predict, evaluate): each micro-batch straight through,
/// receive, forward, send. No backwards, so not for simulate().
schedule forward_only(std::size_t stages, std::size_t micro_batches);

/// What the simulation of a schedule found.
struct simulation {
  bool completes = false;  ///< every stage ran to its end, nothing left unreceived
  std::string problem;     ///< why not, when not
  std::vector<std::size_t> peak_in_flight;  ///< per stage: most micro-batches forwarded but not yet backwarded
  std::size_t rounds = 0;  ///< rounds of the simulation (each stage runs at most one op per round)
};

/// Runs the schedule with sends that never block and receives that block
/// until the neighbour has sent; checks the order of data dependencies
/// (forward after its input, backward after its forward and its incoming
/// gradient, sends after what they send was computed, backward_weight
/// after backward_input; a micro-batch either runs backward or both
/// halves). A micro-batch is in flight from its forward to the end of its
/// backward (its backward_weight).
simulation simulate(const schedule& s, std::size_t micro_batches);

// ---------------------------------------------------------------------------

namespace detail {
inline void check_shape(const char* who, std::size_t stages, std::size_t micro_batches) {
  PARALLAX_CHECK(stages > 0, std::string(who) + ": no stages");
  PARALLAX_CHECK(micro_batches > 0, std::string(who) + ": no micro-batches");
}

inline void add_forward(std::vector<op>& ops, std::size_t stage, std::size_t stages, std::size_t mb) {
  if (stage > 0) ops.push_back({op_kind::recv_activation, mb});
  ops.push_back({op_kind::forward, mb});
  if (stage + 1 < stages) ops.push_back({op_kind::send_activation, mb});
}

/// The backward of mb; `part`: backward (whole) or backward_input (B).
inline void add_backward(std::vector<op>& ops, std::size_t stage, std::size_t stages, std::size_t mb,
                         op_kind part = op_kind::backward) {
  if (stage + 1 < stages) ops.push_back({op_kind::recv_gradient, mb});
  ops.push_back({part, mb});
  if (stage > 0) ops.push_back({op_kind::send_gradient, mb});
}
}  // namespace detail

inline schedule gpipe(std::size_t stages, std::size_t micro_batches) {
  detail::check_shape("pipeline::gpipe()", stages, micro_batches);
  schedule s(stages);
  for (std::size_t st = 0; st < stages; ++st) {
    for (std::size_t mb = 0; mb < micro_batches; ++mb) detail::add_forward(s[st], st, stages, mb);
    for (std::size_t mb = micro_batches; mb-- > 0;) detail::add_backward(s[st], st, stages, mb);
  }
  return s;
}

inline schedule one_f_one_b(std::size_t stages, std::size_t micro_batches) {
  detail::check_shape("pipeline::one_f_one_b()", stages, micro_batches);
  schedule s(stages);
  for (std::size_t st = 0; st < stages; ++st) {
    const std::size_t warmup = std::min(stages - st - 1, micro_batches);
    std::size_t next_forward = 0;
    std::size_t next_backward = 0;
    for (; next_forward < warmup; ++next_forward) detail::add_forward(s[st], st, stages, next_forward);
    while (next_forward < micro_batches) {
      detail::add_forward(s[st], st, stages, next_forward++);
      detail::add_backward(s[st], st, stages, next_backward++);
    }
    while (next_backward < micro_batches) detail::add_backward(s[st], st, stages, next_backward++);
  }
  return s;
}

inline schedule zero_bubble(std::size_t stages, std::size_t micro_batches) {
  detail::check_shape("pipeline::zero_bubble()", stages, micro_batches);
  const std::size_t p = stages;
  const std::size_t m = micro_batches;
  constexpr std::size_t never = static_cast<std::size_t>(-1);
  // input_at[s][mb]: the unit of time from which stage s has mb's input
  // (activation); gradient_at[s][mb]: mb's output gradient.
  std::vector<std::vector<std::size_t>> input_at(p, std::vector<std::size_t>(m, never)),
      gradient_at(p, std::vector<std::size_t>(m, never));
  for (std::size_t mb = 0; mb < m; ++mb) input_at[0][mb] = 0;
  std::vector<std::size_t> forwards(p, 0), backwards(p, 0), weights(p, 0);
  schedule s(p);
  for (std::size_t now = 0;; ++now) {
    PARALLAX_CHECK(now <= 3 * m * p + 3 * p, "pipeline::zero_bubble(): the list schedule does not finish");
    bool done = true;
    for (std::size_t st = 0; st < p; ++st) {
      if (weights[st] == m) continue;
      done = false;
      const std::size_t limit = std::min(p - st + 1, m);
      const std::size_t b = backwards[st];
      const std::size_t f = forwards[st];
      if (b < f && (st + 1 == p || gradient_at[st][b] <= now)) {
        detail::add_backward(s[st], st, p, b, op_kind::backward_input);
        if (st > 0) gradient_at[st - 1][b] = now + 1;
        ++backwards[st];
      } else if (f < m && f - weights[st] < limit && input_at[st][f] <= now) {
        detail::add_forward(s[st], st, p, f);
        if (st + 1 < p) input_at[st + 1][f] = now + 1;
        ++forwards[st];
      } else if (weights[st] < b) {
        s[st].push_back({op_kind::backward_weight, weights[st]++});
      }
    }
    if (done) break;
  }
  return s;
}

constexpr const char* schedule_name(schedule_kind kind) {
  switch (kind) {
    case schedule_kind::gpipe: return "gpipe";
    case schedule_kind::one_f_one_b: return "1f1b";
    case schedule_kind::zero_bubble: return "zero_bubble";
  }
  return "unknown";
}

inline schedule make_schedule(schedule_kind kind, std::size_t stages, std::size_t micro_batches) {
  switch (kind) {
    case schedule_kind::gpipe: return gpipe(stages, micro_batches);
    case schedule_kind::one_f_one_b: return one_f_one_b(stages, micro_batches);
    case schedule_kind::zero_bubble: return zero_bubble(stages, micro_batches);
  }
  parallax::detail::throw_error("pipeline::make_schedule(): unknown schedule kind " +
                                std::to_string(static_cast<int>(kind)));
}

inline schedule forward_only(std::size_t stages, std::size_t micro_batches) {
  detail::check_shape("pipeline::forward_only()", stages, micro_batches);
  schedule s(stages);
  for (std::size_t st = 0; st < stages; ++st)
    for (std::size_t mb = 0; mb < micro_batches; ++mb) detail::add_forward(s[st], st, stages, mb);
  return s;
}

inline simulation simulate(const schedule& s, std::size_t m) {
  const std::size_t p = s.size();
  simulation result;
  result.peak_in_flight.assign(p, 0);
  // Messages in flight, per link and direction: sent but not yet received.
  // act[st][mb]: stage st sent mb's activation to st + 1; grad[st][mb]: stage st sent mb's gradient to st - 1.
  std::vector<std::vector<int>> act(p, std::vector<int>(m, 0)), grad(p, std::vector<int>(m, 0));
  std::vector<std::vector<bool>> have_input(p, std::vector<bool>(m, false)), forwarded(p, std::vector<bool>(m, false)),
      have_grad(p, std::vector<bool>(m, false)), backwarded(p, std::vector<bool>(m, false)),
      weighted(p, std::vector<bool>(m, false));
  std::vector<std::size_t> pc(p, 0), in_flight(p, 0);
  auto fail = [&](std::size_t st, const op& o, const std::string& why) {
    result.problem = "stage " + std::to_string(st) + ", op " + std::to_string(pc[st]) + " (micro-batch " +
                     std::to_string(o.micro_batch) + "): " + why;
    return result;
  };
  for (;;) {
    bool progressed = false;
    bool all_done = true;
    for (std::size_t st = 0; st < p; ++st) {
      if (pc[st] == s[st].size()) continue;
      all_done = false;
      const op o = s[st][pc[st]];
      const std::size_t mb = o.micro_batch;
      if (mb >= m) return fail(st, o, "micro-batch out of range");
      switch (o.kind) {
        case op_kind::recv_activation:
          if (st == 0) return fail(st, o, "the first stage has nobody to receive an activation from");
          if (act[st - 1][mb] == 0) continue;  // blocks
          --act[st - 1][mb];
          have_input[st][mb] = true;
          break;
        case op_kind::forward:
          if (st > 0 && !have_input[st][mb]) return fail(st, o, "forward before its input arrived");
          if (forwarded[st][mb]) return fail(st, o, "forward twice");
          forwarded[st][mb] = true;
          result.peak_in_flight[st] = std::max(result.peak_in_flight[st], ++in_flight[st]);
          break;
        case op_kind::send_activation:
          if (st + 1 == p) return fail(st, o, "the last stage has nobody to send an activation to");
          if (!forwarded[st][mb]) return fail(st, o, "sends an activation it has not computed");
          ++act[st][mb];
          break;
        case op_kind::recv_gradient:
          if (st + 1 == p) return fail(st, o, "the last stage has nobody to receive a gradient from");
          if (grad[st + 1][mb] == 0) continue;  // blocks
          --grad[st + 1][mb];
          have_grad[st][mb] = true;
          break;
        case op_kind::backward:
        case op_kind::backward_input:
          if (!forwarded[st][mb]) return fail(st, o, "backward before forward");
          if (st + 1 < p && !have_grad[st][mb]) return fail(st, o, "backward before its gradient arrived");
          if (backwarded[st][mb]) return fail(st, o, "backward twice");
          backwarded[st][mb] = true;
          if (o.kind == op_kind::backward) {
            weighted[st][mb] = true;
            --in_flight[st];
          }
          break;
        case op_kind::backward_weight:
          if (!backwarded[st][mb]) return fail(st, o, "backward_weight before backward_input");
          if (weighted[st][mb]) return fail(st, o, "backward_weight twice, or after a whole backward");
          weighted[st][mb] = true;
          --in_flight[st];
          break;
        case op_kind::send_gradient:
          if (st == 0) return fail(st, o, "the first stage has nobody to send a gradient to");
          if (!backwarded[st][mb]) return fail(st, o, "sends a gradient it has not computed");
          ++grad[st][mb];
          break;
      }
      ++pc[st];
      progressed = true;
    }
    if (all_done) break;
    ++result.rounds;
    if (!progressed) {
      result.problem = "deadlock: every unfinished stage waits for a message that is never sent";
      return result;
    }
  }
  for (std::size_t st = 0; st < p; ++st)
    for (std::size_t mb = 0; mb < m; ++mb) {
      if (!forwarded[st][mb] || !backwarded[st][mb] || !weighted[st][mb]) {
        result.problem = "stage " + std::to_string(st) + " never ran micro-batch " + std::to_string(mb);
        return result;
      }
      if (act[st][mb] != 0 || grad[st][mb] != 0) {
        result.problem = "a message of micro-batch " + std::to_string(mb) + " from stage " + std::to_string(st) +
                         " is never received";
        return result;
      }
    }
  result.completes = true;
  return result;
}

}  // namespace parallax::pipeline
