#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Global-norm gradient clipping (PyTorch's clip_grad_norm_ rule), split into
/// its pieces so that a pipeline can sum the squared norm over its stages
/// before taking the root:
/// @code
///   double sq = optim::squared_norm<T>(local_grads);        // each stage
///   allreduce_sum(stages, std::span<double>(&sq, 1));         // core/comm.hpp
///   double f = optim::clip_factor(std::sqrt(sq), max_norm);   // same on every stage
///   if (f < 1) optim::scale<T>(local_grads, static_cast<T>(f));
/// @endcode
/// T is named explicitly (`squared_norm<float>(grads)`) because a
/// std::vector of spans converts to the span of spans these take.

#include <parallax/core/error.hpp>
#include <parallax/optim/optimizer.hpp>

#include <cmath>
#include <concepts>
#include <cstddef>
#include <span>
#include <string>

namespace parallax::optim {

/// Sum of squares of all gradient elements (local; a pipeline sums it across
/// stages before sqrt). Accumulated in double, also for float gradients.
template <std::floating_point T>
double squared_norm(std::span<const std::span<const T>> grads);

/// Scales every gradient by factor.
template <std::floating_point T>
void scale(std::span<const std::span<T>> grads, T factor);

/// PyTorch's clip_grad_norm_ rule: factor = max_norm / (total_norm + 1e-6)
/// when that is < 1, else 1. Throws parallax::error unless max_norm is finite
/// and > 0, or when total_norm is negative. A NaN total_norm gives 1: finding
/// non-finite gradients is the caller's job.
double clip_factor(double total_norm, double max_norm);

/// Local convenience: computes the norm of grads, scales them if needed,
/// returns the norm before clipping.
template <std::floating_point T>
double clip_by_global_norm(std::span<const std::span<T>> grads, double max_norm);

namespace detail {

/// squared_norm over spans of T or of const T.
template <class Spans>
double squared_norm_of(const Spans& grads);

}  // namespace detail

// ---------------------------------------------------------------------------
// Implementation
// ---------------------------------------------------------------------------

namespace detail {

template <class Spans>
double squared_norm_of(const Spans& grads) {
  double total = 0;
  for (const auto& g : grads) {
    const auto* x = g.data();
    const std::size_t n = g.size();
    double sum = 0;
    for (std::size_t i = 0; i < n; ++i) sum += static_cast<double>(x[i]) * static_cast<double>(x[i]);
    total += sum;
  }
  return total;
}

}  // namespace detail

template <std::floating_point T>
double squared_norm(std::span<const std::span<const T>> grads) {
  return detail::squared_norm_of(grads);
}

template <std::floating_point T>
void scale(std::span<const std::span<T>> grads, T factor) {
  for (const std::span<T>& g : grads) {
    T* x = g.data();
    const std::size_t n = g.size();
    for (std::size_t i = 0; i < n; ++i) x[i] *= factor;
  }
}

inline double clip_factor(double total_norm, double max_norm) {
  PARALLAX_CHECK(std::isfinite(max_norm) && max_norm > 0,
                 "clip_factor(): max_norm = " + parallax::detail::number_text(max_norm) + " must be finite and > 0");
  PARALLAX_CHECK(!(total_norm < 0), "clip_factor(): total_norm = " + parallax::detail::number_text(total_norm) + " is negative");
  const double factor = max_norm / (total_norm + 1e-6);
  return factor < 1 ? factor : 1.0;
}

template <std::floating_point T>
double clip_by_global_norm(std::span<const std::span<T>> grads, double max_norm) {
  PARALLAX_CHECK(std::isfinite(max_norm) && max_norm > 0,
                 "clip_by_global_norm(): max_norm = " + parallax::detail::number_text(max_norm) + " must be finite and > 0");
  const double norm = std::sqrt(detail::squared_norm_of(grads));
  const double factor = clip_factor(norm, max_norm);
  if (factor < 1) scale(grads, static_cast<T>(factor));
  return norm;
}

}  // namespace parallax::optim
