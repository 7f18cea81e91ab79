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
#include <parallax/nn/detail/lane_sum.hpp>
#include <parallax/nn/detail/last_input.hpp>
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

namespace detail {

/// Throws parallax::error naming `where` unless the last extent of a
/// [batch, sequence, width] shape is width.
template <class Shape>
void check_attention_input(const Shape& shape, std::size_t width, const std::string& where) {
  PARALLAX_CHECK(shape[2] == width, where + ": input of shape " + parallax::detail::shape_string(shape) +
                                        " has width " + std::to_string(shape[2]) + ", expected " +
                                        std::to_string(width));
}

/// "1 head", "8 heads".
inline std::string heads_text(std::size_t heads) {
  return std::to_string(heads) + (heads == 1 ? " head" : " heads");
}

/// The heads of causal self-attention between the two projections, and
/// the scratch of one call: from qkv [batch, sequence, 3 inner] (q, k and v
/// side by side, head h at columns [h d, (h + 1) d) of each) to the heads'
/// outputs [batch, sequence, inner], and back. CausalSelfAttention and
/// ParallelCausalSelfAttention (its heads split across ranks) run this.
template <class T>
class causal_heads {
 public:
  causal_heads(std::size_t inner, std::size_t heads) : inner_(inner), heads_(heads) {}

  /// out = the heads' outputs for qkv; with `keep`, every head's
  /// probabilities stay for backward() (batch * heads * sequence^2 values).
  void forward(const xt::xtensor<T, 3>& qkv, xt::xtensor<T, 3>& out, bool keep);
  /// dqkv from the heads' output gradient dout, after forward(qkv, ..., true).
  void backward(const xt::xtensor<T, 3>& qkv, const xt::xtensor<T, 3>& dout, xt::xtensor<T, 3>& dqkv);

  std::size_t heads() const { return heads_; }
  std::size_t head_width() const { return inner_ / heads_; }

 private:
  /// Sample b, head h: the masked softmax of q k^T / sqrt(d) into p
  /// [sequence, sequence], then p v into the head's columns of out.
  void attend(const T* qkv, T* out, std::size_t h, std::size_t sequence, T* p) const;
  /// Its gradient: from dout and p, the head's columns of dq, dk and dv.
  void attend_backward(const T* qkv, const T* dout, T* dqkv, std::size_t h, std::size_t sequence, const T* p);

  std::size_t inner_;
  std::size_t heads_;
  std::vector<T> probabilities_;  // forward: one head's [sequence, sequence]; kept: all heads'
  std::vector<T> dscores_;        // one head's [sequence, sequence]
};

/// x -> qkv projection -> heads -> output projection, forward and backward
/// (over the scratch of the forward just before when it had the same x,
/// else after running the forward again), for any pair of projection layers.
template <class T, class Projection, class Output>
class attention_block {
 public:
  /// Wqkv, bqkv, Wo, bo: both projections' parameters.
  auto parameters() { return std::tuple_cat(qkv_.parameters(), output_.parameters()); }
  auto parameters() const { return std::tuple_cat(qkv_.parameters(), output_.parameters()); }
  /// Gradients laid out like parameters().
  auto gradients() { return std::tuple_cat(qkv_.gradients(), output_.gradients()); }
  auto gradients() const { return std::tuple_cat(qkv_.gradients(), output_.gradients()); }

  /// The projection to [q | k | v].
  Projection& qkv() { return qkv_; }
  const Projection& qkv() const { return qkv_; }
  /// The output projection.
  Output& output() { return output_; }
  const Output& output() const { return output_; }

  /// In eval mode (false) a forward keeps neither x nor the probabilities.
  void set_training(bool training) { training_ = training; }

 protected:
  attention_block(Projection qkv, Output output, std::size_t inner, std::size_t heads)
      : qkv_(std::move(qkv)), output_(std::move(output)), heads_(inner, heads) {}

  /// Both projections from (key(seed, index), 0) and (key(seed, index), 1).
  void initialize_projections(std::uint64_t seed, std::size_t index);
  void run_forward(const xt::xtensor<T, 3>& x, xt::xtensor<T, 3>& y);
  void run_backward(const xt::xtensor<T, 3>& x, const xt::xtensor<T, 3>& y, const xt::xtensor<T, 3>& dy,
                    xt::xtensor<T, 3>& dx);

  Projection qkv_;
  Output output_;
  causal_heads<T> heads_;
  bool training_ = true;
  last_input<xt::xtensor<T, 3>> last_input_;  // x of the forward whose scratch below is still whole
  // Scratch of one call, or of the forward before the backward that reuses it.
  xt::xtensor<T, 3> qkv_out_;     // [batch, sequence, 3 inner]
  xt::xtensor<T, 3> heads_out_;   // [batch, sequence, inner]: the heads side by side
  xt::xtensor<T, 3> dheads_out_;  // its gradient
  xt::xtensor<T, 3> dqkv_out_;    // qkv_out_'s gradient
};

}  // namespace detail

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
/// A layer keeps no activations between forward and backward, so backward
/// needs the projection and every head's probabilities for x (batch * heads
/// * sequence^2 values of scratch): a training-mode forward keeps them, and
/// the backward right after it on the same bits of x uses them; otherwise
/// (a pipeline's micro-batches in flight) backward runs the forward again,
/// with the same result.
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
class CausalSelfAttention : public detail::attention_block<T, Linear<T, 3>, Linear<T, 3>> {
  using base = detail::attention_block<T, Linear<T, 3>, Linear<T, 3>>;

 public:
  using value_type = T;
  using input_type = xt::xtensor<T, 3>;
  using output_type = xt::xtensor<T, 3>;
  /// backward(x, y, dy, dx) never reads y (BackwardIgnoresOutput).
  static constexpr bool backward_reads_output = false;

  /// Attention over rows of `width` values (> 0) with `heads` heads (> 0,
  /// dividing width); usable weights at once (initialize(0, 0)).
  CausalSelfAttention(std::size_t width, std::size_t heads);

  /// The query-key-value projection from (key(seed, index), 0), the output
  /// projection from (key(seed, index), 1): PyTorch's nn.Linear draw each.
  void initialize(std::uint64_t seed, std::size_t index) { this->initialize_projections(seed, index); }

  /// y [batch, sequence, width] (resized only when its shape differs).
  void forward(const input_type& x, output_type& y);
  /// dx (resized only when needed); adds the gradients of both projections.
  void backward(const input_type& x, const output_type& y, const output_type& dy, input_type& dx);

  // parameters() (Wqkv [width, 3 width], bqkv [3 width], Wo [width, width],
  // bo [width]), gradients(), qkv() and output() (the two Linear<T, 3>,
  // PyTorch's c_attn and c_proj with transposed weights): from the base.

  std::size_t width() const { return width_; }
  std::size_t heads() const { return this->heads_.heads(); }
  /// width / heads.
  std::size_t head_width() const { return width_ / heads(); }

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
  std::size_t width_;
};

// ---------------------------------------------------------------------------

namespace detail {

inline std::size_t checked_head_width(std::size_t width, std::size_t heads, const char* who = "CausalSelfAttention") {
  PARALLAX_CHECK(width > 0 && heads > 0, std::string(who) + ": the width and the number of heads must be positive, got " +
                                             std::to_string(width) + " and " + std::to_string(heads));
  PARALLAX_CHECK(width % heads == 0, std::string(who) + ": " + std::to_string(heads) +
                                         " heads do not divide the width " + std::to_string(width));
  return width;
}

template <class T>
void causal_heads<T>::attend(const T* qkv, T* out, std::size_t h, std::size_t sequence, T* p) const {
  const std::size_t d = head_width(), row = 3 * inner_;
  const T* q = qkv + h * d;
  const T* k = q + inner_;
  const T* v = q + 2 * inner_;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(d)));
  // scores = q k^T / sqrt(d), every pair; the mask then keeps j <= i.
  strided_gemm(false, true, sequence, sequence, d, scale, q, row, k, row, T(0), p, sequence);
  for (std::size_t i = 0; i < sequence; ++i) {
    T* r = p + i * sequence;
    softmax_row(r, i + 1, r);
    std::fill(r + i + 1, r + sequence, T(0));
  }
  // The full product, zeros included, as PyTorch's att @ v.
  strided_gemm(false, false, sequence, d, sequence, T(1), p, sequence, v, row, T(0), out + h * d, inner_);
}

template <class T>
void causal_heads<T>::attend_backward(const T* qkv, const T* dout, T* dqkv, std::size_t h, std::size_t sequence,
                                      const T* p) {
  const std::size_t d = head_width(), row = 3 * inner_;
  const T* q = qkv + h * d;
  const T* k = q + inner_;
  const T* v = q + 2 * inner_;
  T* dq = dqkv + h * d;
  T* dk = dq + inner_;
  T* dv = dq + 2 * inner_;
  const T* da = dout + h * d;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(d)));
  T* ds = dscores_.data();
  // dv = p^T da; dp = da v^T.
  strided_gemm(true, false, sequence, d, sequence, T(1), p, sequence, da, inner_, T(0), dv, row);
  strided_gemm(false, true, sequence, sequence, d, T(1), da, inner_, v, row, T(0), ds, sequence);
  // Through the softmax: ds = p (dp - sum_j p dp), row by row over j <= i;
  // masked scores get exactly 0.
  for (std::size_t i = 0; i < sequence; ++i) {
    const T* pr = p + i * sequence;
    T* r = ds + i * sequence;
    const double dot =
        lane_sum(i + 1, [&](std::size_t j) { return static_cast<double>(pr[j]) * static_cast<double>(r[j]); });
    for (std::size_t j = 0; j <= i; ++j)
      r[j] = static_cast<T>(static_cast<double>(pr[j]) * (static_cast<double>(r[j]) - dot));
    std::fill(r + i + 1, r + sequence, T(0));
  }
  // dq = ds k / sqrt(d); dk = ds^T q / sqrt(d).
  strided_gemm(false, false, sequence, d, sequence, scale, ds, sequence, k, row, T(0), dq, row);
  strided_gemm(true, false, sequence, d, sequence, scale, ds, sequence, q, row, T(0), dk, row);
}

template <class T>
void causal_heads<T>::forward(const xt::xtensor<T, 3>& qkv, xt::xtensor<T, 3>& out, bool keep) {
  const std::size_t batch = qkv.shape()[0], sequence = qkv.shape()[1], square = sequence * sequence;
  const std::array<std::size_t, 3> shape{batch, sequence, inner_};
  if (out.shape() != shape) out.resize(shape);
  probabilities_.resize(keep ? batch * heads_ * square : square);
  for (std::size_t b = 0; b < batch && sequence > 0; ++b)
    for (std::size_t h = 0; h < heads_; ++h)
      attend(qkv.data() + b * sequence * 3 * inner_, out.data() + b * sequence * inner_, h, sequence,
             probabilities_.data() + (keep ? (b * heads_ + h) * square : 0));
}

template <class T>
void causal_heads<T>::backward(const xt::xtensor<T, 3>& qkv, const xt::xtensor<T, 3>& dout, xt::xtensor<T, 3>& dqkv) {
  const std::size_t batch = qkv.shape()[0], sequence = qkv.shape()[1], square = sequence * sequence;
  if (dqkv.shape() != qkv.shape()) dqkv.resize(qkv.shape());
  dscores_.resize(square);
  for (std::size_t b = 0; b < batch && sequence > 0; ++b)
    for (std::size_t h = 0; h < heads_; ++h)
      attend_backward(qkv.data() + b * sequence * 3 * inner_, dout.data() + b * sequence * inner_,
                      dqkv.data() + b * sequence * 3 * inner_, h, sequence,
                      probabilities_.data() + (b * heads_ + h) * square);
}

template <class T, class Projection, class Output>
void attention_block<T, Projection, Output>::initialize_projections(std::uint64_t seed, std::size_t index) {
  const std::uint64_t k = parallax::detail::key(seed, index);
  qkv_.initialize(k, 0);
  output_.initialize(k, 1);
}

template <class T, class Projection, class Output>
void attention_block<T, Projection, Output>::run_forward(const xt::xtensor<T, 3>& x, xt::xtensor<T, 3>& y) {
  last_input_.forget();
  qkv_.forward(x, qkv_out_);
  heads_.forward(qkv_out_, heads_out_, training_);
  output_.forward(heads_out_, y);
  if (training_) last_input_.remember(x);
}

template <class T, class Projection, class Output>
void attention_block<T, Projection, Output>::run_backward(const xt::xtensor<T, 3>& x, const xt::xtensor<T, 3>& y,
                                                          const xt::xtensor<T, 3>& dy, xt::xtensor<T, 3>& dx) {
  // The forward's projection and every head's probabilities: kept by the
  // forward just before on this x, else computed again.
  if (!last_input_.take(x)) {
    qkv_.forward(x, qkv_out_);
    heads_.forward(qkv_out_, heads_out_, true);
  }
  output_.backward(heads_out_, y, dy, dheads_out_);
  heads_.backward(qkv_out_, dheads_out_, dqkv_out_);
  qkv_.backward(x, qkv_out_, dqkv_out_, dx);
}

}  // namespace detail

template <class T>
CausalSelfAttention<T>::CausalSelfAttention(std::size_t width, std::size_t heads)
    : base(Linear<T, 3>(detail::checked_head_width(width, heads), 3 * width), Linear<T, 3>(width, width), width,
           heads),
      width_(width) {
  initialize(0, 0);
}

template <class T>
void CausalSelfAttention<T>::forward(const input_type& x, output_type& y) {
  detail::check_attention_input(x.shape(), width_, "CausalSelfAttention::forward()");
  this->run_forward(x, y);
}

template <class T>
void CausalSelfAttention<T>::backward(const input_type& x, const output_type& y, const output_type& dy,
                                      input_type& dx) {
  detail::check_attention_input(x.shape(), width_, "CausalSelfAttention::backward()");
  detail::check_dy_shape(dy.shape(), x.shape(), "CausalSelfAttention");
  this->run_backward(x, y, dy, dx);
}

template <class T>
std::string CausalSelfAttention<T>::describe() const {
  return "CausalSelfAttention(" + std::to_string(width_) + ", " + detail::heads_text(heads()) + ")";
}

template <class T>
std::vector<std::size_t> CausalSelfAttention<T>::output_shape(const std::vector<std::size_t>& input_shape) const {
  detail::check_input_rank(input_shape, 3, describe());
  detail::check_attention_input(input_shape, width_, describe());
  return input_shape;
}

}  // namespace parallax::nn
