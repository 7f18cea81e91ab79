#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Numbers in messages: the shortest text that reads back as the same value,
/// so that an error quotes exactly the value at fault ("0.1", "1e-08",
/// "-129", "3.4028235e+38") rather than std::to_string's six fixed decimals
/// ("0.000000" for 1e-8) or a stream's six significant digits.

#include <array>
#include <charconv>
#include <concepts>
#include <string>
#include <type_traits>

namespace parallax::detail {

/// The shortest text that reads back as `value` (std::to_chars without a
/// format): integers in decimal, floating values in fixed or scientific form,
/// whichever is shorter; "inf", "-inf", "nan" for those.
template <class T>
  requires std::is_arithmetic_v<T> && (!std::same_as<T, bool>)
std::string number_text(T value);

// ---------------------------------------------------------------------------
// Implementation
// ---------------------------------------------------------------------------

template <class T>
  requires std::is_arithmetic_v<T> && (!std::same_as<T, bool>)
std::string number_text(T value) {
  // 64 characters hold the shortest form of any integer or floating value
  // (even a quadruple-precision long double needs fewer than 50), so
  // to_chars cannot run out of room.
  std::array<char, 64> text{};
  const auto end = std::to_chars(text.data(), text.data() + text.size(), value).ptr;
  return std::string(text.data(), end);
}

}  // namespace parallax::detail
