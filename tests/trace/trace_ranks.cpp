// SPDX-License-Identifier: BSL-1.0
// Ranks that do not call trace::write() in step (tests/trace/trace_ranks.sh
// runs it). One span per rank, then by MODE:
//   leave  rank 1 returns without write(): its spans reach the others' call
//          from MPI_Finalize, and nothing is written twice;
//   late   rank 1 calls write() after the others' 10 s deadline: every rank
//          writes its own "<file>.rank<r>", returns false, and exits cleanly;
//   twice  every rank calls write() twice with nothing recorded between.
// Prints "rank R write N: B" for each call's result B (0 or 1).
#include <parallax/core/trace.hpp>

#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const std::string path = argc > 1 ? argv[1] : "trace.json";
  const std::string mode = argc > 2 ? argv[2] : "leave";
  parallax::trace::set_file(path);
  { parallax::trace::span s("work", "test", rank); }
  const bool late = rank == 1 && mode == "late";
  if (late) std::this_thread::sleep_for(std::chrono::seconds(11));
  if (!(rank == 1 && mode == "leave")) {
    const int calls = mode == "twice" ? 2 : 1;
    for (int i = 1; i <= calls; ++i) std::printf("rank %d write %d: %d\n", rank, i, parallax::trace::write() ? 1 : 0);
  }
  std::fflush(stdout);
  MPI_Finalize();
  return 0;
}
