// sharded_npy: every rank reads only its own rows of a .npy dataset
// (data/npy.hpp) and trains DataParallel on a fixed split: each rank's
// samples come from its shard alone (docs/datasets.md says why
// train_epoch's sampler does not fit, and what this split changes).
//   mpiexec -n 2 build/examples/sharded_npy
#include <parallax/core/agree.hpp>
#include <parallax/core/block.hpp>
#include <parallax/data/npy.hpp>
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

// Three classes of points around (0, 2), (2, -1) and (-2, -1), written as
// x.npy and y.npy by rank 0: the files the other ranks open.
void write_files(const std::string& dir) {
  xt::random::seed(3);
  const std::size_t n = 3001;
  X x = xt::random::randn<float>({n, std::size_t{2}});
  Y y = xt::zeros<std::int32_t>({n});
  const float cx[] = {0, 2, -2}, cy[] = {2, -1, -1};
  for (std::size_t i = 0; i < n; ++i) {
    y(i) = static_cast<std::int32_t>(i % 3);
    x(i, 0) += cx[i % 3];
    x(i, 1) += cy[i % 3];
  }
  std::filesystem::create_directories(dir);
  parallax::data::save_npy(dir + "/x.npy", x);
  parallax::data::save_npy(dir + "/y.npy", y);
}

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  const boost::mpi::communicator comm;
  // One folder that every rank sees (on a cluster: a shared file system).
  std::string dir;
  if (comm.rank() == 0) {
    dir = std::filesystem::temp_directory_path().string() + "/parallax-sharded-npy-" + std::to_string(::getpid());
    write_files(dir);
  }
  boost::mpi::broadcast(comm, dir, 0);

  // Rows [begin, end) of this rank: block_of, the split evaluate() uses too.
  // A file missing or damaged on one host fails every rank alike (agree).
  const auto shard = parallax::agree(comm, [&] {
    const std::size_t n = parallax::data::read_npy_header(dir + "/x.npy").rows();
    const auto rows = parallax::block_of(n, comm.size(), comm.rank());
    return parallax::data::load_npy_shard<X, Y>(dir + "/x.npy", dir + "/y.npy", rows);
  });

  namespace nn = parallax::nn;
  parallax::DataParallel trainer(nn::Sequential{nn::Linear<float>(2, 3), nn::SoftmaxCrossEntropy<float>{}},
                                 parallax::optim::SGD<float>({.lr = 0.2f}));
  // Batches from this rank's rows alone (a sampler over shard.local(),
  // seeded 7 + rank). Every rank runs the same number of steps: as many full
  // local batches of 32 as the smallest shard holds.
  parallax::data::shard_batches batches(comm, shard, 32, 7);
  for (int epoch = 0; epoch < 5; ++epoch) {
    double loss = 0;
    for (std::size_t s = 0; s < batches.steps(); ++s) loss += trainer.train_step(batches.batch(s));
    batches.next_epoch();
    const auto result = trainer.evaluate(shard);  // each rank scores its own block: the shard it holds
    if (comm.rank() == 0)
      std::cout << "epoch " << epoch << ": train loss " << loss / static_cast<double>(batches.steps()) << ", accuracy "
                << *result.accuracy << "\n";
  }
  const double accuracy = *trainer.evaluate(shard).accuracy;
  comm.barrier();
  if (comm.rank() == 0) std::filesystem::remove_all(dir);
  return accuracy > 0.85 ? 0 : 1;
}
