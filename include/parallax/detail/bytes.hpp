#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Byte order: the one place where parallax's file formats turn bytes into
/// unsigned integers and back — little-endian for gzip (RFC 1952) and the
/// checkpoint header (io/file.hpp) and .npy (data/npy.hpp), big-endian for
/// IDX (data/idx.hpp).

#include <bit>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace parallax::detail {

/// The unsigned integer of N bytes (1, 2, 4 or 8): what an element of that
/// size is loaded as before std::bit_cast makes it a float or a signed value.
template <std::size_t N>
  requires(N == 1 || N == 2 || N == 4 || N == 8)
using uint_of_size = std::conditional_t<N == 1, std::uint8_t,
                     std::conditional_t<N == 2, std::uint16_t,
                     std::conditional_t<N == 4, std::uint32_t, std::uint64_t>>>;

/// The sizeof(U) bytes at `p` read as a little-endian / big-endian U. `p`
/// needs no alignment.
template <std::unsigned_integral U>
U load_le(const std::uint8_t* p) noexcept;
template <std::unsigned_integral U>
U load_be(const std::uint8_t* p) noexcept;

/// Writes `v` to the sizeof(U) bytes at `p`, least significant byte first.
template <std::unsigned_integral U>
void store_le(std::uint8_t* p, U v) noexcept;

/// The widths the formats use, by name.
std::uint16_t load_le16(const std::uint8_t* p) noexcept;
std::uint32_t load_le32(const std::uint8_t* p) noexcept;
std::uint64_t load_le64(const std::uint8_t* p) noexcept;
std::uint32_t load_be32(const std::uint8_t* p) noexcept;
void store_le32(std::uint8_t* p, std::uint32_t v) noexcept;
void store_le64(std::uint8_t* p, std::uint64_t v) noexcept;

// ---------------------------------------------------------------------------
// Implementation
// ---------------------------------------------------------------------------

// On a little-endian machine a little-endian value is a plain unaligned
// load: memcpy says so to the compiler. The byte loops are the portable
// definition; compilers turn the big-endian one into a load and a byte swap.

template <std::unsigned_integral U>
U load_le(const std::uint8_t* p) noexcept {
  U v = 0;
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(&v, p, sizeof v);
  } else {
    for (std::size_t i = 0; i < sizeof v; ++i) v = static_cast<U>(v | U{p[i]} << (8 * i));
  }
  return v;
}

template <std::unsigned_integral U>
U load_be(const std::uint8_t* p) noexcept {
  U v = 0;
  for (std::size_t i = 0; i < sizeof v; ++i) v = static_cast<U>(U(v << 8) | p[i]);
  return v;
}

template <std::unsigned_integral U>
void store_le(std::uint8_t* p, U v) noexcept {
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(p, &v, sizeof v);
  } else {
    for (std::size_t i = 0; i < sizeof v; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
  }
}

inline std::uint16_t load_le16(const std::uint8_t* p) noexcept { return load_le<std::uint16_t>(p); }
inline std::uint32_t load_le32(const std::uint8_t* p) noexcept { return load_le<std::uint32_t>(p); }
inline std::uint64_t load_le64(const std::uint8_t* p) noexcept { return load_le<std::uint64_t>(p); }
inline std::uint32_t load_be32(const std::uint8_t* p) noexcept { return load_be<std::uint32_t>(p); }
inline void store_le32(std::uint8_t* p, std::uint32_t v) noexcept { store_le(p, v); }
inline void store_le64(std::uint8_t* p, std::uint64_t v) noexcept { store_le(p, v); }

}  // namespace parallax::detail
