#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Tensors point to point with their shapes: blocking and non-blocking
/// sends, receives into new or reused containers; element type and rank are
/// checked on arrival.

#include <parallax/core/concepts.hpp>
#include <parallax/core/error.hpp>
#include <parallax/core/request.hpp>
#include <parallax/detail/element_type.hpp>
#include <parallax/detail/mpi.hpp>
#include <parallax/detail/xtensor.hpp>

#include <boost/mpi/communicator.hpp>
#include <mpi.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

namespace parallax {

/// The most dimensions a tensor may have on the wire.
inline constexpr std::size_t max_tensor_rank = 16;

/// Blocking: sends `tensor` (an xt::xarray or xt::xtensor, 0-d to n-d) with its
/// shape to `dest`. Two messages with tag `tag`: a small header, then the raw
/// elements.
template <Tensor E>
void send_tensor(const mpi::communicator& comm, int dest, int tag, const E& tensor);

/// Blocking: receives a tensor sent by send_tensor/isend_tensor; the shape
/// comes from the sender. Element types must match (checked).
template <MpiArithmetic T>
xt::xarray<T> recv_tensor(const mpi::communicator& comm, int source, int tag);

/// Blocking: as above into an existing container, which is resized; for an
/// xt::xtensor<T, N>, the sender's rank must be N (checked).
template <Tensor E>
void recv_tensor(const mpi::communicator& comm, int source, int tag, E& out);

/// Non-blocking send. `tensor` must stay alive and unchanged until the
/// returned request completes.
template <Tensor E>
request isend_tensor(const mpi::communicator& comm, int dest, int tag, const E& tensor);

/// A receive in flight: the header receive is posted at once; the element
/// receive is posted as soon as the header has arrived (in test() or wait()).
/// Keep at most one tensor_receive per (source, tag) in flight: use distinct
/// tags for concurrent transfers between the same pair of ranks.
template <class E>
class tensor_receive {
 public:
  tensor_receive(const mpi::communicator& comm, int source, int tag);
  /// As above, receiving into `storage` (its buffer is reused when the
  /// incoming size matches: no allocation in a steady state).
  tensor_receive(const mpi::communicator& comm, int source, int tag, E&& storage);
  tensor_receive(tensor_receive&&) noexcept = default;
  tensor_receive& operator=(tensor_receive&&) noexcept = default;

  /// True once the whole tensor has arrived.
  bool test();
  /// Blocks until the whole tensor has arrived and returns it.
  E& wait();

 private:
  void on_header();

  MPI_Comm comm_ = MPI_COMM_NULL;
  int source_ = 0;
  int tag_ = 0;
  std::unique_ptr<std::array<std::uint64_t, max_tensor_rank + 2>> header_;
  request header_request_;
  request data_request_;
  E tensor_;
  bool header_done_ = false;
};

/// Non-blocking receive of a tensor of element type T (shape from the sender).
template <MpiArithmetic T>
tensor_receive<xt::xarray<T>> irecv_tensor(const mpi::communicator& comm, int source, int tag);

// ===========================================================================
// Implementation
// ===========================================================================

namespace detail {

/// Header layout: [type code, rank, extent 0, ..., extent rank-1].
inline constexpr std::size_t header_words = max_tensor_rank + 2;
using tensor_header = std::array<std::uint64_t, header_words>;

template <class E>
int make_header(const E& tensor, tensor_header& header) {
  using T = typename E::value_type;
  const auto& shape = tensor.shape();
  PARALLAX_CHECK(shape.size() <= max_tensor_rank,
                 "send_tensor(): tensor has " + std::to_string(shape.size()) +
                     " dimensions, at most " + std::to_string(max_tensor_rank) + " are supported");
  header[0] = type_code<T>();
  header[1] = shape.size();
  for (std::size_t i = 0; i < shape.size(); ++i) header[2 + i] = shape[i];
  return static_cast<int>(2 + shape.size());
}

/// Checks a received header against E and resizes `out` to its shape.
template <class E>
void apply_header(const tensor_header& header, E& out, int source) {
  using T = typename E::value_type;
  const auto where = "recv_tensor() from rank " + std::to_string(source);
  PARALLAX_CHECK(header[0] == type_code<T>(), where + ": sender's elements are " +
                                                  type_code_name(header[0]) + ", receiver expects " +
                                                  type_code_name(type_code<T>()));
  const auto rank = header[1];
  PARALLAX_CHECK(rank <= max_tensor_rank, where + ": corrupt header (rank " + std::to_string(rank) + ")");
  if constexpr (requires { std::tuple_size<typename E::shape_type>::value; }) {
    constexpr auto fixed = std::tuple_size<typename E::shape_type>::value;
    PARALLAX_CHECK(rank == fixed, where + ": sender's tensor has " + std::to_string(rank) +
                                      " dimensions, receiver's xtensor has " + std::to_string(fixed));
    typename E::shape_type shape{};
    for (std::size_t i = 0; i < fixed; ++i) shape[i] = static_cast<std::size_t>(header[2 + i]);
    out.resize(shape);
  } else {
    std::vector<std::size_t> shape(rank);
    for (std::size_t i = 0; i < rank; ++i) shape[i] = static_cast<std::size_t>(header[2 + i]);
    out.resize(shape);
  }
}

}  // namespace detail

template <Tensor E>
void send_tensor(const mpi::communicator& comm, int dest, int tag, const E& tensor) {
  isend_tensor(comm, dest, tag, tensor).wait();
}

template <Tensor E>
request isend_tensor(const mpi::communicator& comm, int dest, int tag, const E& tensor) {
  using T = typename E::value_type;
  static_assert(MpiArithmetic<T>, "isend_tensor(): elements must be arithmetic");
  auto header = std::make_shared<detail::tensor_header>();
  const int words = detail::make_header(tensor, *header);
  const int count = detail::checked_count(tensor.size(), "isend_tensor()");
  request r;
  detail::request_access::keep_alive(r, header);
  MPI_Request h = MPI_REQUEST_NULL;
  detail::mpi_check(MPI_Isend(header->data(), words, MPI_UINT64_T, dest, tag, MPI_Comm(comm), &h),
                    "MPI_Isend");
  detail::request_access::add(r, h, true);
  detail::mpi_check(MPI_Isend(tensor.data(), count, detail::mpi_type<T>(), dest, tag, MPI_Comm(comm), &h),
                    "MPI_Isend");
  detail::request_access::add(r, h, true);
  return r;
}

template <class E>
tensor_receive<E>::tensor_receive(const mpi::communicator& comm, int source, int tag)
    : comm_(MPI_Comm(comm)), source_(source), tag_(tag), header_(std::make_unique<detail::tensor_header>()) {
  MPI_Request h = MPI_REQUEST_NULL;
  detail::mpi_check(MPI_Irecv(header_->data(), static_cast<int>(detail::header_words), MPI_UINT64_T, source,
                              tag, comm_, &h),
                    "MPI_Irecv");
  detail::request_access::add(header_request_, h, false);
}

template <class E>
tensor_receive<E>::tensor_receive(const mpi::communicator& comm, int source, int tag, E&& storage)
    : tensor_receive(comm, source, tag) {
  tensor_ = std::move(storage);
}

template <class E>
void tensor_receive<E>::on_header() {
  header_done_ = true;
  detail::apply_header(*header_, tensor_, source_);
  using T = typename E::value_type;
  MPI_Request h = MPI_REQUEST_NULL;
  detail::mpi_check(MPI_Irecv(tensor_.data(), static_cast<int>(tensor_.size()), detail::mpi_type<T>(), source_,
                              tag_, comm_, &h),
                    "MPI_Irecv");
  detail::request_access::add(data_request_, h, false);
}

template <class E>
bool tensor_receive<E>::test() {
  if (!header_done_) {
    if (!header_request_.test()) return false;
    on_header();
  }
  return data_request_.test();
}

template <class E>
E& tensor_receive<E>::wait() {
  if (!header_done_) {
    header_request_.wait();
    on_header();
  }
  data_request_.wait();
  return tensor_;
}

template <MpiArithmetic T>
tensor_receive<xt::xarray<T>> irecv_tensor(const mpi::communicator& comm, int source, int tag) {
  return tensor_receive<xt::xarray<T>>(comm, source, tag);
}

template <MpiArithmetic T>
xt::xarray<T> recv_tensor(const mpi::communicator& comm, int source, int tag) {
  return std::move(irecv_tensor<T>(comm, source, tag).wait());
}

template <Tensor E>
void recv_tensor(const mpi::communicator& comm, int source, int tag, E& out) {
  detail::tensor_header header{};
  MPI_Status status;
  detail::mpi_check(MPI_Recv(header.data(), static_cast<int>(detail::header_words), MPI_UINT64_T, source, tag,
                             MPI_Comm(comm), &status),
                    "MPI_Recv");
  detail::apply_header(header, out, source);
  using T = typename E::value_type;
  detail::mpi_check(MPI_Recv(out.data(), detail::checked_count(out.size(), "recv_tensor()"),
                             detail::mpi_type<T>(), source, tag, MPI_Comm(comm), MPI_STATUS_IGNORE),
                    "MPI_Recv");
}

}  // namespace parallax
