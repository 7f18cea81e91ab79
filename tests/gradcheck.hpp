// SPDX-License-Identifier: BSL-1.0
// Finite-difference gradient checks for layers and losses (double precision).
// The surrogate loss of a layer is f(x, params) = sum(forward(x) * w) for a
// fixed random w, so backward(x, y, dy = w) must give df/dx and add df/dparams.
#pragma once

#include <parallax/core/concepts.hpp>
#include <parallax/detail/random.hpp>
#include <parallax/detail/tensor_list.hpp>
#include <parallax/detail/xtensor.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace gradcheck {

/// Fills a tensor with values uniform in [lo, hi), from a seed.
template <class E>
void fill_uniform(E& t, std::uint64_t seed, double lo = -1.0, double hi = 1.0) {
  parallax::detail::rng g(seed);
  for (auto& v : t) v = static_cast<typename E::value_type>(lo + (hi - lo) * g.uniform());
}

struct result {
  double max_error = 0;  // max over elements of |analytic - numeric| / max(1, |numeric|)
  std::string where;     // the element that had it
};

inline void record(result& r, double analytic, double numeric, const std::string& where) {
  const double err = std::abs(analytic - numeric) / std::max(1.0, std::abs(numeric));
  if (err >= r.max_error) {
    r.max_error = err;
    r.where = where + " analytic " + std::to_string(analytic) + " numeric " + std::to_string(numeric);
  }
}

/// The surrogate loss f(input) = sum(forward(input) * w) of a layer.
template <class L>
double weighted_output(L& layer, const typename L::input_type& input, const typename L::output_type& w) {
  typename L::output_type out;
  layer.forward(input, out);
  double s = 0;
  for (std::size_t i = 0; i < out.size(); ++i) s += static_cast<double>(out.data()[i]) * w.data()[i];
  return s;
}

/// Records every gradient of `holder` (its gradients(), already computed)
/// against central differences of f() in its parameters().
template <class H, class F>
void record_parameter_differences(result& r, H& holder, F&& f, double h) {
  std::vector<double*> params;
  std::vector<std::size_t> sizes;
  parallax::detail::for_each_tensor(holder.parameters(), [&](auto& p) {
    params.push_back(p.data());
    sizes.push_back(p.size());
  });
  std::vector<double*> grads;
  parallax::detail::for_each_tensor(holder.gradients(), [&](auto& g) { grads.push_back(g.data()); });
  REQUIRE(grads.size() == params.size());
  for (std::size_t t = 0; t < params.size(); ++t)
    for (std::size_t i = 0; i < sizes[t]; ++i) {
      const double saved = params[t][i];
      params[t][i] = saved + h;
      const double fp = f();
      params[t][i] = saved - h;
      const double fm = f();
      params[t][i] = saved;
      record(r, grads[t][i], (fp - fm) / (2 * h), "param " + std::to_string(t) + "[" + std::to_string(i) + "]");
    }
}

/// Records every parameter gradient of `layer` (already set by a backward
/// at x with dy = w) against central differences of weighted_output().
template <class L>
void record_parameters(result& r, L& layer, const typename L::input_type& x, const typename L::output_type& w,
                       double h) {
  record_parameter_differences(r, layer, [&] { return weighted_output(layer, x, w); }, h);
}

/// Checks a model's loss_and_gradient(batch) against central differences of
/// loss(batch) in every parameter. The gradients stay those of loss_and_gradient(batch).
template <class M>
result check_model(M& model, const typename M::batch_type& batch, double h = 1e-6) {
  model.loss_and_gradient(batch);
  result r;
  record_parameter_differences(r, model, [&] { return model.loss(batch); }, h);
  return r;
}

/// A tensor of `shape` uniform in [-scale, scale), from a seed.
template <class T, std::size_t N>
xt::xtensor<T, N> random_tensor(std::array<std::size_t, N> shape, std::uint64_t seed, double scale = 1.0) {
  xt::xtensor<T, N> t(shape);
  fill_uniform(t, seed, -scale, scale);
  return t;
}

/// Checks a layer's backward against central differences at input x.
/// Returns the worst relative error over dx and every parameter gradient.
template <parallax::Layer L>
result check_layer(L& layer, typename L::input_type x, std::uint64_t seed = 7, double h = 1e-6) {
  using X = typename L::input_type;
  using Y = typename L::output_type;
  Y y;
  layer.forward(x, y);
  Y w = y;
  fill_uniform(w, seed);
  if constexpr (parallax::HasLayerParameters<L>) {
    parallax::detail::for_each_tensor(layer.gradients(), [](auto& g) { std::fill(g.begin(), g.end(), 0); });
  }
  X dx;
  layer.backward(x, y, w, dx);
  result r;
  REQUIRE(dx.shape() == x.shape());
  for (std::size_t i = 0; i < x.size(); ++i) {
    X plus = x, minus = x;
    plus.data()[i] += h;
    minus.data()[i] -= h;
    record(r, dx.data()[i], (weighted_output(layer, plus, w) - weighted_output(layer, minus, w)) / (2 * h),
           "dx[" + std::to_string(i) + "]");
  }
  if constexpr (parallax::HasLayerParameters<L>) record_parameters(r, layer, x, w, h);
  return r;
}

/// Checks only the parameter gradients that backward_parameters(x, y, dy)
/// adds, for a layer whose input has no gradient (Embedding's integer ids).
template <class L>
  requires parallax::Layer<L> && parallax::HasLayerParameters<L> && parallax::HasParameterBackward<L>
result check_parameters(L& layer, const typename L::input_type& x, std::uint64_t seed = 7, double h = 1e-6) {
  typename L::output_type y;
  layer.forward(x, y);
  typename L::output_type w = y;
  fill_uniform(w, seed);
  parallax::detail::for_each_tensor(layer.gradients(), [](auto& g) { std::fill(g.begin(), g.end(), 0); });
  layer.backward_parameters(x, y, w);
  result r;
  record_parameters(r, layer, x, w, h);
  return r;
}

/// Checks a loss's gradient (loss(y, t, dy)) against central differences of value(y, t).
template <parallax::Loss L>
result check_loss(L& loss, typename L::input_type y, const typename L::target_type& t, double h = 1e-6) {
  typename L::input_type dy;
  loss.loss(y, t, dy);
  REQUIRE(dy.shape() == y.shape());
  result r;
  for (std::size_t i = 0; i < y.size(); ++i) {
    auto plus = y, minus = y;
    plus.data()[i] += h;
    minus.data()[i] -= h;
    record(r, dy.data()[i], (loss.value(plus, t) - loss.value(minus, t)) / (2 * h), "dy[" + std::to_string(i) + "]");
  }
  return r;
}

}  // namespace gradcheck
