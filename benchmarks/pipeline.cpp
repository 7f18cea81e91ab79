// SPDX-License-Identifier: BSL-1.0
// pipeline: ModelParallel on a chain of equal-cost layers (8 x Linear(1024,
// 1024) + ReLU, float, mean-squared error). Measured pipeline efficiency =
// serial time / (p x pipeline time) against the ideal m / (m + p - 1), for
// both schedules and m = 1, 2, 4, 8, 16 micro-batches; the serial time is the
// same chain on one rank (rank 0 over MPI_COMM_SELF) with the whole batch.
// Smaller micro-batches also make each GEMM less efficient, so a second
// efficiency compares with one rank running the same m micro-batches
// (gradient accumulation): that isolates what the schedule costs (bubble,
// messages). Schedules: GPipe, 1F1B and zero bubble (ZB-H1 style: the
// weight-gradient GEMMs fill the waits), taking turns step by step for each
// m so that the machine's slow phases fall on all three alike; the last line
// gives zero bubble's step time over 1F1B's. Also the peak bytes of saved
// activations per stage for each.
//
//   mpiexec -n 2 build/benchmarks/pipeline [--batch 2048] [--steps 15] [--json pipeline.json]
//   mpiexec -n 4 --oversubscribe build/benchmarks/pipeline   (4 stages on 2 cores: oversubscribed)
#include "bench.hpp"

#include <parallax/model_parallel.hpp>
#include <parallax/nn/activation.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/loss.hpp>
#include <parallax/optim/sgd.hpp>

#include <boost/mpi/environment.hpp>

#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace {
using L = parallax::nn::Linear<float>;
using R = parallax::nn::ReLU<float>;
using Chain = parallax::ModelParallel<L, R, L, R, L, R, L, R, L, R, L, R, L, R, L, R, parallax::nn::MeanSquaredError<float>>;

auto chain_args(int width) {
  const auto lin = std::tuple{width, width};
  const auto relu = std::tuple{};
  return std::tuple{lin, relu, lin, relu, lin, relu, lin, relu, lin, relu, lin, relu, lin, relu, lin, relu, std::tuple{}};
}

using Batch = Chain::batch_type;

Batch make_batch(std::size_t n, std::size_t width) {
  parallax::detail::rng g(1);
  Batch b;
  b.inputs = xt::zeros<float>({n, width});
  b.targets = xt::zeros<float>({n, width});
  for (auto& v : b.inputs) v = static_cast<float>(g.uniform() - 0.5);
  for (auto& v : b.targets) v = static_cast<float>(g.uniform() - 0.5);
  return b;
}

/// Median seconds per step (slowest rank) of `steps` steps after warm-up.
bench::stats time_steps(const boost::mpi::communicator& comm, Chain& chain, const Batch& batch, long steps) {
  for (int i = 0; i < 3; ++i) chain.train_step(batch);
  std::vector<double> t;
  for (long i = 0; i < steps; ++i) t.push_back(bench::timed(comm, [&] { chain.train_step(batch); }));
  return bench::summarize(t);
}
}  // namespace

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  boost::mpi::communicator world;
  const bench::args args(argc, argv);
  const auto batch_size = static_cast<std::size_t>(args.get("batch", 2048L));
  const int width = static_cast<int>(args.get("width", 1024L));
  const long steps = args.get("steps", 15L);
  const auto json = args.get("json", std::string());
  const int p = world.size();
  const auto batch = make_batch(batch_size, static_cast<std::size_t>(width));
  parallax::optim::SGD<float> sgd({.lr = 1e-4});

  // Serial: the whole chain on rank 0 alone, the whole batch at once. Timed
  // before and after the pipelines; the faster of the two is the baseline
  // (the conservative choice: it makes the efficiency lower).
  auto time_serial = [&](std::size_t micro_batches = 1) {
    double t = 0;
    boost::mpi::communicator self(MPI_COMM_SELF, boost::mpi::comm_attach);
    if (world.rank() == 0) {
      Chain one(chain_args(width), sgd, {.micro_batches = micro_batches}, self);
      t = time_steps(self, one, batch, steps).median;
    }
    bench::idle_barrier(world);  // the other ranks sleep meanwhile, leaving rank 0 its core
    boost::mpi::broadcast(world, t, 0);
    return t;
  };
  const double serial_before = time_serial();
  double serial = serial_before;
  std::vector<bench::row> rows;
  if (world.rank() == 0)
    std::cout << "pipeline: 8 x Linear(" << width << ", " << width << ") + ReLU, float, batch " << batch_size << ", "
              << bench::count_text(p, "stage") << (p > 2 ? " (oversubscribed on 2 cores)" : "") << ", BLAS " << bench::blas_core()
              << "\n";
  struct measured {
    const char* name;
    std::size_t m;
    bench::stats t;
    double stage0, most;
  };
  std::vector<measured> results;
  // For each m the three schedules take turns, one step each per round
  // (bench::alternate), so a slow phase of the machine falls on all alike.
  const parallax::pipeline::schedule_kind kinds[] = {parallax::pipeline::schedule_kind::gpipe,
                                                     parallax::pipeline::schedule_kind::one_f_one_b,
                                                     parallax::pipeline::schedule_kind::zero_bubble};
  std::map<std::size_t, std::vector<double>> medians;  // m -> step median per schedule
  for (std::size_t m : {1, 2, 4, 8, 16}) {
    std::vector<std::unique_ptr<Chain>> chains;
    bench::paths ways;
    for (auto kind : kinds) {
      chains.push_back(std::make_unique<Chain>(chain_args(width), sgd, parallax::pipeline_options{.micro_batches = m, .schedule = kind}, world));
      ways.emplace_back(parallax::pipeline::schedule_name(kind), [&chain = *chains.back(), &batch] { chain.train_step(batch); });
    }
    const auto times = bench::alternate(world, ways, 3, steps);
    for (std::size_t k = 0; k < chains.size(); ++k) {
      double peak = static_cast<double>(chains[k]->stats().peak_saved_bytes), most = 0;
      boost::mpi::all_reduce(world, peak, most, boost::mpi::maximum<double>());
      double stage0 = peak;
      boost::mpi::broadcast(world, stage0, 0);
      const auto t = bench::summarize(times[k]);
      medians[m].push_back(t.median);
      results.push_back({parallax::pipeline::schedule_name(kinds[k]), m, t, stage0, most});
    }
  }
  const double serial_after = time_serial();
  serial = std::min(serial_before, serial_after);
  std::map<std::size_t, double> serial_micro;  // one rank, the same micro-batches
  for (std::size_t m : {1, 2, 4, 8, 16}) serial_micro[m] = m == 1 ? serial : time_serial(m);
  if (world.rank() == 0) {
    std::printf("serial step: %.2f ms before, %.2f ms after; baseline %.2f ms\n", serial_before * 1e3,
                serial_after * 1e3, serial * 1e3);
    std::printf("schedule     m | step ms (min-max)        | efficiency | ideal | eff/ideal | vs same micro | peak MiB\n");
    for (const auto& r : results) {
      const double efficiency = serial / (p * r.t.median);
      const double ideal = static_cast<double>(r.m) / static_cast<double>(r.m + static_cast<std::size_t>(p) - 1);
      const double same_micro = serial_micro[r.m] / (p * r.t.median);
      std::printf("%-11s %3zu | %-24s | %10.3f | %5.3f | %9.3f | %6.3f (%5.3f) | %8.2f\n", r.name, r.m,
                  bench::spread_text(r.t, 1e3, 2).c_str(), efficiency, ideal, efficiency / ideal, same_micro,
                  same_micro / ideal, r.stage0 / (1 << 20));
      rows.push_back(bench::row()
                         .set("name", std::string("pipeline_") + r.name)
                         .set("ranks", p)
                         .set("micro_batches", static_cast<double>(r.m))
                         .set("batch", static_cast<double>(batch_size))
                         .set("step_s", r.t.median)
                         .set("step_min_s", r.t.min)
                         .set("step_max_s", r.t.max)
                         .set("serial_s", serial)
                         .set("efficiency", efficiency)
                         .set("ideal", ideal)
                         .set("ratio_to_ideal", efficiency / ideal)
                         .set("serial_same_micro_s", serial_micro[r.m])
                         .set("efficiency_same_micro", same_micro)
                         .set("ratio_to_ideal_same_micro", same_micro / ideal)
                         .set("peak_saved_bytes_stage0", r.stage0)
                         .set("peak_saved_bytes_max", r.most));
    }
    std::printf("zero_bubble / 1f1b step time, same rounds:");
    for (const auto& [m, t] : medians) std::printf(" m=%zu %.3f", m, t[2] / t[1]);
    std::printf("\n");
  }
  if (world.rank() == 0 && !json.empty()) {
    bench::write_json(json, "pipeline", rows,
                      bench::row().set("blas_core", bench::blas_core()).set("steps", static_cast<double>(steps)));
    std::cout << "wrote " << json << "\n";
  }
}
