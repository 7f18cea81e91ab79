#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The one file that names xtensor headers, plus the small views of an
/// xtensor container that the library needs (flat spans, shapes).

#include <parallax/detail/element_type.hpp>

#include <xtensor/xadapt.hpp>
#include <xtensor/xarray.hpp>
#include <xtensor/xbuilder.hpp>
#include <xtensor/xio.hpp>
#include <xtensor/xmath.hpp>
#include <xtensor/xnoalias.hpp>
#include <xtensor/xrandom.hpp>
#include <xtensor/xtensor.hpp>
#include <xtensor/xview.hpp>
#include <xtensor-blas/xblas.hpp>

#include <concepts>
#include <cstddef>
#include <span>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

namespace parallax::detail {

/// A container whose elements are one contiguous run of memory:
/// xt::xarray, xt::xtensor, std::vector, std::array, std::span.
template <class C>
concept contiguous_buffer = requires(C& c) {
  { c.data() } -> std::convertible_to<const void*>;
  { c.size() } -> std::convertible_to<std::size_t>;
};

template <contiguous_buffer C>
using buffer_value_t = std::remove_cvref_t<decltype(*std::declval<C&>().data())>;

/// The elements of a contiguous container as a span (no copy).
template <contiguous_buffer C>
auto flat(C& c) {
  using pointer = decltype(c.data());
  using element = std::remove_pointer_t<pointer>;
  return std::span<element>(c.data(), static_cast<std::size_t>(c.size()));
}

/// An xtensor container (xarray or xtensor) as opposed to a view or expression.
template <class E>
concept xcontainer = contiguous_buffer<E> && requires(E& e) {
  e.shape();
  e.dimension();
  typename E::value_type;
};

/// "(2, 3, 4)": a shape for error messages.
template <class Shape>
std::string shape_string(const Shape& shape) {
  std::ostringstream out;
  out << '(';
  bool first = true;
  for (auto extent : shape) {
    if (!first) out << ", ";
    out << extent;
    first = false;
  }
  if (shape.size() == 1) out << ',';
  out << ')';
  return out.str();
}

}  // namespace parallax::detail
