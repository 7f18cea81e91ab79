// SPDX-License-Identifier: BSL-1.0
// A program outside the parallax tree that uses an installed parallax's HDF5
// datasets (pkg-config parallax-hdf5): rank 0 writes a file of 10 rows, every
// rank reads its own rows, and rank 0 checks and prints the sum of all.
#include <parallax/core/comm.hpp>
#include <parallax/data/hdf5.hpp>

#include <boost/mpi/collectives/broadcast.hpp>
#include <boost/mpi/environment.hpp>
#include <boost/serialization/string.hpp>
#include <unistd.h>

#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  boost::mpi::communicator world;
  using X = xt::xtensor<double, 2>;
  using Y = xt::xtensor<std::int32_t, 1>;
  std::string path;
  if (world.rank() == 0) {
    path = (std::filesystem::temp_directory_path() / ("consumer-" + std::to_string(::getpid()) + ".h5")).string();
    X x = xt::zeros<double>({10, 1});
    for (std::size_t i = 0; i < 10; ++i) x(i, 0) = static_cast<double>(i);
    parallax::data::save_hdf5(path, x, Y(xt::zeros<std::int32_t>({10})));
  }
  boost::mpi::broadcast(world, path, 0);
  const auto shard = parallax::data::load_hdf5_shard<X, Y>(world, path);
  std::vector<double> sum = {0.0};
  for (std::size_t i = 0; i < shard.local().size(); ++i) sum[0] += shard.local().inputs()(i, 0);
  parallax::allreduce_sum(world, std::span<double>(sum));
  const bool ok = sum[0] == 45.0;
  world.barrier();
  if (world.rank() == 0) {
    std::filesystem::remove(path);
    std::cout << "consumer: parallax-hdf5, " << world.size() << " ranks, sum of rows " << sum[0]
              << (ok ? " ok" : " WRONG") << std::endl;
  }
  return ok ? 0 : 1;
}
