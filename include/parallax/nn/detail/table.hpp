#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The trainable part Embedding and PositionEmbedding share: a table of
/// rows [rows, width], its gradient, and the N(0, 1) draw of nn.Embedding.

#include <parallax/detail/random.hpp>
#include <parallax/detail/xtensor.hpp>
#include <parallax/nn/detail/checks.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <tuple>

namespace parallax::nn::detail {

/// A weight [rows, width] and its gradient, zero until draw(). A layer
/// derives from it publicly, so its parameters(), gradients() and weight()
/// are these.
template <class T>
class Table {
 public:
  /// The table, the one parameter.
  auto parameters() { return std::tie(weight_); }
  auto parameters() const { return std::tie(weight_); }
  /// Gradients laid out like parameters().
  auto gradients() { return std::tie(weight_grad_); }
  auto gradients() const { return std::tie(weight_grad_); }

  /// The table [rows, width]: row i is entry i's vector.
  xt::xtensor<T, 2>& weight() { return weight_; }
  const xt::xtensor<T, 2>& weight() const { return weight_; }

 protected:
  Table() = default;

  /// The table [rows, width] and its gradient, all zero; when they do not
  /// fit in memory, an error naming `layer` (its describe()), `what` the
  /// table is ("weight", "table") and the bytes asked for.
  void allocate(std::size_t rows, std::size_t width, const std::string& layer, const char* what) {
    const std::array<std::size_t, 2> shape{rows, width};
    try {
      weight_ = xt::xtensor<T, 2>(shape, T(0));
      weight_grad_ = xt::xtensor<T, 2>(shape, T(0));
    } catch (const std::exception&) {  // bad_alloc, or length_error past what a vector can hold
      throw_allocation_error(layer,
                             std::string("its ") + what + " [" + std::to_string(rows) + ", " + std::to_string(width) +
                                 "] and its gradient",
                             2.0 * static_cast<double>(rows) * static_cast<double>(width), sizeof(T));
    }
  }

  /// PyTorch's nn.Embedding draw: every value N(0, 1), from (seed, index) only.
  void draw(std::uint64_t seed, std::size_t index) {
    parallax::detail::rng g(parallax::detail::key(seed, index));
    for (auto& w : weight_) w = static_cast<T>(g.normal());
  }

  xt::xtensor<T, 2> weight_;
  xt::xtensor<T, 2> weight_grad_;
};

}  // namespace parallax::nn::detail
