// SPDX-License-Identifier: BSL-1.0
// Suite pipeline: schedules as data, checked without MPI by the simulator.

#include <parallax/pipeline/schedule.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <vector>

using namespace parallax::pipeline;

namespace {
std::string text(const std::vector<op>& ops) {
  std::string s;
  const char* names[] = {"RA", "F", "SA", "RG", "B", "SG"};
  for (const auto& o : ops) s += (s.empty() ? "" : " ") + std::string(names[static_cast<int>(o.kind)]) + std::to_string(o.micro_batch);
  return s;
}
}  // namespace

TEST_CASE("schedule: 1F1B on 2 stages and 3 micro-batches, written out") {
  const auto s = one_f_one_b(2, 3);
  REQUIRE(s.size() == 2);
  CHECK(text(s[0]) == "F0 SA0 F1 SA1 RG0 B0 F2 SA2 RG1 B1 RG2 B2");
  CHECK(text(s[1]) == "RA0 F0 B0 SG0 RA1 F1 B1 SG1 RA2 F2 B2 SG2");
}

TEST_CASE("schedule: GPipe on 3 stages and 2 micro-batches, written out") {
  const auto s = gpipe(3, 2);
  CHECK(text(s[0]) == "F0 SA0 F1 SA1 RG1 B1 RG0 B0");
  CHECK(text(s[1]) == "RA0 F0 SA0 RA1 F1 SA1 RG1 B1 SG1 RG0 B0 SG0");
  CHECK(text(s[2]) == "RA0 F0 RA1 F1 B1 SG1 B0 SG0");
}

TEST_CASE("schedule: forward only on 3 stages and 2 micro-batches, written out") {
  const auto s = forward_only(3, 2);
  REQUIRE(s.size() == 3);
  CHECK(text(s[0]) == "F0 SA0 F1 SA1");
  CHECK(text(s[1]) == "RA0 F0 SA0 RA1 F1 SA1");
  CHECK(text(s[2]) == "RA0 F0 RA1 F1");
  CHECK(text(forward_only(1, 2)[0]) == "F0 F1");
}

TEST_CASE("schedule: one stage is plain gradient accumulation") {
  for (auto kind : {schedule_kind::gpipe, schedule_kind::one_f_one_b}) {
    const auto s = make_schedule(kind, 1, 3);
    REQUIRE(s.size() == 1);
    const auto forwards = std::count_if(s[0].begin(), s[0].end(), [](const op& o) { return o.kind == op_kind::forward; });
    CHECK(forwards == 3);
    CHECK(s[0].size() == 6);  // no sends or receives
  }
}

TEST_CASE("schedule: every GPipe and 1F1B schedule completes; in-flight micro-batches as promised") {
  for (std::size_t p = 1; p <= 8; ++p)
    for (std::size_t m = 1; m <= 16; ++m) {
      const auto g = simulate(gpipe(p, m), m);
      CHECK_MESSAGE(g.completes, "gpipe p=" << p << " m=" << m << ": " << g.problem);
      const auto f = simulate(one_f_one_b(p, m), m);
      CHECK_MESSAGE(f.completes, "1f1b p=" << p << " m=" << m << ": " << f.problem);
      for (std::size_t st = 0; st < p; ++st) {
        CHECK(g.peak_in_flight[st] == m);                      // GPipe holds all m
        CHECK(f.peak_in_flight[st] == std::min(p - st, m));    // 1F1B: at most p - s
        CHECK(f.peak_in_flight[st] <= p);
      }
    }
}

TEST_CASE("schedule: 1F1B and GPipe take the same number of rounds in the simulator (same bubble)") {
  // Each op costs one round: both have the (m + p - 1)-shaped critical path.
  for (std::size_t p = 2; p <= 4; ++p)
    for (std::size_t m = 1; m <= 8; ++m) {
      const auto g = simulate(gpipe(p, m), m);
      const auto f = simulate(one_f_one_b(p, m), m);
      CHECK(f.rounds <= g.rounds + p);
    }
}

TEST_CASE("schedule: the simulator finds deadlocks, missing receives and bad orders") {
  // Stage 0 waits for a gradient before sending the activation it depends on.
  schedule dead = {{{op_kind::forward, 0}, {op_kind::recv_gradient, 0}, {op_kind::send_activation, 0}, {op_kind::backward, 0}},
                   {{op_kind::recv_activation, 0}, {op_kind::forward, 0}, {op_kind::backward, 0}, {op_kind::send_gradient, 0}}};
  auto r = simulate(dead, 1);
  CHECK_FALSE(r.completes);
  CHECK(r.problem.find("deadlock") != std::string::npos);

  schedule unreceived = {{{op_kind::forward, 0}, {op_kind::send_activation, 0}, {op_kind::send_activation, 0}, {op_kind::recv_gradient, 0}, {op_kind::backward, 0}},
                         {{op_kind::recv_activation, 0}, {op_kind::forward, 0}, {op_kind::backward, 0}, {op_kind::send_gradient, 0}}};
  r = simulate(unreceived, 1);
  CHECK_FALSE(r.completes);
  CHECK(r.problem.find("never received") != std::string::npos);

  schedule early = {{{op_kind::backward, 0}, {op_kind::forward, 0}}};
  r = simulate(early, 1);
  CHECK_FALSE(r.completes);
  CHECK(r.problem.find("backward before forward") != std::string::npos);

  schedule missing = {{{op_kind::forward, 0}, {op_kind::backward, 0}}};
  r = simulate(missing, 2);
  CHECK_FALSE(r.completes);
  CHECK(r.problem.find("never ran micro-batch 1") != std::string::npos);
}

TEST_CASE("schedule: no stages or no micro-batches is an error") {
  CHECK_THROWS_AS(gpipe(0, 4), parallax::error);
  CHECK_THROWS_AS(one_f_one_b(2, 0), parallax::error);
  CHECK_THROWS_AS(forward_only(2, 0), parallax::error);
}
