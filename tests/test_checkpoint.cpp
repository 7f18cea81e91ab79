// SPDX-License-Identifier: BSL-1.0
// Suite reliability: checkpoints of DataParallel and ModelParallel — exact
// resume, resharding to other rank counts and partitions, Sequential <->
// ModelParallel, retention, every kind of damaged checkpoint detected with
// its message on every rank, folders that never lose a checkpoint (all
// damaged, start fresh, a step saved twice), the learning-rate notice on
// resume, and options compared between ranks.

#include "agreed.hpp"
#include "toy_model.hpp"
#include "toy_optimizer.hpp"

#include <parallax/data_parallel.hpp>
#include <parallax/io/checkpoint.hpp>
#include <parallax/io/checkpointable.hpp>
#include <parallax/model_parallel.hpp>
#include <parallax/nn/activation.hpp>
#include <parallax/nn/batch_norm.hpp>
#include <parallax/nn/layer_norm.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/loss.hpp>
#include <parallax/nn/sequential.hpp>
#include <parallax/optim/adam.hpp>
#include <parallax/optim/sgd.hpp>

#include <doctest/doctest.h>

#include <xtensor/xview.hpp>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using parallax::mpi::communicator;
using namespace parallax::nn;
namespace fs = std::filesystem;

namespace {

/// A fresh folder, the same name on every rank of `comm`, removed at the end.
struct scratch_dir {
  communicator comm;
  std::string path;
  explicit scratch_dir(const communicator& c) : comm(c) {
    static int counter = 0;
    if (comm.rank() == 0)
      path = (fs::temp_directory_path() / ("parallax-ckpt-" + std::to_string(::getpid()) + "-" + std::to_string(counter)))
                 .string();
    ++counter;
    parallax::mpi::broadcast(comm, path, 0);
    comm.barrier();
  }
  ~scratch_dir() {
    comm.barrier();
    if (comm.rank() == 0) fs::remove_all(path);
  }
};


/// What f threw, checked to be the same on every rank: the message, the
/// kind, and whether it was an io::checkpoint_mismatch.
struct failure {
  std::string message;
  parallax::error_kind kind = parallax::error_kind::invalid_argument;
  bool mismatch = false;
};
template <class F>
failure agreed_failure(const communicator& world, F&& f) {
  failure r;
  int thrown = 0;
  try {
    f();
  } catch (const parallax::io::checkpoint_mismatch& e) {
    r = {e.what(), e.kind(), true};
    thrown = 1;
  } catch (const parallax::error& e) {
    r = {e.what(), e.kind(), false};
    thrown = 1;
  }
  CHECK(thrown == 1);
  const std::vector<int> mine = {thrown, static_cast<int>(r.kind), r.mismatch ? 1 : 0};
  std::vector<std::vector<int>> all;
  parallax::mpi::all_gather(world, mine, all);
  for (const auto& other : all) CHECK(other == mine);
  CHECK(agreed_error(world, [&] {
          if (thrown) throw parallax::error(r.message);
        }) == r.message);  // the same text on every rank
  return r;
}

/// What this rank writes to std::cerr while it lives (the checkpointer's notices).
struct captured_cerr {
  std::ostringstream text;
  std::streambuf* saved = std::cerr.rdbuf(text.rdbuf());
  ~captured_cerr() { std::cerr.rdbuf(saved); }
  std::string str() const { return text.str(); }
};

/// A file's bytes.
std::string file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

constexpr std::size_t features = 5, hidden = 4;

template <class T>
std::vector<T> flat_parameters(auto&& list) {
  std::vector<T> out;
  parallax::detail::for_each_tensor(list, [&](auto& t) { out.insert(out.end(), t.begin(), t.end()); });
  return out;
}

using Net = Sequential<Linear<double>, Tanh<double>, Linear<double>, Tanh<double>, Linear<double>, SoftmaxCrossEntropy<double>>;
using Pipe = parallax::ModelParallel<Linear<double>, Tanh<double>, Linear<double>, Tanh<double>, Linear<double>,
                                     SoftmaxCrossEntropy<double>>;
static_assert(parallax::io::Checkpointable<parallax::DataParallel<Net>>);
static_assert(parallax::io::Checkpointable<parallax::DataParallel<toy::TinyMLP<double>>>);
static_assert(parallax::io::Checkpointable<Pipe>);

// The concept, piece by piece: a type with every piece is Checkpointable,
// a type without one piece is not (and the piece names what is missing).
struct kind_piece {
  static constexpr const char* checkpoint_kind = "Partial";
};
struct layers_piece {
  std::uint64_t checkpoint_layers() const;
  std::pair<std::uint64_t, std::uint64_t> checkpoint_local_layers() const;
  bool writes_checkpoint() const;
  bool checkpoint_replicated() const;
};
struct tensors_piece {
  template <class F>
  void for_each_keyed_tensor(F&& f);
};
struct state_piece {
  using value_type = double;
  parallax::optim::Optimizer<double>& optimizer();
  const boost::mpi::communicator& communicator() const;
};
struct all_pieces : kind_piece, layers_piece, tensors_piece, state_piece {};
struct no_kind : layers_piece, tensors_piece, state_piece {};
struct no_layers : kind_piece, tensors_piece, state_piece {};
struct no_tensors : kind_piece, layers_piece, state_piece {};
struct no_state : kind_piece, layers_piece, tensors_piece {};
static_assert(parallax::io::Checkpointable<all_pieces>);
static_assert(!parallax::io::Checkpointable<no_kind> && !parallax::io::HasCheckpointKind<no_kind>);
static_assert(!parallax::io::Checkpointable<no_layers> && !parallax::io::HasCheckpointLayers<no_layers>);
static_assert(!parallax::io::Checkpointable<no_tensors> && !parallax::io::HasKeyedTensors<no_tensors>);
static_assert(!parallax::io::Checkpointable<no_state> && !parallax::io::HasCheckpointState<no_state>);

const auto pipe_args = std::tuple{std::tuple{5, 6}, std::tuple{}, std::tuple{6, 6}, std::tuple{}, std::tuple{6, 3}, std::tuple{}};

Net make_net(std::uint64_t seed) {
  Net net{Linear<double>(5, 6), Tanh<double>{}, Linear<double>(6, 6), Tanh<double>{}, Linear<double>(6, 3),
          SoftmaxCrossEntropy<double>{}};
  net.initialize(seed);
  return net;
}

Net::batch_type chain_batch(std::size_t n, std::uint64_t seed) {
  parallax::detail::rng g(seed);
  Net::batch_type b;
  b.inputs = xt::zeros<double>({n, std::size_t(5)});
  b.targets = xt::zeros<std::int32_t>({n});
  for (auto& v : b.inputs) v = 2 * g.uniform() - 1;
  for (auto& t : b.targets) t = static_cast<std::int32_t>(g.below(3));
  return b;
}

/// All of a pipeline's parameters, gathered to every rank in layer order.
std::vector<double> gather_pipe(Pipe& p) {
  std::vector<double> mine;
  p.for_each_local_layer([&](std::size_t, auto& layer) {
    if constexpr (parallax::HasLayerParameters<std::remove_cvref_t<decltype(layer)>>)
      parallax::detail::for_each_tensor(layer.parameters(), [&](auto& t) { mine.insert(mine.end(), t.begin(), t.end()); });
  });
  std::vector<std::vector<double>> all;
  parallax::mpi::all_gather(p.communicator(), mine, all);
  std::vector<double> out;
  for (const auto& part : all) out.insert(out.end(), part.begin(), part.end());
  return out;
}

}  // namespace

TEST_CASE("checkpoint: DataParallel resumes exactly (parameters, Adam state, sampler position)") {
  communicator world;
  scratch_dir dir(world);
  const auto data = toy::make_data<double>(90, features, 5);
  parallax::optim::Adam<double> adam({.lr = 0.01});
  // Uninterrupted: 2 epochs.
  parallax::DataParallel full(toy::TinyMLP<double>(features, hidden, 3), adam, {}, world);
  auto s_full = full.make_sampler(data.size(), 12, {.seed = 4});
  full.train_epoch(data, s_full);
  full.train_epoch(data, s_full);
  // Interrupted: a checkpoint at step 3 of the second epoch, then a new trainer resumes.
  parallax::io::Checkpointer checkpoints(dir.path, {.keep = 2}, world);
  {
    parallax::DataParallel first(toy::TinyMLP<double>(features, hidden, 3), adam, {}, world);
    auto s = first.make_sampler(data.size(), 12, {.seed = 4});
    first.train_epoch(data, s);
    for (std::size_t i = 0; i < 3; ++i) {
      first.train_step(data.batch(s.local_indices(s.position())));
      s.set_position(s.position() + 1);
    }
    checkpoints.save(first, &s);
  }
  parallax::DataParallel resumed(toy::TinyMLP<double>(features, hidden, 99), adam, {}, world);  // other init
  auto s = resumed.make_sampler(data.size(), 12, {.seed = 4});
  const auto loaded = checkpoints.resume_latest(resumed, &s);
  REQUIRE(loaded.has_value());
  CHECK(s.epoch() == 1);
  CHECK(s.position() == 3);
  CHECK(resumed.optimizer_steps() == 8 + 3);
  resumed.train_epoch(data, s);
  CHECK(flat_parameters<double>(resumed.model().parameters()) == flat_parameters<double>(full.model().parameters()));
  CHECK(resumed.optimizer().state() == full.optimizer().state());
}

TEST_CASE("checkpoint: reproducible mode saved mid-epoch at every rank, resumed on one, has the bits of an uninterrupted run") {
  communicator world;
  communicator self(MPI_COMM_SELF, boost::mpi::comm_attach);
  const auto data = toy::make_data<double>(90, features, 5);  // 8 steps of 12 per epoch
  parallax::optim::Adam<double> adam({.lr = 0.01});
  for (const std::size_t accumulation : {std::size_t{1}, std::size_t{3}}) {
    CAPTURE(accumulation);
    scratch_dir dir(world);
    const parallax::data_parallel_options repro{.accumulation_steps = accumulation, .reproducible_atom = 3};
    {
      // All ranks: one epoch, then a checkpoint after every optimizer step
      // of the second until it stops after its 5th micro-step (a crash:
      // nothing after is saved). Without accumulation the newest checkpoint
      // is at position 5; with accumulation 3 at position 3, since
      // maybe_save() is not due while micro-steps are pending.
      parallax::io::Checkpointer checkpoints(dir.path, {.every_steps = 1}, world);
      int micro = -1;  // -1: the first epoch, no checkpoints
      const parallax::data::DistributedSampler* sampler = nullptr;
      parallax::data_parallel_options o = repro;
      o.stop_when = [&](const parallax::step_report&) { return micro >= 0 && ++micro == 5; };
      parallax::DataParallel first(toy::TinyMLP<double>(features, hidden, 3), adam, o, world);
      first.set_after_step([&](const parallax::step_report&) {
        if (micro >= 0) checkpoints.maybe_save(first, sampler);
      });
      auto s = first.make_sampler(data.size(), 12, {.seed = 4});
      sampler = &s;
      first.train_epoch(data, s);
      micro = 0;
      first.train_epoch(data, s);
      CHECK(checkpoints.last_step() == (accumulation == 1 ? 8u + 5u : 3u + 1u));
    }
    int same_parameters = 0, same_state = 0, position = -1;
    if (world.rank() == 0) {
      // One rank: three uninterrupted epochs, and the newest checkpoint resumed for the rest.
      parallax::DataParallel full(toy::TinyMLP<double>(features, hidden, 3), adam, repro, self);
      auto s_full = full.make_sampler(data.size(), 12, {.seed = 4});
      for (int epoch = 0; epoch < 3; ++epoch) full.train_epoch(data, s_full);
      parallax::io::Checkpointer checkpoints(dir.path, {}, self);
      parallax::DataParallel resumed(toy::TinyMLP<double>(features, hidden, 99), adam, repro, self);  // other init
      auto s = resumed.make_sampler(data.size(), 12, {.seed = 4});
      REQUIRE(checkpoints.resume_latest(resumed, &s).has_value());
      position = static_cast<int>(s.position());
      resumed.train_epoch(data, s);  // the rest of the second epoch
      resumed.train_epoch(data, s);
      const auto a = flat_parameters<double>(resumed.model().parameters());
      const auto b = flat_parameters<double>(full.model().parameters());
      same_parameters = a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
      same_state = resumed.optimizer().state() == full.optimizer().state();
    }
    parallax::mpi::broadcast(world, position, 0);
    parallax::mpi::broadcast(world, same_parameters, 0);
    parallax::mpi::broadcast(world, same_state, 0);
    CHECK(position == (accumulation == 1 ? 5 : 3));
    CHECK(same_parameters == 1);
    CHECK(same_state == 1);
  }
}

TEST_CASE("checkpoint: save() while micro-steps are accumulated is an error on every rank; flush() makes it possible") {
  communicator world;
  scratch_dir dir(world);
  const auto data = toy::make_data<double>(48, features, 6);
  parallax::optim::SGD<double> sgd({.lr = 0.05});
  for (const std::size_t atom : {std::size_t{0}, std::size_t{2}}) {
    CAPTURE(atom);
    parallax::DataParallel trainer(toy::TinyMLP<double>(features, hidden, 3), sgd,
                                   {.accumulation_steps = 3, .reproducible_atom = atom}, world);
    auto s = trainer.make_sampler(data.size(), 8, {.seed = 2});
    for (int i = 0; i < 2; ++i) trainer.train_step(data.batch(s.local_indices(i)));
    REQUIRE(trainer.pending_micro_steps() == 2);
    parallax::io::Checkpointer checkpoints(dir.path + "-" + std::to_string(atom), {}, world);
    CHECK(agreed_error(world, [&] { checkpoints.save(trainer, &s); })
              .find("Checkpointer::save(): 2 micro-steps are accumulated towards optimizer step 1 and a checkpoint "
                    "does not hold their gradients: save after the optimizer step (maybe_save() waits for it) or "
                    "call flush() first") != std::string::npos);
    CHECK_FALSE(fs::exists(dir.path + "-" + std::to_string(atom) + "/step-000000000000"));
    CHECK_FALSE(checkpoints.maybe_save(trainer, &s));
    trainer.flush();
    CHECK(trainer.pending_micro_steps() == 0);
    CHECK(fs::exists(checkpoints.save(trainer, &s) + "/MANIFEST"));
    world.barrier();  // every rank has looked before rank 0 removes it
    if (world.rank() == 0) fs::remove_all(dir.path + "-" + std::to_string(atom));
  }
}

TEST_CASE("checkpoint: an optimizer that implements only state() saves through the default state_view()") {
  communicator world;
  scratch_dir dir(world);
  const auto data = toy::make_data<double>(48, features, 6);
  const toy::last_gradient<double> rule(0.05);
  parallax::DataParallel full(toy::TinyMLP<double>(features, hidden, 3), rule, {}, world);
  auto s_full = full.make_sampler(data.size(), 12, {.seed = 2});
  full.train_epoch(data, s_full);
  full.train_epoch(data, s_full);
  parallax::io::Checkpointer checkpoints(dir.path, {}, world);
  {
    parallax::DataParallel first(toy::TinyMLP<double>(features, hidden, 3), rule, {}, world);
    auto s = first.make_sampler(data.size(), 12, {.seed = 2});
    first.train_epoch(data, s);
    checkpoints.save(first, &s);
  }
  parallax::DataParallel resumed(toy::TinyMLP<double>(features, hidden, 8), rule, {}, world);
  auto s = resumed.make_sampler(data.size(), 12, {.seed = 2});
  REQUIRE(checkpoints.resume_latest(resumed, &s).has_value());
  CHECK(resumed.optimizer().state().slots.at(0).size() == 4);  // TinyMLP's four tensors
  resumed.train_epoch(data, s);
  CHECK(flat_parameters<double>(resumed.model().parameters()) == flat_parameters<double>(full.model().parameters()));
  CHECK(resumed.optimizer().state() == full.optimizer().state());
}

TEST_CASE("checkpoint: ModelParallel resumes exactly, also with another partition") {
  communicator world;
  scratch_dir dir(world);
  const std::size_t p = static_cast<std::size_t>(world.size());
  parallax::optim::Adam<double> adam({.lr = 0.02});
  Pipe full(pipe_args, adam, {.micro_batches = 2, .seed = 5}, world);
  for (std::size_t s = 0; s < 8; ++s) full.train_step(chain_batch(12, s));
  parallax::io::Checkpointer checkpoints(dir.path, {}, world);
  {
    Pipe first(pipe_args, adam, {.micro_batches = 2, .seed = 5}, world);
    for (std::size_t s = 0; s < 5; ++s) first.train_step(chain_batch(12, s));
    checkpoints.save(first);
  }
  // Another cut: stage boundaries moved (when there is room to move them).
  parallax::pipeline::boundaries other = {0};
  for (std::size_t s = 1; s < p; ++s) other.push_back(5 - (p - s));
  other.push_back(5);
  Pipe resumed(pipe_args, adam, {.micro_batches = 2, .seed = 77, .boundaries = other}, world);
  REQUIRE(checkpoints.resume_latest(resumed).has_value());
  for (std::size_t s = 5; s < 8; ++s) resumed.train_step(chain_batch(12, s));
  CHECK(gather_pipe(resumed) == gather_pipe(full));
}

TEST_CASE("checkpoint: a Sequential trained on one rank loads into ModelParallel, and back") {
  communicator world;
  scratch_dir dir(world);
  parallax::optim::SGD<double> sgd({.lr = 0.3, .momentum = 0.9});
  communicator self(MPI_COMM_SELF, boost::mpi::comm_attach);
  // Rank 0 trains the plain chain alone and writes a checkpoint.
  std::vector<double> serial_after;
  if (world.rank() == 0) {
    parallax::DataParallel single(make_net(8), sgd, {}, self);
    for (std::size_t s = 0; s < 4; ++s) single.train_step(chain_batch(12, s));
    parallax::io::Checkpointer(dir.path, {}, self).save(single);
    for (std::size_t s = 4; s < 7; ++s) single.train_step(chain_batch(12, s));
    serial_after = flat_parameters<double>(single.model().parameters());
  }
  parallax::mpi::broadcast(world, serial_after, 0);
  // Every rank: a pipeline resumes from it and continues the same way.
  Pipe pipe(pipe_args, sgd, {.micro_batches = 3, .seed = 1}, world);
  parallax::io::Checkpointer checkpoints(dir.path, {}, world);
  REQUIRE(checkpoints.resume_latest(pipe).has_value());
  for (std::size_t s = 4; s < 7; ++s) pipe.train_step(chain_batch(12, s));
  const auto piped = gather_pipe(pipe);
  REQUIRE(piped.size() == serial_after.size());
  double worst = 0;
  for (std::size_t i = 0; i < piped.size(); ++i) worst = std::max(worst, std::abs(piped[i] - serial_after[i]));
  CHECK(worst <= 1e-12);
  // And back: the pipeline's checkpoint into a single-rank Sequential.
  const auto saved = checkpoints.save(pipe);
  if (world.rank() == 0) {
    parallax::DataParallel single(make_net(1234), sgd, {}, self);
    parallax::io::Checkpointer(dir.path, {}, self).load(single, nullptr, saved);
    CHECK(flat_parameters<double>(single.model().parameters()) == piped);
  }
}

namespace {
using BnNet = Sequential<Linear<double>, Tanh<double>, BatchNorm<double>, Linear<double>, MeanSquaredError<double>>;
using BnPipe =
    parallax::ModelParallel<Linear<double>, Tanh<double>, BatchNorm<double>, Linear<double>, MeanSquaredError<double>>;
using LnNet = Sequential<Linear<double>, Tanh<double>, LayerNorm<double>, Linear<double>, MeanSquaredError<double>>;
const auto bn_args = std::tuple{std::tuple{3, 4}, std::tuple{}, std::tuple{4}, std::tuple{4, 2}, std::tuple{}};

BnNet::batch_type bn_batch(std::uint64_t seed) {
  BnNet::batch_type b;
  b.inputs = xt::xtensor<double, 2>({8, 3});
  b.targets = xt::xtensor<double, 2>({8, 2});
  parallax::detail::rng g(seed);
  for (auto& v : b.inputs) v = 4 * g.uniform() - 1;  // mean 1: the running mean moves off 0
  for (auto& v : b.targets) v = g.uniform();
  return b;
}

/// (layer, index, values) of every buffer this rank's trainer holds.
template <class Trainer>
std::vector<std::pair<std::uint64_t, std::vector<double>>> keyed_buffers(Trainer& t) {
  std::vector<std::pair<std::uint64_t, std::vector<double>>> out;
  t.for_each_keyed_buffer([&](std::uint64_t layer, std::uint64_t j, auto& b) {
    out.push_back({layer * 16 + j, std::vector<double>(b.begin(), b.end())});
  });
  return out;
}
}  // namespace

TEST_CASE("checkpoint: BatchNorm's running statistics are saved, loaded and resharded with the parameters") {
  communicator world;
  scratch_dir dir(world);
  const parallax::optim::SGD<double> sgd({.lr = 0.1, .momentum = 0.9});
  communicator self(MPI_COMM_SELF, boost::mpi::comm_attach);
  auto make = [](std::uint64_t seed) {
    BnNet net{Linear<double>(3, 4), Tanh<double>{}, BatchNorm<double>(4), Linear<double>(4, 2), MeanSquaredError<double>{}};
    net.initialize(seed);
    return net;
  };
  // Rank 0 trains alone and saves; its running statistics moved off 0 and 1.
  std::vector<std::pair<std::uint64_t, std::vector<double>>> reference;
  std::vector<double> later;  // the parameters three steps after the checkpoint
  if (world.rank() == 0) {
    parallax::DataParallel single(make(3), sgd, {}, self);
    for (std::uint64_t s = 0; s < 3; ++s) single.train_step(bn_batch(s));
    parallax::io::Checkpointer(dir.path, {}, self).save(single);
    CHECK(fs::exists(fs::path(parallax::io::Checkpointer(dir.path, {}, self).list().back()) / "state.buffers.bin"));
    reference = keyed_buffers(single);
    for (std::uint64_t s = 3; s < 6; ++s) single.train_step(bn_batch(s));
    later = flat_parameters<double>(single.model().parameters());
  }
  std::vector<std::uint64_t> keys;
  std::vector<std::vector<double>> values;
  for (auto& [k, v] : reference) {
    keys.push_back(k);
    values.push_back(v);
  }
  parallax::mpi::broadcast(world, keys, 0);
  parallax::mpi::broadcast(world, values, 0);
  parallax::mpi::broadcast(world, later, 0);
  REQUIRE(keys == std::vector<std::uint64_t>{2 * 16 + 0, 2 * 16 + 1});
  CHECK(std::abs(values[0][0]) > 1e-3);
  CHECK(std::abs(values[1][0] - 1) > 1e-3);
  // A DataParallel on every rank loads them; continuing on the same
  // (global) batches as rank 0 needs SyncBatchNorm, so only the load is compared.
  parallax::DataParallel dp(make(99), sgd, {}, world);
  parallax::io::Checkpointer checkpoints(dir.path, {}, world);
  const auto saved = checkpoints.resume_latest(dp);
  REQUIRE(saved.has_value());
  for (const auto& [k, v] : keyed_buffers(dp)) {
    const auto at = std::find(keys.begin(), keys.end(), k) - keys.begin();
    CHECK(values[static_cast<std::size_t>(at)] == v);
  }
  // A pipeline (one stage per rank) loads its layers' share, and trains on as rank 0 did.
  BnPipe pipe(bn_args, sgd, {.micro_batches = 1, .seed = 5}, world);
  REQUIRE(checkpoints.resume_latest(pipe).has_value());
  for (const auto& [k, v] : keyed_buffers(pipe)) {
    const auto at = std::find(keys.begin(), keys.end(), k) - keys.begin();
    CHECK(values[static_cast<std::size_t>(at)] == v);
  }
  // predict runs in eval mode (the running statistics): one row is fine,
  // and it is what the loaded Sequential gives in eval mode.
  {
    const auto row = bn_batch(40).inputs;
    xt::xtensor<double, 2> one = xt::view(row, xt::range(0, 1), xt::all());
    const auto piped_one = pipe.predict(one);
    dp.model().set_training(false);
    const auto direct = dp.model().predict(one);
    dp.model().set_training(true);
    REQUIRE(piped_one.size() == direct.size());
    for (std::size_t i = 0; i < direct.size(); ++i) CHECK(std::abs(piped_one.data()[i] - direct.data()[i]) < 1e-12);
  }
  for (std::uint64_t s = 3; s < 6; ++s) pipe.train_step(bn_batch(s));
  std::vector<double> mine;
  pipe.for_each_keyed_tensor([&](std::uint64_t, std::uint64_t, auto& t) { mine.insert(mine.end(), t.begin(), t.end()); });
  std::vector<std::vector<double>> stages;
  parallax::mpi::all_gather(world, mine, stages);
  std::vector<double> piped;
  for (const auto& st : stages) piped.insert(piped.end(), st.begin(), st.end());
  REQUIRE(piped.size() == later.size());
  double worst = 0;
  for (std::size_t i = 0; i < piped.size(); ++i) worst = std::max(worst, std::abs(piped[i] - later[i]));
  CHECK(worst <= 1e-12);

  // A model whose layer 2 has the same parameters but no buffers (LayerNorm):
  // either way round, the load is refused naming the buffers.
  LnNet ln{Linear<double>(3, 4), Tanh<double>{}, LayerNorm<double>(4), Linear<double>(4, 2), MeanSquaredError<double>{}};
  parallax::DataParallel other(std::move(ln), sgd, {}, world);
  const auto extra = agreed_failure(world, [&] { checkpoints.load(other, nullptr, *saved); });
  CHECK(extra.kind == parallax::error_kind::incompatible);
  CHECK(has(extra.message, "it has 2 buffers for these layers, the model 0"));
  const auto without = checkpoints.save(other);
  const auto missing = agreed_failure(world, [&] { checkpoints.load(dp, nullptr, without); });
  CHECK(missing.kind == parallax::error_kind::incompatible);
  CHECK(has(missing.message, "it has no buffer 0 of layer 2 (it holds no buffers: a model without BatchNorm?)"));
}

TEST_CASE("checkpoint: written at 2 ranks, loads at 1, 3 and 4 (data parallel and pipeline)") {
  communicator world;
  if (world.size() < 2) return;
  scratch_dir dir(world);
  const auto data = toy::make_data<double>(60, features, 5);
  parallax::optim::SGD<double> sgd({.lr = 0.1, .momentum = 0.5});
  // Writers: ranks 0 and 1.
  communicator pair = world.split(world.rank() < 2 ? 0 : 1);
  std::vector<double> reference;
  std::string dp_path, pipe_path;
  if (world.rank() < 2) {
    parallax::DataParallel writer(toy::TinyMLP<double>(features, hidden, 2), sgd, {}, pair);
    auto s = writer.make_sampler(data.size(), 10, {.seed = 1});
    writer.train_epoch(data, s);
    dp_path = parallax::io::Checkpointer(dir.path + "/dp", {}, pair).save(writer, &s);
    reference = flat_parameters<double>(writer.model().parameters());
    Pipe pipe(pipe_args, sgd, {.micro_batches = 2, .seed = 3}, pair);
    for (std::size_t k = 0; k < 3; ++k) pipe.train_step(chain_batch(8, k));
    pipe_path = parallax::io::Checkpointer(dir.path + "/pipe", {}, pair).save(pipe);
  }
  parallax::mpi::broadcast(world, reference, 0);
  parallax::mpi::broadcast(world, dp_path, 0);
  parallax::mpi::broadcast(world, pipe_path, 0);
  // The pipeline's parameters, from a 1-rank load (the unsplit model).
  std::vector<double> unsplit;
  if (world.rank() == 0) {
    communicator self(MPI_COMM_SELF, boost::mpi::comm_attach);
    Pipe one(pipe_args, sgd, {.micro_batches = 2}, self);
    parallax::io::Checkpointer(dir.path + "/pipe", {}, self).load(one, nullptr, pipe_path);
    unsplit = gather_pipe(one);
  }
  parallax::mpi::broadcast(world, unsplit, 0);
  for (int n : {1, 3, 4}) {
    if (n > world.size()) continue;
    communicator group = world.split(world.rank() < n ? 0 : 1);
    if (world.rank() >= n) continue;
    parallax::DataParallel reader(toy::TinyMLP<double>(features, hidden, 50), sgd, {}, group);
    auto s = reader.make_sampler(data.size(), 10, {.seed = 1});
    parallax::io::Checkpointer(dir.path + "/dp", {}, group).load(reader, &s, dp_path);
    CHECK(flat_parameters<double>(reader.model().parameters()) == reference);
    CHECK(s.epoch() == 1);
    if (n <= 5) {
      Pipe pipe(pipe_args, sgd, {.micro_batches = 2}, group);
      parallax::io::Checkpointer(dir.path + "/pipe", {}, group).load(pipe, nullptr, pipe_path);
      CHECK(gather_pipe(pipe) == unsplit);
    }
  }
}

TEST_CASE("checkpoint: keeps the newest K and prunes the rest") {
  communicator world;
  scratch_dir dir(world);
  const auto data = toy::make_data<double>(40, features, 5);
  parallax::DataParallel dp(toy::TinyMLP<double>(features, hidden, 3), parallax::optim::SGD<double>(), {}, world);
  parallax::io::Checkpointer checkpoints(dir.path, {.keep = 2, .every_steps = 2}, world);
  auto s = dp.make_sampler(data.size(), 8, {});
  int saved = 0;
  for (int i = 0; i < 9; ++i) {
    dp.train_step(data.batch(s.local_indices(static_cast<std::size_t>(i % 5))));
    saved += checkpoints.maybe_save(dp, &s);
  }
  CHECK(saved == 4);  // steps 2, 4, 6, 8
  const auto left = checkpoints.list();
  REQUIRE(left.size() == 2);
  CHECK(fs::path(left[0]).filename() == "step-000000000008");
  CHECK(fs::path(left[1]).filename() == "step-000000000006");
}

TEST_CASE("checkpoint: damaged checkpoints are detected with their cause, on every rank") {
  communicator world;
  scratch_dir dir(world);
  const int p = world.size();
  parallax::optim::Adam<double> adam({.lr = 0.01});
  Pipe pipe(pipe_args, adam, {.micro_batches = 2}, world);
  parallax::io::Checkpointer checkpoints(dir.path, {.keep = 10, .quiet = true}, world);
  pipe.train_step(chain_batch(8, 1));
  const auto good = checkpoints.save(pipe);
  pipe.train_step(chain_batch(8, 2));
  auto newest = checkpoints.save(pipe);
  const auto part0 = (fs::path(newest) / ("part-0-" + std::to_string(pipe.boundaries()[1]) + ".bin")).string();
  auto damage = [&](auto how) {
    world.barrier();
    if (world.rank() == 0) how();
    world.barrier();
  };
  const auto manifest = (fs::path(newest) / "MANIFEST").string();
  std::vector<char> original, original_manifest;
  auto slurp = [](const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::vector<char>(std::istreambuf_iterator<char>(in), {});
  };
  if (world.rank() == 0) {
    original = slurp(part0);
    original_manifest = slurp(manifest);
  }
  auto restore = [&] {
    damage([&] {
      std::ofstream(part0, std::ios::binary | std::ios::trunc).write(original.data(), static_cast<std::streamsize>(original.size()));
      std::ofstream(manifest, std::ios::binary | std::ios::trunc)
          .write(original_manifest.data(), static_cast<std::streamsize>(original_manifest.size()));
    });
  };
  Pipe other(pipe_args, adam, {.micro_batches = 2}, world);
  SUBCASE("truncated") {
    damage([&] { fs::resize_file(part0, fs::file_size(part0) - 10); });
    const auto f = agreed_failure(world, [&] { checkpoints.load(other, nullptr, newest); });
    CHECK(f.message.find("truncated") != std::string::npos);
    CHECK(f.kind == parallax::error_kind::damaged_file);
    CHECK_FALSE(f.mismatch);
  }
  SUBCASE("flipped bytes") {
    damage([&] {
      std::fstream f(part0, std::ios::binary | std::ios::in | std::ios::out);
      f.seekp(200);
      f.put('\x5a');
      f.put('\xa5');
    });
    const auto f = agreed_failure(world, [&] { checkpoints.load(other, nullptr, newest); });
    CHECK(f.message.find("XXH3 checksum mismatch") != std::string::npos);
    CHECK(f.kind == parallax::error_kind::damaged_file);
    CHECK_FALSE(f.mismatch);
  }
  SUBCASE("a pipeline part deleted") {
    damage([&] { fs::remove(part0); });
    const auto f = agreed_failure(world, [&] { checkpoints.load(other, nullptr, newest); });
    CHECK(f.message.find("is incomplete: part 'part-0-") != std::string::npos);
    CHECK(f.message.find("is missing") != std::string::npos);
    CHECK(f.kind == parallax::error_kind::io);  // only rank 0 reads part 0: its kind is everyone's
    CHECK_FALSE(f.mismatch);
  }
  SUBCASE("no manifest") {
    damage([&] { fs::remove(fs::path(newest) / "MANIFEST"); });
    const auto f = agreed_failure(world, [&] { checkpoints.load(other, nullptr, newest); });
    CHECK(f.message.find("has no MANIFEST") != std::string::npos);
    CHECK(f.kind == parallax::error_kind::io);
  }
  SUBCASE("a manifest that is not one") {
    // Rewritten intact (checksummed) but with foreign text: the file is fine, its content is damage.
    damage([&] {
      parallax::io::write_atomically(manifest, 1, 0, [](std::ostream& out) { out << "parallax-checkpoint 1\nlayers 5\n"; });
    });
    const auto f = agreed_failure(world, [&] { checkpoints.load(other, nullptr, newest); });
    CHECK(f.message.find("incomplete manifest") != std::string::npos);
    CHECK(f.kind == parallax::error_kind::damaged_file);
  }
  SUBCASE("a damaged payload behind an intact header (checksum fixed): the field and offset, the trainer untouched") {
    // What a file crafted on purpose looks like: the header and checksum agree
    // with the payload, the payload holds one byte more than its fields.
    const auto end_of_fields = fs::file_size(part0);  // where the extra byte lands
    damage([&] {
      parallax::io::file_header header{};
      auto payload = parallax::io::read_checked(part0, parallax::io::checkpoint_format_version, &header);
      payload.push_back('\0');
      parallax::io::write_atomically(part0, header.version, header.element, [&](std::ostream& out) {
        out.write(payload.data(), static_cast<std::streamsize>(payload.size()));
      });
    });
    std::vector<std::vector<double>> before;
    other.for_each_keyed_tensor(
        [&](std::uint64_t, std::uint64_t, auto& t) { before.emplace_back(t.begin(), t.end()); });
    const auto f = agreed_failure(world, [&] { checkpoints.load(other, nullptr, newest); });
    CHECK(f.message.find("field 'end of payload' at byte offset " + std::to_string(end_of_fields)) !=
          std::string::npos);
    CHECK(f.message.find("1 trailing bytes after the last field") != std::string::npos);
    CHECK(f.kind == parallax::error_kind::damaged_file);
    CHECK_FALSE(f.mismatch);
    std::vector<std::vector<double>> after;
    other.for_each_keyed_tensor([&](std::uint64_t, std::uint64_t, auto& t) { after.emplace_back(t.begin(), t.end()); });
    CHECK(after == before);
  }
  SUBCASE("unknown format version") {
    damage([&] {
      std::fstream f(part0, std::ios::binary | std::ios::in | std::ios::out);
      f.seekp(8);
      f.put('\x63');
    });
    const auto f = agreed_failure(world, [&] { checkpoints.load(other, nullptr, newest); });
    CHECK(f.message.find("format version 99 is unknown") != std::string::npos);
    CHECK(f.kind == parallax::error_kind::damaged_file);
  }
  SUBCASE("another model's checkpoint") {
    using Wide = parallax::ModelParallel<Linear<double>, Tanh<double>, Linear<double>, Tanh<double>, Linear<double>,
                                         SoftmaxCrossEntropy<double>>;
    Wide wide(std::tuple{std::tuple{5, 7}, std::tuple{}, std::tuple{7, 7}, std::tuple{}, std::tuple{7, 3}, std::tuple{}},
              adam, {.micro_batches = 2}, world);
    const auto f = agreed_failure(world, [&] { checkpoints.load(wide, nullptr, newest); });
    CHECK(f.message.find("was written for another model") != std::string::npos);
    CHECK(f.message.find("has shape (5, 6) there, (5, 7) in this model") != std::string::npos);
    CHECK(f.kind == parallax::error_kind::incompatible);
    CHECK(f.mismatch);
  }
  SUBCASE("other element type or optimizer") {
    using Floats = parallax::ModelParallel<Linear<float>, Tanh<float>, Linear<float>, Tanh<float>, Linear<float>,
                                           SoftmaxCrossEntropy<float>>;
    Floats f(pipe_args, parallax::optim::Adam<float>(), {.micro_batches = 2}, world);
    const auto floats = agreed_failure(world, [&] { checkpoints.load(f, nullptr, newest); });
    CHECK(floats.message.find("holds float64 tensors, the model has float32") != std::string::npos);
    CHECK(floats.kind == parallax::error_kind::incompatible);
    CHECK(floats.mismatch);
    Pipe sgd(pipe_args, parallax::optim::SGD<double>(), {.micro_batches = 2}, world);
    const auto optimizer = agreed_failure(world, [&] { checkpoints.load(sgd, nullptr, newest); });
    CHECK(optimizer.message.find("holds adam optimizer state, the trainer uses sgd") != std::string::npos);
    CHECK(optimizer.kind == parallax::error_kind::incompatible);
    CHECK(optimizer.mismatch);    // Momentum SGD's state into SGD without momentum: intact, not ours.
    Pipe momentum(pipe_args, parallax::optim::SGD<double>({.momentum = 0.9}), {.micro_batches = 2}, world);
    momentum.train_step(chain_batch(8, 1));
    parallax::io::Checkpointer folder(dir.path + "/momentum", {.quiet = true}, world);
    const auto saved = folder.save(momentum);
    const auto slots = agreed_failure(world, [&] { folder.resume_latest(sgd); });
    CHECK(slots.message.find("holds sgd state with slots {\"momentum\"}, the trainer's optimizer keeps {}") !=
          std::string::npos);
    CHECK(slots.kind == parallax::error_kind::incompatible);
    CHECK(folder.list() == std::vector<std::string>{saved});  // not set aside as damaged
  }
  // Same layer types, layers 2 and 4 wider: a stage that holds neither matches the checkpoint.
  const auto wider_args =
      std::tuple{std::tuple{5, 6}, std::tuple{}, std::tuple{6, 8}, std::tuple{}, std::tuple{8, 3}, std::tuple{}};
  SUBCASE("a mismatch on later stages only: checkpoint_mismatch on every rank") {
    if (p < 2) return;
    parallax::pipeline::boundaries first_alone = {0};  // stage 0 holds layer 0 only: it matches
    for (int s = 1; s < p; ++s) first_alone.push_back(static_cast<std::size_t>(s));
    first_alone.push_back(5);
    Pipe wider(wider_args, adam, {.micro_batches = 2, .boundaries = first_alone}, world);
    const auto f = agreed_failure(world, [&] { checkpoints.load(wider, nullptr, newest); });
    CHECK(f.mismatch);
    CHECK(f.kind == parallax::error_kind::incompatible);
    CHECK(f.message.find("was written for another model") != std::string::npos);
  }
  SUBCASE("damage seen by stage 0, a mismatch by the others: checkpoint_mismatch on every rank") {
    // With the checkpoint's boundaries, stage 0 alone reads the damaged part 0;
    // the last stage holds layer 4, wider than in the checkpoint.
    if (p < 2) return;
    damage([&] {
      std::fstream f(part0, std::ios::binary | std::ios::in | std::ios::out);
      f.seekp(200);
      f.put('\x5a');
    });
    Pipe wider(wider_args, adam, {.micro_batches = 2, .boundaries = pipe.boundaries()}, world);
    const auto f = agreed_failure(world, [&] { checkpoints.load(wider, nullptr, newest); });
    CHECK(f.mismatch);
    CHECK(f.kind == parallax::error_kind::incompatible);
    CHECK(f.message.find("was written for another model") != std::string::npos);
    CHECK(f.message.find("checksum mismatch") == std::string::npos);  // the mismatch is what is reported
    // resume_latest stops there instead of falling back to the older checkpoint.
    bool stopped = false;
    try {
      checkpoints.resume_latest(wider);
    } catch (const parallax::io::checkpoint_mismatch&) {
      stopped = true;
    }
    CHECK(stopped);
    CHECK(checkpoints.skipped().empty());
  }
  SUBCASE("resume_latest falls back to the newest valid checkpoint and says why") {
    damage([&] {
      std::fstream f(part0, std::ios::binary | std::ios::in | std::ios::out);
      f.seekp(100);
      f.put('\x00');
      f.put('\x11');
    });
    std::string damaged_bytes;
    if (world.rank() == 0) damaged_bytes = file_bytes(part0);
    const auto loaded = checkpoints.resume_latest(other);
    REQUIRE(loaded.has_value());
    CHECK(*loaded == good);
    REQUIRE(checkpoints.skipped().size() == 1);
    CHECK(checkpoints.skipped()[0].first == newest);
    CHECK(checkpoints.skipped()[0].second.find("XXH3 checksum mismatch") != std::string::npos);
    CHECK(other.optimizer().steps() == 1);
    // The damaged one is kept aside, bytes and all, where the next save of its step cannot meet it.
    CHECK(checkpoints.list() == std::vector<std::string>{good});
    damage([&] {
      const auto aside = fs::path(newest + ".damaged");
      CHECK(file_bytes(aside / fs::path(part0).filename()) == damaged_bytes);
      CHECK(fs::exists(aside / "MANIFEST"));
      fs::rename(aside, newest);  // back, for the checks below
    });
  }
  restore();
  // The intact checkpoint still loads after all that.
  Pipe again(pipe_args, adam, {.micro_batches = 2}, world);
  CHECK_NOTHROW(checkpoints.load(again, nullptr, newest));
  CHECK(gather_pipe(again) == gather_pipe(pipe));
  (void)p;
}

TEST_CASE("checkpoint: maybe_save by time — rank 0's clock decides for every rank") {
  communicator world;
  scratch_dir dir(world);
  const auto data = toy::make_data<double>(40, features, 5);
  parallax::DataParallel dp(toy::TinyMLP<double>(features, hidden, 3), parallax::optim::SGD<double>(), {}, world);
  parallax::io::Checkpointer checkpoints(dir.path, {.keep = 10, .every_seconds = 1.0}, world);
  auto s = dp.make_sampler(data.size(), 8, {});
  dp.train_step(data.batch(s.local_indices(0)));
  CHECK_FALSE(checkpoints.maybe_save(dp, &s));  // too soon after construction
  // Only rank 0 waits: the others would not be due by their own clocks.
  if (world.rank() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  dp.train_step(data.batch(s.local_indices(1)));
  CHECK(checkpoints.maybe_save(dp, &s));
  CHECK(checkpoints.list().size() == 1);
  CHECK_FALSE(checkpoints.maybe_save(dp, &s));  // the same step is not saved twice
}

TEST_CASE("checkpoint: another model's checkpoint stops resume_latest; another run's folder is not overwritten") {
  communicator world;
  scratch_dir dir(world);
  parallax::optim::SGD<double> sgd({.lr = 0.1});
  {
    Pipe pipe(pipe_args, sgd, {.micro_batches = 2}, world);
    parallax::io::Checkpointer first(dir.path, {.quiet = true}, world);
    pipe.train_step(chain_batch(8, 1));
    first.save(pipe);
  }
  using Wide = parallax::ModelParallel<Linear<double>, Tanh<double>, Linear<double>, Tanh<double>, Linear<double>,
                                       SoftmaxCrossEntropy<double>>;
  Wide wide(std::tuple{std::tuple{5, 7}, std::tuple{}, std::tuple{7, 7}, std::tuple{}, std::tuple{7, 3}, std::tuple{}},
            sgd, {.micro_batches = 2}, world);
  parallax::io::Checkpointer second(dir.path, {.quiet = true}, world);
  bool mismatch = false;
  const auto message = agreed_error(world, [&] {
    try {
      second.resume_latest(wide);
    } catch (const parallax::io::checkpoint_mismatch&) {
      mismatch = true;
      throw;
    }
  });
  CHECK(mismatch);
  CHECK(message.find("was written for another model") != std::string::npos);
  // A run that did not resume here may not write here either.
  Pipe fresh(pipe_args, sgd, {.micro_batches = 2}, world);
  fresh.train_step(chain_batch(8, 1));
  parallax::io::Checkpointer third(dir.path, {.quiet = true}, world);
  CHECK(agreed_error(world, [&] { third.save(fresh); }).find("already holds checkpoints of another run") !=
        std::string::npos);
  CHECK(third.list().size() == 1);
  // Resuming from it first makes the folder this run's.
  REQUIRE(third.resume_latest(fresh).has_value());
  fresh.train_step(chain_batch(8, 2));
  CHECK_NOTHROW(third.save(fresh));
  CHECK(third.list().size() == 2);
}

TEST_CASE("checkpoint: the MANIFEST is pinned line by line, so checkpoints written before still load") {
  communicator world;
  scratch_dir dir(world);
  parallax::optim::SGD<double> sgd({.lr = 0.1});
  auto manifest_text = [](const std::string& folder) {
    parallax::io::file_header header{};
    const auto bytes = parallax::io::read_checked((fs::path(folder) / "MANIFEST").string(),
                                                  parallax::io::checkpoint_format_version, &header);
    CHECK(header.version == 2);
    CHECK(header.element == 0);  // the manifest holds no tensors
    return std::string(bytes.begin(), bytes.end());
  };
  // float64 is code (1 << 8) | 8: kind float, 8 bytes.
  Pipe pipe(pipe_args, sgd, {.micro_batches = 2}, world);
  pipe.train_step(chain_batch(8, 1));
  const auto pipe_folder = parallax::io::Checkpointer(dir.path + "/pipe", {}, world).save(pipe);
  std::string expected = "parallax-checkpoint 2\ntrainer ModelParallel\nelement float64 264\nlayers 5\nstep 1\n";
  const auto& b = pipe.boundaries();
  for (std::size_t s = 0; s + 1 < b.size(); ++s)
    expected += "part part-" + std::to_string(b[s]) + "-" + std::to_string(b[s + 1]) + ".bin " + std::to_string(b[s]) +
                " " + std::to_string(b[s + 1]) + "\n";
  expected += "end\n";
  if (world.rank() == 0) CHECK(manifest_text(pipe_folder) == expected);

  parallax::DataParallel dp(make_net(3), sgd, {}, world);
  dp.train_step(chain_batch(4, 2));
  dp.train_step(chain_batch(4, 3));
  const auto dp_folder = parallax::io::Checkpointer(dir.path + "/dp", {}, world).save(dp);
  CHECK(fs::path(dp_folder).filename() == "step-000000000002");
  if (world.rank() == 0)
    CHECK(manifest_text(dp_folder) ==
          "parallax-checkpoint 2\ntrainer DataParallel\nelement float64 264\nlayers 5\nstep 2\npart state.bin 0 5\nend\n");
}

TEST_CASE("checkpoint: a format-1 checkpoint (CRC-32, before XXH3) loads into the same state") {
  communicator world;
  scratch_dir dir(world);
  parallax::optim::Adam<double> adam({.lr = 0.02});
  Pipe first(pipe_args, adam, {.micro_batches = 2, .seed = 5}, world);
  for (std::size_t s = 0; s < 3; ++s) first.train_step(chain_batch(12, s));
  parallax::io::Checkpointer checkpoints(dir.path, {}, world);
  const auto folder = checkpoints.save(first);
  // Every file rewritten as format 1 wrote it: version 1, CRC-32, and the
  // MANIFEST's first line "parallax-checkpoint 1".
  if (world.rank() == 0) {
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(folder)) files.push_back(entry.path());
    CHECK(files.size() >= 2);
    for (const auto& file : files) {
      parallax::io::file_header header{};
      auto payload = parallax::io::read_checked(file.string(), parallax::io::checkpoint_format_version, &header);
      CHECK(header.version == 2);
      if (file.filename() == "MANIFEST") {
        std::string text(payload.begin(), payload.end());
        CHECK(text.rfind("parallax-checkpoint 2\n", 0) == 0);
        text[20] = '1';
        payload.assign(text.begin(), text.end());
      }
      parallax::io::write_atomically(file.string(), 1, header.element, [&](std::ostream& out) {
        out.write(payload.data(), static_cast<std::streamsize>(payload.size()));
      });
      parallax::io::file_header old{};
      parallax::io::read_checked(file.string(), 1, &old);
      CHECK(old.version == 1);
      CHECK(old.checksum == parallax::io::checksum_of(payload, parallax::io::checksum_kind::crc32));
    }
  }
  world.barrier();
  Pipe resumed(pipe_args, adam, {.micro_batches = 2, .seed = 77}, world);
  checkpoints.load(resumed, nullptr, folder);
  CHECK(gather_pipe(resumed) == gather_pipe(first));
  first.train_step(chain_batch(12, 3));
  resumed.train_step(chain_batch(12, 3));
  CHECK(gather_pipe(resumed) == gather_pipe(first));  // Adam's moments came back too
}

TEST_CASE("checkpoint: every checkpoint damaged is an agreed error naming each; start_fresh sets them aside") {
  communicator world;
  scratch_dir dir(world);
  parallax::optim::SGD<double> sgd({.lr = 0.1});
  std::vector<std::string> folders;  // steps 1 and 2
  {
    parallax::DataParallel dp(make_net(3), sgd, {}, world);
    parallax::io::Checkpointer ck(dir.path, {.quiet = true}, world);
    for (std::size_t s = 0; s < 2; ++s) {
      dp.train_step(chain_batch(4, s));
      folders.push_back(ck.save(dp));
    }
  }
  std::vector<std::string> damaged_bytes;
  world.barrier();
  if (world.rank() == 0) {
    fs::resize_file(fs::path(folders[0]) / "state.bin", 30);
    std::fstream f(fs::path(folders[1]) / "state.bin", std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(100);
    f.put('\x5a');
    f.close();
    for (const auto& folder : folders) damaged_bytes.push_back(file_bytes(fs::path(folder) / "state.bin"));
  }
  world.barrier();

  parallax::DataParallel dp(make_net(9), sgd, {}, world);
  const auto before = flat_parameters<double>(dp.model().parameters());
  parallax::io::Checkpointer strict(dir.path, {.quiet = true}, world);
  const auto f = agreed_failure(world, [&] { strict.resume_latest(dp); });
  CHECK(f.kind == parallax::error_kind::damaged_file);
  CHECK_FALSE(f.mismatch);
  // Newest first, each with its cause.
  const auto second = f.message.find("every checkpoint in '" + dir.path + "' is damaged: step-000000000002: ");
  const auto crc = f.message.find("XXH3 checksum mismatch");
  const auto first = f.message.find("; step-000000000001: ");
  const auto truncated = f.message.find("truncated");
  CHECK(second != std::string::npos);
  CHECK(crc != std::string::npos);
  CHECK(first != std::string::npos);
  CHECK(truncated != std::string::npos);
  CHECK((second < crc && crc < first && first < truncated));
  CHECK(has(f.message, "on_all_damaged = damaged_policy::start_fresh"));
  CHECK(strict.skipped().size() == 2);
  // Nothing changed: the trainer, the folders; and the run may not write there.
  CHECK(flat_parameters<double>(dp.model().parameters()) == before);
  CHECK(dp.optimizer().steps() == 0);
  CHECK(strict.list() == std::vector<std::string>{folders[1], folders[0]});
  dp.train_step(chain_batch(4, 0));
  CHECK(has(agreed_error(world, [&] { strict.save(dp); }), "already holds checkpoints of another run"));

  // Asked to start fresh: rank 0 says so, the damaged ones are kept aside, saves of their steps work.
  parallax::DataParallel fresh(make_net(9), sgd, {}, world);
  std::string said;
  {
    captured_cerr err;
    const auto start_fresh = parallax::io::damaged_policy::start_fresh;
    parallax::io::Checkpointer lenient(dir.path, {.keep = 1, .on_all_damaged = start_fresh}, world);
    CHECK_FALSE(lenient.resume_latest(fresh).has_value());
    CHECK(lenient.skipped().size() == 2);
    CHECK(lenient.list().empty());
    for (std::size_t s = 0; s < 3; ++s) {
      fresh.train_step(chain_batch(4, s));
      CHECK(lenient.save(fresh) == (fs::path(dir.path) / ("step-00000000000" + std::to_string(s + 1))).string());
    }
    CHECK(lenient.list() == std::vector<std::string>{folders[0].substr(0, folders[0].size() - 1) + "3"});  // keep = 1
    said = err.str();
  }
  if (world.rank() == 0) {
    CHECK(has(said, "parallax: every checkpoint in '" + dir.path + "' is damaged: step-000000000002: "));
    CHECK(has(said, "Starting fresh"));
    CHECK(has(said, "kept as step-000000000002.damaged, step-000000000001.damaged"));
    // Pruning left them alone, bytes and all.
    for (std::size_t k = 0; k < folders.size(); ++k) {
      CHECK(file_bytes(fs::path(folders[k] + ".damaged") / "state.bin") == damaged_bytes[k]);
      CHECK(fs::exists(fs::path(folders[k] + ".damaged") / "MANIFEST"));
    }
  } else {
    CHECK(said.empty());
  }
}

TEST_CASE("checkpoint: a step saved twice is an error on every rank; the first checkpoint keeps its bytes") {
  communicator world;
  scratch_dir dir(world);
  parallax::DataParallel dp(make_net(3), parallax::optim::SGD<double>({.lr = 0.1}), {}, world);
  parallax::io::Checkpointer ck(dir.path, {.quiet = true}, world);
  CHECK_FALSE(ck.last_step().has_value());
  dp.train_step(chain_batch(4, 1));
  const auto first = ck.save(dp);
  CHECK(ck.last_step() == std::optional<std::uint64_t>(1));
  std::string bytes;
  if (world.rank() == 0) bytes = file_bytes(fs::path(first) / "MANIFEST") + file_bytes(fs::path(first) / "state.bin");
  // Other parameters at the same step: an overwrite would change the file.
  dp.for_each_keyed_tensor([](std::uint64_t, std::uint64_t, auto& t) { t.data()[0] += 1; });
  const auto f = agreed_failure(world, [&] { ck.save(dp); });
  CHECK(f.kind == parallax::error_kind::invalid_argument);
  CHECK(has(f.message, "Checkpointer::save(): '" + first + "' already holds a checkpoint of step 1"));
  CHECK(has(f.message, "never overwritten"));
  // Another checkpointer of the same run (resumed from it) may not either.
  parallax::DataParallel resumed(make_net(4), parallax::optim::SGD<double>({.lr = 0.1}), {}, world);
  parallax::io::Checkpointer again(dir.path, {.quiet = true}, world);
  REQUIRE(again.resume_latest(resumed) == first);
  CHECK(agreed_failure(world, [&] { again.save(resumed); }).kind == parallax::error_kind::invalid_argument);
  if (world.rank() == 0)
    CHECK(file_bytes(fs::path(first) / "MANIFEST") + file_bytes(fs::path(first) / "state.bin") == bytes);
  // Leftovers of an interrupted save (a folder without MANIFEST) are no checkpoint: replaced.
  const auto second = (fs::path(dir.path) / "step-000000000002").string();
  world.barrier();
  if (world.rank() == 0) {
    fs::create_directories(second);
    std::ofstream(fs::path(second) / "part-0-9.bin") << "half a part";
    std::ofstream(fs::path(second) / ".state.bin.tmp.123") << "half a file";
  }
  world.barrier();
  resumed.train_step(chain_batch(4, 2));
  CHECK(again.save(resumed) == second);
  if (world.rank() == 0) CHECK_FALSE(fs::exists(fs::path(second) / "part-0-9.bin"));
  parallax::DataParallel check(make_net(5), parallax::optim::SGD<double>({.lr = 0.1}), {}, world);
  CHECK_NOTHROW(again.load(check, nullptr, second));
  CHECK(flat_parameters<double>(check.model().parameters()) == flat_parameters<double>(resumed.model().parameters()));
}

TEST_CASE("checkpoint: resuming with another learning rate: the checkpoint's is used, rank 0 says so") {
  communicator world;
  scratch_dir dir(world);
  std::string folder;
  {
    parallax::DataParallel dp(make_net(3), parallax::optim::SGD<double>({.lr = 0.1}), {}, world);
    dp.train_step(chain_batch(4, 1));
    folder = parallax::io::Checkpointer(dir.path, {}, world).save(dp);
  }
  auto resume = [&](double lr, parallax::io::checkpoint_options options, parallax::optim::lr_schedule schedule = {}) {
    parallax::DataParallel dp(make_net(3), parallax::optim::SGD<double>({.lr = lr}), {.lr_schedule = schedule}, world);
    captured_cerr err;
    parallax::io::Checkpointer ck(dir.path, options, world);
    REQUIRE(ck.resume_latest(dp) == folder);
    CHECK(dp.optimizer().learning_rate() == 0.1);
    return err.str();
  };
  const auto differs = resume(0.5, {});
  if (world.rank() == 0)
    CHECK(differs ==
          "parallax: resume: lr is 0.1 in the checkpoint, 0.5 in the code; the checkpoint's value is used (" + folder +
              ")\n");
  else
    CHECK(differs.empty());
  CHECK(resume(0.1, {}).empty());                // the same: nothing to say
  CHECK(resume(0.5, {.quiet = true}).empty());  // quiet
  // Under a schedule the schedule sets each step's rate: no notice.
  CHECK(resume(0.5, {}, parallax::optim::constant_lr(0.5)).empty());
}

TEST_CASE("checkpoint: options that differ between ranks are a rank_mismatch naming the option and the values") {
  communicator world;
  if (world.size() < 2) return;
  scratch_dir dir(world);
  const int last = world.size() - 1;
  using parallax::io::checkpoint_options;
  auto mismatch = [&](const std::string& path, checkpoint_options options) {
    const auto f = agreed_failure(world, [&] { parallax::io::Checkpointer ck(path, options, world); });
    CHECK(f.kind == parallax::error_kind::rank_mismatch);
    return f.message;
  };
  CHECK(has(mismatch(dir.path, {.every_steps = world.rank() == 1 ? 5u : 10u}),
            "Checkpointer: settings differ between ranks: every_steps: rank 0 has 10, rank 1 has 5"));
  CHECK(has(mismatch(dir.path, {.keep = world.rank() == last ? 2u : 3u}),
            "keep: rank 0 has 3, rank " + std::to_string(last) + " has 2"));
  CHECK(has(mismatch(dir.path, {.every_seconds = world.rank() == 0 ? 0.5 : 0.0}),
            "every_seconds: rank 0 has 0.5, rank 1 has 0"));
  CHECK(has(mismatch(dir.path, {.on_all_damaged = world.rank() == 1 ? parallax::io::damaged_policy::start_fresh
                                                                    : parallax::io::damaged_policy::error}),
            "on_all_damaged: rank 0 has error, rank 1 has start_fresh"));
  const auto mine = dir.path + "/rank" + std::to_string(world.rank());
  CHECK(has(mismatch(mine, {}), "directory: rank 0 has " + dir.path + "/rank0, rank 1 has " + dir.path + "/rank1"));
  CHECK_FALSE(fs::exists(mine));  // compared before anything is created
  // An invalid option on one rank is that rank's error, found before the comparison.
  const auto negative = agreed_failure(world, [&] {
    parallax::io::Checkpointer ck(dir.path, {.every_seconds = world.rank() == 1 ? -1.0 : 0.0}, world);
  });
  CHECK(negative.kind == parallax::error_kind::invalid_argument);
  CHECK(has(negative.message, "Checkpointer: every_seconds = -1 must be finite and >= 0 [rank 1]"));
  // Only rank 0 prints: quiet may differ.
  CHECK_NOTHROW(parallax::io::Checkpointer(dir.path, {.quiet = world.rank() == 0}, world));
}
