// SPDX-License-Identifier: BSL-1.0
// doctest main for tests that start no MPI. Prints the same summary line as
// the MPI main, which the test command sums:
//   parallax-test-cases: P passed, F failed (no MPI)

#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "case_listener.hpp"

#include <algorithm>

#include <iostream>


DOCTEST_REGISTER_LISTENER("parallax_cases", 1, case_listener);

int main(int argc, char** argv) {
  doctest::Context context(argc, argv);
  const int status = context.run();
  if (context.shouldExit()) return status;
  const auto& cases = case_failures();
  const auto failed = std::count(cases.begin(), cases.end(), 1);
  std::cout << "parallax-test-cases: " << static_cast<long>(cases.size()) - failed << " passed, " << failed
            << " failed (no MPI)" << std::endl;
  return status;
}
