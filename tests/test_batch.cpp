// SPDX-License-Identifier: BSL-1.0
// Suite data: Batch, TensorDataset, ShardDataset, gather_rows and slice_rows.

#include <parallax/core/concepts.hpp>
#include <parallax/data/batch.hpp>

#include <doctest/doctest.h>

#include <string>
#include <vector>

using X = xt::xtensor<float, 2>;
using Y = xt::xtensor<std::int32_t, 1>;

TEST_CASE("TensorDataset: batches are the rows asked for, in order") {
  X x = {{0, 1}, {10, 11}, {20, 21}, {30, 31}};
  Y y = {0, 1, 2, 3};
  parallax::data::TensorDataset<X, Y> data(x, y);
  static_assert(parallax::Dataset<decltype(data), parallax::data::Batch<X, Y>>);
  CHECK(data.size() == 4);
  const std::vector<std::size_t> pick = {3, 1, 3};
  auto b = data.batch(pick);
  CHECK(b.size() == 3);
  CHECK(b.inputs == X{{30, 31}, {10, 11}, {30, 31}});
  CHECK(b.targets == Y{3, 1, 3});
  // batch_into reuses the buffers when the shape stays.
  const auto* before = b.inputs.data();
  const std::vector<std::size_t> other = {0, 2, 1};
  data.batch_into(other, b);
  CHECK(b.inputs.data() == before);
  CHECK(b.inputs == X{{0, 1}, {20, 21}, {10, 11}});
  const std::vector<std::size_t> bad = {4};
  CHECK_THROWS_WITH_AS(data.batch(bad), doctest::Contains("index 4 is past the 4 samples"), parallax::error);
}

TEST_CASE("TensorDataset: inputs and targets must agree") {
  X x = xt::zeros<float>({3, 2});
  Y y = xt::zeros<std::int32_t>({2});
  CHECK_THROWS_WITH_AS((parallax::data::TensorDataset<X, Y>(x, y)), doctest::Contains("3 inputs but 2 targets"),
                       parallax::error);
}

TEST_CASE("slice_rows: a contiguous block of rows") {
  X x = {{0, 1}, {10, 11}, {20, 21}, {30, 31}};
  X out;
  parallax::data::slice_rows(x, 1, 2, out);
  CHECK(out == X{{10, 11}, {20, 21}});
  parallax::data::slice_rows(x, 4, 0, out);
  CHECK(out.shape()[0] == 0);
  CHECK_THROWS_AS(parallax::data::slice_rows(x, 3, 2, out), parallax::error);
}

TEST_CASE("ShardDataset: the rows held keep the whole dataset's sample numbers") {
  X x = {{20, 21}, {30, 31}};
  Y y = {2, 3};
  const parallax::data::ShardDataset<X, Y> shard(parallax::data::TensorDataset<X, Y>(x, y), 2, 5);
  static_assert(parallax::Dataset<parallax::data::ShardDataset<X, Y>, parallax::data::Batch<X, Y>>);
  CHECK(shard.size() == 5);
  CHECK(shard.rows().begin == 2);
  CHECK(shard.rows().end == 4);
  const std::vector<std::size_t> pick = {3, 2, 3};
  auto b = shard.batch(pick);
  CHECK(b.inputs == X{{30, 31}, {20, 21}, {30, 31}});
  CHECK(b.targets == Y{3, 2, 3});
  const std::vector<std::size_t> local = {1};
  CHECK(shard.local().batch(local).targets == Y{3});
  for (const std::size_t outside : {1, 4}) {
    const std::vector<std::size_t> bad = {2, outside};
    CHECK_THROWS_WITH_AS(shard.batch(bad),
                         doctest::Contains(("sample " + std::to_string(outside) + " is not in the rows [2, 4)").c_str()),
                         parallax::error);
  }
  CHECK_THROWS_WITH_AS((parallax::data::ShardDataset<X, Y>(parallax::data::TensorDataset<X, Y>(x, y), 4, 5)),
                       doctest::Contains("rows [4, 6) of a dataset of 5"), parallax::error);
}
