// resume: a checkpoint written by 2 ranks is resumed by 1. The world's ranks
// train for 2 epochs and save; then rank 0 alone (a communicator of one)
// resumes from the folder and trains 2 epochs more. Its parameters equal
// those of an uninterrupted 4-epoch run of the world to 1e-12 (the checkpoint
// holds parameters, Adam's moments and the sampler's position; the sampler's
// plan depends on seed and global batch, not on the rank count); it exits 1
// otherwise.
//   mpiexec -n 2 build/examples/resume
#include "blobs.hpp"

#include <parallax/data_parallel.hpp>
#include <parallax/io/checkpoint.hpp>
#include <parallax/nn/activation.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/loss.hpp>
#include <parallax/nn/sequential.hpp>
#include <parallax/optim/adam.hpp>

#include <boost/mpi/collectives/broadcast.hpp>
#include <boost/mpi/environment.hpp>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

namespace nn = parallax::nn;
using Net = nn::Sequential<nn::Linear<double>, nn::Tanh<double>, nn::Linear<double>, nn::SoftmaxCrossEntropy<double>>;
const auto train = blobs<double>(800, 1);

// A trainer over `comm` and its sampler, from the same seeds whatever the rank count.
struct run {
  parallax::DataParallel<Net> trainer;
  parallax::data::DistributedSampler sampler;
  explicit run(const boost::mpi::communicator& comm)
      : trainer(make_net(), parallax::optim::Adam<double>({.lr = 0.01}), {}, comm),
        sampler(trainer.make_sampler(train.size(), 64, {.seed = 5})) {}
  static Net make_net() {
    Net net(nn::Linear<double>(2, 16), nn::Tanh<double>{}, nn::Linear<double>(16, 3),
            nn::SoftmaxCrossEntropy<double>{});
    net.initialize(1);
    return net;
  }
  void train_until(int epochs) {
    for (auto epoch = sampler.epoch(); epoch < static_cast<std::uint64_t>(epochs); ++epoch)
      trainer.train_epoch(train, sampler);
  }
  std::vector<double> parameters() {  // every tensor, keyed by (layer, index), in order
    std::vector<double> out;
    trainer.for_each_keyed_tensor(
        [&](std::uint64_t, std::uint64_t, auto& t) { out.insert(out.end(), t.begin(), t.end()); });
    return out;
  }
};

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  const boost::mpi::communicator world;
  std::string dir = std::filesystem::temp_directory_path().string() + "/parallax-resume-" + std::to_string(::getpid());
  boost::mpi::broadcast(world, dir, 0);  // one folder every rank sees (on a cluster: a shared file system)

  run whole(world);  // uninterrupted: 4 epochs on every rank of the world
  whole.train_until(4);
  const auto expected = whole.parameters();

  {  // interrupted: 2 epochs on the world, then a checkpoint
    run first(world);
    first.train_until(2);
    parallax::io::Checkpointer(dir, {}, world).save(first.trainer, &first.sampler);
  }

  // Resumed on rank 0 alone: split() gives it a communicator of one rank.
  const auto solo = world.split(world.rank() == 0 ? 0 : 1);
  double difference = 0;
  if (world.rank() == 0) {
    run second(solo);
    parallax::io::Checkpointer checkpoints(dir, {}, solo);
    const auto from = checkpoints.resume_latest(second.trainer, &second.sampler);
    second.train_until(4);
    const auto got = second.parameters();
    for (std::size_t i = 0; i < got.size(); ++i) difference = std::max(difference, std::abs(got[i] - expected[i]));
    std::cout << "resumed " << from.value_or("nothing") << " at 1 rank (saved at " << world.size()
              << "), at epoch " << second.sampler.epoch() << ": largest parameter difference " << difference << "\n";
    std::filesystem::remove_all(dir);
  }
  boost::mpi::broadcast(world, difference, 0);
  return difference < 1e-12 ? 0 : 1;
}
