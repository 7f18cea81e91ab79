// SPDX-License-Identifier: BSL-1.0
// allreduce: parallax::allreduce_mean of a flat float buffer against raw MPI
// on the same buffer, 4 KiB to 64 MiB: the baseline is one in-place
// MPI_Allreduce(MPI_SUM) followed by the scaling loop (the same result); the
// bare MPI_Allreduce (sum only, no scaling) is timed too. Warm-up, then
// repeats rotating the order; times are the slowest rank's; prints median and
// min-max per size and the ratios.
//
//   mpiexec -n 2 build/benchmarks/allreduce [--reps 20] [--json allreduce.json]
#include "bench.hpp"

#include <parallax/core/comm.hpp>

#include <boost/mpi/environment.hpp>

#include <functional>
#include <iostream>
#include <span>
#include <vector>

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  boost::mpi::communicator world;
  const bench::args args(argc, argv);
  const long reps = args.get("reps", 20L);
  const long warmup = args.get("warmup", 3L);
  const std::size_t min_bytes = static_cast<std::size_t>(args.get("min-bytes", 4096L));
  const std::size_t max_bytes = static_cast<std::size_t>(args.get("max-bytes", 64L << 20));
  const auto json = args.get("json", std::string());

  std::vector<bench::row> rows;
  if (world.rank() == 0)
    std::cout << "BLAS core " << bench::blas_core() << "\n"
              << "allreduce at " << bench::count_text(world.size(), "rank")
              << ", float: parallax::allreduce_mean vs MPI_Allreduce(sum) + scaling (raw mean)\n"
              << "     size |  ours median (min-max) ms | raw mean median (min-max) | ours/raw | sum only | ours/sum\n";
  for (std::size_t bytes = min_bytes; bytes <= max_bytes; bytes *= 4) {
    const std::size_t n = bytes / sizeof(float);
    std::vector<float> buffer(n, 1.0f + static_cast<float>(world.rank()));
    auto ours = [&] { parallax::allreduce_mean(world, std::span<float>(buffer)); };
    const float scale = 1.0f / static_cast<float>(world.size());
    auto raw_sum = [&] {
      MPI_Allreduce(MPI_IN_PLACE, buffer.data(), static_cast<int>(n), MPI_FLOAT, MPI_SUM, MPI_Comm(world));
    };
    auto raw_mean = [&] {
      raw_sum();
      for (auto& x : buffer) x *= scale;
    };
    const std::function<void()> candidates[] = {ours, raw_mean, raw_sum};
    for (long i = 0; i < warmup; ++i)
      for (const auto& f : candidates) bench::timed(world, f);
    std::vector<double> times[3];
    for (long i = 0; i < reps; ++i)
      for (int k = 0; k < 3; ++k) {  // rotate the order so drift hits all alike
        const int c = static_cast<int>((i + k) % 3);
        times[c].push_back(bench::timed(world, candidates[c]));
      }
    const auto a = bench::summarize(times[0]);
    const auto b = bench::summarize(times[1]);
    const auto s = bench::summarize(times[2]);
    const double ratio = a.median / b.median;
    if (world.rank() == 0) {
      std::printf("%9s | %25s | %25s | %6.3f | %8.3f | %6.3f\n", bench::bytes_text(bytes).c_str(),
                  bench::spread_text(a, 1e3).c_str(), bench::spread_text(b, 1e3).c_str(), ratio, s.median * 1e3,
                  a.median / s.median);
      rows.push_back(bench::row()
                         .set("name", "allreduce_mean_float")
                         .set("ranks", world.size())
                         .set("bytes", static_cast<double>(bytes))
                         .set("ours_s", a.median)
                         .set("ours_min_s", a.min)
                         .set("ours_max_s", a.max)
                         .set("baseline_s", b.median)
                         .set("baseline_min_s", b.min)
                         .set("baseline_max_s", b.max)
                         .set("ratio", ratio)
                         .set("raw_sum_only_s", s.median)
                         .set("ratio_to_sum_only", a.median / s.median));
    }
  }
  if (world.rank() == 0 && !json.empty()) {
    bench::write_json(json, "allreduce", rows, bench::environment_meta(world).set("reps", static_cast<double>(reps)));
    std::cout << "wrote " << json << "\n";
  }
}
