// SPDX-License-Identifier: BSL-1.0
// Configure-time probe: clang++ links a libFuzzer target under ASan + UBSan.
#include <cstddef>
#include <cstdint>
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t*, std::size_t) { return 0; }
