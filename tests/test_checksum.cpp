// SPDX-License-Identifier: BSL-1.0
// Suite io: the checksums of checkpoint files (io/file.hpp). Format 1's
// CRC-32, now zlib's crc32_z, must be the CRC-32 parallax wrote those files
// with: published check values and Boost.CRC's crc_32_type at every length
// and alignment. Format 2's XXH3 (low 32 bits) against xxHash's one-shot
// call, and both checksums fed in pieces as the writer feeds them.

#include <parallax/io/file.hpp>

#include <doctest/doctest.h>

#include <boost/crc.hpp>
#include <xxhash.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>

namespace {

using parallax::io::checksum_kind;
using parallax::io::checksum_of;

std::uint32_t crc(std::string_view text) { return checksum_of({text.data(), text.size()}, checksum_kind::crc32); }

std::string pseudo_random(std::size_t n) {
  std::string data(n, '\0');
  unsigned x = 7;
  for (auto& b : data) b = static_cast<char>((x = x * 1103515245u + 12345u) >> 16);
  return data;
}

}  // namespace

TEST_CASE("checksum: zlib's CRC-32 gives the published check values") {
  CHECK(crc("123456789") == 0xCBF43926u);
  CHECK(crc("") == 0u);
  CHECK(crc("a") == 0xE8B7BE43u);
  CHECK(crc("abc") == 0x352441C2u);
  CHECK(crc("The quick brown fox jumps over the lazy dog") == 0x414FA339u);
  CHECK(crc(std::string(32, '\x00')) == 0x190A55ADu);
  CHECK(crc(std::string(32, '\xFF')) == 0xFF6CAB0Bu);
}

TEST_CASE("checksum: zlib's CRC-32 equals Boost.CRC's crc_32_type at every length and alignment") {
  const std::string data = pseudo_random(4096 + 16);
  for (std::size_t offset = 0; offset < 8; ++offset)
    for (std::size_t n : {0, 1, 3, 7, 8, 9, 15, 16, 17, 100, 4096}) {
      boost::crc_32_type reference;
      reference.process_bytes(data.data() + offset, n);
      CHECK(checksum_of({data.data() + offset, n}, checksum_kind::crc32) == reference.checksum());
    }
}

TEST_CASE("checksum: XXH3's low 32 bits, in one piece and fed in pieces") {
  const std::string data = pseudo_random(100'000);
  const auto whole = static_cast<std::uint32_t>(XXH3_64bits(data.data(), data.size()));
  CHECK(checksum_of(data, checksum_kind::xxh3_low32) == whole);
  CHECK(checksum_of(std::string_view("123456789"), checksum_kind::xxh3_low32) == 0x67A17DFFu);
  for (const checksum_kind kind : {checksum_kind::crc32, checksum_kind::xxh3_low32}) {
    for (std::size_t piece : {1u, 3u, 13u, 64u, 1000u, 70'000u}) {
      parallax::io::detail::payload_hasher hasher(kind);
      for (std::size_t at = 0; at < data.size(); at += piece)
        hasher.update(data.data() + at, std::min(piece, data.size() - at));
      CHECK(hasher.value() == checksum_of(data, kind));
    }
  }
}
