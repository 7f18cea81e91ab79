// SPDX-License-Identifier: BSL-1.0
// A doctest listener shared by the MPI and plain test mains: records, in run
// order, whether each test case passed. Register it in the main's file with
//   DOCTEST_REGISTER_LISTENER("parallax_cases", 1, case_listener);
#pragma once

#include <doctest/doctest.h>

#include <vector>

/// 1 for a failed test case, 0 for a passed one, in run order.
inline std::vector<int>& case_failures() {
  static std::vector<int> failed_per_case;
  return failed_per_case;
}

struct case_listener : doctest::IReporter {
  explicit case_listener(const doctest::ContextOptions&) {}
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats&) override {}
  void test_case_start(const doctest::TestCaseData&) override {}
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats& stats) override {
    case_failures().push_back(stats.testCaseSuccess ? 0 : 1);
  }
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};
