// pipeline: ModelParallel cuts a chain of layers into stages, one per rank;
// each rank builds only its own layers and micro-batches stream through a
// 1F1B schedule. Every rank also trains the unsplit chain (a Sequential on a
// communicator of its own) from the same seed on the same batches: the two
// runs' losses agree to 1e-9 in double, and the program exits 1 otherwise.
//   mpiexec -n 2 build/examples/pipeline
#include "blobs.hpp"

#include <parallax/data_parallel.hpp>
#include <parallax/model_parallel.hpp>
#include <parallax/nn/activation.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/loss.hpp>
#include <parallax/nn/sequential.hpp>
#include <parallax/optim/sgd.hpp>

#include <boost/mpi/environment.hpp>

#include <cmath>
#include <iostream>
#include <tuple>

namespace nn = parallax::nn;
using L = nn::Linear<double>;
using T = nn::Tanh<double>;
using Loss = nn::SoftmaxCrossEntropy<double>;

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  const boost::mpi::communicator world;
  const auto train = blobs<double>(1000, 1);
  const parallax::optim::SGD<double> sgd({.lr = 0.1, .momentum = 0.9});

  // One tuple of constructor arguments per part; a stage constructs only its
  // own parts (the loss's tuple is left out: it is default-constructible).
  // The partition is balanced by parameter count.
  parallax::ModelParallel<L, T, L, T, L, Loss> pipe(
      std::tuple{std::tuple{2, 32}, std::tuple{}, std::tuple{32, 32}, std::tuple{}, std::tuple{32, 3}}, sgd,
      {.micro_batches = 4, .schedule = parallax::pipeline::schedule_kind::one_f_one_b, .seed = 1});

  // The reference: the same chain, unsplit, initialised from the same seed.
  nn::Sequential chain(L(2, 32), T{}, L(32, 32), T{}, L(32, 3), Loss{});
  chain.initialize(1);
  const boost::mpi::communicator self(MPI_COMM_SELF, boost::mpi::comm_attach);
  parallax::DataParallel serial(std::move(chain), sgd, {}, self);

  auto pipe_sampler = pipe.make_sampler(train.size(), 50, {.seed = 3});
  auto serial_sampler = serial.make_sampler(train.size(), 50, {.seed = 3});
  double worst = 0;
  for (int epoch = 0; epoch < 4; ++epoch) {
    const auto a = pipe.train_epoch(train, pipe_sampler);  // the mean loss, the same on every rank
    const auto b = serial.train_epoch(train, serial_sampler);
    worst = std::max(worst, std::abs(a.loss - b.loss));
    if (world.rank() == 0)
      std::cout << "epoch " << epoch << ": pipeline loss " << a.loss << ", unsplit chain " << b.loss << "\n";
  }
  const auto result = pipe.evaluate(train);  // through the pipeline, the same on every rank
  for (int r = 0; r < world.size(); ++r) {
    if (r == world.rank())
      std::cout << "stage " << r << " of " << pipe.stages() << ": layers [" << pipe.first_layer() << ", "
                << pipe.end_layer() << "), " << pipe.stats().local_parameters << " parameters\n"
                << std::flush;
    world.barrier();
  }
  if (world.rank() == 0)
    std::cout << "accuracy " << *result.accuracy << "; largest loss difference " << worst << "\n";
  return worst < 1e-9 && *result.accuracy > 0.9 ? 0 : 1;
}
