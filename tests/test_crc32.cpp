// SPDX-License-Identifier: BSL-1.0
// Suite io: CRC-32 (detail/crc32.hpp), the checksum of gzip members and of
// checkpoint files: published check values, Boost.CRC's crc_32_type at every
// length and alignment, and data fed in pieces.

#include <parallax/detail/crc32.hpp>

#include <doctest/doctest.h>

#include <boost/crc.hpp>

#include <algorithm>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace {

using bytes = std::vector<std::uint8_t>;
using parallax::detail::crc32;

bytes to_bytes(std::string_view text) { return bytes(text.begin(), text.end()); }

bytes pseudo_random(std::size_t n) {
  bytes data(n);
  unsigned x = 7;
  for (auto& b : data) b = static_cast<std::uint8_t>((x = x * 1103515245u + 12345u) >> 16);
  return data;
}

}  // namespace

TEST_CASE("crc32: the published check values") {
  CHECK(crc32(to_bytes("123456789")) == 0xCBF43926u);
  CHECK(crc32(bytes{}) == 0u);
  CHECK(crc32(to_bytes("a")) == 0xE8B7BE43u);
  CHECK(crc32(to_bytes("abc")) == 0x352441C2u);
  CHECK(crc32(to_bytes("The quick brown fox jumps over the lazy dog")) == 0x414FA339u);
  CHECK(crc32(bytes(32, 0x00)) == 0x190A55ADu);
  CHECK(crc32(bytes(32, 0xFF)) == 0xFF6CAB0Bu);
}

TEST_CASE("crc32: equals Boost.CRC's crc_32_type at every length and alignment") {
  const bytes data = pseudo_random(4096 + 16);
  for (std::size_t offset = 0; offset < 8; ++offset)
    for (std::size_t n : {0, 1, 3, 7, 8, 9, 15, 16, 17, 100, 4096}) {
      boost::crc_32_type reference;
      reference.process_bytes(data.data() + offset, n);
      CHECK(crc32({data.data() + offset, n}) == reference.checksum());
    }
}

TEST_CASE("crc32: fed in pieces, it gives the checksum of the whole") {
  const bytes data = pseudo_random(4096 + 16);
  const std::span<const std::uint8_t> all(data);
  const std::uint32_t whole = crc32(all);
  for (std::size_t cut : {0u, 1u, 7u, 8u, 9u, 500u, 4111u, 4112u})
    CHECK(crc32(all.subspan(cut), crc32(all.first(cut))) == whole);
  // Uneven pieces, as the checkpoint writer feeds its buffer.
  for (std::size_t piece : {1u, 3u, 13u, 64u, 1000u}) {
    std::uint32_t crc = 0;
    for (std::size_t at = 0; at < data.size(); at += piece)
      crc = crc32(all.subspan(at, std::min(piece, data.size() - at)), crc);
    CHECK(crc == whole);
  }
}
