// SPDX-License-Identifier: BSL-1.0
// A program outside the parallax tree that uses an installed parallax: ranks
// all-reduce their rank numbers and rank 0 checks and prints the sum. It also
// links what reads gzip files (zlib) and checksums checkpoints (xxHash), so
// a way of building that lacks either fails to link.
#include <parallax/parallax.hpp>

#include <boost/mpi/environment.hpp>

#include <iostream>
#include <span>
#include <vector>

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  boost::mpi::communicator world;
  std::vector<double> v = {static_cast<double>(world.rank()), 1.0};
  parallax::allreduce_sum(world, std::span<double>(v));
  const int p = world.size();
  bool read_idx_failed = false;  // no such file: read_idx reports it
  try {
    (void)parallax::data::read_idx<float>("no-such-file.idx.gz");
  } catch (const parallax::error&) {
    read_idx_failed = true;
  }
  const char bytes[] = "123456789";
  const auto sum = parallax::io::checksum_of(std::span<const char>(bytes, 9), parallax::io::checksum_kind::xxh3_low32);
  const bool ok = v[0] == p * (p - 1) / 2.0 && v[1] == p && read_idx_failed && sum != 0;
  if (world.rank() == 0)
    std::cout << "consumer: parallax " << parallax::version().text << ", " << p << " ranks, sum of ranks "
              << v[0] << (ok ? " ok" : " WRONG") << std::endl;
  return ok ? 0 : 1;
}
