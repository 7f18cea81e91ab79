#pragma once
// SPDX-License-Identifier: BSL-1.0
/// PositionEmbedding<T>: a learned vector per position added to every
/// token's vector, GPT-2's position embedding (nanoGPT's wpe) as a layer
/// after the token Embedding; its table's length is the model's context.

#include <parallax/core/error.hpp>
#include <parallax/detail/random.hpp>
#include <parallax/detail/xtensor.hpp>
#include <parallax/nn/detail/checks.hpp>
#include <parallax/nn/detail/table.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <tuple>
#include <vector>

namespace parallax::nn {

/// y[b, s] = x[b, s] + P[s] for x, y [batch, sequence, width] and a table
/// P [context, width]: position s of every sample gets row s. A sequence
/// longer than the context is an error naming both. P starts N(0, 1), as
/// PyTorch's nn.Embedding(context, width) that GPT-2 uses for it.
/// @code
///   parallax::nn::Sequential lm{parallax::nn::Embedding<float>(vocabulary, 128),
///                               parallax::nn::PositionEmbedding<float>(64, 128),   // context 64
///                               ...};
/// @endcode
template <class T>
class PositionEmbedding : public detail::Table<T> {
 public:
  using value_type = T;
  using input_type = xt::xtensor<T, 3>;
  using output_type = xt::xtensor<T, 3>;
  /// backward(x, y, dy, dx) never reads y (BackwardIgnoresOutput).
  static constexpr bool backward_reads_output = false;

  /// A table of `context` positions (> 0) of `width` values (> 0); drawn as
  /// initialize(0, 0) gives it until initialize() is called.
  PositionEmbedding(std::size_t context, std::size_t width);

  /// Every value N(0, 1), drawn from (seed, index) only.
  void initialize(std::uint64_t seed, std::size_t index);

  /// y = x + P[0, sequence) per sample; y resized only when its shape
  /// differs from x's.
  void forward(const input_type& x, output_type& y) const;
  /// dx = dy (resized only when needed); adds sum_b dy[b, s] to row s of
  /// the table's gradient.
  void backward(const input_type& x, const output_type& y, const output_type& dy, input_type& dx);

  // parameters(), gradients() and weight() (the table [context, width],
  // row s position s's vector, the one parameter): from Table.

  /// The longest sequence the layer takes.
  std::size_t context() const { return context_; }
  std::size_t width() const { return width_; }

  /// "PositionEmbedding(64, 128)".
  std::string describe() const;
  /// The input shape itself; throws parallax::error for another rank or
  /// width, or a sequence longer than the context.
  std::vector<std::size_t> output_shape(const std::vector<std::size_t>& input_shape) const;
  /// context * width.
  static std::size_t parameter_count(std::size_t context, std::size_t width) { return context * width; }

 private:
  /// Throws parallax::error naming the layer when a [batch, sequence,
  /// width] shape does not fit it.
  template <class Shape>
  void check_shape(const Shape& shape, const std::string& where) const;

  std::size_t context_;
  std::size_t width_;
};

// ---------------------------------------------------------------------------

template <class T>
PositionEmbedding<T>::PositionEmbedding(std::size_t context, std::size_t width) : context_(context), width_(width) {
  PARALLAX_CHECK(context > 0 && width > 0, "PositionEmbedding: the context and the width must be positive, got " +
                                               std::to_string(context) + " and " + std::to_string(width));
  this->allocate(context, width, describe(), "table");
  initialize(0, 0);
}

template <class T>
void PositionEmbedding<T>::initialize(std::uint64_t seed, std::size_t index) {
  this->draw(seed, index);
}

template <class T>
template <class Shape>
void PositionEmbedding<T>::check_shape(const Shape& shape, const std::string& where) const {
  PARALLAX_CHECK(shape[2] == width_, where + ": input of shape " + parallax::detail::shape_string(shape) +
                                         " has width " + std::to_string(shape[2]) + ", expected " +
                                         std::to_string(width_));
  PARALLAX_CHECK(shape[1] <= context_, where + ": a sequence of " + std::to_string(shape[1]) +
                                           " tokens is longer than the context of " + std::to_string(context_) +
                                           " positions");
}

template <class T>
void PositionEmbedding<T>::forward(const input_type& x, output_type& y) const {
  check_shape(x.shape(), "PositionEmbedding::forward()");
  if (y.shape() != x.shape()) y.resize(x.shape());
  const std::size_t plane = x.shape()[1] * width_;
  for (std::size_t b = 0; b < x.shape()[0]; ++b) {
    const T* in = x.data() + b * plane;
    T* out = y.data() + b * plane;
    for (std::size_t i = 0; i < plane; ++i) out[i] = in[i] + this->weight_.data()[i];
  }
}

template <class T>
void PositionEmbedding<T>::backward(const input_type& x, const output_type& /*y*/, const output_type& dy,
                                    input_type& dx) {
  check_shape(x.shape(), "PositionEmbedding::backward()");
  detail::check_dy_shape(dy.shape(), x.shape(), "PositionEmbedding");
  if (dx.shape() != x.shape()) dx.resize(x.shape());
  std::copy(dy.begin(), dy.end(), dx.begin());
  const std::size_t plane = x.shape()[1] * width_;
  for (std::size_t b = 0; b < x.shape()[0]; ++b) {
    const T* g = dy.data() + b * plane;
    for (std::size_t i = 0; i < plane; ++i) this->weight_grad_.data()[i] += g[i];
  }
}

template <class T>
std::string PositionEmbedding<T>::describe() const {
  return "PositionEmbedding(" + std::to_string(context_) + ", " + std::to_string(width_) + ")";
}

template <class T>
std::vector<std::size_t> PositionEmbedding<T>::output_shape(const std::vector<std::size_t>& input_shape) const {
  detail::check_input_rank(input_shape, 3, describe());
  check_shape(input_shape, describe());
  return input_shape;
}

}  // namespace parallax::nn
