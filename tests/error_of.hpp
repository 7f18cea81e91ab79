// SPDX-License-Identifier: BSL-1.0
// For tests of failures: the message of the parallax::error that f throws,
// "no error" when it throws none, and "unexpected exception: ..." for any
// other exception (which a test then sees as a wrong message); its kind and
// message together; a check of both.
#pragma once

#include <parallax/core/error.hpp>

#include <doctest/doctest.h>

#include <exception>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const parallax::error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("unexpected exception: ") + e.what();
  }
  return "no error";
}

inline bool contains(const std::string& text, std::string_view part) { return text.find(part) != std::string::npos; }

/// The kind and message of the parallax::error that f throws; no kind when
/// it throws none or another exception (whose message then says so).
struct thrown {
  std::optional<parallax::error_kind> kind;
  std::string message;
};

template <class F>
thrown thrown_by(F&& f) {
  try {
    f();
  } catch (const parallax::error& e) {
    return {e.kind(), e.what()};
  } catch (const std::exception& e) {
    return {std::nullopt, std::string("unexpected exception: ") + e.what()};
  }
  return {std::nullopt, "no error"};
}

/// Checks that f throws a parallax::error of `kind` whose message holds
/// every part (the message is logged when a check fails).
template <class F>
void check_error(F&& f, parallax::error_kind kind, std::initializer_list<std::string> parts) {
  const thrown t = thrown_by(f);
  INFO(t.message);
  REQUIRE(t.kind.has_value());
  CHECK(*t.kind == kind);
  for (const auto& part : parts) CHECK(contains(t.message, part));
}
