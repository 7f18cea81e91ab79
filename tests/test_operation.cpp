// SPDX-License-Identifier: BSL-1.0
// Suite comm: operation scopes (the header that finds ranks in different
// library operations, sequence numbers per communicator, nesting) and the
// stall inspector's settings, at 1 to 4 ranks.

#include <parallax/core/operation.hpp>

#include "agreed.hpp"
#include "error_of.hpp"

#include <doctest/doctest.h>

#include <boost/mpi/communicator.hpp>

#include <string>

namespace {

using parallax::mpi::communicator;
using parallax::operation;

// "rank 1" at 2 ranks, "ranks 1, 2, 3" at 4: the ranks other than 0.
std::string others(int size) {
  std::string text = size == 2 ? "rank 1" : "ranks 1";
  for (int r = 2; r < size; ++r) text += ", " + std::to_string(r);
  return text;
}

}  // namespace

TEST_CASE("operation: ranks in different operations get the same rank_mismatch, naming each operation") {
  communicator world;
  const communicator comm(world, parallax::mpi::comm_duplicate);  // counts from 0
  {
    operation first(comm, "Test::first()");
    CHECK(first.sequence() == 1);
  }
  parallax::error_kind kind = parallax::error_kind::invalid_argument;
  const auto message = agreed_error(world, [&] {
    try {
      if (comm.rank() == 0) operation op(comm, "Checkpointer::save()", 4);
      else operation op(comm, "DataParallel::train_step()", 4);
    } catch (const parallax::error& e) {
      kind = e.kind();
      throw;
    }
  });
  if (comm.size() == 1) {
    CHECK(message == "");
    return;
  }
  CHECK(kind == parallax::error_kind::rank_mismatch);
  CHECK(contains(message, "ranks are in different library operations"));
  CHECK(contains(message, "rank 0 in Checkpointer::save() (operation 2, step 4, tests/test_operation.cpp:"));
  CHECK(contains(message, others(comm.size()) + " in DataParallel::train_step() (operation 2, step 4, "));
  // The ranks are out of step: every later operation throws the same error.
  const auto after = agreed_error(world, [&] { operation op(comm, "Test::after()"); });
  CHECK(after == message);
}

TEST_CASE("operation: the same name at different call sites is one operation; nested scopes count each") {
  communicator world;
  const communicator comm(world, parallax::mpi::comm_duplicate);
  const auto message = agreed_error(world, [&] {
    operation outer(comm, "Trainer::train_epoch()");
    CHECK(outer.sequence() == 1);
    // Each rank steps from its own line: still the same operation.
    if (comm.rank() % 2 == 0) {
      operation inner(comm, "Trainer::train_step()", 0);
      CHECK(inner.sequence() == 2);
    } else {
      operation inner(comm, "Trainer::train_step()", 0);
      CHECK(inner.sequence() == 2);
    }
  });
  CHECK(message == "");
  CHECK(parallax::operations_entered(comm) == 2);
}

TEST_CASE("operation: a nested operation shows the call site of the outermost one") {
  communicator world;
  const communicator comm(world, parallax::mpi::comm_duplicate);
  if (comm.size() == 1) return;
  int outer_line = 0;
  const auto message = agreed_error(world, [&] {
    outer_line = __LINE__ + 1;
    operation outer(comm, "Trainer::train_epoch()");
    // The inner scopes' own lines are library lines in a real call: what
    // the user wants to see is where the outer call came from.
    if (comm.rank() == 0) operation inner(comm, "Trainer::evaluate()", 3);
    else operation inner(comm, "Trainer::train_step()", 3);
  });
  const std::string site = "tests/test_operation.cpp:" + std::to_string(outer_line);
  CHECK(contains(message, "rank 0 in Trainer::evaluate() (operation 2, step 3, " + site + ")"));
  CHECK(contains(message, " in Trainer::train_step() (operation 2, step 3, " + site + ")"));
}

TEST_CASE("operation: once the outermost operation ends, the next one shows its own call site") {
  communicator world;
  const communicator comm(world, parallax::mpi::comm_duplicate);
  if (comm.size() == 1) return;
  { operation earlier(comm, "Trainer::train_epoch()"); }
  int line = 0;
  const auto message = agreed_error(world, [&] {
    line = __LINE__ + 1;
    if (comm.rank() == 0) operation op(comm, "Trainer::evaluate()");
    else operation op(comm, "Trainer::train_step()");
  });
  CHECK(contains(message, "rank 0 in Trainer::evaluate() (operation 2, tests/test_operation.cpp:" +
                              std::to_string(line) + ")"));
}

TEST_CASE("operation: each communicator counts its own operations") {
  communicator world;
  const communicator comm(world, parallax::mpi::comm_duplicate);
  const communicator half = comm.split(comm.rank() % 2);
  { operation op(comm, "Test::whole()"); }
  for (int i = 0; i < 3; ++i) operation op(half, "Test::half()");
  { operation op(comm, "Test::whole()"); }
  CHECK(parallax::operations_entered(comm) == 2);
  CHECK(parallax::operations_entered(half) == 3);
  // A rank that entered more operations on its half than the others on
  // theirs is still in step on the whole communicator.
  if (comm.rank() % 2 == 1) operation op(half, "Test::half()");
  const auto message = agreed_error(world, [&] { operation op(comm, "Test::whole()"); });
  CHECK(message == "");
  CHECK(parallax::operations_entered(comm) == 3);
}

TEST_CASE("operation: stall settings that differ between ranks are a rank_mismatch naming them") {
  communicator world;
  const communicator comm(world, parallax::mpi::comm_duplicate);
  const auto before = parallax::stall_settings();
  parallax::set_stall_options({.limit = comm.rank() == 0 ? 30.0 : 45.0, .action = parallax::stall_action::fail});
  const auto message = agreed_error(world, [&] { operation op(comm, "Test::settings()"); });
  parallax::set_stall_options(before);
  if (comm.size() == 1) {
    CHECK(message == "");
    return;
  }
  CHECK(contains(message, "Test::settings() (operation 1, "));
  CHECK(contains(message, "the stall settings differ between ranks: rank 0 has limit 30 s and action fail, "
                          "rank 1 has limit 45 s and action fail"));
}

TEST_CASE("operation: the stall inspector's settings from the environment") {
  using parallax::parse_stall_options;
  using parallax::stall_action;
  CHECK(parse_stall_options(nullptr, nullptr).limit == 60);
  CHECK(parse_stall_options(nullptr, nullptr).action == stall_action::fail);
  CHECK(parse_stall_options("", "").limit == 60);
  CHECK(parse_stall_options("2.5", nullptr).limit == 2.5);
  CHECK(parse_stall_options("0", nullptr).limit == 0);
  CHECK(parse_stall_options("120", "wait").action == stall_action::wait);
  CHECK(parse_stall_options("120", "fail").action == stall_action::fail);
  CHECK(contains(error_of([] { parse_stall_options("abc", nullptr); }),
                 "PARALLAX_STALL_TIMEOUT='abc': expected a number of seconds, 0 or more"));
  CHECK(contains(error_of([] { parse_stall_options("10s", nullptr); }), "PARALLAX_STALL_TIMEOUT='10s'"));
  CHECK(contains(error_of([] { parse_stall_options("-1", nullptr); }), "PARALLAX_STALL_TIMEOUT='-1'"));
  CHECK(contains(error_of([] { parse_stall_options("inf", nullptr); }), "PARALLAX_STALL_TIMEOUT='inf'"));
  CHECK(contains(error_of([] { parse_stall_options("5", "abort"); }),
                 "PARALLAX_STALL_ACTION='abort': expected 'fail' or 'wait'"));
  CHECK(contains(error_of([] { parallax::set_stall_options({.limit = -3}); }), "0 or more"));
}
