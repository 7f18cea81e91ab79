// SPDX-License-Identifier: BSL-1.0
// Suite data_parallel: a program built with arithmetic that exact_sum cannot
// rely on (meson builds this file with -funsafe-math-optimizations and with
// x87 arithmetic, -mfpmath=387) refuses reproducible mode at construction,
// on every rank, and still trains in the default mode.

#include "agreed.hpp"
#include "toy_model.hpp"

#include <parallax/data_parallel.hpp>
#include <parallax/optim/sgd.hpp>

#include <doctest/doctest.h>

#include <boost/mpi/communicator.hpp>

#include <cmath>
#include <string>

#ifndef PARALLAX_EXPECTED_REFUSAL
#error "meson passes the expected refusal text as PARALLAX_EXPECTED_REFUSAL"
#endif

TEST_CASE("DataParallel reproducible: refused in a build whose arithmetic could round its sums") {
  parallax::mpi::communicator world;
  parallax::optim::SGD<double> sgd({.lr = 0.1});
  REQUIRE(parallax::training::exact_sum_unavailable != nullptr);
  const auto message = agreed_error(world, [&] {
    parallax::DataParallel dp(toy::TinyMLP<double>(3, 4, 1), sgd, {.reproducible_atom = 2}, world);
  });
  CHECK(message.find("DataParallel: reproducible_atom needs IEEE double arithmetic; ") != std::string::npos);
  CHECK(message.find(PARALLAX_EXPECTED_REFUSAL) != std::string::npos);
  const auto data = toy::make_data<double>(16, 3, 2);
  parallax::DataParallel dp(toy::TinyMLP<double>(3, 4, 1), sgd, {}, world);
  auto sampler = dp.make_sampler(data.size(), 8);
  CHECK(std::isfinite(dp.train_epoch(data, sampler).loss));
}
