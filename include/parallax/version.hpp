#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The parallax version, as macros for the preprocessor and as a constexpr
/// value for code.

#include <string_view>

#define PARALLAX_VERSION_MAJOR 0
#define PARALLAX_VERSION_MINOR 1
#define PARALLAX_VERSION_PATCH 0
/// major * 10000 + minor * 100 + patch, for #if comparisons.
#define PARALLAX_VERSION (PARALLAX_VERSION_MAJOR * 10000 + PARALLAX_VERSION_MINOR * 100 + PARALLAX_VERSION_PATCH)

namespace parallax {

struct version_info {
  int major;
  int minor;
  int patch;
  std::string_view text;
};

/// The version of the headers in use.
constexpr version_info version() {
  return {PARALLAX_VERSION_MAJOR, PARALLAX_VERSION_MINOR, PARALLAX_VERSION_PATCH, "0.1.0"};
}

}  // namespace parallax
