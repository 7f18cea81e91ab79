#pragma once
// SPDX-License-Identifier: BSL-1.0
/// DataParallel<Model>: every rank holds a replica of the model, computes
/// gradients on its own shard of each global batch, and the gradients are
/// summed over ranks and divided by the global sample count, so every rank
/// applies the same optimizer step — the parameters of one process training
/// on the whole global batch (docs/design.md invariant 2). Also: gradient
/// accumulation, local SGD (periodic parameter averaging), sharded evaluation.
/// The step's reduction is a gradient_reducer; the update, the epoch loop and
/// evaluation are the training core's (training/).

#include <parallax/core/blas.hpp>
#include <parallax/core/block.hpp>
#include <parallax/core/comm.hpp>
#include <parallax/core/concepts.hpp>
#include <parallax/core/error.hpp>
#include <parallax/core/operation.hpp>
#include <parallax/core/reducer.hpp>
#include <parallax/core/trace.hpp>
#include <parallax/data/batch.hpp>
#include <parallax/data/sampler.hpp>
#include <parallax/detail/random.hpp>
#include <parallax/detail/tensor_list.hpp>
#include <parallax/evaluation.hpp>
#include <parallax/io/checkpointable.hpp>
#include <parallax/optim/optimizer.hpp>
#include <parallax/optim/schedule.hpp>
#include <parallax/training/buffer_snapshot.hpp>
#include <parallax/training/evaluate.hpp>
#include <parallax/training/exact_sum.hpp>
#include <parallax/training/local_sgd.hpp>
#include <parallax/training/loop.hpp>
#include <parallax/training/replicas.hpp>
#include <parallax/training/sampler.hpp>
#include <parallax/training/update.hpp>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <chrono>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <source_location>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace parallax {

/// Where the time of the last optimizer step went (seconds, this rank).
struct step_timing {
  double compute = 0;      ///< loss_and_gradient and packing, over the step's micro-steps
  double communicate = 0;  ///< the all-reduces
  double update = 0;       ///< averaging, clipping and the optimizer
};

struct data_parallel_options {
  /// Byte cap of one gradient bucket: gradients travel in buckets of this
  /// size, each reduced by one all-reduce.
  std::size_t bucket_bytes = std::size_t{16} << 20;
  /// Micro-steps per optimizer step; gradients of the micro-steps are summed
  /// locally and communicated once, on the last one: equal to one step with a
  /// k times larger batch.
  std::size_t accumulation_steps = 1;
  /// 0: synchronous data parallel (gradients all-reduced every optimizer
  /// step). k >= 1: local SGD — each rank steps its own optimizer on its own
  /// gradient, and every k optimizer steps the parameters are averaged
  /// (weighted by the samples each rank saw). k = 1 with SGD equals
  /// synchronous SGD.
  std::size_t average_every = 0;
  /// 0: off. k >= 1: reproducible mode (docs/reproducible.md). Each global
  /// batch is cut into atoms of k consecutive samples (the last may be
  /// shorter), each atom's gradient is computed on its own, and the atoms'
  /// gradients and losses are summed exactly, so the parameters, the
  /// optimizer state, every returned loss and evaluate()'s results are
  /// bitwise the same at any number of ranks (same program, data, seed,
  /// global batch and options). Needs samplers from make_sampler() (whole
  /// atoms per rank, at least one each); every micro-step communicates;
  /// not with local SGD. Results differ in the last bits from the default
  /// mode's.
  std::size_t reproducible_atom = 0;
  nonfinite_policy on_nonfinite = nonfinite_policy::error;
  /// Clip the averaged gradient to this global L2 norm (0: no clipping).
  double clip_norm = 0;
  /// Learning rate per optimizer step; empty: the optimizer's own.
  optim::lr_schedule lr_schedule{};
  /// Called after every step on rank 0 only; other ranks stay silent.
  std::function<void(const step_report&)> on_step{};
  /// Called after every step of train_epoch on every rank (collective work
  /// such as periodic checkpoints goes here); the sampler's position is
  /// already past the step.
  std::function<void(const step_report&)> after_step{};
  /// Called after every step of train_epoch on every rank; true from any
  /// rank stops the epoch after this step on every rank (training::hooks).
  std::function<bool(const step_report&)> stop_when{};
};

/// DataParallel's settings that every rank must share, for agree_settings:
/// accumulation, local SGD, buckets, then the update path's
/// (training::update_settings, with `optimizer`).
template <std::floating_point T>
std::vector<setting> data_parallel_settings(const data_parallel_options& o, const optim::Optimizer<T>& optimizer) {
  std::vector<setting> out = {{"accumulation_steps", static_cast<double>(o.accumulation_steps)},
                              {"average_every", static_cast<double>(o.average_every)},
                              {"bucket_bytes", static_cast<double>(o.bucket_bytes)},
                              {"reproducible_atom", static_cast<double>(o.reproducible_atom)}};
  const auto update = training::update_settings({o.on_nonfinite, o.clip_norm, o.lr_schedule}, optimizer);
  out.insert(out.end(), update.begin(), update.end());
  return out;
}

/// Data-parallel training of a Model over a communicator.
/// @code
///   parallax::DataParallel trainer(MyModel{}, parallax::optim::SGD<double>({.lr = 0.1}));
///   auto sampler = trainer.make_sampler(train.size(), 256, {.seed = 1});
///   for (int e = 0; e < 10; ++e) trainer.train_epoch(train, sampler);
///   auto result = trainer.evaluate(test);   // same on every rank
/// @endcode
template <class M>
class DataParallel {
  static_assert(check_model<M>());

 public:
  using model_type = M;
  using value_type = typename detail::value_type_of<M>::type;
  using batch_type = typename detail::batch_type_of<M>::type;

  /// Collective. Checks that every rank has the same number, shapes and
  /// element type of parameters (a mismatch is the same error on every rank,
  /// naming the first differing parameter and the ranks), then broadcasts the
  /// parameters from rank 0. The optimizer is copied.
  DataParallel(M model, const optim::Optimizer<value_type>& optimizer, data_parallel_options options = {},
               mpi::communicator comm = mpi::communicator(), std::source_location site = std::source_location::current());
  /// Only for a model that is not a Model: check_model() has already named
  /// the missing piece; this keeps a second, confusing error away.
  template <class O>
    requires(!Model<M>)
  DataParallel(M, const O&, data_parallel_options = {}, mpi::communicator = mpi::communicator()) {}

  /// Collective. One micro-step on this rank's batch. Returns the global mean
  /// loss of the samples of the optimizer step this micro-step completes; on
  /// a micro-step that does not complete one (accumulation) and in local SGD,
  /// this rank's mean loss; in reproducible mode, the global mean loss of
  /// this micro-step's samples. A failure on any rank (an exception in the model,
  /// an empty batch) becomes the same error on every rank, at the latest on
  /// the communicating micro-step.
  double train_step(const batch_type& batch, std::source_location site = std::source_location::current()) {
    return micro_step(&batch, std::nullopt, site);
  }

  /// Collective. A micro-step in which this rank does not train: `cause`
  /// (e.g. its batch failed to load) becomes the same error on every rank
  /// when the step communicates (training::Trainer).
  double fail_step(error cause, std::source_location site = std::source_location::current()) {
    return micro_step(nullptr, std::move(cause), site);
  }

  /// Collective. A sampler for a dataset of `dataset_size` samples with the
  /// given global batch; checks that every rank asked for the same plan.
  data::DistributedSampler make_sampler(std::size_t dataset_size, std::size_t global_batch,
                                        data::sampler_options options = {}, std::source_location site = std::source_location::current()) const;

  /// Collective. The rest of the sampler's epoch (from sampler.position(),
  /// so a resumed run continues mid-epoch) over `dataset` (anything with
  /// size() and batch(indices); batch_into(indices, batch&) is used when
  /// present to reuse buffers), then moves the sampler to the next epoch
  /// (training::run_epoch, with the hooks of the options). Leftover
  /// accumulated micro-steps are applied at the end.
  template <class D>
    requires Dataset<D, typename M::batch_type>
  epoch_report train_epoch(const D& dataset, data::DistributedSampler& sampler, std::source_location site = std::source_location::current());

  /// Collective. Applies what is accumulated (fewer than accumulation_steps
  /// micro-steps) as an optimizer step; no-op when nothing is pending.
  void flush(std::source_location site = std::source_location::current());

  /// Collective (local SGD): averages the parameters over ranks now,
  /// weighted by the samples each rank trained on since the last average.
  void average_parameters(std::source_location site = std::source_location::current());

  /// Collective. Every rank evaluates its own contiguous block of the dataset
  /// (no sample counted twice or dropped, whatever the rank count); loss,
  /// accuracy (when the model has correct()) and the given metrics are
  /// reduced to global means, identical on every rank.
  template <class D>
    requires Dataset<D, typename M::batch_type>
  evaluation evaluate(const D& dataset, std::size_t batch_size = 256, const std::vector<metric<M>>& metrics = {},
                      std::source_location site = std::source_location::current());

  /// The rows [begin, end) of a dataset of n samples that this rank
  /// evaluates in evaluate(dataset, batch_size): block_of(n, size, rank),
  /// or in reproducible mode whole runs of batch_size samples (the chunks
  /// block_of(chunks, size, rank)). A ShardDataset holding these rows fits
  /// evaluate().
  block evaluation_rows(std::size_t n, std::size_t batch_size) const;

  /// Sets the hook called after every step of train_epoch on every rank
  /// (see data_parallel_options::after_step), e.g. once a Checkpointer that
  /// needs this trainer exists.
  void set_after_step(std::function<void(const step_report&)> hook) { options_.after_step = std::move(hook); }

  M& model() { return model_; }
  const M& model() const { return model_; }
  optim::Optimizer<value_type>& optimizer() { return *optimizer_; }
  const mpi::communicator& communicator() const { return comm_; }
  const data_parallel_options& options() const { return options_; }
  std::uint64_t optimizer_steps() const { return optimizer_->steps(); }
  std::uint64_t skipped_steps() const { return updater_.skipped(); }

  /// For the training loop (training::Trainer): this rank's samples of a step.
  std::span<const std::size_t> step_indices(const data::DistributedSampler& sampler, std::size_t step) const {
    return sampler.local_indices(step);
  }
  /// Collective: the sampler must be this rank's shard of a plan for comm's
  /// size, in reproducible mode one of whole atoms.
  void check_sampler(const data::DistributedSampler& sampler) const {
    training::check_sampler(sampler, comm_.size(), comm_.rank(), "DataParallel::train_epoch()");
    check_atoms(sampler.options().atom, "DataParallel::train_epoch()", "make it with DataParallel::make_sampler()");
  }
  /// Accumulation and local SGD return this rank's loss on some steps
  /// (reproducible mode communicates every micro-step: never).
  bool step_losses_are_global() const {
    return options_.average_every == 0 && (options_.accumulation_steps == 1 || options_.reproducible_atom > 0);
  }
  /// Where the time of the last completed optimizer step went.
  const step_timing& last_timing() const { return last_timing_; }

  /// For io::Checkpointer (io/checkpointable.hpp).
  static constexpr const char* checkpoint_kind = "DataParallel";
  std::uint64_t checkpoint_layers() const {
    if constexpr (requires { M::layer_count; }) return M::layer_count;
    else return 1;
  }
  std::pair<std::uint64_t, std::uint64_t> checkpoint_local_layers() const { return {0, checkpoint_layers()}; }
  bool writes_checkpoint() const { return comm_.rank() == 0; }  // one writer: the replicas are equal
  bool checkpoint_replicated() const { return true; }
  /// Micro-steps accumulated towards the next optimizer step (the same on
  /// every rank); a checkpoint is saved only when there are none.
  std::size_t pending_micro_steps() const { return micro_; }
  template <class F>
  void for_each_keyed_tensor(F&& f) {
    for_each_keyed<false>(f);
  }
  /// The buffers (BatchNorm's running statistics), keyed alike: rank 0's,
  /// as every rank evaluates with them.
  template <class F>
  void for_each_keyed_buffer(F&& f) {
    for_each_keyed<true>(f);
  }

 private:
  using T = value_type;
  /// What is reduced before the gradients (in double, one all-reduce):
  /// knowing the sample count first lets the gradient all-reduce turn sums
  /// into means on the way.
  struct step_meta {
    double loss_sum = 0;  ///< sum over this rank's samples of the loss
    double samples = 0;
  };

  void refresh_views();
  /// Collective: rank 0's buffers (HasLayerBuffers) on every rank; nothing
  /// for a model without buffers. Under plain BatchNorm each rank's running
  /// statistics follow its own shard (as PyTorch DDP's before it broadcasts
  /// rank 0's); SyncBatchNorm's are equal already.
  void share_buffers();
  /// f(layer, index, tensor) for the parameters (Buffers: the buffers),
  /// keyed by layer for a chain (Sequential), so pipelines can read it.
  template <bool Buffers, class F>
  void for_each_keyed(F& f) {
    auto visit = [&](std::uint64_t key, auto& part) {
      if constexpr (Buffers) io::for_each_layer_buffer(key, part, f);
      else io::for_each_layer_tensor(key, part, f);
    };
    if constexpr (requires { M::layer_count; model_.template layer<0>(); }) {
      [&]<std::size_t... I>(std::index_sequence<I...>) {
        (visit(I, model_.template layer<I>()), ...);
      }(std::make_index_sequence<M::layer_count>{});
    } else {
      visit(0, model_);
    }
  }
  double synchronize_gradients();
  /// Reproducible mode: this rank's batch atom by atom into exact_; returns
  /// this rank's mean loss.
  double compute_atoms(const batch_type& batch, std::size_t n);
  /// Reproducible mode, collective: this micro-step's exact sums over the
  /// ranks (`samples`: this rank's part); returns its global mean loss.
  double synchronize_exact(double samples);
  /// Reproducible mode: the optimizer step from the exact sums so far.
  void apply_exact();
  /// Throws when a sampler's atom is not reproducible_atom (reproducible
  /// mode); `hint` says how to get the right one.
  void check_atoms(std::size_t atom, const std::string& who, const char* hint) const;
  /// The update from the mean gradient in reducer_'s views (both modes);
  /// `loss_sum`: this rank's, for naming the ranks of a non-finite loss.
  void apply_update(bool nonfinite_gradient, bool nonfinite, double loss_sum);
  /// Collective, before any member is built from them: the options' checks,
  /// agreed, so that an option bad on one rank is one error on every rank.
  static data_parallel_options checked_options(const mpi::communicator& comm, data_parallel_options o,
                                              const optim::Optimizer<T>& optimizer, std::source_location site);
  /// train_step() on `batch`, or fail_step() without one.
  double micro_step(const batch_type* batch, std::optional<error> cause, std::source_location site);
  /// f(tensor) on each of the model's buffers (none without HasLayerBuffers).
  auto visit_buffers();
  /// step(), the end of an optimizer step; a step skipped or failed there
  /// leaves the buffers as the step found them.
  template <class Step>
  double finish_step(Step&& step);
  double local_step();
  void reset_accumulation();
  /// The non-finite step's message: the (averaged) gradient of `parameter`,
  /// or the loss when there is none.
  std::string nonfinite_message(std::optional<std::size_t> parameter, const char* averaged) const;

  mpi::communicator comm_;
  M model_;
  std::unique_ptr<optim::Optimizer<T>> optimizer_;
  data_parallel_options options_;

  std::vector<std::span<T>> params_;
  std::vector<std::span<T>> grads_;
  std::vector<std::size_t> sizes_;  // elements per parameter tensor (fixed at construction)
  step_meta meta_;                  // this rank's part of the pending step
  gradient_reducer<T> reducer_;     // its buckets hold the averaged gradient
  training::updater<T> updater_;
  training::buffer_snapshot<T> buffers_before_;  // the buffers as the optimizer step began
  training::local_sgd local_sgd_;
  training::exact_sum<T> exact_;  // reproducible mode's sums
  struct exact_step {
    double samples = 0;       ///< global samples of the optimizer step so far
    bool loss_finite = true;  ///< every micro-step's global loss was finite
    bool held = false;        ///< exact_ holds the step's total over micro-steps
  } exact_step_;
  batch_type atom_{};  // one atom of the batch, when it holds several

  std::size_t micro_ = 0;               // micro-steps accumulated towards the next optimizer step
  std::optional<error> failure_;        // first failure of this rank since the last communication
  step_timing timing_;       // the step in progress
  step_timing last_timing_;  // the last completed step
};

// Any optimizer deduces DataParallel<M>: a model that misses a piece then
// gets check_model()'s message, not a deduction failure.
template <class M, class O>
DataParallel(M, const O&, data_parallel_options = {}, mpi::communicator = mpi::communicator()) -> DataParallel<M>;

}  // namespace parallax

// ===========================================================================
// Implementation
// ===========================================================================

namespace parallax {

template <class M>
DataParallel<M>::DataParallel(M model, const optim::Optimizer<value_type>& optimizer, data_parallel_options options,
                              mpi::communicator comm, std::source_location site)
    : comm_(std::move(comm)),
      model_(std::move(model)),
      optimizer_(optimizer.clone()),
      options_(checked_options(comm_, std::move(options), optimizer, site)),
      reducer_(comm_, options_.bucket_bytes),
      updater_({options_.on_nonfinite, options_.clip_norm, options_.lr_schedule}),
      local_sgd_(options_.average_every),
      exact_(comm_, options_.bucket_bytes) {
  warn_if_slow_blas(comm_);
  // Settings that differ between ranks would hang or silently diverge.
  agree_settings(comm_, data_parallel_settings(options_, *optimizer_), "DataParallel");
  // Everything that can differ between ranks is agreed before any rank throws.
  agree(comm_, [&] {
    refresh_views();
    sizes_.clear();
    for (const auto& p : params_) sizes_.push_back(p.size());
    PARALLAX_CHECK(!params_.empty(), "DataParallel: the model has no parameters");
  });
  training::check_replicas(comm_, detail::tensor_spans<T>(model_.parameters()), "DataParallel");
  // Rank 0's parameters everywhere, in buckets.
  Bucketer<T> broadcast_buckets(options_.bucket_bytes);
  broadcast_buckets.plan(params_);
  broadcast_buckets.pack(params_);
  for (auto b : broadcast_buckets) parallax::broadcast(comm_, b, 0);
  broadcast_buckets.unpack(params_);
  if constexpr (HasLayerBuffers<M>) {
    training::check_replicas(comm_, detail::tensor_spans<T>(model_.buffers()), "DataParallel (its buffers)");
    share_buffers();
  }
  reducer_.plan(grads_);
  if (options_.reproducible_atom) exact_.plan(sizes_);
}

template <class M>
data_parallel_options DataParallel<M>::checked_options(const mpi::communicator& comm, data_parallel_options o,
                                                       const optim::Optimizer<T>& optimizer,
                                                       std::source_location site) {
  operation op(comm, "DataParallel::DataParallel()", -1, site);  // the constructor's first collective
  agree(comm, [&] {
    PARALLAX_CHECK(o.accumulation_steps >= 1, "DataParallel: accumulation_steps must be at least 1");
    PARALLAX_CHECK(!(o.reproducible_atom && o.average_every),
                   "DataParallel: reproducible_atom and average_every (local SGD) do not go together: local SGD's "
                   "ranks train apart, so its result depends on the number of ranks");
    if constexpr (CombinesRanks<M>)
      PARALLAX_CHECK(!o.reproducible_atom,
                     "DataParallel: reproducible_atom does not go with a model whose layers combine ranks "
                     "(SyncBatchNorm): each atom is a forward that is a collective, and the ranks run "
                     "different numbers of atoms");
    if constexpr (training::exact_sum_unavailable != nullptr)
      PARALLAX_CHECK(!o.reproducible_atom,
                     std::string("DataParallel: reproducible_atom needs IEEE double arithmetic; ") +
                         training::exact_sum_unavailable);
    training::check({o.on_nonfinite, o.clip_norm, o.lr_schedule}, optimizer, "DataParallel");
    Bucketer<T>{o.bucket_bytes};  // its check of the cap
  });
  return o;
}

template <class M>
void DataParallel<M>::share_buffers() {
  if constexpr (HasLayerBuffers<M>)
    detail::for_each_tensor(model_.buffers(),
                            [&](auto& t) { parallax::broadcast(comm_, std::span<T>(t.data(), t.size()), 0); });
}

template <class M>
void DataParallel<M>::refresh_views() {
  // The model's tensors may be re-pointed between steps only if they keep
  // their sizes; the views are rebuilt each step (no allocation once sized).
  params_.clear();
  grads_.clear();
  detail::for_each_tensor(model_.parameters(), [&](auto& t) { params_.emplace_back(t.data(), t.size()); });
  detail::for_each_tensor(model_.gradients(), [&](auto& t) { grads_.emplace_back(t.data(), t.size()); });
  PARALLAX_CHECK(grads_.size() == params_.size(), "DataParallel: gradients() has " + std::to_string(grads_.size()) +
                                                      " tensors, parameters() has " + std::to_string(params_.size()));
  for (std::size_t i = 0; i < params_.size(); ++i) {
    PARALLAX_CHECK(grads_[i].size() == params_[i].size(),
                   "DataParallel: gradient " + std::to_string(i) + " has " + std::to_string(grads_[i].size()) +
                       " elements, parameter " + std::to_string(i) + " has " + std::to_string(params_[i].size()));
    PARALLAX_CHECK(sizes_.empty() || sizes_[i] == params_[i].size(),
                   "DataParallel: parameter " + std::to_string(i) + " changed size since construction");
  }
}

template <class M>
double DataParallel<M>::micro_step(const batch_type* batch, std::optional<error> cause, std::source_location site) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  if (micro_ == 0) {  // an optimizer step starts (a failed one left its times behind)
    timing_ = {};
    if constexpr (HasLayerBuffers<M>) buffers_before_.take(visit_buffers());
  }
  const std::size_t n = batch ? parallax::batch_size(*batch) : 0;
  double loss = 0;
  if (cause && !failure_) failure_ = std::move(cause);
  if (n == 0) {
    if (!failure_) failure_ = error(error_kind::invalid_argument, "DataParallel::train_step(): the batch is empty", detail::this_rank());
  } else if (!failure_) {  // after a failure the step throws when it communicates: no need to compute
    auto failure = detail::capture(
        [&] {
          if (options_.reproducible_atom) {
            loss = compute_atoms(*batch, n);
            return;
          }
          // Layers with step-keyed randomness (dropout) see the optimizer step,
          // so a resumed run draws the same masks as an uninterrupted one.
          if constexpr (requires { model_.set_step(std::uint64_t{}); }) model_.set_step(optimizer_->steps());
          trace::span span("loss and gradient", "compute");
          loss = static_cast<double>(model_.loss_and_gradient(*batch));
          refresh_views();
        },
        "DataParallel::train_step(): ");
    if (failure && !failure_) failure_ = std::move(failure);
  }
  const bool ok = n > 0 && !failure_;
  // Accumulate n * (mean gradient) = this rank's gradient sum into the
  // buckets; a failed rank contributes nothing (its gradients may be garbage).
  const bool first = micro_ == 0;
  const bool exact = options_.reproducible_atom > 0;
  if (ok) {
    if (!exact) reducer_.accumulate(grads_, static_cast<T>(n), first);
    meta_.loss_sum += loss * static_cast<double>(n);
    meta_.samples += static_cast<double>(n);
  } else if (exact) {
    exact_.drop();
  } else {
    reducer_.contribute_nothing(first);
  }
  ++micro_;
  timing_.compute += std::chrono::duration<double>(clock::now() - t0).count();
  if (exact) {
    operation op(comm_, "DataParallel::train_step()", static_cast<std::int64_t>(optimizer_->steps()), site);
    return finish_step([&] { return synchronize_exact(ok ? static_cast<double>(n) : 0.0); });
  }
  if (micro_ < options_.accumulation_steps) return loss;
  // Local SGD communicates only when it averages: its own operation.
  if (local_sgd_.enabled()) return finish_step([&] { return local_step(); });
  // fail_step() is the same operation: it meets the other ranks' train_step().
  operation op(comm_, "DataParallel::train_step()", static_cast<std::int64_t>(optimizer_->steps()), site);
  return finish_step([&] { return synchronize_gradients(); });
}

template <class M>
auto DataParallel<M>::visit_buffers() {
  return [this](auto&& f) {
    if constexpr (HasLayerBuffers<M>) detail::for_each_tensor(model_.buffers(), f);
  };
}

template <class M>
template <class Step>
double DataParallel<M>::finish_step(Step&& step) {
  if constexpr (HasLayerBuffers<M>)
    return buffers_before_.finish(visit_buffers(), [this] { return updater_.skipped(); }, step);
  else
    return step();
}

template <class M>
void DataParallel<M>::reset_accumulation() {
  micro_ = 0;
  failure_.reset();
  meta_ = {};
  exact_step_ = {};
}

template <class M>
double DataParallel<M>::synchronize_gradients() {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  // The sample count first (a few doubles), then every bucket summed and
  // divided by it in one pass, which also finds non-finite values; the
  // result is bitwise equal on every rank, so is the verdict.
  const auto failure = std::move(failure_);
  const auto mine = meta_;
  reset_accumulation();
  const auto [loss_sum, samples] = sum_and_agree(comm_, std::array{mine.loss_sum, mine.samples}, failure);
  // A non-finite loss (summed over the ranks, so the same everywhere) counts
  // as a non-finite gradient even when the gradients look finite.
  const bool nonfinite_gradient = reducer_.reduce(T(1) / static_cast<T>(samples));
  const bool nonfinite = nonfinite_gradient || !std::isfinite(loss_sum);
  timing_.communicate = std::chrono::duration<double>(clock::now() - t0).count();
  apply_update(nonfinite_gradient, nonfinite, mine.loss_sum);
  return loss_sum / samples;
}

template <class M>
void DataParallel<M>::apply_update(bool nonfinite_gradient, bool nonfinite, double loss_sum) {
  using clock = std::chrono::steady_clock;
  const auto t1 = clock::now();
  const bool applied =
      updater_.apply(*optimizer_, params_, reducer_.views(), reducer_.const_views(), nonfinite, std::nullopt, [&] {
        if (nonfinite_gradient)
          return error(error_kind::nonfinite,
                       nonfinite_message(training::first_nonfinite(reducer_.const_views()), "averaged "));
        // Called on every rank alike (the verdict is agreed): gather which
        // ranks' losses were not finite.
        std::vector<int> all;
        mpi::all_gather(comm_, std::isfinite(loss_sum) ? -1 : detail::world_rank(), all);
        std::vector<int> ranks;
        std::copy_if(all.begin(), all.end(), std::back_inserter(ranks), [](int r) { return r >= 0; });
        return error(error_kind::nonfinite, nonfinite_message(std::nullopt, ""), std::move(ranks));
      });
  if (applied) {
    timing_.update = std::chrono::duration<double>(clock::now() - t1).count();
    last_timing_ = timing_;
  }
}

template <class M>
double DataParallel<M>::compute_atoms(const batch_type& batch, std::size_t n) {
  const std::size_t k = options_.reproducible_atom;
  const std::size_t atoms = n / k + (n % k != 0);
  // Only the last rank's share may end with a short atom (the sampler's
  // rule), or the atoms would not be those of one process.
  PARALLAX_CHECK(n % k == 0 || comm_.rank() + 1 == comm_.size(),
                 "DataParallel::train_step(): reproducible mode: the batch of " + std::to_string(n) +
                     " samples is not a whole number of atoms of " + std::to_string(k) +
                     " (only the last rank's may end with a shorter atom; make the sampler with make_sampler())");
  constexpr bool sliceable = detail::SliceableBatch<batch_type>;
  PARALLAX_CHECK(sliceable || atoms == 1,
                 "DataParallel::train_step(): reproducible mode: the batch of " + std::to_string(n) + " samples holds " +
                     std::to_string(atoms) + " atoms of " + std::to_string(k) +
                     " and its type has no slice_batch() to cut them; see docs/reproducible.md");
  if constexpr (requires { model_.set_step(std::uint64_t{}); }) model_.set_step(optimizer_->steps());
  double loss_sum = 0;
  for (std::size_t a = 0; a < atoms; ++a) {
    const std::size_t rows = std::min(k, n - a * k);
    const batch_type* atom = &batch;
    if constexpr (sliceable) {
      if (atoms > 1) {
        detail::slice_samples(batch, a * k, rows, atom_);
        atom = &atom_;
      }
    }
    trace::span span("loss and gradient", "compute", static_cast<std::int64_t>(a));
    const double loss = static_cast<double>(model_.loss_and_gradient(*atom));
    refresh_views();
    const double weight = static_cast<double>(rows);
    exact_.add(grads_, weight, loss * weight, a + 1 < atoms);
    loss_sum += loss * weight;
  }
  return loss_sum / static_cast<double>(n);
}

template <class M>
double DataParallel<M>::synchronize_exact(double samples) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  const auto failure = std::move(failure_);
  failure_.reset();
  std::array<double, 2> sums{};
  try {
    sums = sum_and_agree(comm_, std::array{samples, static_cast<double>(exact_.atoms())}, failure);
  } catch (...) {  // the whole optimizer step is dropped, as in the default mode
    exact_.drop();
    reset_accumulation();
    throw;
  }
  const double loss_sum = exact_.reduce(static_cast<std::size_t>(sums[1]));
  auto& step = exact_step_;
  step.samples += sums[0];
  step.loss_finite = step.loss_finite && std::isfinite(loss_sum);
  const bool first = micro_ == 1;
  const bool last = micro_ >= options_.accumulation_steps;
  if (!(first && last)) {
    exact_.hold(first);
    step.held = true;
  }
  timing_.communicate += std::chrono::duration<double>(clock::now() - t0).count();
  if (last) apply_exact();
  return loss_sum / sums[0];
}

template <class M>
void DataParallel<M>::apply_exact() {
  const auto step = exact_step_;
  const double loss_sum = meta_.loss_sum;
  reset_accumulation();
  const bool nonfinite_gradient = exact_.mean_into(reducer_.views(), step.samples, step.held);
  apply_update(nonfinite_gradient, nonfinite_gradient || !step.loss_finite, loss_sum);
}

template <class M>
void DataParallel<M>::check_atoms(std::size_t atom, const std::string& who, const char* hint) const {
  const std::size_t k = options_.reproducible_atom;
  PARALLAX_CHECK(k == 0 || atom == k, who + ": reproducible mode cuts batches into atoms of " + std::to_string(k) +
                                          " samples, the sampler's shares are of atoms of " + std::to_string(atom) +
                                          " (" + hint + ")");
}

template <class M>
double DataParallel<M>::local_step() {
  // This rank's own mean gradient; no communication until the averaging.
  const double loss_sum = meta_.loss_sum;
  const double count = meta_.samples;
  micro_ = 0;
  meta_ = {};
  if (local_sgd_.step(updater_, *optimizer_, params_, reducer_, loss_sum, count, failure_,
                      [&](std::optional<std::size_t> bad) { return nonfinite_message(bad, ""); }))
    average_parameters();
  return count > 0 ? loss_sum / count : 0.0;
}

template <class M>
std::string DataParallel<M>::nonfinite_message(std::optional<std::size_t> parameter, const char* averaged) const {
  const std::string what =
      parameter ? std::string("the ") + averaged + "gradient of parameter " + std::to_string(*parameter) : "the loss";
  return training::nonfinite_message("DataParallel::train_step()", what, optimizer_->steps());
}

template <class M>
void DataParallel<M>::average_parameters(std::source_location site) {
  operation op(comm_, "DataParallel::average_parameters()", static_cast<std::int64_t>(optimizer_->steps()), site);
  local_sgd_.average(reducer_, params_, failure_, "DataParallel::average_parameters()");
}

template <class M>
void DataParallel<M>::flush(std::source_location site) {
  if (micro_ == 0) return;
  operation op(comm_, "DataParallel::flush()", static_cast<std::int64_t>(optimizer_->steps()), site);
  finish_step([&] {
    if (local_sgd_.enabled()) return local_step();
    if (options_.reproducible_atom) {  // the micro-steps are already summed
      apply_exact();
      return 0.0;
    }
    return synchronize_gradients();
  });
}

template <class M>
data::DistributedSampler DataParallel<M>::make_sampler(std::size_t dataset_size, std::size_t global_batch,
                                                       data::sampler_options options,
                                                       std::source_location site) const {
  // Reproducible mode: shares of whole atoms (an atom chosen by the caller
  // must be the mode's).
  if (options_.reproducible_atom && options.atom == 1) options.atom = options_.reproducible_atom;
  return training::make_sampler(comm_, dataset_size, global_batch, std::move(options), comm_.size(), comm_.rank(),
                                "DataParallel::make_sampler()", site, [&](const data::sampler_options& o) {
                                  check_atoms(o.atom, "DataParallel::make_sampler()",
                                              "leave sampler_options::atom at 1: make_sampler() sets it to "
                                              "reproducible_atom");
                                });
}

template <class M>
template <class D>
  requires Dataset<D, typename M::batch_type>
epoch_report DataParallel<M>::train_epoch(const D& dataset, data::DistributedSampler& sampler,
                                          std::source_location site) {
  operation op(comm_, "DataParallel::train_epoch()", static_cast<std::int64_t>(optimizer_->steps()), site);
  return training::run_epoch(*this, dataset, sampler, {options_.on_step, options_.after_step, options_.stop_when});
}

template <class M>
template <class D>
  requires Dataset<D, typename M::batch_type>
evaluation DataParallel<M>::evaluate(const D& dataset, std::size_t batch_size, const std::vector<metric<M>>& metrics,
                                     std::source_location site) {
  operation op(comm_, "DataParallel::evaluate()", static_cast<std::int64_t>(optimizer_->steps()), site);
  const std::size_t n = training::agreed_size(comm_, dataset, batch_size, "DataParallel::evaluate()");
  share_buffers();  // every rank evaluates with rank 0's running statistics
  // [samples, loss sum, correct, metric sums...]; in reproducible mode one
  // such row per chunk of batch_size samples (each rank evaluates whole
  // chunks, the rows of the others stay 0), added up in chunk order after
  // the all-reduce, so that the sums do not depend on the rank count.
  const std::size_t fields = 3 + metrics.size();
  const bool exact = options_.reproducible_atom > 0;
  const std::size_t rows = exact ? std::max<std::size_t>(n / batch_size + (n % batch_size != 0), 1) : 1;
  std::vector<double> sums;
  int count = 0;
  agree(comm_, [&] {
    count = detail::checked_count(rows * fields, "DataParallel::evaluate()'s sums");
    sums.assign(rows * fields, 0.0);
    const block mine = evaluation_rows(n, batch_size);
    if constexpr (requires { { dataset.rows() } -> std::same_as<block>; }) {
      const block held = dataset.rows();
      PARALLAX_CHECK(mine.size() == 0 || (held.begin <= mine.begin && mine.end <= held.end),
                     "DataParallel::evaluate(): this rank evaluates rows [" + std::to_string(mine.begin) + ", " +
                         std::to_string(mine.end) + ") but its shard holds [" + std::to_string(held.begin) + ", " +
                         std::to_string(held.end) + "); load the rows trainer.evaluation_rows(" + std::to_string(n) +
                         ", " + std::to_string(batch_size) + ") gives (docs/datasets.md)");
    }
    std::size_t chunk = exact ? mine.begin / batch_size : 0;  // reproducible mode: the row of the next batch
    training::eval_mode guard([&](bool training) {
      if constexpr (requires { model_.set_training(training); }) model_.set_training(training);
    });
    batch_type batch{};
    training::for_each_batch(dataset, mine.begin, mine.end, batch_size, batch, [&](const batch_type& b, std::size_t rows) {
      const auto n = static_cast<double>(rows);
      double loss = 0;
      if constexpr (HasEvalLoss<M>) loss = static_cast<double>(model_.loss(b));
      else loss = static_cast<double>(model_.loss_and_gradient(b));
      double* row = sums.data() + (exact ? chunk++ * fields : 0);
      row[0] += n;
      row[1] += loss * n;
      if constexpr (HasAccuracy<M>) row[2] += static_cast<double>(model_.correct(b));
      for (std::size_t m = 0; m < metrics.size(); ++m) row[3 + m] += metrics[m].sum(model_, b);
    });
  });
  std::vector<double> all(sums.size());
  mpi::all_reduce(comm_, sums.data(), count, all.data(), std::plus<double>());
  std::vector<double> total(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(fields));
  for (std::size_t c = 1; c < rows; ++c)
    for (std::size_t f = 0; f < fields; ++f) total[f] += all[c * fields + f];
  std::vector<std::string> names;
  for (const auto& m : metrics) names.push_back(m.name);
  return training::make_evaluation({total[0], total[1], total[2]}, HasAccuracy<M>, names,
                                   std::span<const double>(total).subspan(3));
}

template <class M>
block DataParallel<M>::evaluation_rows(std::size_t n, std::size_t batch_size) const {
  if (!options_.reproducible_atom || batch_size == 0) return block_of(n, comm_.size(), comm_.rank());
  const auto chunks = block_of(n / batch_size + (n % batch_size != 0), comm_.size(), comm_.rank());
  return {std::min(n, chunks.begin * batch_size), std::min(n, chunks.end * batch_size)};
}

}  // namespace parallax
