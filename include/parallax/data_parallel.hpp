#pragma once
// SPDX-License-Identifier: BSL-1.0
/// DataParallel<Model>: every rank holds a replica of the model, computes
/// gradients on its own shard of each global batch, and the gradients are
/// summed over ranks and divided by the global sample count, so every rank
/// applies the same optimizer step — the parameters of one process training
/// on the whole global batch (docs/design.md invariant 2). Also: gradient
/// accumulation, local SGD (periodic parameter averaging), sharded evaluation.

#include <parallax/core/blas.hpp>
#include <parallax/core/comm.hpp>
#include <parallax/core/concepts.hpp>
#include <parallax/core/error.hpp>
#include <parallax/data/sampler.hpp>
#include <parallax/evaluation.hpp>
#include <parallax/detail/random.hpp>
#include <parallax/detail/tensor_list.hpp>
#include <parallax/optim/clip.hpp>
#include <parallax/optim/optimizer.hpp>
#include <parallax/optim/schedule.hpp>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace parallax {

/// What train_step does when the averaged gradient holds a NaN or an infinity.
/// The averaged gradient is bitwise identical on every rank, so every rank
/// takes the same decision without communicating.
enum class nonfinite_policy {
  error,      ///< throw parallax::error on every rank (default)
  skip_step,  ///< leave parameters and optimizer untouched, count the step as skipped
};

/// What the progress hook sees after each step (on rank 0 only).
struct step_report {
  std::uint64_t epoch = 0;
  std::size_t step = 0;             ///< step within the epoch (0-based)
  std::size_t steps_per_epoch = 0;
  std::uint64_t optimizer_step = 0; ///< optimizer steps taken so far
  double loss = 0;                  ///< mean loss of this step (global, or this rank's in local SGD)
  std::size_t samples = 0;          ///< samples of this step over all ranks
  double seconds = 0;               ///< wall time of this step
  bool skipped = false;             ///< a non-finite gradient skipped the optimizer step
};

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
};

struct epoch_report {
  double loss = 0;  ///< mean training loss over the epoch's samples (all ranks)
  std::size_t samples = 0;
  std::size_t steps = 0;
  double seconds = 0;
};

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
               mpi::communicator comm = mpi::communicator());
  /// Only for a model that is not a Model: check_model() has already named
  /// the missing piece; this keeps a second, confusing error away.
  template <class O>
    requires(!Model<M>)
  DataParallel(M, const O&, data_parallel_options = {}, mpi::communicator = mpi::communicator()) {}

  /// Collective. One micro-step on this rank's batch. Returns the global mean
  /// loss of the samples of the optimizer step this micro-step completes; on
  /// a micro-step that does not complete one (accumulation) and in local SGD,
  /// this rank's mean loss. A failure on any rank (an exception in the model,
  /// an empty batch) becomes the same error on every rank, at the latest on
  /// the communicating micro-step.
  double train_step(const batch_type& batch);

  /// Collective. A sampler for a dataset of `dataset_size` samples with the
  /// given global batch; checks that every rank asked for the same plan.
  data::DistributedSampler make_sampler(std::size_t dataset_size, std::size_t global_batch,
                                        data::sampler_options options = {}) const;

  /// Collective. The rest of the sampler's epoch (from sampler.position(),
  /// so a resumed run continues mid-epoch) over `dataset` (anything with
  /// size() and batch(indices); batch_into(indices, batch&) is used when
  /// present to reuse buffers), then moves the sampler to the next epoch.
  /// Leftover accumulated micro-steps are applied at the end.
  template <class D>
    requires Dataset<D, typename M::batch_type>
  epoch_report train_epoch(const D& dataset, data::DistributedSampler& sampler);

  /// Collective. Applies what is accumulated (fewer than accumulation_steps
  /// micro-steps) as an optimizer step; no-op when nothing is pending.
  void flush();

  /// Collective (local SGD): averages the parameters over ranks now,
  /// weighted by the samples each rank trained on since the last average.
  void average_parameters();

  /// Collective. Every rank evaluates its own contiguous block of the dataset
  /// (no sample counted twice or dropped, whatever the rank count); loss,
  /// accuracy (when the model has correct()) and the given metrics are
  /// reduced to global means, identical on every rank.
  template <class D>
    requires Dataset<D, typename M::batch_type>
  evaluation evaluate(const D& dataset, std::size_t batch_size = 256, const std::vector<metric<M>>& metrics = {});

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
  std::uint64_t skipped_steps() const { return skipped_; }
  /// Where the time of the last completed optimizer step went.
  const step_timing& last_timing() const { return last_timing_; }

 private:
  using T = value_type;
  // What is reduced before the gradients (in double): loss sum, sample
  // count, ranks that failed, ranks with an empty batch. Knowing the count
  // first lets the gradient all-reduce turn sums into means on the way.
  static constexpr std::size_t meta_size = 4;

  void check_replicas();
  void refresh_views();
  double synchronize_gradients();
  double local_step();
  void apply_step();
  void reset_accumulation();

  mpi::communicator comm_;
  M model_;
  std::unique_ptr<optim::Optimizer<T>> optimizer_;
  data_parallel_options options_;

  std::vector<std::span<T>> params_;
  std::vector<std::span<T>> grads_;
  std::vector<std::size_t> sizes_;        // elements per parameter tensor (fixed at construction)
  std::array<double, meta_size> meta_{};  // this rank's meta values for the pending step
  Bucketer<T> buckets_;
  std::vector<std::span<T>> step_grads_;  // views of the averaged gradient in the buckets
  std::vector<std::span<const T>> step_grads_const_;

  std::size_t micro_ = 0;                 // micro-steps accumulated towards the next optimizer step
  std::string failure_;                   // first failure of this rank since the last communication
  std::uint64_t skipped_ = 0;
  double samples_since_average_ = 0;      // local SGD: samples this rank saw since the last average
  std::uint64_t local_steps_ = 0;
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

namespace detail {

/// Same element pattern on every rank: [tensor count, element code, then per
/// tensor: rank, extents...].
template <class T>
std::vector<std::uint64_t> parameter_signature(const std::vector<tensor_span<T>>& tensors) {
  std::vector<std::uint64_t> sig = {tensors.size(), type_code<T>()};
  for (const auto& t : tensors) {
    sig.push_back(t.shape.size());
    for (auto e : t.shape) sig.push_back(e);
  }
  return sig;
}

/// Decodes a signature into per-tensor shapes (for messages).
inline std::vector<std::vector<std::uint64_t>> signature_shapes(const std::vector<std::uint64_t>& sig) {
  std::vector<std::vector<std::uint64_t>> shapes;
  std::size_t at = 2;
  for (std::uint64_t i = 0; i < sig[0] && at < sig.size(); ++i) {
    const auto rank = sig[at++];
    shapes.emplace_back(sig.begin() + static_cast<std::ptrdiff_t>(at),
                        sig.begin() + static_cast<std::ptrdiff_t>(std::min<std::size_t>(at + rank, sig.size())));
    at += rank;
  }
  return shapes;
}

/// The first difference between two ranks' signatures, in words.
inline std::string signature_difference(const std::vector<std::uint64_t>& a, int rank_a,
                                        const std::vector<std::uint64_t>& b, int rank_b) {
  const auto ra = "rank " + std::to_string(rank_a);
  const auto rb = "rank " + std::to_string(rank_b);
  if (a[1] != b[1])
    return "parameters are " + type_code_name(a[1]) + " on " + ra + " but " + type_code_name(b[1]) + " on " + rb;
  const auto sa = signature_shapes(a);
  const auto sb = signature_shapes(b);
  for (std::size_t i = 0; i < std::min(sa.size(), sb.size()); ++i)
    if (sa[i] != sb[i])
      return "parameter " + std::to_string(i) + " has shape " + shape_string(sa[i]) + " on " + ra + " but " +
             shape_string(sb[i]) + " on " + rb;
  return ra + " has " + std::to_string(sa.size()) + " parameter tensors but " + rb + " has " +
         std::to_string(sb.size());
}

/// The hash of a list of words.
inline std::uint64_t words_hash(const std::vector<std::uint64_t>& words) {
  return content_hash(words.data(), words.size() * sizeof(std::uint64_t));
}

}  // namespace detail

template <class M>
DataParallel<M>::DataParallel(M model, const optim::Optimizer<value_type>& optimizer, data_parallel_options options,
                              mpi::communicator comm)
    : comm_(std::move(comm)),
      model_(std::move(model)),
      optimizer_(optimizer.clone()),
      options_(std::move(options)),
      buckets_(options_.bucket_bytes) {
  warn_if_slow_blas(comm_);
  // Everything that can differ between ranks is agreed before any rank throws.
  agree(comm_, [&] {
    PARALLAX_CHECK(options_.accumulation_steps >= 1, "DataParallel: accumulation_steps must be at least 1");
    PARALLAX_CHECK(options_.clip_norm >= 0, "DataParallel: clip_norm must not be negative");
    refresh_views();
    sizes_.clear();
    for (const auto& p : params_) sizes_.push_back(p.size());
    PARALLAX_CHECK(!params_.empty(), "DataParallel: the model has no parameters");
  });
  check_replicas();
  // Rank 0's parameters everywhere, in buckets.
  Bucketer<T> broadcast_buckets(options_.bucket_bytes);
  broadcast_buckets.plan(params_);
  broadcast_buckets.pack(params_);
  for (auto b : broadcast_buckets) parallax::broadcast(comm_, b, 0);
  broadcast_buckets.unpack(params_);
  buckets_.plan(grads_);
  for (std::size_t i = 0; i < grads_.size(); ++i) step_grads_.push_back(buckets_.segment(i));
  step_grads_const_.assign(step_grads_.begin(), step_grads_.end());
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
void DataParallel<M>::check_replicas() {
  const auto sig = detail::parameter_signature(detail::tensor_spans<T>(model_.parameters()));
  const std::uint64_t h = detail::words_hash(sig);
  std::array<std::uint64_t, 2> mine{h, ~h};
  std::array<std::uint64_t, 2> most{};
  mpi::all_reduce(comm_, mine.data(), 2, most.data(), mpi::maximum<std::uint64_t>());
  if (most[0] == h && most[1] == ~h) return;  // max == min: all equal
  std::vector<std::vector<std::uint64_t>> all;
  mpi::all_gather(comm_, sig, all);
  for (int r = 1; r < comm_.size(); ++r)
    if (all[static_cast<std::size_t>(r)] != all[0])
      throw error("DataParallel: models differ between ranks: " +
                  detail::signature_difference(all[0], 0, all[static_cast<std::size_t>(r)], r));
}

template <class M>
double DataParallel<M>::train_step(const batch_type& batch) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  const std::size_t n = parallax::batch_size(batch);
  double loss = 0;
  if (n == 0) {
    if (failure_.empty()) failure_ = detail::with_rank("DataParallel::train_step(): the batch is empty");
    meta_[3] += 1.0;
  } else {
    try {
      // Layers with step-keyed randomness (dropout) see the optimizer step,
      // so a resumed run draws the same masks as an uninterrupted one.
      if constexpr (requires { model_.set_step(std::uint64_t{}); }) model_.set_step(optimizer_->steps());
      loss = static_cast<double>(model_.loss_and_gradient(batch));
      refresh_views();
    } catch (const error& e) {
      if (failure_.empty()) failure_ = e.what();
    } catch (const std::exception& e) {
      if (failure_.empty()) failure_ = detail::with_rank(std::string("DataParallel::train_step(): ") + e.what());
    }
  }
  const bool ok = n > 0 && failure_.empty();
  // Accumulate n * (mean gradient) = this rank's gradient sum into the buckets.
  const T weight = ok ? static_cast<T>(n) : T(0);
  const bool first = micro_ == 0;
  meta_[0] += ok ? loss * static_cast<double>(n) : 0.0;
  meta_[1] += ok ? static_cast<double>(n) : 0.0;
  meta_[2] = failure_.empty() ? 0.0 : 1.0;
  for (std::size_t k = 0; k < buckets_.bucket_count(); ++k)
    buckets_.visit(k, grads_, [&](const T* g, T* b, std::size_t len) {
      if (!ok) {
        if (first) std::fill_n(b, len, T(0));  // a failed rank contributes nothing (its gradients may be garbage)
      } else if (first) {
        for (std::size_t i = 0; i < len; ++i) b[i] = weight * g[i];
      } else {
        for (std::size_t i = 0; i < len; ++i) b[i] += weight * g[i];
      }
    });
  ++micro_;
  timing_.compute += std::chrono::duration<double>(clock::now() - t0).count();
  if (micro_ < options_.accumulation_steps) return loss;
  return options_.average_every == 0 ? synchronize_gradients() : local_step();
}

template <class M>
void DataParallel<M>::reset_accumulation() {
  micro_ = 0;
  failure_.clear();
  meta_.fill(0.0);
}

template <class M>
double DataParallel<M>::synchronize_gradients() {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  // The sample count first (a few doubles), then every bucket summed and
  // divided by it in one pass, which also finds non-finite values; the
  // result is bitwise equal on every rank, so is the verdict.
  std::array<double, meta_size> total{};
  mpi::all_reduce(comm_, meta_.data(), static_cast<int>(meta_size), total.data(), std::plus<double>());
  const double loss_sum = total[0];
  const double count = total[1];
  const std::string failure = failure_;
  reset_accumulation();
  if (total[2] > 0 || total[3] > 0) agree(comm_, failure);  // throws the same error on every rank
  const T inv = T(1) / static_cast<T>(count);
  bool nonfinite = false;
  for (auto b : buckets_) nonfinite = allreduce_scaled(comm_, b, inv) || nonfinite;
  const auto t1 = clock::now();
  timing_.communicate = std::chrono::duration<double>(t1 - t0).count();
  if (nonfinite) {
    std::size_t bad = 0;
    for (; bad < grads_.size(); ++bad)
      if (std::any_of(step_grads_[bad].begin(), step_grads_[bad].end(), [](T x) { return !std::isfinite(x); })) break;
    if (options_.on_nonfinite == nonfinite_policy::error)
      throw error("DataParallel::train_step(): the averaged gradient of parameter " + std::to_string(bad) +
                  " is not finite at optimizer step " + std::to_string(optimizer_->steps()) +
                  " (use nonfinite_policy::skip_step to skip such steps)");
    ++skipped_;
    return loss_sum / count;
  }
  apply_step();
  timing_.update = std::chrono::duration<double>(clock::now() - t1).count();
  last_timing_ = timing_;
  timing_ = {};
  return loss_sum / count;
}

template <class M>
void DataParallel<M>::apply_step() {
  if (options_.clip_norm > 0) {
    const double norm = std::sqrt(optim::squared_norm<T>(step_grads_const_));
    const double factor = optim::clip_factor(norm, options_.clip_norm);
    if (factor < 1) optim::scale<T>(step_grads_, static_cast<T>(factor));
  }
  if (options_.lr_schedule) optimizer_->set_learning_rate(options_.lr_schedule(optimizer_->steps()));
  optimizer_->step(params_, step_grads_const_);
}

template <class M>
double DataParallel<M>::local_step() {
  // This rank's own mean gradient; no communication until the averaging.
  const double loss_sum = meta_[0];
  const double count = meta_[1];
  if (failure_.empty() && count > 0) {
    const T inv = T(1) / static_cast<T>(count);
    for (auto g : step_grads_)
      for (auto& x : g) x *= inv;
    apply_step();
    samples_since_average_ += count;
  }
  ++local_steps_;
  micro_ = 0;
  meta_.fill(0.0);
  if (local_steps_ % options_.average_every == 0) average_parameters();
  return count > 0 ? loss_sum / count : 0.0;
}

template <class M>
void DataParallel<M>::average_parameters() {
  // Weighted by samples seen, so unequal shards average like one process
  // would: sum_r n_r theta_r / sum_r n_r. As for gradients: the counts
  // first, then the sums divided inside the all-reduce. The gradient
  // buckets (laid out like the parameters, free between steps) hold them.
  std::array<double, 2> mine{samples_since_average_, failure_.empty() ? 0.0 : 1.0}, total{};
  mpi::all_reduce(comm_, mine.data(), 2, total.data(), std::plus<double>());
  const std::string failure = failure_;
  failure_.clear();
  samples_since_average_ = 0;
  if (total[1] > 0) agree(comm_, failure);
  PARALLAX_CHECK(total[0] > 0, "DataParallel::average_parameters(): no rank trained on any sample");
  const T weight = static_cast<T>(mine[0]);
  for (std::size_t k = 0; k < buckets_.bucket_count(); ++k)
    buckets_.visit(k, params_, [&](const T* p, T* b, std::size_t len) {
      for (std::size_t i = 0; i < len; ++i) b[i] = weight * p[i];
    });
  const T inv = T(1) / static_cast<T>(total[0]);
  for (auto b : buckets_) allreduce_scaled(comm_, b, inv);
  buckets_.unpack(params_);
}

template <class M>
void DataParallel<M>::flush() {
  if (micro_ == 0) return;
  if (options_.average_every == 0) synchronize_gradients();
  else local_step();
}

template <class M>
data::DistributedSampler DataParallel<M>::make_sampler(std::size_t dataset_size, std::size_t global_batch,
                                                       data::sampler_options options) const {
  agree_equal(comm_, static_cast<std::uint64_t>(dataset_size), "DataParallel::make_sampler(): the dataset size");
  agree_equal(comm_, static_cast<std::uint64_t>(global_batch), "DataParallel::make_sampler(): the global batch");
  agree_equal(comm_, options.seed, "DataParallel::make_sampler(): the seed");
  std::vector<std::uint64_t> plan = {static_cast<std::uint64_t>(options.tail), options.shuffle, options.bootstrap,
                                     options.weights.size()};
  for (double w : options.weights) plan.push_back(std::bit_cast<std::uint64_t>(w));
  agree_equal(comm_, detail::words_hash(plan), "DataParallel::make_sampler(): the sampler options (tail, shuffle, weights)");
  return agree(comm_, [&] {
    return data::DistributedSampler(dataset_size, global_batch, comm_.size(), comm_.rank(), std::move(options));
  });
}

template <class M>
template <class D>
  requires Dataset<D, typename M::batch_type>
epoch_report DataParallel<M>::train_epoch(const D& dataset, data::DistributedSampler& sampler) {
  PARALLAX_CHECK(sampler.world_size() == comm_.size() && sampler.rank() == comm_.rank(),
                 "DataParallel::train_epoch(): the sampler was made for rank " + std::to_string(sampler.rank()) +
                     " of " + std::to_string(sampler.world_size()) + ", this is rank " +
                     std::to_string(comm_.rank()) + " of " + std::to_string(comm_.size()));
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  epoch_report report;
  report.steps = sampler.steps_per_epoch() - sampler.position();
  double weighted_loss = 0;
  batch_type batch{};
  const std::size_t steps = sampler.steps_per_epoch();
  for (std::size_t s = sampler.position(); s < steps; ++s) {
    const auto t0 = clock::now();
    const auto indices = sampler.local_indices(s);
    if constexpr (requires { dataset.batch_into(indices, batch); }) dataset.batch_into(indices, batch);
    else batch = dataset.batch(indices);
    const std::uint64_t skipped_before = skipped_;
    const double loss = train_step(batch);
    const std::size_t step_samples = sampler.global_batch();
    weighted_loss += loss * static_cast<double>(step_samples);
    report.samples += step_samples;
    sampler.set_position(s + 1);
    const step_report step{sampler.epoch(), s, steps, optimizer_->steps(), loss, step_samples,
                           std::chrono::duration<double>(clock::now() - t0).count(), skipped_ > skipped_before};
    if (options_.on_step && comm_.rank() == 0) options_.on_step(step);
    if (options_.after_step) options_.after_step(step);
  }
  flush();
  sampler.next_epoch();
  report.loss = report.samples ? weighted_loss / static_cast<double>(report.samples) : 0.0;
  if (options_.average_every > 0 || options_.accumulation_steps > 1) {
    // Step losses were local on some micro-steps: report the global mean.
    double pair[2] = {weighted_loss, static_cast<double>(report.samples)};
    double total[2] = {0, 0};
    mpi::all_reduce(comm_, pair, 2, total, std::plus<double>());
    report.loss = total[1] > 0 ? total[0] / total[1] : 0.0;
  }
  report.seconds = std::chrono::duration<double>(clock::now() - start).count();
  return report;
}

template <class M>
template <class D>
  requires Dataset<D, typename M::batch_type>
evaluation DataParallel<M>::evaluate(const D& dataset, std::size_t batch_size, const std::vector<metric<M>>& metrics) {
  PARALLAX_CHECK(batch_size > 0, "DataParallel::evaluate(): batch_size is 0");
  // [samples, loss sum, correct, metric sums...]
  std::vector<double> sums(3 + metrics.size(), 0.0);
  agree(comm_, [&] {
    const auto mine = block_of(dataset.size(), comm_.size(), comm_.rank());
    if constexpr (requires { model_.set_training(false); }) model_.set_training(false);
    std::vector<std::size_t> indices;
    batch_type batch{};
    for (std::size_t at = mine.begin; at < mine.end; at += batch_size) {
      indices.clear();
      for (std::size_t i = at; i < std::min(mine.end, at + batch_size); ++i) indices.push_back(i);
      if constexpr (requires { dataset.batch_into(std::span<const std::size_t>(indices), batch); })
        dataset.batch_into(std::span<const std::size_t>(indices), batch);
      else batch = dataset.batch(std::span<const std::size_t>(indices));
      const auto n = static_cast<double>(indices.size());
      double loss = 0;
      if constexpr (HasEvalLoss<M>) loss = static_cast<double>(model_.loss(batch));
      else loss = static_cast<double>(model_.loss_and_gradient(batch));
      sums[0] += n;
      sums[1] += loss * n;
      if constexpr (HasAccuracy<M>) sums[2] += static_cast<double>(model_.correct(batch));
      for (std::size_t m = 0; m < metrics.size(); ++m) sums[3 + m] += metrics[m].sum(model_, batch);
    }
    if constexpr (requires { model_.set_training(true); }) model_.set_training(true);
  });
  std::vector<double> total(sums.size());
  mpi::all_reduce(comm_, sums.data(), static_cast<int>(sums.size()), total.data(), std::plus<double>());
  evaluation result;
  result.samples = static_cast<std::size_t>(total[0]);
  const double n = total[0] > 0 ? total[0] : 1.0;
  result.loss = total[1] / n;
  if constexpr (HasAccuracy<M>) result.accuracy = total[2] / n;
  for (std::size_t m = 0; m < metrics.size(); ++m) result.metrics.emplace_back(metrics[m].name, total[3 + m] / n);
  return result;
}

}  // namespace parallax
