#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Element types as numbers and words: the code that travels in tensor
/// headers, parameter signatures and checkpoint files, and its name for
/// messages ("float32", "int64").

#include <cstdint>
#include <string>
#include <type_traits>

namespace parallax::detail {

/// Identifies an element type on the wire and on disk: kind (1 float, 2
/// signed, 3 unsigned) and size in bytes.
template <class T>
constexpr std::uint64_t type_code() {
  const std::uint64_t kind = std::is_floating_point_v<T> ? 1 : std::is_signed_v<T> ? 2 : 3;
  return (kind << 8) | sizeof(T);
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

}  // namespace parallax::detail
