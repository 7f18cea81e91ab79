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

/// The T kept on a communicator as an MPI attribute (one key per T), or
/// nullptr. Freeing the communicator frees it: T::release() first (its MPI
/// handles, unless MPI is already finalized), then delete.
template <class T>
T* find_attribute(MPI_Comm comm);

/// Keeps `value` on `comm` as its T attribute (the communicator owns it
/// from here on); returns it.
template <class T>
T& keep_attribute(MPI_Comm comm, std::unique_ptr<T> value);

/// parallax's own duplicate of a communicator, made on first use (a
/// collective call, as is every caller) and cached on the communicator as an
/// MPI attribute. Point-to-point traffic inside a collective travels on it, so
/// it never matches a user's messages, whatever their tags.
inline MPI_Comm private_comm(MPI_Comm comm);

// ---------------------------------------------------------------------------
// Implementation
// ---------------------------------------------------------------------------

template <class T>
int attribute_key() {
  static const int key = [] {
    int k = MPI_KEYVAL_INVALID;
    auto on_free = [](MPI_Comm, int, void* value, void*) -> int {
      std::unique_ptr<T> owned(static_cast<T*>(value));
      int finalized = 0;
      MPI_Finalized(&finalized);
      if (!finalized) owned->release();
      return MPI_SUCCESS;
    };
    mpi_check(MPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, on_free, &k, nullptr), "MPI_Comm_create_keyval");
    return k;
  }();
  return key;
}

template <class T>
T* find_attribute(MPI_Comm comm) {
  void* value = nullptr;
  int found = 0;
  mpi_check(MPI_Comm_get_attr(comm, attribute_key<T>(), &value, &found), "MPI_Comm_get_attr");
  return found ? static_cast<T*>(value) : nullptr;
}

template <class T>
T& keep_attribute(MPI_Comm comm, std::unique_ptr<T> value) {
  mpi_check(MPI_Comm_set_attr(comm, attribute_key<T>(), value.get()), "MPI_Comm_set_attr");
  return *value.release();
}

/// The attribute private_comm() keeps.
struct private_duplicate {
  MPI_Comm comm = MPI_COMM_NULL;
  void release() {
    if (comm != MPI_COMM_NULL) MPI_Comm_free(&comm);
  }
};

inline MPI_Comm private_comm(MPI_Comm comm) {
  if (auto* kept = find_attribute<private_duplicate>(comm)) return kept->comm;
  auto dup = std::make_unique<private_duplicate>();
  mpi_check(MPI_Comm_dup(comm, &dup->comm), "MPI_Comm_dup");
  return keep_attribute(comm, std::move(dup)).comm;
}

}  // namespace detail
}  // namespace parallax
