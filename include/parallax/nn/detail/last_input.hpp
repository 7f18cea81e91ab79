#pragma once
// SPDX-License-Identifier: BSL-1.0
/// last_input<Tensor>: what lets a layer whose backward runs its forward
/// again (Residual, the attention layers) reuse the scratch of the forward
/// just before instead, when that forward provably had the same input.

#include <algorithm>
#include <cstddef>
#include <cstring>

namespace parallax::nn::detail {

/// A copy of the input of a layer's last training-mode forward, valid until
/// the layer's next call. A layer calls forget() as each forward or backward
/// starts, remember(x) when a forward ends, and take(x) as backward starts:
/// true when nothing ran on the layer since that forward and x has the same
/// shape and the same bits, so the scratch that forward left equals what
/// running it again would compute (a layer's forward is a function of its
/// input, parameters, mode and step: the contract recomputation already
/// relies on). Several micro-batches in flight through one layer (a
/// pipeline schedule) take false and recompute, as without it. Costs a copy
/// of x per forward and a comparison per backward.
template <class Tensor>
class last_input {
 public:
  /// The next take() is false.
  void forget() { valid_ = false; }

  /// Copies x (its storage reused while the shape holds).
  void remember(const Tensor& x) {
    if (copy_.shape() != x.shape()) copy_.resize(x.shape());
    std::copy(x.data(), x.data() + x.size(), copy_.data());
    valid_ = true;
  }

  /// Whether x is the remembered input, bit for bit; forgets it either way.
  bool take(const Tensor& x) {
    const bool same = valid_ && copy_.shape() == x.shape() &&
                      (x.size() == 0 ||
                       std::memcmp(copy_.data(), x.data(), x.size() * sizeof(typename Tensor::value_type)) == 0);
    valid_ = false;
    return same;
  }

 private:
  Tensor copy_;
  bool valid_ = false;
};

}  // namespace parallax::nn::detail
