#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The trainable part LayerNorm and BatchNorm share: a per-feature gain
/// (PyTorch's `weight`, starting at 1) and bias (starting at 0), their
/// gradients and the accessors.

#include <parallax/detail/xtensor.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <tuple>

namespace parallax::nn::detail {

/// A gain and a bias of `width` values with gradients laid out alike. A
/// layer derives from it publicly, so its parameters(), gradients(), gain()
/// and bias() are these.
template <class T>
class GainAndBias {
 public:
  /// The gain, then the bias, each [width].
  auto parameters() { return std::tie(gain_, bias_); }
  auto parameters() const { return std::tie(gain_, bias_); }
  /// Gradients laid out like parameters().
  auto gradients() { return std::tie(gain_grad_, bias_grad_); }
  auto gradients() const { return std::tie(gain_grad_, bias_grad_); }

  /// The gain [width] (PyTorch's `weight`).
  xt::xtensor<T, 1>& gain() { return gain_; }
  const xt::xtensor<T, 1>& gain() const { return gain_; }
  /// The bias [width].
  xt::xtensor<T, 1>& bias() { return bias_; }
  const xt::xtensor<T, 1>& bias() const { return bias_; }

 protected:
  /// Gain 1, bias 0 and both gradients 0, each [width].
  explicit GainAndBias(std::size_t width) {
    const std::array<std::size_t, 1> shape{width};
    gain_ = xt::xtensor<T, 1>(shape, T(1));
    bias_ = xt::xtensor<T, 1>(shape, T(0));
    gain_grad_ = xt::xtensor<T, 1>(shape, T(0));
    bias_grad_ = xt::xtensor<T, 1>(shape, T(0));
  }
  /// Gain 1 and bias 0 again, as PyTorch initialises them.
  void reset_gain_and_bias() {
    std::fill(gain_.begin(), gain_.end(), T(1));
    std::fill(bias_.begin(), bias_.end(), T(0));
  }

  xt::xtensor<T, 1> gain_;
  xt::xtensor<T, 1> bias_;
  xt::xtensor<T, 1> gain_grad_;
  xt::xtensor<T, 1> bias_grad_;
};

}  // namespace parallax::nn::detail
