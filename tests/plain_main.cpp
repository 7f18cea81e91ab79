// SPDX-License-Identifier: BSL-1.0
// doctest main for tests that start no MPI. Prints the same summary line as
// the MPI main, which the test command sums:
//   parallax-test-cases: P passed, F failed (no MPI)

#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <iostream>

namespace {

int& passed() {
  static int n = 0;
  return n;
}
int& failed() {
  static int n = 0;
  return n;
}

struct counter : doctest::IReporter {
  explicit counter(const doctest::ContextOptions&) {}
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats&) override {}
  void test_case_start(const doctest::TestCaseData&) override {}
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats& stats) override {
    ++(stats.testCaseSuccess ? passed() : failed());
  }
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};

}  // namespace

DOCTEST_REGISTER_LISTENER("parallax_counter", 1, counter);

int main(int argc, char** argv) {
  doctest::Context context(argc, argv);
  const int status = context.run();
  if (context.shouldExit()) return status;
  std::cout << "parallax-test-cases: " << passed() << " passed, " << failed() << " failed (no MPI)" << std::endl;
  return status;
}
