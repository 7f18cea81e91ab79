// SPDX-License-Identifier: BSL-1.0
// data_parallel: time per training step of DataParallel<Sequential<Linear(784,
// 2048), ReLU, Linear(2048, 2048), ReLU, Linear(2048, 10), SoftmaxCrossEntropy>>
// in float (SGD with momentum, synthetic data), at one rank and at all ranks
// with the SAME global batch (default 128), in one run:
//
//   1 rank     rank 0 alone over MPI_COMM_SELF with the whole global batch while
//              the other ranks sleep at a barrier: DataParallel, and a
//              hand-written loop (loss_and_gradient + momentum SGD) as baseline
//   N ranks    every rank with global / N samples: DataParallel at several
//              bucket sizes, and a hand-written loop that all-reduces each
//              gradient tensor in place with raw MPI_Allreduce
//   bound      rank 0 alone with one rank's share (global / N samples): no
//              communication and nobody sharing the memory bus, so
//              t(1 rank) / t(bound) is the most any N-rank run can gain
//   reproducible  DataParallel with reproducible_atom = global / N (one atom
//              per rank at N ranks), at 1 and at N ranks: its overhead
//              against the default mode, and whether both runs end with the
//              same loss bit for bit
//
// Configurations run in rounds, in a rotating order (so drift hits all alike),
// each round a few warm-up steps then timed steps; a step's time is the slowest
// rank's. Prints median and min-max per configuration, where the DataParallel
// step's time went (DataParallel::last_timing()), the speedup t(1 rank) /
// t(N ranks), the parallel efficiency speedup / N and the share of the step
// spent in the all-reduce.
//
//   OPENBLAS_NUM_THREADS=1 mpiexec -n 2 -x OPENBLAS_NUM_THREADS build/benchmarks/data_parallel
//       [--global-batch 128] [--rounds 3] [--steps 10] [--warmup 3] [--buckets 1,4,16,64]
//       [--atom K (default global / N; 0: no reproducible rows)] [--json data_parallel.json]
#include "bench.hpp"

#include <parallax/data/batch.hpp>
#include <parallax/data_parallel.hpp>
#include <parallax/nn/activation.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/loss.hpp>
#include <parallax/nn/sequential.hpp>
#include <parallax/optim/sgd.hpp>

#include <boost/mpi/environment.hpp>

#include <algorithm>
#include <cstring>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <memory>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

namespace {

using Net = parallax::nn::Sequential<parallax::nn::Linear<float>, parallax::nn::ReLU<float>,
                                     parallax::nn::Linear<float>, parallax::nn::ReLU<float>,
                                     parallax::nn::Linear<float>, parallax::nn::SoftmaxCrossEntropy<float>>;
using Batch = Net::batch_type;

constexpr std::size_t inputs = 784, hidden = 2048, classes = 10;
constexpr double lr = 0.01, momentum = 0.9;

Net make_net() {
  Net net{parallax::nn::Linear<float>(inputs, hidden), parallax::nn::ReLU<float>{},
          parallax::nn::Linear<float>(hidden, hidden), parallax::nn::ReLU<float>{},
          parallax::nn::Linear<float>(hidden, classes), parallax::nn::SoftmaxCrossEntropy<float>{}};
  net.initialize(1);
  return net;
}

/// Rows [first, first + count) of the global batch: the same samples on every
/// rank, so N ranks see exactly the samples of the 1-rank run.
Batch make_batch(std::size_t global, std::size_t first, std::size_t count) {
  std::mt19937 gen(42);
  std::uniform_real_distribution<float> pixel(0.0f, 1.0f);
  std::uniform_int_distribution<std::int32_t> label(0, classes - 1);
  Batch all;
  all.inputs.resize({global, inputs});
  all.targets.resize({global});
  for (auto& x : all.inputs) x = pixel(gen);
  for (auto& t : all.targets) t = label(gen);
  Batch part;
  part.inputs.resize({count, inputs});
  part.targets.resize({count});
  std::copy_n(all.inputs.data() + first * inputs, count * inputs, part.inputs.data());
  std::copy_n(all.targets.data() + first, count, part.targets.data());
  return part;
}

/// The baseline without DataParallel: the model's own loss_and_gradient, an
/// optional raw in-place MPI_Allreduce per gradient tensor, and momentum SGD
/// (PyTorch's rule) with the 1 / ranks scaling fused into it.
class HandWritten {
 public:
  HandWritten(Net net, MPI_Comm comm) : net_(std::move(net)), comm_(comm) {
    MPI_Comm_size(comm_, &ranks_);
    std::apply([&](auto&... t) { (params_.emplace_back(t.data(), t.size()), ...); }, net_.parameters());
    std::apply([&](auto&... t) { (grads_.emplace_back(t.data(), t.size()), ...); }, net_.gradients());
    for (auto p : params_) velocity_.emplace_back(p.size(), 0.0f);
  }

  double step(const Batch& batch) {
    double loss = net_.loss_and_gradient(batch);
    if (ranks_ > 1) {
      for (auto g : grads_)
        MPI_Allreduce(MPI_IN_PLACE, g.data(), static_cast<int>(g.size()), MPI_FLOAT, MPI_SUM, comm_);
      MPI_Allreduce(MPI_IN_PLACE, &loss, 1, MPI_DOUBLE, MPI_SUM, comm_);
    }
    const float scale = 1.0f / static_cast<float>(ranks_);
    const auto m = static_cast<float>(momentum), rate = static_cast<float>(lr);
    for (std::size_t i = 0; i < params_.size(); ++i) {
      float* p = params_[i].data();
      const float* g = grads_[i].data();
      float* v = velocity_[i].data();
      const std::size_t n = params_[i].size();
      if (first_)
        for (std::size_t j = 0; j < n; ++j) p[j] -= rate * (v[j] = scale * g[j]);
      else
        for (std::size_t j = 0; j < n; ++j) p[j] -= rate * (v[j] = m * v[j] + scale * g[j]);
    }
    first_ = false;
    return loss / ranks_;
  }

 private:
  Net net_;
  MPI_Comm comm_;
  int ranks_ = 1;
  bool first_ = true;
  std::vector<std::span<float>> params_, grads_;
  std::vector<std::vector<float>> velocity_;
};

/// One configuration: how to take a step, over which communicator, and what
/// its steps measured.
struct Config {
  std::string name;
  std::string role;              // "1 rank", "N ranks" or "bound"
  bool alone = false;            // rank 0 only, over MPI_COMM_SELF
  bool share = false;            // one rank's share of the global batch (else all of it)
  std::size_t bucket_bytes = 0;  // 0: hand-written (one all-reduce per tensor)
  std::size_t atom = 0;          // reproducible_atom of the DataParallel rows
  std::unique_ptr<parallax::DataParallel<Net>> trainer{};
  std::unique_ptr<HandWritten> hand{};
  std::vector<double> step_s{}, compute_s{}, comm_min_s{}, comm_max_s{}, update_s{};
  double last_loss = 0;
};

std::vector<std::size_t> parse_list(const std::string& text) {
  std::vector<std::size_t> values;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty()) values.push_back(static_cast<std::size_t>(std::stoul(item)));
  return values;
}

double median(std::vector<double> v) { return v.empty() ? 0.0 : bench::summarize(std::move(v)).median; }

}  // namespace

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  boost::mpi::communicator world;
  boost::mpi::communicator self(MPI_COMM_SELF, boost::mpi::comm_attach);
  const bench::args args(argc, argv);
  const auto global = static_cast<std::size_t>(args.get("global-batch", 128L));
  const long rounds = args.get("rounds", 3L);
  const long steps = args.get("steps", 10L);
  const long warmup = args.get("warmup", 3L);
  const auto bucket_mib = parse_list(args.get("buckets", std::string("1,4,16,64")));
  const auto json = args.get("json", std::string());
  const int n = world.size();
  const bool root = world.rank() == 0;
  if (global % static_cast<std::size_t>(n) != 0) {
    if (root) std::cerr << "data_parallel: --global-batch " << global << " is not a multiple of " << n << " ranks\n";
    return 1;
  }
  const std::size_t local = global / static_cast<std::size_t>(n);
  const auto atom = static_cast<std::size_t>(args.get("atom", static_cast<long>(local)));

  const Batch whole = make_batch(global, 0, global);
  const Batch mine = make_batch(global, local * static_cast<std::size_t>(world.rank()), local);
  const parallax::optim::SGD<float> sgd({.lr = lr, .momentum = momentum});

  // Every configuration starts from the same weights and steps on the same
  // samples, so their final losses agree (parallel equals serial).
  std::vector<Config> configs;
  const std::string all_ranks = bench::count_text(n, "rank");
  auto add = [&](Config c, bool data_parallel, std::size_t bucket_bytes) {
    c.bucket_bytes = data_parallel ? bucket_bytes : 0;
    if (!c.alone || root) {
      const boost::mpi::communicator& comm = c.alone ? self : world;
      if (data_parallel)
        c.trainer = std::make_unique<parallax::DataParallel<Net>>(
            make_net(), sgd,
            parallax::data_parallel_options{.bucket_bytes = bucket_bytes, .reproducible_atom = c.atom}, comm);
      else
        c.hand = std::make_unique<HandWritten>(make_net(), MPI_Comm(comm));
    }
    configs.push_back(std::move(c));
  };
  const std::size_t default_bucket = parallax::data_parallel_options{}.bucket_bytes;
  add({.name = "hand-written, 1 rank", .role = "1 rank", .alone = true}, false, 0);
  add({.name = "DataParallel, 1 rank", .role = "1 rank", .alone = true}, true, default_bucket);
  add({.name = "hand-written, " + all_ranks, .role = "N ranks"}, false, 0);
  for (auto mib : bucket_mib)
    add({.name = "DataParallel, " + all_ranks + ", " + bench::bytes_text(mib << 20) + " buckets", .role = "N ranks"},
        true, mib << 20);
  if (n > 1) {
    const std::string share = "1 rank alone, batch " + std::to_string(local);
    add({.name = "hand-written, " + share, .role = "bound", .alone = true, .share = true}, false, 0);
    add({.name = "DataParallel, " + share, .role = "bound", .alone = true, .share = true}, true, default_bucket);
  }
  if (atom > 0) {
    const std::string atoms = "reproducible (atoms of " + std::to_string(atom) + "), ";
    add({.name = "DataParallel " + atoms + "1 rank", .role = "1 rank", .alone = true, .atom = atom}, true,
        default_bucket);
    add({.name = "DataParallel " + atoms + all_ranks, .role = "N ranks", .atom = atom}, true, default_bucket);
  }

  const std::size_t parameters = make_net().parameter_count();
  if (root) {
    std::cout << "data_parallel: " << make_net().describe() << ", " << parameters << " parameters (float, "
              << bench::bytes_text(parameters * sizeof(float)) << " of gradients)\n"
              << "SGD lr " << lr << " momentum " << momentum << "; global batch " << global << " = " << n << " x "
              << local << "; " << rounds << " rounds x (" << warmup << " warm-up + " << steps
              << " timed steps) per configuration\n"
              << "BLAS core " << bench::blas_core() << ", OPENBLAS_NUM_THREADS="
              << bench::env_or_unset("OPENBLAS_NUM_THREADS") << "\n";
  }

  for (long round = 0; round < rounds; ++round) {
    for (std::size_t k = 0; k < configs.size(); ++k) {
      auto& c = configs[(k + static_cast<std::size_t>(round)) % configs.size()];
      if (c.alone && !root) {
        bench::idle_barrier(world);  // sleep while rank 0 runs alone
        continue;
      }
      const boost::mpi::communicator& comm = c.alone ? self : world;
      const Batch& batch = c.alone && !c.share ? whole : mine;  // rank 0's share is the first rows
      std::vector<double> compute, comm_t, update;
      for (long s = 0; s < warmup + steps; ++s) {
        const double t = bench::timed(comm, [&] {
          c.last_loss = c.trainer ? c.trainer->train_step(batch) : c.hand->step(batch);
        });
        if (s < warmup) continue;
        c.step_s.push_back(t);
        if (c.trainer) {
          const auto& timing = c.trainer->last_timing();
          compute.push_back(timing.compute);
          comm_t.push_back(timing.communicate);
          update.push_back(timing.update);
        }
      }
      if (c.trainer) {
        // Per step: the slowest rank's compute and update; the all-reduce's
        // least time over ranks (the last rank to arrive waits for nobody)
        // and its most (including the wait for the slowest rank).
        const auto count = static_cast<int>(compute.size());
        std::vector<double> most(compute.size()), least(compute.size());
        boost::mpi::all_reduce(comm, compute.data(), count, most.data(), boost::mpi::maximum<double>());
        c.compute_s.insert(c.compute_s.end(), most.begin(), most.end());
        boost::mpi::all_reduce(comm, update.data(), count, most.data(), boost::mpi::maximum<double>());
        c.update_s.insert(c.update_s.end(), most.begin(), most.end());
        boost::mpi::all_reduce(comm, comm_t.data(), count, most.data(), boost::mpi::maximum<double>());
        boost::mpi::all_reduce(comm, comm_t.data(), count, least.data(), boost::mpi::minimum<double>());
        c.comm_max_s.insert(c.comm_max_s.end(), most.begin(), most.end());
        c.comm_min_s.insert(c.comm_min_s.end(), least.begin(), least.end());
      }
      if (c.alone) bench::idle_barrier(world);
    }
  }

  if (!root) return 0;
  // Speedups against the 1-rank run of the same kind: DataParallel rows
  // against DataParallel on one rank, hand-written against hand-written.
  const double t1_hand = median(configs[0].step_s);
  const double t1_dp = median(configs[1].step_s);
  const double target = 0.85 * n;
  std::printf("\n%-40s | %5s | %24s | %7s %7s %7s | %7s %6s %6s | %s\n", "configuration", "ranks",
              "step ms median (min-max)", "compute", "comm", "update", "speedup", "effic.", "comm %", "final loss");
  std::vector<bench::row> rows;
  const Config* best = nullptr;
  for (const auto& c : configs) {
    const auto st = bench::summarize(c.step_s);
    const int ranks = c.alone ? 1 : n;
    const double speedup = (c.trainer ? t1_dp : t1_hand) / st.median;
    const double efficiency = speedup / (c.role == "bound" ? n : ranks);
    const double comm = median(c.comm_min_s);
    const double share = c.trainer ? comm / st.median : 0.0;
    if (c.trainer && c.role == "N ranks" && c.atom == 0 && (best == nullptr || st.median < median(best->step_s))) best = &c;
    auto ms = [](double seconds) { return seconds * 1e3; };
    const std::string step = bench::spread_text(st, 1e3, 2);
    if (c.trainer)
      std::printf("%-40s | %5d | %24s | %7.2f %7.2f %7.2f | %7.3f %6.3f %6.1f | %.6f\n", c.name.c_str(), ranks,
                  step.c_str(), ms(median(c.compute_s)), ms(comm), ms(median(c.update_s)), speedup, efficiency,
                  100 * share, c.last_loss);
    else
      std::printf("%-40s | %5d | %24s | %7s %7s %7s | %7.3f %6.3f %6s | %.6f\n", c.name.c_str(), ranks,
                  step.c_str(), "-", "-", "-", speedup, efficiency, "-", c.last_loss);
    rows.push_back(bench::row()
                       .set("name", c.name)
                       .set("kind", c.trainer ? "DataParallel" : "hand-written")
                       .set("role", c.role)
                       .set("ranks", ranks)
                       .set("global_batch", static_cast<double>(global))
                       .set("batch_per_rank", static_cast<double>(c.alone && !c.share ? global : local))
                       .set("step_s", st.median)
                       .set("min", st.min)
                       .set("max", st.max)
                       .set("samples", static_cast<double>(c.step_s.size()))
                       .set("speedup", speedup)
                       .set("efficiency", efficiency)
                       .set("comm_share", share)
                       .set("compute_s", median(c.compute_s))
                       .set("comm_s", comm)
                       .set("comm_with_wait_s", median(c.comm_max_s))
                       .set("update_s", median(c.update_s))
                       .set("bucket_bytes", static_cast<double>(c.bucket_bytes))
                       .set("reproducible_atom", static_cast<double>(c.atom))
                       .set("final_loss", c.last_loss));
  }
  std::printf("\nspeedup = t(1 rank, batch %zu) / t(this row), same kind; efficiency = speedup / %d; comm %% = the "
              "all-reduce's time on the rank that waited least / step time\n",
              global, n);
  const auto row_of = [&](const std::string& role, bool data_parallel, std::size_t bucket) -> const Config* {
    for (const auto& c : configs)
      if (c.role == role && c.atom == 0 && (c.trainer != nullptr) == data_parallel &&
          (!data_parallel || c.bucket_bytes == bucket))
        return &c;
    return nullptr;
  };
  if (const Config* c = row_of("N ranks", true, default_bucket)) {
    const double speedup = t1_dp / median(c->step_s);
    std::printf("DataParallel at %s, %s buckets (the default): speedup %.3f (target >= %.2f: %s), "
                "efficiency %.3f, all-reduce %.1f%% of the step\n",
                all_ranks.c_str(), bench::bytes_text(default_bucket).c_str(), speedup, target, speedup >= target ? "met" : "MISSED", speedup / n,
                100 * median(c->comm_min_s) / median(c->step_s));
  }
  if (best != nullptr)
    std::printf("fastest bucket size: %s (speedup %.3f)\n", bench::bytes_text(best->bucket_bytes).c_str(),
                t1_dp / median(best->step_s));
  const Config* bound_dp = row_of("bound", true, default_bucket);
  const Config* bound_hand = row_of("bound", false, 0);
  if (bound_dp != nullptr && bound_hand != nullptr)
    std::printf("bound: one rank alone with batch %zu takes %.2f ms (DataParallel) / %.2f ms (hand-written): with "
                "free communication and no rank slowing another, %d ranks would reach a speedup of %.3f / %.3f\n",
                local, 1e3 * median(bound_dp->step_s), 1e3 * median(bound_hand->step_s), n,
                t1_dp / median(bound_dp->step_s), t1_hand / median(bound_hand->step_s));
  const Config* exact_1 = nullptr;
  const Config* exact_n = nullptr;
  for (const auto& c : configs)
    if (c.atom > 0) (c.alone ? exact_1 : exact_n) = &c;
  const Config* default_n = row_of("N ranks", true, default_bucket);
  if (exact_1 != nullptr && exact_n != nullptr && default_n != nullptr) {
    const bool same = std::memcmp(&exact_1->last_loss, &exact_n->last_loss, sizeof(double)) == 0;
    std::printf("reproducible mode, atoms of %zu: step time %.3fx the default mode's at %s, %.3fx at 1 rank; final "
                "loss at 1 rank %.17g, at %s %.17g: %s\n",
                atom, median(exact_n->step_s) / median(default_n->step_s), all_ranks.c_str(),
                median(exact_1->step_s) / t1_dp, exact_1->last_loss, all_ranks.c_str(), exact_n->last_loss,
                same ? "bitwise equal" : "DIFFERENT");
  }
  if (!json.empty()) {
    bench::write_json(json, "data_parallel", rows,
                      bench::environment_meta(world)
                          .set("model", make_net().describe())
                          .set("parameters", static_cast<double>(parameters))
                          .set("global_batch", static_cast<double>(global))
                          .set("rounds", static_cast<double>(rounds))
                          .set("steps_per_round", static_cast<double>(steps))
                          .set("warmup_per_round", static_cast<double>(warmup))
                          .set("lr", lr)
                          .set("momentum", momentum)
                          .set("target_speedup", target));
    std::cout << "wrote " << json << "\n";
  }
}
