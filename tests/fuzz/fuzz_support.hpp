#pragma once
// SPDX-License-Identifier: BSL-1.0
/// What every fuzz target shares: a bound on the memory one input may make a
/// reader allocate (counted through the sanitizer's allocation hooks), and
/// the rule that a reader fails only with parallax::error of the expected
/// kind; anything else aborts, which libFuzzer reports as a finding. For
/// readers that take a path, a scratch file holds the input.

#include <parallax/core/error.hpp>

#include <sanitizer/allocator_interface.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <initializer_list>
#include <string>
#include <utility>

namespace parallax::fuzz {

/// Bytes allocated and not yet freed, and the most of them since reset().
/// Signed: a block allocated before the hooks were installed (libFuzzer's,
/// another thread's) may be freed while an input runs and takes the count
/// below where it started; unsigned, it would wrap and read as a huge peak.
struct memory_meter {
  static inline std::atomic<std::int64_t> live{0};
  static inline std::atomic<std::int64_t> peak{0};
  static void reset() { peak = live.load(); }
};

inline void on_malloc(const volatile void*, std::size_t size) {
  const std::int64_t now = memory_meter::live += static_cast<std::int64_t>(size);
  std::int64_t seen = memory_meter::peak.load();
  while (now > seen && !memory_meter::peak.compare_exchange_weak(seen, now)) {
  }
}

inline void on_free(const volatile void* p) {
  if (p) memory_meter::live -= static_cast<std::int64_t>(__sanitizer_get_allocated_size(const_cast<const void*>(p)));
}

[[noreturn]] inline void finding(const char* what) {
  std::fprintf(stderr, "parallax fuzz finding: %s\n", what);
  std::abort();
}

/// A file in the temporary folder, named after the target and the process,
/// that holds the current input; removed when the target exits.
struct scratch_file {
  std::string path;
  explicit scratch_file(const std::string& name)
      : path((std::filesystem::temp_directory_path() /
              ("parallax-fuzz-" + std::to_string(::getpid()) + "-" + name))
                 .string()) {}
  ~scratch_file() { std::remove(path.c_str()); }
  scratch_file(const scratch_file&) = delete;
  scratch_file& operator=(const scratch_file&) = delete;
  /// Replaces the file's bytes by `size` bytes at `data`.
  void write(const std::uint8_t* data, std::size_t size) const {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) finding("cannot write the scratch file");
    const bool ok = size == 0 || std::fwrite(data, 1, size, f) == size;
    if (std::fclose(f) != 0 || !ok) finding("cannot write the scratch file");
  }
};

/// Runs `read()` on one input: it may return or throw parallax::error of a
/// kind in `expected`; any other exception, or more than `bound` bytes
/// allocated at once on top of what was live before, is a finding.
template <class F>
void check_reader(F&& read, std::initializer_list<error_kind> expected, std::size_t bound) {
  static const bool hooked = [] { return __sanitizer_install_malloc_and_free_hooks(on_malloc, on_free) != 0; }();
  if (!hooked) finding("cannot install the allocation hooks");
  const std::int64_t before = memory_meter::live.load();
  memory_meter::reset();
  try {
    std::forward<F>(read)();
  } catch (const error& e) {
    if (std::find(expected.begin(), expected.end(), e.kind()) == expected.end()) {
      std::fprintf(stderr, "%s\n", e.what());
      finding("an error of another kind");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    finding("an exception that is not parallax::error");
  } catch (...) {
    finding("an exception that is not a std::exception");
  }
  const std::int64_t grew = memory_meter::peak.load() - before;
  if (grew > static_cast<std::int64_t>(bound)) {
    std::fprintf(stderr, "%lld bytes allocated at the peak, the bound is %zu\n", static_cast<long long>(grew), bound);
    finding("more memory than the bound");
  }
}

}  // namespace parallax::fuzz
