// SPDX-License-Identifier: BSL-1.0
// Fuzz target: the text of a checkpoint MANIFEST (the payload of its file;
// the container around it is the part files' and fuzz_checkpoint_file's).
// A manifest that parses writes back a text that parses to the same
// manifest.

#include <parallax/io/checkpoint_format.hpp>

#include "fuzz_support.hpp"

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace parallax;
  const std::string text(reinterpret_cast<const char*>(data), size);
  fuzz::check_reader(
      [&] {
        const auto m = io::detail::manifest::parse(text, "fuzz");
        const auto again = io::detail::manifest::parse(m.text(), "fuzz again");
        bool same = again.trainer == m.trainer && again.element == m.element && again.layers == m.layers &&
                    again.step == m.step && again.parts.size() == m.parts.size();
        for (std::size_t i = 0; same && i < m.parts.size(); ++i)
          same = again.parts[i].file == m.parts[i].file && again.parts[i].layer_begin == m.parts[i].layer_begin &&
                 again.parts[i].layer_end == m.parts[i].layer_end;
        if (!same) fuzz::finding("a manifest that does not read back as itself");
      },
      {error_kind::damaged_file}, 8 * size + (64 << 10));
  return 0;
}
