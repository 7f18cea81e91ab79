#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Embedding<T>: the lookup table that turns token ids [batch, sequence] into
/// vectors [batch, sequence, width], as PyTorch's nn.Embedding; its backward
/// adds every token's gradient into the row of its id.

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

/// A table of `vocabulary` vectors of `width` values: y[b, s] = W[x[b, s]]
/// for ids x [batch, sequence] in [0, vocabulary), W [vocabulary, width] and
/// y [batch, sequence, width]. The weight starts N(0, 1), as PyTorch's.
///
/// Ids have no gradient. backward() adds to the weight gradient (a
/// scatter-add: a repeated id gets the sum of its tokens' gradients) and
/// writes zeros of x's shape into dx, so that Embedding is a parallax::Layer
/// like any other; a chain calls backward_parameters() for its first layer,
/// which is where an Embedding goes (its input is integer, so no layer's
/// output can feed it), and skips dx altogether.
/// @code
///   parallax::nn::Embedding<float> embed(50257, 768);
///   embed.initialize(seed, 0);
///   embed.forward(ids, y);                      // ids [B, S] (std::int64_t), y [B, S, 768]
///   embed.backward_parameters(ids, y, dy);      // dW[ids[b, s]] += dy[b, s]
/// @endcode
template <class T>
class Embedding : public detail::Table<T> {
 public:
  using value_type = T;
  /// Token ids [batch, sequence], as PyTorch's (int64).
  using input_type = xt::xtensor<std::int64_t, 2>;
  /// Vectors [batch, sequence, width].
  using output_type = xt::xtensor<T, 3>;

  /// A table of `vocabulary` ids (> 0) to vectors of `width` values (> 0);
  /// drawn as initialize(0, 0) gives it until initialize() is called.
  Embedding(std::size_t vocabulary, std::size_t width);

  /// PyTorch's default: every weight N(0, 1), drawn from (seed, index) only.
  void initialize(std::uint64_t seed, std::size_t index);

  /// y[b, s] = W[x[b, s]]; y is resized only when its shape is not
  /// [batch, sequence, width]. An id outside [0, vocabulary) is a
  /// parallax::error naming the id, its position and the vocabulary.
  void forward(const input_type& x, output_type& y) const;

  /// backward_parameters(), then dx = zeros of x's shape (ids have no
  /// gradient; dx resized only when needed).
  void backward(const input_type& x, const output_type& y, const output_type& dy, input_type& dx);
  /// Adds dy[b, s] to row x[b, s] of the weight gradient, for every token.
  void backward_parameters(const input_type& x, const output_type& y, const output_type& dy);

  // parameters(), gradients() and weight() (the weight [vocabulary, width],
  // row i id i's vector, the one parameter): from Table.

  /// How many ids the table holds.
  std::size_t vocabulary() const { return vocabulary_; }
  /// The length of each vector.
  std::size_t width() const { return width_; }

  /// "Embedding(50257, 768)".
  std::string describe() const;
  /// [batch, sequence, width] for an input [batch, sequence]; throws
  /// parallax::error for another rank.
  std::vector<std::size_t> output_shape(const std::vector<std::size_t>& input_shape) const;
  /// vocabulary * width.
  static std::size_t parameter_count(std::size_t vocabulary, std::size_t width) { return vocabulary * width; }

 private:
  /// Throws parallax::error naming the first id of x outside [0, vocabulary).
  void check_ids(const input_type& x, const char* where) const;

  std::size_t vocabulary_;
  std::size_t width_;
};

// ---------------------------------------------------------------------------

template <class T>
Embedding<T>::Embedding(std::size_t vocabulary, std::size_t width) : vocabulary_(vocabulary), width_(width) {
  PARALLAX_CHECK(vocabulary > 0 && width > 0, "Embedding: the vocabulary and the width must be positive, got " +
                                                  std::to_string(vocabulary) + " and " + std::to_string(width));
  this->allocate(vocabulary, width, describe(), "weight");
  initialize(0, 0);
}

template <class T>
void Embedding<T>::initialize(std::uint64_t seed, std::size_t index) {
  this->draw(seed, index);
}

template <class T>
void Embedding<T>::check_ids(const input_type& x, const char* where) const {
  // One comparison per token; the message is built only on failure.
  const std::size_t sequence = x.shape()[1];
  const std::int64_t* ids = x.data();
  for (std::size_t k = 0; k < x.size(); ++k) {
    PARALLAX_CHECK(detail::id_in_range(ids[k], vocabulary_),
                   std::string("Embedding::") + where + "(): id " + std::to_string(ids[k]) + " at (" +
                       std::to_string(k / sequence) + ", " + std::to_string(k % sequence) +
                       ") is outside the vocabulary [0, " + std::to_string(vocabulary_) + ")");
  }
}

template <class T>
void Embedding<T>::forward(const input_type& x, output_type& y) const {
  check_ids(x, "forward");
  const std::array<std::size_t, 3> shape{x.shape()[0], x.shape()[1], width_};
  if (y.shape() != shape) y.resize(shape);
  const std::int64_t* ids = x.data();
  for (std::size_t k = 0; k < x.size(); ++k)
    std::copy_n(this->weight_.data() + static_cast<std::size_t>(ids[k]) * width_, width_, y.data() + k * width_);
}

template <class T>
void Embedding<T>::backward(const input_type& x, const output_type& y, const output_type& dy, input_type& dx) {
  backward_parameters(x, y, dy);
  if (dx.shape() != x.shape()) dx.resize(x.shape());
  std::fill(dx.begin(), dx.end(), std::int64_t(0));
}

template <class T>
void Embedding<T>::backward_parameters(const input_type& x, const output_type& /*y*/, const output_type& dy) {
  detail::check_dy_shape(dy.shape(), std::array<std::size_t, 3>{x.shape()[0], x.shape()[1], width_}, "Embedding");
  // Checked again: backward's x need not be forward's, and a wrong id would
  // write outside the gradient.
  check_ids(x, "backward");
  const std::int64_t* ids = x.data();
  for (std::size_t k = 0; k < x.size(); ++k) {
    const T* g = dy.data() + k * width_;
    T* row = this->weight_grad_.data() + static_cast<std::size_t>(ids[k]) * width_;
    for (std::size_t j = 0; j < width_; ++j) row[j] += g[j];
  }
}

template <class T>
std::string Embedding<T>::describe() const {
  return "Embedding(" + std::to_string(vocabulary_) + ", " + std::to_string(width_) + ")";
}

template <class T>
std::vector<std::size_t> Embedding<T>::output_shape(const std::vector<std::size_t>& input_shape) const {
  detail::check_input_rank(input_shape, 2, describe());
  // Appended rather than indexed: GCC cannot see that the check returned.
  std::vector<std::size_t> shape = input_shape;
  shape.push_back(width_);
  return shape;
}

}  // namespace parallax::nn
