// SPDX-License-Identifier: BSL-1.0
// idx_load: how fast data::read_idx loads a gzip IDX file (default:
// Fashion-MNIST's train-images-idx3-ubyte.gz, 60000 images of 28 x 28 bytes),
// next to the baseline of the same file read into memory and inflated by
// zlib alone (one inflate() call into a buffer of the right size, no checks
// and no conversion), in one process.
//
// --warmup loads first, then --repeats of each, alternating; reported as the
// median and min-max of the wall time and the median of the process's CPU
// time (which other programs on a shared machine disturb less). MB/s counts
// the decompressed bytes (1 MB = 1e6 B), from the wall time.
//
//   build/benchmarks/idx_load [--file PATH] [--repeats 7] [--warmup 1] [--json idx_load.json]
#include "bench.hpp"

#include <parallax/data/idx.hpp>

#include <boost/mpi/environment.hpp>

#include <zlib.h>

#include <time.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

/// The file's bytes, inflated by zlib into one buffer sized from the gzip
/// trailer (a single-member file).
std::size_t zlib_only(const std::string& path) {
  std::vector<unsigned char> gz(std::filesystem::file_size(path));
  std::ifstream in(path, std::ios::binary);
  in.read(reinterpret_cast<char*>(gz.data()), static_cast<std::streamsize>(gz.size()));
  if (in.gcount() != static_cast<std::streamsize>(gz.size())) throw std::runtime_error(path + ": short read");
  if (gz.size() < 18) throw std::runtime_error(path + ": too short for gzip");
  const std::size_t size = gz[gz.size() - 4] | (gz[gz.size() - 3] << 8) | (gz[gz.size() - 2] << 16) |
                           (std::size_t{gz[gz.size() - 1]} << 24);
  std::vector<unsigned char> out(size);
  z_stream s{};
  if (inflateInit2(&s, 15 + 16) != Z_OK) throw std::runtime_error("inflateInit2 failed");
  s.next_in = const_cast<unsigned char*>(gz.data());
  s.avail_in = static_cast<uInt>(gz.size());
  s.next_out = out.data();
  s.avail_out = static_cast<uInt>(out.size());
  const int rc = inflate(&s, Z_FINISH);
  inflateEnd(&s);
  if (rc != Z_STREAM_END) throw std::runtime_error(path + ": zlib inflate failed");
  return out.size();
}

double cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

}  // namespace

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  boost::mpi::communicator world;
  const bench::args args(argc, argv);
  const auto path = args.get("file", std::string(parallax::data::default_fashion_mnist_dir) +
                                         "/train-images-idx3-ubyte.gz");
  const long repeats = args.get("repeats", 7L);
  const long warmup = args.get("warmup", 1L);
  const auto json = args.get("json", std::string());

  std::size_t decoded = 0;
  std::vector<double> ours, baseline, ours_cpu, baseline_cpu;
  for (long i = 0; i < warmup + repeats; ++i) {
    double c0 = cpu_seconds();
    const double a = bench::timed(world, [&] { decoded = parallax::data::read_idx<std::uint8_t>(path).size(); });
    double c1 = cpu_seconds();
    const double b = bench::timed(world, [&] { zlib_only(path); });
    const double c2 = cpu_seconds();
    if (i >= warmup) {
      ours.push_back(a);
      baseline.push_back(b);
      ours_cpu.push_back(c1 - c0);
      baseline_cpu.push_back(c2 - c1);
    }
  }
  if (world.rank() != 0) return 0;
  const auto o = bench::summarize(ours), z = bench::summarize(baseline);
  const double o_cpu = bench::summarize(ours_cpu).median, z_cpu = bench::summarize(baseline_cpu).median;
  const double bytes = static_cast<double>(decoded);  // elements are bytes; the 16-byte header is not counted
  std::printf("%s: %zu bytes of elements\n", path.c_str(), decoded);
  std::printf("                      seconds, median (min-max)   MB/s   CPU s\n");
  std::printf("read_idx<uint8_t>     %-26s %6.0f  %6.4f   at %.2f x zlib alone\n", bench::spread_text(o, 1.0, 4).c_str(),
              bytes / o.median / 1e6, o_cpu, z.median / o.median);
  std::printf("zlib inflate alone    %-26s %6.0f  %6.4f\n", bench::spread_text(z, 1.0, 4).c_str(), bytes / z.median / 1e6,
              z_cpu);
  if (!json.empty()) {
    auto row = [&](const char* name, const bench::stats& s, double cpu) {
      return bench::row()
          .set("name", name)
          .set("cpu_s", cpu)
          .set("bytes", bytes)
          .set("median_s", s.median)
          .set("min", s.min)
          .set("max", s.max)
          .set("MB_per_s", bytes / s.median / 1e6)
          .set("repeats", static_cast<double>(repeats));
    };
    bench::write_json(json, "idx_load", {row("read_idx", o, o_cpu), row("zlib inflate alone", z, z_cpu)},
                      bench::environment_meta(world).set("file", path).set("zlib", zlibVersion()));
    std::cout << "wrote " << json << "\n";
  }
  return 0;
}
