// SPDX-License-Identifier: BSL-1.0
// A small user model written from scratch for the data-parallel tests: a
// one-hidden-layer tanh network with a squared-error loss, gradients by hand.
// It satisfies parallax::Model and knows nothing of parallax beyond Batch.
#pragma once

#include <parallax/data/batch.hpp>
#include <parallax/detail/random.hpp>

#include <xtensor/xtensor.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <tuple>

namespace toy {

template <class T>
using batch = parallax::data::Batch<xt::xtensor<T, 2>, xt::xtensor<T, 1>>;

template <class T>
using dataset = parallax::data::TensorDataset<xt::xtensor<T, 2>, xt::xtensor<T, 1>>;

/// n samples of d features; targets from a fixed smooth function plus noise.
template <class T>
dataset<T> make_data(std::size_t n, std::size_t d, std::uint64_t seed) {
  parallax::detail::rng g(seed);
  xt::xtensor<T, 2> x = xt::zeros<T>({n, d});
  xt::xtensor<T, 1> y = xt::zeros<T>({n});
  for (std::size_t i = 0; i < n; ++i) {
    double s = 0;
    for (std::size_t j = 0; j < d; ++j) {
      x(i, j) = static_cast<T>(2 * g.uniform() - 1);
      s += std::sin(static_cast<double>(j + 1) * static_cast<double>(x(i, j)));
    }
    y(i) = static_cast<T>(s + 0.1 * (g.uniform() - 0.5));
  }
  return dataset<T>(std::move(x), std::move(y));
}

/// out = w2 . tanh(x W1 + b1) + b2; loss = mean 0.5 (out - y)^2.
template <class T>
struct TinyMLP {
  using batch_type = batch<T>;

  xt::xtensor<T, 2> W1, dW1;
  xt::xtensor<T, 1> b1, db1, w2, dw2, b2, db2;
  bool throw_on_loss = false;  // lets a test make one rank fail

  TinyMLP(std::size_t d, std::size_t h, std::uint64_t seed)
      : W1(xt::zeros<T>({d, h})), dW1(xt::zeros<T>({d, h})), b1(xt::zeros<T>({h})), db1(xt::zeros<T>({h})),
        w2(xt::zeros<T>({h})), dw2(xt::zeros<T>({h})), b2(xt::zeros<T>({std::size_t(1)})),
        db2(xt::zeros<T>({std::size_t(1)})) {
    parallax::detail::rng g(seed);
    for (auto& v : W1) v = static_cast<T>(g.uniform() - 0.5);
    for (auto& v : b1) v = static_cast<T>(0.1 * (g.uniform() - 0.5));
    for (auto& v : w2) v = static_cast<T>(g.uniform() - 0.5);
  }

  auto parameters() { return std::tie(W1, b1, w2, b2); }
  auto gradients() { return std::tie(dW1, db1, dw2, db2); }

  T output(const xt::xtensor<T, 2>& x, std::size_t i, xt::xtensor<T, 1>& hidden) const {
    const std::size_t d = W1.shape()[0], h = W1.shape()[1];
    T out = b2(0);
    for (std::size_t k = 0; k < h; ++k) {
      T a = b1(k);
      for (std::size_t j = 0; j < d; ++j) a += x(i, j) * W1(j, k);
      hidden(k) = std::tanh(a);
      out += w2(k) * hidden(k);
    }
    return out;
  }

  double loss_and_gradient(const batch_type& b) {
    if (throw_on_loss) throw std::runtime_error("TinyMLP: deliberate failure");
    const std::size_t n = b.size(), d = W1.shape()[0], h = W1.shape()[1];
    dW1.fill(0);
    db1.fill(0);
    dw2.fill(0);
    db2.fill(0);
    xt::xtensor<T, 1> hidden = xt::zeros<T>({h});
    double loss = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const T e = output(b.inputs, i, hidden) - b.targets(i);
      loss += 0.5 * static_cast<double>(e) * static_cast<double>(e);
      db2(0) += e;
      for (std::size_t k = 0; k < h; ++k) {
        dw2(k) += e * hidden(k);
        const T dh = e * w2(k) * (T(1) - hidden(k) * hidden(k));
        db1(k) += dh;
        for (std::size_t j = 0; j < d; ++j) dW1(j, k) += b.inputs(i, j) * dh;
      }
    }
    const T inv = T(1) / static_cast<T>(n);
    dW1 *= inv;
    db1 *= inv;
    dw2 *= inv;
    db2 *= inv;
    return loss / static_cast<double>(n);
  }

  double loss(const batch_type& b) const {
    xt::xtensor<T, 1> hidden = xt::zeros<T>({W1.shape()[1]});
    double s = 0;
    for (std::size_t i = 0; i < b.size(); ++i) {
      const double e = static_cast<double>(output(b.inputs, i, hidden) - b.targets(i));
      s += 0.5 * e * e;
    }
    return s / static_cast<double>(b.size());
  }

  /// The outputs for inputs x [n, d].
  xt::xtensor<T, 1> predict(const xt::xtensor<T, 2>& x) const {
    xt::xtensor<T, 1> hidden = xt::zeros<T>({W1.shape()[1]});
    xt::xtensor<T, 1> out = xt::zeros<T>({x.shape()[0]});
    for (std::size_t i = 0; i < x.shape()[0]; ++i) out(i) = output(x, i, hidden);
    return out;
  }

  /// "Correct" when the output has the target's sign.
  std::size_t correct(const batch_type& b) const {
    xt::xtensor<T, 1> hidden = xt::zeros<T>({W1.shape()[1]});
    std::size_t c = 0;
    for (std::size_t i = 0; i < b.size(); ++i) c += (output(b.inputs, i, hidden) > 0) == (b.targets(i) > 0);
    return c;
  }
};

}  // namespace toy
