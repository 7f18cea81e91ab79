#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The raw MPI that parallax calls where Boost.MPI has no wrapper: native
/// datatypes, error codes turned into parallax::error, int counts, and the
/// library's private duplicate of a communicator.

#include <parallax/core/error.hpp>

#include <boost/mpi/communicator.hpp>
#include <boost/mpi/datatype.hpp>
#include <mpi.h>

#include <climits>
#include <cstddef>
#include <memory>
#include <string>

namespace parallax {

namespace mpi = boost::mpi;

namespace detail {

template <class T>
MPI_Datatype mpi_type() {
  return mpi::get_mpi_datatype<T>(T{});
}

/// Throws a parallax::error (kind communication) when an MPI call fails
/// (the default error handler aborts instead; a communicator may have
/// MPI_ERRORS_RETURN set).
inline void mpi_check(int code, const char* call) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw_error(error_kind::communication,
              std::string(call) + " failed: " + std::string(text, static_cast<std::size_t>(length)));
}

inline int checked_count(std::size_t n, const char* where) {
  PARALLAX_CHECK(n <= static_cast<std::size_t>(INT_MAX),
                 std::string(where) + ": " + std::to_string(n) + " elements exceed MPI's int count");
  return static_cast<int>(n);
}

/// parallax's own duplicate of a communicator, made on first use (a
/// collective call, as is every caller) and cached on the communicator as an
/// MPI attribute. Point-to-point traffic inside a collective travels on it, so
/// it never matches a user's messages, whatever their tags.
inline MPI_Comm private_comm(MPI_Comm comm) {
  static int keyval = [] {
    int key = MPI_KEYVAL_INVALID;
    auto on_free = [](MPI_Comm, int, void* value, void*) -> int {
      auto* dup = static_cast<MPI_Comm*>(value);
      int finalized = 0;
      MPI_Finalized(&finalized);
      if (!finalized) MPI_Comm_free(dup);
      delete dup;
      return MPI_SUCCESS;
    };
    mpi_check(MPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, on_free, &key, nullptr), "MPI_Comm_create_keyval");
    return key;
  }();
  void* value = nullptr;
  int found = 0;
  mpi_check(MPI_Comm_get_attr(comm, keyval, &value, &found), "MPI_Comm_get_attr");
  if (found) return *static_cast<MPI_Comm*>(value);
  auto dup = std::make_unique<MPI_Comm>(MPI_COMM_NULL);
  mpi_check(MPI_Comm_dup(comm, dup.get()), "MPI_Comm_dup");
  mpi_check(MPI_Comm_set_attr(comm, keyval, dup.get()), "MPI_Comm_set_attr");
  return *dup.release();
}

}  // namespace detail
}  // namespace parallax
