#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Small deterministic random numbers: a key mixer (splitmix64 finaliser) and
/// a stream generator (xoshiro256**) seeded from mixed keys. Everything random
/// in parallax (initialisation, shuffles, dropout masks) derives from
/// (seed, keys...) only, so results never depend on the rank count, the
/// partition or the order in which objects are built.

#include <cmath>
#include <cstddef>
#include <cstring>
#include <vector>
#include <cstdint>
#include <limits>
#include <numbers>

namespace parallax::detail {

/// splitmix64's finaliser: a bijective mix of 64 bits.
constexpr std::uint64_t mix64(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/// One 64-bit key from a seed and any number of further keys.
template <class... Keys>
constexpr std::uint64_t key(std::uint64_t seed, Keys... keys) {
  std::uint64_t h = mix64(seed);
  ((h = mix64(h ^ static_cast<std::uint64_t>(keys))), ...);
  return h;
}

/// A fast 64-bit hash of a buffer, eight bytes at a time (not for security:
/// to notice that ranks hold different data).
inline std::uint64_t content_hash(const void* data, std::size_t bytes, std::uint64_t seed = 0x9e3779b97f4a7c15ULL) {
  const auto* p = static_cast<const unsigned char*>(data);
  std::uint64_t h = seed ^ bytes;
  std::size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * 0xff51afd7ed558ccdULL;
    h ^= h >> 32;
  }
  for (; i < bytes; ++i) h = (h ^ p[i]) * 0x100000001b3ULL;
  return mix64(h);
}

/// content_hash of a list of words (plans, signatures, partitions).
inline std::uint64_t words_hash(const std::vector<std::uint64_t>& words) {
  return content_hash(words.data(), words.size() * sizeof(std::uint64_t));
}

/// xoshiro256**: a fast generator with a 2^256 period; satisfies
/// std::uniform_random_bit_generator.
class rng {
 public:
  using result_type = std::uint64_t;
  explicit rng(std::uint64_t seed) {
    std::uint64_t z = seed;
    for (auto& s : s_) s = z = mix64(z);
  }
  static constexpr result_type min() { return 0; }
  static constexpr result_type max() { return std::numeric_limits<result_type>::max(); }
  result_type operator()() {
    const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  /// Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>((*this)() >> 11) * 0x1.0p-53; }
  /// Uniform integer in [0, n) without modulo bias (n > 0).
  std::uint64_t below(std::uint64_t n) {
    const std::uint64_t limit = max() - max() % n;
    std::uint64_t x;
    do x = (*this)();
    while (x >= limit);
    return x % n;
  }
  /// Standard normal (Box-Muller; one value per call).
  double normal() {
    double u1 = uniform();
    while (u1 <= 0.0) u1 = uniform();
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
  }

 private:
  static constexpr std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::uint64_t s_[4];
};

/// Fisher-Yates shuffle driven by rng (the same on every platform, unlike
/// std::shuffle, whose algorithm the standard leaves open).
template <class It>
void shuffle(It first, It last, rng& g) {
  const auto n = static_cast<std::uint64_t>(last - first);
  for (std::uint64_t i = n; i > 1; --i) {
    const auto j = g.below(i);
    std::swap(first[static_cast<std::ptrdiff_t>(i - 1)], first[static_cast<std::ptrdiff_t>(j)]);
  }
}

}  // namespace parallax::detail
