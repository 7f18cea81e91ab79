// SPDX-License-Identifier: BSL-1.0
// char_lm: a GPT-style character-level language model trained over every
// rank of mpiexec, data parallel (each rank its share of every global batch
// of sequences), as a pipeline (the blocks cut into one stage per rank) or
// tensor parallel (each layer's attention heads and MLP columns split over
// the ranks, Megatron-LM style).
// The model (examples/gpt.hpp): token and position embeddings, two pre-norm
// transformer blocks (causal self-attention and a GELU MLP, each inside a
// Residual), a final LayerNorm and a linear head over the characters, a
// token-level softmax cross-entropy. Rank 0 reports the training and
// validation loss per epoch (nats per character) and, at the end,
// characters the model writes.
//
//   mpiexec -n 2 build/examples/char_lm                          # data parallel, 6 epochs
//   mpiexec -n 2 build/examples/char_lm --strategy pipeline
//   mpiexec -n 2 build/examples/char_lm --strategy tensor
//   mpiexec -n 2 build/examples/char_lm --checkpoint-dir ckpt --resume   # ckpt/char_lm-heads records --heads
//   build/examples/char_lm --help
//
// Corpus: the license texts Debian's base-files package installs in
// /usr/share/common-licenses (every regular file there, by name; symbolic
// links skipped), about 300 KB of English on every Debian system, or any
// folder of text files (--corpus-dir). Every 10th window of the text is held
// out for validation. Run one BLAS thread per rank (OPENBLAS_NUM_THREADS=1).
// Exit status: 0 on success, 1 on an error, 2 when the final validation loss
// is above --max-loss.
#include "demo_support.hpp"
#include "gpt.hpp"

#include <parallax/core/blas.hpp>
#include <parallax/core/comm.hpp>
#include <parallax/data/batch.hpp>
#include <parallax/data_parallel.hpp>
#include <parallax/nn/attention.hpp>
#include <parallax/nn/parallel_attention.hpp>
#include <parallax/nn/tensor_parallel.hpp>
#include <parallax/optim/adam.hpp>
#include <parallax/optim/schedule.hpp>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>
#include <boost/mpi/environment.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <random>
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
  int epochs = 6;
  std::size_t batch_size = 32;  // global, in sequences: split over the ranks
  std::size_t context = 64;     // characters per sequence
  std::size_t width = 128;
  std::size_t heads = 4;
  double lr = 3e-3;
  std::uint64_t seed = 1;
  std::string corpus_dir = "/usr/share/common-licenses";
  std::size_t limit = 0;  // 0: the whole corpus
  demo::pipeline_flags pipeline;  // --micro-batches, --pipeline-schedule
  std::size_t generate = 200;
  std::string prompt = "Permission is ";
  std::string json;
  bool quiet = false;
  double max_loss = 0;  // 0: no check
  demo::checkpoint_flags checkpoints;
};

// --- data ---------------------------------------------------------------------

using Ids = xt::xtensor<std::int64_t, 2>;
using Windows = parallax::data::TensorDataset<Ids, Ids>;

struct corpus {
  std::string alphabet;             // the characters (bytes) that occur, sorted: id i is alphabet[i]
  std::array<std::int64_t, 256> id;  // byte -> id, -1 when absent
  Windows train, validation;
  std::size_t characters = 0, files = 0;
};

// Every regular file of the folder, by name, each followed by a newline;
// the first `limit` characters when limit > 0.
std::string read_corpus(const config& cfg, std::size_t& files) {
  namespace fs = std::filesystem;
  std::error_code ec;
  PARALLAX_CHECK(fs::is_directory(cfg.corpus_dir, ec),
                 "read_corpus(): '" + cfg.corpus_dir +
                     "' is not a folder (Debian's base-files installs /usr/share/common-licenses; or pass "
                     "--corpus-dir DIR with text files)");
  std::vector<fs::path> paths;
  for (const auto& entry : fs::directory_iterator(cfg.corpus_dir))
    if (entry.is_regular_file() && !entry.is_symlink()) paths.push_back(entry.path());
  std::sort(paths.begin(), paths.end());
  std::string text;
  for (const auto& path : paths) {
    std::ifstream in(path, std::ios::binary);
    PARALLAX_CHECK(in.is_open(), "read_corpus(): cannot read '" + path.string() + "'");
    text.append(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    text += '\n';
  }
  files = paths.size();
  if (cfg.limit > 0 && cfg.limit < text.size()) text.resize(cfg.limit);
  PARALLAX_CHECK(text.size() > 10 * (cfg.context + 1),
                 "read_corpus(): '" + cfg.corpus_dir + "' holds " + std::to_string(text.size()) +
                     " characters, too few for 10 windows of " + std::to_string(cfg.context + 1) +
                     " (--context + 1)");
  return text;
}

// Windows of context + 1 characters, one every `context`: the first context
// are the inputs, the last context the targets (the next character of each).
// Window k goes to validation when k % 10 == 9.
corpus load(const config& cfg) {
  corpus c;
  const std::string text = read_corpus(cfg, c.files);
  c.characters = text.size();
  std::array<bool, 256> seen{};
  for (const char ch : text) seen[static_cast<unsigned char>(ch)] = true;
  c.id.fill(-1);
  for (std::size_t b = 0; b < 256; ++b)
    if (seen[b]) {
      c.id[b] = static_cast<std::int64_t>(c.alphabet.size());
      c.alphabet += static_cast<char>(b);
    }
  const std::size_t S = cfg.context, windows = (text.size() - 1) / S;
  const std::size_t held = windows / 10;
  Ids train_in({windows - held, S}), train_out({windows - held, S}), val_in({held, S}), val_out({held, S});
  for (std::size_t k = 0, t = 0, v = 0; k < windows; ++k) {
    const bool validation = k % 10 == 9;
    Ids& in = validation ? val_in : train_in;
    Ids& out = validation ? val_out : train_out;
    const std::size_t row = validation ? v++ : t++;
    for (std::size_t s = 0; s < S; ++s) {
      in(row, s) = c.id[static_cast<unsigned char>(text[k * S + s])];
      out(row, s) = c.id[static_cast<unsigned char>(text[k * S + s + 1])];
    }
  }
  c.train = Windows(std::move(train_in), std::move(train_out));
  c.validation = Windows(std::move(val_in), std::move(val_out));
  return c;
}

// The parameters' shapes do not show how many heads split the width: the
// checkpoint folder keeps it beside the checkpoints (char_lm-heads), and a
// --resume with other --heads is an error on every rank, not a silently
// different model. A run without --resume records its own.
void check_recorded_heads(const config& cfg, const boost::mpi::communicator& world) {
  namespace fs = std::filesystem;
  if (cfg.checkpoints.dir.empty()) return;
  parallax::agree(world, [&] {
    if (world.rank() != 0) return;
    const fs::path file = fs::path(cfg.checkpoints.dir) / "char_lm-heads";
    if (cfg.checkpoints.resume && fs::exists(file)) {
      std::size_t heads = 0;
      std::ifstream(file) >> heads;
      PARALLAX_CHECK(heads == cfg.heads, "--resume: the checkpoints in '" + cfg.checkpoints.dir +
                                             "' were written with --heads " + std::to_string(heads) +
                                             ", this run has --heads " + std::to_string(cfg.heads));
      return;
    }
    fs::create_directories(cfg.checkpoints.dir);
    std::ofstream(file) << cfg.heads << "\n";
  });
}

// --- training -----------------------------------------------------------------

gpt::shape shape(const config& cfg, const corpus& c) {
  return {.vocabulary = c.alphabet.size(), .context = cfg.context, .width = cfg.width, .heads = cfg.heads};
}

struct epoch_result {
  double train_loss = 0, validation_loss = 0, seconds = 0, tokens_per_second = 0;
};

struct run_result {
  std::vector<epoch_result> epochs;
  std::size_t parameters = 0;
  double train_seconds = 0;
  std::string generated;
  double loss() const { return epochs.empty() ? NAN : epochs.back().validation_loss; }
};

void finish_epoch(run_result& result, const config& cfg, std::uint64_t epoch, const parallax::epoch_report& report,
                  const parallax::evaluation& validation, const boost::mpi::communicator& world,
                  demo::progress_bar& progress) {
  const double tokens = static_cast<double>(report.samples * cfg.context);
  epoch_result e{report.loss, validation.loss, report.seconds, report.seconds > 0 ? tokens / report.seconds : 0.0};
  result.train_seconds += e.seconds;
  result.epochs.push_back(e);
  if (world.rank() == 0)
    progress.line("epoch " + std::to_string(epoch + 1) + "/" + std::to_string(cfg.epochs) + ": " +
                  (report.samples > 0 ? "train loss " + fixed(e.train_loss, 4) : "no step left (resumed at its end)") +
                  ", validation loss " + fixed(e.validation_loss, 4) + " nats/char  (" + fixed(e.seconds, 1) +
                  " s, " + std::to_string(static_cast<long>(e.tokens_per_second)) + " tokens/s)");
}

// Characters the model writes after the prompt: each one drawn from the
// softmax of the last position's logits (temperature 0.8), the model seeing
// the last `context` characters. `logits(ids)` is the chain's output for a
// [1, n] batch; every rank draws the same characters (the same seed).
template <class Logits>
std::string generate(const config& cfg, const corpus& c, Logits&& logits) {
  std::vector<std::int64_t> ids;
  for (const char ch : cfg.prompt)  // characters the corpus lacks are left out (main says which)
    if (c.id[static_cast<unsigned char>(ch)] >= 0) ids.push_back(c.id[static_cast<unsigned char>(ch)]);
  if (ids.empty()) ids.push_back(0);
  std::mt19937_64 draw(cfg.seed);
  std::string out;
  for (std::size_t n = 0; n < cfg.generate; ++n) {
    const std::size_t length = std::min(ids.size(), cfg.context);
    Ids x({std::size_t(1), length});
    std::copy(ids.end() - static_cast<std::ptrdiff_t>(length), ids.end(), x.begin());
    const auto y = logits(x);
    const std::size_t V = y.shape()[2];
    std::vector<double> weights(V);
    const float* last = y.data() + (length - 1) * V;
    const double top = *std::max_element(last, last + V);
    for (std::size_t v = 0; v < V; ++v) weights[v] = std::exp((last[v] - top) / 0.8);
    const auto next = static_cast<std::int64_t>(std::discrete_distribution<std::size_t>(weights.begin(), weights.end())(draw));
    ids.push_back(next);
    out += c.alphabet[static_cast<std::size_t>(next)];
  }
  return out;
}

std::size_t steps_per_epoch(const config& cfg, const corpus& c) {
  return (c.train.size() + cfg.batch_size - 1) / cfg.batch_size;
}

template <class Options>
void common_options(Options& options, const config& cfg, const corpus& c, demo::progress_bar& progress) {
  options.lr_schedule = optim::cosine_lr(cfg.lr, static_cast<std::uint64_t>(cfg.epochs) * steps_per_epoch(cfg, c));
  options.on_step = [&progress](const parallax::step_report& r) { progress.step(r); };
}

template <class Trainer>
void train_epochs(Trainer& trainer, run_result& result, const config& cfg, const corpus& c,
                  const boost::mpi::communicator& world, demo::progress_bar& progress) {
  demo::train_epochs(trainer, c.train, cfg.batch_size, cfg.seed, cfg.epochs, cfg.checkpoints, world,
                     [&](std::uint64_t epoch, const parallax::epoch_report& report) {
                       finish_epoch(result, cfg, epoch, report, trainer.evaluate(c.validation, 64), world, progress);
                     });
  if (result.epochs.empty()) {  // resumed after the last epoch: nothing trained, the model is still measured
    result.epochs.push_back({NAN, trainer.evaluate(c.validation, 64).loss, 0, 0});
    if (world.rank() == 0)
      progress.line("all " + std::to_string(cfg.epochs) + " epochs were done before: nothing to train");
  }
}

// DataParallel over `replicas`: every rank of the world (--strategy data),
// or each rank alone while the layers split their weights over the world
// (--strategy tensor: the model's own collectives keep the ranks together).
template <class Net>
run_result train_replicas(Net net, std::size_t parameters, const config& cfg, const corpus& c,
                          const boost::mpi::communicator& world, const boost::mpi::communicator& replicas,
                          demo::progress_bar& progress) {
  net.initialize(cfg.seed);
  run_result result;
  result.parameters = parameters;
  parallax::data_parallel_options options;
  common_options(options, cfg, c, progress);
  parallax::DataParallel trainer(std::move(net), optim::Adam<float>({.lr = cfg.lr}), std::move(options), replicas);
  train_epochs(trainer, result, cfg, c, world, progress);
  // Replicas write alone, without communication; a split model writes on
  // every rank together.
  const bool split = replicas.size() != world.size();
  if ((split || world.rank() == 0) && cfg.generate > 0)
    result.generated = generate(cfg, c, [&](const Ids& x) { return trainer.model().predict(x); });
  return result;
}

run_result train_pipeline(const config& cfg, const corpus& c, const boost::mpi::communicator& world,
                          demo::progress_bar& progress) {
  run_result result;
  parallax::pipeline_options options{.micro_batches = cfg.pipeline.micro_batches, .schedule = cfg.pipeline.kind(),
                                     .seed = cfg.seed};
  common_options(options, cfg, c, progress);
  gpt::Pipeline pipeline(gpt::parts(shape(cfg, c)), optim::Adam<float>({.lr = cfg.lr}), std::move(options),
                       world);
  std::size_t local = pipeline.stats().local_parameters;
  boost::mpi::all_reduce(world, local, result.parameters, std::plus<std::size_t>());
  demo::print_stages(pipeline, cfg.pipeline, world);
  train_epochs(pipeline, result, cfg, c, world, progress);
  // predict() is collective: every rank runs the same draws.
  if (cfg.generate > 0) result.generated = generate(cfg, c, [&](const Ids& x) { return pipeline.predict(x); });
  return result;
}

// The --json summary (NaN losses are null; control characters of the
// generated text escaped).
void write_json(std::ostream& out, const config& cfg, const corpus& c, const run_result& r, int ranks,
                double wall_seconds) {
  nlohmann::ordered_json j{{"example", "char_lm"},
                           {"strategy", cfg.strategy},
                           {"ranks", ranks},
                           {"corpus", cfg.corpus_dir},
                           {"characters", c.characters},
                           {"vocabulary", c.alphabet.size()},
                           {"train_sequences", c.train.size()},
                           {"validation_sequences", c.validation.size()},
                           {"context", cfg.context},
                           {"width", cfg.width},
                           {"heads", cfg.heads},
                           {"parameters", r.parameters},
                           {"batch_size", cfg.batch_size},
                           {"lr", cfg.lr},
                           {"epochs", cfg.epochs},
                           {"seed", cfg.seed},
                           {"validation_loss", r.loss()},
                           {"train_seconds", r.train_seconds},
                           {"wall_seconds", wall_seconds},
                           {"generated", r.generated}};
  j["per_epoch"] = nlohmann::ordered_json::array();
  for (std::size_t i = 0; i < r.epochs.size(); ++i) {
    const auto& e = r.epochs[i];
    j["per_epoch"].push_back({{"epoch", i + 1}, {"train_loss", e.train_loss}, {"validation_loss", e.validation_loss},
                              {"seconds", e.seconds}, {"tokens_per_second", e.tokens_per_second}});
  }
  out << j.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << '\n';
}

}  // namespace

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  boost::mpi::communicator world;
  const bool root = world.rank() == 0;

  config cfg;
  CLI::App app{"Train a GPT-style character-level language model over the ranks of mpiexec."};
  app.add_option("--strategy", cfg.strategy,
                 "data (each rank a share of every batch of sequences, gradients averaged), pipeline (the "
                 "blocks cut into one stage per rank, micro-batches streamed through) or tensor (every layer's "
                 "heads and hidden columns split over the ranks; --heads and 4 --width divisible by the ranks)")
      ->check(CLI::IsMember({"data", "pipeline", "tensor"}))
      ->capture_default_str();
  app.add_option("--epochs", cfg.epochs, "Passes over the training windows")->check(CLI::Range(1, 1000))->capture_default_str();
  app.add_option("--batch-size", cfg.batch_size, "Global batch in sequences, split over the ranks")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 16))
      ->capture_default_str();
  app.add_option("--context", cfg.context, "Characters per sequence (the position table's length)")
      ->check(CLI::Range(std::size_t{2}, std::size_t{4096}))
      ->capture_default_str();
  app.add_option("--width", cfg.width, "Width of every token's vector")
      ->check(CLI::Range(std::size_t{1}, std::size_t{8192}))
      ->capture_default_str();
  app.add_option("--heads", cfg.heads, "Attention heads (must divide --width)")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1024}))
      ->capture_default_str();
  app.add_option("--lr", cfg.lr, "Adam's learning rate at the start (cosine to 0 at the end)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--seed", cfg.seed, "Seed of the initial weights, the shuffles and the generated text")
      ->capture_default_str();
  app.add_option("--corpus-dir", cfg.corpus_dir, "Folder whose regular files are the text")->capture_default_str();
  app.add_option("--limit", cfg.limit, "Use the first N characters of the corpus only (0: all)")->capture_default_str();
  demo::add_pipeline_options(app, cfg.pipeline);
  app.add_option("--generate", cfg.generate, "Characters to write after training (0: none)")->capture_default_str();
  app.add_option("--prompt", cfg.prompt, "Text the generated characters follow")->capture_default_str();
  demo::add_checkpoint_options(app, cfg.checkpoints);
  app.add_option("--json", cfg.json, "Write a summary (losses per epoch, times, the generated text) to this file");
  app.add_flag("--quiet", cfg.quiet, "No progress bar (one line per epoch, as when stdout is not a terminal)");
  app.add_option("--max-loss", cfg.max_loss, "Exit with status 2 when the final validation loss is higher")
      ->check(CLI::PositiveNumber);
  if (const auto status = demo::parse(app, argc, argv, world)) return *status;

  return demo::guarded("char_lm", env, world, [&] {
    const auto start = clock_type::now();
    parallax::warn_if_slow_blas(world);
    // Bad sizes fail here, on every rank, before any data is read.
    parallax::agree(world, [&] {
      (void)nn::CausalSelfAttention<float>(cfg.width, cfg.heads);
      PARALLAX_CHECK(cfg.strategy != "tensor" || cfg.checkpoints.dir.empty(),
                     "--checkpoint-dir: checkpoints of a model split by --strategy tensor are not supported yet "
                     "(every rank would write its own shard as the whole model)");
    });
    if (cfg.strategy == "tensor") (void)nn::ParallelCausalSelfAttention<float>(cfg.width, cfg.heads, world);
    check_recorded_heads(cfg, world);
    std::ofstream json = demo::open_summary(cfg.json, world);
    const corpus c = parallax::agree(world, [&] { return load(cfg); });
    if (root)
      std::cout << "char_lm: " << cfg.strategy << " parallel on " << world.size()
                << (world.size() == 1 ? " rank" : " ranks") << ", " << c.characters << " characters from " << c.files
                << " files in " << cfg.corpus_dir << ", " << c.alphabet.size() << " distinct, " << c.train.size()
                << " training and " << c.validation.size() << " validation sequences of " << cfg.context
                << ", global batch " << cfg.batch_size << ", adam lr " << cfg.lr << " (cosine)" << std::endl;
    if (root && cfg.generate > 0) {
      std::string unknown;
      for (const char ch : cfg.prompt)
        if (c.id[static_cast<unsigned char>(ch)] < 0 && unknown.find(ch) == std::string::npos) unknown += ch;
      if (!unknown.empty())
        std::cerr << "char_lm: --prompt characters the corpus does not have are left out: '" << unknown << "'"
                  << std::endl;
    }
    demo::progress_bar progress(root && !cfg.quiet && demo::stdout_is_terminal(), cfg.epochs, "tokens", cfg.context);
    const std::size_t parameters = gpt::make(shape(cfg, c)).parameter_count();
    run_result result;
    if (cfg.strategy == "pipeline") {
      result = train_pipeline(cfg, c, world, progress);
    } else if (cfg.strategy == "tensor") {
      const boost::mpi::communicator self(MPI_COMM_SELF, boost::mpi::comm_attach);
      result = train_replicas(gpt::make_split(shape(cfg, c), world), parameters, cfg, c, world, self, progress);
    } else {
      result = train_replicas(gpt::make(shape(cfg, c)), parameters, cfg, c, world, world, progress);
    }
    const double wall = std::chrono::duration<double>(clock_type::now() - start).count();
    if (root) {
      std::cout << "validation loss " << fixed(result.loss(), 4) << " nats/char, " << result.parameters
                << " parameters, training " << fixed(result.train_seconds, 1) << " s, wall " << fixed(wall, 1)
                << " s, " << world.size() << (world.size() == 1 ? " rank" : " ranks") << std::endl;
      if (cfg.generate > 0) std::cout << "generated: " << cfg.prompt << result.generated << std::endl;
      if (json.is_open()) {
        write_json(json, cfg, c, result, world.size(), wall);
        json.close();
        PARALLAX_CHECK(static_cast<bool>(json), "--json: writing '" + cfg.json + "' failed");
      }
    }
    if (cfg.max_loss > 0 && !(result.loss() <= cfg.max_loss)) {
      if (root)
        std::cerr << "char_lm: validation loss " << fixed(result.loss(), 4) << " is above --max-loss "
                  << cfg.max_loss << std::endl;
      return 2;
    }
    return 0;
  });
}
