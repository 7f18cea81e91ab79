#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The stall inspector: its settings (stall_options, from the environment or
/// set_stall_options()), the record each rank keeps of where every rank is,
/// and the watched wait of an operation's header (core/operation.hpp): past
/// the limit it names the ranks that have not arrived and where each was last
/// seen, then fails or keeps waiting.

#include <parallax/core/error.hpp>
#include <parallax/detail/mpi.hpp>
#include <parallax/detail/number_text.hpp>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>
#include <mpi.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <list>
#include <memory>
#include <optional>
#include <source_location>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace parallax {

/// What the stall inspector does once an operation has waited the limit.
enum class stall_action : std::uint8_t {
  fail,  ///< report, then throw error_kind::communication on the waiting ranks (the default)
  wait,  ///< report, and report again after each further limit; never give up
};

/// The stall inspector's settings, process-wide (they must be the same on
/// every rank: each operation's entry checks it).
struct stall_options {
  double limit = 60;  ///< seconds an operation waits for the other ranks before the report; 0 turns it off
  stall_action action = stall_action::fail;
};

/// The settings in force: set_stall_options()'s, else the environment's
/// (PARALLAX_STALL_TIMEOUT in seconds, 0 = off; PARALLAX_STALL_ACTION fail or
/// wait), else the defaults. A bad environment value throws invalid_argument.
stall_options stall_settings();

/// Replaces the settings for every later operation of this process. Call it
/// alike on every rank.
void set_stall_options(stall_options options);

/// The settings from the environment variables' texts (nullptr: not set).
/// Throws invalid_argument, naming the variable and the value, on a bad one.
stall_options parse_stall_options(const char* timeout, const char* action);

// ===========================================================================
// Implementation
// ===========================================================================

namespace detail {

/// What a rank says about the operation it is in (fixed size: it travels as
/// bytes, to rank 0 on entry and in the mismatch's all-gather).
struct operation_record {
  std::uint64_t sequence = 0;
  std::int64_t step = -1;
  std::int32_t world_rank = -1;
  double limit = 0;
  std::uint8_t action = 0;
  char name[56] = {};
  char site[72] = {};
};

/// "DataParallel::train_step() (operation 7, step 3, examples/train.cpp:120)".
inline std::string describe(const operation_record& r) {
  std::string text = std::string(r.name) + " (operation " + std::to_string(r.sequence);
  if (r.step >= 0) text += ", step " + std::to_string(r.step);
  if (r.site[0]) text += ", " + std::string(r.site);
  return text + ")";
}

/// The operations of one communicator, on this rank.
struct operation_state {
  MPI_Comm ops = MPI_COMM_NULL;  // a duplicate: the headers and the inspector's messages never meet anyone's
  int rank = 0;
  int size = 1;
  std::uint64_t entered = 0;
  // An earlier operation that found the ranks out of step (a mismatch, a
  // stall): every later operation here throws it again, without a collective.
  std::optional<error> failed;
  std::vector<operation_record> seen;   // rank 0: each rank's latest arrival
  std::list<std::pair<MPI_Request, std::unique_ptr<operation_record>>> sends;  // arrivals on their way
  // The header's buffers live here, not on the stack: after a stall the
  // all-reduce stays posted and may still write them.
  std::array<std::uint64_t, 6> mine{}, most{};

  /// Frees its MPI handles (as the communicator's attribute, detail/mpi.hpp).
  void release() {
    for (auto& s : sends) MPI_Request_free(&s.first);
    if (ops != MPI_COMM_NULL) MPI_Comm_free(&ops);
  }
};

constexpr int arrival_tag = 1;
constexpr int verdict_tag = 2;

inline std::optional<stall_options>& stall_override() {
  static std::optional<stall_options> set;
  return set;
}

inline std::string seconds_text(double s) { return detail::number_text(std::round(s * 10) / 10) + " s"; }

/// Polls between MPI_Test calls: a yield for the first millisecond, then
/// sleeps growing to 1 ms, so a rank that waits long leaves the core to the
/// ranks it waits for (2 ranks may share a core).
class backoff {
 public:
  void pause() {
    if (std::chrono::steady_clock::now() - start_ < std::chrono::milliseconds(1)) {
      std::this_thread::yield();
      return;
    }
    pause_ = std::min(std::chrono::microseconds(1000), std::max(std::chrono::microseconds(20), pause_ * 2));
    std::this_thread::sleep_for(pause_);
  }

 private:
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::chrono::microseconds pause_{0};
};

/// The duplicate's creation, the first collective of a communicator's first
/// operation `name`, under the stall inspector. No arrival can have been
/// told before it, so past the limit each waiting rank only says that it
/// waits for the other ranks' first operation; with stall_action::fail it
/// throws that (and so does every later operation on the communicator).
inline void wait_for_first_operation(MPI_Request& request, operation_state& s, std::string_view name) {
  const auto o = stall_settings();
  if (o.limit <= 0) {
    mpi_check(MPI_Wait(&request, MPI_STATUS_IGNORE), "MPI_Wait");
    return;
  }
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  const auto limit = std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(o.limit));
  auto next = start + limit;
  backoff wait;
  for (;;) {
    int done = 0;
    for (int spin = 0; spin < 2000 && !done; ++spin)
      mpi_check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "MPI_Test");
    if (done) return;
    const auto now = clock::now();
    if (now >= next) {
      next += limit;
      const std::string waited = seconds_text(std::chrono::duration<double>(now - start).count());
      std::cerr << "parallax: stall: " + std::string(name) + " has waited " + waited + " on rank " +
                       std::to_string(world_rank()) + " for the other ranks' first library operation here\n"
                << std::flush;
      if (o.action == stall_action::fail) {
        // The same text on every waiting rank; the state stays, since the
        // duplicate may still land in it.
        s.failed = error(error_kind::communication,
                         "stall: " + std::string(name) + " has waited " + seconds_text(o.limit) +
                             " for some rank of its communicator to enter its first library operation there "
                             "(which ranks are missing cannot be known before it; PARALLAX_STALL_TIMEOUT sets "
                             "the limit)");
        throw *s.failed;
      }
    }
    wait.pause();
  }
}

/// Rank 0: takes in every arrival that has come.
inline void drain_arrivals(operation_state& s) {
  for (;;) {
    int flag = 0;
    MPI_Status status;
    mpi_check(MPI_Iprobe(MPI_ANY_SOURCE, arrival_tag, s.ops, &flag, &status), "MPI_Iprobe");
    if (!flag) return;
    operation_record r;
    mpi_check(MPI_Recv(&r, sizeof r, MPI_BYTE, status.MPI_SOURCE, arrival_tag, s.ops, MPI_STATUS_IGNORE), "MPI_Recv");
    s.seen[static_cast<std::size_t>(status.MPI_SOURCE)] = r;
  }
}

/// A rank other than 0: tells rank 0 it has arrived (nonblocking; finished
/// sends are retired on the next entry).
inline void announce_arrival(operation_state& s, const operation_record& me) {
  for (auto it = s.sends.begin(); it != s.sends.end();) {
    int done = 0;
    mpi_check(MPI_Test(&it->first, &done, MPI_STATUS_IGNORE), "MPI_Test");
    it = done ? s.sends.erase(it) : std::next(it);
  }
  auto& send = s.sends.emplace_back(MPI_REQUEST_NULL, std::make_unique<operation_record>(me));
  mpi_check(MPI_Isend(send.second.get(), sizeof me, MPI_BYTE, 0, arrival_tag, s.ops, &send.first), "MPI_Isend");
}

inline std::vector<int> world_ranks_of(MPI_Comm comm, const std::vector<int>& ranks) {
  MPI_Group group, world;
  MPI_Comm_group(comm, &group);
  MPI_Comm_group(MPI_COMM_WORLD, &world);
  std::vector<int> out(ranks.size());
  MPI_Group_translate_ranks(group, static_cast<int>(ranks.size()), ranks.data(), world, out.data());
  MPI_Group_free(&group);
  MPI_Group_free(&world);
  return out;
}

/// Rank 0 at the limit: the error every rank throws (missing ranks named,
/// with where each was last seen), which it sends to every other rank.
inline error stall_verdict(operation_state& s, const operation_record& me, const stall_options& o) {
  std::vector<int> missing;
  for (int r = 0; r < s.size; ++r)
    if (s.seen[static_cast<std::size_t>(r)].sequence < me.sequence) missing.push_back(r);
  const auto world = world_ranks_of(s.ops, missing);
  std::string text = std::string("stall: ") + describe(me) + " has waited " + seconds_text(o.limit) + ": ";
  for (std::size_t i = 0; i < missing.size(); ++i) {
    const auto& last = s.seen[static_cast<std::size_t>(missing[i])];
    text += (i ? "; rank " : "rank ") + std::to_string(world[i]) + " has not arrived (" +
            (last.sequence ? "last seen in " + describe(last) : std::string("not seen in any operation")) + ")";
  }
  text += " (PARALLAX_STALL_TIMEOUT sets the limit)";
  std::vector<int> sorted = world;
  std::sort(sorted.begin(), sorted.end());
  // To each waiting rank: the missing world ranks, then the text.
  std::vector<char> message(sizeof(int) * (1 + sorted.size()) + text.size());
  const int count = static_cast<int>(sorted.size());
  std::memcpy(message.data(), &count, sizeof count);
  std::memcpy(message.data() + sizeof count, sorted.data(), sizeof(int) * sorted.size());
  std::memcpy(message.data() + sizeof(int) * (1 + sorted.size()), text.data(), text.size());
  // To the missing ranks too: one that is only late finds it when it arrives,
  // and throws the same error (a small message: sent eagerly, whether or not
  // that rank ever receives it).
  for (int r = 1; r < s.size; ++r)
    mpi_check(MPI_Send(message.data(), static_cast<int>(message.size()), MPI_BYTE, r, verdict_tag, s.ops),
              "MPI_Send");
  return error(error_kind::communication, text, sorted);
}

/// A rank other than 0: rank 0's verdict, when it has come.
inline std::optional<error> receive_verdict(operation_state& s) {
  int flag = 0;
  MPI_Status status;
  mpi_check(MPI_Iprobe(0, verdict_tag, s.ops, &flag, &status), "MPI_Iprobe");
  if (!flag) return std::nullopt;
  int bytes = 0;
  MPI_Get_count(&status, MPI_BYTE, &bytes);
  std::vector<char> message(static_cast<std::size_t>(bytes));
  mpi_check(MPI_Recv(message.data(), bytes, MPI_BYTE, 0, verdict_tag, s.ops, MPI_STATUS_IGNORE), "MPI_Recv");
  int count = 0;
  std::memcpy(&count, message.data(), sizeof count);
  std::vector<int> ranks(static_cast<std::size_t>(count));
  std::memcpy(ranks.data(), message.data() + sizeof count, sizeof(int) * ranks.size());
  const std::size_t at = sizeof(int) * (1 + ranks.size());
  return error(error_kind::communication, std::string(message.data() + at, message.size() - at), std::move(ranks));
}

/// Waits for `request` (the header's all-reduce) under the stall inspector:
/// polls, rank 0 taking in arrivals meanwhile; past the limit every waiting
/// rank prints one line (rank 0's names the ranks that have not arrived),
/// then either waits on, reporting again after each limit, or throws.
inline void watched_wait(MPI_Request& request, operation_state& s, const operation_record& me,
                         const stall_options& o) {
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  const auto limit = std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(o.limit));
  auto next = start + limit;
  int reports = 0;
  backoff wait;
  for (;;) {
    // Spin on MPI_Test for a moment: the usual wait is a few microseconds,
    // and a nonblocking collective progresses only inside MPI calls.
    int done = 0;
    for (int spin = 0; spin < 2000 && !done; ++spin)
      mpi_check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "MPI_Test");
    if (s.rank == 0) drain_arrivals(s);
    // A rank that was late may find its header complete (rank 0 progresses
    // it while it ends) and rank 0's verdict waiting: the verdict wins, or
    // it would go on into a collective that nobody else enters.
    if (s.rank != 0)
      if (auto verdict = receive_verdict(s)) {
        s.failed = verdict;
        throw *verdict;
      }
    if (done) return;
    const auto now = clock::now();
    if (now >= next) {
      ++reports;
      next += limit;
      const double waited = std::chrono::duration<double>(now - start).count();
      std::string line = "parallax: stall: " + describe(me) + " has waited " + seconds_text(waited) + " on rank " +
                         std::to_string(world_rank());
      if (s.rank == 0) {
        for (int r = 0; r < s.size; ++r) {
          const auto& last = s.seen[static_cast<std::size_t>(r)];
          if (last.sequence >= me.sequence) continue;
          line += "; rank " + std::to_string(world_ranks_of(s.ops, {r})[0]) + " has not arrived (" +
                  (last.sequence ? "last seen in " + describe(last) : std::string("not seen in any operation")) + ")";
        }
      }
      std::cerr << line + "\n" << std::flush;
      if (o.action == stall_action::fail) {
        if (s.rank == 0) {
          s.failed = stall_verdict(s, me, o);
          throw *s.failed;
        }
        // Rank 0 names the missing ranks; without its word after a second
        // limit, rank 0 itself is not here.
        if (reports >= 2) {
          s.failed = error(error_kind::communication,
                           std::string("stall: ") + describe(me) + " has waited " + seconds_text(2 * o.limit) +
                               " without word from rank 0 of the communicator, which names the missing ranks: "
                               "rank 0 has not arrived (PARALLAX_STALL_TIMEOUT sets the limit)",
                           world_ranks_of(s.ops, {0}));
          throw *s.failed;
        }
      }
    }
    wait.pause();
  }
}

}  // namespace detail

inline stall_options parse_stall_options(const char* timeout, const char* action) {
  stall_options o;
  if (timeout && *timeout) {
    char* end = nullptr;
    const double limit = std::strtod(timeout, &end);
    PARALLAX_CHECK(end && *end == '\0' && std::isfinite(limit) && limit >= 0,
                   std::string("PARALLAX_STALL_TIMEOUT='") + timeout +
                       "': expected a number of seconds, 0 or more (0 turns the stall inspector off)");
    o.limit = limit;
  }
  if (action && *action) {
    const std::string_view a = action;
    PARALLAX_CHECK(a == "fail" || a == "wait",
                   std::string("PARALLAX_STALL_ACTION='") + action + "': expected 'fail' or 'wait'");
    o.action = a == "wait" ? stall_action::wait : stall_action::fail;
  }
  return o;
}

inline stall_options stall_settings() {
  if (const auto& set = detail::stall_override()) return *set;
  static const stall_options from_environment =
      parse_stall_options(std::getenv("PARALLAX_STALL_TIMEOUT"), std::getenv("PARALLAX_STALL_ACTION"));
  return from_environment;
}

inline void set_stall_options(stall_options options) {
  PARALLAX_CHECK(std::isfinite(options.limit) && options.limit >= 0,
                 "set_stall_options(): the limit must be a number of seconds, 0 or more (0 turns it off)");
  detail::stall_override() = options;
}

}  // namespace parallax
