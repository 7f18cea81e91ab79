#pragma once
// SPDX-License-Identifier: BSL-1.0
/// operation: the scope of one collective library call on a communicator (its
/// name, call site, step and sequence number). Entering it checks, in one
/// small all-reduce, that every rank is in the same operation, else every rank
/// throws the same rank_mismatch naming each rank's operation; the stall
/// inspector (core/stall.hpp) watches that wait and names the ranks that have
/// not arrived.

#include <parallax/core/error.hpp>
#include <parallax/core/stall.hpp>
#include <parallax/core/trace.hpp>
#include <parallax/detail/mpi.hpp>
#include <parallax/detail/number_text.hpp>
#include <parallax/detail/random.hpp>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>
#include <mpi.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <optional>
#include <source_location>
#include <string>
#include <string_view>
#include <vector>

namespace parallax {

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

/// The call site of the outermost operation this thread is in, if any.
inline std::optional<std::source_location>& outer_site() {
  thread_local std::optional<std::source_location> site;
  return site;
}

/// The state of `comm`, made on first use and kept on it as an MPI attribute
/// (freed with it). Making it duplicates the communicator: collective, as
/// every operation is (`name`, the first operation, names the wait).
inline operation_state& operation_state_of(MPI_Comm comm, std::string_view name = "parallax") {
  if (auto* kept = find_attribute<operation_state>(comm)) return *kept;
  auto made = std::make_unique<operation_state>();
  MPI_Comm_rank(comm, &made->rank);
  MPI_Comm_size(comm, &made->size);
  made->seen.resize(static_cast<std::size_t>(made->size));
  auto& state = keep_attribute(comm, std::move(made));
  MPI_Request request = MPI_REQUEST_NULL;
  mpi_check(MPI_Comm_idup(comm, &state.ops, &request), "MPI_Comm_idup");
  wait_for_first_operation(request, state, name);
  return state;
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
  // On the timeline: the wait for every rank to enter the operation.
  trace::span span([&] { return std::string(name); }, "sync");
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
