// SPDX-License-Identifier: BSL-1.0
// hdf5_read: read MB/s per rank of data::load_hdf5_shard (each rank its
// block_of rows of a float32 inputs dataset [rows, features] and an int32
// targets dataset, through MPI-IO) with independent and with collective
// transfers, next to two baselines in the same run: each rank reading the
// same hyperslabs through HDF5 without MPI-IO (its own file handle, the
// sec2 driver), and pread() of the same bytes at the datasets' offsets (the
// file system alone; the datasets are contiguous), into fresh memory and
// into memory already touched.
//
// Rank 0 writes the file first (with save_hdf5), so the reads come from the
// page cache: this measures the libraries' overhead, not a disk. Every path
// reads into memory it has just allocated (as load_hdf5_shard returns a new
// dataset), so first-touch page faults are in every time alike; the last
// row shows what they cost. --warmup
// rounds, then --repeats rounds of the four, alternating; the slowest rank's
// time per read; MB/s per rank = the bytes one rank reads (1 MB = 1e6 B) /
// that time (median over repeats).
//
//   mpiexec -n 2 build/benchmarks/hdf5_read [--rows 200000] [--features 128] [--repeats 7] [--warmup 1]
//           [--file PATH] [--json hdf5_read.json]
#include "bench.hpp"

#include <parallax/core/block.hpp>
#include <parallax/data/hdf5.hpp>

#include <boost/mpi/collectives/broadcast.hpp>
#include <boost/mpi/environment.hpp>
#include <boost/serialization/string.hpp>
#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using X = xt::xtensor<float, 2>;
using Y = xt::xtensor<std::int32_t, 1>;

/// A buffer of n elements, not touched: every read goes into fresh memory,
/// as load_hdf5_shard's does (its page faults are part of every path's time).
template <class T>
std::unique_ptr<T[]> fresh(std::size_t n) {
  return std::unique_ptr<T[]>(new T[n]);
}

/// Rows `rows` of dataset `name` through HDF5 without MPI-IO into `out`.
template <class T>
void hdf5_serial(hid_t file, const char* name, hid_t type, parallax::block rows, std::size_t row_elements,
                 T* out) {
  const hid_t set = H5Dopen2(file, name, H5P_DEFAULT);
  const hid_t space = H5Dget_space(set);
  const hsize_t start[2] = {rows.begin, 0}, count[2] = {rows.size(), row_elements};
  const int dims = H5Sget_simple_extent_ndims(space);
  H5Sselect_hyperslab(space, H5S_SELECT_SET, start, nullptr, count, nullptr);
  const hid_t memory = H5Screate_simple(dims, count, nullptr);
  if (H5Dread(set, type, memory, space, H5P_DEFAULT, out) < 0) throw std::runtime_error("H5Dread failed");
  H5Sclose(memory);
  H5Sclose(space);
  H5Dclose(set);
}

/// The byte offset of a contiguous dataset in the file.
std::uint64_t offset_of(const std::string& path, const char* name) {
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  const hid_t set = H5Dopen2(file, name, H5P_DEFAULT);
  const haddr_t at = H5Dget_offset(set);
  H5Dclose(set);
  H5Fclose(file);
  if (at == HADDR_UNDEF) throw std::runtime_error(std::string(name) + " is not contiguous");
  return at;
}

}  // namespace

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  boost::mpi::communicator world;
  const bench::args args(argc, argv);
  const auto rows = static_cast<std::size_t>(args.get("rows", 200000L));
  const auto features = static_cast<std::size_t>(args.get("features", 128L));
  const long repeats = args.get("repeats", 7L);
  const long warmup = args.get("warmup", 1L);
  const auto json = args.get("json", std::string());
  std::string path = args.get("file", std::string());
  const bool own_file = path.empty();
  if (own_file && world.rank() == 0) path = (std::filesystem::temp_directory_path() / "parallax-hdf5-read.h5").string();
  boost::mpi::broadcast(world, path, 0);
  if (world.rank() == 0) {
    X x = xt::zeros<float>({rows, features});
    for (std::size_t i = 0; i < x.size(); ++i) x.data()[i] = static_cast<float>(i % 1000) * 0.25f;
    Y y = xt::zeros<std::int32_t>({rows});
    for (std::size_t i = 0; i < rows; ++i) y(i) = static_cast<std::int32_t>(i % 10);
    parallax::data::save_hdf5(path, x, y);
  }
  world.barrier();

  const parallax::block mine = parallax::block_of(rows, world.size(), world.rank());
  const double bytes = static_cast<double>(mine.size() * (features * sizeof(float) + sizeof(std::int32_t)));
  const std::uint64_t x_at = offset_of(path, "inputs"), y_at = offset_of(path, "targets");
  namespace data = parallax::data;
  double checksum = 0;
  // The last baseline's buffers, touched once here: the read without page faults.
  std::vector<float> touched_x(mine.size() * features);
  std::vector<std::int32_t> touched_y(mine.size());
  auto ours = [&](data::hdf5_transfer transfer) {
    return [&, transfer] {
      const auto shard = data::load_hdf5_shard<X, Y>(world, path, {.transfer = transfer});
      checksum += shard.local().inputs()(0, 1);
    };
  };
  const bench::paths paths = {
      {"load_hdf5_shard independent", ours(data::hdf5_transfer::independent)},
      {"load_hdf5_shard collective", ours(data::hdf5_transfer::collective)},
      {"HDF5 without MPI-IO (sec2)",
       [&] {
         auto xs = fresh<float>(mine.size() * features);
         auto ys = fresh<std::int32_t>(mine.size());
         const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
         hdf5_serial(file, "inputs", H5T_NATIVE_FLOAT, mine, features, xs.get());
         hdf5_serial(file, "targets", H5T_NATIVE_INT32, mine, 1, ys.get());
         H5Fclose(file);
         checksum += xs[1];
       }},
      {"pread of the same bytes",
       [&] {
         const int fd = ::open(path.c_str(), O_RDONLY);
         if (fd < 0) throw std::runtime_error("cannot open " + path);
         auto xs = fresh<float>(mine.size() * features);
         auto ys = fresh<std::int32_t>(mine.size());
         bench::pread_all(fd, reinterpret_cast<char*>(xs.get()), mine.size() * features * sizeof(float),
                   x_at + mine.begin * features * sizeof(float));
         bench::pread_all(fd, reinterpret_cast<char*>(ys.get()), mine.size() * sizeof(std::int32_t),
                   y_at + mine.begin * sizeof(std::int32_t));
         ::close(fd);
         checksum += xs[1];
       }},
      {"pread into touched memory",
       [&] {
         const int fd = ::open(path.c_str(), O_RDONLY);
         if (fd < 0) throw std::runtime_error("cannot open " + path);
         bench::pread_all(fd, reinterpret_cast<char*>(touched_x.data()), touched_x.size() * sizeof(float),
                   x_at + mine.begin * features * sizeof(float));
         bench::pread_all(fd, reinterpret_cast<char*>(touched_y.data()), touched_y.size() * sizeof(std::int32_t),
                   y_at + mine.begin * sizeof(std::int32_t));
         ::close(fd);
         checksum += touched_x.empty() ? 0 : touched_x[1];
       }},
  };
  const auto times = bench::alternate(world, paths, warmup, repeats);
  world.barrier();
  if (own_file && world.rank() == 0) std::filesystem::remove(path);
  if (world.rank() != 0) return 0;
  std::printf("%s: inputs [%zu, %zu] float32 + targets [%zu] int32, %d rank(s), %.1f MB per rank (checksum %g)\n",
              path.c_str(), rows, features, rows, world.size(), bytes / 1e6, checksum);
  const auto out = bench::rate_rows(paths, times, bytes, 2, "HDF5 without MPI-IO", repeats);
  if (!json.empty()) {
    bench::write_json(json, "hdf5_read", out,
                      bench::environment_meta(world)
                          .set("rows", static_cast<double>(rows))
                          .set("features", static_cast<double>(features))
                          .set("hdf5", H5_VERS_INFO));
    std::cout << "wrote " << json << "\n";
  }
  return 0;
}
