// SPDX-License-Identifier: BSL-1.0
// BLAS detection: the advice table, detect_blas() against /proc/self/maps and
// /proc/cpuinfo read independently, and the warning's rank and silence rules.
#include <parallax/core/blas.hpp>
#include <parallax/detail/xtensor.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// The CPU flags of the first processor in /proc/cpuinfo ("flags : a b c").
std::set<std::string> cpuinfo_flags() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::istringstream words(line.substr(colon + 1));
    std::set<std::string> flags;
    for (std::string w; words >> w;) flags.insert(w);
    return flags;
  }
  return {};
}

// Whether a shared object whose file name contains `name` is mapped into
// this process.
bool mapped(const std::string& name) {
  std::ifstream in("/proc/self/maps");
  std::string line;
  while (std::getline(in, line))
    if (line.find(name) != std::string::npos) return true;
  return false;
}

// A 2x2 product through BLAS, so the test binary links (and loads) it even
// under --as-needed; returns c[0][0] of [[1,2],[3,4]] squared.
float small_gemm() {
  xt::xtensor<float, 2> a = {{1, 2}, {3, 4}};
  xt::xtensor<float, 2> c = xt::zeros<float>({2, 2});
  xt::blas::gemm(a, a, c, false, false, 1.0f, 0.0f);
  return c(0, 0);
}

}  // namespace

TEST_CASE("blas_advice: AVX-512 and AVX2 CPUs against OpenBLAS cores") {
  // suggest: the OPENBLAS_CORETYPE the advice must name; "" means no advice.
  struct row {
    const char* core;
    bool avx512, avx2;
    const char* suggest;
  };
  const row table[] = {
      // An AVX-512 CPU (Zen 4/5, Skylake-SP and later) on non-AVX-512 kernels.
      {"Haswell", true, true, "SkylakeX"},
      {"Zen", true, true, "SkylakeX"},
      {"Sandybridge", true, true, "SkylakeX"},
      {"Prescott", true, true, "SkylakeX"},
      {"Nehalem", true, true, "SkylakeX"},
      {"HASWELL", true, true, "SkylakeX"},  // names compare case-insensitively
      // ... and on AVX-512 kernels: fine.
      {"SkylakeX", true, true, ""},
      {"Cooperlake", true, true, ""},
      {"CooperLake", true, true, ""},
      {"SapphireRapids", true, true, ""},
      {"skylakex", true, true, ""},
      // An AVX2 CPU without AVX-512 (Zen 1-3, Haswell..Alder Lake).
      {"Haswell", false, true, ""},
      {"Zen", false, true, ""},
      {"Prescott", false, true, "Haswell"},
      {"Core2", false, true, "Haswell"},
      {"Nehalem", false, true, "Haswell"},
      {"Sandybridge", false, true, "Haswell"},
      {"Bulldozer", false, true, "Haswell"},
      // No AVX2: nothing better to suggest.
      {"Prescott", false, false, ""},
      {"Sandybridge", false, false, ""},
      // Unknown BLAS or a core this table does not know (another ISA): silent.
      {"", true, true, ""},
      {"", false, true, ""},
      {"NEOVERSEN1", true, true, ""},
      {"armv8", false, false, ""},
  };
  for (const auto& r : table) {
    CAPTURE(r.core);
    CAPTURE(r.avx512);
    CAPTURE(r.avx2);
    const std::string advice = parallax::blas_advice(r.core, r.avx512, r.avx2);
    const std::string suggest = r.suggest;
    if (suggest.empty()) {
      CHECK(advice.empty());
    } else {
      CHECK(advice.find("OPENBLAS_CORETYPE=" + suggest) != std::string::npos);
      CHECK(advice.find(std::string("its ") + r.core + " kernels") != std::string::npos);
      CHECK(advice.find(r.avx512 ? "AVX-512 CPU" : "AVX2 CPU") != std::string::npos);
    }
  }
}

TEST_CASE("detect_blas: agrees with the loaded libraries and /proc/cpuinfo") {
  REQUIRE(small_gemm() == doctest::Approx(7.0f));
  const bool openblas = mapped("libopenblas");
  const bool blis = mapped("libblis");
  REQUIRE(openblas != blis);  // the test binary links exactly one BLAS (meson option blas)

  const parallax::blas_info info = parallax::detect_blas();
  if (openblas) {
    CHECK(info.library == "OpenBLAS");
    CHECK_FALSE(info.core.empty());
    CHECK(info.config.find("OpenBLAS") != std::string::npos);
    CHECK(lower(info.config).find(lower(info.core)) != std::string::npos);
    // A core forced through the environment is the core OpenBLAS reports.
    if (const char* forced = std::getenv("OPENBLAS_CORETYPE")) {
      const std::string f = lower(forced);
      if (f == "haswell" || f == "skylakex") CHECK(lower(info.core) == f);
    }
  } else {
    CHECK(info.library == "unknown");
    CHECK(info.core.empty());
    CHECK(info.config.empty());
  }
  const std::string advice = parallax::blas_advice(info.core, info.cpu_avx512, info.cpu_avx2);
  const char* forced = std::getenv("OPENBLAS_CORETYPE");
  if (advice.empty() || forced == nullptr || *forced == '\0') {
    CHECK(info.advice == advice);
  } else {
    CHECK(info.advice == advice + " (the environment sets OPENBLAS_CORETYPE=" + forced + ")");
  }

  const auto flags = cpuinfo_flags();
  if (!flags.empty()) {
    const bool avx512 = flags.count("avx512f") && flags.count("avx512bw") && flags.count("avx512vl") &&
                        flags.count("avx512dq");
    CHECK(info.cpu_avx512 == avx512);
    CHECK(info.cpu_avx2 == (flags.count("avx2") > 0));
    MESSAGE("BLAS " << info.library << "/" << info.core << ", avx512 " << avx512 << ", avx2 "
                    << (flags.count("avx2") > 0) << (info.advice.empty() ? "" : ": " + info.advice));
  }
}

TEST_CASE("warn_if_slow_blas: prints on rank 0 only, with advice, unless silenced") {
  const std::string advice = parallax::blas_advice("Haswell", true, true);
  REQUIRE_FALSE(advice.empty());
  struct row {
    int rank;
    std::string advice;
    bool silenced;
    bool prints;
  };
  const row table[] = {
      {0, advice, false, true},
      {1, advice, false, false},
      {3, advice, false, false},
      {0, advice, true, false},
      {0, "", false, false},
  };
  for (const auto& r : table) {
    CAPTURE(r.rank);
    CAPTURE(r.silenced);
    std::ostringstream out;
    CHECK(parallax::detail::print_blas_warning(out, r.rank, r.advice, r.silenced) == r.prints);
    if (r.prints) {
      CHECK(out.str() == "parallax: warning: " + advice + "; PARALLAX_NO_BLAS_WARNING=1 silences this\n");
    } else {
      CHECK(out.str().empty());
    }
  }
}
