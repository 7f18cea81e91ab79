// SPDX-License-Identifier: BSL-1.0
// Compile-fail: layer 1 (Flatten, rank-2 output) feeds layer 2 (Conv2D, rank-4
// input). The diagnostic must say that the output_type of layer I does not
// match the input_type of layer I + 1, with I = 1 in its instantiation context
// (parallax::nn::detail::layer_pair<1, ...>).

#include <parallax/nn/activation.hpp>
#include <parallax/nn/conv2d.hpp>
#include <parallax/nn/flatten.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/loss.hpp>
#include <parallax/nn/maxpool2d.hpp>
#include <parallax/nn/sequential.hpp>

using namespace parallax::nn;

int main() {
#ifdef PARALLAX_EXPECT_OK
  Sequential net{Conv2D<float>(1, 4, 3), MaxPool2D<float>(2), Conv2D<float>(4, 8, 3), Flatten<float, 4>{},
                 Linear<float>(8 * 11 * 11, 10), SoftmaxCrossEntropy<float>{}};
#else
  Sequential net{Conv2D<float>(1, 4, 3), Flatten<float, 4>{}, Conv2D<float>(4, 8, 3), Flatten<float, 4>{},
                 Linear<float>(8 * 24 * 24, 10), SoftmaxCrossEntropy<float>{}};
#endif
  net.initialize(1);
  decltype(net)::batch_type batch;
  return net.loss_and_gradient(batch) > 0 ? 0 : 1;
}
