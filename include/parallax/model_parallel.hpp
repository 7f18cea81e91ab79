#pragma once
// SPDX-License-Identifier: BSL-1.0
/// ModelParallel<Layers..., Loss>: the chain of layers is cut into contiguous
/// stages, one per rank; each rank builds only its own layers, micro-batches
/// stream forward and their gradients backward between neighbouring ranks
/// (GPipe or 1F1B), and each stage's optimizer updates only the parameters
/// it owns. The result equals training the unsplit chain on one rank
/// (docs/design.md invariant 2).

#include <parallax/core/blas.hpp>
#include <parallax/core/comm.hpp>
#include <parallax/core/concepts.hpp>
#include <parallax/core/error.hpp>
#include <parallax/data/batch.hpp>
#include <parallax/detail/chain.hpp>
#include <parallax/detail/random.hpp>
#include <parallax/detail/tensor_list.hpp>
#include <parallax/evaluation.hpp>
#include <parallax/optim/clip.hpp>
#include <parallax/optim/optimizer.hpp>
#include <parallax/optim/schedule.hpp>
#include <parallax/pipeline/partition.hpp>
#include <parallax/pipeline/schedule.hpp>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>
#include <boost/serialization/string.hpp>
#include <boost/serialization/utility.hpp>
#include <boost/serialization/vector.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace parallax {

struct pipeline_options {
  /// Micro-batches per step. A batch that is not a multiple of it is cut
  /// into sizes that differ by at most one; the loss is still the exact mean
  /// over the batch. A batch smaller than it is an error.
  std::size_t micro_batches = 4;
  pipeline::schedule_kind schedule = pipeline::schedule_kind::one_f_one_b;
  /// Keep only each micro-batch's stage input (and output) and recompute the
  /// stage's forward during its backward: compute for memory.
  bool recompute = false;
  /// Layer i is initialised with initialize(seed, i), whatever the partition.
  std::uint64_t seed = 0;
  /// Stage s holds layers [boundaries[s], boundaries[s + 1]). Empty: balanced
  /// by parameter count (layers need a static parameter_count(args...)), or
  /// use ModelParallel::profile_boundaries() to balance by measured time.
  pipeline::boundaries boundaries{};
  /// Relative speed of each rank (stage) for the balanced partition; empty:
  /// all equal.
  std::vector<double> stage_speeds{};
  /// Clip the gradient to this global norm (summed over all stages); 0: off.
  double clip_norm = 0;
  /// Learning rate per step; empty: the optimizer's own.
  optim::lr_schedule lr_schedule{};
};

/// What a stage held and did, for reports and tests.
struct pipeline_stats {
  std::size_t peak_micro_batches = 0;  ///< most micro-batches with saved activations at once, this stage
  std::size_t peak_saved_bytes = 0;    ///< most bytes of saved activations at once, this stage
  std::size_t local_parameters = 0;    ///< parameters (elements) this rank holds
  double last_step_seconds = 0;
};

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
                pipeline_options options = {}, mpi::communicator comm = mpi::communicator());

  /// Collective. One training step on a batch, through the schedule; returns
  /// the mean loss over the batch, the same on every rank.
  double train_step(const batch_type& batch);

  /// Collective. The chain's output for x (any number of rows; every rank
  /// passes the same x), on every rank.
  output_type predict(const input_type& x);

  /// Collective. Mean loss and accuracy (when the loss has correct()) over a
  /// dataset, through the pipeline; the same on every rank.
  template <class D>
    requires Dataset<D, batch_type>
  evaluation evaluate(const D& dataset, std::size_t batch_size = 256) {
    PARALLAX_CHECK(batch_size > 0, "ModelParallel::evaluate(): batch_size is 0");
    const std::size_t n = dataset.size();
    for_range(begin_, end_, [&](auto I) {
      if constexpr (requires { std::get<I()>(parts_)->set_training(false); }) std::get<I()>(parts_)->set_training(false);
    });
    double loss = 0, correct = 0;
    std::vector<std::size_t> indices;
    batch_type batch{};
    for (std::size_t at = 0; at < n;) {
      const std::size_t take = std::min(batch_size, n - at);  // the last batch may be short
      indices.clear();
      for (std::size_t i = at; i < at + take; ++i) indices.push_back(i);
      at += take;
      if constexpr (requires { dataset.batch_into(std::span<const std::size_t>(indices), batch); })
        dataset.batch_into(std::span<const std::size_t>(indices), batch);
      else batch = dataset.batch(std::span<const std::size_t>(indices));
      prepare(&batch, false);
      run(&batch, forward_schedule(), false);
      loss += loss_sum_;
      correct += correct_sum_;
    }
    for_range(begin_, end_, [&](auto I) {
      if constexpr (requires { std::get<I()>(parts_)->set_training(true); }) std::get<I()>(parts_)->set_training(true);
    });
    std::array<double, 3> mine = {loss, correct, failure_.empty() ? 0.0 : 1.0};
    std::array<double, 3> total{};
    mpi::all_reduce(comm_, mine.data(), 3, total.data(), std::plus<double>());
    if (total[2] > 0) agree(comm_, failure_);
    evaluation result;
    result.samples = n;
    result.loss = n ? total[0] / static_cast<double>(n) : 0.0;
    if constexpr (HasCorrectCount<loss_type>) result.accuracy = n ? total[1] / static_cast<double>(n) : 0.0;
    return result;
  }

  /// Collective. Boundaries that balance measured forward + backward time:
  /// rank 0 builds each layer in turn (one at a time), times it on
  /// `sample` pushed through the chain, and the contiguous partition that
  /// minimises the slowest stage (weighted by stage_speeds) is broadcast.
  template <class... Args>
  static pipeline::boundaries profile_boundaries(const std::tuple<Args...>& part_args, const input_type& sample,
                                                 std::vector<double> stage_speeds = {},
                                                 mpi::communicator comm = mpi::communicator(), int repeats = 3);

  int stage() const { return stage_; }
  int stages() const { return stages_; }
  /// This stage's layers: [first_layer(), end_layer()).
  std::size_t first_layer() const { return begin_; }
  std::size_t end_layer() const { return end_; }
  const pipeline::boundaries& boundaries() const { return boundaries_; }
  /// Layer I if this rank holds it, else nullptr.
  template <std::size_t I>
  part_t<I>* layer() {
    auto& slot = std::get<I>(parts_);
    return slot ? &*slot : nullptr;
  }
  /// Calls f(index, layer) for each layer of this stage, in order.
  template <class F>
  void for_each_local_layer(F&& f);
  const pipeline_stats& stats() const { return stats_; }
  optim::Optimizer<value_type>& optimizer() { return *optimizer_; }
  const mpi::communicator& communicator() const { return comm_; }
  const pipeline_options& options() const { return options_; }

 private:
  using T = value_type;
  template <std::size_t I>
  using in_t = typename part_t<I>::input_type;
  template <std::size_t I>
  using out_t = typename part_t<I>::output_type;
  template <class S>
  struct buffers;
  template <std::size_t... I>
  struct buffers<std::index_sequence<I...>> {
    using inputs = std::tuple<in_t<I>...>;
    using outputs = std::tuple<out_t<I>...>;
  };
  using inputs_tuple = typename buffers<std::make_index_sequence<layer_count>>::inputs;
  using outputs_tuple = typename buffers<std::make_index_sequence<layer_count>>::outputs;

  /// Receives of one kind posted at the start of a step (one per
  /// micro-batch, distinct tags), and spare buffers they reuse.
  template <class E>
  struct receive_queue {
    std::vector<std::optional<tensor_receive<E>>> pending;
    std::vector<E> spare;
  };
  template <class S>
  struct queues;
  template <std::size_t... I>
  struct queues<std::index_sequence<I...>> {
    using activations = std::tuple<receive_queue<in_t<I>>...>;
    using gradients = std::tuple<receive_queue<out_t<I>>...>;
  };

  /// One micro-batch in flight on this stage: what backward needs.
  struct slot {
    inputs_tuple in;        // the stage input, at index begin_
    outputs_tuple out;      // layer outputs (only the stage output when recomputing)
    outputs_tuple dy;       // gradient of the stage output, at index end_ - 1
    inputs_tuple dx;        // gradient of the stage input, at index begin_ (sent back)
    target_type target{};   // last stage: the micro-batch's targets
    request send_activation;
    request send_gradient;
    std::size_t rows = 0;
  };

  /// Calls f(integral_constant<I>) for the layers I in [lo, hi): the bridge
  /// from a runtime stage to the compile-time types of its layers.
  template <class F>
  static void for_range(std::size_t lo, std::size_t hi, F&& f);
  template <class F>
  static void for_range_reverse(std::size_t lo, std::size_t hi, F&& f);

  void prepare(const batch_type* batch, bool training);
  void run(const batch_type* batch, const pipeline::schedule& ops, bool training);
  std::size_t acquire(std::size_t mb);
  void release(std::size_t mb);
  void forward(std::size_t mb, const batch_type* batch, bool training);
  void backward(std::size_t mb);
  void receive_activation(std::size_t mb);
  void receive_gradient(std::size_t mb);
  void send_activation(std::size_t mb);
  void send_gradient(std::size_t mb);
  void note(const std::string& what);
  void post_receives(bool training);
  void poll_receives(std::size_t from);
  template <class E>
  static void take(receive_queue<E>& q, std::size_t mb, E& into);
  std::vector<std::size_t> micro_shape(const std::vector<std::size_t>& full, std::size_t mb) const;
  void refresh_views();
  std::size_t saved_bytes(const slot& s) const;
  const pipeline::schedule& forward_schedule();
  int tag_activation(std::size_t mb) const { return static_cast<int>(mb); }
  int tag_gradient(std::size_t mb) const { return static_cast<int>(micro_ + mb); }

  pipeline_options options_;
  mpi::communicator comm_;
  mpi::communicator pipe_;  // private duplicate: activations and gradients travel here
  int stage_ = 0;
  int stages_ = 1;
  pipeline::boundaries boundaries_;
  std::size_t begin_ = 0;
  std::size_t end_ = 0;
  std::tuple<std::optional<Parts>...> parts_;
  std::unique_ptr<optim::Optimizer<T>> optimizer_;
  std::vector<std::span<T>> params_;
  std::vector<std::span<const T>> grads_const_;
  std::vector<std::span<T>> grads_;
  pipeline::schedule train_schedule_;
  pipeline::schedule forward_schedule_;  // rebuilt for each forward-only run (micro_ may vary)
  pipeline_stats stats_;

  // The step in progress.
  std::size_t batch_rows_ = 0;
  std::size_t micro_ = 1;  // micro-batches of this step
  std::vector<std::size_t> stage_in_shape_;   // full-batch shape of this stage's input
  std::vector<std::size_t> stage_out_shape_;  // and of its output
  std::vector<std::unique_ptr<slot>> pool_;
  std::vector<std::size_t> free_;
  std::vector<std::size_t> slot_of_;          // micro-batch -> pool index
  std::size_t in_flight_ = 0;
  std::size_t saved_now_ = 0;
  double loss_sum_ = 0;      // last stage: sum over samples of the loss
  double correct_sum_ = 0;   // last stage, forward-only runs
  std::string failure_;
  typename queues<std::make_index_sequence<layer_count>>::activations activation_queues_;  // used at begin_
  typename queues<std::make_index_sequence<layer_count>>::gradients gradient_queues_;      // used at end_ - 1
  outputs_tuple recomputed_;  // scratch outputs when recomputing
  inputs_tuple dx_scratch_;   // gradients between layers of this stage
  output_type* collect_ = nullptr;  // predict(): the last stage gathers outputs here
};

// ===========================================================================
// Implementation
// ===========================================================================

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
                                                  " input, got " + shape_string(in));
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

template <class L, class Tuple>
std::size_t static_parameter_count(const Tuple& args, std::size_t index) {
  if constexpr (requires { std::apply([](const auto&... a) { return L::parameter_count(a...); }, args); }) {
    return static_cast<std::size_t>(std::apply([](const auto&... a) { return L::parameter_count(a...); }, args));
  } else {
    throw_error("ModelParallel: layer " + std::to_string(index) +
                " has no static parameter_count(constructor arguments...), so the partition cannot be balanced "
                "by parameter count: give pipeline_options::boundaries, or use profile_boundaries()");
  }
}

template <class P, class Tuple>
P make_part(const Tuple& args) {
  return std::make_from_tuple<P>(args);
}

}  // namespace detail

template <class... Parts>
template <class F>
void ModelParallel<Parts...>::for_range(std::size_t lo, std::size_t hi, F&& f) {
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    ((I >= lo && I < hi ? (f(std::integral_constant<std::size_t, I>{}), 0) : 0), ...);
  }(std::make_index_sequence<layer_count>{});
}

template <class... Parts>
template <class F>
void ModelParallel<Parts...>::for_range_reverse(std::size_t lo, std::size_t hi, F&& f) {
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    ((layer_count - 1 - I >= lo && layer_count - 1 - I < hi
          ? (f(std::integral_constant<std::size_t, layer_count - 1 - I>{}), 0)
          : 0),
     ...);
  }(std::make_index_sequence<layer_count>{});
}

template <class... Parts>
template <class... Args>
ModelParallel<Parts...>::ModelParallel(const std::tuple<Args...>& part_args,
                                       const optim::Optimizer<value_type>& optimizer, pipeline_options options,
                                       mpi::communicator comm)
    : options_(std::move(options)), comm_(std::move(comm)), optimizer_(optimizer.clone()) {
  static_assert(sizeof...(Args) == sizeof...(Parts) || sizeof...(Args) == layer_count,
                "parallax: ModelParallel needs one tuple of constructor arguments per layer (and optionally one "
                "for the loss)");
  warn_if_slow_blas(comm_);
  pipe_ = mpi::communicator(detail::private_comm(MPI_Comm(comm_)), mpi::comm_attach);
  stages_ = comm_.size();
  stage_ = comm_.rank();
  agree(comm_, [&] {
    PARALLAX_CHECK(options_.micro_batches >= 1, "ModelParallel: micro_batches must be at least 1");
    PARALLAX_CHECK(options_.clip_norm >= 0, "ModelParallel: clip_norm must not be negative");
    if (options_.boundaries.empty()) {
      std::vector<double> costs(layer_count);
      [&]<std::size_t... I>(std::index_sequence<I...>) {
        ((costs[I] = static_cast<double>(detail::static_parameter_count<part_t<I>>(std::get<I>(part_args), I))), ...);
      }(std::make_index_sequence<layer_count>{});
      boundaries_ = pipeline::balanced_boundaries(costs, static_cast<std::size_t>(stages_), options_.stage_speeds);
    } else {
      boundaries_ = options_.boundaries;
      pipeline::check_boundaries(boundaries_, layer_count, static_cast<std::size_t>(stages_));
    }
  });
  // Every rank must use the same cut.
  const std::vector<std::uint64_t> cut(boundaries_.begin(), boundaries_.end());
  agree_equal(comm_, detail::content_hash(cut.data(), cut.size() * sizeof(std::uint64_t)),
              "ModelParallel: the partition (pipeline_options::boundaries or stage_speeds)");
  begin_ = boundaries_[static_cast<std::size_t>(stage_)];
  end_ = boundaries_[static_cast<std::size_t>(stage_) + 1];
  // Build and initialise this stage's layers only; the loss on the last stage.
  agree(comm_, [&] {
    for_range(begin_, end_, [&](auto I) {
      auto& part = std::get<I()>(parts_);
      part.emplace(detail::make_part<part_t<I()>>(std::get<I()>(part_args)));
      part->initialize(options_.seed, I());
    });
    if (stage_ + 1 == stages_) {
      if constexpr (sizeof...(Args) == sizeof...(Parts)) {
        std::get<layer_count>(parts_).emplace(detail::make_part<loss_type>(std::get<layer_count>(part_args)));
      } else {
        std::get<layer_count>(parts_).emplace();
      }
    }
  });
  refresh_views();
  for (auto p : params_) stats_.local_parameters += p.size();
  train_schedule_ = pipeline::make_schedule(options_.schedule, static_cast<std::size_t>(stages_), options_.micro_batches);
}

template <class... Parts>
const pipeline::schedule& ModelParallel<Parts...>::forward_schedule() {
  // Each micro-batch straight through: receive, forward, send.
  forward_schedule_.assign(static_cast<std::size_t>(stages_), {});
  auto& ops = forward_schedule_[static_cast<std::size_t>(stage_)];
  for (std::size_t mb = 0; mb < micro_; ++mb) {
    if (stage_ > 0) ops.push_back({pipeline::op_kind::recv_activation, mb});
    ops.push_back({pipeline::op_kind::forward, mb});
    if (stage_ + 1 < stages_) ops.push_back({pipeline::op_kind::send_activation, mb});
  }
  return forward_schedule_;
}

template <class... Parts>
void ModelParallel<Parts...>::refresh_views() {
  params_.clear();
  grads_.clear();
  grads_const_.clear();
  for_range(begin_, end_, [&](auto I) {
    auto& layer = *std::get<I()>(parts_);
    if constexpr (HasLayerParameters<part_t<I()>>) {
      detail::for_each_tensor(layer.parameters(), [&](auto& t) { params_.emplace_back(t.data(), t.size()); });
      detail::for_each_tensor(layer.gradients(), [&](auto& t) {
        grads_.emplace_back(t.data(), t.size());
        grads_const_.emplace_back(t.data(), t.size());
      });
    }
  });
}

template <class... Parts>
template <class F>
void ModelParallel<Parts...>::for_each_local_layer(F&& f) {
  for_range(begin_, end_, [&](auto I) { f(I(), *std::get<I()>(parts_)); });
}

template <class... Parts>
void ModelParallel<Parts...>::note(const std::string& what) {
  if (failure_.empty()) failure_ = detail::with_rank(what);
}

template <class... Parts>
std::vector<std::size_t> ModelParallel<Parts...>::micro_shape(const std::vector<std::size_t>& full,
                                                              std::size_t mb) const {
  auto s = full;
  if (!s.empty()) s[0] = block_of(batch_rows_, static_cast<int>(micro_), static_cast<int>(mb)).size();
  return s;
}

template <class... Parts>
std::size_t ModelParallel<Parts...>::saved_bytes(const slot& s) const {
  std::size_t bytes = 0;
  for_range_reverse(begin_, end_, [&](auto I) {
    bytes += std::get<I()>(s.out).size() * sizeof(T);
  });
  const auto* self = this;
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    ((I == self->begin_ ? (bytes += std::get<I>(s.in).size() * sizeof(T), 0) : 0), ...);
  }(std::make_index_sequence<layer_count>{});
  return bytes;
}

// --- the step ---------------------------------------------------------------------

template <class... Parts>
void ModelParallel<Parts...>::prepare(const batch_type* batch, bool training) {
  // Shape pass: stage 0 sends its output shape to stage 1, which checks it
  // against its first layer, and so on; a failure travels on as a marker so
  // nobody waits, and one agree() makes every rank throw the same error.
  failure_.clear();
  std::string failure;
  std::vector<std::size_t> in_shape;
  std::string from;  // the layer that produced the input, for messages
  if (stage_ == 0) {
    const auto& x = batch->inputs;
    in_shape.assign(x.shape().begin(), x.shape().end());
    if (x.dimension() == 0 || in_shape[0] == 0) failure = "ModelParallel: the batch is empty";
    else if (training && in_shape[0] < options_.micro_batches)
      failure = "ModelParallel: a batch of " + std::to_string(in_shape[0]) + " samples cannot be cut into " +
                std::to_string(options_.micro_batches) + " micro-batches";
    if (!failure.empty()) failure = detail::with_rank(failure);
  } else {
    std::pair<std::vector<std::size_t>, std::string> message;
    std::string upstream_failure;
    pipe_.recv(stage_ - 1, 1 << 20, message);
    in_shape = std::move(message.first);
    from = std::move(message.second);
    if (in_shape.empty()) failure = "(an earlier stage failed)";
  }
  std::vector<std::size_t> shape = in_shape;
  if (failure.empty()) {
    for_range(begin_, end_, [&](auto I) {
      if (!failure.empty()) return;
      auto& layer = *std::get<I()>(parts_);
      try {
        auto next = detail::layer_output_shape(layer, shape);
        from = detail::layer_name(layer, I()) + " on stage " + std::to_string(stage_);
        shape = std::move(next);
      } catch (const std::exception& e) {
        const std::string where = I() == begin_ && stage_ > 0 ? "stage " + std::to_string(stage_) + " begins with " : "";
        failure = detail::with_rank("ModelParallel: " + where + detail::layer_name(layer, I()) +
                                    ", which cannot take " +
                                    (from.empty() ? std::string("the batch's inputs") : "the output of " + from) +
                                    " of shape " + detail::shape_string(shape) + ": " + detail::without_rank(e.what()));
      }
    });
  }
  if (stage_ + 1 < stages_) {
    std::pair<std::vector<std::size_t>, std::string> message{failure.empty() ? shape : std::vector<std::size_t>{}, from};
    pipe_.send(stage_ + 1, 1 << 20, message);
  } else if (failure.empty() && (training || batch->targets.size() > 0)) {
    const auto rows = batch->targets.dimension() == 0 ? 0 : batch->targets.shape()[0];
    if (rows != shape[0])
      failure = detail::with_rank("ModelParallel: the batch has " + std::to_string(shape[0]) + " inputs but " +
                                  std::to_string(rows) + " targets");
  }
  if (failure == "(an earlier stage failed)") failure.clear();  // that stage reports it
  // One collective agrees the verdict and that every rank passed the same
  // batch: stage 0 reads the inputs and the last stage the targets, so
  // different batches would train on mismatched pairs without a word.
  const std::uint64_t h = detail::content_hash(batch->targets.data(), batch->targets.size() * sizeof(target_value),
                                                detail::content_hash(batch->inputs.data(), batch->inputs.size() * sizeof(T)));
  std::array<std::uint64_t, 3> mine{h, ~h, failure.empty() ? 0u : 1u}, most{};
  mpi::all_reduce(comm_, mine.data(), 3, most.data(), mpi::maximum<std::uint64_t>());
  if (most[2] != 0) agree(comm_, failure);
  if (most[0] != h || most[1] != ~h)
    throw error("ModelParallel: the ranks passed different batches: every rank must pass the same batch (stage 0 "
                "reads its inputs, the last stage its targets)");
  stage_in_shape_ = in_shape;
  stage_out_shape_ = shape;
  batch_rows_ = in_shape[0];
  // Forward-only runs (predict, evaluate) take batches of any size: fewer
  // rows than micro-batches simply means fewer micro-batches.
  micro_ = training ? options_.micro_batches : std::min(batch_rows_, options_.micro_batches);
  in_flight_ = 0;
  saved_now_ = 0;
  loss_sum_ = 0;
  correct_sum_ = 0;
  slot_of_.assign(micro_, 0);
}

template <class... Parts>
std::size_t ModelParallel<Parts...>::acquire(std::size_t mb) {
  std::size_t index;
  if (!free_.empty()) {
    index = free_.back();
    free_.pop_back();
    pool_[index]->send_activation.wait();  // the buffers may still be on their way out
    pool_[index]->send_gradient.wait();
  } else {
    index = pool_.size();
    pool_.push_back(std::make_unique<slot>());
  }
  slot_of_[mb] = index;
  pool_[index]->rows = block_of(batch_rows_, static_cast<int>(micro_), static_cast<int>(mb)).size();
  return index;
}

template <class... Parts>
void ModelParallel<Parts...>::release(std::size_t mb) {
  free_.push_back(slot_of_[mb]);
}

template <class... Parts>
template <class E>
void ModelParallel<Parts...>::take(receive_queue<E>& q, std::size_t mb, E& into) {
  // Swap the arrived tensor into place (no copy); the slot's old buffer
  // becomes a spare for the next step's receives.
  auto& incoming = q.pending[mb]->wait();
  std::swap(incoming, into);
  q.spare.push_back(std::move(incoming));
  q.pending[mb].reset();
}

template <class... Parts>
void ModelParallel<Parts...>::post_receives(bool training) {
  // Every receive of the step is posted up front with its own tag, so
  // messages land while this stage computes.
  const std::size_t m = micro_;
  auto post = [&](auto& q, int source, auto tag_of) {
    q.pending.resize(m);
    for (std::size_t mb = 0; mb < m; ++mb) {
      using E = typename std::remove_cvref_t<decltype(q.spare)>::value_type;
      E buffer{};
      if (!q.spare.empty()) {
        buffer = std::move(q.spare.back());
        q.spare.pop_back();
      }
      q.pending[mb].emplace(pipe_, source, tag_of(mb), std::move(buffer));
    }
  };
  if (stage_ > 0)
    for_range(begin_, begin_ + 1, [&](auto I) {
      post(std::get<I()>(activation_queues_), stage_ - 1, [&](std::size_t mb) { return tag_activation(mb); });
    });
  if (training && stage_ + 1 < stages_)
    for_range(end_ - 1, end_, [&](auto I) {
      post(std::get<I()>(gradient_queues_), stage_ + 1, [&](std::size_t mb) { return tag_gradient(mb); });
    });
}

template <class... Parts>
void ModelParallel<Parts...>::poll_receives(std::size_t from) {
  // Moves the next receives along (posts their element receives as soon as
  // their headers are in) without waiting.
  const std::size_t to = std::min(from + 2, micro_);
  for_range(begin_, begin_ + 1, [&](auto I) {
    auto& q = std::get<I()>(activation_queues_);
    for (std::size_t mb = from; mb < to && mb < q.pending.size(); ++mb)
      if (q.pending[mb]) q.pending[mb]->test();
  });
  for_range(end_ - 1, end_, [&](auto I) {
    auto& q = std::get<I()>(gradient_queues_);
    for (std::size_t mb = from; mb < to && mb < q.pending.size(); ++mb)
      if (q.pending[mb]) q.pending[mb]->test();
  });
}

template <class... Parts>
void ModelParallel<Parts...>::receive_activation(std::size_t mb) {
  auto& s = *pool_[acquire(mb)];
  for_range(begin_, begin_ + 1, [&](auto I) {
    auto& x = std::get<I()>(s.in);
    take(std::get<I()>(activation_queues_), mb, x);
    const auto want = micro_shape(stage_in_shape_, mb);
    if (!std::equal(x.shape().begin(), x.shape().end(), want.begin(), want.end())) {
      note("ModelParallel: stage " + std::to_string(stage_) + " received an activation of shape " +
           detail::shape_string(x.shape()) + ", expected " + detail::shape_string(want));
      x.resize(want);
      x.fill(0);
    }
  });
}

template <class... Parts>
void ModelParallel<Parts...>::forward(std::size_t mb, const batch_type* batch, bool training) {
  if (stage_ == 0) {
    auto& s = *pool_[acquire(mb)];
    const auto b = block_of(batch_rows_, static_cast<int>(micro_), static_cast<int>(mb));
    data::slice_rows(batch->inputs, b.begin, b.size(), std::get<0>(s.in));
  }
  slot& s = *pool_[slot_of_[mb]];
  try {
    for_range(begin_, end_, [&](auto I) {
      auto& layer = *std::get<I()>(parts_);
      auto& y = options_.recompute && I() + 1 < end_ ? std::get<I()>(recomputed_) : std::get<I()>(s.out);
      if constexpr (I() == 0) {
        layer.forward(std::get<0>(s.in), y);
      } else {
        if (I() == begin_) {
          layer.forward(std::get<I()>(s.in), y);
        } else {
          const auto& x = options_.recompute ? std::get<I() - 1>(recomputed_) : std::get<I() - 1>(s.out);
          layer.forward(x, y);
        }
      }
    });
  } catch (const std::exception& e) {
    note(std::string("ModelParallel: forward on stage ") + std::to_string(stage_) + ": " + detail::without_rank(e.what()));
    for_range(end_ - 1, end_, [&](auto I) {
      auto& y = std::get<I()>(s.out);
      y.resize(micro_shape(stage_out_shape_, mb));
      y.fill(0);
    });
  }
  if (stage_ + 1 == stages_) {
    auto& loss = *std::get<layer_count>(parts_);
    const auto b = block_of(batch_rows_, static_cast<int>(micro_), static_cast<int>(mb));
    const auto& y = std::get<layer_count - 1>(s.out);
    const bool has_targets = batch->targets.size() > 0;
    try {
      if (has_targets) data::slice_rows(batch->targets, b.begin, b.size(), s.target);
      if (training) {
        auto& dy = std::get<layer_count - 1>(s.dy);
        const double l = static_cast<double>(loss.loss(y, s.target, dy));
        // d(batch mean)/dy = (rows / B) d(micro-batch mean)/dy.
        const T scale = static_cast<T>(static_cast<double>(b.size()) / static_cast<double>(batch_rows_));
        for (auto& v : dy) v *= scale;
        loss_sum_ += l * static_cast<double>(b.size());
      } else {
        if (has_targets) {
          loss_sum_ += static_cast<double>(loss.value(y, s.target)) * static_cast<double>(b.size());
          if constexpr (HasCorrectCount<loss_type>) correct_sum_ += static_cast<double>(loss.correct(y, s.target));
        }
        if (collect_) {
          auto& out = *collect_;
          const std::size_t row = y.size() / std::max<std::size_t>(1, b.size());
          std::copy_n(y.data(), y.size(), out.data() + b.begin * row);
        }
      }
    } catch (const std::exception& e) {
      note(std::string("ModelParallel: loss on stage ") + std::to_string(stage_) + ": " + detail::without_rank(e.what()));
      auto& dy = std::get<layer_count - 1>(s.dy);
      dy.resize(y.shape());
      dy.fill(0);
    }
  }
  if (training) {
    ++in_flight_;
    stats_.peak_micro_batches = std::max(stats_.peak_micro_batches, in_flight_);
    saved_now_ += saved_bytes(s);
    stats_.peak_saved_bytes = std::max(stats_.peak_saved_bytes, saved_now_);
  }
}

template <class... Parts>
void ModelParallel<Parts...>::send_activation(std::size_t mb) {
  auto& s = *pool_[slot_of_[mb]];
  for_range(end_ - 1, end_, [&](auto I) {
    s.send_activation = isend_tensor(pipe_, stage_ + 1, tag_activation(mb), std::get<I()>(s.out));
  });
}

template <class... Parts>
void ModelParallel<Parts...>::receive_gradient(std::size_t mb) {
  auto& s = *pool_[slot_of_[mb]];
  for_range(end_ - 1, end_, [&](auto I) {
    auto& dy = std::get<I()>(s.dy);
    take(std::get<I()>(gradient_queues_), mb, dy);
    const auto want = micro_shape(stage_out_shape_, mb);
    if (!std::equal(dy.shape().begin(), dy.shape().end(), want.begin(), want.end())) {
      note("ModelParallel: stage " + std::to_string(stage_) + " received a gradient of shape " +
           detail::shape_string(dy.shape()) + ", expected " + detail::shape_string(want));
      dy.resize(want);
      dy.fill(0);
    }
  });
}

template <class... Parts>
void ModelParallel<Parts...>::backward(std::size_t mb) {
  slot& s = *pool_[slot_of_[mb]];
  saved_now_ -= saved_bytes(s);
  --in_flight_;
  try {
    if (options_.recompute) {
      // Recompute the stage's inner outputs from the saved stage input.
      for_range(begin_, end_ - 1, [&](auto I) {
        auto& layer = *std::get<I()>(parts_);
        if constexpr (I() == 0) {
          layer.forward(std::get<0>(s.in), std::get<0>(recomputed_));
        } else {
          if (I() == begin_) layer.forward(std::get<I()>(s.in), std::get<I()>(recomputed_));
          else layer.forward(std::get<I() - 1>(recomputed_), std::get<I()>(recomputed_));
        }
      });
    }
    for_range_reverse(begin_, end_, [&](auto I) {
      auto& layer = *std::get<I()>(parts_);
      const auto& y = options_.recompute && I() + 1 < end_ ? std::get<I()>(recomputed_) : std::get<I()>(s.out);
      const auto& dy = [&]() -> const out_t<I()>& {
        if constexpr (I() + 1 < layer_count) {
          if (I() + 1 < end_) return std::get<I() + 1>(dx_scratch_);
        }
        return std::get<I()>(s.dy);
      }();
      auto& dx = I() == begin_ ? std::get<I()>(s.dx) : std::get<I()>(dx_scratch_);
      if constexpr (I() == 0) {
        // Nobody reads the chain's input gradient.
        if constexpr (HasParameterBackward<part_t<0>>) layer.backward_parameters(std::get<0>(s.in), y, dy);
        else layer.backward(std::get<0>(s.in), y, dy, dx);
      } else {
        if (I() == begin_) {
          layer.backward(std::get<I()>(s.in), y, dy, dx);
        } else {
          const auto& x = options_.recompute ? std::get<I() - 1>(recomputed_) : std::get<I() - 1>(s.out);
          layer.backward(x, y, dy, dx);
        }
      }
    });
  } catch (const std::exception& e) {
    note(std::string("ModelParallel: backward on stage ") + std::to_string(stage_) + ": " + detail::without_rank(e.what()));
    for_range(begin_, begin_ + 1, [&](auto I) {
      auto& dx = std::get<I()>(s.dx);
      dx.resize(micro_shape(stage_in_shape_, mb));
      dx.fill(0);
    });
  }
  if (stage_ == 0) release(mb);
}

template <class... Parts>
void ModelParallel<Parts...>::send_gradient(std::size_t mb) {
  auto& s = *pool_[slot_of_[mb]];
  for_range(begin_, begin_ + 1, [&](auto I) {
    s.send_gradient = isend_tensor(pipe_, stage_ - 1, tag_gradient(mb), std::get<I()>(s.dx));
  });
  release(mb);
}

template <class... Parts>
void ModelParallel<Parts...>::run(const batch_type* batch, const pipeline::schedule& ops, bool training) {
  using pipeline::op_kind;
  post_receives(training);
  for (const auto& o : ops[static_cast<std::size_t>(stage_)]) {
    poll_receives(o.micro_batch);
    switch (o.kind) {
      case op_kind::recv_activation: receive_activation(o.micro_batch); break;
      case op_kind::forward: forward(o.micro_batch, batch, training); break;
      case op_kind::send_activation: send_activation(o.micro_batch); break;
      case op_kind::recv_gradient: receive_gradient(o.micro_batch); break;
      case op_kind::backward: backward(o.micro_batch); break;
      case op_kind::send_gradient: send_gradient(o.micro_batch); break;
    }
    // Forward-only runs release a slot as soon as its output is gone.
    if (!training && (o.kind == op_kind::send_activation ||
                      (o.kind == op_kind::forward && stage_ + 1 == stages_)))
      release(o.micro_batch);
  }
  for (auto& s : pool_) {
    s->send_activation.wait();
    s->send_gradient.wait();
  }
}

template <class... Parts>
double ModelParallel<Parts...>::train_step(const batch_type& batch) {
  const auto start = std::chrono::steady_clock::now();
  prepare(&batch, true);
  for_range(begin_, end_, [&](auto I) {
    if constexpr (HasLayerParameters<part_t<I()>>)
      detail::for_each_tensor(std::get<I()>(parts_)->gradients(), [](auto& g) { g.fill(0); });
  });
  refresh_views();
  run(&batch, train_schedule_, true);
  // One collective: the loss (from the last stage), the squared gradient
  // norm (summed over stages) and whether any stage failed.
  std::array<double, 3> mine = {loss_sum_, 0.0, failure_.empty() ? 0.0 : 1.0};
  if (options_.clip_norm > 0) mine[1] = optim::squared_norm<T>(grads_const_);
  std::array<double, 3> total{};
  mpi::all_reduce(comm_, mine.data(), 3, total.data(), std::plus<double>());
  if (total[2] > 0) agree(comm_, failure_);
  if (options_.clip_norm > 0) {
    const double factor = optim::clip_factor(std::sqrt(total[1]), options_.clip_norm);
    if (factor < 1) optim::scale<T>(grads_, static_cast<T>(factor));
  }
  if (options_.lr_schedule) optimizer_->set_learning_rate(options_.lr_schedule(optimizer_->steps()));
  optimizer_->step(params_, grads_const_);
  stats_.last_step_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return total[0] / static_cast<double>(batch_rows_);
}

template <class... Parts>
auto ModelParallel<Parts...>::predict(const input_type& x) -> output_type {
  batch_type batch{x, target_type{}};
  output_type out;
  prepare(&batch, false);
  if (stage_ + 1 == stages_) {
    out.resize(stage_out_shape_);
    collect_ = &out;
  }
  run(&batch, forward_schedule(), false);
  collect_ = nullptr;
  double failed = failure_.empty() ? 0.0 : 1.0, any = 0;
  mpi::all_reduce(comm_, failed, any, std::plus<double>());
  if (any > 0) agree(comm_, failure_);
  // The last stage has the output; everyone gets it.
  std::vector<std::size_t> shape = stage_out_shape_;
  mpi::broadcast(comm_, shape, stages_ - 1);
  if (stage_ + 1 != stages_) out.resize(shape);
  broadcast(comm_, std::span<T>(out.data(), out.size()), stages_ - 1);
  return out;
}

template <class... Parts>
template <class... Args>
pipeline::boundaries ModelParallel<Parts...>::profile_boundaries(const std::tuple<Args...>& part_args,
                                                                 const input_type& sample,
                                                                 std::vector<double> stage_speeds,
                                                                 mpi::communicator comm, int repeats) {
  std::vector<double> costs(layer_count, 0.0);
  if (comm.rank() == 0) {
    agree(comm, [&] {
      // One layer at a time: build, time forward + backward on the current
      // activation, keep its output as the next layer's input, destroy it.
      auto run_from = [&]<std::size_t I>(auto& self, const in_t<I>& x, std::integral_constant<std::size_t, I>) -> void {
        auto layer = detail::make_part<part_t<I>>(std::get<I>(part_args));
        layer.initialize(0, I);
        out_t<I> y;
        in_t<I> dx;
        layer.forward(x, y);
        out_t<I> dy = y;
        dy.fill(1);
        const auto t0 = std::chrono::steady_clock::now();
        for (int r = 0; r < repeats; ++r) {
          layer.forward(x, y);
          layer.backward(x, y, dy, dx);
        }
        costs[I] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / repeats;
        if constexpr (I + 1 < layer_count) self(self, y, std::integral_constant<std::size_t, I + 1>{});
      };
      run_from(run_from, sample, std::integral_constant<std::size_t, 0>{});
    });
  } else {
    agree(comm, std::string());
  }
  broadcast(comm, std::span<double>(costs), 0);
  return agree(comm, [&] { return pipeline::balanced_boundaries(costs, static_cast<std::size_t>(comm.size()), stage_speeds); });
}

}  // namespace parallax
