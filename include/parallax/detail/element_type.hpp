#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Element types as numbers and words: the code that travels in tensor
/// headers, parameter signatures and checkpoint files, its name for
/// messages ("float32", "int64"), and whether a value read from a file
/// survives conversion to the element type asked for.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

namespace parallax::detail {

/// The kinds of element type a type code tells apart.
enum class type_kind : std::uint64_t { floating = 1, signed_integer = 2, unsigned_integer = 3 };

/// The type code of an element of `kind` and `size` bytes (a file's element
/// type, known only when it is read).
constexpr std::uint64_t make_type_code(type_kind kind, std::size_t size) {
  return (static_cast<std::uint64_t>(kind) << 8) | size;
}

/// Identifies an element type on the wire and on disk: kind (1 float, 2
/// signed, 3 unsigned) and size in bytes.
template <class T>
constexpr std::uint64_t type_code() {
  return make_type_code(std::is_floating_point_v<T> ? type_kind::floating
                        : std::is_signed_v<T>       ? type_kind::signed_integer
                                                    : type_kind::unsigned_integer,
                        sizeof(T));
}

/// "float32", "int8", "uint64", ... for a type code.
inline std::string type_code_name(std::uint64_t code) {
  const char* kinds[] = {"?", "float", "int", "uint"};
  const auto kind = (code >> 8) < 4 ? (code >> 8) : 0;
  return std::string(kinds[kind]) + std::to_string(8 * (code & 0xff));
}

/// The name of an arithmetic element type for messages.
template <class T>
std::string type_name() {
  return type_code_name(type_code<T>());
}

/// Whether `value` survives conversion to T: an integer must lie in T's
/// range; a floating value going to an integer type must be finite with its
/// truncation in range; a finite floating value going to a narrower floating
/// type must not exceed its largest value. Integers always convert to
/// floating types (rounding if need be).
template <class T, class S>
bool fits(S value) {
  if constexpr (std::is_integral_v<S> && std::is_integral_v<T>) {
    constexpr auto max = static_cast<std::uintmax_t>(std::numeric_limits<T>::max());
    if constexpr (std::is_signed_v<S>) {
      const auto v = static_cast<std::intmax_t>(value);
      if (v < 0) return std::is_signed_v<T> && v >= static_cast<std::intmax_t>(std::numeric_limits<T>::min());
      return static_cast<std::uintmax_t>(v) <= max;
    } else {
      return static_cast<std::uintmax_t>(value) <= max;
    }
  } else if constexpr (std::is_integral_v<S>) {
    return true;
  } else if constexpr (std::is_floating_point_v<T>) {
    if constexpr (sizeof(T) >= sizeof(S)) return true;
    else return !std::isfinite(value) || std::fabs(value) <= static_cast<S>(std::numeric_limits<T>::max());
  } else {
    if (!std::isfinite(value)) return false;
    // 2^digits is exact in long double for every integer type, and every
    // integer in [-2^digits, 2^digits) (signed) or [0, 2^digits) (unsigned)
    // is representable.
    const long double t = std::trunc(static_cast<long double>(value));
    const long double bound = std::ldexp(1.0L, std::numeric_limits<T>::digits);
    return t < bound && (std::is_signed_v<T> ? t >= -bound : t >= 0.0L);
  }
}

/// As fits(), and a floating value going to an integer type must be a whole
/// number: a class label of 3.0 is 3, one of 3.5 is refused, not truncated.
template <class T, class S>
bool fits_exactly(S value) {
  if constexpr (std::is_floating_point_v<S> && std::is_integral_v<T>) {
    if (!std::isfinite(value) || std::trunc(value) != value) return false;
  }
  return fits<T>(value);
}

}  // namespace parallax::detail
