// hdf5_train: trains DataParallel from one HDF5 file (data/hdf5.hpp) in
// which every rank reads only its own rows, through MPI-IO, on a fixed split
// (docs/datasets.md, "Reading only a rank's shard"). Rank 0 writes the file
// with save_hdf5, or pass one: inputs [n, 2] floats, targets [n] class
// labels 0-3, as the datasets "inputs" and "targets".
//   mpiexec -n 2 build/examples/hdf5_train [FILE.h5]
#include <parallax/data/hdf5.hpp>
#include <parallax/data/shard_batches.hpp>
#include <parallax/data_parallel.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/loss.hpp>
#include <parallax/nn/sequential.hpp>
#include <parallax/optim/sgd.hpp>

#include <boost/mpi/collectives/broadcast.hpp>
#include <boost/mpi/environment.hpp>
#include <unistd.h>
#include <xtensor/xrandom.hpp>

#include <filesystem>
#include <iostream>
#include <string>

using X = xt::xtensor<float, 2>;
using Y = xt::xtensor<std::int32_t, 1>;

// Points in [-3, 3]^2, labelled by their quadrant (0-3): a linear model
// can learn it exactly.
void write_file(const std::string& path) {
  xt::random::seed(5);
  const std::size_t n = 4001;
  const X x = xt::random::rand<float>({n, std::size_t{2}}, -3.0f, 3.0f);
  const Y y = xt::cast<std::int32_t>(xt::view(x, xt::all(), 0) > 0.0f) +
              2 * xt::cast<std::int32_t>(xt::view(x, xt::all(), 1) > 0.0f);
  parallax::data::save_hdf5(path, x, y);
}

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  const boost::mpi::communicator comm;
  // One file every rank sees (on a cluster: a shared file system).
  std::string path = argc > 1 ? argv[1] : "";
  const bool own = path.empty();
  if (own && comm.rank() == 0) {
    path = std::filesystem::temp_directory_path().string() + "/parallax-hdf5-train-" + std::to_string(::getpid()) + ".h5";
    write_file(path);
  }
  boost::mpi::broadcast(comm, path, 0);

  // Collective: each rank reads rows block_of(n, size, rank) of both
  // datasets; a file missing or damaged anywhere is one error on every rank.
  const auto shard = parallax::data::load_hdf5_shard<X, Y>(comm, path);

  namespace nn = parallax::nn;
  parallax::DataParallel trainer(nn::Sequential{nn::Linear<float>(2, 4), nn::SoftmaxCrossEntropy<float>{}},
                                 parallax::optim::SGD<float>({.lr = 0.2f}));
  // Each rank draws its batches from its own rows; every rank runs as many
  // steps as the smallest shard has full local batches.
  parallax::data::shard_batches batches(comm, shard, 32, 7);
  for (int epoch = 0; epoch < 5; ++epoch) {
    double loss = 0;
    for (std::size_t s = 0; s < batches.steps(); ++s) loss += trainer.train_step(batches.batch(s));
    batches.next_epoch();
    const auto result = trainer.evaluate(shard);  // each rank scores the rows it holds
    if (comm.rank() == 0)
      std::cout << "epoch " << epoch << ": rows [" << shard.rows().begin << ", " << shard.rows().end
                << ") on rank 0, train loss " << loss / static_cast<double>(batches.steps()) << ", accuracy "
                << *result.accuracy << "\n";
  }
  const double accuracy = *trainer.evaluate(shard).accuracy;
  comm.barrier();
  if (own && comm.rank() == 0) std::filesystem::remove(path);
  return accuracy > 0.85 ? 0 : 1;
}
