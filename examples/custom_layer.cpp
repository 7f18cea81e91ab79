// custom_layer: a layer written by the user — Affine, y = x * a + b with one
// trainable scale and shift per feature — placed inside an nn::Sequential
// between reference layers and trained with DataParallel. The layer meets
// parallax::Layer (docs/layer.md) through plain members; its backward is
// checked against finite differences before training. It exits 1 when the
// check fails or the network classifies less than 90% right.
//   mpiexec -n 2 build/examples/custom_layer
#include "blobs.hpp"

#include <parallax/data_parallel.hpp>
#include <parallax/nn/activation.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/loss.hpp>
#include <parallax/nn/sequential.hpp>
#include <parallax/optim/sgd.hpp>

#include <boost/mpi/environment.hpp>

#include <cmath>
#include <iostream>
#include <tuple>

struct Affine {
  using input_type = xt::xtensor<double, 2>;  // [batch, features], batch first
  using output_type = xt::xtensor<double, 2>;
  xt::xtensor<double, 1> a, b, da, db;

  explicit Affine(std::size_t features)
      : a(xt::ones<double>({features})), b(xt::zeros<double>({features})), da(xt::zeros<double>({features})), db(da) {}
  void initialize(std::uint64_t, std::size_t) { a.fill(1), b.fill(0); }  // the same for any (seed, index)
  void forward(const input_type& x, output_type& y) {
    if (y.shape() != x.shape()) y.resize(x.shape());  // reuse y's buffer
    for (std::size_t i = 0; i < x.shape()[0]; ++i)
      for (std::size_t j = 0; j < x.shape()[1]; ++j) y(i, j) = x(i, j) * a(j) + b(j);
  }
  // Writes dx; ADDS this batch's gradients into da and db (the caller zeroes them once per step).
  void backward(const input_type& x, const output_type&, const output_type& dy, input_type& dx) {
    if (dx.shape() != x.shape()) dx.resize(x.shape());
    for (std::size_t i = 0; i < x.shape()[0]; ++i)
      for (std::size_t j = 0; j < x.shape()[1]; ++j) {
        dx(i, j) = dy(i, j) * a(j);
        da(j) += dy(i, j) * x(i, j);
        db(j) += dy(i, j);
      }
  }
  auto parameters() { return std::tie(a, b); }
  auto gradients() { return std::tie(da, db); }
};
static_assert(parallax::Layer<Affine>);

namespace nn = parallax::nn;
using Net =
    nn::Sequential<nn::Linear<double>, Affine, nn::Tanh<double>, nn::Linear<double>, nn::SoftmaxCrossEntropy<double>>;

// The largest difference between the chain's gradient of Affine's scale and
// central differences of its loss.
double gradient_error(Net net, const Net::batch_type& batch) {
  net.loss_and_gradient(batch);
  const xt::xtensor<double, 1> analytic = net.layer<1>().da;
  double worst = 0;
  for (std::size_t j = 0; j < analytic.size(); ++j) {
    auto& a = net.layer<1>().a(j);
    const double h = 1e-6, keep = a;
    a = keep + h;
    const double up = net.loss(batch);
    a = keep - h;
    const double down = net.loss(batch);
    a = keep;
    worst = std::max(worst, std::abs((up - down) / (2 * h) - analytic(j)));
  }
  return worst;
}

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  const auto train = blobs<double>(1200, 1);
  Net net(nn::Linear<double>(2, 8), Affine(8), nn::Tanh<double>{}, nn::Linear<double>(8, 3),
          nn::SoftmaxCrossEntropy<double>{});
  net.initialize(1);
  const std::vector<std::size_t> first = {0, 1, 2, 3, 4, 5, 6, 7};
  const double check = gradient_error(net, train.batch(first));

  parallax::DataParallel trainer(std::move(net), parallax::optim::SGD<double>({.lr = 0.1, .momentum = 0.9}));
  auto sampler = trainer.make_sampler(train.size(), 64, {.seed = 2});
  for (int epoch = 0; epoch < 5; ++epoch) trainer.train_epoch(train, sampler);
  const auto result = trainer.evaluate(train);  // the same on every rank
  if (trainer.communicator().rank() == 0)
    std::cout << "finite-difference error of Affine's gradient " << check << "; accuracy " << *result.accuracy
              << "; scales after training " << trainer.model().layer<1>().a << "\n";
  return check < 1e-7 && *result.accuracy > 0.9 ? 0 : 1;
}
