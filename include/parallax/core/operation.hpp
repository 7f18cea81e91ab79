#pragma once
// SPDX-License-Identifier: BSL-1.0
/// operation: the scope of one collective library call on a communicator (its
/// name, call site, step and sequence number). Entering it checks, in one
/// small all-reduce, that every rank is in the same operation, else every rank
/// throws the same rank_mismatch naming each rank's operation; the stall
/// inspector watches that wait and names the ranks that have not arrived.

#include <parallax/core/error.hpp>
#include <parallax/detail/mpi.hpp>
#include <parallax/detail/number_text.hpp>
#include <parallax/detail/random.hpp>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>
#include <mpi.h>

#include <algorithm>
#include <array>
#include <bit>
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

/// Collective: entered at the start of every public collective call of the
/// library (every rank alike, nested calls too). The entry is one all-reduce
/// of a fixed-size header (the operation's name, its sequence number on this
/// communicator and the stall settings), so ranks in different operations
/// still meet each other there: then every rank throws the same
/// error(rank_mismatch) "ranks are in different library operations: rank 0
/// in Checkpointer::save() (operation 7, ...); ranks 1, 2 in
/// DataParallel::train_step() (operation 7, ...)". The ranks are then out of
/// step: every later operation on the communicator throws that error again,
/// without a collective (so does every one after a stall that failed).
/// @code
///   double train_step(const batch_type& b, std::source_location site = std::source_location::current()) {
///     operation op(comm_, "DataParallel::train_step()", steps(), site);
///     ...
/// @endcode
///
/// The call site shown is that of the outermost operation this thread is in:
/// the public call in the user's code (each public call takes a
/// std::source_location defaulted at its caller), also for the operations
/// it makes inside (train_epoch's steps, resume_latest's load).
class operation {
 public:
  operation(const mpi::communicator& comm, std::string_view name, std::int64_t step = -1,
            std::source_location site = std::source_location::current());
  operation(const operation&) = delete;
  operation& operator=(const operation&) = delete;
  /// This operation's number on the communicator: 1 for the first.
  std::uint64_t sequence() const noexcept { return sequence_; }

 private:
  /// Holds this thread's outermost call site while the outermost operation
  /// lives (a member, so it is released when the constructor throws too).
  struct site_scope {
    explicit site_scope(const std::source_location& site);
    ~site_scope();
    site_scope(const site_scope&) = delete;
    site_scope& operator=(const site_scope&) = delete;
    bool outermost;
  };

  site_scope scope_;
  std::uint64_t sequence_ = 0;
};

/// How many operations this rank has entered on `comm` (its own count; a
/// duplicate or a split communicator has its own).
std::uint64_t operations_entered(const mpi::communicator& comm);

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

/// The call site of the outermost operation this thread is in, if any.
inline std::optional<std::source_location>& outer_site() {
  thread_local std::optional<std::source_location> site;
  return site;
}

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

/// The state of `comm`, made on first use and kept on it as an MPI attribute
/// (freed with it). Making it duplicates the communicator: collective, as
/// every operation is (`name`, the first operation, names the wait).
inline operation_state& operation_state_of(MPI_Comm comm, std::string_view name = "parallax") {
  static int keyval = [] {
    int key = MPI_KEYVAL_INVALID;
    auto on_free = [](MPI_Comm, int, void* value, void*) -> int {
      auto* state = static_cast<operation_state*>(value);
      int finalized = 0;
      MPI_Finalized(&finalized);
      if (!finalized) {
        for (auto& s : state->sends) MPI_Request_free(&s.first);
        if (state->ops != MPI_COMM_NULL) MPI_Comm_free(&state->ops);
      }
      delete state;
      return MPI_SUCCESS;
    };
    mpi_check(MPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, on_free, &key, nullptr), "MPI_Comm_create_keyval");
    return key;
  }();
  void* value = nullptr;
  int found = 0;
  mpi_check(MPI_Comm_get_attr(comm, keyval, &value, &found), "MPI_Comm_get_attr");
  if (found) return *static_cast<operation_state*>(value);
  auto* state = new operation_state;
  MPI_Comm_rank(comm, &state->rank);
  MPI_Comm_size(comm, &state->size);
  state->seen.resize(static_cast<std::size_t>(state->size));
  mpi_check(MPI_Comm_set_attr(comm, keyval, state), "MPI_Comm_set_attr");
  MPI_Request request = MPI_REQUEST_NULL;
  mpi_check(MPI_Comm_idup(comm, &state->ops, &request), "MPI_Comm_idup");
  wait_for_first_operation(request, *state, name);
  return *state;
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

inline std::string short_site(const std::source_location& site) {
  // The last two path components: "io/checkpoint.hpp:210", "examples/train.cpp:40".
  std::string_view file = site.file_name();
  auto cut = file.rfind('/');
  if (cut != std::string_view::npos && cut > 0) {
    const auto second = file.rfind('/', cut - 1);
    if (second != std::string_view::npos) file.remove_prefix(second + 1);
  }
  return std::string(file) + ":" + std::to_string(site.line());
}

template <std::size_t N>
void copy_text(char (&to)[N], std::string_view text) {
  const std::size_t n = std::min(N - 1, text.size());
  std::memcpy(to, text.data(), n);
  to[n] = '\0';
}

/// Every rank's record of the operation, after a header that differed: the
/// same message on every rank, ranks in the same operation named together.
[[noreturn]] inline void operation_mismatch(operation_state& s, const operation_record& me) {
  std::vector<operation_record> all(static_cast<std::size_t>(s.size));
  mpi_check(MPI_Allgather(&me, sizeof me, MPI_BYTE, all.data(), sizeof me, MPI_BYTE, s.ops), "MPI_Allgather");
  auto same = [](const operation_record& a, const operation_record& b) {
    return a.sequence == b.sequence && a.step == b.step && std::strcmp(a.name, b.name) == 0 &&
           std::strcmp(a.site, b.site) == 0;
  };
  std::string text;
  std::vector<bool> told(all.size(), false);
  for (std::size_t r = 0; r < all.size(); ++r) {
    if (told[r]) continue;
    std::vector<int> ranks;
    for (std::size_t q = r; q < all.size(); ++q)
      if (!told[q] && same(all[q], all[r])) {
        told[q] = true;
        ranks.push_back(all[q].world_rank);
      }
    std::sort(ranks.begin(), ranks.end());
    text += text.empty() ? ": " : "; ";
    text += ranks_suffix(ranks).substr(2);
    text.pop_back();
    text += " in " + describe(all[r]);
  }
  if (std::all_of(all.begin(), all.end(), [&](const auto& a) { return same(a, all[0]); })) {
    // Same operation everywhere: the stall settings differ.
    text = "the stall settings differ between ranks:";
    for (const auto& a : all)
      text += std::string(&a == &all[0] ? " " : ", ") + "rank " + std::to_string(a.world_rank) + " has limit " +
              detail::number_text(a.limit) + " s and action " + (a.action ? "wait" : "fail");
    s.failed = error(error_kind::rank_mismatch, describe(me) + ": " + text);
  } else {
    s.failed = error(error_kind::rank_mismatch, "ranks are in different library operations" + text);
  }
  throw *s.failed;
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

inline operation::site_scope::site_scope(const std::source_location& site) : outermost(!detail::outer_site()) {
  if (outermost) detail::outer_site() = site;
}

inline operation::site_scope::~site_scope() {
  if (outermost) detail::outer_site().reset();
}

inline operation::operation(const mpi::communicator& comm, std::string_view name, std::int64_t step,
                            std::source_location site)
    : scope_(site) {
  auto& s = detail::operation_state_of(MPI_Comm(comm), name);
  if (s.failed) throw *s.failed;
  sequence_ = ++s.entered;
  if (s.size == 1) return;
  const auto o = stall_settings();
  detail::operation_record me;
  me.sequence = sequence_;
  me.step = step;
  me.world_rank = detail::world_rank();
  me.limit = o.limit;
  me.action = static_cast<std::uint8_t>(o.action);
  detail::copy_text(me.name, name);
  detail::copy_text(me.site, detail::short_site(*detail::outer_site()));
  if (o.limit > 0) {
    if (s.rank == 0) {
      s.seen[0] = me;
      detail::drain_arrivals(s);
    } else {
      detail::announce_arrival(s, me);
    }
  }
  // One fixed-size header whatever the operation; each word with its
  // complement, maximised: equal on every rank exactly when max(x) == ~max(~x).
  const std::uint64_t tag = detail::content_hash(name.data(), name.size());
  const std::uint64_t settings = std::bit_cast<std::uint64_t>(o.limit) ^ (std::uint64_t{me.action} << 1);
  s.mine = {tag, ~tag, sequence_, ~sequence_, settings, ~settings};
  if (o.limit > 0) {
    MPI_Request request = MPI_REQUEST_NULL;
    detail::mpi_check(MPI_Iallreduce(s.mine.data(), s.most.data(), 6, MPI_UINT64_T, MPI_MAX, s.ops, &request),
                      "MPI_Iallreduce");
    detail::watched_wait(request, s, me, o);
  } else {  // nothing to watch: the blocking all-reduce is cheaper (no nonblocking schedule)
    detail::mpi_check(MPI_Allreduce(s.mine.data(), s.most.data(), 6, MPI_UINT64_T, MPI_MAX, s.ops), "MPI_Allreduce");
  }
  const auto& most = s.most;
  if (most[0] == ~most[1] && most[2] == ~most[3] && most[4] == ~most[5]) return;
  detail::operation_mismatch(s, me);
}

inline std::uint64_t operations_entered(const mpi::communicator& comm) {
  return detail::operation_state_of(MPI_Comm(comm)).entered;
}

}  // namespace parallax
