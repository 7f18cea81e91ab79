// SPDX-License-Identifier: BSL-1.0
// Suite pipeline: partitions of a layer chain into stages.

#include <parallax/detail/random.hpp>
#include <parallax/pipeline/partition.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <limits>
#include <vector>

using namespace parallax::pipeline;

namespace {
// Every way to cut n layers into p non-empty contiguous stages.
void all_partitions(std::size_t n, std::size_t p, boundaries& current, std::vector<boundaries>& out) {
  if (current.size() == p) {
    auto b = current;
    b.push_back(n);
    out.push_back(b);
    return;
  }
  for (std::size_t next = current.back() + 1; next + (p - current.size()) <= n; ++next) {
    current.push_back(next);
    all_partitions(n, p, current, out);
    current.pop_back();
  }
}
}  // namespace

TEST_CASE("partition: balanced boundaries minimise the slowest stage (against brute force)") {
  parallax::detail::rng g(5);
  for (int trial = 0; trial < 200; ++trial) {
    const std::size_t n = 1 + g.below(8);
    const std::size_t p = 1 + g.below(n);
    std::vector<double> costs(n), speeds(p);
    for (auto& c : costs) c = static_cast<double>(g.below(100));
    for (auto& s : speeds) s = 0.5 + g.uniform();
    const bool weighted = trial % 2 == 1;
    const std::span<const double> sp = weighted ? std::span<const double>(speeds) : std::span<const double>();
    const auto b = balanced_boundaries(costs, p, sp);
    CHECK_NOTHROW(check_boundaries(b, n, p));
    std::vector<boundaries> every;
    boundaries start = {0};
    all_partitions(n, p, start, every);
    double optimum = std::numeric_limits<double>::infinity();
    for (const auto& c : every) optimum = std::min(optimum, slowest_stage(costs, c, sp));
    CHECK(slowest_stage(costs, b, sp) == doctest::Approx(optimum));
  }
}

TEST_CASE("partition: equal costs split evenly; a faster stage takes more") {
  const std::vector<double> costs(6, 1.0);
  CHECK(balanced_boundaries(costs, 2) == boundaries{0, 3, 6});
  CHECK(balanced_boundaries(costs, 3) == boundaries{0, 2, 4, 6});
  const std::vector<double> speeds = {2.0, 1.0};
  CHECK(balanced_boundaries(costs, 2, speeds) == boundaries{0, 4, 6});
  // A heavy layer gets a stage of its own.
  const std::vector<double> lumpy = {1, 1, 10, 1, 1};
  CHECK(balanced_boundaries(lumpy, 3) == boundaries{0, 2, 3, 5});
}

TEST_CASE("partition: bad partitions are errors") {
  const std::vector<double> costs(3, 1.0);
  CHECK_THROWS_WITH_AS(balanced_boundaries(costs, 4), doctest::Contains("more stages than layers"), parallax::error);
  CHECK_THROWS_WITH_AS(check_boundaries({0, 2, 2, 3}, 3, 3), doctest::Contains("stage 1 is empty"), parallax::error);
  CHECK_THROWS_WITH_AS(check_boundaries({0, 3}, 3, 2), doctest::Contains("2 boundaries for 2 stages"), parallax::error);
  CHECK_THROWS_WITH_AS(check_boundaries({1, 3}, 3, 1), doctest::Contains("must start at 0"), parallax::error);
  CHECK_THROWS_WITH_AS(check_boundaries({0, 1, 2, 3, 3}, 3, 4), doctest::Contains("more stages than layers"), parallax::error);
  const std::vector<double> bad_speeds = {1.0, 0.0};
  CHECK_THROWS_WITH_AS(balanced_boundaries(costs, 2, bad_speeds), doctest::Contains("not positive"), parallax::error);
}
