// SPDX-License-Identifier: BSL-1.0
// hello_allreduce: every rank contributes a vector that depends on its rank,
// parallax sums and averages it across ranks, and rank 0 reports.
//
//   mpiexec -n 2 build/examples/hello_allreduce
#include <parallax/parallax.hpp>

#include <boost/mpi/environment.hpp>

#include <iostream>
#include <vector>

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  boost::mpi::communicator world;
  const int p = world.size();

  // Rank r holds (r + 1) * [1, 2, 3].
  std::vector<double> v = {1.0, 2.0, 3.0};
  for (auto& x : v) x *= world.rank() + 1;
  parallax::allreduce_mean(world, std::span<double>(v));

  // Mean of (r + 1) over ranks is (p + 1) / 2.
  const double factor = (p + 1) / 2.0;
  const bool ok = v[0] == factor && v[1] == 2 * factor && v[2] == 3 * factor;
  if (world.rank() == 0)
    std::cout << "parallax " << parallax::version().text << ": " << p << " ranks averaged [" << v[0] << ", " << v[1]
              << ", " << v[2] << "] " << (ok ? "(as expected)" : "(WRONG)") << std::endl;
  return ok ? 0 : 1;
}
