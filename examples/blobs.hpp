#pragma once
// SPDX-License-Identifier: BSL-1.0
/// blobs: the toy data of the example gallery — three classes of 2-d points
/// around (0, 2), (2, -1) and (-2, -1), the same on every rank (a fixed
/// seed), as a TensorDataset of T inputs [n, 2] and int32 labels [n].
#include <parallax/data/batch.hpp>

#include <xtensor/xrandom.hpp>

#include <cstddef>
#include <cstdint>

template <class T>
parallax::data::TensorDataset<xt::xtensor<T, 2>, xt::xtensor<std::int32_t, 1>> blobs(std::size_t n,
                                                                                      std::uint64_t seed) {
  xt::random::seed(seed);
  xt::xtensor<T, 2> x = xt::random::randn<T>({n, std::size_t{2}});
  xt::xtensor<std::int32_t, 1> y = xt::zeros<std::int32_t>({n});
  const T cx[] = {0, 2, -2}, cy[] = {2, -1, -1};
  for (std::size_t i = 0; i < n; ++i) {
    y(i) = static_cast<std::int32_t>(i % 3);
    x(i, 0) += cx[i % 3];
    x(i, 1) += cy[i % 3];
  }
  return {std::move(x), std::move(y)};
}
