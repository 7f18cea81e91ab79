#pragma once
// SPDX-License-Identifier: BSL-1.0
/// TokenCrossEntropy<T>: the loss that ends a language model, softmax
/// cross-entropy of every token's logits [batch, sequence, vocabulary]
/// against its target id, a mean over all tokens.

#include <parallax/core/error.hpp>
#include <parallax/detail/xtensor.hpp>
#include <parallax/nn/detail/checks.hpp>
#include <parallax/nn/detail/softmax_row.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace parallax::nn {

/// Cross-entropy of softmax(logits) against target ids, token by token, as
/// PyTorch's F.cross_entropy(logits.view(-1, V), targets.view(-1)): for
/// logits y [batch, sequence, V] and targets t [batch, sequence] in [0, V),
///   loss = 1/(batch sequence) * sum_{b, s} (log sum_v exp(y[b, s, v]) - y[b, s, t[b, s]]).
/// Each token's row is SoftmaxCrossEntropy's arithmetic (the same code):
/// the log-sum-exp shifted by the row's maximum, sums in double, and a row
/// with a NaN or a +inf logit (or only -inf ones) has a NaN loss and a NaN
/// gradient row. There is no ignore_index: every target must be an id.
/// Targets have Embedding's id type, so a model's inputs shifted by one
/// token are its targets.
/// @code
///   parallax::nn::TokenCrossEntropy<float> ce;
///   double mean = ce.loss(logits, next_ids, dlogits);   // logits [B, S, V], next_ids [B, S]
/// @endcode
template <class T>
class TokenCrossEntropy {
 public:
  using value_type = T;
  /// Logits [batch, sequence, vocabulary].
  using input_type = xt::xtensor<T, 3>;
  /// Target ids [batch, sequence].
  using target_type = xt::xtensor<std::int64_t, 2>;

  /// The mean loss over all tokens; writes d(mean loss)/dy =
  /// (softmax(y) - onehot(t)) / (batch sequence) into dy (resized only when
  /// its shape differs from y's).
  double loss(const input_type& y, const target_type& t, input_type& dy) const;
  /// The mean loss over all tokens, no gradient.
  double value(const input_type& y, const target_type& t) const;

  /// "TokenCrossEntropy".
  std::string describe() const { return "TokenCrossEntropy"; }

 private:
  /// Checks that t is [batch, sequence] of y, that there is a token and a
  /// class, and that every target is in [0, V).
  void check(const input_type& y, const target_type& t, const char* where) const;
};

// ---------------------------------------------------------------------------

template <class T>
void TokenCrossEntropy<T>::check(const input_type& y, const target_type& t, const char* where) const {
  // Messages are built only on failure: a step allocates nothing.
  const std::size_t batch = y.shape()[0], sequence = y.shape()[1], classes = y.shape()[2];
  PARALLAX_CHECK(t.shape()[0] == batch && t.shape()[1] == sequence,
                 std::string("TokenCrossEntropy::") + where + "(): logits of shape " +
                     parallax::detail::shape_string(y.shape()) + " but targets of shape " +
                     parallax::detail::shape_string(t.shape()) + ", expected " +
                     parallax::detail::shape_string(std::array<std::size_t, 2>{batch, sequence}));
  PARALLAX_CHECK(batch * sequence > 0, std::string("TokenCrossEntropy::") + where + "(): there are no tokens (logits " +
                                           parallax::detail::shape_string(y.shape()) + ")");
  const std::int64_t* ids = t.data();
  for (std::size_t b = 0; b < batch; ++b)
    for (std::size_t s = 0; s < sequence; ++s) {
      const std::int64_t id = ids[b * sequence + s];
      PARALLAX_CHECK(detail::id_in_range(id, classes),
                     std::string("TokenCrossEntropy::") + where + "(): target " + std::to_string(id) +
                         " of token (" + std::to_string(b) + ", " + std::to_string(s) + ") is outside [0, " +
                         std::to_string(classes) + ")");
    }
}

template <class T>
double TokenCrossEntropy<T>::loss(const input_type& y, const target_type& t, input_type& dy) const {
  check(y, t, "loss");
  if (dy.shape() != y.shape()) dy.resize(y.shape());
  const std::size_t tokens = t.size(), classes = y.shape()[2];
  const double inv_tokens = 1.0 / static_cast<double>(tokens);
  double total = 0;
  for (std::size_t k = 0; k < tokens; ++k)
    total += detail::softmax_row_loss_and_gradient(y.data() + k * classes, classes,
                                                   static_cast<std::size_t>(t.data()[k]), inv_tokens,
                                                   dy.data() + k * classes);
  return total / static_cast<double>(tokens);  // exactly as value() computes it
}

template <class T>
double TokenCrossEntropy<T>::value(const input_type& y, const target_type& t) const {
  check(y, t, "value");
  const std::size_t tokens = t.size(), classes = y.shape()[2];
  double total = 0;
  for (std::size_t k = 0; k < tokens; ++k)
    total += detail::softmax_row_loss(y.data() + k * classes, classes, static_cast<std::size_t>(t.data()[k]));
  return total / static_cast<double>(tokens);
}

}  // namespace parallax::nn
