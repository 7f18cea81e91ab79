#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Which BLAS this process runs, which kernels it picked, and a warning when
/// OpenBLAS runs kernels older than the CPU can execute — because it does not
/// know the CPU (Debian bookworm's OpenBLAS 0.3.21 predates some recent ones
/// and falls back to older kernels) or because OPENBLAS_CORETYPE names an
/// older core. Measured on an AVX-512 machine (AMD Zen 5): single-thread
/// SGEMM about 115-125 GFLOP/s with the Haswell kernels, 190-230 with SkylakeX.
///
/// Detection is at run time and needs no link dependency: OpenBLAS is found
/// by its own entry points (openblas_get_corename, openblas_get_config)
/// among the symbols already loaded, so a program linked with BLIS or the
/// reference BLAS sees library "unknown" and no advice.
/// @code
///   boost::mpi::communicator world;
///   parallax::warn_if_slow_blas(world);   // rank 0, once: "parallax: warning: ..."
///   auto info = parallax::detect_blas();  // {"OpenBLAS", "Haswell", ...}
/// @endcode

#include <boost/mpi/communicator.hpp>

#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <ostream>
#include <string>
#include <string_view>

namespace parallax {

/// What detect_blas() found.
struct blas_info {
  /// "OpenBLAS", or "unknown" when no OpenBLAS is loaded in this process.
  std::string library;
  /// OpenBLAS's kernel family (openblas_get_corename(): "Haswell",
  /// "SkylakeX", ...); "" when unknown.
  std::string core;
  /// OpenBLAS's build description (openblas_get_config()); "" when unknown.
  std::string config;
  /// The CPU (and the OS) can run AVX-512 code as OpenBLAS's SkylakeX kernels
  /// use it: avx512f, avx512bw, avx512vl and avx512dq.
  bool cpu_avx512 = false;
  /// The CPU (and the OS) can run AVX2 code.
  bool cpu_avx2 = false;
  /// blas_advice(core, cpu_avx512, cpu_avx2), "" when nothing is to be
  /// gained; when OPENBLAS_CORETYPE is set (it forces the core), followed by
  /// " (the environment sets OPENBLAS_CORETYPE=<value>)".
  std::string advice;
};

/// Looks up the loaded BLAS and the CPU's vector extensions. Only libraries
/// already loaded are seen: call it from a program that links a BLAS (every
/// program using parallax's layers does). Local; no communication.
blas_info detect_blas();

/// Advice for a BLAS core on a CPU, or "" when the core fits the CPU (or is
/// not an x86 OpenBLAS core this function knows). Pure, for tests:
/// - an AVX-512 CPU running a core without AVX-512 kernels (Haswell, Zen,
///   Sandybridge, ...): set OPENBLAS_CORETYPE=SkylakeX;
/// - an AVX2 CPU without AVX-512 running an older core (Prescott, Core2,
///   Nehalem, Sandybridge, Bulldozer, ...): set OPENBLAS_CORETYPE=Haswell.
/// Core names compare case-insensitively.
std::string blas_advice(const std::string& core, bool avx512, bool avx2);

/// Prints detect_blas().advice to std::cerr as "parallax: warning: ...", on
/// rank 0 of `comm` only, at most once per process, and not at all when the
/// environment variable PARALLAX_NO_BLAS_WARNING is set. Local: no
/// communication, so ranks need not call it together.
void warn_if_slow_blas(const boost::mpi::communicator& comm);

namespace detail {

/// The warning line warn_if_slow_blas() prints for `advice` (ends in '\n');
/// "" for empty advice.
std::string blas_warning_text(const std::string& advice);

/// Writes blas_warning_text(advice) to `out` when `rank` is 0, `advice` is
/// not empty and `silenced` is false; returns whether it wrote.
bool print_blas_warning(std::ostream& out, int rank, const std::string& advice, bool silenced);

}  // namespace detail

// ---------------------------------------------------------------------------
// Implementation
// ---------------------------------------------------------------------------

namespace detail {

inline std::string lower_ascii(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

template <std::size_t N>
bool blas_core_in(const std::string& core, const std::array<std::string_view, N>& names) {
  return std::find(names.begin(), names.end(), core) != names.end();
}

// OpenBLAS core names (openblas_get_corename(), x86), lowercased, by the
// newest vector extension their kernels use. 0.3.21 runs Cooperlake kernels
// when asked for SapphireRapids; later versions have their own.
inline constexpr std::array<std::string_view, 3> blas_avx512_cores = {"skylakex", "cooperlake", "sapphirerapids"};
inline constexpr std::array<std::string_view, 3> blas_avx2_cores = {"haswell", "zen", "excavator"};
inline constexpr std::array<std::string_view, 20> blas_old_cores = {
    "katmai", "coppermine", "northwood", "prescott", "banias", "atom", "core2", "penryn", "dunnington", "nehalem",
    "athlon", "opteron", "opteron_sse3", "barcelona", "nano", "sandybridge", "bobcat", "bulldozer", "piledriver",
    "steamroller"};

inline std::string blas_warning_text(const std::string& advice) {
  if (advice.empty()) return {};
  return "parallax: warning: " + advice + "; PARALLAX_NO_BLAS_WARNING=1 silences this\n";
}

inline bool print_blas_warning(std::ostream& out, int rank, const std::string& advice, bool silenced) {
  if (rank != 0 || advice.empty() || silenced) return false;
  out << blas_warning_text(advice) << std::flush;
  return true;
}

}  // namespace detail

inline std::string blas_advice(const std::string& core, bool avx512, bool avx2) {
  const std::string name = detail::lower_ascii(core);
  if (name.empty() || detail::blas_core_in(name, detail::blas_avx512_cores)) return {};
  const bool avx2_core = detail::blas_core_in(name, detail::blas_avx2_cores);
  const bool old_core = detail::blas_core_in(name, detail::blas_old_cores);
  if (avx512 && (avx2_core || old_core))
    return "OpenBLAS runs its " + core +
           " kernels on this AVX-512 CPU: set OPENBLAS_CORETYPE=SkylakeX for about 2x faster GEMM";
  if (avx2 && old_core)
    return "OpenBLAS runs its " + core + " kernels on this AVX2 CPU: set OPENBLAS_CORETYPE=Haswell for faster GEMM";
  return {};
}

inline blas_info detect_blas() {
  blas_info info;
  // RTLD_DEFAULT searches every object loaded into the process; dlsym lives
  // in glibc itself since 2.34, so this needs no -ldl and no BLAS at link time.
  using text_function = char* (*)();
  void* corename = dlsym(RTLD_DEFAULT, "openblas_get_corename");
  void* config = dlsym(RTLD_DEFAULT, "openblas_get_config");
  if (corename != nullptr) {
    info.library = "OpenBLAS";
    if (const char* text = reinterpret_cast<text_function>(corename)()) info.core = text;
    if (config != nullptr)
      if (const char* text = reinterpret_cast<text_function>(config)()) info.config = text;
  } else {
    info.library = "unknown";
  }
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  info.cpu_avx2 = __builtin_cpu_supports("avx2");
  info.cpu_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                    __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#endif
  info.advice = blas_advice(info.core, info.cpu_avx512, info.cpu_avx2);
  // A forced core is a common cause (a site profile, a container image): say so.
  const char* forced = std::getenv("OPENBLAS_CORETYPE");
  if (!info.advice.empty() && forced != nullptr && *forced != '\0')
    info.advice += std::string(" (the environment sets OPENBLAS_CORETYPE=") + forced + ")";
  return info;
}

inline void warn_if_slow_blas(const boost::mpi::communicator& comm) {
  static std::once_flag once;
  std::call_once(once, [&] {
    if (comm.rank() != 0) return;
    const bool silenced = std::getenv("PARALLAX_NO_BLAS_WARNING") != nullptr;
    if (silenced) return;  // before detect_blas(): nothing to look up
    detail::print_blas_warning(std::cerr, 0, detect_blas().advice, silenced);
  });
}

}  // namespace parallax
