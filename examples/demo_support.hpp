// SPDX-License-Identifier: BSL-1.0
// The pieces the two full demo programs (fashion_mnist, char_lm) share: the
// live progress bar on rank 0, number formatting, the --json file, the
// checkpoint options (--checkpoint-dir, --checkpoint-every, --resume), the
// epoch loop and the exit status of a failure.
#pragma once

#include <parallax/core/agree.hpp>
#include <parallax/core/error.hpp>
#include <parallax/data/sampler.hpp>
#include <parallax/io/checkpoint.hpp>
#include <parallax/pipeline/schedule.hpp>
#include <parallax/training/loop.hpp>

#include <CLI/CLI.hpp>
#include <boost/mpi/communicator.hpp>
#include <boost/mpi/environment.hpp>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <exception>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>
#include <utility>

namespace demo {

using clock_type = std::chrono::steady_clock;

// Whether rank 0's stdout reaches a terminal. Open MPI hands each local rank
// a pseudo-terminal for stdout whatever mpiexec's own stdout is (a pipe, a
// file), so isatty() alone says yes under `mpiexec ... > log`; ask the parent
// (mpiexec, its daemon, or the shell) where its stdout goes.
inline bool stdout_is_terminal() {
  if (!isatty(STDOUT_FILENO)) return false;
  std::error_code ec;
  const auto target = std::filesystem::read_symlink("/proc/" + std::to_string(getppid()) + "/fd/1", ec).string();
  if (ec) return true;  // cannot tell (another user's process): trust isatty
  return target.rfind("/dev/pts/", 0) == 0 || target.rfind("/dev/tty", 0) == 0 || target == "/dev/console";
}

inline std::string fixed(double value, int digits) {
  std::ostringstream out;
  out << std::fixed << std::setprecision(digits) << value;
  return out.str();
}

inline std::string minutes_seconds(double seconds) {
  const auto s = static_cast<long>(seconds + 0.5);
  std::ostringstream out;
  out << s / 60 << ':' << std::setw(2) << std::setfill('0') << s % 60;
  return out.str();
}

// Rank 0's live bar on a terminal: the trainers call step() after every
// step (on rank 0 only); redrawn with '\r' at most 10 times a second. A
// sample counts `unit_size` units (1 image; a sequence's tokens).
class progress_bar {
 public:
  progress_bar(bool enabled, int epochs, std::string unit = "samples", std::size_t unit_size = 1)
      : enabled_(enabled), epochs_(epochs), unit_(std::move(unit)), unit_size_(unit_size) {}

  void step(const parallax::step_report& r) {
    if (!enabled_) return;
    const auto now = clock_type::now();
    if (r.step == 0) {
      start_ = now - std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(r.seconds));
      samples_ = 0;
      loss_sum_ = 0;
    }
    samples_ += r.samples;
    loss_sum_ += r.loss * static_cast<double>(r.samples);
    const bool last = r.step + 1 == r.steps_per_epoch;
    if (!last && r.step != 0 && now - drawn_ < std::chrono::milliseconds(100)) return;
    drawn_ = now;
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    const double rate = elapsed > 0 ? static_cast<double>(samples_) / elapsed : 0.0;
    const double done = static_cast<double>(r.step + 1) / static_cast<double>(r.steps_per_epoch);
    const double left = rate > 0 ? static_cast<double>(samples_) * (1 / done - 1) / rate : 0.0;
    constexpr int width = 20;  // the whole line stays under 80 columns
    const int filled = static_cast<int>(done * width);
    std::string bar(static_cast<std::size_t>(filled), '=');
    if (filled < width) bar += '>' + std::string(static_cast<std::size_t>(width - filled - 1), ' ');
    std::cout << "\repoch " << r.epoch + 1 << '/' << epochs_ << " [" << bar << "] " << std::setw(3)
              << static_cast<int>(done * 100) << "% " << static_cast<long>(rate * static_cast<double>(unit_size_))
              << ' ' << unit_ << "/s loss " << fixed(loss_sum_ / static_cast<double>(samples_), 4) << " ETA "
              << minutes_seconds(left) << ' ' << std::flush;
  }

  // Replaces the bar by the epoch's result line.
  void line(const std::string& text) const {
    if (enabled_) std::cout << '\r' << std::string(79, ' ') << '\r';
    std::cout << text << std::endl;
  }

 private:
  bool enabled_;
  int epochs_;
  std::string unit_;
  std::size_t unit_size_;
  clock_type::time_point start_{}, drawn_{};
  std::size_t samples_ = 0;
  double loss_sum_ = 0;
};

// --checkpoint-dir, --checkpoint-every and --resume.
struct checkpoint_flags {
  std::string dir;  // empty: no checkpoints
  std::uint64_t every = 0;
  bool resume = false;
};

inline void add_checkpoint_options(CLI::App& app, checkpoint_flags& flags) {
  app.add_option("--checkpoint-dir", flags.dir, "Save checkpoints in this folder (the newest 3 are kept)");
  app.add_option("--checkpoint-every", flags.every,
                 "Also checkpoint every K optimizer steps (0: only at the end of each epoch)")
      ->capture_default_str();
  app.add_flag("--resume", flags.resume, "Continue from the newest valid checkpoint in --checkpoint-dir");
}

// --micro-batches and --pipeline-schedule, for the pipeline strategy.
struct pipeline_flags {
  std::size_t micro_batches = 4;
  std::string schedule = parallax::pipeline::schedule_name(parallax::pipeline::schedule_kind::one_f_one_b);
  static constexpr parallax::pipeline::schedule_kind kinds[] = {parallax::pipeline::schedule_kind::gpipe,
                                                                parallax::pipeline::schedule_kind::one_f_one_b,
                                                                parallax::pipeline::schedule_kind::zero_bubble};
  /// The schedule named (add_pipeline_options has checked the name).
  parallax::pipeline::schedule_kind kind() const {
    for (const auto k : kinds)
      if (schedule == parallax::pipeline::schedule_name(k)) return k;
    return parallax::pipeline::schedule_kind::one_f_one_b;
  }
};

inline void add_pipeline_options(CLI::App& app, pipeline_flags& flags) {
  app.add_option("--micro-batches", flags.micro_batches, "Micro-batches per step (pipeline)")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1024}))
      ->capture_default_str();
  std::vector<std::string> names;
  for (const auto k : pipeline_flags::kinds) names.emplace_back(parallax::pipeline::schedule_name(k));
  app.add_option("--pipeline-schedule", flags.schedule,
                 "Pipeline schedule: gpipe, 1f1b or zero_bubble (1F1B with the weight gradients moved into the "
                 "waits: the same results, faster, a little more memory)")
      ->check(CLI::IsMember(names))
      ->capture_default_str();
}

// Checkpoints, when asked for: every `every` optimizer steps, and at the end
// of every epoch (end_epoch); --resume continues from the newest valid one.
inline std::optional<parallax::io::Checkpointer> make_checkpointer(const checkpoint_flags& flags,
                                                                   const boost::mpi::communicator& world) {
  if (flags.dir.empty()) return std::nullopt;
  return std::optional<parallax::io::Checkpointer>(
      std::in_place, flags.dir, parallax::io::checkpoint_options{.keep = 3, .every_steps = flags.every}, world);
}

template <class Trainer>
void resume(const checkpoint_flags& flags, std::optional<parallax::io::Checkpointer>& checkpoints, Trainer& trainer,
            parallax::data::DistributedSampler& sampler, const boost::mpi::communicator& world) {
  if (!flags.resume) return;
  PARALLAX_CHECK(checkpoints.has_value(), "--resume needs --checkpoint-dir");
  const auto from = checkpoints->resume_latest(trainer, &sampler);
  if (world.rank() == 0)
    std::cout << (from ? "resumed from " + *from + " (epoch " + std::to_string(sampler.epoch() + 1) + ", step " +
                             std::to_string(sampler.position()) + ")"
                       : "no checkpoint in " + flags.dir + ": starting from scratch")
              << std::endl;
}

// The epochs of a run: a sampler of the training set for `trainer`,
// checkpoints when asked for (every flags.every steps and at the end of
// every epoch), --resume; on_epoch(epoch, report) after each epoch.
template <class Trainer, class Dataset, class OnEpoch>
void train_epochs(Trainer& trainer, const Dataset& train, std::size_t batch_size, std::uint64_t seed, int epochs,
                  const checkpoint_flags& flags, const boost::mpi::communicator& world, OnEpoch&& on_epoch) {
  auto sampler = trainer.make_sampler(train.size(), batch_size, {.seed = seed});
  auto checkpoints = make_checkpointer(flags, world);
  if (checkpoints)
    trainer.set_after_step([&](const parallax::step_report&) { checkpoints->maybe_save(trainer, &sampler); });
  resume(flags, checkpoints, trainer, sampler, world);
  for (auto epoch = sampler.epoch(); epoch < static_cast<std::uint64_t>(epochs); ++epoch) {
    const auto report = trainer.train_epoch(train, sampler);
    // maybe_save() may have saved this step already; a checkpoint is never overwritten.
    if (checkpoints && checkpoints->last_step() != trainer.optimizer().steps()) checkpoints->save(trainer, &sampler);
    on_epoch(epoch, report);
  }
}

// Rank 0's line about a pipeline's stages.
template <class Pipeline>
void print_stages(const Pipeline& pipeline, const pipeline_flags& flags, const boost::mpi::communicator& world) {
  if (world.rank() != 0) return;
  std::cout << "pipeline: " << world.size() << (world.size() == 1 ? " stage" : " stages") << ", layers";
  for (std::size_t s = 0; s + 1 < pipeline.boundaries().size(); ++s)
    std::cout << (s ? " | " : " ") << pipeline.boundaries()[s] << "-" << pipeline.boundaries()[s + 1] - 1;
  std::cout << ", " << flags.micro_batches << " micro-batches, " << flags.schedule << std::endl;
}

// The --json summary file, open on rank 0 (closed elsewhere, and when no
// path is given); a path rank 0 cannot write fails every rank now, not
// after the training.
inline std::ofstream open_summary(const std::string& path, const boost::mpi::communicator& world) {
  std::ofstream json;
  parallax::agree(world, [&] {
    if (world.rank() != 0 || path.empty()) return;
    json.open(path);
    PARALLAX_CHECK(json.is_open(), "--json: cannot write '" + path + "'");
  });
  return json;
}

// Parses the command line; an exit status when the program should end now
// (--help, or a bad argument: the same on every rank, so rank 0 speaks).
inline std::optional<int> parse(CLI::App& app, int argc, char** argv, const boost::mpi::communicator& world) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (world.rank() == 0) return app.exit(e);
    return e.get_exit_code();
  }
  return std::nullopt;
}

// Runs a program's body and turns its failures into an exit status: a
// parallax::error (agreed, so the same on every rank) is printed by rank 0
// and gives 1; any other exception is not agreed (the other ranks may be
// waiting in a collective), so its rank prints it and aborts the job.
template <class Body>
int guarded(const char* program, boost::mpi::environment& env, const boost::mpi::communicator& world, Body&& body) {
  try {
    return body();
  } catch (const parallax::error& e) {
    if (world.rank() == 0) std::cerr << program << ": error: " << e.what() << std::endl;
    return 1;
  } catch (const std::exception& e) {
    std::cerr << program << ": error on rank " << world.rank() << ": " << e.what() << std::endl;
    env.abort(1);
  }
  return 1;
}

}  // namespace demo
