#pragma once
// SPDX-License-Identifier: BSL-1.0
/// ModelParallel<Layers..., Loss>: the chain of layers is cut into contiguous
/// stages, one per rank; each rank builds only its own layers, micro-batches
/// stream forward and their gradients backward between neighbouring ranks
/// (GPipe or 1F1B), and each stage's optimizer updates only the parameters
/// it owns. The result equals training the unsplit chain on one rank
/// (docs/design.md invariant 2). Its pieces are in pipeline/: the options,
/// the partition, the stage's layers, the shape pass, the runner of one
/// stage's operations, the executor that orders them and the engine that
/// runs a batch through every stage together. This class is the trainer:
/// the partition and settings agreed at construction, a step's one
/// reduction and its update; the update path, the epoch loop and evaluation
/// are the training core's (training/).

#include <parallax/core/blas.hpp>
#include <parallax/core/comm.hpp>
#include <parallax/core/concepts.hpp>
#include <parallax/core/operation.hpp>
#include <parallax/core/error.hpp>
#include <parallax/data/batch.hpp>
#include <parallax/detail/chain.hpp>
#include <parallax/evaluation.hpp>
#include <parallax/io/checkpointable.hpp>
#include <parallax/optim/clip.hpp>
#include <parallax/optim/optimizer.hpp>
#include <parallax/pipeline/engine.hpp>
#include <parallax/pipeline/options.hpp>
#include <parallax/pipeline/partition.hpp>
#include <parallax/pipeline/profile.hpp>
#include <parallax/pipeline/schedule.hpp>
#include <parallax/pipeline/stage.hpp>
#include <parallax/training/buffer_snapshot.hpp>
#include <parallax/training/evaluate.hpp>
#include <parallax/training/loop.hpp>
#include <parallax/training/sampler.hpp>
#include <parallax/training/update.hpp>

#include <boost/mpi/communicator.hpp>

#include <array>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <source_location>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace parallax {

/// Pipeline-parallel training of a chain of layers ending in a loss.
/// @code
///   using namespace parallax::nn;
///   parallax::ModelParallel<Linear<float>, ReLU<float>, Linear<float>, SoftmaxCrossEntropy<float>> net(
///       std::tuple{std::tuple{784, 256}, std::tuple{}, std::tuple{256, 10}, std::tuple{}},
///       parallax::optim::SGD<float>({.lr = 0.1}), {.micro_batches = 8, .seed = 1});
///   double loss = net.train_step(batch);   // the same on every rank
/// @endcode
/// Each part is built from its tuple of constructor arguments, on the rank
/// of its stage only (the loss on the last stage). Every rank passes the same
/// batch to train_step(); stage 0 reads its inputs, the last stage its targets.
template <class... Parts>
class ModelParallel {
  static_assert(detail::check_chain<Parts...>());

 public:
  static constexpr std::size_t layer_count = sizeof...(Parts) - 1;
  template <std::size_t I>
  using part_t = std::tuple_element_t<I, std::tuple<Parts...>>;
  using loss_type = part_t<layer_count>;
  using input_type = typename part_t<0>::input_type;
  using output_type = typename part_t<layer_count - 1>::output_type;
  using target_type = typename loss_type::target_type;
  using batch_type = data::Batch<input_type, target_type>;
  using value_type = typename output_type::value_type;
  using target_value = typename target_type::value_type;

  /// Collective. `part_args` holds one tuple of constructor arguments per
  /// part (layers, then the loss; the loss's may be left out when it is
  /// default-constructible). Chooses the partition (agreed on every rank),
  /// builds and initialises this rank's layers only.
  template <class... Args>
  ModelParallel(const std::tuple<Args...>& part_args, const optim::Optimizer<value_type>& optimizer,
                pipeline_options options = {}, mpi::communicator comm = mpi::communicator(), std::source_location site = std::source_location::current());

  /// Collective. One training step on a batch, through the schedule; returns
  /// the mean loss over the batch, the same on every rank.
  double train_step(const batch_type& batch, std::source_location site = std::source_location::current());
  /// Collective, in place of train_step() on a rank that cannot take part
  /// (its batch failed to load): every rank throws `cause` (training::Trainer).
  double fail_step(error cause, std::source_location site = std::source_location::current()) {
    operation op(comm_, "ModelParallel::train_step()", static_cast<std::int64_t>(optimizer_->steps()), site);
    engine_.prepare(batch_type{}, true, std::move(cause));  // throws on every rank
    return 0;
  }

  /// Collective. A sampler of global batches for train_epoch: every rank
  /// reads each whole batch (stage 0 its inputs, the last stage its
  /// targets), so the plan has one shard; checks that every rank asked for
  /// the same plan.
  data::DistributedSampler make_sampler(std::size_t dataset_size, std::size_t global_batch,
                                        data::sampler_options options = {}, std::source_location site = std::source_location::current()) const {
    return training::make_sampler(comm_, dataset_size, global_batch, std::move(options), 1, 0,
                                  "ModelParallel::make_sampler()", site);
  }

  /// Collective. The rest of the sampler's epoch through the pipeline, with
  /// the hooks of the options (training::run_epoch, as DataParallel's).
  template <class D>
    requires Dataset<D, batch_type>
  epoch_report train_epoch(const D& dataset, data::DistributedSampler& sampler, std::source_location site = std::source_location::current()) {
    operation op(comm_, "ModelParallel::train_epoch()", static_cast<std::int64_t>(optimizer_->steps()), site);
    return training::run_epoch(*this, dataset, sampler, {options_.on_step, options_.after_step, options_.stop_when});
  }

  /// For the training loop (training::Trainer): every rank loads the whole
  /// global batch of a step.
  std::span<const std::size_t> step_indices(const data::DistributedSampler& sampler, std::size_t step) const {
    return sampler.global_indices(step);
  }
  void check_sampler(const data::DistributedSampler& sampler) const {
    training::check_sampler(sampler, 1, 0, "ModelParallel::train_epoch()");
  }
  bool step_losses_are_global() const { return true; }
  /// Nothing accumulates between steps.
  void flush() {}
  std::uint64_t skipped_steps() const { return updater_.skipped(); }
  /// Sets the hook called after every step of train_epoch on every rank
  /// (pipeline_options::after_step), e.g. once a Checkpointer exists.
  void set_after_step(std::function<void(const step_report&)> hook) { options_.after_step = std::move(hook); }

  /// Collective. The chain's output for x (any number of rows; every rank
  /// passes the same x), on every rank, in eval mode as evaluate() (Dropout
  /// the identity, BatchNorm with its running statistics).
  output_type predict(const input_type& x, std::source_location site = std::source_location::current()) {
    operation op(comm_, "ModelParallel::predict()", static_cast<std::int64_t>(optimizer_->steps()), site);
    training::eval_mode guard([&](bool training) { engine_.layers().set_training(training); });
    return engine_.predict(batch_type{x, target_type{}});
  }

  /// Collective. Mean loss and accuracy (when the loss has correct()) over a
  /// dataset, through the pipeline; the same on every rank.
  template <class D>
    requires Dataset<D, batch_type>
  evaluation evaluate(const D& dataset, std::size_t batch_size = 256, std::source_location site = std::source_location::current()) {
    operation op(comm_, "ModelParallel::evaluate()", static_cast<std::int64_t>(optimizer_->steps()), site);
    const std::size_t n = training::agreed_size(comm_, dataset, batch_size, "ModelParallel::evaluate()");
    training::eval_sums sums{static_cast<double>(n), 0, 0};
    std::optional<error> first;  // this rank's first failure in any batch's run
    {
      training::eval_mode guard([&](bool training) { engine_.layers().set_training(training); });
      batch_type batch{};
      training::for_each_batch(dataset, 0, n, batch_size, batch, [&](const batch_type& b, std::size_t, auto failed) {
        engine_.forward(b, std::move(failed));
        if (engine_.failure() && !first) first = engine_.failure();
        sums.loss += engine_.runner().head().loss_sum();
        sums.correct += engine_.runner().head().correct_sum();
      });
    }
    const auto total = sum_and_agree(comm_, std::array{sums.loss, sums.correct}, first);
    return training::make_evaluation({sums.samples, total[0], total[1]}, HasCorrectCount<loss_type>);
  }

  /// Collective. Boundaries that balance measured forward + backward time:
  /// rank 0 builds each layer in turn (one at a time), times it on
  /// `sample` pushed through the chain, and the contiguous partition that
  /// minimises the slowest stage (weighted by stage_speeds) is broadcast.
  template <class... Args>
  static pipeline::boundaries profile_boundaries(const std::tuple<Args...>& part_args, const input_type& sample,
                                                 std::vector<double> stage_speeds = {},
                                                 mpi::communicator comm = mpi::communicator(), int repeats = 3,
                                                 std::source_location site = std::source_location::current()) {
    operation op(comm, "ModelParallel::profile_boundaries()", -1, site);
    return pipeline::profile_boundaries<pipeline::stage<Parts...>>(part_args, sample, stage_speeds, comm, repeats);
  }

  int stage() const { return engine_.stage(); }
  int stages() const { return engine_.stages(); }
  /// This stage's layers: [first_layer(), end_layer()).
  std::size_t first_layer() const { return engine_.layers().begin(); }
  std::size_t end_layer() const { return engine_.layers().end(); }
  const pipeline::boundaries& boundaries() const { return boundaries_; }
  /// Layer I if this rank holds it, else nullptr.
  template <std::size_t I>
  part_t<I>* layer() { return engine_.layers().template part<I>(); }
  /// Calls f(index, layer) for each layer of this stage, in order.
  template <class F>
  void for_each_local_layer(F&& f) {
    engine_.layers().for_each_layer(std::forward<F>(f));
  }
  const pipeline_stats& stats() const { return stats_; }
  optim::Optimizer<value_type>& optimizer() { return *optimizer_; }
  const mpi::communicator& communicator() const { return comm_; }
  const pipeline_options& options() const { return options_; }

  /// For io::Checkpointer (io/checkpointable.hpp).
  static constexpr const char* checkpoint_kind = "ModelParallel";
  std::uint64_t checkpoint_layers() const { return layer_count; }
  std::pair<std::uint64_t, std::uint64_t> checkpoint_local_layers() const { return {first_layer(), end_layer()}; }
  bool writes_checkpoint() const { return true; }  // every stage writes what it owns
  bool checkpoint_replicated() const { return false; }
  template <class F>
  void for_each_keyed_tensor(F&& f) {
    for_each_local_layer([&](std::size_t index, auto& layer) { io::for_each_layer_tensor(index, layer, f); });
  }
  template <class F>
  void for_each_keyed_buffer(F&& f) {
    for_each_local_layer([&](std::size_t index, auto& layer) { io::for_each_layer_buffer(index, layer, f); });
  }

 private:
  using T = value_type;
  using stage_type = pipeline::stage<Parts...>;

  /// train_step() inside its operation and the buffers' snapshot.
  double run_step(const batch_type& batch, std::chrono::steady_clock::time_point start);

  void refresh_views() {
    params_.clear();
    grads_.clear();
    engine_.layers().parameter_spans(params_, grads_);
    grads_const_.assign(grads_.begin(), grads_.end());
  }

  pipeline_options options_;
  mpi::communicator comm_;
  pipeline::boundaries boundaries_;
  pipeline::engine<stage_type, batch_type> engine_;
  std::unique_ptr<optim::Optimizer<T>> optimizer_;
  training::updater<T> updater_;
  training::buffer_snapshot<T> buffers_before_;  // this rank's buffers as the step began
  std::vector<std::span<T>> params_;
  std::vector<std::span<const T>> grads_const_;
  std::vector<std::span<T>> grads_;
  pipeline::schedule train_schedule_;
  pipeline_stats stats_;
};

// ===========================================================================
// Implementation
// ===========================================================================

template <class... Parts>
template <class... Args>
ModelParallel<Parts...>::ModelParallel(const std::tuple<Args...>& part_args,
                                       const optim::Optimizer<value_type>& optimizer, pipeline_options options,
                                       mpi::communicator comm, std::source_location site)
    : options_(std::move(options)),
      comm_(std::move(comm)),
      optimizer_(optimizer.clone()),
      updater_({options_.on_nonfinite, options_.clip_norm, options_.lr_schedule}) {
  static_assert(sizeof...(Args) == sizeof...(Parts) || sizeof...(Args) == layer_count,
                "parallax: ModelParallel needs one tuple of constructor arguments per layer (and optionally one "
                "for the loss)");
  operation op(comm_, "ModelParallel::ModelParallel()", -1, site);
  warn_if_slow_blas(comm_);
  const auto stages = static_cast<std::size_t>(comm_.size());
  agree(comm_, [&] {
    PARALLAX_CHECK(options_.micro_batches >= 1, "ModelParallel: micro_batches must be at least 1");
    training::check(updater_.options(), *optimizer_, "ModelParallel");
    boundaries_ = pipeline::boundaries_for<stage_type>(part_args, options_.boundaries, stages, options_.stage_speeds);
  });
  // Every rank must use the same cut and settings (a difference would hang
  // or silently diverge).
  agree_settings(comm_, pipeline_settings(options_, boundaries_, *optimizer_), "ModelParallel");
  // Build and initialise this stage's layers only; the loss on the last stage.
  engine_ = pipeline::engine<stage_type, batch_type>(comm_, boundaries_, part_args, options_.seed,
                                                      options_.micro_batches, options_.recompute);
  refresh_views();
  for (auto p : params_) stats_.local_parameters += p.size();
  train_schedule_ = pipeline::make_schedule(options_.schedule, stages, options_.micro_batches);
}

template <class... Parts>
double ModelParallel<Parts...>::train_step(const batch_type& batch, std::source_location site) {
  operation op(comm_, "ModelParallel::train_step()", static_cast<std::int64_t>(optimizer_->steps()), site);
  const auto start = std::chrono::steady_clock::now();
  // A step skipped or failed leaves the buffers (BatchNorm's running
  // statistics, moved in backward) as it found them.
  auto visit_buffers = [this](auto&& f) { for_each_keyed_buffer([&](std::size_t, std::size_t, auto& t) { f(t); }); };
  buffers_before_.take(visit_buffers);
  return buffers_before_.finish(visit_buffers, [this] { return updater_.skipped(); }, [&] { return run_step(batch, start); });
}

template <class... Parts>
double ModelParallel<Parts...>::run_step(const batch_type& batch, std::chrono::steady_clock::time_point start) {
  engine_.prepare(batch, true);
  engine_.layers().zero_gradients();
  refresh_views();
  engine_.run(batch, train_schedule_, true);
  auto& runner = engine_.runner();
  stats_.peak_micro_batches = runner.peak_micro_batches();
  stats_.peak_saved_bytes = runner.peak_saved_bytes();
  // One collective: the loss (from the last stage), the squared gradient
  // norm, the stages with a non-finite gradient or loss (summed over
  // stages), and whether any stage failed.
  const double loss = runner.head().loss_sum();
  const bool local_nonfinite = training::first_nonfinite(grads_const_) < grads_const_.size() || !std::isfinite(loss);
  const double sq_norm = updater_.needs_norm() ? optim::squared_norm<T>(grads_const_) : 0.0;
  const auto total = sum_and_agree(comm_, std::array{loss, sq_norm, local_nonfinite ? 1.0 : 0.0}, engine_.failure());
  const char* who = "ModelParallel::train_step()";
  if (total[2] > 0 && options_.on_nonfinite == nonfinite_policy::error)
    engine_.locate_nonfinite(batch, train_schedule_, who, optimizer_->steps());
  updater_.apply(*optimizer_, params_, grads_, grads_const_, total[2] > 0, total[1], [&] {
    return training::nonfinite_message(who,
                                       "the gradient of " + std::to_string(static_cast<int>(total[2])) + " of " +
                                           std::to_string(engine_.stages()) + " stages",
                                       optimizer_->steps());
  });
  stats_.last_step_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return total[0] / static_cast<double>(runner.batch_rows());
}

}  // namespace parallax
