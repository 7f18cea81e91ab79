// SPDX-License-Identifier: BSL-1.0
// Suite pipeline: schedules as data, checked without MPI by the simulator.

#include <parallax/pipeline/schedule.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cstddef>
#include <map>
#include <string>
#include <utility>
#include <vector>

using namespace parallax::pipeline;

namespace {
std::string text(const std::vector<op>& ops) {
  std::string s;
  const char* names[] = {"RA", "F", "SA", "RG", "B", "SG", "Bi", "W"};
  for (const auto& o : ops) {
    if (!s.empty()) s += ' ';
    s += names[static_cast<int>(o.kind)];
    s += std::to_string(o.micro_batch);
  }
  return s;
}
/// What the simulator finds wrong with s ("" when it completes).
std::string problem_of(const schedule& s, std::size_t m) {
  const auto r = simulate(s, m);
  return r.completes ? std::string() : r.problem;
}

/// The time a schedule takes when forward, backward_input and
/// backward_weight each take one unit, a whole backward two, sends and
/// receives nothing, and a message is there as soon as what it carries is
/// computed: each stage runs its list in order, waiting at receives.
double unit_time(const schedule& s) {
  const std::size_t p = s.size();
  std::vector<std::size_t> pc(p, 0);
  std::vector<double> now(p, 0);
  std::map<std::pair<std::size_t, std::size_t>, double> activation_at, gradient_at;  // (stage, mb) -> time it was sent
  for (bool progressed = true; progressed;) {
    progressed = false;
    for (std::size_t st = 0; st < p; ++st) {
      for (; pc[st] < s[st].size(); ++pc[st]) {
        const op o = s[st][pc[st]];
        const auto key = std::pair{st, o.micro_batch};
        if (o.kind == op_kind::recv_activation) {
          const auto it = activation_at.find({st - 1, o.micro_batch});
          if (it == activation_at.end()) break;
          now[st] = std::max(now[st], it->second);
        } else if (o.kind == op_kind::recv_gradient) {
          const auto it = gradient_at.find({st + 1, o.micro_batch});
          if (it == gradient_at.end()) break;
          now[st] = std::max(now[st], it->second);
        } else if (o.kind == op_kind::send_activation) {
          activation_at[key] = now[st];
        } else if (o.kind == op_kind::send_gradient) {
          gradient_at[key] = now[st];
        } else {
          now[st] += o.kind == op_kind::backward ? 2 : 1;
        }
        progressed = true;
      }
    }
  }
  for (std::size_t st = 0; st < p; ++st) REQUIRE(pc[st] == s[st].size());
  return *std::max_element(now.begin(), now.end());
}
}  // namespace

TEST_CASE("schedule: zero bubble on 2 stages and 4 micro-batches, written out") {
  const auto s = zero_bubble(2, 4);
  REQUIRE(s.size() == 2);
  // Stage 0 holds three micro-batches (1F1B: two); each W fills a wait for a gradient.
  CHECK(text(s[0]) == "F0 SA0 F1 SA1 F2 SA2 RG0 Bi0 W0 RG1 Bi1 F3 SA3 W1 RG2 Bi2 W2 RG3 Bi3 W3");
  CHECK(text(s[1]) == "RA0 F0 Bi0 SG0 RA1 F1 Bi1 SG1 W0 RA2 F2 Bi2 SG2 W1 RA3 F3 Bi3 SG3 W2 W3");
  CHECK(schedule_name(schedule_kind::zero_bubble) == std::string("zero_bubble"));
  CHECK(text(make_schedule(schedule_kind::zero_bubble, 2, 4)[1]) == text(s[1]));
}

TEST_CASE("schedule: zero bubble takes less time than 1F1B with unit costs") {
  // 1F1B: 3 (m + p - 1) units; no bubble at all would be 3 m.
  CHECK(unit_time(one_f_one_b(2, 4)) == 15);
  CHECK(unit_time(zero_bubble(2, 4)) == 13);
  CHECK(unit_time(one_f_one_b(2, 8)) == 27);
  CHECK(unit_time(zero_bubble(2, 8)) == 25);
  for (std::size_t p = 2; p <= 6; ++p)
    for (std::size_t m = 1; m <= 16; ++m) {
      const double f = unit_time(one_f_one_b(p, m));
      CHECK(f == 3.0 * static_cast<double>(m + p - 1));
      const double z = unit_time(zero_bubble(p, m));
      CHECK_MESSAGE(z < f, "p=" << p << " m=" << m << ": zero bubble " << z << ", 1F1B " << f);
      CHECK(z >= 3.0 * static_cast<double>(m));
    }
  CHECK(unit_time(zero_bubble(1, 3)) == 9);  // one stage: nothing to hide
}

TEST_CASE("schedule: every zero-bubble schedule completes, its W's in micro-batch order, one micro-batch more than 1F1B") {
  for (std::size_t p = 1; p <= 8; ++p)
    for (std::size_t m = 1; m <= 16; ++m) {
      const auto s = zero_bubble(p, m);
      const auto z = simulate(s, m);
      CHECK_MESSAGE(z.completes, "zero_bubble p=" << p << " m=" << m << ": " << z.problem);
      for (std::size_t st = 0; st < p; ++st) {
        CHECK(z.peak_in_flight[st] <= std::min(p - st + 1, m));
        std::vector<std::size_t> weights, inputs;
        for (const auto& o : s[st]) {
          CHECK(o.kind != op_kind::backward);
          if (o.kind == op_kind::backward_weight) weights.push_back(o.micro_batch);
          if (o.kind == op_kind::backward_input) inputs.push_back(o.micro_batch);
        }
        REQUIRE(weights.size() == m);
        for (std::size_t mb = 0; mb < m; ++mb) {
          CHECK(weights[mb] == mb);  // the order 1F1B sums the parameter gradients in
          CHECK(inputs[mb] == mb);
        }
      }
    }
}

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
  CHECK(text(zero_bubble(1, 3)[0]) == "F0 Bi0 F1 Bi1 W0 F2 Bi2 W1 W2");
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
  CHECK(problem_of(dead, 1).find("deadlock") != std::string::npos);

  schedule unreceived = {{{op_kind::forward, 0}, {op_kind::send_activation, 0}, {op_kind::send_activation, 0}, {op_kind::recv_gradient, 0}, {op_kind::backward, 0}},
                         {{op_kind::recv_activation, 0}, {op_kind::forward, 0}, {op_kind::backward, 0}, {op_kind::send_gradient, 0}}};
  CHECK(problem_of(unreceived, 1).find("never received") != std::string::npos);

  schedule early = {{{op_kind::backward, 0}, {op_kind::forward, 0}}};
  CHECK(problem_of(early, 1).find("backward before forward") != std::string::npos);

  schedule missing = {{{op_kind::forward, 0}, {op_kind::backward, 0}}};
  CHECK(problem_of(missing, 2).find("never ran micro-batch 1") != std::string::npos);

  schedule weight_first = {{{op_kind::forward, 0}, {op_kind::backward_weight, 0}, {op_kind::backward_input, 0}}};
  CHECK(problem_of(weight_first, 1).find("backward_weight before backward_input") != std::string::npos);

  schedule weight_twice = {{{op_kind::forward, 0}, {op_kind::backward, 0}, {op_kind::backward_weight, 0}}};
  CHECK(problem_of(weight_twice, 1).find("backward_weight twice") != std::string::npos);

  schedule no_weight = {{{op_kind::forward, 0}, {op_kind::backward_input, 0}}};
  CHECK(problem_of(no_weight, 1).find("never ran micro-batch 0") != std::string::npos);
}

TEST_CASE("schedule: no stages or no micro-batches is an error") {
  CHECK_THROWS_AS(gpipe(0, 4), parallax::error);
  CHECK_THROWS_AS(one_f_one_b(2, 0), parallax::error);
  CHECK_THROWS_AS(forward_only(2, 0), parallax::error);
  CHECK_THROWS_AS(zero_bubble(0, 4), parallax::error);
  CHECK_THROWS_AS(zero_bubble(2, 0), parallax::error);
}
