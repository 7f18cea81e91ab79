// SPDX-License-Identifier: BSL-1.0
// A program outside the parallax tree that uses an installed parallax: ranks
// all-reduce their rank numbers and rank 0 checks and prints the sum.
#include <parallax/parallax.hpp>

#include <boost/mpi/environment.hpp>

#include <iostream>
#include <vector>

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  boost::mpi::communicator world;
  std::vector<double> v = {static_cast<double>(world.rank()), 1.0};
  parallax::allreduce_sum(world, std::span<double>(v));
  const int p = world.size();
  const bool ok = v[0] == p * (p - 1) / 2.0 && v[1] == p;
  if (world.rank() == 0)
    std::cout << "consumer: parallax " << parallax::version().text << ", " << p << " ranks, sum of ranks "
              << v[0] << (ok ? " ok" : " WRONG") << std::endl;
  return ok ? 0 : 1;
}
