// SPDX-License-Identifier: BSL-1.0
// ckpt_tool: the program the process-level reliability tests run under
// mpiexec. It trains a fixed small problem (a synthetic 4-class task) with
// Adam, either data parallel (a Sequential MLP under DataParallel, a seeded
// DistributedSampler, several epochs so a resume lands mid-epoch) or as a
// pipeline (a ModelParallel chain of 7 layers, one stage per rank), saves
// checkpoints with parallax::io::Checkpointer, resumes from the newest valid
// one, writes the final parameters as raw doubles (so `cmp` compares them
// bitwise) and can SIGKILL itself on one rank at one step to play a lost node.
//
//   mpiexec -n 2 ckpt_tool --mode dp|pipe --steps N [--dir DIR] [--every K] [--keep K]
//       [--resume] [--out FILE] [--hidden H] [--kill-rank R --kill-step S]
//       [--kill-stamp FILE] [--pid-file FILE] [--progress FILE] [--verify STEP_FOLDER]
//
// --steps N     train until the optimizer has taken N steps; with --dir, a
//               checkpoint is saved at step N too (unless just saved)
// --every K     with --dir, a checkpoint every K optimizer steps (0: only at N)
// --resume      resume_latest() from --dir before training
// --hidden H    hidden width (default 16: 484 parameters in dp mode; 1024
//               makes 25 MB checkpoints)
// --kill-rank R, --kill-step S
//               rank R raises SIGKILL right after step S (after that step's
//               checkpoint, if any); --kill-stamp FILE gets the wall-clock
//               time (seconds since the epoch) just before
// --pid-file F  rank 0 writes its process id to F once training starts
// --progress F  rank 0 appends "saving N" before and "saved N" after each
//               checkpoint, so a test that kills it knows whether it was saving
// --verify P    no training: load the step folder P, then resume_latest();
//               prints "verify: loaded P step S" and
//               "verify: resume_latest Q skipped K"; exit 1 if either fails
// Exit status: 0 on success, 1 on an error (printed by rank 0).
#include <parallax/core/comm.hpp>
#include <parallax/data/batch.hpp>
#include <parallax/data/sampler.hpp>
#include <parallax/data_parallel.hpp>
#include <parallax/detail/random.hpp>
#include <parallax/detail/tensor_list.hpp>
#include <parallax/io/checkpoint.hpp>
#include <parallax/model_parallel.hpp>
#include <parallax/nn/activation.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/loss.hpp>
#include <parallax/nn/sequential.hpp>
#include <parallax/optim/adam.hpp>
#include <parallax/optim/schedule.hpp>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>
#include <boost/mpi/environment.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <csignal>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

namespace nn = parallax::nn;
namespace fs = std::filesystem;
using communicator = boost::mpi::communicator;

// The fixed problem: 100 samples of 8 features, 4 classes, global batch 12
// (9 steps per epoch, the last one padded), Adam with a cosine schedule over
// a nominal 60 steps (so the learning rate depends on the restored step).
constexpr std::size_t samples = 100, features = 8, classes = 4, global_batch = 12, micro_batches = 3;
constexpr std::uint64_t data_seed = 11, init_seed = 5, shuffle_seed = 3, schedule_steps = 60;
constexpr double learning_rate = 0.01;

using Labels = xt::xtensor<std::int32_t, 1>;
using Dataset = parallax::data::TensorDataset<xt::xtensor<double, 2>, Labels>;
using Net = nn::Sequential<nn::Linear<double>, nn::Tanh<double>, nn::Linear<double>, nn::Tanh<double>,
                           nn::Linear<double>, nn::SoftmaxCrossEntropy<double>>;
using Pipe = parallax::ModelParallel<nn::Linear<double>, nn::Tanh<double>, nn::Linear<double>, nn::Tanh<double>,
                                     nn::Linear<double>, nn::Tanh<double>, nn::Linear<double>,
                                     nn::SoftmaxCrossEntropy<double>>;

struct config {
  std::string mode = "dp";
  std::uint64_t steps = 0;
  std::string dir;
  std::uint64_t every = 0;
  std::size_t keep = 3;
  bool resume = false;
  std::string out;
  std::size_t hidden = 16;
  int kill_rank = -1;
  std::uint64_t kill_step = 0;
  std::string kill_stamp;
  std::string pid_file;
  std::string progress;
  std::string verify;
};

config parse(int argc, char** argv) {
  config c;
  std::map<std::string, std::string> values;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--resume") {
      c.resume = true;
      continue;
    }
    if (a.rfind("--", 0) != 0 || i + 1 >= argc) throw std::invalid_argument("unexpected argument '" + a + "'");
    values[a.substr(2)] = argv[++i];
  }
  auto take = [&](const char* name, auto& into) {
    const auto it = values.find(name);
    if (it == values.end()) return;
    using V = std::remove_cvref_t<decltype(into)>;
    if constexpr (std::is_same_v<V, std::string>) into = it->second;
    else if constexpr (std::is_same_v<V, int>) into = std::stoi(it->second);
    else into = static_cast<V>(std::stoull(it->second));
    values.erase(it);
  };
  take("mode", c.mode);
  take("steps", c.steps);
  take("dir", c.dir);
  take("every", c.every);
  take("keep", c.keep);
  take("out", c.out);
  take("hidden", c.hidden);
  take("kill-rank", c.kill_rank);
  take("kill-step", c.kill_step);
  take("kill-stamp", c.kill_stamp);
  take("pid-file", c.pid_file);
  take("progress", c.progress);
  take("verify", c.verify);
  if (!values.empty()) throw std::invalid_argument("unknown option --" + values.begin()->first);
  if (c.mode != "dp" && c.mode != "pipe") throw std::invalid_argument("--mode must be dp or pipe");
  if (c.verify.empty() && c.steps == 0) throw std::invalid_argument("--steps N (N >= 1) is required");
  if ((c.resume || !c.verify.empty() || c.every > 0) && c.dir.empty())
    throw std::invalid_argument("--resume, --every and --verify need --dir");
  if (c.hidden == 0) throw std::invalid_argument("--hidden must be at least 1");
  return c;
}

/// The class of a sample is the largest of 4 fixed linear scores, so the
/// task is learnable but not trivial.
Dataset make_data() {
  parallax::detail::rng g(data_seed);
  xt::xtensor<double, 2> w = xt::zeros<double>({features, classes});
  for (auto& v : w) v = 2 * g.uniform() - 1;
  xt::xtensor<double, 2> x = xt::zeros<double>({samples, features});
  Labels y = xt::zeros<std::int32_t>({samples});
  for (std::size_t i = 0; i < samples; ++i) {
    for (std::size_t j = 0; j < features; ++j) x(i, j) = 2 * g.uniform() - 1;
    std::size_t best = 0;
    double best_score = -1e300;
    for (std::size_t k = 0; k < classes; ++k) {
      double s = 0.1 * (g.uniform() - 0.5);
      for (std::size_t j = 0; j < features; ++j) s += x(i, j) * w(j, k);
      if (s > best_score) {
        best_score = s;
        best = k;
      }
    }
    y(i) = static_cast<std::int32_t>(best);
  }
  return Dataset(std::move(x), std::move(y));
}

parallax::optim::Adam<double> make_adam() { return parallax::optim::Adam<double>({.lr = learning_rate}); }

std::string step_of(const std::string& folder) { return fs::path(folder).filename().string(); }

double wall_clock() {
  timespec t{};
  clock_gettime(CLOCK_REALTIME, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

void write_text(const std::string& path, const std::string& text) {
  // Written beside and renamed, so a reader never sees half of it.
  const std::string temp = path + ".part";
  {
    std::ofstream f(temp);
    f << text << '\n';
  }
  fs::rename(temp, path);
}

/// What both trainers do after each optimizer step, on every rank: the
/// periodic checkpoint, then the planned death.
struct step_hooks {
  const config& cfg;
  const communicator& world;
  parallax::io::Checkpointer* checkpoints;
  std::uint64_t saved_step = ~std::uint64_t{0};
  int progress_fd = -1;

  /// Rank 0 appends "saving N" / "saved N" around each checkpoint with one
  /// unbuffered write each, so a SIGKILL cannot lose the line before it.
  void mark(const char* what, std::uint64_t step) const {
    if (progress_fd < 0) return;
    char line[64];
    const int n = std::snprintf(line, sizeof(line), "%s %llu\n", what, static_cast<unsigned long long>(step));
    if (::write(progress_fd, line, static_cast<std::size_t>(n)) != n) std::perror("ckpt_tool: --progress");
  }

  template <class Trainer>
  void after_step(Trainer& trainer, const parallax::data::DistributedSampler& sampler) {
    const std::uint64_t step = trainer.optimizer().steps();
    if (checkpoints && cfg.every > 0 && step % cfg.every == 0) {
      mark("saving", step);
      if (checkpoints->maybe_save(trainer, &sampler)) saved_step = step;
      mark("saved", step);
    }
    if (world.rank() == cfg.kill_rank && step == cfg.kill_step) {
      if (!cfg.kill_stamp.empty()) {
        char text[64];
        std::snprintf(text, sizeof(text), "%.6f", wall_clock());
        write_text(cfg.kill_stamp, text);
      }
      std::fprintf(stderr, "ckpt_tool: rank %d raises SIGKILL after step %llu\n", world.rank(),
                   static_cast<unsigned long long>(step));
      std::fflush(stderr);
      std::raise(SIGKILL);
    }
  }

  /// The final checkpoint at --steps.
  template <class Trainer>
  void finish(Trainer& trainer, const parallax::data::DistributedSampler& sampler) {
    const std::uint64_t step = trainer.optimizer().steps();
    if (!checkpoints || saved_step == step) return;
    mark("saving", step);
    checkpoints->save(trainer, &sampler);
    mark("saved", step);
  }

  /// Opens --progress (rank 0) and writes --pid-file: training starts.
  void start() {
    if (world.rank() != 0) return;
    if (!cfg.progress.empty()) {
      progress_fd = ::open(cfg.progress.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (progress_fd < 0) throw std::runtime_error("cannot open --progress file '" + cfg.progress + "'");
    }
    if (!cfg.pid_file.empty()) write_text(cfg.pid_file, std::to_string(::getpid()));
  }
  ~step_hooks() {
    if (progress_fd >= 0) ::close(progress_fd);
  }
};

/// Said at once, before training: a job killed later has still said it.
void announce_resume(const communicator& world, const std::string& from, std::uint64_t step) {
  if (world.rank() == 0) std::cout << "ckpt_tool: resuming from " << from << " at step " << step << std::endl;
}

void write_doubles(const std::string& path, const std::vector<double>& values) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(values.data()), static_cast<std::streamsize>(values.size() * sizeof(double)));
  f.close();
  if (!f) throw std::runtime_error("cannot write '" + path + "'");
}

std::vector<double> flat(auto&& tensors) {
  std::vector<double> out;
  parallax::detail::for_each_tensor(tensors, [&](auto& t) { out.insert(out.end(), t.begin(), t.end()); });
  return out;
}

/// The pipeline's parameters in layer order, on rank 0.
std::vector<double> gather_pipe(Pipe& pipe) {
  std::vector<double> mine;
  pipe.for_each_local_layer([&](std::size_t, auto& layer) {
    if constexpr (parallax::HasLayerParameters<std::remove_cvref_t<decltype(layer)>>) {
      const auto part = flat(layer.parameters());
      mine.insert(mine.end(), part.begin(), part.end());
    }
  });
  std::vector<std::vector<double>> all;
  boost::mpi::gather(pipe.communicator(), mine, all, 0);
  std::vector<double> out;
  for (const auto& part : all) out.insert(out.end(), part.begin(), part.end());
  return out;
}

Net make_net(std::size_t h) {
  Net net{nn::Linear<double>(features, h), nn::Tanh<double>{}, nn::Linear<double>(h, h), nn::Tanh<double>{},
          nn::Linear<double>(h, classes), nn::SoftmaxCrossEntropy<double>{}};
  net.initialize(init_seed);
  return net;
}

auto pipe_args(std::size_t h) {
  return std::tuple{std::tuple{features, h}, std::tuple{}, std::tuple{h, h}, std::tuple{}, std::tuple{h, h},
                    std::tuple{},            std::tuple{h, classes}, std::tuple{}};
}

/// --verify: the given folder loads, and resume_latest() finds a checkpoint.
template <class Trainer>
int verify(Trainer& trainer, parallax::data::DistributedSampler& sampler, const config& cfg,
           const communicator& world) {
  parallax::io::Checkpointer checkpoints(cfg.dir, {.keep = cfg.keep}, world);
  const bool root = world.rank() == 0;
  int status = 0;
  try {
    checkpoints.load(trainer, &sampler, cfg.verify);
    if (root)
      std::cout << "verify: loaded " << step_of(cfg.verify) << " step " << trainer.optimizer().steps() << std::endl;
  } catch (const parallax::error& e) {
    if (root) std::cout << "verify: load failed: " << e.what() << std::endl;
    status = 1;
  }
  const auto latest = checkpoints.resume_latest(trainer, &sampler);
  if (root)
    std::cout << "verify: resume_latest " << (latest ? step_of(*latest) : std::string("none")) << " skipped "
              << checkpoints.skipped().size() << std::endl;
  return latest ? status : 1;
}

int run_data_parallel(const config& cfg, const communicator& world) {
  const auto data = make_data();
  step_hooks hooks{cfg, world, nullptr};
  parallax::data_parallel_options options;
  options.lr_schedule = parallax::optim::cosine_lr(learning_rate, schedule_steps);
  parallax::data::DistributedSampler* sampler_ptr = nullptr;
  parallax::DataParallel<Net>* trainer_ptr = nullptr;
  options.after_step = [&](const parallax::step_report&) { hooks.after_step(*trainer_ptr, *sampler_ptr); };
  options.stop_when = [&](const parallax::step_report& r) { return r.optimizer_step >= cfg.steps; };
  parallax::DataParallel trainer(make_net(cfg.hidden), make_adam(), std::move(options), world);
  auto sampler = trainer.make_sampler(data.size(), global_batch, {.seed = shuffle_seed});
  trainer_ptr = &trainer;
  sampler_ptr = &sampler;
  if (!cfg.verify.empty()) return verify(trainer, sampler, cfg, world);

  std::optional<parallax::io::Checkpointer> checkpoints;
  if (!cfg.dir.empty()) checkpoints.emplace(cfg.dir, parallax::io::checkpoint_options{.keep = cfg.keep, .every_steps = cfg.every}, world);
  hooks.checkpoints = checkpoints ? &*checkpoints : nullptr;
  std::string resumed = "none";
  if (cfg.resume) {
    if (const auto from = checkpoints->resume_latest(trainer, &sampler)) resumed = step_of(*from);
    hooks.saved_step = trainer.optimizer().steps();
    announce_resume(world, resumed, trainer.optimizer().steps());
  }
  hooks.start();
  const std::uint64_t start = trainer.optimizer().steps();
  while (trainer.optimizer().steps() < cfg.steps) trainer.train_epoch(data, sampler);
  hooks.finish(trainer, sampler);

  // The replicas must be equal: the same bits on every rank.
  const auto params = flat(trainer.model().parameters());
  std::vector<std::vector<double>> all;
  boost::mpi::gather(world, params, all, 0);
  const auto eval = trainer.evaluate(data);
  if (world.rank() == 0) {
    for (std::size_t r = 1; r < all.size(); ++r)
      if (all[r] != params) throw std::runtime_error("the replica of rank " + std::to_string(r) + " differs from rank 0's");
    if (!cfg.out.empty()) write_doubles(cfg.out, params);
    std::cout << "ckpt_tool: dp at " << world.size() << " rank(s): resumed from " << resumed << ", steps " << start
              << " -> " << trainer.optimizer().steps() << " (epoch " << sampler.epoch() << ", position "
              << sampler.position() << "), loss " << eval.loss << ", " << params.size() << " parameters" << std::endl;
  }
  return 0;
}

int run_pipeline(const config& cfg, const communicator& world) {
  const auto data = make_data();
  step_hooks hooks{cfg, world, nullptr};
  parallax::data::DistributedSampler* sampler_ptr = nullptr;
  Pipe* pipe_ptr = nullptr;
  Pipe pipe(pipe_args(cfg.hidden), make_adam(),
            {.micro_batches = micro_batches,
             .seed = init_seed,
             .lr_schedule = parallax::optim::cosine_lr(learning_rate, schedule_steps),
             .after_step = [&](const parallax::step_report&) { hooks.after_step(*pipe_ptr, *sampler_ptr); },
             .stop_when = [&](const parallax::step_report& r) { return r.optimizer_step >= cfg.steps; }},
            world);
  // Every stage takes the whole global batch: a plan of one shard.
  auto sampler = pipe.make_sampler(data.size(), global_batch, {.seed = shuffle_seed});
  pipe_ptr = &pipe;
  sampler_ptr = &sampler;
  if (!cfg.verify.empty()) return verify(pipe, sampler, cfg, world);

  std::optional<parallax::io::Checkpointer> checkpoints;
  if (!cfg.dir.empty()) checkpoints.emplace(cfg.dir, parallax::io::checkpoint_options{.keep = cfg.keep, .every_steps = cfg.every}, world);
  hooks.checkpoints = checkpoints ? &*checkpoints : nullptr;
  std::string resumed = "none";
  if (cfg.resume) {
    if (const auto from = checkpoints->resume_latest(pipe, &sampler)) resumed = step_of(*from);
    hooks.saved_step = pipe.optimizer().steps();
    announce_resume(world, resumed, pipe.optimizer().steps());
  }
  hooks.start();
  const std::uint64_t start = pipe.optimizer().steps();
  while (pipe.optimizer().steps() < cfg.steps) pipe.train_epoch(data, sampler);
  hooks.finish(pipe, sampler);
  const auto params = gather_pipe(pipe);
  const auto eval = pipe.evaluate(data);
  if (world.rank() == 0) {
    if (!cfg.out.empty()) write_doubles(cfg.out, params);
    std::cout << "ckpt_tool: pipe at " << world.size() << " stage(s): resumed from " << resumed << ", steps " << start
              << " -> " << pipe.optimizer().steps() << " (epoch " << sampler.epoch() << ", position "
              << sampler.position() << "), loss " << eval.loss << ", " << params.size() << " parameters" << std::endl;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  communicator world;
  config cfg;
  try {
    cfg = parse(argc, argv);
  } catch (const std::exception& e) {
    // The same arguments on every rank: rank 0 says what is wrong.
    if (world.rank() == 0) std::cerr << "ckpt_tool: " << e.what() << std::endl;
    return 1;
  }
  try {
    return cfg.mode == "dp" ? run_data_parallel(cfg, world) : run_pipeline(cfg, world);
  } catch (const parallax::error& e) {
    // Agreed by parallax: the same on every rank, so rank 0 says it.
    if (world.rank() == 0) std::cerr << "ckpt_tool: error: " << e.what() << std::endl;
    return 1;
  } catch (const std::exception& e) {
    // Not agreed: other ranks may wait in a collective, so the job is ended.
    std::cerr << "ckpt_tool: error on rank " << world.rank() << ": " << e.what() << std::endl;
    env.abort(1);
  }
  return 1;
}
