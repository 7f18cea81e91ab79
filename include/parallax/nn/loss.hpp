#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The reference losses that end a Sequential chain: softmax cross-entropy
/// over class indices and mean squared error, each a mean over the batch and
/// its gradient written into a caller-owned buffer.

#include <parallax/core/error.hpp>
#include <parallax/detail/xtensor.hpp>
#include <parallax/nn/detail/checks.hpp>
#include <parallax/nn/detail/softmax_row.hpp>

#include <cstddef>
#include <cstdint>
#include <string>

namespace parallax::nn {

/// Cross-entropy of softmax(logits) against class indices, averaged over the
/// batch (PyTorch's CrossEntropyLoss): for logits y [batch, classes] and
/// labels t [batch] in [0, classes),
///   loss = 1/batch * sum_b (log sum_c exp(y[b, c]) - y[b, t[b]]),
/// with the log-sum-exp shifted by each row's maximum so that large logits
/// neither overflow nor lose precision. Sums are taken in double. As in
/// PyTorch, a row with a NaN or a +inf logit (or only -inf ones) has a NaN
/// loss and a NaN gradient, and a -inf logit at the label an infinite loss.
template <class T>
class SoftmaxCrossEntropy {
 public:
  using value_type = T;
  using input_type = xt::xtensor<T, 2>;
  using target_type = xt::xtensor<std::int32_t, 1>;

  /// The mean loss; writes d(mean loss)/dy = (softmax(y) - onehot(t)) / batch
  /// into dy (resized only when its shape differs from y's).
  double loss(const input_type& y, const target_type& t, input_type& dy) const;
  /// The mean loss, no gradient.
  double value(const input_type& y, const target_type& t) const;
  /// How many rows have their largest logit at the label: the first
  /// maximum, or the first NaN of a row that has one (torch.argmax's rule).
  std::size_t correct(const input_type& y, const target_type& t) const;

  /// "SoftmaxCrossEntropy".
  std::string describe() const { return "SoftmaxCrossEntropy"; }

 private:
  void check(const input_type& y, const target_type& t, const char* where) const;
};

/// Mean squared error over all elements (PyTorch's MSELoss default):
///   loss = 1/n * sum_i (y_i - t_i)^2,  n = y.size(),
/// so the gradient is 2 (y - t) / n. Sums are taken in double; a NaN or an
/// infinity in y or t reaches the loss and its element's gradient, as in
/// PyTorch.
template <class T, std::size_t N = 2>
class MeanSquaredError {
 public:
  using value_type = T;
  using input_type = xt::xtensor<T, N>;
  using target_type = xt::xtensor<T, N>;

  /// The mean loss; writes d(mean loss)/dy into dy (resized only when its
  /// shape differs from y's).
  double loss(const input_type& y, const target_type& t, input_type& dy) const;
  /// The mean loss, no gradient.
  double value(const input_type& y, const target_type& t) const;

  /// "MeanSquaredError".
  std::string describe() const { return "MeanSquaredError"; }

 private:
  void check(const input_type& y, const target_type& t, const char* where) const;
};

// ---------------------------------------------------------------------------

template <class T>
void SoftmaxCrossEntropy<T>::check(const input_type& y, const target_type& t, const char* where) const {
  // Messages are built only on failure: a step allocates nothing.
  const std::size_t batch = y.shape()[0], classes = y.shape()[1];
  PARALLAX_CHECK(batch == t.shape()[0], std::string("SoftmaxCrossEntropy::") + where + "(): " +
                                            std::to_string(batch) + " rows of logits but " +
                                            std::to_string(t.shape()[0]) + " labels");
  PARALLAX_CHECK(batch > 0, std::string("SoftmaxCrossEntropy::") + where + "(): the batch is empty");
  const std::int32_t* labels = t.data();
  for (std::size_t b = 0; b < batch; ++b) {
    PARALLAX_CHECK(detail::id_in_range(labels[b], classes),
                   std::string("SoftmaxCrossEntropy::") + where + "(): label " + std::to_string(labels[b]) +
                       " of sample " + std::to_string(b) + " is outside [0, " + std::to_string(classes) + ")");
  }
}

template <class T>
double SoftmaxCrossEntropy<T>::loss(const input_type& y, const target_type& t, input_type& dy) const {
  check(y, t, "loss");
  if (dy.shape() != y.shape()) dy.resize(y.shape());
  const std::size_t batch = y.shape()[0], classes = y.shape()[1];
  const double inv_batch = 1.0 / static_cast<double>(batch);
  double total = 0;
  for (std::size_t b = 0; b < batch; ++b)
    total += detail::softmax_row_loss_and_gradient(y.data() + b * classes, classes,
                                                   static_cast<std::size_t>(t.data()[b]), inv_batch,
                                                   dy.data() + b * classes);
  return total / static_cast<double>(batch);  // exactly as value() computes it
}

template <class T>
double SoftmaxCrossEntropy<T>::value(const input_type& y, const target_type& t) const {
  check(y, t, "value");
  const std::size_t batch = y.shape()[0], classes = y.shape()[1];
  double total = 0;
  for (std::size_t b = 0; b < batch; ++b)
    total += detail::softmax_row_loss(y.data() + b * classes, classes, static_cast<std::size_t>(t.data()[b]));
  return total / static_cast<double>(batch);
}

template <class T>
std::size_t SoftmaxCrossEntropy<T>::correct(const input_type& y, const target_type& t) const {
  check(y, t, "correct");
  const std::size_t batch = y.shape()[0], classes = y.shape()[1];
  std::size_t right = 0;
  for (std::size_t b = 0; b < batch; ++b) {
    const T* row = y.data() + b * classes;
    std::size_t best = 0;
    for (std::size_t c = 1; c < classes; ++c)
      if (row[c] > row[best] || (row[c] != row[c] && row[best] == row[best])) best = c;
    if (best == static_cast<std::size_t>(t.data()[b])) ++right;
  }
  return right;
}

template <class T, std::size_t N>
void MeanSquaredError<T, N>::check(const input_type& y, const target_type& t, const char* where) const {
  // Messages are built only on failure: a step allocates nothing.
  PARALLAX_CHECK(y.shape() == t.shape(), std::string("MeanSquaredError::") + where + "(): prediction shape " +
                                             parallax::detail::shape_string(y.shape()) +
                                             " differs from target shape " +
                                             parallax::detail::shape_string(t.shape()));
  PARALLAX_CHECK(y.size() > 0, std::string("MeanSquaredError::") + where + "(): the batch is empty");
}

template <class T, std::size_t N>
double MeanSquaredError<T, N>::loss(const input_type& y, const target_type& t, input_type& dy) const {
  check(y, t, "loss");
  if (dy.shape() != y.shape()) dy.resize(y.shape());
  const std::size_t n = y.size();
  const double scale = 2.0 / static_cast<double>(n);
  const T* a = y.data();
  const T* b = t.data();
  T* g = dy.data();
  double total = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    total += d * d;
    g[i] = static_cast<T>(scale * d);
  }
  return total / static_cast<double>(n);
}

template <class T, std::size_t N>
double MeanSquaredError<T, N>::value(const input_type& y, const target_type& t) const {
  check(y, t, "value");
  const std::size_t n = y.size();
  const T* a = y.data();
  const T* b = t.data();
  double total = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    total += d * d;
  }
  return total / static_cast<double>(n);
}

}  // namespace parallax::nn
