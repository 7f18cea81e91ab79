// SPDX-License-Identifier: BSL-1.0
// Compile-fail: the chain ends in a layer instead of a loss. The diagnostic
// must say that the last part is a Layer, not a Loss, with its index in the
// instantiation context (parallax::nn::detail::loss_part<2, ...>).

#include <parallax/nn/activation.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/loss.hpp>
#include <parallax/nn/sequential.hpp>

using namespace parallax::nn;

int main() {
#ifdef PARALLAX_EXPECT_OK
  Sequential net{Linear<float>(4, 8), ReLU<float>{}, Linear<float>(8, 2), SoftmaxCrossEntropy<float>{}};
#else
  Sequential net{Linear<float>(4, 8), ReLU<float>{}, Linear<float>(8, 2)};
#endif
  net.initialize(1);
  decltype(net)::batch_type batch;
  return net.loss_and_gradient(batch) > 0 ? 0 : 1;
}
