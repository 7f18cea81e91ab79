// SPDX-License-Identifier: BSL-1.0
// Compares a layer's output with values written down from PyTorch's, NaN and
// infinities included: `CHECK(nonfinite::mismatch(y, expected) == "")` names
// the first element that differs.
#pragma once

#include <parallax/detail/xtensor.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <initializer_list>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace nonfinite {

inline constexpr double nan = std::numeric_limits<double>::quiet_NaN();
inline constexpr double inf = std::numeric_limits<double>::infinity();

/// Empty when `actual` has `expected.size()` elements and each is NaN where
/// expected is NaN, the same infinity where it is infinite, and within
/// tol * max(1, |expected|) elsewhere (tol = 0: exactly equal); otherwise the
/// first element that differs.
template <class Tensor>
std::string mismatch(const Tensor& actual, const std::vector<double>& expected, double tol = 0) {
  if (actual.size() != expected.size())
    return "size " + std::to_string(actual.size()) + ", expected " + std::to_string(expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const double a = static_cast<double>(actual.data()[i]), e = expected[i];
    const bool same = std::isnan(e)   ? std::isnan(a)
                      : std::isinf(e) ? a == e
                                      : std::isfinite(a) && std::abs(a - e) <= tol * std::max(1.0, std::abs(e));
    if (!same) return "element " + std::to_string(i) + " is " + std::to_string(a) + ", expected " + std::to_string(e);
  }
  return "";
}

/// A tensor of `shape` holding `values` (row-major), converted to T.
template <class T, std::size_t N>
xt::xtensor<T, N> tensor(std::array<std::size_t, N> shape, std::initializer_list<double> values) {
  xt::xtensor<T, N> t(shape);
  if (values.size() != t.size()) throw std::logic_error("nonfinite::tensor(): values do not fill the shape");
  std::size_t i = 0;
  for (double v : values) t.data()[i++] = static_cast<T>(v);
  return t;
}

}  // namespace nonfinite
