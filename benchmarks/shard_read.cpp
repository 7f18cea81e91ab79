// SPDX-License-Identifier: BSL-1.0
// shard_read: read MB/s per rank of the NumPy and CSV shard readers
// (data::load_npy_shard, data::read_csv_shard: each rank its block_of rows
// of float32 inputs [rows, features] and int32 targets), next to pread() of
// the same .npy bytes into fresh memory in the same run (the file system
// alone). Rank 0 writes the files first (save_npy, and a CSV with the same
// values), so the reads come from the page cache: this measures the readers,
// not a disk. MB/s per rank = the bytes of values one rank gets (float32
// inputs + int32 targets, 1 MB = 1e6 B) / the slowest rank's time; for CSV
// the text it parses is larger (the row's bytes are printed). --warmup
// rounds, then --repeats rounds of the paths, alternating; medians.
//
//   mpiexec -n 2 build/benchmarks/shard_read [--rows 100000] [--features 64] [--repeats 7] [--warmup 1]
//           [--json shard_read.json]
#include "bench.hpp"

#include <parallax/core/block.hpp>
#include <parallax/data/csv.hpp>
#include <parallax/data/npy.hpp>

#include <boost/mpi/collectives/broadcast.hpp>
#include <boost/mpi/environment.hpp>
#include <boost/serialization/string.hpp>
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using X = xt::xtensor<float, 2>;
using Y = xt::xtensor<std::int32_t, 1>;

}  // namespace

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  boost::mpi::communicator world;
  const bench::args args(argc, argv);
  const auto rows = static_cast<std::size_t>(args.get("rows", 100000L));
  const auto features = static_cast<std::size_t>(args.get("features", 64L));
  const long repeats = args.get("repeats", 7L);
  const long warmup = args.get("warmup", 1L);
  const auto json = args.get("json", std::string());
  namespace fs = std::filesystem;
  namespace data = parallax::data;
  std::string dir;
  if (world.rank() == 0) dir = (fs::temp_directory_path() / ("parallax-shard-read-" + std::to_string(::getpid()))).string();
  boost::mpi::broadcast(world, dir, 0);
  const std::string x_path = dir + "/x.npy", y_path = dir + "/y.npy", csv_path = dir + "/d.csv";
  if (world.rank() == 0) {
    fs::create_directories(dir);
    X x = xt::zeros<float>({rows, features});
    for (std::size_t i = 0; i < x.size(); ++i) x.data()[i] = static_cast<float>(i % 1000) * 0.25f;
    Y y = xt::zeros<std::int32_t>({rows});
    for (std::size_t i = 0; i < rows; ++i) y(i) = static_cast<std::int32_t>(i % 10);
    data::save_npy(x_path, x);
    data::save_npy(y_path, y);
    std::ofstream csv(csv_path);
    for (std::size_t f = 0; f < features; ++f) csv << "f" << f << ",";
    csv << "label\n";
    for (std::size_t r = 0; r < rows; ++r) {
      for (std::size_t f = 0; f < features; ++f) csv << x(r, f) << ",";
      csv << y(r) << "\n";
    }
  }
  world.barrier();

  const parallax::block mine = parallax::block_of(rows, world.size(), world.rank());
  const double bytes = static_cast<double>(mine.size() * (features * sizeof(float) + sizeof(std::int32_t)));
  const double csv_bytes_per_row = static_cast<double>(fs::file_size(csv_path)) / static_cast<double>(rows + 1);
  const data::csv_options csv_options{.target = "label"};
  // The .npy header is 128 bytes here (save_npy pads it to 64-byte
  // alignment; read it rather than assume).
  const std::uint64_t x_at = data::read_npy_header(x_path).data_offset;
  const std::uint64_t y_at = data::read_npy_header(y_path).data_offset;
  double checksum = 0;
  const bench::paths paths = {
      {"load_npy_shard",
       [&] {
         const auto shard = data::load_npy_shard<X, Y>(x_path, y_path, mine);
         checksum += shard.local().inputs()(0, 1);
       }},
      {"read_csv_shard",
       [&] {
         const auto shard = data::read_csv_shard<X, Y>(csv_path, mine, csv_options);
         checksum += shard.local().inputs()(0, 1);
       }},
      {"pread of the .npy bytes",
       [&] {
         auto xs = std::unique_ptr<float[]>(new float[mine.size() * features]);
         auto ys = std::unique_ptr<std::int32_t[]>(new std::int32_t[mine.size()]);
         for (const auto& [path, out, count, at] :
              {std::tuple{x_path, reinterpret_cast<char*>(xs.get()), mine.size() * features * sizeof(float),
                          x_at + mine.begin * features * sizeof(float)},
               std::tuple{y_path, reinterpret_cast<char*>(ys.get()), mine.size() * sizeof(std::int32_t),
                          y_at + mine.begin * sizeof(std::int32_t)}}) {
           const int fd = ::open(path.c_str(), O_RDONLY);
           if (fd < 0) throw std::runtime_error("cannot open " + path);
           bench::pread_all(fd, out, count, at);
           ::close(fd);
         }
         checksum += xs[1];
       }},
  };
  const auto times = bench::alternate(world, paths, warmup, repeats);
  world.barrier();
  if (world.rank() == 0) fs::remove_all(dir);
  if (world.rank() != 0) return 0;
  std::printf("inputs [%zu, %zu] float32 + targets [%zu] int32, %d rank(s), %.1f MB of values per rank, CSV %.0f bytes "
              "per row (checksum %g)\n",
              rows, features, rows, world.size(), bytes / 1e6, csv_bytes_per_row, checksum);
  const auto out = bench::rate_rows(paths, times, bytes, 2, "pread", repeats);
  if (!json.empty()) {
    bench::write_json(json, "shard_read", out,
                      bench::environment_meta(world)
                          .set("rows", static_cast<double>(rows))
                          .set("features", static_cast<double>(features))
                          .set("csv_bytes_per_row", csv_bytes_per_row));
    std::cout << "wrote " << json << "\n";
  }
  return 0;
}
