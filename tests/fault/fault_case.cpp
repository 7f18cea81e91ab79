// SPDX-License-Identifier: BSL-1.0
// fault_case: runs one bad input against parallax under mpiexec and prints,
// on every rank, one machine-readable line with what that rank saw:
//   parallax-fault {"rank":R,"kind":K,"ranks":[...],"cause":C,"what":W,"after":A,"hash":H,"note":N}
// K is parallax::kind_name() of the caught parallax::error, "ok" when the
// input raised nothing, or "foreign" for any other exception (it escaped the
// library untranslated). A is the outcome of the follow-up step where
// training continues ("" when the input has none), H a fingerprint of the
// replica after it (equal on every rank when the replicas are equal).
// tests/fault/run_faults.py runs the inputs and judges the lines.
//   mpiexec -n 2 build/tests/fault/fault_case dp_loss_throws_one_rank
//   build/tests/fault/fault_case --list
#include <parallax/core/agree.hpp>
#include <parallax/core/error.hpp>
#include <parallax/data/batch.hpp>
#include <parallax/data_parallel.hpp>
#include <parallax/detail/random.hpp>
#include <parallax/ensemble.hpp>
#include <parallax/io/checkpoint.hpp>
#include <parallax/model_parallel.hpp>
#include <parallax/nn/activation.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/loss.hpp>
#include <parallax/optim/adam.hpp>
#include <parallax/optim/schedule.hpp>
#include <parallax/optim/sgd.hpp>

#include "../toy_model.hpp"

#include <xtensor/xview.hpp>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>
#include <boost/mpi/environment.hpp>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <functional>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <typeinfo>
#include <utility>
#include <vector>

namespace {

namespace fs = std::filesystem;
using parallax::mpi::communicator;
using namespace parallax::nn;
constexpr double nan = std::numeric_limits<double>::quiet_NaN();

// ---------------------------------------------------------------------------
// What a rank saw, and how it is printed
// ---------------------------------------------------------------------------

struct report {
  std::string kind = "ok";
  std::vector<int> ranks;
  std::string cause, what;
  std::string after;  // "" no follow-up; "ok"; "failed: ..."
  std::string hash;
  std::string note;
  bool caught = false;
};

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\', out += c;
    else if (c == '\n') out += "\\n";
    else if (static_cast<unsigned char>(c) < 0x20) out += ' ';
    else out += c;
  }
  return out + "\"";
}

void print(const report& r, int rank) {
  std::ostringstream line;
  line << "parallax-fault {\"rank\":" << rank << ",\"kind\":" << json_string(r.kind) << ",\"ranks\":[";
  for (std::size_t i = 0; i < r.ranks.size(); ++i) line << (i ? "," : "") << r.ranks[i];
  line << "],\"cause\":" << json_string(r.cause) << ",\"what\":" << json_string(r.what)
       << ",\"after\":" << json_string(r.after) << ",\"hash\":" << json_string(r.hash)
       << ",\"note\":" << json_string(r.note) << "}\n";
  // mpiexec forwards long lines in pieces that can interleave between ranks:
  // run_faults.py reads each rank's line from its own file.
  if (const char* dir = std::getenv("PARALLAX_FAULT_REPORTS"))
    std::ofstream(std::string(dir) + "/rank-" + std::to_string(rank) + ".json") << line.str();
  std::cout << line.str() << std::flush;
}

/// Runs the bad input f; the first exception it throws is what this rank reports.
template <class F>
void attempt(report& r, F&& f) {
  try {
    f();
  } catch (const parallax::error& e) {
    if (r.caught) return;
    r.caught = true;
    r.kind = std::string(parallax::kind_name(e.kind()));
    r.ranks = e.ranks();
    r.cause = e.cause();
    r.what = e.what();
  } catch (const std::exception& e) {
    if (r.caught) return;
    r.caught = true;
    r.kind = "foreign";
    r.cause = std::string(typeid(e).name()) + ": " + e.what();
    r.what = r.cause;
  }
}

/// Runs the follow-up f (training continues) and records its outcome.
template <class F>
void follow_up(report& r, F&& f) {
  try {
    r.hash = f();
    r.after = "ok";
  } catch (const std::exception& e) {
    r.after = std::string("failed: ") + e.what();
  }
}

std::string hex(std::uint64_t h) {
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(h));
  return text;
}

// ---------------------------------------------------------------------------
// A user model, a dataset and a layer that fail on request
// ---------------------------------------------------------------------------

using Data = toy::dataset<double>;
using Batch = toy::batch<double>;

/// TinyMLP whose loss_and_gradient throws, returns a NaN loss, writes a NaN
/// gradient or resizes a gradient on request.
struct FaultNet : toy::TinyMLP<double> {
  FaultNet(std::size_t h = 4) : toy::TinyMLP<double>(3, h, 11) {}
  bool nan_loss = false, nan_gradient = false, resize_gradient = false, throw_on_predict = false;
  xt::xtensor<double, 1> predict(const xt::xtensor<double, 2>& x) const {
    if (throw_on_predict) throw std::runtime_error("FaultNet::predict(): deliberate failure");
    return toy::TinyMLP<double>::predict(x);
  }
  double loss_and_gradient(const batch_type& b) {
    const double loss = toy::TinyMLP<double>::loss_and_gradient(b);
    if (nan_gradient) dW1(0, 0) = nan;
    if (resize_gradient) db2 = xt::zeros<double>({std::size_t(2)});
    return nan_loss ? nan : loss;
  }
};
using DP = parallax::DataParallel<FaultNet>;

std::string fingerprint(FaultNet& m) {
  std::uint64_t h = 0;
  parallax::detail::for_each_tensor(m.parameters(), [&](auto& t) {
    h = parallax::detail::content_hash(t.data(), t.size() * sizeof(double), h);
  });
  return hex(h);
}

/// "finite" or "non-finite": whether every parameter is finite.
std::string finite_note(FaultNet& m) {
  bool finite = true;
  parallax::detail::for_each_tensor(m.parameters(), [&](auto& t) {
    for (double v : t) finite = finite && std::isfinite(v);
  });
  return finite ? "finite" : "non-finite";
}

/// A dataset whose batch() or size() throws on request.
struct FaultData {
  using batch_type = Batch;
  const Data* data;
  bool throw_batch = false, throw_size = false;
  std::size_t size() const {
    if (throw_size) throw std::runtime_error("FaultData::size(): the index file is unreadable");
    return data->size();
  }
  Batch batch(std::span<const std::size_t> indices) const {
    if (throw_batch) throw std::runtime_error("FaultData::batch(): sample file is unreadable");
    return data->batch(indices);
  }
};

const Data& dp_data() {
  static const Data d = toy::make_data<double>(24, 3, 5);
  return d;
}

/// A pass-through layer of the pipeline that throws or writes a NaN on request.
struct Fault {
  using input_type = xt::xtensor<double, 2>;
  using output_type = xt::xtensor<double, 2>;
  bool fail_forward = false, fail_backward = false, nan_forward = false, nan_backward = false;
  int forwards_before_failure = -1;  // >= 0: forward throws after that many calls
  void initialize(std::uint64_t, std::size_t) {}
  void forward(const input_type& x, output_type& y) {
    if (fail_forward || forwards_before_failure-- == 0) throw std::runtime_error("Fault::forward(): deliberate failure");
    y = x;
    if (nan_forward) y(0, 0) = nan;
  }
  void backward(const input_type&, const output_type&, const output_type& dy, input_type& dx) {
    if (fail_backward) throw std::runtime_error("Fault::backward(): deliberate failure");
    dx = dy;
    if (nan_backward) dx(0, 0) = nan;
  }
  static std::size_t parameter_count() { return 0; }
};

// Layer 1 (Fault) is on stage 0 at 2 ranks and on stage 1 (a middle stage) at 3 and 4.
using Chain = parallax::ModelParallel<Linear<double>, Fault, Tanh<double>, Linear<double>, SoftmaxCrossEntropy<double>>;
using ChainData = parallax::data::TensorDataset<xt::xtensor<double, 2>, xt::xtensor<std::int32_t, 1>>;
using ChainBatch = ChainData::batch_type;

auto chain_args() { return std::tuple{std::tuple{3, 5}, std::tuple{}, std::tuple{}, std::tuple{5, 3}}; }

parallax::pipeline::boundaries cut(int p) {
  if (p == 1) return {0, 4};
  if (p == 2) return {0, 2, 4};
  if (p == 3) return {0, 1, 2, 4};
  return {0, 1, 2, 3, 4};
}

const ChainData& mp_data() {
  static const ChainData d = [] {
    parallax::detail::rng g(3);
    xt::xtensor<double, 2> x = xt::zeros<double>({std::size_t(24), std::size_t(3)});
    xt::xtensor<std::int32_t, 1> y = xt::zeros<std::int32_t>({std::size_t(24)});
    for (auto& v : x) v = 2 * g.uniform() - 1;
    for (auto& t : y) t = static_cast<std::int32_t>(g.below(3));
    return ChainData(std::move(x), std::move(y));
  }();
  return d;
}

ChainBatch mp_batch() {
  std::vector<std::size_t> all(8);
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;
  return mp_data().batch(all);
}

/// One training step; its loss (the same on every rank) as the pipeline's fingerprint.
std::string mp_step(Chain& net) {
  const double loss = net.train_step(mp_batch());
  char text[32];
  std::snprintf(text, sizeof text, "%.17g", loss);
  return text;
}

struct ChainFaultData {  // FaultData for the pipeline's batches
  using batch_type = ChainBatch;
  const ChainData* data;
  bool throw_batch = false;
  std::size_t size() const { return data->size(); }
  ChainBatch batch(std::span<const std::size_t> indices) const {
    if (throw_batch) throw std::runtime_error("FaultData::batch(): sample file is unreadable");
    return data->batch(indices);
  }
};

// ---------------------------------------------------------------------------
// The inputs
// ---------------------------------------------------------------------------

struct context {
  communicator world;
  int rank = world.rank();
  int size = world.size();
  int last = size - 1;
  report r;
  bool is(std::initializer_list<int> ranks) const { return std::find(ranks.begin(), ranks.end(), rank) != ranks.end(); }
};

parallax::optim::SGD<double> sgd(double lr = 0.1, double momentum = 0) {
  return parallax::optim::SGD<double>({.lr = lr, .momentum = momentum});
}

/// A data-parallel trainer, one epoch with `before` applied to the options,
/// and a clean follow-up epoch whose replicas are compared.
void dp_epoch(context& c, const std::function<void(parallax::data_parallel_options&)>& before = {},
              const std::function<void(DP&)>& poke = {}, std::size_t global_batch = 8) {
  parallax::data_parallel_options o;
  if (before) before(o);
  DP dp(FaultNet(), sgd(), o, c.world);
  auto sampler = dp.make_sampler(dp_data().size(), global_batch, {.seed = 1});
  if (poke) poke(dp);
  attempt(c.r, [&] { c.r.note = "loss=" + std::to_string(dp.train_epoch(dp_data(), sampler).loss) + " "; });
  auto& m = dp.model();
  m.nan_gradient = m.nan_loss = m.throw_on_loss = m.resize_gradient = false;
  m.db2 = xt::zeros<double>({std::size_t(1)});
  follow_up(c.r, [&] {
    dp.train_epoch(dp_data(), sampler);
    return fingerprint(dp.model());
  });
  c.r.note += finite_note(dp.model());
}

/// A data-parallel trainer whose options differ between ranks; the replicas
/// after one epoch tell whether they diverged.
void dp_setting_differs(context& c, const std::function<void(parallax::data_parallel_options&)>& on_rank_0,
                        const parallax::optim::Optimizer<double>& opt0, const parallax::optim::Optimizer<double>& opt) {
  attempt(c.r, [&] {
    parallax::data_parallel_options o;
    if (c.rank == 0) on_rank_0(o);
    DP dp(FaultNet(), c.rank == 0 ? opt0 : opt, o, c.world);
    auto sampler = dp.make_sampler(dp_data().size(), 8, {.seed = 1});
    dp.train_epoch(dp_data(), sampler);
    dp.train_epoch(dp_data(), sampler);
    c.r.hash = fingerprint(dp.model());
  });
}

/// A pipeline with `before` applied to its options, one step of `poke`d
/// layers, then a clean follow-up step.
void mp_step_with(context& c, const std::function<void(parallax::pipeline_options&)>& before,
                  const std::function<void(Fault&)>& poke, bool continues = true) {
  parallax::pipeline_options o{.micro_batches = 2, .boundaries = cut(c.size)};
  if (before) before(o);
  Chain net(chain_args(), sgd(), o, c.world);
  Fault* f = net.layer<1>();
  if (f && poke) poke(*f);
  attempt(c.r, [&] { mp_step(net); });
  if (f) *f = Fault{};
  if (continues) follow_up(c.r, [&] { return mp_step(net); });
}

/// A pipeline whose options differ on rank 0; two steps.
void mp_setting_differs(context& c, const std::function<void(parallax::pipeline_options&)>& on_rank_0,
                        double lr0 = 0.1) {
  attempt(c.r, [&] {
    parallax::pipeline_options o{.micro_batches = 2, .boundaries = cut(c.size)};
    if (c.rank == 0) on_rank_0(o);
    Chain net(chain_args(), sgd(c.rank == 0 ? lr0 : 0.1), o, c.world);
    mp_step(net);
    c.r.hash = mp_step(net);
  });
}

/// A checkpoint folder with the same name on every rank (rank 0 chooses it).
std::string shared_dir(context& c, const std::string& name) {
  std::string dir;
  if (c.rank == 0) {
    dir = (fs::temp_directory_path() / ("parallax-fault-" + name + "-" + std::to_string(::getpid()))).string();
    fs::remove_all(dir);
  }
  boost::mpi::broadcast(c.world, dir, 0);
  return dir;
}

void remove_dir(context& c, const std::string& dir) {
  c.world.barrier();
  if (c.rank == 0) fs::remove_all(dir);
}

/// Two checkpoints (steps 1 and 2) of a data-parallel trainer in `dir`.
void two_checkpoints(context& c, const std::string& dir) {
  DP dp(FaultNet(), sgd(), {}, c.world);
  parallax::io::Checkpointer ck(dir, {.quiet = true}, c.world);
  ck.resume_latest(dp);
  const auto b = dp_data().batch(std::vector<std::size_t>{0, 1, 2, 3});
  for (int i = 0; i < 2; ++i) {
    dp.train_step(b);
    ck.save(dp);
  }
}

/// A file's bytes ("" when it cannot be read).
std::string file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

/// The step folders' names and the damaged ones set aside, in `dir`, as one
/// sorted line (rank 0's view, broadcast).
std::string folder_names(context& c, const std::string& dir) {
  std::string text;
  if (c.rank == 0) {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    for (const auto& n : names) text += (text.empty() ? "" : " ") + n;
  }
  boost::mpi::broadcast(c.world, text, 0);
  return text;
}

/// A hook that throws on its first call only.
std::function<void(const parallax::step_report&)> throw_once(std::string message) {
  auto armed = std::make_shared<bool>(true);
  return [armed, message](const parallax::step_report&) {
    if (*armed) {
      *armed = false;
      throw std::runtime_error(message);
    }
  };
}

using input_fn = std::function<void(context&)>;

std::map<std::string, input_fn> inputs() {
  std::map<std::string, input_fn> in;

  // --- 1. callbacks the library calls -------------------------------------
  in["dp_loss_throws_one_rank"] = [](context& c) {
    dp_epoch(c, {}, [&](DP& dp) { dp.model().throw_on_loss = c.rank == c.last; });
  };
  in["dp_loss_throws_two_ranks"] = [](context& c) {
    dp_epoch(c, {}, [&](DP& dp) { dp.model().throw_on_loss = c.is({0, c.last}); });
  };
  in["dp_loss_throws_in_accumulation"] = [](context& c) {
    // The first micro-step of two fails on rank 1; the failure waits for the communicating one.
    dp_epoch(c, [](auto& o) { o.accumulation_steps = 2; }, [&](DP& dp) { dp.model().throw_on_loss = c.rank == 1; });
  };
  in["dp_loss_throws_local_sgd"] = [](context& c) {
    dp_epoch(c, [](auto& o) { o.average_every = 2; }, [&](DP& dp) { dp.model().throw_on_loss = c.rank == 1; });
  };
  in["dp_batch_throws_one_rank"] = [](context& c) {
    DP dp(FaultNet(), sgd(), {}, c.world);
    auto sampler = dp.make_sampler(24, 8, {.seed = 1});
    FaultData d{&dp_data(), c.rank == 1};
    attempt(c.r, [&] { dp.train_epoch(d, sampler); });
    d.throw_batch = false;
    follow_up(c.r, [&] {
      dp.train_epoch(d, sampler);
      return fingerprint(dp.model());
    });
  };
  in["dp_batch_throws_all_ranks"] = [](context& c) {
    DP dp(FaultNet(), sgd(), {}, c.world);
    auto sampler = dp.make_sampler(24, 8, {.seed = 1});
    FaultData d{&dp_data(), true};
    attempt(c.r, [&] { dp.train_epoch(d, sampler); });
  };
  in["dp_eval_batch_throws_one_rank"] = [](context& c) {
    DP dp(FaultNet(), sgd(), {}, c.world);
    FaultData d{&dp_data(), c.rank == c.last};
    attempt(c.r, [&] { dp.evaluate(d, 4); });
    d.throw_batch = false;
    follow_up(c.r, [&] { return std::to_string(dp.evaluate(d, 4).loss); });
  };
  in["dp_eval_size_throws_one_rank"] = [](context& c) {
    DP dp(FaultNet(), sgd(), {}, c.world);
    FaultData d{&dp_data(), false, c.rank == 1};
    attempt(c.r, [&] { dp.evaluate(d, 4); });
  };
  in["dp_eval_loss_throws_one_rank"] = [](context& c) {
    struct Thrower : FaultNet {
      bool fail = false;
      double loss(const batch_type& b) const {
        if (fail) throw std::runtime_error("Thrower::loss(): deliberate failure");
        return FaultNet::loss(b);
      }
    };
    parallax::DataParallel<Thrower> dp(Thrower{}, sgd(), {}, c.world);
    dp.model().fail = c.rank == 0;
    attempt(c.r, [&] { dp.evaluate(dp_data(), 4); });
  };
  in["dp_metric_throws_one_rank"] = [](context& c) {
    DP dp(FaultNet(), sgd(), {}, c.world);
    const int bad = c.last;
    std::vector<parallax::metric<FaultNet>> metrics{{"mae", [&](FaultNet&, const Batch&) -> double {
                                                       if (c.rank == bad) throw std::runtime_error("mae metric: deliberate failure");
                                                       return 1.0;
                                                     }}};
    attempt(c.r, [&] { dp.evaluate(dp_data(), 4, metrics); });
  };
  in["dp_on_step_throws"] = [](context& c) {  // on_step runs on rank 0 only
    dp_epoch(c, [](auto& o) { o.on_step = throw_once("deliberate failure in a hook"); });
  };
  in["dp_after_step_throws_one_rank"] = [](context& c) {
    dp_epoch(c, [&](auto& o) {
      if (c.rank == c.last) o.after_step = throw_once("deliberate failure in a hook");
    });
  };
  in["dp_after_step_throws_all_ranks"] = [](context& c) {
    parallax::data_parallel_options o;
    o.after_step = [](const parallax::step_report&) { throw std::runtime_error("deliberate failure in a hook"); };
    DP dp(FaultNet(), sgd(), o, c.world);
    auto sampler = dp.make_sampler(24, 8, {.seed = 1});
    attempt(c.r, [&] { dp.train_epoch(dp_data(), sampler); });
  };
  in["dp_stop_when_throws_one_rank"] = [](context& c) {
    bool armed = true;
    dp_epoch(c, [&](auto& o) {
      o.stop_when = [&c, &armed](const parallax::step_report&) -> bool {
        if (armed && c.rank == 1) {
          armed = false;
          throw std::runtime_error("deliberate failure in a hook");
        }
        return false;
      };
    });
  };
  in["mp_forward_throws_in_shape_pass"] = [](context& c) {
    mp_step_with(c, {}, [](Fault& f) { f.fail_forward = true; });
  };
  in["mp_forward_throws_mid_schedule"] = [](context& c) {
    // The shape pass's forward succeeds; the second micro-batch's forward throws.
    mp_step_with(c, {}, [](Fault& f) { f.forwards_before_failure = 2; });
  };
  in["mp_backward_throws"] = [](context& c) { mp_step_with(c, {}, [](Fault& f) { f.fail_backward = true; }); };
  in["mp_forward_throws_gpipe"] = [](context& c) {
    mp_step_with(c, [](auto& o) { o.schedule = parallax::pipeline::schedule_kind::gpipe; },
                 [](Fault& f) { f.forwards_before_failure = 2; });
  };
  in["mp_batch_throws_one_rank"] = [](context& c) {
    Chain net(chain_args(), sgd(), {.micro_batches = 2, .boundaries = cut(c.size)}, c.world);
    auto sampler = net.make_sampler(24, 8, {.seed = 1});
    ChainFaultData d{&mp_data(), c.rank == c.last};
    attempt(c.r, [&] { net.train_epoch(d, sampler); });
  };
  in["mp_eval_batch_throws_one_rank"] = [](context& c) {
    Chain net(chain_args(), sgd(), {.micro_batches = 2, .boundaries = cut(c.size)}, c.world);
    ChainFaultData d{&mp_data(), c.rank == 0};
    attempt(c.r, [&] { net.evaluate(d, 8); });
  };
  in["mp_predict_forward_throws"] = [](context& c) {
    Chain net(chain_args(), sgd(), {.micro_batches = 2, .boundaries = cut(c.size)}, c.world);
    if (auto* f = net.layer<1>()) f->fail_forward = true;
    attempt(c.r, [&] { net.predict(mp_batch().inputs); });
    if (auto* f = net.layer<1>()) f->fail_forward = false;
    follow_up(c.r, [&] { return mp_step(net); });
  };
  in["ensemble_make_model_throws_one_rank"] = [](context& c) {
    attempt(c.r, [&] {
      parallax::Ensemble<FaultNet> e(
          [&](std::uint64_t) -> FaultNet {
            if (c.rank == 1) throw std::runtime_error("make_model: deliberate failure");
            return FaultNet();
          },
          sgd(), {}, {}, c.world);
    });
  };

  in["ensemble_predict_throws_one_rank"] = [](context& c) {
    parallax::Ensemble<FaultNet> e([](std::uint64_t) { return FaultNet(); }, sgd(), {}, {}, c.world);
    e.model().throw_on_predict = c.rank == c.last;
    attempt(c.r, [&] { e.predict(dp_data().inputs()); });
    e.model().throw_on_predict = false;
    follow_up(c.r, [&] {
      const auto out = e.predict(dp_data().inputs());
      return hex(parallax::detail::content_hash(out.data(), out.size() * sizeof(double)));
    });
  };

  // --- 2. rank-local errors before the first collective ---------------------
  in["sgd_invalid_lr_one_rank"] = [](context& c) {
    attempt(c.r, [&] {
      parallax::optim::SGD<double> opt({.lr = c.rank == 1 ? -1.0 : 0.1});
      DP dp(FaultNet(), opt, {}, c.world);
    });
  };
  in["adam_invalid_eps_one_rank"] = [](context& c) {
    attempt(c.r, [&] {
      parallax::optim::Adam<double> opt({.eps = c.rank == c.last ? 0.0 : 1e-8});
      DP dp(FaultNet(), opt, {}, c.world);
    });
  };
  in["mp_adam_invalid_beta1_one_rank"] = [](context& c) {
    attempt(c.r, [&] {
      parallax::optim::Adam<double> opt({.beta1 = c.rank == 0 ? 1.0 : 0.9});
      Chain net(chain_args(), opt, {.micro_batches = 2, .boundaries = cut(c.size)}, c.world);
    });
  };
  in["dp_schedule_invalid_one_rank"] = [](context& c) {
    attempt(c.r, [&] {
      DP dp(FaultNet(), sgd(), {.lr_schedule = parallax::optim::cosine_lr(0.1, c.rank == 1 ? 0 : 100)}, c.world);
    });
  };
  in["dp_schedule_negative_lr_one_rank"] = [](context& c) {
    attempt(c.r, [&] {
      parallax::optim::lr_schedule s = [&](std::uint64_t step) { return c.rank == c.last && step >= 10 ? -0.5 : 0.1; };
      DP dp(FaultNet(), sgd(), {.lr_schedule = s}, c.world);
    });
  };
  in["ensemble_schedule_invalid_one_rank"] = [](context& c) {
    attempt(c.r, [&] {
      parallax::Ensemble<FaultNet> e([](std::uint64_t) { return FaultNet(); }, sgd(), {},
                                     {.lr_schedule = parallax::optim::step_lr(0.1, c.rank == c.last ? 0 : 5, 0.5)},
                                     c.world);
    });
  };
  in["dp_accumulation_zero_one_rank"] = [](context& c) {
    attempt(c.r, [&] { DP dp(FaultNet(), sgd(), {.accumulation_steps = c.rank == 1 ? 0u : 1u}, c.world); });
  };
  in["dp_clip_negative_one_rank"] = [](context& c) {
    attempt(c.r, [&] { DP dp(FaultNet(), sgd(), {.clip_norm = c.rank == c.last ? -1.0 : 0.0}, c.world); });
  };
  in["dp_bucket_bytes_zero_one_rank"] = [](context& c) {
    attempt(c.r, [&] { DP dp(FaultNet(), sgd(), {.bucket_bytes = c.rank == 1 ? 0u : 1024u}, c.world); });
  };
  in["mp_micro_batches_zero_one_rank"] = [](context& c) {
    attempt(c.r, [&] {
      Chain net(chain_args(), sgd(), {.micro_batches = c.rank == 1 ? 0u : 2u, .boundaries = cut(c.size)}, c.world);
    });
  };
  in["mp_boundaries_invalid_one_rank"] = [](context& c) {
    auto b = cut(c.size);
    if (c.rank == 0) b.back() = 9;  // past the 4 layers
    attempt(c.r, [&] { Chain net(chain_args(), sgd(), {.micro_batches = 2, .boundaries = b}, c.world); });
  };
  in["ensemble_ranks_per_replica_zero_one_rank"] = [](context& c) {
    attempt(c.r, [&] {
      parallax::Ensemble<FaultNet> e([](std::uint64_t) { return FaultNet(); }, sgd(),
                                     {.ranks_per_replica = c.rank == 1 ? 0 : 1}, {}, c.world);
    });
  };
  in["checkpointer_keep_zero_one_rank"] = [](context& c) {
    const auto dir = shared_dir(c, "keep");
    attempt(c.r, [&] { parallax::io::Checkpointer ck(dir, {.keep = c.rank == 1 ? 0u : 3u}, c.world); });
    remove_dir(c, dir);
  };

  // --- 3. settings that must match across ranks -----------------------------
  in["dp_accumulation_differs"] = [](context& c) {
    dp_setting_differs(c, [](auto& o) { o.accumulation_steps = 2; }, sgd(), sgd());
  };
  in["dp_average_every_differs"] = [](context& c) {
    dp_setting_differs(c, [](auto& o) { o.average_every = 2; }, sgd(), sgd());
  };
  in["dp_bucket_bytes_differs"] = [](context& c) {
    dp_setting_differs(c, [](auto& o) { o.bucket_bytes = 64; }, sgd(), sgd());
  };
  in["dp_clip_norm_differs"] = [](context& c) {
    dp_setting_differs(c, [](auto& o) { o.clip_norm = 1e-3; }, sgd(), sgd());
  };
  in["dp_nonfinite_policy_differs"] = [](context& c) {
    attempt(c.r, [&] {
      parallax::data_parallel_options o;
      if (c.rank == 0) o.on_nonfinite = parallax::nonfinite_policy::skip_step;
      DP dp(FaultNet(), sgd(), o, c.world);
      dp.model().nan_gradient = c.rank == c.last;
      dp.train_step(dp_data().batch(std::vector<std::size_t>{static_cast<std::size_t>(c.rank)}));
      dp.model().nan_gradient = false;
      dp.train_step(dp_data().batch(std::vector<std::size_t>{static_cast<std::size_t>(c.rank)}));
      c.r.hash = fingerprint(dp.model());
    });
  };
  in["dp_lr_differs"] = [](context& c) { dp_setting_differs(c, [](auto&) {}, sgd(0.2), sgd(0.1)); };
  in["dp_momentum_differs"] = [](context& c) { dp_setting_differs(c, [](auto&) {}, sgd(0.1, 0.9), sgd(0.1, 0)); };
  in["dp_optimizer_kind_differs"] = [](context& c) {
    dp_setting_differs(c, [](auto&) {}, parallax::optim::Adam<double>({.lr = 0.1}), sgd(0.1));
  };
  in["dp_lr_schedule_differs"] = [](context& c) {
    dp_setting_differs(c, [](auto& o) { o.lr_schedule = parallax::optim::step_lr(0.1, 1, 0.5); }, sgd(), sgd());
  };
  in["dp_lr_schedule_values_differ"] = [](context& c) {
    attempt(c.r, [&] {
      const std::uint64_t total = c.rank == c.last ? 500 : 1000;
      DP dp(FaultNet(), sgd(), {.lr_schedule = parallax::optim::cosine_lr(0.1, total)}, c.world);
    });
  };
  in["dp_gradient_resized_one_rank"] = [](context& c) {
    dp_epoch(c, {}, [&](DP& dp) { dp.model().resize_gradient = c.rank == 1; });
  };
  in["dp_parameter_shapes_differ"] = [](context& c) {
    attempt(c.r, [&] { DP dp(FaultNet(c.rank == c.last ? 5 : 4), sgd(), {}, c.world); });
  };
  in["sampler_seed_differs"] = [](context& c) {
    DP dp(FaultNet(), sgd(), {}, c.world);
    attempt(c.r, [&] { dp.make_sampler(24, 8, {.seed = c.rank == 1 ? 2u : 1u}); });
  };
  in["sampler_global_batch_differs"] = [](context& c) {
    DP dp(FaultNet(), sgd(), {}, c.world);
    attempt(c.r, [&] { dp.make_sampler(24, c.rank == 0 ? 12 : 8, {.seed = 1}); });
  };
  in["sampler_shuffle_differs"] = [](context& c) {
    DP dp(FaultNet(), sgd(), {}, c.world);
    attempt(c.r, [&] { dp.make_sampler(24, 8, {.seed = 1, .shuffle = c.rank != c.last}); });
  };
  in["dp_eval_dataset_size_differs"] = [](context& c) {
    DP dp(FaultNet(), sgd(), {}, c.world);
    const auto x = dp_data().inputs();
    const auto y = dp_data().targets();
    const std::size_t n = c.rank == c.last ? 20 : 24;  // the last rank's copy lacks 4 samples
    const Data mine(xt::xtensor<double, 2>(xt::view(x, xt::range(0, n), xt::all())),
                    xt::xtensor<double, 1>(xt::view(y, xt::range(0, n))));
    attempt(c.r, [&] { c.r.note = "samples=" + std::to_string(dp.evaluate(mine, 4).samples); });
  };
  in["mp_batches_differ"] = [](context& c) {
    Chain net(chain_args(), sgd(), {.micro_batches = 2, .boundaries = cut(c.size)}, c.world);
    auto b = mp_batch();
    if (c.rank == 0) b.targets(0) = (b.targets(0) + 1) % 3;  // rank 0 reads other targets
    attempt(c.r, [&] { net.train_step(b); });
    follow_up(c.r, [&] { return mp_step(net); });
  };
  in["mp_predict_inputs_differ"] = [](context& c) {
    Chain net(chain_args(), sgd(), {.micro_batches = 2, .boundaries = cut(c.size)}, c.world);
    auto x = mp_batch().inputs;
    if (c.rank == c.last) x(0, 0) += 1;
    attempt(c.r, [&] { net.predict(x); });
    follow_up(c.r, [&] { return mp_step(net); });
  };
  in["mp_micro_batches_differs"] = [](context& c) { mp_setting_differs(c, [](auto& o) { o.micro_batches = 4; }); };
  in["mp_schedule_differs"] = [](context& c) {
    mp_setting_differs(c, [](auto& o) { o.schedule = parallax::pipeline::schedule_kind::gpipe; });
  };
  in["mp_seed_differs"] = [](context& c) { mp_setting_differs(c, [](auto& o) { o.seed = 7; }); };
  in["mp_recompute_differs"] = [](context& c) { mp_setting_differs(c, [](auto& o) { o.recompute = true; }); };
  in["mp_clip_norm_differs"] = [](context& c) { mp_setting_differs(c, [](auto& o) { o.clip_norm = 1e-3; }); };
  in["mp_lr_differs"] = [](context& c) { mp_setting_differs(c, [](auto&) {}, 0.5); };
  in["mp_boundaries_differ"] = [](context& c) {
    // Both cuts are valid; rank 0's puts one layer fewer on the last stage.
    mp_setting_differs(c, [&](auto& o) {
      auto b = cut(c.size);
      b[b.size() - 2] += 1;
      o.boundaries = b;
    });
  };
  in["ensemble_seed_differs"] = [](context& c) {
    attempt(c.r, [&] {
      parallax::Ensemble<FaultNet> e([](std::uint64_t) { return FaultNet(); }, sgd(),
                                     {.ranks_per_replica = c.size, .seed = c.rank == 0 ? 1u : 2u}, {}, c.world);
      auto sampler = e.make_sampler(24, 8);
      e.train_epoch(dp_data(), sampler);
      c.r.hash = fingerprint(e.model());
    });
  };
  in["ensemble_ranks_per_replica_differs"] = [](context& c) {
    attempt(c.r, [&] {
      parallax::Ensemble<FaultNet> e([](std::uint64_t) { return FaultNet(); }, sgd(),
                                     {.ranks_per_replica = c.rank == 0 ? 1 : c.size}, {}, c.world);
      auto sampler = e.make_sampler(24, 8);
      e.train_epoch(dp_data(), sampler);
      c.r.hash = fingerprint(e.model());
    });
  };
  in["checkpoint_directory_differs"] = [](context& c) {
    const auto dir = shared_dir(c, "dir") + "-rank" + std::to_string(c.rank);
    attempt(c.r, [&] { parallax::io::Checkpointer ck(dir, {.quiet = true}, c.world); });
    c.r.note = fs::exists(dir) ? "created" : "not created";
    fs::remove_all(dir);
  };
  in["checkpoint_every_steps_differs"] = [](context& c) {
    const auto dir = shared_dir(c, "every");
    attempt(c.r, [&] {
      DP dp(FaultNet(), sgd(), {}, c.world);
      parallax::io::Checkpointer ck(dir, {.every_steps = c.rank == 0 ? 1u : 2u, .quiet = true}, c.world);
      ck.resume_latest(dp);
      auto sampler = dp.make_sampler(24, 8, {.seed = 1});
      dp.set_after_step([&](const parallax::step_report&) { ck.maybe_save(dp, &sampler); });
      dp.train_epoch(dp_data(), sampler);
    });
    remove_dir(c, dir);
  };

  // --- 4. collectives reached by only some ranks ----------------------------
  in["dp_one_rank_skips_a_step"] = [](context& c) {
    attempt(c.r, [&] {
      DP dp(FaultNet(), sgd(), {}, c.world);
      const auto b = dp_data().batch(std::vector<std::size_t>{static_cast<std::size_t>(c.rank)});
      dp.train_step(b);
      if (c.rank != c.last) dp.train_step(b);
      dp.evaluate(dp_data(), 4);
    });
  };
  in["dp_one_rank_leaves_the_loop"] = [](context& c) {
    attempt(c.r, [&] {
      DP dp(FaultNet(), sgd(), {}, c.world);
      const auto b = dp_data().batch(std::vector<std::size_t>{static_cast<std::size_t>(c.rank)});
      for (int s = 0; s < 3; ++s) {
        if (c.rank == 1 && s == 1) break;
        dp.train_step(b);
      }
    });
  };
  in["save_on_one_rank_only"] = [](context& c) {
    const auto dir = shared_dir(c, "one-save");
    attempt(c.r, [&] {
      DP dp(FaultNet(), sgd(), {}, c.world);
      parallax::io::Checkpointer ck(dir, {.quiet = true}, c.world);
      const auto b = dp_data().batch(std::vector<std::size_t>{static_cast<std::size_t>(c.rank)});
      dp.train_step(b);
      if (c.rank == 0) ck.save(dp);
      dp.train_step(b);
    });
  };
  in["dp_rank0_leaves_the_loop"] = [](context& c) {
    attempt(c.r, [&] {
      DP dp(FaultNet(), sgd(), {}, c.world);
      const auto b = dp_data().batch(std::vector<std::size_t>{static_cast<std::size_t>(c.rank)});
      for (int s = 0; s < 3; ++s) {
        if (c.rank == 0 && s == 1) break;
        dp.train_step(b);
      }
    });
  };
  in["dp_one_rank_never_constructs"] = [](context& c) {
    // Rank 1 leaves before its first library call on the communicator.
    if (c.rank == 1) return;
    attempt(c.r, [&] {
      DP dp(FaultNet(), sgd(), {}, c.world);
      dp.train_step(dp_data().batch(std::vector<std::size_t>{static_cast<std::size_t>(c.rank)}));
    });
  };
  in["dp_one_rank_constructs_while_others_train"] = [](context& c) {
    attempt(c.r, [&] {
      DP dp(FaultNet(), sgd(), {}, c.world);
      const auto b = dp_data().batch(std::vector<std::size_t>{static_cast<std::size_t>(c.rank)});
      if (c.rank == c.last) DP again(FaultNet(), sgd(), {}, c.world);
      dp.train_step(b);
    });
  };
  in["dp_one_rank_slow_stall_off"] = [](context& c) {
    // PARALLAX_STALL_TIMEOUT=0: the inspector is off (0 is not "report at
    // once"), so a rank late by a moment prints nothing.
    attempt(c.r, [&] {
      DP dp(FaultNet(), sgd(), {}, c.world);
      const auto b = dp_data().batch(std::vector<std::size_t>{static_cast<std::size_t>(c.rank)});
      dp.train_step(b);
      if (c.rank == 1) ::usleep(1500 * 1000);
      dp.train_step(b);
    });
  };
  in["dp_one_rank_late_beyond_the_limit"] = [](context& c) {
    // PARALLAX_STALL_TIMEOUT=2 and a rank 3 s late: the others fail at the
    // limit, and the late rank, arriving, fails with the same error.
    attempt(c.r, [&] {
      DP dp(FaultNet(), sgd(), {}, c.world);
      const auto b = dp_data().batch(std::vector<std::size_t>{static_cast<std::size_t>(c.rank)});
      dp.train_step(b);
      if (c.rank == 1) ::usleep(3000 * 1000);
      dp.train_step(b);
    });
  };
  in["dp_one_rank_slow_stall_waits"] = [](context& c) {
    // PARALLAX_STALL_ACTION=wait and a limit below the pause: reported, then
    // the step completes on every rank.
    attempt(c.r, [&] {
      DP dp(FaultNet(), sgd(), {}, c.world);
      const auto b = dp_data().batch(std::vector<std::size_t>{static_cast<std::size_t>(c.rank)});
      dp.train_step(b);
      if (c.rank == 1) ::usleep(2500 * 1000);
      dp.train_step(b);
    });
  };
  in["mp_one_rank_skips_a_step"] = [](context& c) {
    attempt(c.r, [&] {
      Chain net(chain_args(), sgd(), {.micro_batches = 2, .boundaries = cut(c.size)}, c.world);
      mp_step(net);
      if (c.rank != 0) mp_step(net);
      net.evaluate(mp_data(), 8);
    });
  };

  // --- 5. non-finite values --------------------------------------------------
  in["dp_nan_gradient_one_rank"] = [](context& c) {
    dp_epoch(c, {}, [&](DP& dp) { dp.model().nan_gradient = c.rank == c.last; });
  };
  in["dp_nan_gradient_skip_step"] = [](context& c) {
    // Only the first step is poisoned: the epoch goes on, one step skipped.
    parallax::data_parallel_options o{.on_nonfinite = parallax::nonfinite_policy::skip_step};
    DP dp(FaultNet(), sgd(), o, c.world);
    auto sampler = dp.make_sampler(24, 8, {.seed = 1});
    dp.model().nan_gradient = c.rank == 1;
    dp.set_after_step([&](const parallax::step_report&) { dp.model().nan_gradient = false; });
    attempt(c.r, [&] { dp.train_epoch(dp_data(), sampler); });
    c.r.note = "skipped=" + std::to_string(dp.skipped_steps()) + " steps=" + std::to_string(dp.optimizer_steps());
    follow_up(c.r, [&] {
      dp.train_epoch(dp_data(), sampler);
      return fingerprint(dp.model());
    });
  };
  in["dp_nan_gradient_in_accumulation"] = [](context& c) {
    dp_epoch(c, [](auto& o) { o.accumulation_steps = 2; }, [&](DP& dp) { dp.model().nan_gradient = c.rank == 0; });
  };
  in["dp_nan_loss_one_rank"] = [](context& c) {
    dp_epoch(c, {}, [&](DP& dp) { dp.model().nan_loss = c.rank == 1; });
  };
  in["dp_nan_input_sample"] = [](context& c) {
    DP dp(FaultNet(), sgd(), {}, c.world);
    auto x = dp_data().inputs();
    x(5, 1) = nan;
    const Data poisoned(x, dp_data().targets());
    auto sampler = dp.make_sampler(24, 24, {.seed = 1, .shuffle = false});
    attempt(c.r, [&] { dp.train_epoch(poisoned, sampler); });
    follow_up(c.r, [&] {
      dp.train_epoch(dp_data(), sampler);
      return fingerprint(dp.model());
    });
  };
  in["dp_nan_gradient_local_sgd"] = [](context& c) {
    dp_epoch(c, [](auto& o) { o.average_every = 1; }, [&](DP& dp) { dp.model().nan_gradient = c.rank == 1; });
  };
  in["mp_nan_gradient"] = [](context& c) { mp_step_with(c, {}, [](Fault& f) { f.nan_backward = true; }); };
  in["mp_nan_gradient_skip_step"] = [](context& c) {
    parallax::pipeline_options o{.micro_batches = 2, .boundaries = cut(c.size),
                                 .on_nonfinite = parallax::nonfinite_policy::skip_step};
    Chain net(chain_args(), sgd(), o, c.world);
    if (auto* f = net.layer<1>()) f->nan_backward = true;
    attempt(c.r, [&] { mp_step(net); });
    c.r.note = "skipped=" + std::to_string(net.skipped_steps()) + " steps=" + std::to_string(net.optimizer().steps());
    if (auto* f = net.layer<1>()) *f = Fault{};
    follow_up(c.r, [&] { return mp_step(net); });
  };
  in["mp_nan_activation"] = [](context& c) { mp_step_with(c, {}, [](Fault& f) { f.nan_forward = true; }); };

  // --- 6. checkpoint folders -------------------------------------------------
  in["checkpoint_all_damaged"] = [](context& c) {
    const auto dir = shared_dir(c, "damaged");
    two_checkpoints(c, dir);
    c.world.barrier();
    if (c.rank == 0)
      for (const auto& step : fs::directory_iterator(dir)) fs::resize_file(step.path() / "state.bin", 10);
    c.world.barrier();
    DP dp(FaultNet(), sgd(), {}, c.world);
    parallax::io::Checkpointer ck(dir, {.quiet = true}, c.world);
    attempt(c.r, [&] {
      const auto got = ck.resume_latest(dp);
      c.r.note = got ? "resumed " + *got : "resumed nothing, " + std::to_string(ck.skipped().size()) + " skipped";
    });
    c.r.note += (c.r.note.empty() ? "" : ", ") + folder_names(c, dir);
    remove_dir(c, dir);
  };
  in["checkpoint_all_damaged_start_fresh"] = [](context& c) {
    const auto dir = shared_dir(c, "fresh");
    two_checkpoints(c, dir);
    c.world.barrier();
    if (c.rank == 0)
      for (const auto& step : fs::directory_iterator(dir)) fs::resize_file(step.path() / "state.bin", 10);
    c.world.barrier();
    attempt(c.r, [&] {
      DP dp(FaultNet(), sgd(), {}, c.world);
      parallax::io::Checkpointer ck(dir, {.on_all_damaged = parallax::io::damaged_policy::start_fresh}, c.world);
      const auto got = ck.resume_latest(dp);
      c.r.note = got ? "resumed " + *got : "resumed nothing, " + std::to_string(ck.skipped().size()) + " skipped";
      dp.train_step(dp_data().batch(std::vector<std::size_t>{0, 1, 2, 3}));
      const auto saved = fs::path(ck.save(dp)).filename().string();
      c.r.note += ", saved " + saved + ", " + folder_names(c, dir);
    });
    remove_dir(c, dir);
  };
  in["checkpoint_all_damaged_one_stage"] = [](context& c) {
    const auto dir = shared_dir(c, "damaged-stage");
    std::vector<std::string> folders;
    {
      Chain net(chain_args(), sgd(), {.micro_batches = 2, .boundaries = cut(c.size)}, c.world);
      parallax::io::Checkpointer ck(dir, {.quiet = true}, c.world);
      ck.resume_latest(net);
      for (int i = 0; i < 2; ++i) {
        mp_step(net);
        folders.push_back(ck.save(net));
      }
    }
    c.world.barrier();
    const auto b = cut(c.size);  // the last stage's part, in both: only the last rank reads it
    const auto part = "part-" + std::to_string(b[b.size() - 2]) + "-" + std::to_string(b.back()) + ".bin";
    if (c.rank == 0)
      for (const auto& f : folders) fs::resize_file(fs::path(f) / part, 20);
    c.world.barrier();
    Chain net(chain_args(), sgd(), {.micro_batches = 2, .boundaries = cut(c.size)}, c.world);
    parallax::io::Checkpointer ck(dir, {.quiet = true}, c.world);
    attempt(c.r, [&] { ck.resume_latest(net); });
    follow_up(c.r, [&] { return mp_step(net); });
    remove_dir(c, dir);
  };
  in["checkpoint_newest_damaged"] = [](context& c) {
    const auto dir = shared_dir(c, "newest");
    two_checkpoints(c, dir);
    c.world.barrier();
    if (c.rank == 0) fs::resize_file(fs::path(dir) / "step-000000000002" / "state.bin", 10);
    c.world.barrier();
    attempt(c.r, [&] {
      DP dp(FaultNet(), sgd(), {}, c.world);
      parallax::io::Checkpointer ck(dir, {}, c.world);
      const auto got = ck.resume_latest(dp);
      c.r.note = (got ? "resumed " + fs::path(*got).filename().string() : std::string("resumed nothing")) + ", " +
                 std::to_string(ck.skipped().size()) + " skipped";
      dp.train_step(dp_data().batch(std::vector<std::size_t>{0, 1, 2, 3}));  // step 2 again
      const auto saved = fs::path(ck.save(dp)).filename().string();
      c.r.note += ", saved " + saved + ", " + folder_names(c, dir);
    });
    remove_dir(c, dir);
  };
  in["checkpoint_same_step_saved_twice"] = [](context& c) {
    const auto dir = shared_dir(c, "twice");
    attempt(c.r, [&] {
      DP dp(FaultNet(), sgd(), {}, c.world);
      parallax::io::Checkpointer ck(dir, {.quiet = true}, c.world);
      ck.resume_latest(dp);
      dp.train_step(dp_data().batch(std::vector<std::size_t>{static_cast<std::size_t>(c.rank)}));
      const auto first = fs::path(ck.save(dp));
      std::string before;
      if (c.rank == 0) before = file_bytes(first / "MANIFEST") + file_bytes(first / "state.bin");
      attempt(c.r, [&] { ck.save(dp); });  // the same optimizer step again
      if (c.rank == 0)
        c.r.note = file_bytes(first / "MANIFEST") + file_bytes(first / "state.bin") == before && !before.empty()
                       ? "first checkpoint unchanged"
                       : "first checkpoint changed";
      boost::mpi::broadcast(c.world, c.r.note, 0);
      follow_up(c.r, [&] {
        dp.train_step(dp_data().batch(std::vector<std::size_t>{static_cast<std::size_t>(c.rank)}));
        ck.save(dp);
        return fingerprint(dp.model());
      });
    });
    remove_dir(c, dir);
  };
  in["checkpoint_resumed_with_another_lr"] = [](context& c) {
    const auto dir = shared_dir(c, "lr");
    two_checkpoints(c, dir);  // written with lr 0.1
    attempt(c.r, [&] {
      DP dp(FaultNet(), sgd(0.5), {}, c.world);
      parallax::io::Checkpointer ck(dir, {}, c.world);
      ck.resume_latest(dp);
      c.r.note = "lr after resume=" + std::to_string(dp.optimizer().learning_rate());
    });
    remove_dir(c, dir);
  };
  in["checkpoint_folder_of_another_run"] = [](context& c) {
    const auto dir = shared_dir(c, "other-run");
    two_checkpoints(c, dir);
    attempt(c.r, [&] {
      DP dp(FaultNet(), sgd(), {}, c.world);
      parallax::io::Checkpointer ck(dir, {.quiet = true}, c.world);
      ck.save(dp);  // without resuming first
    });
    remove_dir(c, dir);
  };
  in["checkpoint_load_missing"] = [](context& c) {
    const auto dir = shared_dir(c, "missing");
    attempt(c.r, [&] {
      DP dp(FaultNet(), sgd(), {}, c.world);
      parallax::io::Checkpointer ck(dir, {.quiet = true}, c.world);
      ck.load(dp, nullptr, (fs::path(dir) / "step-000000000042").string());
    });
    remove_dir(c, dir);
  };
  in["checkpoint_of_another_model"] = [](context& c) {
    const auto dir = shared_dir(c, "other-model");
    two_checkpoints(c, dir);
    attempt(c.r, [&] {
      DP dp(FaultNet(5), sgd(), {}, c.world);
      parallax::io::Checkpointer ck(dir, {.quiet = true}, c.world);
      ck.resume_latest(dp);
    });
    remove_dir(c, dir);
  };
  in["checkpoint_part_damaged_one_stage"] = [](context& c) {
    const auto dir = shared_dir(c, "part");
    std::string folder;
    {
      Chain net(chain_args(), sgd(), {.micro_batches = 2, .boundaries = cut(c.size)}, c.world);
      parallax::io::Checkpointer ck(dir, {.quiet = true}, c.world);
      ck.resume_latest(net);
      mp_step(net);
      folder = ck.save(net);
    }
    c.world.barrier();
    const auto b = cut(c.size);  // the last stage's part
    const auto part = "part-" + std::to_string(b[b.size() - 2]) + "-" + std::to_string(b.back()) + ".bin";
    if (c.rank == 0) fs::resize_file(fs::path(folder) / part, 20);
    c.world.barrier();
    Chain net(chain_args(), sgd(), {.micro_batches = 2, .boundaries = cut(c.size)}, c.world);
    parallax::io::Checkpointer ck(dir, {.quiet = true}, c.world);
    attempt(c.r, [&] { ck.load(net, nullptr, folder); });
    follow_up(c.r, [&] { return mp_step(net); });
    remove_dir(c, dir);
  };

  in["checkpoint_dir_is_a_file"] = [](context& c) {
    const auto dir = shared_dir(c, "file");
    if (c.rank == 0) std::ofstream(dir) << "not a folder\n";
    c.world.barrier();
    attempt(c.r, [&] { parallax::io::Checkpointer ck(dir, {}, c.world); });
    remove_dir(c, dir);
  };

  // --- 7. sizes --------------------------------------------------------------
  in["global_batch_larger_than_dataset"] = [](context& c) {
    DP dp(FaultNet(), sgd(), {}, c.world);
    attempt(c.r, [&] {
      auto sampler = dp.make_sampler(24, 100, {.seed = 1});
      dp.train_epoch(dp_data(), sampler);
    });
  };
  in["global_batch_smaller_than_ranks"] = [](context& c) {
    DP dp(FaultNet(), sgd(), {}, c.world);
    attempt(c.r, [&] { dp.make_sampler(24, static_cast<std::size_t>(c.size - 1), {.seed = 1}); });
  };
  in["dp_empty_batch_one_rank"] = [](context& c) {
    DP dp(FaultNet(), sgd(), {}, c.world);
    std::vector<std::size_t> rows{0, 1};
    if (c.rank == 1) rows.clear();
    attempt(c.r, [&] { dp.train_step(dp_data().batch(rows)); });
    follow_up(c.r, [&] {
      dp.train_step(dp_data().batch(std::vector<std::size_t>{0, 1}));
      return fingerprint(dp.model());
    });
  };
  in["mp_batch_smaller_than_micro_batches"] = [](context& c) {
    Chain net(chain_args(), sgd(), {.micro_batches = 4, .boundaries = cut(c.size)}, c.world);
    attempt(c.r, [&] { net.train_step(mp_data().batch(std::vector<std::size_t>{0, 1, 2})); });
    follow_up(c.r, [&] { return mp_step(net); });
  };
  in["sampler_huge_dataset"] = [](context& c) {
    DP dp(FaultNet(), sgd(), {}, c.world);
    attempt(c.r, [&] { dp.make_sampler(std::size_t{1} << 60, 8, {.seed = 1}); });
  };
  in["mp_huge_layer_one_stage"] = [](context& c) {
    attempt(c.r, [&] {
      // Layer 3 (the last stage's) cannot be allocated: 5 * 2^60 weights.
      Chain net(std::tuple{std::tuple{3, 5}, std::tuple{}, std::tuple{}, std::tuple{std::size_t{5}, std::size_t{1} << 60}},
                sgd(), {.micro_batches = 2, .boundaries = cut(c.size)}, c.world);
    });
  };
  return in;
}

}  // namespace

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  const auto all = inputs();
  const std::string name = argc > 1 ? argv[1] : "";
  if (name == "--list") {
    for (const auto& [n, f] : all) std::cout << n << '\n';
    return 0;
  }
  const auto it = all.find(name);
  if (it == all.end()) {
    std::cerr << "fault_case: no input named '" << name << "' (--list lists them)\n";
    return 2;
  }
  context c;
  it->second(c);
  print(c.r, c.rank);
  return 0;
}
