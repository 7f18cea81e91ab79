// SPDX-License-Identifier: BSL-1.0
// Suite io: byte order (detail/bytes.hpp), as the checkpoint header, gzip and
// IDX files lay their integers out.

#include <parallax/detail/bytes.hpp>

#include <doctest/doctest.h>

#include <array>
#include <cstdint>

using namespace parallax::detail;

TEST_CASE("bytes: little- and big-endian loads read the bytes in file order") {
  // One byte in front, so that every load below is unaligned.
  const std::array<std::uint8_t, 9> raw = {0xee, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef};
  const std::uint8_t* p = raw.data() + 1;
  CHECK(load_le16(p) == 0x2301u);
  CHECK(load_le32(p) == 0x67452301u);
  CHECK(load_le64(p) == 0xefcdab8967452301u);
  CHECK(load_be32(p) == 0x01234567u);
  CHECK(load_be<std::uint8_t>(p) == 0x01u);
  CHECK(load_be<std::uint16_t>(p) == 0x0123u);
  CHECK(load_be<std::uint64_t>(p) == 0x0123456789abcdefu);
  CHECK(load_le<std::uint8_t>(p) == 0x01u);
}

TEST_CASE("bytes: stores write least significant byte first and read back") {
  std::array<std::uint8_t, 13> out{};
  store_le32(out.data() + 1, 0x67452301u);
  store_le64(out.data() + 5, 0xefcdab8967452301u);
  const std::array<std::uint8_t, 13> expected = {0x00, 0x01, 0x23, 0x45, 0x67, 0x01, 0x23,
                                                 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef};
  CHECK(out == expected);
  CHECK(load_le32(out.data() + 1) == 0x67452301u);
  CHECK(load_le64(out.data() + 5) == 0xefcdab8967452301u);
  store_le<std::uint16_t>(out.data(), 0xbeefu);
  CHECK(out[0] == 0xef);
  CHECK(out[1] == 0xbe);
}
