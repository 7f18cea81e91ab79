#pragma once
// SPDX-License-Identifier: BSL-1.0
/// A pipeline stage's point-to-point links to its neighbours: activations
/// come from the previous stage and go to the next, gradients the other
/// way. Every receive of a run is posted up front so that messages land
/// while the stage computes; the tag of a message says what it is and for
/// which micro-batch, nothing else.

#include <parallax/core/comm.hpp>
#include <parallax/core/error.hpp>
#include <parallax/detail/xtensor.hpp>
#include <parallax/pipeline/stage.hpp>

#include <boost/mpi/communicator.hpp>

#include <algorithm>
#include <cstddef>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace parallax::pipeline {

/// What a message between neighbouring stages carries.
enum class message_kind : int { activation = 0, gradient = 1 };

/// A message's tag: its kind in the low bit, its micro-batch above it. Fixed
/// by (kind, micro-batch) alone, so a tag never depends on the step's
/// micro-batch count. Activations and gradients reach a stage from different
/// neighbours; the kind bit keeps them apart on a link anyway.
constexpr int tag_of(message_kind kind, std::size_t mb) {
  return static_cast<int>(2 * mb) + static_cast<int>(kind);
}

/// The tag of the shape pass, clear of the micro-batch tags.
inline constexpr int shape_tag = 1 << 20;

/// Requests of a slot's sends in flight; its buffers stay untouched until
/// wait() returns.
struct outgoing {
  request activation;
  request gradient;
  void wait() {
    activation.wait();
    gradient.wait();
  }
};

/// The links of a stage holding layers [begin, end) of a chain, on a
/// private communicator (`pipe`) where only the pipeline's messages travel.
template <class Stage>
class links {
 public:
  using activations = typename Stage::activations;

  links() = default;
  links(mpi::communicator pipe, int stage, int stages, std::size_t begin, std::size_t end)
      : pipe_(std::move(pipe)), stage_(stage), stages_(stages), begin_(begin), end_(end) {}

  const mpi::communicator& communicator() const { return pipe_; }

  /// Posts the receives of a run of `micro_batches`: activations (but on the
  /// first stage), gradients when `gradients` (but on the last).
  void post(std::size_t micro_batches, bool gradients);
  /// Moves the receives of micro-batches [from, from + 2) along (posts their
  /// element receives once their headers are in) without waiting.
  void poll(std::size_t from);
  /// Waits for micro-batch mb's input and swaps it into a.in at begin. A
  /// shape other than `want` becomes zeros of `want`; returns why, or "".
  std::string take_activation(std::size_t mb, activations& a, const std::vector<std::size_t>& want);
  /// The same for the gradient of mb's output, into a.dy at end - 1.
  std::string take_gradient(std::size_t mb, activations& a, const std::vector<std::size_t>& want);
  /// Sends the stage output in a (the input gradient) of micro-batch mb to
  /// the next (previous) stage; a must stay untouched until the request completes.
  request send_activation(std::size_t mb, const activations& a) const;
  request send_gradient(std::size_t mb, const activations& a) const;

 private:
  /// Receives of one kind posted at the start of a run (one per
  /// micro-batch), and spare buffers they reuse.
  template <class E>
  struct receive_queue {
    std::vector<std::optional<tensor_receive<E>>> pending;
    std::vector<E> spare;
  };
  template <class S>
  struct queues;
  template <std::size_t... I>
  struct queues<std::index_sequence<I...>> {
    using activations = std::tuple<receive_queue<typename Stage::template in_t<I>>...>;
    using gradients = std::tuple<receive_queue<typename Stage::template out_t<I>>...>;
  };
  using all = queues<std::make_index_sequence<Stage::layer_count>>;

  template <class E>
  void post(receive_queue<E>& q, int source, message_kind kind);
  template <class E>
  std::string take(receive_queue<E>& q, std::size_t mb, E& into, const std::vector<std::size_t>& want,
                   const char* what) const;

  mpi::communicator pipe_;
  int stage_ = 0;
  int stages_ = 1;
  std::size_t begin_ = 0;
  std::size_t end_ = 0;
  std::size_t micro_batches_ = 0;               // of the run posted last
  typename all::activations activation_queues_;  // used at begin
  typename all::gradients gradient_queues_;      // used at end - 1
};

// ---------------------------------------------------------------------------

template <class Stage>
template <class E>
void links<Stage>::post(receive_queue<E>& q, int source, message_kind kind) {
  q.pending.resize(micro_batches_);
  for (std::size_t mb = 0; mb < micro_batches_; ++mb) {
    E buffer{};
    if (!q.spare.empty()) {
      buffer = std::move(q.spare.back());
      q.spare.pop_back();
    }
    q.pending[mb].emplace(pipe_, source, tag_of(kind, mb), std::move(buffer));
  }
}

template <class Stage>
void links<Stage>::post(std::size_t micro_batches, bool gradients) {
  micro_batches_ = micro_batches;
  if (stage_ > 0)
    for_range<Stage::layer_count>(begin_, begin_ + 1, [&](auto I) {
      post(std::get<I()>(activation_queues_), stage_ - 1, message_kind::activation);
    });
  if (gradients && stage_ + 1 < stages_)
    for_range<Stage::layer_count>(end_ - 1, end_, [&](auto I) {
      post(std::get<I()>(gradient_queues_), stage_ + 1, message_kind::gradient);
    });
}

template <class Stage>
void links<Stage>::poll(std::size_t from) {
  const std::size_t to = std::min(from + 2, micro_batches_);
  auto test = [&](auto& q) {
    for (std::size_t mb = from; mb < to && mb < q.pending.size(); ++mb)
      if (q.pending[mb]) q.pending[mb]->test();
  };
  for_range<Stage::layer_count>(begin_, begin_ + 1, [&](auto I) { test(std::get<I()>(activation_queues_)); });
  for_range<Stage::layer_count>(end_ - 1, end_, [&](auto I) { test(std::get<I()>(gradient_queues_)); });
}

template <class Stage>
template <class E>
std::string links<Stage>::take(receive_queue<E>& q, std::size_t mb, E& into, const std::vector<std::size_t>& want,
                               const char* what) const {
  // Swap the arrived tensor into place (no copy); the slot's old buffer
  // becomes a spare for the next run's receives.
  auto& incoming = q.pending[mb]->wait();
  std::swap(incoming, into);
  q.spare.push_back(std::move(incoming));
  q.pending[mb].reset();
  if (std::equal(into.shape().begin(), into.shape().end(), want.begin(), want.end())) return {};
  std::string why = "ModelParallel: stage " + std::to_string(stage_) + " received " + what + " of shape " +
                    parallax::detail::shape_string(into.shape()) + ", expected " +
                    parallax::detail::shape_string(want);
  detail::zero_fill(into, want);
  return why;
}

template <class Stage>
std::string links<Stage>::take_activation(std::size_t mb, activations& a, const std::vector<std::size_t>& want) {
  std::string why;
  for_range<Stage::layer_count>(begin_, begin_ + 1, [&](auto I) {
    why = take(std::get<I()>(activation_queues_), mb, std::get<I()>(a.in), want, "an activation");
  });
  return why;
}

template <class Stage>
std::string links<Stage>::take_gradient(std::size_t mb, activations& a, const std::vector<std::size_t>& want) {
  std::string why;
  for_range<Stage::layer_count>(end_ - 1, end_, [&](auto I) {
    why = take(std::get<I()>(gradient_queues_), mb, std::get<I()>(a.dy), want, "a gradient");
  });
  return why;
}

template <class Stage>
request links<Stage>::send_activation(std::size_t mb, const activations& a) const {
  request r;
  for_range<Stage::layer_count>(end_ - 1, end_, [&](auto I) {
    r = isend_tensor(pipe_, stage_ + 1, tag_of(message_kind::activation, mb), std::get<I()>(a.out));
  });
  return r;
}

template <class Stage>
request links<Stage>::send_gradient(std::size_t mb, const activations& a) const {
  request r;
  for_range<Stage::layer_count>(begin_, begin_ + 1, [&](auto I) {
    r = isend_tensor(pipe_, stage_ - 1, tag_of(message_kind::gradient, mb), std::get<I()>(a.dx));
  });
  return r;
}

}  // namespace parallax::pipeline
