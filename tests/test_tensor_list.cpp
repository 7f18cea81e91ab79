// SPDX-License-Identifier: BSL-1.0
// Suite core: tensor lists (what parameters() may return) and the concepts.

#include <parallax/core/concepts.hpp>
#include <parallax/detail/random.hpp>
#include <parallax/detail/tensor_list.hpp>

#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <functional>
#include <numeric>
#include <set>
#include <string>
#include <tuple>
#include <vector>

namespace {
struct NotATensor {
  int x;
};
}  // namespace

TEST_CASE("tensor lists: tensors, tuples, ranges, references and pointers, nested") {
  xt::xtensor<float, 2> w = xt::ones<float>({2, 3});
  xt::xtensor<float, 1> b = xt::zeros<float>({3});
  std::vector<xt::xarray<float>> more = {xt::ones<float>({4}), xt::ones<float>({1, 1})};
  auto list = std::tuple(std::tie(w, b), std::ref(more), &b);
  static_assert(parallax::TensorList<decltype(list)>);
  static_assert(parallax::TensorList<decltype(std::tie(w, b))>);
  static_assert(parallax::TensorList<std::vector<xt::xarray<double>>&>);
  static_assert(parallax::TensorList<std::tuple<>>);
  static_assert(!parallax::TensorList<NotATensor>);
  static_assert(!parallax::TensorList<std::tuple<xt::xtensor<float, 1>&, NotATensor>>);
  static_assert(!parallax::TensorList<int>);

  std::vector<std::size_t> sizes;
  parallax::detail::for_each_tensor(list, [&](auto& t) { sizes.push_back(t.size()); });
  CHECK(sizes == std::vector<std::size_t>{6, 3, 4, 1, 3});
  CHECK(parallax::detail::tensor_count(list) == 5);

  // Spans alias the tensors.
  auto spans = parallax::detail::tensor_spans<float>(std::tie(w, b));
  REQUIRE(spans.size() == 2);
  CHECK(spans[0].shape == std::vector<std::size_t>{2, 3});
  spans[1].data[2] = 7.0f;
  CHECK(b(2) == 7.0f);

  static_assert(std::is_same_v<parallax::detail::list_value_t<decltype(list)>, float>);
  static_assert(parallax::detail::all_elements_are<decltype(list), float>());
  xt::xtensor<double, 1> d = xt::zeros<double>({1});
  static_assert(!parallax::detail::all_elements_are<decltype(std::tie(w, d)), float>());
}

TEST_CASE("concepts: Tensor, MpiArithmetic, ContiguousBuffer") {
  static_assert(parallax::Tensor<xt::xtensor<float, 2>>);
  static_assert(parallax::Tensor<xt::xarray<std::int32_t>>);
  static_assert(!parallax::Tensor<std::vector<float>>);
  static_assert(parallax::ContiguousBuffer<std::vector<float>>);
  static_assert(parallax::MpiArithmetic<double>);
  static_assert(!parallax::MpiArithmetic<bool>);
  static_assert(!parallax::MpiArithmetic<std::string>);
  CHECK(parallax::batch_size(xt::xtensor<float, 2>(xt::zeros<float>({7, 3}))) == 7);
  CHECK(parallax::batch_size(std::vector<int>(4)) == 4);
}

TEST_CASE("random: deterministic keys, streams and shuffles") {
  using parallax::detail::key;
  CHECK(key(1, 2, 3) == key(1, 2, 3));
  CHECK(key(1, 2, 3) != key(1, 3, 2));
  CHECK(key(1, 2) != key(2, 2));
  parallax::detail::rng a(42), b(42), c(43);
  for (int i = 0; i < 5; ++i) CHECK(a() == b());
  CHECK(a() != c());
  // uniform in [0, 1), below(n) in [0, n), roughly uniform.
  parallax::detail::rng g(7);
  std::array<int, 10> counts{};
  for (int i = 0; i < 100000; ++i) {
    const double u = g.uniform();
    CHECK(u >= 0.0);
    CHECK(u < 1.0);
    ++counts[g.below(10)];
  }
  for (int n : counts) CHECK(std::abs(n - 10000) < 500);
  std::vector<int> v(20);
  std::iota(v.begin(), v.end(), 0);
  auto w = v;
  parallax::detail::rng s1(5), s2(5);
  parallax::detail::shuffle(v.begin(), v.end(), s1);
  parallax::detail::shuffle(w.begin(), w.end(), s2);
  CHECK(v == w);
  CHECK(std::set<int>(v.begin(), v.end()).size() == 20);
  std::vector<int> sorted(20);
  std::iota(sorted.begin(), sorted.end(), 0);
  CHECK(v != sorted);
}
