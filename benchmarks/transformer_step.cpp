// SPDX-License-Identifier: BSL-1.0
// transformer_step: training steps of the GPT-style model of
// examples/char_lm.cpp (examples/gpt.hpp: vocabulary 96, context 64, width
// 128, 4 heads, two blocks; float) under DataParallel over every rank, Adam,
// a fixed batch of sequences PER RANK (default 16). The parallax side of the
// comparison with PyTorch (benchmarks/pytorch_transformer.py, the same model,
// shapes, batch and optimizer; benchmarks/run_vs_pytorch.sh --model
// transformer runs both).
//
// The batches are random token ids drawn from a fixed seed (the targets are
// the inputs shifted by one token), the same on every run; a few warm-up
// steps on a scratch model, then --repeats runs of --steps steps, each from
// the same freshly initialised model, timed as the slowest rank's. Prints the
// median and min-max run time and tokens per second (all ranks' tokens).
//
//   OPENBLAS_NUM_THREADS=1 mpiexec -n 2 -x OPENBLAS_NUM_THREADS build/benchmarks/transformer_step
//       [--batch 16] [--steps 30] [--repeats 3] [--warmup-steps 3] [--lr 0.001] [--json out.json]
#include "bench.hpp"
#include "../examples/gpt.hpp"

#include <parallax/data/batch.hpp>
#include <parallax/data_parallel.hpp>
#include <parallax/detail/random.hpp>
#include <parallax/optim/adam.hpp>

#include <boost/mpi/environment.hpp>

#include <cstdint>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

namespace {

using Ids = xt::xtensor<std::int64_t, 2>;
using Batch = parallax::data::Batch<Ids, Ids>;

/// Step s's batch on this rank: `batch` random sequences of context + 1
/// ids, inputs the first context, targets the last.
Batch make_batch(const gpt::shape& shape, std::size_t batch, long step, int rank) {
  parallax::detail::rng g(parallax::detail::key(11, static_cast<std::uint64_t>(step), static_cast<std::uint64_t>(rank)));
  Batch b{Ids::from_shape({batch, shape.context}), Ids::from_shape({batch, shape.context})};
  for (std::size_t r = 0; r < batch; ++r) {
    std::int64_t next = static_cast<std::int64_t>(g.below(shape.vocabulary));
    for (std::size_t s = 0; s < shape.context; ++s) {
      b.inputs(r, s) = next;
      next = static_cast<std::int64_t>(g.below(shape.vocabulary));
      b.targets(r, s) = next;
    }
  }
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  boost::mpi::communicator world;
  const bench::args args(argc, argv);
  const gpt::shape shape;
  const auto batch = static_cast<std::size_t>(args.get("batch", 16L));
  const long steps = args.get("steps", 30L), repeats = args.get("repeats", 3L), warmup = args.get("warmup-steps", 3L);
  const double lr = std::stod(args.get("lr", std::string("0.001")));
  const auto json = args.get("json", std::string());
  const std::uint64_t seed = 1;
  const bool root = world.rank() == 0;
  const parallax::optim::Adam<float> adam({.lr = lr});
  const auto describe = gpt::make(shape).describe();
  const auto parameters = gpt::make(shape).parameter_count();
  if (root)
    std::cout << "transformer_step: " << describe << ", " << parameters << " parameters, float; "
              << bench::count_text(world.size(), "rank") << " x " << batch << " sequences of " << shape.context
              << " tokens; Adam lr " << lr << "; BLAS core " << bench::blas_core()
              << ", OPENBLAS_NUM_THREADS=" << bench::env_or_unset("OPENBLAS_NUM_THREADS") << "\n";
  std::vector<Batch> batches;
  for (long s = 0; s < steps; ++s) batches.push_back(make_batch(shape, batch, s, world.rank()));

  auto make_trainer = [&] {
    auto net = gpt::make(shape);
    net.initialize(seed);
    return parallax::DataParallel(std::move(net), adam, {}, world);
  };
  {  // Warm-up: BLAS, page faults, MPI connections; a scratch model.
    auto scratch = make_trainer();
    for (long s = 0; s < warmup; ++s) scratch.train_step(batches[static_cast<std::size_t>(s % steps)]);
  }
  std::vector<double> times;
  double first_loss = 0, last_loss = 0;
  for (long r = 0; r < repeats; ++r) {
    auto trainer = make_trainer();
    times.push_back(bench::timed(world, [&] {
      for (long s = 0; s < steps; ++s) {
        const double loss = trainer.train_step(batches[static_cast<std::size_t>(s)]);
        if (s == 0) first_loss = loss;
        last_loss = loss;
      }
    }));
    if (root) std::printf("  run %ld: %.3f s, loss %.4f -> %.4f\n", r + 1, times.back(), first_loss, last_loss);
  }
  if (!root) return 0;
  const auto st = bench::summarize(times);
  const double tokens = static_cast<double>(steps) * static_cast<double>(batch * shape.context * world.size());
  const std::string name = "parallax " + bench::count_text(world.size(), "rank");
  std::printf("%s: %ld steps in %s s (median, min-max), %.0f tokens/s, loss %.4f -> %.4f\n", name.c_str(), steps,
              bench::spread_text(st).c_str(), tokens / st.median, first_loss, last_loss);
  if (!json.empty()) {
    const std::vector<bench::row> rows = {bench::row()
                                              .set("name", name)
                                              .set("framework", "parallax")
                                              .set("processes", world.size())
                                              .set("batch_per_process", static_cast<double>(batch))
                                              .set("steps", static_cast<double>(steps))
                                              .set("run_s", st.median)
                                              .set("min", st.min)
                                              .set("max", st.max)
                                              .set("repeats", static_cast<double>(repeats))
                                              .set("tokens", tokens)
                                              .set("tokens_per_s", tokens / st.median)
                                              .set("first_loss", first_loss)
                                              .set("last_loss", last_loss)};
    bench::write_json(json, "transformer_step", rows,
                      bench::environment_meta(world)
                          .set("model", describe)
                          .set("parameters", static_cast<double>(parameters))
                          .set("lr", lr));
    std::cout << "wrote " << json << "\n";
  }
}
