// SPDX-License-Identifier: BSL-1.0
// For tests of failures: the message of the parallax::error that f throws,
// "no error" when it throws none, and "unexpected exception: ..." for any
// other exception (which a test then sees as a wrong message).
#pragma once

#include <parallax/core/error.hpp>

#include <exception>
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
