#pragma once
// SPDX-License-Identifier: BSL-1.0
/// CausalSelfAttention<T>: multi-head causal self-attention over
/// [batch, sequence, width], GPT-2's block (one projection to queries, keys
/// and values, scaled dot products masked to earlier tokens, an output
/// projection), with every product a GEMM through xtensor-blas.

#include <parallax/core/error.hpp>
#include <parallax/detail/random.hpp>
#include <parallax/detail/xtensor.hpp>
#include <parallax/nn/detail/checks.hpp>
#include <parallax/nn/detail/softmax_row.hpp>
#include <parallax/nn/detail/strided_gemm.hpp>
#include <parallax/nn/linear.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

namespace parallax::nn {

/// Multi-head causal self-attention, as nanoGPT's CausalSelfAttention
/// (GPT-2's) without dropout: for x [batch, sequence, width] and `heads`
/// heads of width d = width / heads,
///   [q | k | v] = x Wqkv + bqkv                  (Wqkv [width, 3 width])
///   a_h = softmax(q_h k_h^T / sqrt(d) + causal mask) v_h   for every head h
///   y = [a_1 | ... | a_heads] Wo + bo             (Wo [width, width])
/// where head h takes columns [h d, (h + 1) d) of q, k and v, and the mask
/// lets token i attend to tokens 0..i only. The two projections are
/// Linear<T, 3> layers (PyTorch's nn.Linear draw, from (seed, index)); the
/// per-head products are strided GEMMs on the projection's output in place.
///
/// A layer keeps nothing between forward and backward, so backward runs the
/// forward again (one more forward per step) and, within the call, holds
/// every head's probabilities: batch * heads * sequence^2 values of scratch.
///
/// NaN: as in PyTorch's masked softmax followed by a full product with v, a
/// NaN anywhere in a sample's input reaches every output of that sample
/// (a masked probability is 0, and 0 * NaN is NaN); other samples stay
/// finite. The input gradient of masked scores is exactly 0, as
/// masked_fill's backward makes it.
/// @code
///   parallax::nn::CausalSelfAttention<float> attention(256, 8);   // width 256, 8 heads of 32
///   attention.forward(x, y);                // x, y [batch, sequence, 256]
///   attention.backward(x, y, dy, dx);       // adds to Wqkv, bqkv, Wo, bo's gradients
/// @endcode
template <class T>
class CausalSelfAttention {
 public:
  using value_type = T;
  using input_type = xt::xtensor<T, 3>;
  using output_type = xt::xtensor<T, 3>;

  /// Attention over rows of `width` values (> 0) with `heads` heads (> 0,
  /// dividing width); usable weights at once (initialize(0, 0)).
  CausalSelfAttention(std::size_t width, std::size_t heads);

  /// The query-key-value projection from (key(seed, index), 0), the output
  /// projection from (key(seed, index), 1): PyTorch's nn.Linear draw each.
  void initialize(std::uint64_t seed, std::size_t index);

  /// y [batch, sequence, width] (resized only when its shape differs).
  void forward(const input_type& x, output_type& y);
  /// dx (resized only when needed); adds the gradients of both projections.
  void backward(const input_type& x, const output_type& y, const output_type& dy, input_type& dx);

  /// Wqkv [width, 3 width], bqkv [3 width], Wo [width, width], bo [width].
  auto parameters() { return std::tuple_cat(qkv_.parameters(), output_.parameters()); }
  auto parameters() const { return std::tuple_cat(qkv_.parameters(), output_.parameters()); }
  /// Gradients laid out like parameters().
  auto gradients() { return std::tuple_cat(qkv_.gradients(), output_.gradients()); }
  auto gradients() const { return std::tuple_cat(qkv_.gradients(), output_.gradients()); }

  /// The projection to [q | k | v] (PyTorch's c_attn, transposed weight).
  Linear<T, 3>& qkv() { return qkv_; }
  const Linear<T, 3>& qkv() const { return qkv_; }
  /// The output projection (PyTorch's c_proj, transposed weight).
  Linear<T, 3>& output() { return output_; }
  const Linear<T, 3>& output() const { return output_; }

  std::size_t width() const { return width_; }
  std::size_t heads() const { return heads_; }
  /// width / heads.
  std::size_t head_width() const { return width_ / heads_; }

  /// "CausalSelfAttention(256, 8 heads)".
  std::string describe() const;
  /// The input shape itself; throws parallax::error when its rank is not 3
  /// or its last extent is not width.
  std::vector<std::size_t> output_shape(const std::vector<std::size_t>& input_shape) const;
  /// 4 width^2 + 4 width: both projections.
  static std::size_t parameter_count(std::size_t width, std::size_t /*heads*/) {
    return Linear<T, 3>::parameter_count(width, 3 * width) + Linear<T, 3>::parameter_count(width, width);
  }

 private:
  /// Throws parallax::error unless x's last extent is width.
  void check_input(const input_type& x, const char* where) const;
  /// For sample b and head h of qkv_out_ [batch, sequence, 3 width]: the
  /// masked softmax of q k^T / sqrt(d) into probabilities [sequence,
  /// sequence], then probabilities v into columns [h d, (h + 1) d) of
  /// heads_out_.
  void attend(std::size_t b, std::size_t h, std::size_t sequence, T* probabilities);
  /// The gradient of attend() for sample b and head h: from dheads_out_
  /// and the probabilities, the columns of q, k and v of dqkv_out_.
  void attend_backward(std::size_t b, std::size_t h, std::size_t sequence, const T* probabilities);

  std::size_t width_;
  std::size_t heads_;
  Linear<T, 3> qkv_;
  Linear<T, 3> output_;
  // Scratch, each used within one call only.
  xt::xtensor<T, 3> qkv_out_;     // [batch, sequence, 3 width]
  xt::xtensor<T, 3> heads_out_;   // [batch, sequence, width]: the heads side by side
  xt::xtensor<T, 3> dheads_out_;  // its gradient
  xt::xtensor<T, 3> dqkv_out_;    // qkv_out_'s gradient
  std::vector<T> probabilities_;  // forward: one head's [sequence, sequence]; backward: all heads'
  std::vector<T> dscores_;        // one head's [sequence, sequence]
};

// ---------------------------------------------------------------------------

namespace detail {

inline std::size_t checked_head_width(std::size_t width, std::size_t heads) {
  PARALLAX_CHECK(width > 0 && heads > 0, "CausalSelfAttention: the width and the number of heads must be positive, got " +
                                             std::to_string(width) + " and " + std::to_string(heads));
  PARALLAX_CHECK(width % heads == 0, "CausalSelfAttention: " + std::to_string(heads) +
                                         " heads do not divide the width " + std::to_string(width));
  return width;
}

}  // namespace detail

template <class T>
CausalSelfAttention<T>::CausalSelfAttention(std::size_t width, std::size_t heads)
    : width_(detail::checked_head_width(width, heads)), heads_(heads), qkv_(width, 3 * width), output_(width, width) {
  initialize(0, 0);
}

template <class T>
void CausalSelfAttention<T>::initialize(std::uint64_t seed, std::size_t index) {
  const std::uint64_t k = parallax::detail::key(seed, index);
  qkv_.initialize(k, 0);
  output_.initialize(k, 1);
}

template <class T>
void CausalSelfAttention<T>::check_input(const input_type& x, const char* where) const {
  PARALLAX_CHECK(x.shape()[2] == width_, std::string("CausalSelfAttention::") + where + "(): input of shape " +
                                             parallax::detail::shape_string(x.shape()) + " has width " +
                                             std::to_string(x.shape()[2]) + ", expected " + std::to_string(width_));
}

template <class T>
void CausalSelfAttention<T>::attend(std::size_t b, std::size_t h, std::size_t sequence, T* p) {
  const std::size_t d = head_width(), row = 3 * width_;
  const T* q = qkv_out_.data() + b * sequence * row + h * d;
  const T* k = q + width_;
  const T* v = q + 2 * width_;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(d)));
  // scores = q k^T / sqrt(d), every pair; the mask then keeps j <= i.
  detail::strided_gemm(false, true, sequence, sequence, d, scale, q, row, k, row, T(0), p, sequence);
  for (std::size_t i = 0; i < sequence; ++i) {
    T* r = p + i * sequence;
    detail::softmax_row(r, i + 1, r);
    std::fill(r + i + 1, r + sequence, T(0));
  }
  // The full product, zeros included, as PyTorch's att @ v.
  detail::strided_gemm(false, false, sequence, d, sequence, T(1), p, sequence, v, row, T(0),
                       heads_out_.data() + b * sequence * width_ + h * d, width_);
}

template <class T>
void CausalSelfAttention<T>::attend_backward(std::size_t b, std::size_t h, std::size_t sequence, const T* p) {
  const std::size_t d = head_width(), row = 3 * width_;
  const std::size_t offset = b * sequence * row + h * d;
  const T* q = qkv_out_.data() + offset;
  const T* k = q + width_;
  const T* v = q + 2 * width_;
  T* dq = dqkv_out_.data() + offset;
  T* dk = dq + width_;
  T* dv = dq + 2 * width_;
  const T* da = dheads_out_.data() + b * sequence * width_ + h * d;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(d)));
  T* ds = dscores_.data();
  // dv = p^T da; dp = da v^T.
  detail::strided_gemm(true, false, sequence, d, sequence, T(1), p, sequence, da, width_, T(0), dv, row);
  detail::strided_gemm(false, true, sequence, sequence, d, T(1), da, width_, v, row, T(0), ds, sequence);
  // Through the softmax: ds = p (dp - sum_j p dp), row by row over j <= i;
  // masked scores get exactly 0.
  for (std::size_t i = 0; i < sequence; ++i) {
    const T* pr = p + i * sequence;
    T* r = ds + i * sequence;
    double dot = 0;
    for (std::size_t j = 0; j <= i; ++j) dot += static_cast<double>(pr[j]) * static_cast<double>(r[j]);
    for (std::size_t j = 0; j <= i; ++j)
      r[j] = static_cast<T>(static_cast<double>(pr[j]) * (static_cast<double>(r[j]) - dot));
    std::fill(r + i + 1, r + sequence, T(0));
  }
  // dq = ds k / sqrt(d); dk = ds^T q / sqrt(d).
  detail::strided_gemm(false, false, sequence, d, sequence, scale, ds, sequence, k, row, T(0), dq, row);
  detail::strided_gemm(true, false, sequence, d, sequence, scale, ds, sequence, q, row, T(0), dk, row);
}

template <class T>
void CausalSelfAttention<T>::forward(const input_type& x, output_type& y) {
  check_input(x, "forward");
  const std::size_t batch = x.shape()[0], sequence = x.shape()[1];
  qkv_.forward(x, qkv_out_);
  if (heads_out_.shape() != x.shape()) heads_out_.resize(x.shape());
  probabilities_.resize(sequence * sequence);
  for (std::size_t b = 0; b < batch && sequence > 0; ++b)
    for (std::size_t h = 0; h < heads_; ++h) attend(b, h, sequence, probabilities_.data());
  output_.forward(heads_out_, y);
}

template <class T>
void CausalSelfAttention<T>::backward(const input_type& x, const output_type& y, const output_type& dy,
                                      input_type& dx) {
  check_input(x, "backward");
  detail::check_dy_shape(dy.shape(), x.shape(), "CausalSelfAttention");
  const std::size_t batch = x.shape()[0], sequence = x.shape()[1], square = sequence * sequence;
  // The forward again, keeping every head's probabilities for the way back.
  qkv_.forward(x, qkv_out_);
  if (heads_out_.shape() != x.shape()) heads_out_.resize(x.shape());
  probabilities_.resize(batch * heads_ * square);
  for (std::size_t b = 0; b < batch && sequence > 0; ++b)
    for (std::size_t h = 0; h < heads_; ++h) attend(b, h, sequence, probabilities_.data() + (b * heads_ + h) * square);
  output_.backward(heads_out_, y, dy, dheads_out_);
  if (dqkv_out_.shape() != qkv_out_.shape()) dqkv_out_.resize(qkv_out_.shape());
  dscores_.resize(square);
  for (std::size_t b = 0; b < batch && sequence > 0; ++b)
    for (std::size_t h = 0; h < heads_; ++h)
      attend_backward(b, h, sequence, probabilities_.data() + (b * heads_ + h) * square);
  qkv_.backward(x, qkv_out_, dqkv_out_, dx);
}

template <class T>
std::string CausalSelfAttention<T>::describe() const {
  return "CausalSelfAttention(" + std::to_string(width_) + ", " + std::to_string(heads_) +
         (heads_ == 1 ? " head)" : " heads)");
}

template <class T>
std::vector<std::size_t> CausalSelfAttention<T>::output_shape(const std::vector<std::size_t>& input_shape) const {
  detail::check_input_rank(input_shape, 3, describe());
  PARALLAX_CHECK(input_shape[2] == width_, describe() + ": input shape " + parallax::detail::shape_string(input_shape) +
                                               " has width " + std::to_string(input_shape[2]) + ", expected " +
                                               std::to_string(width_));
  return input_shape;
}

}  // namespace parallax::nn
