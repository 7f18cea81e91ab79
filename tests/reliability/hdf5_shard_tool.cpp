// SPDX-License-Identifier: BSL-1.0
// For the two-host test (two_hosts.sh): rank 0 writes an HDF5 file of 1001
// rows (inputs x(i, j) = 8 i + j, targets i % 7); every rank reads its
// block_of rows with load_hdf5_shard (the transfer given) and checks them
// against that rule; rank 0 prints one line per rank, with the network
// namespace it ran in, so the script can tell the hosts apart:
//   rank 1 netns net:[4026532...] rows [501, 1001) ok
// Exits non-zero when a rank's rows are not its block or hold other values.
// Usage: hdf5_shard_tool FILE independent|collective
#include <parallax/core/block.hpp>
#include <parallax/data/hdf5.hpp>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/environment.hpp>
#include <boost/serialization/string.hpp>
#include <boost/serialization/vector.hpp>

#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  const boost::mpi::communicator world;
  if (argc != 3) {
    if (world.rank() == 0) std::cerr << "usage: hdf5_shard_tool FILE independent|collective\n";
    return 2;
  }
  namespace data = parallax::data;
  using X = xt::xtensor<double, 2>;
  using Y = xt::xtensor<std::int64_t, 1>;
  const std::string path = argv[1];
  const std::size_t n = 1001, features = 8;
  if (world.rank() == 0) {
    X x = xt::zeros<double>({n, features});
    Y y = xt::zeros<std::int64_t>({n});
    for (std::size_t i = 0; i < n; ++i) {
      for (std::size_t j = 0; j < features; ++j) x(i, j) = static_cast<double>(8 * i + j);
      y(i) = static_cast<std::int64_t>(i % 7);
    }
    data::save_hdf5(path, x, y);
  }
  world.barrier();
  const auto transfer = std::string(argv[2]) == "collective" ? data::hdf5_transfer::collective
                                                             : data::hdf5_transfer::independent;
  const auto shard = data::load_hdf5_shard<X, Y>(world, path, {.transfer = transfer});
  const parallax::block rows = shard.rows(), expected = parallax::block_of(n, world.size(), world.rank());
  bool ok = rows.begin == expected.begin && rows.end == expected.end && shard.size() == n;
  for (std::size_t i = 0; ok && i < rows.size(); ++i) {
    for (std::size_t j = 0; j < features; ++j) ok = ok && shard.local().inputs()(i, j) == double(8 * (rows.begin + i) + j);
    ok = ok && shard.local().targets()(i) == static_cast<std::int64_t>((rows.begin + i) % 7);
  }
  std::error_code ec;
  const std::string netns = std::filesystem::read_symlink("/proc/self/ns/net", ec).string();
  const std::string line = "rank " + std::to_string(world.rank()) + " netns " + (ec ? "unknown" : netns) + " rows [" +
                           std::to_string(rows.begin) + ", " + std::to_string(rows.end) + ") " + (ok ? "ok" : "BAD");
  std::vector<std::string> lines;
  boost::mpi::gather(world, line, lines, 0);
  if (world.rank() == 0)
    for (const auto& l : lines) std::cout << l << "\n";
  int all_ok = 0;
  boost::mpi::all_reduce(world, ok ? 1 : 0, all_ok, boost::mpi::minimum<int>());
  return all_ok ? 0 : 1;
}
