// SPDX-License-Identifier: BSL-1.0
// Suite model_parallel: a p-stage pipeline equals the unsplit chain trained
// on one rank (docs/design.md invariant 2) for both schedules and several
// micro-batch counts; saved activations as promised; each rank holds only its
// layers; bad partitions and mismatched boundaries end with the same error on
// every rank.

#include "agreed.hpp"

#include <parallax/model_parallel.hpp>
#include <parallax/data/batch.hpp>
#include <parallax/nn/activation.hpp>
#include <parallax/nn/dropout.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/loss.hpp>
#include <parallax/nn/residual.hpp>
#include <parallax/nn/sequential.hpp>
#include <parallax/optim/adam.hpp>
#include <parallax/optim/sgd.hpp>
#include <parallax/training/trainer.hpp>

#include <doctest/doctest.h>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

using parallax::mpi::communicator;
using namespace parallax::nn;

namespace {

template <class T>
using Chain = parallax::ModelParallel<Linear<T>, Tanh<T>, Linear<T>, Sigmoid<T>, Linear<T>, Tanh<T>, Linear<T>,
                                      SoftmaxCrossEntropy<T>>;

template <class T>
auto chain_args() {
  return std::tuple{std::tuple{5, 7}, std::tuple{}, std::tuple{7, 6}, std::tuple{}, std::tuple{6, 4}, std::tuple{},
                    std::tuple{4, 3}, std::tuple{}};
}

template <class T>
auto serial_chain(std::uint64_t seed) {
  Sequential net{Linear<T>(5, 7), Tanh<T>{}, Linear<T>(7, 6), Sigmoid<T>{}, Linear<T>(6, 4), Tanh<T>{}, Linear<T>(4, 3),
                 SoftmaxCrossEntropy<T>{}};
  net.initialize(seed);
  return net;
}

template <class T>
parallax::data::Batch<xt::xtensor<T, 2>, xt::xtensor<std::int32_t, 1>> make_batch(std::size_t n, std::uint64_t seed) {
  parallax::detail::rng g(seed);
  parallax::data::Batch<xt::xtensor<T, 2>, xt::xtensor<std::int32_t, 1>> b;
  b.inputs = xt::zeros<T>({n, std::size_t(5)});
  b.targets = xt::zeros<std::int32_t>({n});
  for (auto& v : b.inputs) v = static_cast<T>(2 * g.uniform() - 1);
  for (auto& t : b.targets) t = static_cast<std::int32_t>(g.below(3));
  return b;
}

/// Max |pipeline - serial| over this rank's layers; the serial chain's layer
/// I is compared with the pipeline's layer I when this rank holds it.
template <class T, class MP, class Net>
double max_difference(MP& mp, Net& net) {
  double worst = 0;
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    (
        [&] {
          if (auto* mine = mp.template layer<I>()) {
            if constexpr (parallax::HasLayerParameters<std::remove_pointer_t<decltype(mine)>>) {
              std::vector<T> a, b;
              parallax::detail::for_each_tensor(mine->parameters(), [&](auto& t) { a.insert(a.end(), t.begin(), t.end()); });
              parallax::detail::for_each_tensor(net.template layer<I>().parameters(),
                                                [&](auto& t) { b.insert(b.end(), t.begin(), t.end()); });
              REQUIRE(a.size() == b.size());
              for (std::size_t k = 0; k < a.size(); ++k)
                worst = std::max(worst, std::abs(static_cast<double>(a[k]) - static_cast<double>(b[k])));
            }
          }
        }(),
        ...);
  }(std::make_index_sequence<MP::layer_count>{});
  return worst;
}

template <class T>
std::vector<std::span<T>> spans(auto&& list) {
  std::vector<std::span<T>> out;
  parallax::detail::for_each_tensor(list, [&](auto& t) { out.emplace_back(t.data(), t.size()); });
  return out;
}

template <class T>
std::vector<std::span<const T>> const_spans(auto&& list) {
  std::vector<std::span<const T>> out;
  parallax::detail::for_each_tensor(list, [&](auto& t) { out.emplace_back(t.data(), t.size()); });
  return out;
}

/// Serial reference: the Sequential chain, same optimizer, same batches.
template <class T, class Net>
void train_serial(Net& net, const parallax::optim::Optimizer<T>& optimizer, std::size_t steps, std::size_t batch,
                  double clip = 0) {
  auto opt = optimizer.clone();
  for (std::size_t s = 0; s < steps; ++s) {
    net.loss_and_gradient(make_batch<T>(batch, 100 + s));
    if (clip > 0) parallax::optim::clip_by_global_norm<T>(spans<T>(net.gradients()), clip);
    opt->step(spans<T>(net.parameters()), const_spans<T>(net.gradients()));
  }
}

template <class T>
double run_equivalence(const communicator& world, const parallax::optim::Optimizer<T>& opt,
                       parallax::pipeline::schedule_kind kind, std::size_t m, bool recompute, std::size_t batch,
                       double clip = 0) {
  Chain<T> mp(chain_args<T>(), opt,
              {.micro_batches = m, .schedule = kind, .recompute = recompute, .seed = 42, .clip_norm = clip}, world);
  auto net = serial_chain<T>(42);
  double last_loss = 0;
  for (std::size_t s = 0; s < 10; ++s) last_loss = mp.train_step(make_batch<T>(batch, 100 + s));
  train_serial(net, opt, 10, batch, clip);
  // The loss is the same on every rank and equals the serial one.
  double root = last_loss;
  parallax::mpi::broadcast(world, root, world.size() - 1);
  CHECK(last_loss == root);
  CHECK(std::isfinite(last_loss));
  double worst = max_difference<T>(mp, net), all = 0;
  parallax::mpi::all_reduce(world, worst, all, parallax::mpi::maximum<double>());
  return all;
}

}  // namespace

TEST_CASE("ModelParallel: p stages equal the serial chain in double (every schedule, m = 1, 2, 4, 8)") {
  communicator world;
  parallax::optim::SGD<double> sgd({.lr = 0.5, .momentum = 0.9});
  parallax::optim::Adam<double> adam({.lr = 0.01});
  for (auto kind : {parallax::pipeline::schedule_kind::gpipe, parallax::pipeline::schedule_kind::one_f_one_b,
                    parallax::pipeline::schedule_kind::zero_bubble})
    for (std::size_t m : {1, 2, 4, 8})
      for (bool recompute : {false, true}) {
        const double d1 = run_equivalence<double>(world, sgd, kind, m, recompute, 16);
        CHECK_MESSAGE(d1 <= 1e-12, "SGD m=" << m << " recompute=" << recompute << ": " << d1);
        // 13 samples: micro-batches of unequal size, the loss still the exact mean.
        const double d2 = run_equivalence<double>(world, adam, kind, m, recompute, 13);
        CHECK_MESSAGE(d2 <= 1e-12, "Adam, batch 13, m=" << m << " recompute=" << recompute << ": " << d2);
      }
}

namespace {
/// Every parameter element of this rank's layers, in order.
template <class T = double, class MP>
std::vector<T> local_parameters(MP& mp) {
  std::vector<T> out;
  mp.for_each_local_layer([&](std::size_t, auto& layer) {
    if constexpr (parallax::HasLayerParameters<std::remove_cvref_t<decltype(layer)>>)
      parallax::detail::for_each_tensor(layer.parameters(), [&](auto& t) { out.insert(out.end(), t.begin(), t.end()); });
  });
  return out;
}
}  // namespace

TEST_CASE("ModelParallel: zero bubble gives 1F1B's bits (double and float, m = 1, 3, 8, batch 13)") {
  // Its backward_weight's run in the order 1F1B runs its backwards: the
  // same sums in the same order.
  communicator world;
  const auto check = [&]<class T>(T, const parallax::optim::Optimizer<T>& opt, std::size_t m) {
    CAPTURE(m);
    Chain<T> f(chain_args<T>(), opt, {.micro_batches = m, .schedule = parallax::pipeline::schedule_kind::one_f_one_b, .seed = 9}, world);
    Chain<T> z(chain_args<T>(), opt, {.micro_batches = m, .schedule = parallax::pipeline::schedule_kind::zero_bubble, .seed = 9}, world);
    for (std::size_t step = 0; step < 5; ++step) {
      const auto batch = make_batch<T>(13, 300 + step);
      CHECK(f.train_step(batch) == z.train_step(batch));
    }
    const auto a = local_parameters<T>(f);
    const auto b = local_parameters<T>(z);
    REQUIRE(a.size() == b.size());
    CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
    // The run moved the parameters: the comparison is not between two starts.
    Chain<T> start(chain_args<T>(), opt, {.micro_batches = m, .seed = 9}, world);
    const auto c = local_parameters<T>(start);
    if (!a.empty()) CHECK(std::memcmp(a.data(), c.data(), a.size() * sizeof(T)) != 0);
  };
  for (std::size_t m : {1, 3, 8}) {
    check(double{}, parallax::optim::Adam<double>({.lr = 0.01}), m);
    check(float{}, parallax::optim::SGD<float>({.lr = 0.3, .momentum = 0.9}), m);
  }
}

TEST_CASE("ModelParallel: zero bubble holds at most one micro-batch more than 1F1B, and says what it saved") {
  communicator world;
  const std::size_t p = static_cast<std::size_t>(world.size());
  const std::size_t s = static_cast<std::size_t>(world.rank());
  for (std::size_t m : {1, 2, 4, 8}) {
    CAPTURE(m);
    Chain<double> z(chain_args<double>(), parallax::optim::SGD<double>(),
                    {.micro_batches = m, .schedule = parallax::pipeline::schedule_kind::zero_bubble}, world);
    Chain<double> f(chain_args<double>(), parallax::optim::SGD<double>(),
                    {.micro_batches = m, .schedule = parallax::pipeline::schedule_kind::one_f_one_b}, world);
    const auto batch = make_batch<double>(16, 3);
    z.train_step(batch);
    f.train_step(batch);
    const auto expected = parallax::pipeline::simulate(parallax::pipeline::zero_bubble(p, m), m).peak_in_flight[s];
    CHECK(z.stats().peak_micro_batches == expected);
    CHECK(z.stats().peak_micro_batches <= std::min(p - s + 1, m));
    // Between its two halves a micro-batch also keeps its output gradients.
    CHECK(z.stats().peak_saved_bytes >= f.stats().peak_saved_bytes);
  }
}

TEST_CASE("ModelParallel: a chain of Residual layers equals the serial chain in double, each Residual one layer") {
  communicator world;
  using Block = Residual<Linear<double>, Tanh<double>, Linear<double>>;
  using Net = parallax::ModelParallel<Linear<double>, Block, Residual<Linear<double>, Sigmoid<double>>, Linear<double>,
                                      SoftmaxCrossEntropy<double>>;
  static_assert(Net::layer_count == 4);
  const auto args = std::tuple{std::tuple{5, 6}, std::tuple{Linear<double>(6, 8), Tanh<double>{}, Linear<double>(8, 6)},
                               std::tuple{Linear<double>(6, 6), Sigmoid<double>{}}, std::tuple{6, 3}};
  CHECK(Block::parameter_count(Linear<double>(6, 8), Tanh<double>{}, Linear<double>(8, 6)) == 6 * 8 + 8 + 8 * 6 + 6);
  parallax::optim::Adam<double> adam({.lr = 0.01});
  for (auto kind : {parallax::pipeline::schedule_kind::gpipe, parallax::pipeline::schedule_kind::one_f_one_b,
                    parallax::pipeline::schedule_kind::zero_bubble})
    for (bool recompute : {false, true}) {
      CAPTURE(recompute);
      Net mp(args, adam, {.micro_batches = 4, .schedule = kind, .recompute = recompute, .seed = 42}, world);
      Sequential net{Linear<double>(5, 6), Block(Linear<double>(6, 8), Tanh<double>{}, Linear<double>(8, 6)),
                     Residual{Linear<double>(6, 6), Sigmoid<double>{}}, Linear<double>(6, 3), SoftmaxCrossEntropy<double>{}};
      net.initialize(42);
      for (std::size_t s = 0; s < 6; ++s) mp.train_step(make_batch<double>(13, 100 + s));
      train_serial<double>(net, adam, 6, 13);
      CHECK(max_difference<double>(mp, net) <= 1e-12);
    }
}

TEST_CASE("ModelParallel: float within 1e-5 relative, and clipping by the global norm across stages") {
  communicator world;
  parallax::optim::SGD<float> sgd({.lr = 0.5, .momentum = 0.9});
  for (std::size_t m : {1, 4}) {
    const double d = run_equivalence<float>(world, sgd, parallax::pipeline::schedule_kind::one_f_one_b, m, false, 16);
    CHECK_MESSAGE(d <= 1e-5, "float m=" << m << ": " << d);
  }
  parallax::optim::SGD<double> plain({.lr = 2.0});
  const double clipped = run_equivalence<double>(world, plain, parallax::pipeline::schedule_kind::gpipe, 4, false, 16, 0.05);
  CHECK(clipped <= 1e-12);
  // The clip is active: without it the run ends elsewhere.
  const double unclipped = run_equivalence<double>(world, plain, parallax::pipeline::schedule_kind::gpipe, 4, false, 16, 0);
  CHECK(unclipped <= 1e-12);
  Chain<double> a(chain_args<double>(), plain, {.micro_batches = 4, .seed = 42, .clip_norm = 0.05}, world);
  Chain<double> b(chain_args<double>(), plain, {.micro_batches = 4, .seed = 42}, world);
  for (std::size_t s = 0; s < 3; ++s) {
    a.train_step(make_batch<double>(16, 100 + s));
    b.train_step(make_batch<double>(16, 100 + s));
  }
  auto net = serial_chain<double>(42);
  double da = max_difference<double>(a, net), db = max_difference<double>(b, net), ta = 0, tb = 0;
  parallax::mpi::all_reduce(world, da, ta, parallax::mpi::maximum<double>());
  parallax::mpi::all_reduce(world, db, tb, parallax::mpi::maximum<double>());
  CHECK(std::abs(ta - tb) > 1e-6);
}

TEST_CASE("ModelParallel: training moves the weights and lowers the loss") {
  communicator world;
  Chain<double> mp(chain_args<double>(), parallax::optim::Adam<double>({.lr = 0.02}), {.micro_batches = 4, .seed = 1}, world);
  const auto batch = make_batch<double>(32, 7);
  const double first = mp.train_step(batch);
  double last = first;
  for (int s = 0; s < 200; ++s) last = mp.train_step(batch);
  CHECK(last < 0.5 * first);
}

TEST_CASE("ModelParallel: 1F1B holds at most p micro-batches of activations, GPipe holds m") {
  communicator world;
  const std::size_t p = static_cast<std::size_t>(world.size());
  const std::size_t s = static_cast<std::size_t>(world.rank());
  for (std::size_t m : {1, 2, 4, 8}) {
    Chain<double> f(chain_args<double>(), parallax::optim::SGD<double>(),
                    {.micro_batches = m, .schedule = parallax::pipeline::schedule_kind::one_f_one_b}, world);
    Chain<double> g(chain_args<double>(), parallax::optim::SGD<double>(),
                    {.micro_batches = m, .schedule = parallax::pipeline::schedule_kind::gpipe}, world);
    Chain<double> r(chain_args<double>(), parallax::optim::SGD<double>(),
                    {.micro_batches = m, .schedule = parallax::pipeline::schedule_kind::gpipe, .recompute = true}, world);
    const auto batch = make_batch<double>(16, 3);
    f.train_step(batch);
    g.train_step(batch);
    r.train_step(batch);
    CHECK(f.stats().peak_micro_batches == std::min(p - s, m));
    CHECK(f.stats().peak_micro_batches <= p);
    CHECK(g.stats().peak_micro_batches == m);
    CHECK(f.stats().peak_saved_bytes <= g.stats().peak_saved_bytes);
    if (m > p) CHECK(f.stats().peak_saved_bytes < g.stats().peak_saved_bytes);
    // Recomputation keeps only stage inputs and outputs.
    if (f.end_layer() - f.first_layer() > 1) CHECK(r.stats().peak_saved_bytes < g.stats().peak_saved_bytes);
  }
}

TEST_CASE("ModelParallel: each rank builds only its own layers") {
  communicator world;
  Chain<double> mp(chain_args<double>(), parallax::optim::SGD<double>(), {}, world);
  std::size_t held = 0;
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    std::vector<bool> present = {(mp.template layer<I>() != nullptr)...};
    for (std::size_t i = 0; i < present.size(); ++i) {
      CHECK(present[i] == (i >= mp.first_layer() && i < mp.end_layer()));
      held += present[i];
    }
  }(std::make_index_sequence<Chain<double>::layer_count>{});
  CHECK(held == mp.end_layer() - mp.first_layer());
  // Parameters: each rank holds exactly its layers' share; together, the whole chain.
  const std::size_t counts[] = {5 * 7 + 7, 0, 7 * 6 + 6, 0, 6 * 4 + 4, 0, 4 * 3 + 3};
  std::size_t mine = 0;
  for (std::size_t i = mp.first_layer(); i < mp.end_layer(); ++i) mine += counts[i];
  CHECK(mp.stats().local_parameters == mine);
  std::size_t total = 0, local = mp.stats().local_parameters;
  parallax::mpi::all_reduce(world, local, total, std::plus<std::size_t>());
  CHECK(total == 42 + 48 + 28 + 15);
  // The default partition balances parameter counts.
  const std::vector<double> costs(std::begin(counts), std::end(counts));
  CHECK(mp.boundaries() == parallax::pipeline::balanced_boundaries(costs, static_cast<std::size_t>(world.size())));
}

TEST_CASE("ModelParallel: predict and evaluate through the pipeline equal the serial chain") {
  communicator world;
  Chain<double> mp(chain_args<double>(), parallax::optim::SGD<double>({.lr = 0.3}), {.micro_batches = 3, .seed = 9}, world);
  auto net = serial_chain<double>(9);
  for (std::size_t s = 0; s < 3; ++s) mp.train_step(make_batch<double>(12, 100 + s));
  train_serial(net, parallax::optim::SGD<double>({.lr = 0.3}), 3, 12);
  const auto probe = make_batch<double>(10, 77);
  const auto out = mp.predict(probe.inputs);
  const auto expected = net.predict(probe.inputs);
  REQUIRE(out.shape() == expected.shape());
  CHECK(xt::amax(xt::abs(out - expected))() <= 1e-12);
  // evaluate: 50 samples in batches of 16 (a short last batch).
  const auto data = make_batch<double>(50, 5);
  parallax::data::TensorDataset<xt::xtensor<double, 2>, xt::xtensor<std::int32_t, 1>> ds(data.inputs, data.targets);
  const auto result = mp.evaluate(ds, 16);
  CHECK(result.samples == 50);
  CHECK(result.loss == doctest::Approx(net.loss(data)).epsilon(1e-12));
  REQUIRE(result.accuracy.has_value());
  CHECK(*result.accuracy == doctest::Approx(static_cast<double>(net.correct(data)) / 50.0));
}

namespace {
/// The identity, with faults to switch on (one stage's failure): forward
/// throws when `fail` or at its `throw_at`-th call (0-based); `nan_forward`
/// and `nan_backward` write a NaN into its output or its input gradient.
/// output_shape() keeps the shape pass from calling forward.
struct FaultLayer {
  using input_type = xt::xtensor<double, 2>;
  using output_type = xt::xtensor<double, 2>;
  bool fail = false;
  int throw_at = -1;
  int calls = 0;
  bool nan_forward = false;
  bool nan_backward = false;
  void initialize(std::uint64_t, std::size_t) {}
  std::vector<std::size_t> output_shape(const std::vector<std::size_t>& in) const { return in; }
  void forward(const input_type& x, output_type& y) {
    if (fail || calls++ == throw_at) throw std::runtime_error("FaultLayer: deliberate failure");
    y = x;
    if (nan_forward) y(0, 0) = std::numeric_limits<double>::quiet_NaN();
  }
  void backward(const input_type&, const output_type&, const output_type& dy, input_type& dx) {
    dx = dy;
    if (nan_backward) dx(0, 0) = std::numeric_limits<double>::quiet_NaN();
  }
  static std::size_t parameter_count() { return 0; }
};
}  // namespace

TEST_CASE("ModelParallel: bad partitions are one error on every rank") {
  communicator world;
  const int p = world.size();
  using Small = parallax::ModelParallel<Linear<double>, SoftmaxCrossEntropy<double>>;
  if (p > 1) {
    CHECK(agreed_error(world, [&] { Small mp(std::make_tuple(std::make_tuple(5, 3)), parallax::optim::SGD<double>(), {}, world); })
              .find("more stages than layers") != std::string::npos);
  }
  parallax::pipeline::boundaries empty_stage;  // 0, 0, ..., 7: stage 0 empty
  for (int s = 0; s < p; ++s) empty_stage.push_back(0);
  empty_stage.push_back(7);
  if (p > 1)
    CHECK(agreed_error(world, [&] {
            Chain<double> mp(chain_args<double>(), parallax::optim::SGD<double>(), {.boundaries = empty_stage}, world);
          }).find("stage 0 is empty") != std::string::npos);
  CHECK(agreed_error(world, [&] {
          Chain<double> mp(chain_args<double>(), parallax::optim::SGD<double>(), {.micro_batches = 0}, world);
        }).find("micro_batches must be at least 1") != std::string::npos);
  // Ranks that disagree on the partition.
  if (p > 1) {
    parallax::pipeline::boundaries mine = {0};
    for (int s = 1; s < p; ++s) mine.push_back(static_cast<std::size_t>(s));
    mine.push_back(7);
    if (world.rank() == 0) mine[static_cast<std::size_t>(p) - 1] = 6;  // valid, but not what the others use
    CHECK(agreed_error(world, [&] {
            Chain<double> mp(chain_args<double>(), parallax::optim::SGD<double>(), {.boundaries = mine}, world);
          }).find("the partition") != std::string::npos);
  }
}

TEST_CASE("ModelParallel: a mismatched stage boundary is one error on every rank, naming both layers") {
  communicator world;
  const int p = world.size();
  // Layer 2 expects 8 features, layer 0 makes 7.
  using Broken = parallax::ModelParallel<Linear<double>, Tanh<double>, Linear<double>, Tanh<double>, Linear<double>,
                                         SoftmaxCrossEntropy<double>>;
  const parallax::pipeline::boundaries cuts[] = {{0, 5}, {0, 2, 5}, {0, 2, 3, 5}, {0, 1, 2, 3, 5}};
  Broken mp(std::tuple{std::tuple{5, 7}, std::tuple{}, std::tuple{8, 3}, std::tuple{}, std::tuple{3, 3}, std::tuple{}},
            parallax::optim::SGD<double>(), {.micro_batches = 2, .boundaries = cuts[p - 1]}, world);
  const auto message = agreed_error(world, [&] { mp.train_step(make_batch<double>(16, 1)); });
  CHECK(message.find("layer 2 Linear(8 -> 3), which cannot take the output of layer 1 Tanh") != std::string::npos);
  CHECK(message.find("of shape (16, 7)") != std::string::npos);
  const std::string stage = p == 4 ? "stage 2" : "stage 1";
  if (p > 1) CHECK(message.find(stage + " begins with layer 2") != std::string::npos);
}

TEST_CASE("ModelParallel: bad batches and a failing layer are one error on every rank") {
  communicator world;
  const int p = world.size();
  Chain<double> mp(chain_args<double>(), parallax::optim::SGD<double>(), {.micro_batches = 4}, world);
  CHECK(agreed_error(world, [&] { mp.train_step(make_batch<double>(3, 1)); })
            .find("a batch of 3 samples cannot be cut into 4 micro-batches") != std::string::npos);
  auto mismatched = make_batch<double>(8, 1);
  mismatched.targets = xt::zeros<std::int32_t>({std::size_t(7)});
  CHECK(agreed_error(world, [&] { mp.train_step(mismatched); }).find("8 inputs but 7 targets") != std::string::npos);
  // A layer that throws on the last stage, mid-schedule.
  using WithFaultLayer = parallax::ModelParallel<Linear<double>, Tanh<double>, Linear<double>, FaultLayer, Linear<double>,
                                             SoftmaxCrossEntropy<double>>;
  parallax::pipeline::boundaries cut = {0};
  for (int s = 1; s < p; ++s) cut.push_back(static_cast<std::size_t>(s));
  cut.push_back(5);
  WithFaultLayer wf(std::tuple{std::tuple{5, 7}, std::tuple{}, std::tuple{7, 4}, std::tuple{}, std::tuple{4, 3}, std::tuple{}},
                parallax::optim::SGD<double>(), {.micro_batches = 2, .boundaries = cut}, world);
  if (auto* f = wf.layer<3>()) f->fail = true;
  const auto message = agreed_error(world, [&] { wf.train_step(make_batch<double>(8, 1)); });
  CHECK(message.find("FaultLayer: deliberate failure") != std::string::npos);
  // It recovers: the next step works.
  if (auto* f = wf.layer<3>()) f->fail = false;
  CHECK(std::isfinite(wf.train_step(make_batch<double>(8, 1))));
}

TEST_CASE("ModelParallel: profiled boundaries are valid and the same on every rank") {
  communicator world;
  const auto sample = make_batch<double>(32, 4);
  const auto b = Chain<double>::profile_boundaries(chain_args<double>(), sample.inputs, {}, world);
  CHECK_NOTHROW(parallax::pipeline::check_boundaries(b, 7, static_cast<std::size_t>(world.size())));
  std::vector<std::size_t> root = b;
  parallax::mpi::broadcast(world, root, 0);
  CHECK(root == b);
  Chain<double> mp(chain_args<double>(), parallax::optim::SGD<double>(), {.boundaries = b}, world);
  CHECK(std::isfinite(mp.train_step(sample)));
}

TEST_CASE("ModelParallel: ranks that pass different batches get one clear error") {
  communicator world;
  if (world.size() == 1) return;
  Chain<double> mp(chain_args<double>(), parallax::optim::SGD<double>(), {.micro_batches = 2}, world);
  const auto message = agreed_error(world, [&] { mp.train_step(make_batch<double>(8, 100 + world.rank())); });
  CHECK(message.find("the ranks passed different batches") != std::string::npos);
  CHECK(std::isfinite(mp.train_step(make_batch<double>(8, 1))));  // the same batch everywhere: fine
}

TEST_CASE("ModelParallel: predict and evaluate take fewer rows than micro-batches") {
  communicator world;
  Chain<double> mp(chain_args<double>(), parallax::optim::SGD<double>(), {.micro_batches = 8, .seed = 4}, world);
  auto net = serial_chain<double>(4);
  const auto one = make_batch<double>(1, 3);
  const auto out = mp.predict(one.inputs);
  CHECK(out.shape() == std::array<std::size_t, 2>{1, 3});
  CHECK(xt::amax(xt::abs(out - net.predict(one.inputs)))() <= 1e-12);
  const auto data = make_batch<double>(5, 6);
  parallax::data::TensorDataset<xt::xtensor<double, 2>, xt::xtensor<std::int32_t, 1>> ds(data.inputs, data.targets);
  const auto result = mp.evaluate(ds, 3);  // batches of 3 and 2 rows, 8 micro-batches
  CHECK(result.samples == 5);
  CHECK(result.loss == doctest::Approx(net.loss(data)).epsilon(1e-12));
}

// --- the training core: train_epoch, the non-finite policy, evaluation's guard ---

namespace {

using Dataset = parallax::data::TensorDataset<xt::xtensor<double, 2>, xt::xtensor<std::int32_t, 1>>;

Dataset make_dataset(std::size_t n, std::uint64_t seed) {
  auto b = make_batch<double>(n, seed);
  return Dataset(std::move(b.inputs), std::move(b.targets));
}

using WithPoison = parallax::ModelParallel<Linear<double>, Tanh<double>, Linear<double>, FaultLayer, Linear<double>,
                                           SoftmaxCrossEntropy<double>>;

/// Stage s holds layer s and the last stage the rest, so layer 3 (FaultLayer)
/// is on stage min(3, p - 1); `o`'s boundaries are set here.
WithPoison poisoned_chain(const communicator& world, parallax::pipeline_options o) {
  o.boundaries = {0};
  for (int s = 1; s < world.size(); ++s) o.boundaries.push_back(static_cast<std::size_t>(s));
  o.boundaries.push_back(5);
  return WithPoison(std::tuple{std::tuple{5, 7}, std::tuple{}, std::tuple{7, 4}, std::tuple{}, std::tuple{4, 3},
                               std::tuple{}},
                    parallax::optim::SGD<double>({.lr = 0.1}), std::move(o), world);
}

/// A dataset whose batch() throws on rank `rank` (every rank: -1) for any
/// batch that holds a sample past the first `readable`.
struct BreakingDataset {
  const Dataset* data;
  int rank = -1;
  std::size_t readable = 1;
  std::size_t size() const { return data->size(); }
  Dataset::batch_type batch(std::span<const std::size_t> indices) const {
    const bool here = rank < 0 || communicator().rank() == rank;
    if (here && std::ranges::any_of(indices, [&](std::size_t i) { return i >= readable; }))
      throw std::runtime_error("BreakingDataset: unreadable samples");
    return data->batch(indices);
  }
};

}  // namespace

static_assert(parallax::training::Trainer<Chain<double>>);

TEST_CASE("ModelParallel: train_epoch equals the hand-written pipeline loop it replaces, bitwise") {
  communicator world;
  const auto data = make_dataset(44, 5);  // 6 steps of 8 per epoch, the last one padded
  parallax::optim::SGD<double> sgd({.lr = 0.3, .momentum = 0.9});
  std::size_t calls = 0;
  Chain<double> by_hand(chain_args<double>(), sgd, {.micro_batches = 4, .seed = 3}, world);
  Chain<double> by_loop(chain_args<double>(), sgd,
                        {.micro_batches = 4, .seed = 3, .on_step = [&](const parallax::step_report&) { ++calls; }},
                        world);
  // The loop the examples used to write: one shard that holds every sample of a step.
  parallax::data::DistributedSampler plan(data.size(), 8, 1, 0, {.seed = 9});
  std::vector<double> hand_losses;
  Dataset::batch_type batch;
  for (int epoch = 0; epoch < 2; ++epoch) {
    double sum = 0;
    std::size_t samples = 0;
    for (std::size_t s = plan.position(); s < plan.steps_per_epoch(); ++s) {
      data.batch_into(plan.global_indices(s), batch);
      sum += by_hand.train_step(batch) * 8;
      samples += 8;
      plan.set_position(s + 1);
    }
    plan.next_epoch();
    hand_losses.push_back(sum / static_cast<double>(samples));
  }
  auto sampler = by_loop.make_sampler(data.size(), 8, {.seed = 9});
  for (int epoch = 0; epoch < 2; ++epoch) {
    const auto report = by_loop.train_epoch(data, sampler);
    CHECK(report.steps == 6);
    CHECK(report.samples == 48);
    CHECK(report.loss == hand_losses[static_cast<std::size_t>(epoch)]);
  }
  CHECK(sampler.epoch() == 2);
  CHECK(by_loop.optimizer().steps() == 12);
  CHECK(local_parameters(by_loop) == local_parameters(by_hand));
  CHECK(calls == (world.rank() == 0 ? 12u : 0u));
  // A sampler of another shape is one error on every rank.
  parallax::data::DistributedSampler sharded(data.size(), 8, 2, 0);
  CHECK(agreed_error(world, [&] { by_loop.train_epoch(data, sharded); })
            .find("the sampler was made for rank 0 of 2") != std::string::npos);
}

TEST_CASE("ModelParallel: a NaN gradient on one stage is an error on every rank, or a skipped step") {
  communicator world;
  const int p = world.size();
  const auto batch = make_batch<double>(8, 1);
  for (auto policy : {parallax::nonfinite_policy::error, parallax::nonfinite_policy::skip_step}) {
    auto net = poisoned_chain(world, {.micro_batches = 2, .on_nonfinite = policy});
    if (auto* poison = net.layer<3>()) poison->nan_backward = true;
    const auto before = local_parameters(net);
    if (policy == parallax::nonfinite_policy::error) {
      // Every stage before layer 3 sees a NaN too; the message names where it began.
      const auto message = agreed_error(world, [&] { net.train_step(batch); });
      CHECK(message.find("the input gradient of layer 3 on stage " + std::to_string(std::min(3, p - 1)) +
                         " is not finite at optimizer step 0") != std::string::npos);
      try {
        net.train_step(batch);
        FAIL("a second poisoned step did not throw");
      } catch (const parallax::error& e) {
        CHECK(e.kind() == parallax::error_kind::nonfinite);
      }
    } else {
      CHECK(std::isfinite(net.train_step(batch)));
      CHECK(net.skipped_steps() == 1);
    }
    CHECK(net.optimizer().steps() == 0);
    CHECK(local_parameters(net) == before);  // untouched
    if (auto* poison = net.layer<3>()) poison->nan_backward = false;
    net.train_step(batch);
    CHECK(net.optimizer().steps() == 1);
  }
}

TEST_CASE("ModelParallel: a non-finite step names the layer output or input where the NaN appeared") {
  communicator world;
  const int p = world.size();
  for (auto kind : {parallax::pipeline::schedule_kind::one_f_one_b, parallax::pipeline::schedule_kind::zero_bubble})
  for (auto recompute : {false, true}) {
    auto net = poisoned_chain(world, {.micro_batches = 2, .schedule = kind, .recompute = recompute});
    const auto before = local_parameters(net);
    // A layer whose output is NaN: every later layer and every gradient is NaN too.
    if (auto* poison = net.layer<3>()) poison->nan_forward = true;
    auto message = agreed_error(world, [&] { net.train_step(make_batch<double>(8, 1)); });
    CHECK(message.find("ModelParallel::train_step(): the output of layer 3 on stage " +
                       std::to_string(std::min(3, p - 1)) + " is not finite at optimizer step 0") !=
          std::string::npos);
    if (auto* poison = net.layer<3>()) poison->nan_forward = false;
    // A NaN in the data: the input batch on stage 0.
    auto batch = make_batch<double>(8, 1);
    batch.inputs(5, 2) = std::numeric_limits<double>::quiet_NaN();
    message = agreed_error(world, [&] { net.train_step(batch); });
    CHECK(message.find("the input batch on stage 0 is not finite") != std::string::npos);
    CHECK(local_parameters(net) == before);
    CHECK(net.optimizer().steps() == 0);
    net.train_step(make_batch<double>(8, 1));  // the trainer is still usable
    CHECK(net.optimizer().steps() == 1);
  }
}

TEST_CASE("ModelParallel: evaluate restores training mode after a batch that throws") {
  communicator world;
  using WithDropout = parallax::ModelParallel<Linear<double>, Dropout<double>, Linear<double>, SoftmaxCrossEntropy<double>>;
  if (world.size() > 3) return;  // three layers: at most three stages
  const parallax::pipeline::boundaries cut = world.size() == 1   ? parallax::pipeline::boundaries{0, 3}
                                             : world.size() == 2 ? parallax::pipeline::boundaries{0, 2, 3}
                                                                 : parallax::pipeline::boundaries{0, 1, 2, 3};
  WithDropout net(std::tuple{std::tuple{5, 7}, std::tuple{0.5}, std::tuple{7, 3}, std::tuple{}},
                  parallax::optim::SGD<double>(), {.micro_batches = 2, .boundaries = cut}, world);
  const auto data = make_dataset(20, 2);
  const BreakingDataset broken{&data};
  std::string every;
  for (int r = 0; r < world.size(); ++r) every += (r ? ", " : "") + std::to_string(r);
  CHECK(agreed_error(world, [&] { net.evaluate(broken, 8); }) ==
        "the dataset's batch(): BreakingDataset: unreadable samples [rank" + std::string(world.size() > 1 ? "s " : " ") +
            every + "]");
  if (auto* dropout = net.layer<1>()) CHECK(dropout->training());
  CHECK(net.evaluate(data, 8).samples == 20);
  if (auto* dropout = net.layer<1>()) CHECK(dropout->training());
  // On one rank only, at the second batch: the others are not left waiting.
  const int last = world.size() - 1;
  const BreakingDataset one{&data, last, 8};
  CHECK(agreed_error(world, [&] { net.evaluate(one, 8); }) ==
        "the dataset's batch(): BreakingDataset: unreadable samples [rank " + std::to_string(last) + "]");
  if (auto* dropout = net.layer<1>()) CHECK(dropout->training());
}

TEST_CASE("ModelParallel: a batch that fails to load on one rank is one error on every rank; training goes on") {
  communicator world;
  const auto data = make_dataset(40, 5);  // 5 steps of 8
  const int last = world.size() - 1;
  Chain<double> net(chain_args<double>(), parallax::optim::SGD<double>({.lr = 0.1}), {.micro_batches = 2, .seed = 3},
                    world);
  auto sampler = net.make_sampler(data.size(), 8, {.shuffle = false});
  const BreakingDataset broken{&data, last, 24};  // steps 0-2 read, step 3 does not
  CHECK(agreed_error(world, [&] { net.train_epoch(broken, sampler); }) ==
        "the dataset's batch(): BreakingDataset: unreadable samples [rank " + std::to_string(last) + "]");
  CHECK(sampler.position() == 3);
  CHECK(net.optimizer().steps() == 3);
  const auto rest = net.train_epoch(data, sampler);
  CHECK(rest.steps == 2);
  CHECK(net.optimizer().steps() == 5);
  // A dataset smaller than the sampler's is refused before any step.
  const auto fewer = make_dataset(32, 5);
  CHECK(agreed_error(world, [&] { net.train_epoch(world.rank() == last ? fewer : data, sampler); }) ==
        "train_epoch(): the dataset holds 32 samples but the sampler was made for 40 [rank " + std::to_string(last) +
            "]");
}

TEST_CASE("ModelParallel: evaluate reports a layer that throws in any batch, not only the last") {
  communicator world;
  if (world.size() > 3) return;  // three layers: at most three stages
  using Tripped = parallax::ModelParallel<Linear<double>, FaultLayer, Linear<double>, SoftmaxCrossEntropy<double>>;
  Tripped net(std::tuple{std::tuple{5, 7}, std::tuple{}, std::tuple{7, 3}, std::tuple{}}, parallax::optim::SGD<double>(),
              {.micro_batches = 2}, world);
  const auto data = make_dataset(20, 2);  // three batches of at most 8
  if (auto* wire = net.layer<1>()) wire->throw_at = 0;  // the first micro-batch of the first batch
  const auto message = agreed_error(world, [&] { net.evaluate(data, 8); });
  CHECK(message.find("FaultLayer: deliberate failure") != std::string::npos);
  CHECK(net.evaluate(data, 8).samples == 20);
}

namespace {

/// y = a x with one trainable scalar and no static parameter_count: a layer
/// the partition cannot weigh.
struct Scale {
  using input_type = xt::xtensor<double, 2>;
  using output_type = xt::xtensor<double, 2>;
  xt::xtensor<double, 1> a = xt::ones<double>({1}), da = xt::zeros<double>({1});
  void initialize(std::uint64_t, std::size_t) { a(0) = 1.5; }
  void forward(const input_type& x, output_type& y) { y = a(0) * x; }
  void backward(const input_type& x, const output_type&, const output_type& dy, input_type& dx) {
    dx = a(0) * dy;
    da(0) += xt::sum(x * dy)();
  }
  auto parameters() { return std::tie(a); }
  auto gradients() { return std::tie(da); }
};

}  // namespace

TEST_CASE("ModelParallel: a layer without parameter_count builds with boundaries, and says so without") {
  communicator world;
  using Net = parallax::ModelParallel<Linear<double>, Scale, SoftmaxCrossEntropy<double>>;
  const auto args = std::tuple{std::tuple{5, 3}, std::tuple{}, std::tuple{}};
  parallax::optim::SGD<double> sgd({.lr = 0.1});
  if (world.size() <= 2) {
    parallax::pipeline_options with{.micro_batches = 2, .seed = 3};
    with.boundaries = world.size() == 1 ? parallax::pipeline::boundaries{0, 2} : parallax::pipeline::boundaries{0, 1, 2};
    Net mp(args, sgd, with, world);
    Sequential net{Linear<double>(5, 3), Scale{}, SoftmaxCrossEntropy<double>{}};
    net.initialize(3);
    for (std::size_t s = 0; s < 3; ++s) mp.train_step(make_batch<double>(8, 100 + s));
    train_serial<double>(net, sgd, 3, 8);
    CHECK(max_difference<double>(mp, net) <= 1e-12);
  }
  const auto e = agreed_error(world, [&] { Net(args, sgd, {.micro_batches = 2, .seed = 3}, world); });
  CHECK(e.find("layer 1 has no static parameter_count") != std::string::npos);
}
