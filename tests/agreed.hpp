// SPDX-License-Identifier: BSL-1.0
// For MPI tests of failures: runs f on every rank and returns the message of
// the parallax::error it threw ("" if none), checking that every rank got the
// same one (the library's promise: one error, on every rank, no hang).
#pragma once

#include <parallax/core/error.hpp>

#include <doctest/doctest.h>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>
#include <boost/serialization/string.hpp>

#include <string>
#include <vector>

template <class F>
std::string agreed_error(const boost::mpi::communicator& world, F&& f) {
  std::string message;
  try {
    f();
  } catch (const parallax::error& e) {
    message = e.what();
  }
  std::vector<std::string> all;
  boost::mpi::all_gather(world, message, all);
  for (const auto& m : all) CHECK(m == message);
  return message;
}
