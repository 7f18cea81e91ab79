#pragma once
// SPDX-License-Identifier: BSL-1.0
/// One stage's part of a pipeline run: what each schedule operation does
/// here, over the stage's layers (stage.hpp), its micro-batch slots
/// (slots.hpp), its links to the neighbours (links.hpp) and, on the last
/// stage, the loss (loss_head.hpp). The executor (executor.hpp) decides the
/// order; a failure is handed to the caller's note and the run goes on with
/// zeros, so that no neighbour waits forever.

#include <parallax/core/comm.hpp>
#include <parallax/core/error.hpp>
#include <parallax/data/batch.hpp>
#include <parallax/pipeline/executor.hpp>
#include <parallax/pipeline/links.hpp>
#include <parallax/pipeline/loss_head.hpp>
#include <parallax/pipeline/shape_pass.hpp>
#include <parallax/pipeline/slots.hpp>
#include <parallax/pipeline/stage.hpp>

#include <boost/mpi/communicator.hpp>

#include <cstddef>
#include <exception>
#include <functional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace parallax::pipeline {

/// Runs schedules on one stage of layers Stage with batches Batch.
template <class Stage, class Batch>
class runner {
 public:
  using loss_type = typename Stage::loss_type;
  /// Receives each failure of a run (the caller keeps the first).
  using note_type = std::function<void(error)>;

  runner() = default;
  /// `pipe`: a communicator for the pipeline's messages only.
  runner(mpi::communicator pipe, int stage, int stages, std::size_t begin, std::size_t end)
      : links_(std::move(pipe), stage, stages, begin, end), stage_(stage), stages_(stages) {}

  const mpi::communicator& communicator() const { return links_.communicator(); }

  /// A new run, after a shape pass that every stage passed: its shapes, and
  /// the batch cut into `micro_batches`.
  void start(const shape_result& shapes, std::size_t micro_batches);
  /// Runs this stage's `ops` over `layers` on `batch`; the last stage runs
  /// the loss. Returns once every send of the run has completed.
  void run(Stage& layers, std::span<const op> ops, const Batch& batch, bool training, bool recompute,
           const note_type& note);

  std::size_t batch_rows() const { return batch_rows_; }
  std::size_t micro_batches() const { return micro_; }
  /// The full-batch shape of this stage's output in the current run.
  const std::vector<std::size_t>& output_shape() const { return out_shape_; }
  loss_head<loss_type>& head() { return head_; }
  std::size_t peak_micro_batches() const { return slots_.peak_micro_batches(); }
  std::size_t peak_saved_bytes() const { return slots_.peak_saved_bytes(); }

  // The operations, called by execute() during run() (pipeline::worker).
  void progress(std::size_t mb) { links_.poll(mb); }
  void receive_activation(std::size_t mb);
  void forward(std::size_t mb);
  void send_activation(std::size_t mb);
  void receive_gradient(std::size_t mb);
  void backward(std::size_t mb);
  void send_gradient(std::size_t mb);
  void backward_input(std::size_t mb);
  void backward_weight(std::size_t mb);

 private:
  /// One micro-batch in flight on this stage: what its backward needs.
  struct slot {
    typename Stage::activations act;
    typename loss_type::target_type target{};  // last stage: the micro-batch's targets
    outgoing sends;
    std::size_t uses_left = 0;  // after its backward(_input): the gradient send and backward_weight still to come
    void wait_sends() { sends.wait(); }
  };

  block rows_of(std::size_t mb) const { return block_of(batch_rows_, static_cast<int>(micro_), static_cast<int>(mb)); }
  /// A full-batch shape cut to micro-batch mb's rows.
  std::vector<std::size_t> micro_shape(const std::vector<std::size_t>& full, std::size_t mb) const;
  /// Runs f; a failure goes to the note ("ModelParallel: <what> on stage s:
  /// ..."), then on_failure() leaves what the neighbours wait for.
  template <class F, class G>
  void attempt(const char* what, F&& f, G&& on_failure);
  /// One of the uses left of micro-batch mb's slot is done; the slot is
  /// free after the last.
  void used(std::size_t mb) {
    if (--slots_[mb].uses_left == 0) slots_.release(mb);
  }
  void note_if(const std::string& why) {
    if (!why.empty()) (*note_)(error(error_kind::invalid_argument, why, parallax::detail::this_rank()));
  }
  bool last() const { return stage_ + 1 == stages_; }

  links<Stage> links_;
  slot_pool<slot> slots_;
  loss_head<loss_type> head_;
  int stage_ = 0;
  int stages_ = 1;
  std::size_t batch_rows_ = 0;
  std::size_t micro_ = 1;
  std::vector<std::size_t> in_shape_;   // full-batch shape of this stage's input
  std::vector<std::size_t> out_shape_;  // and of its output
  // What run() was given, for the operations it calls.
  Stage* layers_ = nullptr;
  const Batch* batch_ = nullptr;
  const note_type* note_ = nullptr;
  bool training_ = false;
  bool recompute_ = false;
};

// ---------------------------------------------------------------------------

template <class Stage, class Batch>
void runner<Stage, Batch>::start(const shape_result& shapes, std::size_t micro_batches) {
  in_shape_ = shapes.in;
  out_shape_ = shapes.out;
  batch_rows_ = in_shape_[0];
  micro_ = micro_batches;
  slots_.reset(micro_);
  head_.start(batch_rows_);
}

template <class Stage, class Batch>
void runner<Stage, Batch>::run(Stage& layers, std::span<const op> ops, const Batch& batch, bool training,
                               bool recompute, const note_type& note) {
  layers_ = &layers;
  batch_ = &batch;
  note_ = &note;
  training_ = training;
  recompute_ = recompute;
  links_.post(micro_, training);
  execute(ops, *this);
  slots_.wait_all();
}

template <class Stage, class Batch>
std::vector<std::size_t> runner<Stage, Batch>::micro_shape(const std::vector<std::size_t>& full,
                                                           std::size_t mb) const {
  auto s = full;
  if (!s.empty()) s[0] = rows_of(mb).size();
  return s;
}

template <class Stage, class Batch>
template <class F, class G>
void runner<Stage, Batch>::attempt(const char* what, F&& f, G&& on_failure) {
  try {
    f();
  } catch (const std::exception& e) {
    const auto* known = dynamic_cast<const error*>(&e);
    (*note_)(error(known ? known->kind() : error_kind::user_exception,
                   std::string("ModelParallel: ") + what + " on stage " + std::to_string(stage_) + ": " +
                       parallax::detail::cause_of(e),
                   parallax::detail::this_rank()));
    on_failure();
  }
}

template <class Stage, class Batch>
void runner<Stage, Batch>::receive_activation(std::size_t mb) {
  auto& s = slots_.acquire(mb);
  note_if(links_.take_activation(mb, s.act, micro_shape(in_shape_, mb)));
}

template <class Stage, class Batch>
void runner<Stage, Batch>::forward(std::size_t mb) {
  const block rows = rows_of(mb);
  if (stage_ == 0) data::slice_rows(batch_->inputs, rows.begin, rows.size(), std::get<0>(slots_.acquire(mb).act.in));
  auto& s = slots_[mb];
  attempt("forward", [&] { layers_->forward(s.act, recompute_); },
          [&] { layers_->zero_output(s.act, micro_shape(out_shape_, mb)); });
  if (last()) {
    constexpr std::size_t end = Stage::layer_count;
    const auto& y = std::get<end - 1>(s.act.out);
    auto& dy = std::get<end - 1>(s.act.dy);
    auto* gradient = training_ ? &dy : nullptr;
    attempt("loss", [&] { head_.micro_batch(*layers_->loss(), *batch_, rows.begin, rows.size(), y, s.target, gradient); },
            [&] { detail::zero_fill(dy, y.shape()); });
  }
  if (training_) slots_.hold(layers_->saved_bytes(s.act));
  else if (last()) slots_.release(mb);  // forward-only: the output is in the loss head
}

template <class Stage, class Batch>
void runner<Stage, Batch>::send_activation(std::size_t mb) {
  auto& s = slots_[mb];
  s.sends.activation = links_.send_activation(mb, s.act);
  if (!training_) slots_.release(mb);  // forward-only: reused once the send is done
}

template <class Stage, class Batch>
void runner<Stage, Batch>::receive_gradient(std::size_t mb) {
  note_if(links_.take_gradient(mb, slots_[mb].act, micro_shape(out_shape_, mb)));
}

template <class Stage, class Batch>
void runner<Stage, Batch>::backward(std::size_t mb) {
  auto& s = slots_[mb];
  slots_.drop(layers_->saved_bytes(s.act));
  attempt("backward", [&] { layers_->backward(s.act, recompute_); },
          [&] { layers_->zero_input_gradient(s.act, micro_shape(in_shape_, mb)); });
  s.uses_left = stage_ > 0 ? 1 : 0;
  if (s.uses_left == 0) slots_.release(mb);
}

template <class Stage, class Batch>
void runner<Stage, Batch>::send_gradient(std::size_t mb) {
  auto& s = slots_[mb];
  s.sends.gradient = links_.send_gradient(mb, s.act);
  used(mb);
}

template <class Stage, class Batch>
void runner<Stage, Batch>::backward_input(std::size_t mb) {
  auto& s = slots_[mb];
  const std::size_t before = layers_->saved_bytes(s.act);
  attempt("backward", [&] { layers_->backward_input(s.act, recompute_); },
          [&] { layers_->zero_input_gradient(s.act, micro_shape(in_shape_, mb)); });
  slots_.resize_held(before, layers_->saved_bytes(s.act));  // now with the gradients backward_weight reads
  s.uses_left = (stage_ > 0 ? 1 : 0) + 1;
}

template <class Stage, class Batch>
void runner<Stage, Batch>::backward_weight(std::size_t mb) {
  auto& s = slots_[mb];
  slots_.drop(layers_->saved_bytes(s.act));
  attempt("backward", [&] { layers_->backward_weight(s.act); }, [] {});
  s.act.weights_pending = false;  // after a failure too: the slot is reused clean
  used(mb);
}

}  // namespace parallax::pipeline
