#pragma once
// SPDX-License-Identifier: BSL-1.0
/// agree: a failure seen on some ranks becomes the same parallax::error on
/// every rank (docs/design.md invariant 1), with its kind, the ranks that
/// failed and their causes; sum_and_agree: a step's sums and its verdict in
/// one collective; agree_equal: a value that must be equal on every rank.

#include <parallax/core/concepts.hpp>
#include <parallax/core/error.hpp>
#include <parallax/core/trace.hpp>
#include <parallax/detail/mpi.hpp>
#include <parallax/detail/number_text.hpp>
#include <parallax/detail/random.hpp>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>
#include <boost/mpi/operations.hpp>
#include <boost/serialization/string.hpp>
#include <boost/serialization/vector.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <exception>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace parallax {

/// Collective: every rank passes its local verdict (empty = fine). Returns on
/// every rank when all are fine; otherwise throws, on every rank, the same
/// parallax::error: the kind of the lowest failing rank's error, every
/// failing rank, and the causes (ranks that failed alike named together:
/// "cause [ranks 0, 2, 3]"). Costs one integer all-reduce when nothing failed.
void agree(const mpi::communicator& comm, const std::optional<error>& failure);

/// Collective: runs `f` on every rank; if it throws on any rank, every rank
/// throws the same parallax::error. Returns f's result otherwise.
/// @code
///   auto data = parallax::agree(comm, [&] { return read_idx(path); });
/// @endcode
template <class F>
  requires std::invocable<F&>
std::invoke_result_t<F&> agree(const mpi::communicator& comm, F&& f);

/// Collective: sums `values` over the ranks in the same all-reduce that
/// counts the ranks with a pending failure; when there is one, throws on
/// every rank what agree(comm, failure) throws (a second collective, only
/// then). Returns the sums otherwise. The shape of every step and
/// evaluation: its numbers and its verdict in one collective.
/// @code
///   auto [loss, samples] = parallax::sum_and_agree(comm, std::array{my_loss, my_samples}, failure);
/// @endcode
template <std::size_t N>
std::array<double, N> sum_and_agree(const mpi::communicator& comm, const std::array<double, N>& values,
                                    const std::optional<error>& failure);

/// Collective: sum_and_agree over a run of any length, summed in place; the
/// length must be the same on every rank (a layer's statistics, fixed when
/// it is built: SyncBatchNorm's sums).
void sum_and_agree(const mpi::communicator& comm, std::vector<double>& values, const std::optional<error>& failure);

/// A setting that must be the same on every rank, for agree_settings: its
/// name, its value, and for a setting that is not a number (an optimizer's
/// kind, a schedule's) its text, which is then what is compared and shown.
struct setting {
  std::string name;
  double value = 0;
  std::string text = {};
};

/// Collective: the list of settings (names in order, values bit for bit,
/// texts) must be the same on every rank, compared through a 64-bit digest
/// and the count in one all-reduce (lists of different lengths are fine);
/// otherwise every rank throws (kind rank_mismatch) "<who>: settings differ
/// between ranks: lr: rank 0 has 0.1, rank 2 has 0.2; momentum: ...".
void agree_settings(const mpi::communicator& comm, const std::vector<setting>& settings, const std::string& who);

/// Collective: `value` must be equal on every rank. Otherwise every rank throws
/// (kind rank_mismatch) "<what> differs between ranks: rank 0 has A, rank r has B".
template <MpiArithmetic T>
void agree_equal(const mpi::communicator& comm, T value, const std::string& what);

namespace detail {

/// Runs f; returns nothing, or what it threw as a parallax::error: a
/// parallax::error as it is, any other exception as a user_exception of this
/// rank, its cause prefixed by `context` (e.g. "DataParallel::train_step(): ").
template <class F>
std::optional<error> capture(F&& f, std::string_view context = {});

/// An exception (in flight, from a catch block) as a parallax::error.
std::optional<error> as_error(std::exception_ptr thrown, std::string_view context = {});

}  // namespace detail

// ===========================================================================
// Implementation
// ===========================================================================

namespace detail {

/// What agree() gathers from a failing rank.
struct failure_record {
  int kind = 0;
  std::string cause;
  std::vector<int> ranks;
  template <class Archive>
  void serialize(Archive& a, unsigned) {
    a& kind& cause& ranks;
  }
};

inline std::optional<error> as_error(std::exception_ptr thrown, std::string_view context) {
  if (!thrown) return std::nullopt;
  try {
    std::rethrow_exception(thrown);
  } catch (const error& e) {
    return e;
  } catch (const std::exception& e) {
    return error(error_kind::user_exception, std::string(context) + e.what(), this_rank());
  } catch (...) {
    return error(error_kind::user_exception, std::string(context) + "unknown exception", this_rank());
  }
}

template <class F>
std::optional<error> capture(F&& f, std::string_view context) {
  try {
    f();
  } catch (...) {
    return as_error(std::current_exception(), context);
  }
  return std::nullopt;
}

}  // namespace detail

inline void agree(const mpi::communicator& comm, const std::optional<error>& failure) {
  int mine = failure ? 1 : 0;
  int any = 0;
  {
    trace::span span("agree", "sync");
    mpi::all_reduce(comm, mine, any, mpi::maximum<int>());
  }
  if (!any) return;
  // Rare path: gather every rank's failure (small metadata, serialized).
  detail::failure_record record;
  if (failure) {
    record.kind = static_cast<int>(failure->kind());
    record.cause = failure->cause();
    record.ranks = failure->ranks().empty() ? std::vector<int>{detail::world_rank()} : failure->ranks();
  }
  std::vector<detail::failure_record> all;
  mpi::all_gather(comm, record, all);
  // Group failures with the same kind and cause, in rank order.
  std::vector<detail::failure_record> groups;
  std::vector<int> ranks;
  for (const auto& r : all) {
    if (r.ranks.empty()) continue;  // this rank was fine
    auto it = std::find_if(groups.begin(), groups.end(),
                           [&](const auto& g) { return g.kind == r.kind && g.cause == r.cause; });
    if (it == groups.end()) it = groups.insert(groups.end(), {r.kind, r.cause, {}});
    for (int rank : r.ranks) {
      if (std::find(it->ranks.begin(), it->ranks.end(), rank) == it->ranks.end()) it->ranks.push_back(rank);
      if (std::find(ranks.begin(), ranks.end(), rank) == ranks.end()) ranks.push_back(rank);
    }
  }
  std::sort(ranks.begin(), ranks.end());
  std::string text;
  for (std::size_t g = 0; g < groups.size() && g < 4; ++g) {
    auto& group = groups[g];
    std::sort(group.ranks.begin(), group.ranks.end());
    if (g > 0) text += "; also: ";
    text += group.cause + detail::ranks_suffix(group.ranks);
  }
  if (groups.size() > 4) text += "; and " + std::to_string(groups.size() - 4) + " other causes";
  throw error(static_cast<error_kind>(groups.front().kind), groups.front().cause, std::move(ranks), std::move(text));
}

template <class F>
  requires std::invocable<F&>
std::invoke_result_t<F&> agree(const mpi::communicator& comm, F&& f) {
  using R = std::invoke_result_t<F&>;
  if constexpr (std::is_void_v<R>) {
    agree(comm, detail::capture(f));
  } else {
    std::optional<R> result;
    agree(comm, detail::capture([&] { result.emplace(f()); }));
    return std::move(*result);
  }
}

namespace detail {
/// The one all-reduce of sum_and_agree: `values` (n sums, then one slot for
/// the failure count, which this fills) summed in place.
inline void sum_with_verdict(const mpi::communicator& comm, double* values, std::size_t n,
                             const std::optional<error>& failure) {
  values[n] = failure ? 1.0 : 0.0;
  {
    trace::span span("sum and agree", "sync");
    mpi::all_reduce(comm, mpi::inplace(values), static_cast<int>(n + 1), std::plus<double>());
  }
  if (values[n] > 0) agree(comm, failure);
}
}  // namespace detail

template <std::size_t N>
std::array<double, N> sum_and_agree(const mpi::communicator& comm, const std::array<double, N>& values,
                                    const std::optional<error>& failure) {
  std::array<double, N + 1> total{};
  std::copy(values.begin(), values.end(), total.begin());
  detail::sum_with_verdict(comm, total.data(), N, failure);
  std::array<double, N> sums{};
  std::copy_n(total.begin(), N, sums.begin());
  return sums;
}

inline void sum_and_agree(const mpi::communicator& comm, std::vector<double>& values,
                          const std::optional<error>& failure) {
  values.push_back(0);
  detail::sum_with_verdict(comm, values.data(), values.size() - 1, failure);
  values.pop_back();
}

inline void agree_settings(const mpi::communicator& comm, const std::vector<setting>& settings,
                           const std::string& who) {
  // Fast path, a fixed size on every rank (lists of another length must
  // not reach the all-reduce): the count and a digest of every name and
  // value bit, with their complements, maximised; equal everywhere exactly
  // when max(x) == ~max(~x) for each.
  std::uint64_t digest = 0x6a09e667f3bcc909ULL;
  for (const auto& s : settings) {
    digest = detail::content_hash(s.name.data(), s.name.size(), digest);
    if (s.text.empty()) {
      const auto bits = std::bit_cast<std::uint64_t>(s.value);
      digest = detail::content_hash(&bits, sizeof bits, digest);
    } else {
      digest = detail::content_hash(s.text.data(), s.text.size(), digest ^ 0x1ULL);
    }
  }
  const std::array<std::uint64_t, 4> mine{settings.size(), ~std::uint64_t{settings.size()}, digest, ~digest};
  std::array<std::uint64_t, 4> most{};
  mpi::all_reduce(comm, mine.data(), 4, most.data(), mpi::maximum<std::uint64_t>());
  if (most[0] == ~most[1] && most[2] == ~most[3]) return;
  // Rare path: every rank's names and values as text, then each position
  // where some rank differs from rank 0, with the ranks' values (and names,
  // where those differ too: different optimizers have different options).
  std::vector<std::string> shown;
  for (const auto& s : settings) {
    shown.push_back(s.name);
    shown.push_back(s.text.empty() ? detail::number_text(s.value) : s.text);
  }
  std::vector<std::vector<std::string>> all;
  mpi::all_gather(comm, shown, all);
  std::size_t longest = 0;
  for (const auto& a : all) longest = std::max(longest, a.size() / 2);
  auto at = [&](std::size_t r, std::size_t i, std::size_t k) {
    return 2 * i + k < all[r].size() ? all[r][2 * i + k] : std::string("(none)");
  };
  std::string text = who + ": settings differ between ranks:";
  bool first = true;
  for (std::size_t i = 0; i < longest; ++i) {
    bool names_agree = true, differs = false;
    for (std::size_t r = 1; r < all.size(); ++r) {
      names_agree = names_agree && at(r, i, 0) == at(0, i, 0);
      differs = differs || at(r, i, 0) != at(0, i, 0) || at(r, i, 1) != at(0, i, 1);
    }
    if (!differs) continue;
    auto entry = [&](std::size_t r) { return names_agree ? at(r, i, 1) : at(r, i, 0) + " = " + at(r, i, 1); };
    std::string values = " rank 0 has " + entry(0);
    for (std::size_t r = 1; r < all.size(); ++r)
      if (at(r, i, 0) != at(0, i, 0) || at(r, i, 1) != at(0, i, 1))
        values += ", rank " + std::to_string(r) + " has " + entry(r);
    text += (first ? " " : "; ") + (names_agree ? at(0, i, 0) + ":" + values : values.substr(1));
    first = false;
  }
  throw error(error_kind::rank_mismatch, text);
}

template <MpiArithmetic T>
void agree_equal(const mpi::communicator& comm, T value, const std::string& what) {
  std::array<T, 2> mine{value, static_cast<T>(-value)};
  if constexpr (std::is_unsigned_v<T>) mine[1] = static_cast<T>(std::numeric_limits<T>::max() - value);
  std::array<T, 2> extreme{};
  mpi::all_reduce(comm, mine.data(), 2, extreme.data(), mpi::maximum<T>());
  const T high = extreme[0];
  const T low = std::is_unsigned_v<T> ? static_cast<T>(std::numeric_limits<T>::max() - extreme[1])
                                      : static_cast<T>(-extreme[1]);
  if (high == low) return;
  // Rare path: find who differs from rank 0.
  std::vector<T> all;
  mpi::all_gather(comm, value, all);
  int other = 0;
  for (int r = 1; r < comm.size(); ++r)
    if (all[static_cast<std::size_t>(r)] != all[0]) {
      other = r;
      break;
    }
  throw error(error_kind::rank_mismatch, what + " differs between ranks: rank 0 has " + detail::number_text(+all[0]) +
                                             ", rank " + std::to_string(other) + " has " +
                                             detail::number_text(+all[static_cast<std::size_t>(other)]));
}

}  // namespace parallax
