// SPDX-License-Identifier: BSL-1.0
// Suite core: parallax::error and PARALLAX_CHECK without MPI, and the version.

#include <parallax/core/error.hpp>
#include <parallax/version.hpp>

#include <doctest/doctest.h>

#include <string>
#include <vector>

TEST_CASE("error: PARALLAX_CHECK passes silently when the condition holds") {
  CHECK_NOTHROW(PARALLAX_CHECK(1 + 1 == 2, "never"));
}

TEST_CASE("error: PARALLAX_CHECK throws parallax::error with the message") {
  // Without MPI running there is no rank to name.
  CHECK_THROWS_WITH_AS(PARALLAX_CHECK(false, "f(): bad input"), "f(): bad input", parallax::error);
  const std::string built = "g(): size " + std::to_string(3) + " is odd";
  CHECK_THROWS_WITH_AS(PARALLAX_CHECK(3 % 2 == 0, built), "g(): size 3 is odd", parallax::error);
  try {
    PARALLAX_CHECK(false, "h(): x");
  } catch (const std::runtime_error& e) {  // catchable as its base
    CHECK(std::string(e.what()) == "h(): x");
  }
}

TEST_CASE("error: an error is a value: kind, ranks and cause, with the text for people") {
  const parallax::error one(parallax::error_kind::damaged_file, "read(): bad checksum", {2});
  CHECK(one.kind() == parallax::error_kind::damaged_file);
  CHECK(one.ranks() == std::vector<int>{2});
  CHECK(one.cause() == "read(): bad checksum");
  CHECK(std::string(one.what()) == "read(): bad checksum [rank 2]");
  const parallax::error many(parallax::error_kind::io, "open(): no such file", {0, 3});
  CHECK(std::string(many.what()) == "open(): no such file [ranks 0, 3]");
  const parallax::error plain("f(): bad");
  CHECK(plain.kind() == parallax::error_kind::invalid_argument);
  CHECK(plain.ranks().empty());
  CHECK(std::string(plain.what()) == "f(): bad");
  // Without MPI, a checked failure names no rank.
  try {
    PARALLAX_CHECK_KIND(false, parallax::error_kind::incompatible, "g(): other model");
    FAIL("no throw");
  } catch (const parallax::error& e) {
    CHECK(e.kind() == parallax::error_kind::incompatible);
    CHECK(e.ranks().empty());
    CHECK(parallax::detail::cause_of(e) == "g(): other model");
  }
  CHECK(parallax::kind_name(parallax::error_kind::nonfinite) == "non-finite");
}

TEST_CASE("error: PARALLAX_CHECK evaluates its condition once") {
  int calls = 0;
  auto count = [&] { return ++calls > 0; };
  PARALLAX_CHECK(count(), "never");
  CHECK(calls == 1);
}

TEST_CASE("version: macros and constexpr value agree") {
  constexpr auto v = parallax::version();
  static_assert(v.major == PARALLAX_VERSION_MAJOR && v.minor == PARALLAX_VERSION_MINOR &&
                v.patch == PARALLAX_VERSION_PATCH);
  CHECK(v.text == std::to_string(v.major) + "." + std::to_string(v.minor) + "." + std::to_string(v.patch));
  CHECK(PARALLAX_VERSION == v.major * 10000 + v.minor * 100 + v.patch);
#ifdef PARALLAX_MESON_VERSION
  CHECK(v.text == PARALLAX_MESON_VERSION);  // the header and meson.build say the same
#endif
}
