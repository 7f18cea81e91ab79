#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Cutting a chain of layers into contiguous pipeline stages: checking given
/// boundaries, the partition that minimises the slowest stage for given
/// per-layer costs (parameter counts or measured times) and per-stage
/// speeds, and a chain's parameter counts as such costs.

#include <parallax/core/error.hpp>
#include <parallax/detail/number_text.hpp>

#include <cmath>
#include <cstddef>
#include <limits>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace parallax::pipeline {

/// Stage s holds layers [boundaries[s], boundaries[s + 1]); there are
/// stages + 1 boundaries, from 0 to the layer count.
using boundaries = std::vector<std::size_t>;

/// Throws parallax::error unless `b` cuts `layers` layers into `stages`
/// non-empty stages.
void check_boundaries(const boundaries& b, std::size_t layers, std::size_t stages);

/// The contiguous partition of layers with these costs into `stages`
/// non-empty stages that minimises max over stages of (stage cost / speed of
/// the stage). `speeds` (one per stage, relative, positive) defaults to all
/// equal. Ties go to the partition whose earlier stages end earlier.
boundaries balanced_boundaries(std::span<const double> costs, std::size_t stages, std::span<const double> speeds = {});

/// max over stages of stage cost / speed, for reporting.
double slowest_stage(std::span<const double> costs, const boundaries& b, std::span<const double> speeds = {});

/// Each layer's static parameter_count(constructor arguments...), as costs,
/// for Chain (a type with layer_count and part_t<I>, such as
/// pipeline::stage) built from part_args; throws naming the first layer
/// that has none, which cannot be balanced this way.
template <class Chain, class... Args>
std::vector<double> parameter_costs(const std::tuple<Args...>& part_args);

/// The boundaries for `stages` stages of Chain: `given` when not empty
/// (checked), else balanced by parameter_costs() and `speeds`.
template <class Chain, class... Args>
boundaries boundaries_for(const std::tuple<Args...>& part_args, const boundaries& given, std::size_t stages,
                          std::span<const double> speeds);

// ---------------------------------------------------------------------------

inline void check_boundaries(const boundaries& b, std::size_t layers, std::size_t stages) {
  PARALLAX_CHECK(stages <= layers, "pipeline partition: " + std::to_string(stages) + " stages for " +
                                       std::to_string(layers) + " layers: more stages than layers");
  PARALLAX_CHECK(b.size() == stages + 1, "pipeline partition: " + std::to_string(b.size()) +
                                             " boundaries for " + std::to_string(stages) +
                                             " stages (need stages + 1, from 0 to the layer count)");
  PARALLAX_CHECK(b.front() == 0 && b.back() == layers,
                 "pipeline partition: boundaries must start at 0 and end at the layer count " + std::to_string(layers));
  for (std::size_t s = 0; s < stages; ++s)
    PARALLAX_CHECK(b[s] < b[s + 1], "pipeline partition: stage " + std::to_string(s) + " is empty (boundaries " +
                                        std::to_string(b[s]) + " and " + std::to_string(b[s + 1]) + ")");
}

namespace detail {
inline std::vector<double> stage_speeds(std::span<const double> speeds, std::size_t stages) {
  if (speeds.empty()) return std::vector<double>(stages, 1.0);
  PARALLAX_CHECK(speeds.size() == stages, "pipeline partition: " + std::to_string(speeds.size()) + " speeds for " +
                                              std::to_string(stages) + " stages");
  for (double v : speeds)
    PARALLAX_CHECK(std::isfinite(v) && v > 0, "pipeline partition: stage speed " + parallax::detail::number_text(v) + " is not positive");
  return {speeds.begin(), speeds.end()};
}
}  // namespace detail

inline boundaries balanced_boundaries(std::span<const double> costs, std::size_t stages, std::span<const double> speeds) {
  const std::size_t n = costs.size();
  PARALLAX_CHECK(stages > 0, "pipeline partition: no stages");
  PARALLAX_CHECK(stages <= n, "pipeline partition: " + std::to_string(stages) + " stages for " + std::to_string(n) +
                                  " layers: more stages than layers");
  for (double c : costs) PARALLAX_CHECK(std::isfinite(c) && c >= 0, "pipeline partition: a layer cost is negative or not finite");
  const auto speed = detail::stage_speeds(speeds, stages);
  std::vector<double> prefix(n + 1, 0.0);
  for (std::size_t i = 0; i < n; ++i) prefix[i + 1] = prefix[i] + costs[i];
  constexpr double inf = std::numeric_limits<double>::infinity();
  // best[k][i]: the smallest slowest-stage cost of the first i layers in k stages.
  std::vector<std::vector<double>> best(stages + 1, std::vector<double>(n + 1, inf));
  std::vector<std::vector<std::size_t>> cut(stages + 1, std::vector<std::size_t>(n + 1, 0));
  best[0][0] = 0;
  for (std::size_t k = 1; k <= stages; ++k)
    for (std::size_t i = k; i <= n - (stages - k); ++i)
      for (std::size_t j = k - 1; j < i; ++j) {
        if (best[k - 1][j] == inf) continue;
        const double v = std::max(best[k - 1][j], (prefix[i] - prefix[j]) / speed[k - 1]);
        if (v < best[k][i]) {
          best[k][i] = v;
          cut[k][i] = j;
        }
      }
  boundaries b(stages + 1, 0);
  b[stages] = n;
  for (std::size_t k = stages, i = n; k > 0; --k) {
    i = cut[k][i];
    b[k - 1] = i;
  }
  check_boundaries(b, n, stages);
  return b;
}

inline double slowest_stage(std::span<const double> costs, const boundaries& b, std::span<const double> speeds) {
  const auto speed = detail::stage_speeds(speeds, b.size() - 1);
  double worst = 0;
  for (std::size_t s = 0; s + 1 < b.size(); ++s) {
    double c = 0;
    for (std::size_t i = b[s]; i < b[s + 1]; ++i) c += costs[i];
    worst = std::max(worst, c / speed[s]);
  }
  return worst;
}

/// Whether L::parameter_count(args...) exists for a tuple of constructor
/// arguments (checked on the call itself, so a layer without it is a false,
/// not a compile error).
namespace detail {
template <class L, class Tuple>
struct counts_parameters : std::false_type {};
template <class L, class... A>
struct counts_parameters<L, std::tuple<A...>>
    : std::bool_constant<requires(const A&... a) { L::parameter_count(a...); }> {};
}  // namespace detail

template <class Chain, class... Args>
std::vector<double> parameter_costs(const std::tuple<Args...>& part_args) {
  auto count = []<std::size_t I>(const auto& args, std::integral_constant<std::size_t, I>) {
    using L = typename Chain::template part_t<I>;
    if constexpr (detail::counts_parameters<L, std::remove_cvref_t<decltype(args)>>::value) {
      return static_cast<double>(std::apply([](const auto&... a) { return L::parameter_count(a...); }, args));
    } else {
      ::parallax::detail::throw_error(
          "ModelParallel: layer " + std::to_string(I) +
          " has no static parameter_count(constructor arguments...), so the partition cannot be balanced "
          "by parameter count: give pipeline_options::boundaries, or use profile_boundaries()");
      return 0.0;
    }
  };
  std::vector<double> costs(Chain::layer_count);
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    ((costs[I] = count(std::get<I>(part_args), std::integral_constant<std::size_t, I>{})), ...);
  }(std::make_index_sequence<Chain::layer_count>{});
  return costs;
}

template <class Chain, class... Args>
boundaries boundaries_for(const std::tuple<Args...>& part_args, const boundaries& given, std::size_t stages,
                          std::span<const double> speeds) {
  if (given.empty()) return balanced_boundaries(parameter_costs<Chain>(part_args), stages, speeds);
  check_boundaries(given, Chain::layer_count, stages);
  return given;
}

}  // namespace parallax::pipeline
