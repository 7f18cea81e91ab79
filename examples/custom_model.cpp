// custom_model: a model written from scratch (logistic regression on generated
// data) and trained with DataParallel on every rank of mpiexec.
//   mpiexec -n 2 build/examples/custom_model
#include <parallax/data/batch.hpp>
#include <parallax/data_parallel.hpp>
#include <parallax/optim/sgd.hpp>

#include <boost/mpi/environment.hpp>
#include <xtensor/xrandom.hpp>

#include <cmath>
#include <iostream>

using Samples = parallax::data::Batch<xt::xtensor<double, 2>, xt::xtensor<double, 1>>;

// p(y = 1 | x) = sigmoid(x . w + b); the loss is the mean cross-entropy.
struct LogisticRegression {
  using batch_type = Samples;  // what one step consumes; Batch has size()
  xt::xtensor<double, 1> w = xt::zeros<double>({2}), dw = w, b = xt::zeros<double>({1}), db = b;

  auto parameters() { return std::tie(w, b); }
  auto gradients() { return std::tie(dw, db); }

  double loss_and_gradient(const Samples& batch) {  // mean loss; sets the gradients
    dw.fill(0);
    db.fill(0);
    double loss = 0;
    const auto n = batch.size();
    for (std::size_t i = 0; i < n; ++i) {
      const double z = batch.inputs(i, 0) * w(0) + batch.inputs(i, 1) * w(1) + b(0);
      const double p = 1 / (1 + std::exp(-z)), y = batch.targets(i);
      loss -= y * std::log(p + 1e-12) + (1 - y) * std::log(1 - p + 1e-12);
      dw(0) += (p - y) * batch.inputs(i, 0) / n;
      dw(1) += (p - y) * batch.inputs(i, 1) / n;
      db(0) += (p - y) / n;
    }
    return loss / n;
  }
  std::size_t correct(const Samples& batch) const {  // optional: gives evaluate() an accuracy
    std::size_t c = 0;
    for (std::size_t i = 0; i < batch.size(); ++i)
      c += (batch.inputs(i, 0) * w(0) + batch.inputs(i, 1) * w(1) + b(0) > 0) == (batch.targets(i) > 0.5);
    return c;
  }
};
static_assert(parallax::Model<LogisticRegression>);

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  // The same 4000 points on every rank (same seed); label = 1 above the line x1 = 0.5 x0.
  xt::random::seed(42);
  xt::xtensor<double, 2> x = xt::random::randn<double>({4000, 2});
  xt::xtensor<double, 1> y = xt::cast<double>(xt::view(x, xt::all(), 1) > 0.5 * xt::view(x, xt::all(), 0));
  parallax::data::TensorDataset data(x, y);

  parallax::DataParallel trainer(LogisticRegression{}, parallax::optim::SGD<double>({.lr = 0.5}));
  auto sampler = trainer.make_sampler(data.size(), 64, {.seed = 1});
  for (int epoch = 0; epoch < 5; ++epoch) {
    const auto report = trainer.train_epoch(data, sampler);
    const auto result = trainer.evaluate(data);  // sharded over ranks, the same everywhere
    if (trainer.communicator().rank() == 0)
      std::cout << "epoch " << epoch << ": train loss " << report.loss << ", accuracy " << *result.accuracy << "\n";
  }
  return *trainer.evaluate(data).accuracy > 0.95 ? 0 : 1;
}
