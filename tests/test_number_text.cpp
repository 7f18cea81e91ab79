// SPDX-License-Identifier: BSL-1.0
// Suite core: numbers in messages (detail/number_text.hpp) read back as the
// value they quote; parse_number reads whole texts only.

#include <parallax/detail/number_text.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <limits>
#include <string>

using parallax::detail::number_text;

TEST_CASE("number_text: the shortest text that reads back as the value") {
  CHECK(number_text(0.1) == "0.1");
  CHECK(number_text(1e-8) == "1e-08");
  CHECK(number_text(-1.0) == "-1");
  CHECK(number_text(0.1f) == "0.1");  // a float's own shortest form, not the double's
  CHECK(number_text(std::numeric_limits<float>::max()) == "3.4028235e+38");
  CHECK(number_text(0.1 + 0.2) == "0.30000000000000004");
  CHECK(std::stod(number_text(0.1 + 0.2)) == 0.1 + 0.2);
  CHECK(number_text(std::numeric_limits<double>::infinity()) == "inf");
  CHECK(number_text(-std::numeric_limits<double>::infinity()) == "-inf");
}

TEST_CASE("number_text: integers of every width, in decimal") {
  CHECK(number_text(std::uint8_t{255}) == "255");
  CHECK(number_text(std::int8_t{-128}) == "-128");
  CHECK(number_text(std::int16_t{-300}) == "-300");
  CHECK(number_text(std::numeric_limits<std::int64_t>::min()) == "-9223372036854775808");
  CHECK(number_text(std::numeric_limits<std::uint64_t>::max()) == "18446744073709551615");
}

TEST_CASE("parse_number: the whole text as a number of the type, or false") {
  using parallax::detail::parse_number;
  double d = -1;
  CHECK(parse_number("0.30000000000000004", d));
  CHECK(d == 0.1 + 0.2);
  CHECK(parse_number("-1e-08", d));
  CHECK(d == -1e-8);
  CHECK(parse_number("inf", d));
  CHECK(d == std::numeric_limits<double>::infinity());
  float f = 0;
  CHECK(parse_number("0.1", f));
  CHECK(f == 0.1f);  // read as a float, not rounded twice through double
  CHECK_FALSE(parse_number("1e39", f));
  std::uint8_t u = 7;
  CHECK(parse_number("255", u));
  CHECK(u == 255);
  for (const char* bad : {"256", "-1", "", " 1", "1 ", "+1", "1.0", "0x10", "1e2"}) {
    INFO(bad);
    CHECK_FALSE(parse_number(bad, u));
    CHECK(u == 255);  // unchanged
  }
  std::int64_t i = 0;
  CHECK(parse_number("-9223372036854775808", i));
  CHECK(i == std::numeric_limits<std::int64_t>::min());
  CHECK_FALSE(parse_number("9223372036854775808", i));
  CHECK(parse_number("1.5", d));
  CHECK_FALSE(parse_number("1.5x", d));
  CHECK(d == 1.5);
}
