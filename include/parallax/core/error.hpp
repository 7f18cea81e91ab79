#pragma once
// SPDX-License-Identifier: BSL-1.0
/// parallax::error and PARALLAX_CHECK: the one exception type of the library,
/// with messages that name the function, the cause and the rank.

// parallax uses MPI's C interface; keep Open MPI's deprecated C++ bindings
// (and their warnings) out of every translation unit that includes us first.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <stdexcept>
#include <string>
#include <string_view>

namespace parallax {

/// The exception every parallax precondition and agreed failure throws.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {

/// Rank in MPI_COMM_WORLD, or -1 when MPI is not running (before MPI_Init,
/// after MPI_Finalize, or in a program that never starts MPI).
inline int world_rank() noexcept {
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return -1;
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

/// "message [rank r]", or just the message when MPI is not running.
inline std::string with_rank(std::string_view message) {
  std::string text(message);
  const int rank = world_rank();
  if (rank >= 0) text += " [rank " + std::to_string(rank) + "]";
  return text;
}

/// A message without the " [rank r]" that with_rank() appended, to quote it
/// inside another message.
inline std::string without_rank(std::string_view message) {
  const auto at = message.rfind(" [rank ");
  if (at == std::string_view::npos || message.empty() || message.back() != ']') return std::string(message);
  return std::string(message.substr(0, at));
}

[[noreturn]] inline void throw_error(std::string_view message) {
  throw error(with_rank(message));
}

}  // namespace detail
}  // namespace parallax

/// Throws parallax::error with `message` and the calling rank when `cond` is
/// false. `message` should start with the function, e.g.
/// "DataParallel::train_step(): batch is empty". Any expression convertible
/// to std::string_view works, so messages can be built with std::string.
///
/// This is a local check: use it for conditions that are the same on every
/// rank (or before any collective). A condition that can differ between ranks
/// goes through parallax::agree (core/comm.hpp) so that all ranks fail
/// together.
#define PARALLAX_CHECK(cond, message)                  \
  do {                                                 \
    if (!(cond)) ::parallax::detail::throw_error(message); \
  } while (false)
