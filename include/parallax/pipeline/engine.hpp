#pragma once
// SPDX-License-Identifier: BSL-1.0
/// A pipeline's collective operations on one batch, as every stage runs them
/// together: building this rank's stage, the shape pass with its agreed
/// verdict, a run of a schedule on the stage's runner and the first failure
/// of that run, a forward-only run whose output every rank receives, and,
/// after a step whose gradient is not finite, the run that locates where the
/// first non-finite value appeared (nonfinite.hpp). A trainer (ModelParallel)
/// adds the update, the epoch loop and its options on top.

#include <parallax/core/agree.hpp>
#include <parallax/core/comm.hpp>
#include <parallax/core/error.hpp>
#include <parallax/detail/mpi.hpp>
#include <parallax/pipeline/nonfinite.hpp>
#include <parallax/pipeline/partition.hpp>
#include <parallax/pipeline/runner.hpp>
#include <parallax/pipeline/schedule.hpp>
#include <parallax/pipeline/shape_pass.hpp>
#include <parallax/pipeline/stage.hpp>
#include <parallax/training/update.hpp>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>
#include <boost/serialization/vector.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace parallax::pipeline {

/// One rank's stage of a pipeline over `comm` (rank r holds stage r) and the
/// runs every stage takes part in.
template <class Stage, class Batch>
class engine {
 public:
  using value_type = typename Stage::value_type;
  using output_type = typename Stage::template out_t<Stage::layer_count - 1>;

  engine() = default;
  /// Collective. Builds layers [cut[r], cut[r + 1]) of `part_args` on rank r
  /// (the loss on the last), agreed: a layer that fails to build on one rank
  /// is the same error on every rank.
  template <class... Args>
  engine(const mpi::communicator& comm, const boundaries& cut, const std::tuple<Args...>& part_args,
         std::uint64_t seed, std::size_t micro_batches, bool recompute);

  int stage() const { return stage_; }
  int stages() const { return stages_; }
  bool last() const { return stage_ + 1 == stages_; }
  Stage& layers() { return layers_; }
  const Stage& layers() const { return layers_; }
  pipeline::runner<Stage, Batch>& runner() { return runner_; }
  /// This rank's first failure in the current run, if any.
  const std::optional<error>& failure() const { return failure_; }

  /// Collective. The shape pass and its verdict, agreed by every rank (with
  /// the check that every rank passed the same batch; `failed`: this rank's
  /// failure before the run, which wins), then a fresh run on the runner.
  void prepare(const Batch& batch, bool training, std::optional<error> failed = std::nullopt);
  /// Collective. This stage's part of `ops` on `batch` (after prepare());
  /// failures are kept in failure(), never thrown, so no neighbour waits.
  void run(const Batch& batch, const schedule& ops, bool training) {
    runner_.run(layers_, ops[static_cast<std::size_t>(stage_)], batch, training, recompute_,
                [this](error what) {
                  if (!failure_) failure_ = std::move(what);
                });
  }
  /// Collective. A forward-only run of `batch` (loss sums in the runner's head).
  void forward(const Batch& batch, std::optional<error> failed = std::nullopt) {
    prepare(batch, false, std::move(failed));
    run(batch, forward_only(static_cast<std::size_t>(stages_), runner_.micro_batches()), false);
  }
  /// Collective. The chain's output for `batch`'s inputs, on every rank; a
  /// failure on any stage is thrown on every rank.
  output_type predict(const Batch& batch);
  /// Collective, after a training run of `ops` on `batch` whose gradient is
  /// not finite on some stage: runs it once more with every stage watching
  /// and throws, on every rank, error(nonfinite) naming where the first
  /// non-finite value appeared (`who` and `step` for the message). Returns
  /// when no stage can name it. The layers' gradients are those of the run.
  void locate_nonfinite(const Batch& batch, const schedule& ops, const char* who, std::uint64_t step);

 private:
  mpi::communicator comm_;
  int stage_ = 0;
  int stages_ = 1;
  std::size_t micro_batches_ = 1;
  bool recompute_ = false;
  Stage layers_;
  pipeline::runner<Stage, Batch> runner_;  // on a private duplicate of comm_
  std::optional<error> failure_;
};

// ---------------------------------------------------------------------------

template <class Stage, class Batch>
template <class... Args>
engine<Stage, Batch>::engine(const mpi::communicator& comm, const boundaries& cut,
                             const std::tuple<Args...>& part_args, std::uint64_t seed, std::size_t micro_batches,
                             bool recompute)
    : comm_(comm), stage_(comm.rank()), stages_(comm.size()), micro_batches_(micro_batches), recompute_(recompute) {
  mpi::communicator pipe(parallax::detail::private_comm(MPI_Comm(comm_)), mpi::comm_attach);
  const std::size_t begin = cut[static_cast<std::size_t>(stage_)];
  const std::size_t end = cut[static_cast<std::size_t>(stage_) + 1];
  agree(comm_, [&] { layers_.build(begin, end, part_args, seed, last()); });
  runner_ = pipeline::runner<Stage, Batch>(std::move(pipe), stage_, stages_, begin, end);
}

template <class Stage, class Batch>
void engine<Stage, Batch>::prepare(const Batch& batch, bool training, std::optional<error> failed) {
  failure_.reset();
  auto shapes = shape_pass(runner_.communicator(), stage_, stages_, layers_, batch, training, micro_batches_);
  if (failed) shapes.failure = std::move(failed);
  agree_shape_pass(comm_, shapes, batch);
  // Forward-only runs (predict, evaluate) take batches of any size: fewer
  // rows than micro-batches simply means fewer micro-batches.
  runner_.start(shapes, training ? micro_batches_ : std::min(shapes.in[0], micro_batches_));
}

template <class Stage, class Batch>
auto engine<Stage, Batch>::predict(const Batch& batch) -> output_type {
  output_type out;
  prepare(batch, false);
  if (last()) {
    out.resize(runner_.output_shape());
    runner_.head().collect_into(&out);
  }
  run(batch, forward_only(static_cast<std::size_t>(stages_), runner_.micro_batches()), false);
  runner_.head().collect_into(nullptr);
  sum_and_agree(comm_, std::array<double, 0>{}, failure_);
  // The last stage has the output; everyone gets it.
  std::vector<std::size_t> shape = runner_.output_shape();
  mpi::broadcast(comm_, shape, stages_ - 1);
  if (!last()) out.resize(shape);
  broadcast(comm_, std::span<value_type>(out.data(), out.size()), stages_ - 1);
  return out;
}

template <class Stage, class Batch>
void engine<Stage, Batch>::locate_nonfinite(const Batch& batch, const schedule& ops, const char* who,
                                            std::uint64_t step) {
  nonfinite_watch watch;
  struct unwatch {
    Stage& layers;
    ~unwatch() { layers.watch(nullptr); }
  } off{layers_};
  prepare(batch, true);
  layers_.zero_gradients();
  layers_.watch(&watch);
  run(batch, ops, true);
  std::optional<error> where = failure_;
  if (!where)
    if (auto what = nonfinite_origin(layers_, watch, std::isfinite(runner_.head().loss_sum())))
      where = error(error_kind::nonfinite,
                    training::nonfinite_message(who, *what + " on stage " + std::to_string(stage_), step),
                    parallax::detail::this_rank());
  agree(comm_, where);
}

}  // namespace parallax::pipeline
