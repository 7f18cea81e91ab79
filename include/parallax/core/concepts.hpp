#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The concepts user types meet: element types that travel raw over MPI and
/// the tensors the library moves. Each concept is small and named, so that a
/// compiler's "because ... was not satisfied" points at the missing piece.

#include <parallax/detail/xtensor.hpp>

#include <boost/mpi/datatype.hpp>

#include <concepts>
#include <type_traits>

namespace parallax {

/// An arithmetic element type that MPI carries natively (float, double, the
/// integer types): buffers of it travel raw, never serialized.
/// Accepted: float, double, int, std::uint64_t. Rejected: bool, std::string.
template <class T>
concept MpiArithmetic = std::is_arithmetic_v<T> && !std::is_same_v<T, bool> &&
                        boost::mpi::is_mpi_datatype<T>::value;

/// One contiguous run of elements with data() and size():
/// xt::xarray, xt::xtensor, std::vector, std::array.
template <class C>
concept ContiguousBuffer = detail::contiguous_buffer<C>;

/// An xtensor container (xt::xarray<T> or xt::xtensor<T, N>) of an
/// MpiArithmetic element type: what parameters, gradients and activations are.
/// Rejected: views and lazy expressions (they are not contiguous storage).
template <class E>
concept Tensor = detail::xcontainer<E> && MpiArithmetic<typename E::value_type>;

}  // namespace parallax
