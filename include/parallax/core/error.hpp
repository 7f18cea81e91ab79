#pragma once
// SPDX-License-Identifier: BSL-1.0
/// parallax::error and PARALLAX_CHECK: the one exception type of the library,
/// a value with a kind, the ranks that failed and the cause; its what() is the
/// text for people ("cause [rank r]") and is never parsed back.

// parallax uses MPI's C interface; keep Open MPI's deprecated C++ bindings
// (and their warnings) out of every translation unit that includes us first.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace parallax {

/// What went wrong, for programs that react to failures (retry, skip a
/// checkpoint, stop); agree() carries it to every rank with the cause.
enum class error_kind : std::uint8_t {
  invalid_argument,  ///< a bad input or option: a precondition the caller can fix
  rank_mismatch,     ///< something that must be equal on every rank is not
  nonfinite,         ///< a NaN or an infinity in a gradient or the loss
  damaged_file,      ///< a file that is truncated, corrupt or incomplete
  incompatible,      ///< an intact file of another model, optimizer, plan or element type
  io,                ///< the file system refused (missing file, no permission, disk full)
  user_exception,    ///< an exception that is not a parallax::error, from code the library called
  communication,     ///< an MPI call failed
};

/// "invalid argument", "rank mismatch", ...: the kind in words.
std::string_view kind_name(error_kind kind);

/// The exception every parallax precondition and agreed failure throws.
class error : public std::runtime_error {
 public:
  /// A failure of `ranks` (world ranks; empty: a failure of no rank in
  /// particular, e.g. one seen alike by every rank, or without MPI). what()
  /// is the cause followed by " [rank r]" or " [ranks a, b]" when there are
  /// ranks.
  error(error_kind kind, std::string cause, std::vector<int> ranks = {});
  /// An invalid_argument failure of no rank in particular.
  explicit error(std::string cause) : error(error_kind::invalid_argument, std::move(cause)) {}
  /// A failure whose text is already complete (agree's combined message:
  /// several causes with their ranks).
  error(error_kind kind, std::string cause, std::vector<int> ranks, std::string text);

  error_kind kind() const noexcept { return kind_; }
  /// The world ranks that failed, ascending.
  const std::vector<int>& ranks() const noexcept { return ranks_; }
  /// The cause without the ranks: what to quote inside another message.
  const std::string& cause() const noexcept { return cause_; }

 private:
  error_kind kind_;
  std::string cause_;
  std::vector<int> ranks_;
};

namespace detail {

/// Rank in MPI_COMM_WORLD, or -1 when MPI is not running (before MPI_Init,
/// after MPI_Finalize, or in a program that never starts MPI).
inline int world_rank() noexcept {
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return -1;
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

/// This process as a list of ranks: {world rank}, or {} without MPI.
inline std::vector<int> this_rank() {
  const int rank = world_rank();
  return rank >= 0 ? std::vector<int>{rank} : std::vector<int>{};
}

/// " [rank r]", " [ranks a, b, c]" or "" for no ranks.
inline std::string ranks_suffix(const std::vector<int>& ranks) {
  if (ranks.empty()) return {};
  std::string text = ranks.size() == 1 ? " [rank " : " [ranks ";
  for (std::size_t i = 0; i < ranks.size(); ++i) {
    if (i) text += ", ";
    text += std::to_string(ranks[i]);
  }
  return text + "]";
}

/// The cause of an exception, to quote inside another message: a
/// parallax::error's cause, or what() of anything else.
inline std::string cause_of(const std::exception& e) {
  if (const auto* p = dynamic_cast<const error*>(&e)) return p->cause();
  return e.what();
}

/// The kind of an exception: a parallax::error's own, else user_exception
/// (anything else came from the user's code or a library it called).
inline error_kind kind_of(const std::exception& e) {
  if (const auto* p = dynamic_cast<const error*>(&e)) return p->kind();
  return error_kind::user_exception;
}

/// Throws a failure of this rank.
[[noreturn]] inline void throw_error(error_kind kind, std::string_view message) {
  throw error(kind, std::string(message), this_rank());
}
[[noreturn]] inline void throw_error(std::string_view message) { throw_error(error_kind::invalid_argument, message); }

}  // namespace detail

// ---------------------------------------------------------------------------

inline std::string_view kind_name(error_kind kind) {
  switch (kind) {
    case error_kind::invalid_argument: return "invalid argument";
    case error_kind::rank_mismatch: return "rank mismatch";
    case error_kind::nonfinite: return "non-finite";
    case error_kind::damaged_file: return "damaged file";
    case error_kind::incompatible: return "incompatible";
    case error_kind::io: return "i/o";
    case error_kind::user_exception: return "user exception";
    case error_kind::communication: return "communication";
  }
  return "unknown";
}

inline error::error(error_kind kind, std::string cause, std::vector<int> ranks, std::string text)
    : std::runtime_error(text), kind_(kind), cause_(std::move(cause)), ranks_(std::move(ranks)) {}

inline error::error(error_kind kind, std::string cause, std::vector<int> ranks)
    : error(kind, cause, ranks, cause + detail::ranks_suffix(ranks)) {}


}  // namespace parallax

/// Throws parallax::error (kind invalid_argument) with `message` and the
/// calling rank when `cond` is false. `message` should start with the
/// function, e.g. "DataParallel::train_step(): batch is empty". Any expression
/// convertible to std::string_view works, so messages can be built with
/// std::string.
///
/// This is a local check: use it for conditions that are the same on every
/// rank (or before any collective). A condition that can differ between ranks
/// goes through parallax::agree (core/agree.hpp) so that all ranks fail
/// together.
#define PARALLAX_CHECK(cond, message)                      \
  do {                                                     \
    if (!(cond)) ::parallax::detail::throw_error(message); \
  } while (false)

/// As PARALLAX_CHECK, with an error_kind other than invalid_argument.
#define PARALLAX_CHECK_KIND(cond, kind, message)                 \
  do {                                                           \
    if (!(cond)) ::parallax::detail::throw_error(kind, message); \
  } while (false)
