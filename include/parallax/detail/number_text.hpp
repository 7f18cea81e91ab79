#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Numbers in messages: the shortest text that reads back as the same value,
/// so that an error quotes exactly the value at fault ("0.1", "1e-08",
/// "-129", "3.4028235e+38") rather than std::to_string's six fixed decimals
/// ("0.000000" for 1e-8) or a stream's six significant digits; and the way
/// back, numbers in text files (MANIFEST, CSV, the .npy header).

#include <array>
#include <charconv>
#include <concepts>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>

namespace parallax::detail {

/// The shortest text that reads back as `value` (std::to_chars without a
/// format): integers in decimal, floating values in fixed or scientific form,
/// whichever is shorter; "inf", "-inf", "nan" for those.
template <class T>
  requires std::is_arithmetic_v<T> && (!std::same_as<T, bool>)
std::string number_text(T value);

/// Reads all of `text` as a T (std::from_chars: decimal; for floating types
/// also exponents, "inf" and "nan"; no leading '+' or spaces). False, with
/// `out` unchanged, when `text` is not such a number or the value does not
/// fit in T.
template <class T>
  requires std::is_arithmetic_v<T> && (!std::same_as<T, bool>)
bool parse_number(std::string_view text, T& out);

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

template <class T>
  requires std::is_arithmetic_v<T> && (!std::same_as<T, bool>)
bool parse_number(std::string_view text, T& out) {
  T value{};
  const char* last = text.data() + text.size();
  const auto [end, ec] = std::from_chars(text.data(), last, value);
  if (text.empty() || ec != std::errc{} || end != last) return false;
  out = value;
  return true;
}

}  // namespace parallax::detail
