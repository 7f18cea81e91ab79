#pragma once
// SPDX-License-Identifier: BSL-1.0
/// erff and expf over blocks of 16 floats, through glibc's vector math
/// library (libmvec, glibc 2.35 and later on x86-64, GCC) when the compiler
/// vectorizes the block, else the scalar functions. Every element goes
/// through the same code whatever its position: a tail shorter than a block
/// is padded to a whole block, so an element's bits do not depend on where
/// it sits in a batch (a data-parallel shard, a micro-batch).

#include <algorithm>
#include <cmath>
#include <cstddef>

namespace parallax::nn::detail {

/// Values per block: a whole number of vectors at every x86-64 width.
inline constexpr std::size_t math_block = 16;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__) && \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35))
// The scalar symbols, declared under other names with their libmvec vector
// variants (_ZGV*_erff, _ZGV*_expf): only the loops below use them, so a
// program's own erff and expf calls are untouched.
extern "C" float parallax_block_erff(float) noexcept __asm__("erff") __attribute__((simd("notinbranch"), const));
extern "C" float parallax_block_expf(float) noexcept __asm__("expf") __attribute__((simd("notinbranch"), const));
inline float block_erf(float x) { return parallax_block_erff(x); }
inline float block_exp(float x) { return parallax_block_expf(x); }
#else
inline float block_erf(float x) { return std::erf(x); }
inline float block_exp(float x) { return std::exp(x); }
#endif

/// out[k] = exp(in[k]) for one block of math_block values (out may be in);
/// never inlined, so every block runs the same code.
[[gnu::noinline]] inline void exp_block(float* out, const float* in) {
  for (std::size_t k = 0; k < math_block; ++k) out[k] = block_exp(in[k]);
}

/// block(out, in...) on whole blocks of math_block values of n, then on the
/// tail copied into a zero-padded block: `in` read, `out` written. Pass a
/// function that is never inlined, so that both calls run the same code.
template <class Block, class... Inputs>
void for_each_block(std::size_t n, Block&& block, float* out, const Inputs*... in) {
  std::size_t i = 0;
  for (; i + math_block <= n; i += math_block) block(out + i, (in + i)...);
  if (i == n) return;
  const std::size_t rest = n - i;
  float tail_out[math_block];
  auto pad = [&](const float* from) {
    struct padded {
      float v[math_block] = {};
    } p;
    std::copy(from + i, from + n, p.v);
    return p;
  };
  [&](auto... padded_in) {
    block(tail_out, padded_in.v...);
    std::copy(tail_out, tail_out + rest, out + i);
  }(pad(in)...);
}

}  // namespace parallax::nn::detail
