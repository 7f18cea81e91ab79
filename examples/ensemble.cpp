// ensemble: Ensemble<Model> trains one replica per rank, each from its own
// seed on its own bootstrap sample, and combines their predictions as
//   f(x) = sum_i w_i h(x; theta_i),  w_i proportional to replica i's accuracy.
// The combined prediction comes from one all-reduce and is the same on every
// rank. It exits 1 unless the ensemble classifies at least 90% right.
//   mpiexec -n 2 build/examples/ensemble
#include "blobs.hpp"

#include <parallax/ensemble.hpp>
#include <parallax/nn/activation.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/loss.hpp>
#include <parallax/nn/sequential.hpp>
#include <parallax/optim/sgd.hpp>

#include <boost/mpi/collectives/all_reduce.hpp>
#include <boost/mpi/environment.hpp>

#include <cstdint>
#include <functional>
#include <iostream>

namespace nn = parallax::nn;
using Net = nn::Sequential<nn::Linear<float>, nn::Tanh<float>, nn::Linear<float>, nn::SoftmaxCrossEntropy<float>>;

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  const auto train = blobs<float>(1200, 1), valid = blobs<float>(300, 2), test = blobs<float>(600, 3);

  // The factory gets each replica's own seed (ensemble_options::seed mixed
  // with the replica's number): the replicas start from different weights.
  parallax::Ensemble<Net> ensemble(
      [](std::uint64_t seed) {
        Net net(nn::Linear<float>(2, 16), nn::Tanh<float>{}, nn::Linear<float>(16, 3),
                nn::SoftmaxCrossEntropy<float>{});
        net.initialize(seed);
        return net;
      },
      parallax::optim::SGD<float>({.lr = 0.1f, .momentum = 0.9f}), {.seed = 7, .bootstrap = true});

  auto sampler = ensemble.make_sampler(train.size(), 32);  // seeded for this replica; bootstrap draws
  for (int epoch = 0; epoch < 5; ++epoch) ensemble.train_epoch(train, sampler);

  // Weights from each replica's validation accuracy (every rank passes its own).
  const double own = ensemble.evaluate_replica(valid).accuracy.value();
  ensemble.set_weights_from_scores(own);

  const auto p = ensemble.predict(test.inputs());  // [600, 3] weighted logits, the same on every rank
  std::size_t right = 0;
  for (std::size_t i = 0; i < p.shape()[0]; ++i) {
    std::size_t best = 0;
    for (std::size_t c = 1; c < 3; ++c)
      if (p(i, c) > p(i, best)) best = c;
    right += static_cast<std::int32_t>(best) == test.targets()(i);
  }
  const double accuracy = double(right) / double(p.shape()[0]);

  const auto& world = ensemble.trainer().communicator();  // this replica's group (one rank here)
  const boost::mpi::communicator all;
  const double weight = ensemble.weights()[static_cast<std::size_t>(ensemble.replica())];
  for (int r = 0; r < all.size(); ++r) {
    if (r == all.rank())
      std::cout << "replica " << ensemble.replica() << " of " << ensemble.replica_count() << " (ranks in it: "
                << world.size() << "): validation accuracy " << own << ", weight " << weight << "\n"
                << std::flush;
    all.barrier();
  }
  const double lowest = boost::mpi::all_reduce(all, accuracy, boost::mpi::minimum<double>());
  if (all.rank() == 0) std::cout << "ensemble test accuracy " << accuracy << "\n";
  return lowest >= 0.9 ? 0 : 1;
}
