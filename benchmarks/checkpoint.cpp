// SPDX-License-Identifier: BSL-1.0
// checkpoint: how long a checkpoint of the MLP 784-2048-2048-10 (ReLU,
// softmax cross-entropy, float; 5.8 M parameters) with Adam state takes to
// write and to load, under DataParallel over every rank (rank 0 writes the one
// state file; every rank reads it back), and how that compares with what the
// disk does for the same bytes: write() + fsync() of a plain file in the same
// folder, and read() of the checkpoint file (from the page cache, as the load
// that follows a save reads it).
//
// One Adam step first, so the two moment slots exist; then --warmup saves and
// loads, then --repeats of each; a time is the slowest rank's, reported as the
// median and min-max. MB/s counts the checkpoint's file bytes (1 MB = 1e6 B).
//
//   OPENBLAS_NUM_THREADS=1 mpiexec -n 2 build/benchmarks/checkpoint
//       [--dir DIR] [--repeats 5] [--warmup 1] [--json checkpoint.json]
//
// --dir: the checkpoint folder (default /tmp/parallax-ckpt-bench-<pid>,
// removed at the end; a given folder is left, minus what this run wrote).
#include "bench.hpp"

#include <parallax/data_parallel.hpp>
#include <parallax/io/checkpoint.hpp>
#include <parallax/nn/activation.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/loss.hpp>
#include <parallax/nn/sequential.hpp>
#include <parallax/optim/adam.hpp>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/environment.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using Net = parallax::nn::Sequential<parallax::nn::Linear<float>, parallax::nn::ReLU<float>,
                                     parallax::nn::Linear<float>, parallax::nn::ReLU<float>,
                                     parallax::nn::Linear<float>, parallax::nn::SoftmaxCrossEntropy<float>>;

Net make_net() {
  Net net{parallax::nn::Linear<float>(784, 2048), parallax::nn::ReLU<float>{}, parallax::nn::Linear<float>(2048, 2048),
          parallax::nn::ReLU<float>{},           parallax::nn::Linear<float>(2048, 10),
          parallax::nn::SoftmaxCrossEntropy<float>{}};
  net.initialize(1);
  return net;
}

/// A batch of random images and labels.
Net::batch_type make_batch(std::size_t n) {
  parallax::detail::rng g(3);
  Net::batch_type b;
  b.inputs = xt::zeros<float>({n, std::size_t(784)});
  b.targets = xt::zeros<std::int32_t>({n});
  for (auto& v : b.inputs) v = static_cast<float>(g.uniform());
  for (auto& t : b.targets) t = static_cast<std::int32_t>(g.below(10));
  return b;
}

std::uintmax_t folder_bytes(const std::string& folder) {
  std::uintmax_t total = 0;
  for (const auto& entry : fs::directory_iterator(folder))
    if (entry.is_regular_file()) total += entry.file_size();
  return total;
}

/// The disk's own speed: `bytes` written with write() and made durable with
/// fsync(), to a new file (as the checkpoint writes a new temporary file).
void raw_write(const std::string& path, const std::vector<char>& data) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("cannot create " + path);
  std::size_t done = 0;
  while (done < data.size()) {
    const ssize_t w = ::write(fd, data.data() + done, data.size() - done);
    if (w <= 0) throw std::runtime_error("write failed: " + path);
    done += static_cast<std::size_t>(w);
  }
  if (::fsync(fd) != 0) throw std::runtime_error("fsync failed: " + path);
  ::close(fd);
}

std::size_t raw_read(const std::string& path, std::vector<char>& into) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("cannot open " + path);
  std::size_t done = 0;
  for (ssize_t r; done < into.size() && (r = ::read(fd, into.data() + done, into.size() - done)) > 0;)
    done += static_cast<std::size_t>(r);
  ::close(fd);
  return done;
}

double mb_per_s(double bytes, double seconds) { return seconds > 0 ? bytes / seconds / 1e6 : 0.0; }

}  // namespace

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  boost::mpi::communicator world;
  const bench::args args(argc, argv);
  const bool root = world.rank() == 0;
  const long repeats = args.get("repeats", 5L);
  const long warmup = args.get("warmup", 1L);
  const auto json = args.get("json", std::string());
  std::string dir = args.get("dir", std::string());
  const bool own_dir = dir.empty();
  if (own_dir && root) dir = (fs::temp_directory_path() / ("parallax-ckpt-bench-" + std::to_string(::getpid()))).string();
  boost::mpi::broadcast(world, dir, 0);

  try {
    parallax::DataParallel trainer(make_net(), parallax::optim::Adam<float>({.lr = 1e-3}), {}, world);
    const std::size_t global = 64;
    auto sampler = trainer.make_sampler(1024, global, {.seed = 1});
    const auto batch = make_batch(global / static_cast<std::size_t>(world.size()) +
                                  (static_cast<std::size_t>(world.rank()) < global % static_cast<std::size_t>(world.size()) ? 1 : 0));
    trainer.train_step(batch);  // Adam's moments exist from here on
    const auto state = trainer.optimizer().state();
    std::size_t parameters = 0;
    parallax::detail::for_each_tensor(trainer.model().parameters(), [&](auto& t) { parameters += t.size(); });
    const double raw_bytes = static_cast<double>(parameters * sizeof(float) * (1 + state.slots.size()));

    parallax::io::Checkpointer checkpoints(dir, {.keep = 1}, world);
    if (root)
      std::cout << "checkpoint: " << trainer.model().describe() << ", float, " << parameters << " parameters + Adam ("
                << state.slots.size() << " slots) = " << raw_bytes / 1e6 << " MB of state; DataParallel on "
                << bench::count_text(world.size(), "rank") << " (one writer); folder " << dir << "\n";

    std::string saved;
    // A checkpoint is never overwritten: each save of the same step first
    // removes the last one (untimed).
    auto remove_saved = [&] {
      if (root && !saved.empty()) fs::remove_all(saved);
      world.barrier();
    };
    for (long i = 0; i < warmup; ++i) {
      remove_saved();
      saved = checkpoints.save(trainer, &sampler);
      checkpoints.load(trainer, &sampler, saved);
    }
    std::vector<double> write_s, load_s, disk_write_s, disk_read_s;
    for (long i = 0; i < repeats; ++i) {
      remove_saved();
      write_s.push_back(bench::timed(world, [&] { saved = checkpoints.save(trainer, &sampler); }));
    }
    for (long i = 0; i < repeats; ++i) load_s.push_back(bench::timed(world, [&] { checkpoints.load(trainer, &sampler, saved); }));
    const auto file_bytes = static_cast<double>(folder_bytes(saved));

    // The baselines, on rank 0 (the writer) while the others wait.
    if (root) {
      std::vector<char> data(static_cast<std::size_t>(file_bytes), '\x5a');
      const std::string plain = (fs::path(dir) / "raw-write.bin").string();
      for (long i = 0; i < warmup + repeats; ++i) {
        const double t0 = MPI_Wtime();
        raw_write(plain, data);
        const double t = MPI_Wtime() - t0;
        fs::remove(plain);
        if (i >= warmup) disk_write_s.push_back(t);
      }
      const std::string state_file = (fs::path(saved) / "state.bin").string();
      std::vector<char> back(fs::file_size(state_file));
      for (long i = 0; i < warmup + repeats; ++i) {
        const double t0 = MPI_Wtime();
        if (raw_read(state_file, back) != back.size()) throw std::runtime_error("short read of " + state_file);
        const double t = MPI_Wtime() - t0;
        if (i >= warmup) disk_read_s.push_back(t);
      }
    }
    world.barrier();
    if (own_dir && root) fs::remove_all(dir);
    else if (root) fs::remove_all(saved);
    if (!root) return 0;

    const auto w = bench::summarize(write_s), l = bench::summarize(load_s);
    const auto dw = bench::summarize(disk_write_s), dr = bench::summarize(disk_read_s);
    const double w_mb = mb_per_s(file_bytes, w.median), l_mb = mb_per_s(file_bytes, l.median);
    const double dw_mb = mb_per_s(file_bytes, dw.median), dr_mb = mb_per_s(file_bytes, dr.median);
    std::printf("state %.1f MB raw, %.1f MB in files (%.4f x raw)\n", raw_bytes / 1e6, file_bytes / 1e6,
                file_bytes / raw_bytes);
    std::printf("                   seconds, median (min-max)\n");
    std::printf("checkpoint write   %-19s  %7.0f MB/s\n", bench::spread_text(w).c_str(), w_mb);
    std::printf("write()+fsync      %-19s  %7.0f MB/s   checkpoint at %.2f x the disk\n",
                bench::spread_text(dw).c_str(), dw_mb, w_mb / dw_mb);
    std::printf("checkpoint load    %-19s  %7.0f MB/s\n", bench::spread_text(l).c_str(), l_mb);
    std::printf("read() (cached)    %-19s  %7.0f MB/s   load at %.2f x read()\n", bench::spread_text(dr).c_str(),
                dr_mb, l_mb / dr_mb);
    if (!json.empty()) {
      auto row = [&](const char* name, const bench::stats& s, double mb) {
        return bench::row()
            .set("name", name)
            .set("bytes", file_bytes)
            .set("median_s", s.median)
            .set("min", s.min)
            .set("max", s.max)
            .set("MB_per_s", mb)
            .set("repeats", static_cast<double>(repeats));
      };
      const std::vector<bench::row> rows = {row("checkpoint write", w, w_mb).set("ratio_to_disk", w_mb / dw_mb),
                                            row("write+fsync", dw, dw_mb),
                                            row("checkpoint load", l, l_mb).set("ratio_to_read", l_mb / dr_mb),
                                            row("read (page cache)", dr, dr_mb)};
      bench::write_json(json, "checkpoint", rows,
                        bench::environment_meta(world)
                            .set("model", trainer.model().describe())
                            .set("parameters", static_cast<double>(parameters))
                            .set("raw_state_bytes", raw_bytes)
                            .set("file_bytes", file_bytes)
                            .set("dir", own_dir ? std::string("(temporary)") : dir));
      std::cout << "wrote " << json << "\n";
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "checkpoint: error on rank " << world.rank() << ": " << e.what() << std::endl;
    if (own_dir && root) fs::remove_all(dir);
    env.abort(1);
  }
  return 1;
}
