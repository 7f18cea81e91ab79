#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Tensor lists: what a model's parameters() and gradients() may return, and
/// the walk that turns any of them into flat spans. A tensor list is
///  - one xtensor container (xt::xarray<T>, xt::xtensor<T, N>),
///  - a std::tuple or std::pair of tensor lists (e.g. std::tie(w_, b_)),
///  - a range of tensor lists (std::vector<xt::xarray<T>>, std::array<...>),
///  - a std::reference_wrapper or pointer to a tensor list,
/// nested to any depth. Elements are visited depth first, left to right.

#include <parallax/detail/xtensor.hpp>

#include <cstddef>
#include <functional>
#include <iterator>
#include <ranges>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace parallax::detail {

template <class T>
struct is_tuple_like : std::false_type {};
template <class... Ts>
struct is_tuple_like<std::tuple<Ts...>> : std::true_type {};
template <class A, class B>
struct is_tuple_like<std::pair<A, B>> : std::true_type {};

template <class T>
struct is_reference_wrapper : std::false_type {};
template <class T>
struct is_reference_wrapper<std::reference_wrapper<T>> : std::true_type {};

template <class L>
constexpr bool is_tensor_list();

template <class Tuple, std::size_t... I>
constexpr bool all_tensor_lists(std::index_sequence<I...>) {
  return (is_tensor_list<std::tuple_element_t<I, Tuple>>() && ...);
}

/// True when L (cv/ref stripped) is a tensor list of floating-point or
/// integer tensors, by the rules above.
template <class L>
constexpr bool is_tensor_list() {
  using U = std::remove_cvref_t<L>;
  if constexpr (xcontainer<U>) {
    return std::is_arithmetic_v<typename U::value_type>;
  } else if constexpr (is_reference_wrapper<U>::value) {
    return is_tensor_list<typename U::type>();
  } else if constexpr (std::is_pointer_v<U>) {
    return is_tensor_list<std::remove_pointer_t<U>>();
  } else if constexpr (is_tuple_like<U>::value) {
    return all_tensor_lists<U>(std::make_index_sequence<std::tuple_size_v<U>>{});
  } else if constexpr (std::ranges::range<U>) {
    return is_tensor_list<std::ranges::range_reference_t<U>>();
  } else {
    return false;
  }
}

/// Calls f(tensor) for every tensor of the list, in order.
template <class L, class F>
void for_each_tensor(L&& list, F&& f) {
  using U = std::remove_cvref_t<L>;
  if constexpr (xcontainer<U>) {
    f(list);
  } else if constexpr (is_reference_wrapper<U>::value) {
    for_each_tensor(list.get(), f);
  } else if constexpr (std::is_pointer_v<U>) {
    for_each_tensor(*list, f);
  } else if constexpr (is_tuple_like<U>::value) {
    std::apply([&](auto&&... parts) { (for_each_tensor(parts, f), ...); }, list);
  } else {
    for (auto&& part : list) for_each_tensor(part, f);
  }
}

/// The element type of the first tensor of a list type (void when empty).
template <class L>
constexpr auto first_value_type_probe() {
  using U = std::remove_cvref_t<L>;
  if constexpr (xcontainer<U>) {
    return std::type_identity<typename U::value_type>{};
  } else if constexpr (is_reference_wrapper<U>::value) {
    return first_value_type_probe<typename U::type>();
  } else if constexpr (std::is_pointer_v<U>) {
    return first_value_type_probe<std::remove_pointer_t<U>>();
  } else if constexpr (is_tuple_like<U>::value) {
    if constexpr (std::tuple_size_v<U> == 0) {
      return std::type_identity<void>{};
    } else {
      return first_value_type_probe<std::tuple_element_t<0, U>>();
    }
  } else if constexpr (std::ranges::range<U>) {
    return first_value_type_probe<std::ranges::range_reference_t<U>>();
  } else {
    return std::type_identity<void>{};
  }
}

template <class L>
using list_value_t = typename decltype(first_value_type_probe<L>())::type;

/// True when every tensor of the list type has element type T (an empty list
/// qualifies).
template <class L, class T>
constexpr bool all_elements_are() {
  using U = std::remove_cvref_t<L>;
  if constexpr (xcontainer<U>) {
    return std::is_same_v<typename U::value_type, T>;
  } else if constexpr (is_reference_wrapper<U>::value) {
    return all_elements_are<typename U::type, T>();
  } else if constexpr (std::is_pointer_v<U>) {
    return all_elements_are<std::remove_pointer_t<U>, T>();
  } else if constexpr (is_tuple_like<U>::value) {
    return []<std::size_t... I>(std::index_sequence<I...>) {
      return (all_elements_are<std::tuple_element_t<I, U>, T>() && ...);
    }(std::make_index_sequence<std::tuple_size_v<U>>{});
  } else if constexpr (std::ranges::range<U>) {
    return all_elements_are<std::ranges::range_reference_t<U>, T>();
  } else {
    return false;
  }
}

/// A flat view of one tensor of a list, with its shape (for messages and
/// checkpoints).
template <class T>
struct tensor_span {
  std::span<T> data;
  std::vector<std::size_t> shape;
};

/// Flat spans of every tensor of a list (all of element type T). The spans
/// alias the tensors: valid while the tensors are neither destroyed nor
/// resized.
template <class T, class L>
std::vector<tensor_span<T>> tensor_spans(L&& list) {
  std::vector<tensor_span<T>> out;
  for_each_tensor(list, [&](auto& tensor) {
    using V = typename std::remove_cvref_t<decltype(tensor)>::value_type;
    static_assert(std::is_same_v<std::remove_const_t<T>, V>, "parallax: every tensor of the list must have the same element type");
    out.push_back({std::span<T>(tensor.data(), tensor.size()),
                   std::vector<std::size_t>(tensor.shape().begin(), tensor.shape().end())});
  });
  return out;
}

/// Number of tensors in a list.
template <class L>
std::size_t tensor_count(L&& list) {
  std::size_t n = 0;
  for_each_tensor(list, [&](auto&) { ++n; });
  return n;
}

}  // namespace parallax::detail
