// SPDX-License-Identifier: BSL-1.0
// The MPI-aware doctest main shared by every MPI test binary.
//
// MPI starts once; every rank runs the same test cases in the same order
// (tests must keep collectives matched: CHECK, not REQUIRE, before a
// collective). Each rank's doctest output is buffered; rank 0 prints its own,
// and any rank that failed prints its output prefixed with its rank. Per test
// case outcomes are all-reduced, so every rank exits with the same status and
// rank 0 prints one line the test command sums over all binaries:
//   parallax-test-cases: P passed, F failed (N ranks)
// Set PARALLAX_TEST_UNBUFFERED=1 to see every rank's output as it happens
// (useful when a test hangs).

#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "case_listener.hpp"

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>
#include <boost/mpi/environment.hpp>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

void print_prefixed(std::ostream& out, const std::string& text, int rank) {
  std::istringstream lines(text);
  std::string line;
  std::ostringstream block;
  while (std::getline(lines, line)) block << "[rank " << rank << "] " << line << '\n';
  out << block.str() << std::flush;
}

}  // namespace

DOCTEST_REGISTER_LISTENER("parallax_cases", 1, case_listener);

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  boost::mpi::communicator world;
  const int rank = world.rank();

  doctest::Context context(argc, argv);
  std::ostringstream buffer;
  const bool unbuffered = std::getenv("PARALLAX_TEST_UNBUFFERED") != nullptr;
  if (!unbuffered) context.setOption("no-colors", true);
  if (!unbuffered) context.setCout(&buffer);
  const int local_status = context.run();
  if (context.shouldExit()) return local_status;

  // Every rank ran the same cases; a rank that ran a different number is a
  // harness failure in its own right.
  auto flags = case_failures();
  const int count = static_cast<int>(flags.size());
  int max_count = 0;
  int min_count = 0;
  boost::mpi::all_reduce(world, count, max_count, boost::mpi::maximum<int>());
  boost::mpi::all_reduce(world, count, min_count, boost::mpi::minimum<int>());
  flags.resize(static_cast<std::size_t>(max_count), 1);
  std::vector<int> any_failed(flags.size(), 0);
  if (!flags.empty())
    boost::mpi::all_reduce(world, flags.data(), max_count, any_failed.data(), boost::mpi::maximum<int>());
  const auto failed = std::count(any_failed.begin(), any_failed.end(), 1) + (min_count != max_count ? 1 : 0);
  const auto passed = static_cast<long>(any_failed.size()) - std::count(any_failed.begin(), any_failed.end(), 1);

  const bool i_failed = local_status != 0 || std::count(flags.begin(), flags.end(), 1) > 0;
  if (!unbuffered) {
    // One rank at a time, so blocks do not interleave.
    for (int r = 0; r < world.size(); ++r) {
      if (r == rank) {
        if (i_failed) print_prefixed(std::cerr, buffer.str(), rank);
        else if (rank == 0) std::cout << buffer.str() << std::flush;
      }
      world.barrier();
    }
  }
  if (rank == 0) {
    if (min_count != max_count)
      std::cout << "ranks ran different numbers of test cases (" << min_count << " to " << max_count << ")\n";
    std::cout << "parallax-test-cases: " << passed << " passed, " << failed << " failed (" << world.size()
              << (world.size() == 1 ? " rank" : " ranks") << ")" << std::endl;
  }
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
