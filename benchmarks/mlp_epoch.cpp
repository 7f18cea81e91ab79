// SPDX-License-Identifier: BSL-1.0
// mlp_epoch: one epoch of Fashion-MNIST (60000 training images) through the
// MLP 784-256-128-10 (ReLU, softmax cross-entropy, float) under DataParallel
// over every rank: SGD with momentum 0.9, a fixed learning rate, a fixed batch
// PER RANK (default 64, so the global batch is 64 x ranks). The parallax side
// of the comparison with PyTorch (benchmarks/pytorch_mlp.py, the same model,
// data, batch and optimizer; benchmarks/run_vs_pytorch.sh runs both).
//
// A few warm-up steps on a scratch model, then --repeats epochs, each from the
// same freshly initialised model and the same shuffle, so every repeat trains
// identically; an epoch's time is the slowest rank's. Data loading and the
// test-set evaluation are outside the timed epoch. Prints the median and
// min-max epoch time, samples per second, the epoch's mean training loss and
// the test accuracy after the epoch.
//
//   OPENBLAS_NUM_THREADS=1 mpiexec -n 2 -x OPENBLAS_NUM_THREADS build/benchmarks/mlp_epoch
//       [--data /usr/share/datasets/fashion-mnist] [--batch 64] [--lr 0.05] [--repeats 3]
//       [--warmup-steps 30] [--json mlp_epoch.json]
#include "bench.hpp"

#include <parallax/core/comm.hpp>
#include <parallax/data/batch.hpp>
#include <parallax/data/idx.hpp>
#include <parallax/data_parallel.hpp>
#include <parallax/nn/activation.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/loss.hpp>
#include <parallax/nn/sequential.hpp>
#include <parallax/optim/sgd.hpp>

#include <boost/mpi/environment.hpp>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <iostream>
#include <string>
#include <vector>

namespace {

using Net = parallax::nn::Sequential<parallax::nn::Linear<float>, parallax::nn::ReLU<float>,
                                     parallax::nn::Linear<float>, parallax::nn::ReLU<float>,
                                     parallax::nn::Linear<float>, parallax::nn::SoftmaxCrossEntropy<float>>;
using Dataset = parallax::data::TensorDataset<xt::xtensor<float, 2>, xt::xtensor<std::int32_t, 1>>;

Net make_net(std::uint64_t seed) {
  Net net{parallax::nn::Linear<float>(784, 256), parallax::nn::ReLU<float>{},
          parallax::nn::Linear<float>(256, 128), parallax::nn::ReLU<float>{},
          parallax::nn::Linear<float>(128, 10), parallax::nn::SoftmaxCrossEntropy<float>{}};
  net.initialize(seed);
  return net;
}

Dataset load(const boost::mpi::communicator& world, const std::string& dir, const std::string& split) {
  // A file missing on one rank fails every rank with the same message.
  auto set = parallax::agree(world, [&] { return parallax::data::load_mnist_split(dir, split); });
  return Dataset(std::move(set.images), std::move(set.labels));
}

}  // namespace

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  boost::mpi::communicator world;
  const bench::args args(argc, argv);
  const auto dir = args.get("data", std::string(parallax::data::default_fashion_mnist_dir));
  const auto batch = static_cast<std::size_t>(args.get("batch", 64L));
  const double lr = std::stod(args.get("lr", std::string("0.05")));
  const double momentum = 0.9;
  const long repeats = args.get("repeats", 3L);
  const long warmup_steps = args.get("warmup-steps", 30L);
  const std::uint64_t init_seed = 1, shuffle_seed = 7;
  const auto json = args.get("json", std::string());
  const bool root = world.rank() == 0;
  const std::size_t global = batch * static_cast<std::size_t>(world.size());

  Dataset train, test;
  const double load_s = bench::timed(world, [&] {
    train = load(world, dir, "train");
    test = load(world, dir, "test");
  });
  const parallax::optim::SGD<float> sgd({.lr = lr, .momentum = momentum});
  if (root)
    std::cout << "mlp_epoch: " << make_net(init_seed).describe() << ", float; Fashion-MNIST from " << dir << " ("
              << train.size() << " train, " << test.size() << " test; loaded in " << load_s << " s)\n"
              << bench::count_text(world.size(), "rank") << " x batch " << batch << " = global batch " << global
              << "; SGD lr " << lr << " momentum " << momentum << "; BLAS core " << bench::blas_core()
              << ", OPENBLAS_NUM_THREADS=" << bench::env_or_unset("OPENBLAS_NUM_THREADS") << "\n";

  {  // Warm-up: BLAS, page faults, MPI connections; a scratch model.
    parallax::DataParallel scratch(make_net(init_seed), sgd, {}, world);
    auto sampler = scratch.make_sampler(train.size(), global, {.seed = shuffle_seed + 1});
    Net::batch_type b;
    for (long s = 0; s < warmup_steps; ++s) {
      const auto indices = sampler.local_indices(static_cast<std::size_t>(s) % sampler.steps_per_epoch());
      train.batch_into(indices, b);
      scratch.train_step(b);
    }
  }

  std::vector<double> times;
  parallax::epoch_report report;
  parallax::evaluation result;
  for (long r = 0; r < repeats; ++r) {
    parallax::DataParallel trainer(make_net(init_seed), sgd, {}, world);
    auto sampler = trainer.make_sampler(train.size(), global, {.seed = shuffle_seed});
    times.push_back(bench::timed(world, [&] { report = trainer.train_epoch(train, sampler); }));
    result = trainer.evaluate(test);
    if (root)
      std::printf("  epoch %ld: %.3f s, train loss %.4f, test accuracy %.4f\n", r + 1, times.back(), report.loss,
                  result.accuracy.value_or(0.0));
  }
  if (!root) return 0;
  const auto st = bench::summarize(times);
  const double per_second = static_cast<double>(report.samples) / st.median;
  const std::string name = "parallax " + bench::count_text(world.size(), "rank");
  std::printf("%s: epoch %s s (median, min-max), %.0f samples/s, %zu steps of %zu, train loss %.4f, test accuracy "
              "%.4f\n",
              name.c_str(), bench::spread_text(st).c_str(), per_second, report.steps, global, report.loss,
              result.accuracy.value_or(0.0));
  if (!json.empty()) {
    const std::vector<bench::row> rows = {bench::row()
                                              .set("name", name)
                                              .set("framework", "parallax")
                                              .set("processes", world.size())
                                              .set("batch_per_process", static_cast<double>(batch))
                                              .set("global_batch", static_cast<double>(global))
                                              .set("epoch_s", st.median)
                                              .set("min", st.min)
                                              .set("max", st.max)
                                              .set("repeats", static_cast<double>(repeats))
                                              .set("samples", static_cast<double>(report.samples))
                                              .set("steps", static_cast<double>(report.steps))
                                              .set("samples_per_s", per_second)
                                              .set("train_loss", report.loss)
                                              .set("test_loss", result.loss)
                                              .set("test_accuracy", result.accuracy.value_or(0.0))};
    bench::write_json(json, "mlp_epoch", rows,
                      bench::environment_meta(world)
                          .set("model", make_net(init_seed).describe())
                          .set("lr", lr)
                          .set("momentum", momentum)
                          .set("data", dir)
                          .set("load_s", load_s));
    std::cout << "wrote " << json << "\n";
  }
}
