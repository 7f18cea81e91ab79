// SPDX-License-Identifier: BSL-1.0
// Compile-fail: a Residual whose body's output is not of its input's type
// (x + f(x) cannot be formed). The diagnostic must say so.

#include <parallax/nn/embedding.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/residual.hpp>

using namespace parallax::nn;

int main() {
#ifdef PARALLAX_EXPECT_OK
  Residual res{Linear<float, 3>(4, 4)};
  xt::xtensor<float, 3> x = xt::zeros<float>({1, 2, 4}), y;
#else
  Residual res{Embedding<float>(10, 4)};  // ids [B, S] -> [B, S, 4]
  xt::xtensor<std::int64_t, 2> x = xt::zeros<std::int64_t>({1, 2});
  xt::xtensor<float, 3> y;
#endif
  res.initialize(1, 0);
  res.forward(x, y);
  return y.size() > 0 ? 0 : 1;
}
