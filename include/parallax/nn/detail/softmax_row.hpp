#pragma once
// SPDX-License-Identifier: BSL-1.0
/// One row of logits against one class index: its softmax cross-entropy,
/// log sum_c exp(row[c]) - row[label], and that loss's gradient, the one
/// copy of the arithmetic SoftmaxCrossEntropy (a row per sample) and
/// TokenCrossEntropy (a row per token) share; and a row's softmax itself,
/// which CausalSelfAttention takes of its scores.

#include <parallax/nn/detail/vector_math.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <type_traits>

namespace parallax::nn::detail {

/// The largest logit of a row, as the log-sum-exp shifts by it: a NaN at
/// position 0 stays, a later NaN is skipped (the sum then carries it).
template <class T>
T row_maximum(const T* row, std::size_t classes) {
  T top = row[0];
  for (std::size_t c = 1; c < classes; ++c) top = row[c] > top ? row[c] : top;
  return top;
}

/// sum_c exp(row[c] - top) in double, summed in c's order; each
/// exp(row[c] - top), as T, also into out[c] when out is not null (out may
/// be row). float takes the difference in float and its exp through the
/// vector expf (vector_math.hpp), in blocks of math_block padded at the
/// end, so a value's bits do not depend on its place in the row; double
/// takes std::exp. A NaN difference (a NaN or +inf logit, or only -inf ones)
/// makes its exp and the sum NaN.
template <class T>
double exp_sum(const T* row, std::size_t n, T top, T* out) {
  double sum = 0;
  if constexpr (std::is_same_v<T, float>) {
    for (std::size_t i = 0; i < n; i += math_block) {
      const std::size_t count = std::min(math_block, n - i);
      float block[math_block] = {};
      for (std::size_t k = 0; k < count; ++k) block[k] = row[i + k] - top;
      exp_block(block, block);
      for (std::size_t k = 0; k < count; ++k) sum += static_cast<double>(block[k]);
      if (out != nullptr) std::copy(block, block + count, out + i);
    }
  } else {
    for (std::size_t c = 0; c < n; ++c) {
      const double e = std::exp(static_cast<double>(row[c]) - static_cast<double>(top));
      if (out != nullptr) out[c] = static_cast<T>(e);
      sum += e;
    }
  }
  return sum;
}

/// log sum_c exp(row[c]) - row[label], the log-sum-exp shifted by the row's
/// maximum so that large logits neither overflow nor lose precision; summed
/// in double. A NaN or +inf logit (or only -inf ones) gives NaN, a -inf
/// logit at the label +inf, as in PyTorch.
template <class T>
double softmax_row_loss(const T* row, std::size_t classes, std::size_t label) {
  const T top = row_maximum(row, classes);
  const double sum = exp_sum(row, classes, top, static_cast<T*>(nullptr));
  return static_cast<double>(top) + std::log(sum) - static_cast<double>(row[label]);
}

/// softmax_row_loss(), and (softmax(row) - onehot(label)) * scale written
/// into grad[0, classes): the row's part of the gradient of a mean whose
/// divisor is 1 / scale. Returns the same bits as softmax_row_loss().
template <class T>
double softmax_row_loss_and_gradient(const T* row, std::size_t classes, std::size_t label, double scale, T* grad) {
  const T top = row_maximum(row, classes);
  // exp(y - max) goes into grad first, then becomes the softmax.
  const double sum = exp_sum(row, classes, top, grad);
  for (std::size_t c = 0; c < classes; ++c) {
    const double p = static_cast<double>(grad[c]) / sum;
    grad[c] = static_cast<T>((p - (c == label ? 1.0 : 0.0)) * scale);
  }
  return static_cast<double>(top) + std::log(sum) - static_cast<double>(row[label]);
}

/// softmax(row[0, n)) written into out[0, n) (out may be row): shifted by
/// the row's maximum, each exp(row[c] - max) computed once (exp_sum) and
/// kept in out, summed in double, then scaled by 1 / sum. A NaN or +inf in
/// the row (or only -inf ones) makes every value NaN, as in PyTorch.
template <class T>
void softmax_row(const T* row, std::size_t n, T* out) {
  const double sum = exp_sum(row, n, row_maximum(row, n), out);
  const double inverse = 1.0 / sum;
  for (std::size_t c = 0; c < n; ++c) out[c] = static_cast<T>(static_cast<double>(out[c]) * inverse);
}

}  // namespace parallax::nn::detail
