// SPDX-License-Identifier: BSL-1.0
// fashion_mnist: the main demo. Trains an MLP (784-256-128-10) or a small CNN
// on Fashion-MNIST over every rank of mpiexec, either data parallel (each
// rank takes its shard of every global batch, gradients are averaged, all
// replicas take the same step) or as a pipeline (the layers are cut into one
// stage per rank, micro-batches stream through them). Both see the same
// global batches from the same initial weights, so they reach the same
// accuracy. Rank 0 shows progress and the test accuracy per epoch.
//
//   mpiexec -n 2 build/examples/fashion_mnist                     # MLP, 10 epochs
//   mpiexec -n 3 build/examples/fashion_mnist --strategy pipeline
//   mpiexec -n 2 build/examples/fashion_mnist --checkpoint-dir ckpt --checkpoint-every 200 --resume
//   mpiexec -n 2 build/examples/fashion_mnist --strategy pipeline --trace run.json   # open in Perfetto
//   build/examples/fashion_mnist --help
//
// Data: the Debian package dataset-fashion-mnist (or --data-dir). Run one BLAS
// thread per rank (OPENBLAS_NUM_THREADS=1); scripts/demo.sh also picks the
// fastest OpenBLAS kernels for the CPU. Exit status: 0 on success, 1 on an
// error, 2 when the final accuracy is below --min-accuracy.
#include "demo_support.hpp"

#include <parallax/core/blas.hpp>
#include <parallax/core/comm.hpp>
#include <parallax/core/trace.hpp>
#include <parallax/data/batch.hpp>
#include <parallax/data/idx.hpp>
#include <parallax/data_parallel.hpp>
#include <parallax/io/checkpoint.hpp>
#include <parallax/model_parallel.hpp>
#include <parallax/nn/activation.hpp>
#include <parallax/nn/conv2d.hpp>
#include <parallax/nn/flatten.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/loss.hpp>
#include <parallax/nn/maxpool2d.hpp>
#include <parallax/nn/sequential.hpp>
#include <parallax/optim/adam.hpp>
#include <parallax/optim/schedule.hpp>
#include <parallax/optim/sgd.hpp>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <boost/mpi/communicator.hpp>
#include <boost/mpi/environment.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace nn = parallax::nn;
namespace optim = parallax::optim;
using demo::clock_type;
using demo::fixed;

struct config {
  std::string strategy = "data";
  std::string model = "mlp";
  std::string optimizer = "adam";
  std::string schedule = "cosine";
  int epochs = 10;
  std::size_t batch_size = 128;  // global: split over the ranks
  double lr = 0;                 // 0: the optimizer's default below
  std::uint64_t seed = 1;
  std::string data_dir = parallax::data::default_fashion_mnist_dir;
  std::size_t limit = 0;  // 0: every training sample
  std::string json;
  std::string trace;  // empty: no timeline trace
  bool quiet = false;
  double min_accuracy = 0;
  demo::pipeline_flags pipeline;  // --micro-batches, --pipeline-schedule
  demo::checkpoint_flags checkpoints;
};

double default_lr(const std::string& optimizer) { return optimizer == "sgd" ? 0.05 : 1e-3; }

// --- data ---------------------------------------------------------------------

using Labels = xt::xtensor<std::int32_t, 1>;

struct fashion_mnist {
  parallax::data::image_set train, test;
};

// Both splits, each pixel standardised with the training set's mean and
// standard deviation; the first `limit` training samples when limit > 0.
fashion_mnist load(const config& cfg) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path images = fs::path(cfg.data_dir) / "train-images-idx3-ubyte";
  PARALLAX_CHECK(fs::exists(images, ec) || fs::exists(images.string() + ".gz", ec),
                 "load(): no Fashion-MNIST data in '" + cfg.data_dir +
                     "': install the Debian package dataset-fashion-mnist (apt-get install "
                     "dataset-fashion-mnist) or pass --data-dir DIR holding train-images-idx3-ubyte[.gz] etc.");
  fashion_mnist d{parallax::data::load_mnist_split(cfg.data_dir, "train"),
                  parallax::data::load_mnist_split(cfg.data_dir, "test")};
  if (cfg.limit > 0 && cfg.limit < d.train.labels.size()) {
    xt::xtensor<float, 2> images = xt::view(d.train.images, xt::range(0, cfg.limit), xt::all());
    Labels labels = xt::view(d.train.labels, xt::range(0, cfg.limit));
    d.train.images = std::move(images);
    d.train.labels = std::move(labels);
  }
  constexpr float mean = 0.2860f, stddev = 0.3530f;  // Fashion-MNIST training pixels
  for (auto* set : {&d.train, &d.test})
    for (auto& x : set->images) x = (x - mean) / stddev;
  return d;
}

// Images as [n, 784] for the MLP or [n, 1, 28, 28] for the CNN; takes the
// set's buffers (each rank holds one copy of the data).
template <class X>
parallax::data::TensorDataset<X, Labels> dataset(parallax::data::image_set&& set) {
  if constexpr (X::rank == 2) {
    return {std::move(set.images), std::move(set.labels)};
  } else {
    X images = X::from_shape({set.labels.size(), 1, set.rows, set.cols});
    std::copy_n(set.images.data(), set.images.size(), images.data());
    set.images = {};
    return {std::move(images), std::move(set.labels)};
  }
}

// --- models -------------------------------------------------------------------

// 784-256-128-10: 235,146 parameters.
auto make_mlp() {
  return nn::Sequential{nn::Linear<float>(784, 256), nn::ReLU<float>{},
                        nn::Linear<float>(256, 128), nn::ReLU<float>{},
                        nn::Linear<float>(128, 10),  nn::SoftmaxCrossEntropy<float>{}};
}

// Two 5x5 convolutions with 2x2 max pooling, then one linear layer: 28,938
// parameters, about 12x the MLP's arithmetic per sample.
auto make_cnn() {
  return nn::Sequential{nn::Conv2D<float>(1, 16, 5, 1, 2),  nn::ReLU<float, 4>{}, nn::MaxPool2D<float>(2),  // 16x14x14
                        nn::Conv2D<float>(16, 32, 5, 1, 2), nn::ReLU<float, 4>{}, nn::MaxPool2D<float>(2),  // 32x7x7
                        nn::Flatten<float, 4>{},            nn::Linear<float>(32 * 7 * 7, 10),
                        nn::SoftmaxCrossEntropy<float>{}};
}

// The same chains as pipelines: each part from its constructor arguments,
// built only on the rank of its stage. Layer i starts from initialize(seed, i)
// as in the Sequential, so both strategies start from the same weights.
using MlpPipeline = parallax::ModelParallel<nn::Linear<float>, nn::ReLU<float>, nn::Linear<float>, nn::ReLU<float>,
                                            nn::Linear<float>, nn::SoftmaxCrossEntropy<float>>;
const auto mlp_parts = std::tuple{std::tuple{784, 256}, std::tuple{}, std::tuple{256, 128},
                                  std::tuple{},         std::tuple{128, 10}, std::tuple{}};
using CnnPipeline =
    parallax::ModelParallel<nn::Conv2D<float>, nn::ReLU<float, 4>, nn::MaxPool2D<float>, nn::Conv2D<float>,
                            nn::ReLU<float, 4>, nn::MaxPool2D<float>, nn::Flatten<float, 4>, nn::Linear<float>,
                            nn::SoftmaxCrossEntropy<float>>;
const auto cnn_parts = std::tuple{std::tuple{1, 16, 5, 1, 2},  std::tuple{}, std::tuple{2},
                                  std::tuple{16, 32, 5, 1, 2}, std::tuple{}, std::tuple{2},
                                  std::tuple{},                std::tuple{32 * 7 * 7, 10}, std::tuple{}};

std::unique_ptr<optim::Optimizer<float>> make_optimizer(const config& cfg) {
  if (cfg.optimizer == "sgd") return std::make_unique<optim::SGD<float>>(optim::sgd_options{.lr = cfg.lr, .momentum = 0.9});
  if (cfg.optimizer == "adamw")
    return std::make_unique<optim::AdamW<float>>(optim::adam_options{.lr = cfg.lr, .weight_decay = 0.01});
  return std::make_unique<optim::Adam<float>>(optim::adam_options{.lr = cfg.lr});
}

// --- progress -----------------------------------------------------------------

// --- training -----------------------------------------------------------------

struct epoch_result {
  double train_loss = 0, test_loss = 0, test_accuracy = 0, seconds = 0, samples_per_second = 0;
};

struct run_result {
  std::vector<epoch_result> epochs;
  std::size_t train_samples = 0, test_samples = 0, parameters = 0;
  double train_seconds = 0;  // the epochs' training steps
  double run_seconds = 0;    // training and evaluation
  double load_seconds = 0;   // reading the data, before the run
  double wall_seconds() const { return load_seconds + run_seconds; }
  double accuracy() const { return epochs.empty() ? 0.0 : epochs.back().test_accuracy; }
  double samples_per_second() const {
    double samples = 0;
    for (const auto& e : epochs) samples += e.samples_per_second * e.seconds;
    return train_seconds > 0 ? samples / train_seconds : 0.0;
  }
};

// One epoch's line and record, on every rank (only rank 0 prints).
void finish_epoch(run_result& result, const config& cfg, std::uint64_t epoch, double train_loss, std::size_t samples,
                  double seconds, const parallax::evaluation& test_result, const boost::mpi::communicator& world,
                  demo::progress_bar& progress) {
  epoch_result e{train_loss, test_result.loss, test_result.accuracy.value_or(0), seconds,
                 seconds > 0 ? static_cast<double>(samples) / seconds : 0.0};
  result.train_seconds += seconds;
  result.epochs.push_back(e);
  if (world.rank() == 0)
    progress.line("epoch " + std::to_string(epoch + 1) + "/" + std::to_string(cfg.epochs) + ": " +
                  (samples > 0 ? "train loss " + fixed(e.train_loss, 4) : "no step left (resumed at its end)") +
                  ", test loss " + fixed(e.test_loss, 4) + ", test accuracy " +
                  fixed(e.test_accuracy, 4) + "  (" + fixed(e.seconds, 1) + " s, " +
                  std::to_string(static_cast<long>(e.samples_per_second)) + " samples/s)");
}

// The data strategy: DataParallel over `world`, evaluating on the test set
// after every epoch (sharded; the result is the same on every rank).
template <class Net, class X>
run_result train_data_parallel(Net net, const parallax::data::TensorDataset<X, Labels>& train,
                               const parallax::data::TensorDataset<X, Labels>& test, const config& cfg,
                               const boost::mpi::communicator& world, demo::progress_bar& progress) {
  const auto start = clock_type::now();
  net.initialize(cfg.seed);
  run_result result;
  result.parameters = net.parameter_count();
  result.train_samples = train.size();
  result.test_samples = test.size();

  const std::size_t steps_per_epoch = (train.size() + cfg.batch_size - 1) / cfg.batch_size;  // tail: pad
  parallax::data_parallel_options options;
  if (cfg.schedule == "cosine")
    options.lr_schedule = optim::cosine_lr(cfg.lr, static_cast<std::uint64_t>(cfg.epochs) * steps_per_epoch);
  options.on_step = [&progress](const parallax::step_report& r) { progress.step(r); };
  parallax::DataParallel trainer(std::move(net), *make_optimizer(cfg), std::move(options), world);
  demo::train_epochs(trainer, train, cfg.batch_size, cfg.seed, cfg.epochs, cfg.checkpoints, world,
                     [&](std::uint64_t epoch, const parallax::epoch_report& report) {
                       finish_epoch(result, cfg, epoch, report.loss, report.samples, report.seconds,
                                    trainer.evaluate(test, 500), world, progress);
                     });
  result.run_seconds = std::chrono::duration<double>(clock_type::now() - start).count();
  return result;
}

// The pipeline strategy: the layers cut into one stage per rank; every rank
// steps through the same global batches as the data strategy does.
template <class Pipeline, class Parts, class X>
run_result train_pipeline(const Parts& parts, const parallax::data::TensorDataset<X, Labels>& train,
                          const parallax::data::TensorDataset<X, Labels>& test, const config& cfg,
                          const boost::mpi::communicator& world, demo::progress_bar& progress) {
  const auto start = clock_type::now();
  run_result result;
  result.train_samples = train.size();
  result.test_samples = test.size();
  const std::size_t steps_per_epoch = (train.size() + cfg.batch_size - 1) / cfg.batch_size;
  parallax::pipeline_options options{.micro_batches = cfg.pipeline.micro_batches, .schedule = cfg.pipeline.kind(),
                                     .seed = cfg.seed};
  if (cfg.schedule == "cosine")
    options.lr_schedule = optim::cosine_lr(cfg.lr, static_cast<std::uint64_t>(cfg.epochs) * steps_per_epoch);
  options.on_step = [&progress](const parallax::step_report& r) { progress.step(r); };
  Pipeline pipeline(parts, *make_optimizer(cfg), std::move(options), world);
  std::size_t local = pipeline.stats().local_parameters;
  boost::mpi::all_reduce(world, local, result.parameters, std::plus<std::size_t>());
  demo::print_stages(pipeline, cfg.pipeline, world);
  // The data strategy's plan, taken whole: every stage reads each global batch.
  demo::train_epochs(pipeline, train, cfg.batch_size, cfg.seed, cfg.epochs, cfg.checkpoints, world,
                     [&](std::uint64_t epoch, const parallax::epoch_report& report) {
                       finish_epoch(result, cfg, epoch, report.loss, report.samples, report.seconds,
                                    pipeline.evaluate(test, 500), world, progress);
                     });
  result.run_seconds = std::chrono::duration<double>(clock_type::now() - start).count();
  return result;
}

run_result run(const config& cfg, fashion_mnist data, const boost::mpi::communicator& world, demo::progress_bar& progress) {
  const bool pipeline = cfg.strategy == "pipeline";
  if (cfg.model == "cnn") {
    using X = xt::xtensor<float, 4>;
    auto train = dataset<X>(std::move(data.train));
    auto test = dataset<X>(std::move(data.test));
    if (pipeline) return train_pipeline<CnnPipeline>(cnn_parts, train, test, cfg, world, progress);
    return train_data_parallel(make_cnn(), train, test, cfg, world, progress);
  }
  using X = xt::xtensor<float, 2>;
  auto train = dataset<X>(std::move(data.train));
  auto test = dataset<X>(std::move(data.test));
  if (pipeline) return train_pipeline<MlpPipeline>(mlp_parts, train, test, cfg, world, progress);
  return train_data_parallel(make_mlp(), train, test, cfg, world, progress);
}

// --- summary ------------------------------------------------------------------

// The --json summary (NaN losses are null).
void write_json(std::ostream& out, const config& cfg, const run_result& r, int ranks, const parallax::blas_info& blas) {
  nlohmann::ordered_json j{{"example", "fashion_mnist"}, {"strategy", cfg.strategy},  {"model", cfg.model},
                           {"optimizer", cfg.optimizer}, {"lr", cfg.lr},              {"schedule", cfg.schedule},
                           {"batch_size", cfg.batch_size}, {"epochs", cfg.epochs},    {"seed", cfg.seed},
                           {"ranks", ranks},             {"train_samples", r.train_samples},
                           {"test_samples", r.test_samples}, {"parameters", r.parameters}};
  j["blas"] = {{"library", blas.library}, {"core", blas.core}, {"config", blas.config}};
  j["accuracy"] = r.accuracy();
  j["wall_seconds"] = r.wall_seconds();
  j["load_seconds"] = r.load_seconds;
  j["train_seconds"] = r.train_seconds;
  j["samples_per_second"] = r.samples_per_second();
  j["accuracy_per_epoch"] = nlohmann::ordered_json::array();
  j["per_epoch"] = nlohmann::ordered_json::array();
  for (std::size_t i = 0; i < r.epochs.size(); ++i) {
    const auto& e = r.epochs[i];
    j["accuracy_per_epoch"].push_back(e.test_accuracy);
    j["per_epoch"].push_back({{"epoch", i + 1}, {"train_loss", e.train_loss}, {"test_loss", e.test_loss},
                              {"test_accuracy", e.test_accuracy}, {"seconds", e.seconds},
                              {"samples_per_second", e.samples_per_second}});
  }
  out << j.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << '\n';
}

}  // namespace

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  boost::mpi::communicator world;
  const bool root = world.rank() == 0;

  config cfg;
  CLI::App app{"Train an MLP or a CNN on Fashion-MNIST over the ranks of mpiexec and report test accuracy."};
  app.add_option("--strategy", cfg.strategy,
                 "How the ranks share the work: data (each rank trains on a shard of every batch, gradients "
                 "averaged) or pipeline (the layers cut into one stage per rank, micro-batches streamed through)")
      ->check(CLI::IsMember({"data", "pipeline"}))
      ->capture_default_str();
  demo::add_pipeline_options(app, cfg.pipeline);
  demo::add_checkpoint_options(app, cfg.checkpoints);
  app.add_option("--model", cfg.model, "mlp (784-256-128-10) or cnn (two 5x5 conv layers)")
      ->check(CLI::IsMember({"mlp", "cnn"}))
      ->capture_default_str();
  app.add_option("--epochs", cfg.epochs, "Passes over the training set")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app.add_option("--batch-size", cfg.batch_size, "Global batch, split over the ranks")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20))
      ->capture_default_str();
  app.add_option("--optimizer", cfg.optimizer, "sgd (momentum 0.9), adam or adamw (weight decay 0.01)")
      ->check(CLI::IsMember({"sgd", "adam", "adamw"}))
      ->capture_default_str();
  app.add_option("--lr", cfg.lr, "Learning rate at the start [default: 0.05 for sgd, 0.001 for adam and adamw]")
      ->check(CLI::PositiveNumber);
  app.add_option("--schedule", cfg.schedule, "Learning rate over the run: cosine (to 0 at the end) or constant")
      ->check(CLI::IsMember({"cosine", "constant"}))
      ->capture_default_str();
  app.add_option("--seed", cfg.seed, "Seed of the initial weights and the shuffles")->capture_default_str();
  app.add_option("--data-dir", cfg.data_dir, "Directory with the Fashion-MNIST IDX files (plain or .gz)")
      ->capture_default_str();
  app.add_option("--limit", cfg.limit, "Train on the first N training samples only (0: all 60000)")
      ->capture_default_str();
  app.add_option("--json", cfg.json, "Write a summary (accuracy per epoch, times, ranks, BLAS) to this file");
  app.add_option("--trace", cfg.trace,
                 "Write a timeline of every rank (Chrome trace-event JSON: Perfetto, chrome://tracing) to this file");
  app.add_flag("--quiet", cfg.quiet, "No progress bar (one line per epoch, as when stdout is not a terminal)");
  app.add_option("--min-accuracy", cfg.min_accuracy, "Exit with status 2 when the final test accuracy is lower")
      ->check(CLI::Range(0.0, 1.0));
  if (const auto status = demo::parse(app, argc, argv, world)) return *status;
  if (cfg.lr == 0) cfg.lr = default_lr(cfg.optimizer);

  return demo::guarded("fashion_mnist", env, world, [&] {
    parallax::warn_if_slow_blas(world);
    std::ofstream json = demo::open_summary(cfg.json, world);
    if (!cfg.trace.empty()) {
      parallax::agree(world, [&] {
        if (root) PARALLAX_CHECK(std::ofstream(cfg.trace).is_open(), "--trace: cannot write '" + cfg.trace + "'");
      });
      parallax::trace::set_file(cfg.trace);
    }
    const auto load_start = clock_type::now();
    auto data = parallax::agree(world, [&] { return load(cfg); });
    const double load_seconds = std::chrono::duration<double>(clock_type::now() - load_start).count();
    if (root)
      std::cout << "fashion_mnist: " << cfg.model << ", " << cfg.strategy << " parallel on " << world.size()
                << (world.size() == 1 ? " rank" : " ranks") << ", " << data.train.labels.size() << " training and "
                << data.test.labels.size() << " test images, global batch " << cfg.batch_size << ", " << cfg.optimizer
                << " lr " << cfg.lr << " (" << cfg.schedule << ")" << std::endl;

    demo::progress_bar progress(root && !cfg.quiet && demo::stdout_is_terminal(), cfg.epochs);
    run_result result = run(cfg, std::move(data), world, progress);
    result.load_seconds = load_seconds;

    const auto blas = parallax::detect_blas();
    if (root) {
      std::cout << "accuracy " << fixed(result.accuracy(), 4) << ", wall " << fixed(result.wall_seconds(), 1)
                << " s (data " << fixed(result.load_seconds, 1) << " s, training " << fixed(result.train_seconds, 1)
                << " s), " << static_cast<long>(result.samples_per_second()) << " samples/s, " << world.size()
                << (world.size() == 1 ? " rank" : " ranks") << ", BLAS " << blas.library
                << (blas.core.empty() ? "" : "/" + blas.core) << std::endl;
      if (json.is_open()) {
        write_json(json, cfg, result, world.size(), blas);
        json.close();
        if (!json) {
          std::cerr << "fashion_mnist: error: writing '" << cfg.json << "' failed" << std::endl;
          return 1;
        }
      }
    }
    if (!cfg.trace.empty() && !parallax::trace::write()) {
      if (root) std::cerr << "fashion_mnist: error: writing the trace '" << cfg.trace << "' failed" << std::endl;
      return 1;
    }
    if (result.accuracy() < cfg.min_accuracy) {
      if (root)
        std::cerr << "fashion_mnist: accuracy " << fixed(result.accuracy(), 4) << " is below --min-accuracy "
                  << cfg.min_accuracy << std::endl;
      return 2;
    }
    return 0;
  });
}
