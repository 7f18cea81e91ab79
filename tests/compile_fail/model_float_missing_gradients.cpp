// SPDX-License-Identifier: BSL-1.0
// Compile-fail: a float model without gradients(), built the way the README
// shows (class template argument deduction from the model and an optimizer):
// the error names the missing piece, not a deduction failure.
#include <parallax/data/batch.hpp>
#include <parallax/data_parallel.hpp>
#include <parallax/optim/sgd.hpp>

#include <xtensor/xtensor.hpp>

#include <boost/mpi/environment.hpp>

#include <tuple>

using Samples = parallax::data::Batch<xt::xtensor<float, 2>, xt::xtensor<float, 1>>;

struct Net {
  using batch_type = Samples;
  xt::xtensor<float, 1> w, dw;
  auto parameters() { return std::tie(w); }
#ifdef PARALLAX_EXPECT_OK
  auto gradients() { return std::tie(dw); }
#endif
  double loss_and_gradient(const Samples&) { return 0.0; }
};

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  parallax::DataParallel trainer(Net{}, parallax::optim::SGD<float>({.lr = 0.1}));
  (void)trainer;
}
