#pragma once
// SPDX-License-Identifier: BSL-1.0
/// parallax::request: non-blocking operations in flight (point-to-point
/// tensors, the non-blocking all-reduce), waited on or tested as one.

#include <parallax/core/concepts.hpp>
#include <parallax/core/error.hpp>
#include <parallax/detail/mpi.hpp>

#include <boost/mpi/communicator.hpp>
#include <mpi.h>

#include <memory>
#include <span>
#include <utility>
#include <vector>

namespace parallax {

namespace detail {
struct request_access;
}

/// A non-blocking operation in flight. Move-only; wait() before touching the
/// buffers it uses. Destroying an unfinished request cancels receives and
/// releases sends to complete in the background.
class request {
 public:
  request() = default;
  request(request&& other) noexcept;
  request& operator=(request&& other) noexcept;
  request(const request&) = delete;
  request& operator=(const request&) = delete;
  ~request();

  void wait();
  bool test();
  bool active() const { return !handles_.empty(); }

 private:
  friend struct detail::request_access;

  void add(MPI_Request handle, bool is_send) { handles_.push_back({handle, is_send}); }
  void release() noexcept;

  struct handle {
    MPI_Request mpi = MPI_REQUEST_NULL;
    bool is_send = false;
  };
  std::vector<handle> handles_;
  std::shared_ptr<void> keep_alive_;  // storage the requests point into (headers)
};

/// Collective, non-blocking, in place: starts the sum all-reduce of `data`
/// (MPI_Iallreduce). `data` must not be touched until the request completes.
template <MpiArithmetic T>
request iallreduce_sum(const mpi::communicator& comm, std::span<T> data);

// ===========================================================================
// Implementation
// ===========================================================================

namespace detail {

/// What the library's own calls use to fill a request.
struct request_access {
  static void add(request& r, MPI_Request handle, bool is_send) { r.add(handle, is_send); }
  static void keep_alive(request& r, std::shared_ptr<void> storage) { r.keep_alive_ = std::move(storage); }
};

}  // namespace detail

inline request iallreduce_sum_impl(const mpi::communicator& comm, void* data, int n, MPI_Datatype type) {
  request r;
  MPI_Request handle = MPI_REQUEST_NULL;
  detail::mpi_check(MPI_Iallreduce(MPI_IN_PLACE, data, n, type, MPI_SUM, MPI_Comm(comm), &handle),
                    "MPI_Iallreduce");
  detail::request_access::add(r, handle, false);
  return r;
}

template <MpiArithmetic T>
request iallreduce_sum(const mpi::communicator& comm, std::span<T> data) {
  return iallreduce_sum_impl(comm, data.data(), detail::checked_count(data.size(), "iallreduce_sum()"),
                             detail::mpi_type<T>());
}

inline request::request(request&& other) noexcept
    : handles_(std::move(other.handles_)), keep_alive_(std::move(other.keep_alive_)) {
  other.handles_.clear();
}

inline request& request::operator=(request&& other) noexcept {
  if (this != &other) {
    release();
    handles_ = std::move(other.handles_);
    keep_alive_ = std::move(other.keep_alive_);
    other.handles_.clear();
  }
  return *this;
}

inline request::~request() { release(); }

inline void request::release() noexcept {
  for (auto& h : handles_) {
    if (h.mpi == MPI_REQUEST_NULL) continue;
    if (h.is_send) {
      // The send completes in the background; its header must outlive it.
      // Its header must outlive it, and nothing tells us when it is done:
      // the few bytes are deliberately leaked (this happens only when a
      // request is abandoned, e.g. while an error unwinds).
      MPI_Request_free(&h.mpi);
      if (keep_alive_) static_cast<void>(new std::shared_ptr<void>(keep_alive_));
    } else {
      MPI_Cancel(&h.mpi);
      MPI_Wait(&h.mpi, MPI_STATUS_IGNORE);
    }
  }
  handles_.clear();
  keep_alive_.reset();
}

inline void request::wait() {
  for (auto& h : handles_)
    if (h.mpi != MPI_REQUEST_NULL) detail::mpi_check(MPI_Wait(&h.mpi, MPI_STATUS_IGNORE), "MPI_Wait");
  handles_.clear();
  keep_alive_.reset();
}

inline bool request::test() {
  bool done = true;
  for (auto& h : handles_) {
    if (h.mpi == MPI_REQUEST_NULL) continue;
    int flag = 0;
    detail::mpi_check(MPI_Test(&h.mpi, &flag, MPI_STATUS_IGNORE), "MPI_Test");
    if (!flag) done = false;
  }
  if (done) {
    handles_.clear();
    keep_alive_.reset();
  }
  return done;
}

}  // namespace parallax
