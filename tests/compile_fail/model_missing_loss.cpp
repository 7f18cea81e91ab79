// SPDX-License-Identifier: BSL-1.0
// Compile-fail: the model has no loss_and_gradient(batch).
// DataParallel names the missing piece in one readable error.
#include <parallax/data_parallel.hpp>
#include <parallax/optim/sgd.hpp>

#include <xtensor/xtensor.hpp>

#include <tuple>

struct Samples {
  std::size_t size() const { return 1; }
};

struct Net {
  using batch_type = Samples;
  xt::xtensor<double, 1> w, dw;
  auto parameters() { return std::tie(w); }
  auto gradients() { return std::tie(dw); }
#ifdef PARALLAX_EXPECT_OK
  double loss_and_gradient(const Samples&) { return 0.0; }
#endif
};

static_assert(sizeof(parallax::DataParallel<Net>) > 0);
