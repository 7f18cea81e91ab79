#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The collectives parallax uses, over Boost.MPI with native MPI datatypes:
/// in-place sum/mean all-reduce, broadcast, reduce-scatter, point-to-point
/// tensors with their shapes, the gradient bucketer, and `agree`, which turns a
/// failure seen on some ranks into the same parallax::error on every rank.
///
/// Arithmetic buffers always travel raw (docs/design.md invariant 3); raw MPI is
/// called through the communicator's MPI_Comm only where Boost.MPI has no
/// wrapper (non-blocking all-reduce, reduce-scatter, matched receives).

#include <parallax/core/concepts.hpp>
#include <parallax/core/error.hpp>
#include <parallax/detail/xtensor.hpp>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>
#include <boost/mpi/datatype.hpp>
#include <boost/mpi/operations.hpp>
#include <boost/serialization/string.hpp>
#include <boost/serialization/vector.hpp>
#include <mpi.h>

#include <algorithm>
#include <array>
#include <climits>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace parallax {

namespace mpi = boost::mpi;

namespace detail {
struct request_access;
}

// ---------------------------------------------------------------------------
// agree: collective failure (docs/design.md invariant 1)
// ---------------------------------------------------------------------------

/// Collective: every rank passes its local verdict (`failure` empty = fine).
/// Returns on every rank when all are fine; otherwise throws, on every rank,
/// the same parallax::error that quotes the failing ranks' messages. Costs one
/// integer all-reduce when nothing failed.
void agree(const mpi::communicator& comm, const std::string& failure);

/// Collective: runs `f` on every rank; if it throws on any rank, every rank
/// throws the same parallax::error. Returns f's result otherwise.
/// @code
///   auto data = parallax::agree(comm, [&] { return read_idx(path); });
/// @endcode
template <class F>
  requires std::invocable<F&>
std::invoke_result_t<F&> agree(const mpi::communicator& comm, F&& f);

/// Collective: `value` must be equal on every rank. Otherwise every rank throws
/// "<what> differs between ranks: rank 0 has A, rank r has B".
template <MpiArithmetic T>
void agree_equal(const mpi::communicator& comm, T value, const std::string& what);

// ---------------------------------------------------------------------------
// Collectives on contiguous buffers
// ---------------------------------------------------------------------------

/// Collective, in place: data[i] becomes the sum of data[i] over all ranks.
/// Buffers from allreduce_ring_min_bytes up are reduced by a ring
/// (reduce-scatter, then all-gather) in pieces of allreduce_piece_bytes over
/// preallocated scratch; smaller ones by one MPI_Allreduce. Every rank ends
/// with the same bits.
template <MpiArithmetic T>
void allreduce_sum(const mpi::communicator& comm, std::span<T> data);

/// Collective, in place: data[i] becomes the mean of data[i] over all ranks,
/// computed as sum * (1 / size). On the ring path the scaling is fused into
/// the last reduction step, so it costs no extra pass over memory.
template <std::floating_point T>
void allreduce_mean(const mpi::communicator& comm, std::span<T> data);

/// Buffers of at least this many bytes take the ring path. Below it one MPI
/// call's latency wins; above it the ring moves 2 (p - 1) / p of the buffer
/// per rank, splits the additions between ranks, and avoids the temporary
/// buffer Open MPI allocates per call for large messages.
inline constexpr std::size_t allreduce_ring_min_bytes = std::size_t{64} << 10;

/// The ring reduces a large buffer this many bytes at a time, so the scratch
/// it needs stays small and each piece stays in cache between its two phases.
inline constexpr std::size_t allreduce_piece_bytes = std::size_t{2} << 20;

/// Collective, in place: data[i] becomes scale * (sum of data[i] over all
/// ranks); returns whether any result is NaN or infinite — the same answer
/// on every rank. The scaling and the check are fused into the reduction (no
/// extra pass over the buffer): DataParallel turns gradient sums into means
/// this way.
template <std::floating_point T>
bool allreduce_scaled(const mpi::communicator& comm, std::span<T> data, T scale);

/// Collective: data on every rank becomes the root's data. Sizes must agree.
template <MpiArithmetic T>
void broadcast(const mpi::communicator& comm, std::span<T> data, int root = 0);

/// The part [begin, end) of n elements that rank `rank` of `size` owns when n
/// is split as evenly as possible (the first n % size ranks get one more).
struct block {
  std::size_t begin = 0;
  std::size_t end = 0;
  std::size_t size() const { return end - begin; }
};
block block_of(std::size_t n, int size, int rank);

/// Collective: sums `in` over all ranks and leaves on each rank only its block
/// (block_of(in.size(), comm.size(), comm.rank())) in `out`.
template <MpiArithmetic T>
void reduce_scatter_sum(const mpi::communicator& comm, std::span<const T> in, std::span<T> out);

/// A non-blocking operation in flight. Move-only; wait() before touching the
/// buffers it uses. Destroying an unfinished request cancels receives and
/// releases sends to complete in the background.
class request {
 public:
  request() = default;
  request(request&& other) noexcept;
  request& operator=(request&& other) noexcept;
  request(const request&) = delete;
  request& operator=(const request&) = delete;
  ~request();

  void wait();
  bool test();
  bool active() const { return !handles_.empty(); }

 private:
  friend struct detail::request_access;

  void add(MPI_Request handle, bool is_send) { handles_.push_back({handle, is_send}); }
  void release() noexcept;

  struct handle {
    MPI_Request mpi = MPI_REQUEST_NULL;
    bool is_send = false;
  };
  std::vector<handle> handles_;
  std::shared_ptr<void> keep_alive_;  // storage the requests point into (headers)
};

/// Collective, non-blocking, in place: starts the sum all-reduce of `data`
/// (MPI_Iallreduce). `data` must not be touched until the request completes.
template <MpiArithmetic T>
request iallreduce_sum(const mpi::communicator& comm, std::span<T> data);

// ---------------------------------------------------------------------------
// Point-to-point tensors with their shapes
// ---------------------------------------------------------------------------

/// The most dimensions a tensor may have on the wire.
inline constexpr std::size_t max_tensor_rank = 16;

/// Blocking: sends `tensor` (an xt::xarray or xt::xtensor, 0-d to n-d) with its
/// shape to `dest`. Two messages with tag `tag`: a small header, then the raw
/// elements.
template <Tensor E>
void send_tensor(const mpi::communicator& comm, int dest, int tag, const E& tensor);

/// Blocking: receives a tensor sent by send_tensor/isend_tensor; the shape
/// comes from the sender. Element types must match (checked).
template <MpiArithmetic T>
xt::xarray<T> recv_tensor(const mpi::communicator& comm, int source, int tag);

/// Blocking: as above into an existing container, which is resized; for an
/// xt::xtensor<T, N>, the sender's rank must be N (checked).
template <Tensor E>
void recv_tensor(const mpi::communicator& comm, int source, int tag, E& out);

/// Non-blocking send. `tensor` must stay alive and unchanged until the
/// returned request completes.
template <Tensor E>
request isend_tensor(const mpi::communicator& comm, int dest, int tag, const E& tensor);

/// A receive in flight: the header receive is posted at once; the element
/// receive is posted as soon as the header has arrived (in test() or wait()).
/// Keep at most one tensor_receive per (source, tag) in flight: use distinct
/// tags for concurrent transfers between the same pair of ranks.
template <class E>
class tensor_receive {
 public:
  tensor_receive(const mpi::communicator& comm, int source, int tag);
  /// As above, receiving into `storage` (its buffer is reused when the
  /// incoming size matches: no allocation in a steady state).
  tensor_receive(const mpi::communicator& comm, int source, int tag, E&& storage);
  tensor_receive(tensor_receive&&) noexcept = default;
  tensor_receive& operator=(tensor_receive&&) noexcept = default;

  /// True once the whole tensor has arrived.
  bool test();
  /// Blocks until the whole tensor has arrived and returns it.
  E& wait();

 private:
  void on_header();

  MPI_Comm comm_ = MPI_COMM_NULL;
  int source_ = 0;
  int tag_ = 0;
  std::unique_ptr<std::array<std::uint64_t, max_tensor_rank + 2>> header_;
  request header_request_;
  request data_request_;
  E tensor_;
  bool header_done_ = false;
};

/// Non-blocking receive of a tensor of element type T (shape from the sender).
template <MpiArithmetic T>
tensor_receive<xt::xarray<T>> irecv_tensor(const mpi::communicator& comm, int source, int tag);

// ---------------------------------------------------------------------------
// Bucketer: many tensors <-> a few flat buffers
// ---------------------------------------------------------------------------

/// Packs a list of tensors of mixed shapes (same element type) into flat
/// buffers of at most `cap_bytes` each, and unpacks them back. The tensors are
/// read as one concatenated stream cut every cap_bytes, so every bucket but
/// the last is exactly full and a tensor larger than the cap spans several
/// buckets. The buckets are allocated once by plan() and reused.
/// @code
///   parallax::Bucketer<float> buckets(1 << 20);
///   buckets.plan(grads);           // once, or whenever the sizes change
///   buckets.pack(grads);
///   for (auto& b : buckets) parallax::allreduce_sum(comm, b);
///   buckets.unpack(grads);
/// @endcode
template <MpiArithmetic T>
class Bucketer {
 public:
  explicit Bucketer(std::size_t cap_bytes = std::size_t{25} << 20);

  /// Lays out the buckets for tensors of these sizes (elements). Any range of
  /// contiguous containers of T works.
  template <class Range>
  void plan(const Range& tensors);

  std::size_t bucket_count() const { return buckets_.size(); }
  std::size_t total_size() const { return total_; }
  std::size_t cap_bytes() const { return cap_elements_ * sizeof(T); }
  std::span<T> bucket(std::size_t k) { return buckets_[k]; }
  auto begin() { return buckets_.begin(); }
  auto end() { return buckets_.end(); }

  /// The part of the buckets' storage that holds tensor i (the buckets are
  /// one contiguous run, so a tensor's elements are contiguous there too).
  std::span<T> segment(std::size_t i) {
    return std::span<T>(storage_).subspan(offsets_[i], offsets_[i + 1] - offsets_[i]);
  }
  /// All buckets as one span.
  std::span<T> storage() { return storage_; }

  /// Calls f(tensor_part, bucket_part, n) for each piece of bucket k: the
  /// general form of pack and unpack (e.g. to scale or accumulate in the pass).
  template <class Range, class F>
  void visit(std::size_t k, Range& tensors, F f);

  /// Copies the part of `tensors` that belongs in bucket k into it.
  template <class Range>
  void pack(std::size_t k, const Range& tensors);
  /// Copies bucket k back into its part of `tensors`.
  template <class Range>
  void unpack(std::size_t k, Range& tensors) const;
  template <class Range>
  void pack(const Range& tensors);
  template <class Range>
  void unpack(Range& tensors) const;

 private:
  template <class Range, class Copy>
  void for_each_piece(std::size_t k, Range& tensors, Copy copy) const;

  std::size_t cap_elements_;
  std::size_t total_ = 0;
  std::vector<std::size_t> offsets_;  // start of tensor i in the stream; back() = total_
  std::vector<T> storage_;
  std::vector<std::span<T>> buckets_;
};

}  // namespace parallax

// ===========================================================================
// Implementation
// ===========================================================================

namespace parallax {
namespace detail {

/// What the library's own calls use to fill a request.
struct request_access {
  static void add(request& r, MPI_Request handle, bool is_send) { r.add(handle, is_send); }
  static void keep_alive(request& r, std::shared_ptr<void> storage) { r.keep_alive_ = std::move(storage); }
};

template <class T>
MPI_Datatype mpi_type() {
  return mpi::get_mpi_datatype<T>(T{});
}

/// Throws a parallax::error when an MPI call fails (the default error handler
/// aborts instead; a communicator may have MPI_ERRORS_RETURN set).
inline void mpi_check(int code, const char* call) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw_error(std::string(call) + " failed: " + std::string(text, static_cast<std::size_t>(length)));
}

inline int checked_count(std::size_t n, const char* where) {
  PARALLAX_CHECK(n <= static_cast<std::size_t>(INT_MAX),
                 std::string(where) + ": " + std::to_string(n) + " elements exceed MPI's int count");
  return static_cast<int>(n);
}

/// Identifies an element type on the wire: kind (1 float, 2 signed, 3
/// unsigned) and size.
template <class T>
constexpr std::uint64_t type_code() {
  const std::uint64_t kind = std::is_floating_point_v<T> ? 1 : std::is_signed_v<T> ? 2 : 3;
  return (kind << 8) | sizeof(T);
}

inline std::string type_code_name(std::uint64_t code) {
  const char* kinds[] = {"?", "float", "int", "uint"};
  const auto kind = (code >> 8) < 4 ? (code >> 8) : 0;
  return std::string(kinds[kind]) + std::to_string(8 * (code & 0xff));
}

/// Header layout: [type code, rank, extent 0, ..., extent rank-1].
inline constexpr std::size_t header_words = max_tensor_rank + 2;
using tensor_header = std::array<std::uint64_t, header_words>;

template <class E>
int make_header(const E& tensor, tensor_header& header) {
  using T = typename E::value_type;
  const auto& shape = tensor.shape();
  PARALLAX_CHECK(shape.size() <= max_tensor_rank,
                 "send_tensor(): tensor has " + std::to_string(shape.size()) +
                     " dimensions, at most " + std::to_string(max_tensor_rank) + " are supported");
  header[0] = type_code<T>();
  header[1] = shape.size();
  for (std::size_t i = 0; i < shape.size(); ++i) header[2 + i] = shape[i];
  return static_cast<int>(2 + shape.size());
}

/// Checks a received header against E and resizes `out` to its shape.
template <class E>
void apply_header(const tensor_header& header, E& out, int source) {
  using T = typename E::value_type;
  const auto where = "recv_tensor() from rank " + std::to_string(source);
  PARALLAX_CHECK(header[0] == type_code<T>(), where + ": sender's elements are " +
                                                  type_code_name(header[0]) + ", receiver expects " +
                                                  type_code_name(type_code<T>()));
  const auto rank = header[1];
  PARALLAX_CHECK(rank <= max_tensor_rank, where + ": corrupt header (rank " + std::to_string(rank) + ")");
  if constexpr (requires { std::tuple_size<typename E::shape_type>::value; }) {
    constexpr auto fixed = std::tuple_size<typename E::shape_type>::value;
    PARALLAX_CHECK(rank == fixed, where + ": sender's tensor has " + std::to_string(rank) +
                                      " dimensions, receiver's xtensor has " + std::to_string(fixed));
    typename E::shape_type shape{};
    for (std::size_t i = 0; i < fixed; ++i) shape[i] = static_cast<std::size_t>(header[2 + i]);
    out.resize(shape);
  } else {
    std::vector<std::size_t> shape(rank);
    for (std::size_t i = 0; i < rank; ++i) shape[i] = static_cast<std::size_t>(header[2 + i]);
    out.resize(shape);
  }
}

}  // namespace detail

// --- agree -----------------------------------------------------------------

inline void agree(const mpi::communicator& comm, const std::string& failure) {
  int mine = failure.empty() ? 0 : 1;
  int any = 0;
  mpi::all_reduce(comm, mine, any, mpi::maximum<int>());
  if (!any) return;
  // Rare path: gather every rank's message (small metadata, serialized).
  std::vector<std::string> all;
  mpi::all_gather(comm, failure, all);
  std::vector<int> failed;
  for (int r = 0; r < comm.size(); ++r)
    if (!all[static_cast<std::size_t>(r)].empty()) failed.push_back(r);
  // Messages end with " [rank r]"; ranks that failed the same way are named
  // together: "cause [ranks 0, 2, 3]".
  auto cause = [](const std::string& m) {
    const auto at = m.rfind(" [rank ");
    return at != std::string::npos && m.back() == ']' ? m.substr(0, at) : m;
  };
  std::vector<std::pair<std::string, std::vector<int>>> groups;
  for (int r : failed) {
    const auto c = cause(all[static_cast<std::size_t>(r)]);
    auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == c; });
    if (it == groups.end()) groups.push_back({c, {r}});
    else it->second.push_back(r);
  }
  std::string text;
  for (std::size_t g = 0; g < groups.size() && g < 4; ++g) {
    const auto& [c, ranks] = groups[g];
    if (g > 0) text += "; also: ";
    if (ranks.size() == 1 && all[static_cast<std::size_t>(ranks[0])] != c) {
      text += all[static_cast<std::size_t>(ranks[0])];  // as thrown, with its rank
    } else if (ranks.size() == 1) {
      text += c;
    } else {
      text += c + " [ranks ";
      for (std::size_t i = 0; i < ranks.size(); ++i) text += (i ? ", " : "") + std::to_string(ranks[i]);
      text += "]";
    }
  }
  if (groups.size() > 4) text += "; and " + std::to_string(groups.size() - 4) + " other causes";
  throw error(text);
}

namespace detail {
/// Runs f; returns "" or the message of what it threw (with the rank).
template <class F>
std::string failure_of(F&& f) {
  try {
    f();
  } catch (const error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return with_rank(e.what());
  } catch (...) {
    return with_rank("unknown exception");
  }
  return {};
}
}  // namespace detail

template <class F>
  requires std::invocable<F&>
std::invoke_result_t<F&> agree(const mpi::communicator& comm, F&& f) {
  using R = std::invoke_result_t<F&>;
  if constexpr (std::is_void_v<R>) {
    agree(comm, detail::failure_of(f));
  } else {
    std::optional<R> result;
    agree(comm, detail::failure_of([&] { result.emplace(f()); }));
    return std::move(*result);
  }
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
  std::ostringstream text;
  text.precision(17);
  text << what << " differs between ranks: rank 0 has " << +all[0] << ", rank " << other << " has "
       << +all[static_cast<std::size_t>(other)];
  throw error(text.str());
}

// --- collectives -----------------------------------------------------------

inline block block_of(std::size_t n, int size, int rank) {
  const auto p = static_cast<std::size_t>(size);
  const auto r = static_cast<std::size_t>(rank);
  const std::size_t base = n / p;
  const std::size_t extra = n % p;
  const std::size_t begin = r * base + std::min(r, extra);
  return {begin, begin + base + (r < extra ? 1 : 0)};
}

inline request iallreduce_sum_impl(const mpi::communicator& comm, void* data, int n, MPI_Datatype type) {
  request r;
  MPI_Request handle = MPI_REQUEST_NULL;
  detail::mpi_check(MPI_Iallreduce(MPI_IN_PLACE, data, n, type, MPI_SUM, MPI_Comm(comm), &handle),
                    "MPI_Iallreduce");
  detail::request_access::add(r, handle, false);
  return r;
}

template <MpiArithmetic T>
request iallreduce_sum(const mpi::communicator& comm, std::span<T> data) {
  return iallreduce_sum_impl(comm, data.data(), detail::checked_count(data.size(), "iallreduce_sum()"),
                             detail::mpi_type<T>());
}

namespace detail {

/// parallax's own duplicate of a communicator, made on first use (a
/// collective call, as is every caller) and cached on the communicator as an
/// MPI attribute. Point-to-point traffic inside a collective travels on it, so
/// it never matches a user's messages, whatever their tags.
inline MPI_Comm private_comm(MPI_Comm comm) {
  static int keyval = [] {
    int key = MPI_KEYVAL_INVALID;
    auto on_free = [](MPI_Comm, int, void* value, void*) -> int {
      auto* dup = static_cast<MPI_Comm*>(value);
      int finalized = 0;
      MPI_Finalized(&finalized);
      if (!finalized) MPI_Comm_free(dup);
      delete dup;
      return MPI_SUCCESS;
    };
    mpi_check(MPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, on_free, &key, nullptr), "MPI_Comm_create_keyval");
    return key;
  }();
  void* value = nullptr;
  int found = 0;
  mpi_check(MPI_Comm_get_attr(comm, keyval, &value, &found), "MPI_Comm_get_attr");
  if (found) return *static_cast<MPI_Comm*>(value);
  auto dup = std::make_unique<MPI_Comm>(MPI_COMM_NULL);
  mpi_check(MPI_Comm_dup(comm, dup.get()), "MPI_Comm_dup");
  mpi_check(MPI_Comm_set_attr(comm, keyval, dup.get()), "MPI_Comm_set_attr");
  return *dup.release();
}

/// Scratch reused by every ring all-reduce of this process (one block of a
/// piece), grown on demand and never shrunk.
template <class T>
T* ring_scratch(std::size_t n) {
  static std::vector<T> scratch;
  if (scratch.size() < n) scratch.resize(n);
  return scratch.data();
}

/// Ring all-reduce of one piece: p - 1 reduce-scatter steps (each rank adds
/// the block its left neighbour sends into its own copy), then p - 1
/// all-gather steps passing the finished blocks on. Block b is reduced on one
/// rank only, so every rank ends with the same bits. With `scaled`, the last
/// addition of each block multiplies by `scale`.
template <class T>
void ring_piece(MPI_Comm comm, int p, int rank, T* data, std::size_t n, T* scratch, bool scaled, T scale,
                unsigned* nonfinite) {
  const int right = (rank + 1) % p;
  const int left = (rank + p - 1) % p;
  const auto type = mpi_type<T>();
  auto block_at = [&](int b) { return block_of(n, p, ((b % p) + p) % p); };
  for (int step = 0; step < p - 1; ++step) {
    const auto out = block_at(rank - step);
    const auto in = block_at(rank - step - 1);
    mpi_check(MPI_Sendrecv(data + out.begin, static_cast<int>(out.size()), type, right, 1, scratch,
                           static_cast<int>(in.size()), type, left, 1, comm, MPI_STATUS_IGNORE),
              "MPI_Sendrecv");
    T* target = data + in.begin;
    if (scaled && step == p - 2 && nonfinite) {
      // x - x is NaN exactly for an infinite or NaN x; the integer OR keeps
      // the loop vectorisable.
      unsigned bad = 0;
      for (std::size_t i = 0; i < in.size(); ++i) {
        target[i] = (target[i] + scratch[i]) * scale;
        const T z = target[i] - target[i];
        bad |= z != z ? 1u : 0u;
      }
      *nonfinite |= bad;
    } else if (scaled && step == p - 2) {
      for (std::size_t i = 0; i < in.size(); ++i) target[i] = (target[i] + scratch[i]) * scale;
    } else {
      for (std::size_t i = 0; i < in.size(); ++i) target[i] += scratch[i];
    }
  }
  // Rank r now holds the finished block r + 1.
  for (int step = 0; step < p - 1; ++step) {
    const auto out = block_at(rank + 1 - step);
    const auto in = block_at(rank - step);
    mpi_check(MPI_Sendrecv(data + out.begin, static_cast<int>(out.size()), type, right, 2, data + in.begin,
                           static_cast<int>(in.size()), type, left, 2, comm, MPI_STATUS_IGNORE),
              "MPI_Sendrecv");
  }
}

/// Scales in place; returns 1 when a result is NaN or infinite (when asked).
template <class T>
unsigned scale_and_check(std::span<T> data, T scale, bool check) {
  unsigned bad = 0;
  if (check) {
    for (auto& x : data) {
      x *= scale;
      const T z = x - x;
      bad |= z != z ? 1u : 0u;
    }
  } else {
    for (auto& x : data) x *= scale;
  }
  return bad;
}

/// The sum all-reduce behind allreduce_sum/mean/scaled. With `nonfinite`,
/// also finds whether any result is NaN or infinite: on the ring each rank
/// checks the blocks it finishes and one integer all-reduce shares the
/// verdict, so every rank answers the same.
template <class T>
void allreduce(const mpi::communicator& comm, std::span<T> data, bool scaled, T scale, bool* nonfinite = nullptr) {
  const int p = comm.size();
  if (p == 1 || data.size_bytes() < allreduce_ring_min_bytes) {
    if (p > 1)
      mpi::all_reduce(comm, mpi::inplace(data.data()), checked_count(data.size(), "allreduce_sum()"),
                      std::plus<T>());
    if (scaled || nonfinite) {
      const unsigned bad = scale_and_check(data, scaled ? scale : T(1), nonfinite != nullptr);
      if (nonfinite) *nonfinite = bad != 0;
    }
    return;
  }
  const MPI_Comm ring = private_comm(MPI_Comm(comm));
  const std::size_t piece = std::max<std::size_t>(static_cast<std::size_t>(p), allreduce_piece_bytes / sizeof(T));
  T* scratch = ring_scratch<T>(piece / static_cast<std::size_t>(p) + 1);
  unsigned bad = 0;
  for (std::size_t at = 0; at < data.size(); at += piece)
    ring_piece(ring, p, comm.rank(), data.data() + at, std::min(piece, data.size() - at), scratch,
               scaled || nonfinite, scaled ? scale : T(1), nonfinite ? &bad : nullptr);
  if (nonfinite) {
    unsigned any = 0;
    mpi::all_reduce(comm, bad, any, mpi::maximum<unsigned>());
    *nonfinite = any != 0;
  }
}

}  // namespace detail

template <MpiArithmetic T>
void allreduce_sum(const mpi::communicator& comm, std::span<T> data) {
  if (comm.size() == 1 || data.empty()) return;
  detail::allreduce(comm, data, false, T(1));
}

template <std::floating_point T>
void allreduce_mean(const mpi::communicator& comm, std::span<T> data) {
  if (comm.size() == 1 || data.empty()) return;
  detail::allreduce(comm, data, true, T(1) / static_cast<T>(comm.size()));
}

template <std::floating_point T>
bool allreduce_scaled(const mpi::communicator& comm, std::span<T> data, T scale) {
  if (data.empty()) return false;
  bool nonfinite = false;
  detail::allreduce(comm, data, true, scale, &nonfinite);
  return nonfinite;
}

template <MpiArithmetic T>
void broadcast(const mpi::communicator& comm, std::span<T> data, int root) {
  PARALLAX_CHECK(root >= 0 && root < comm.size(),
                 "broadcast(): root " + std::to_string(root) + " is not a rank of a communicator of size " +
                     std::to_string(comm.size()));
  if (comm.size() == 1 || data.empty()) return;
  mpi::broadcast(comm, data.data(), detail::checked_count(data.size(), "broadcast()"), root);
}

template <MpiArithmetic T>
void reduce_scatter_sum(const mpi::communicator& comm, std::span<const T> in, std::span<T> out) {
  const int p = comm.size();
  const auto mine = block_of(in.size(), p, comm.rank());
  PARALLAX_CHECK(out.size() == mine.size(), "reduce_scatter_sum(): output holds " + std::to_string(out.size()) +
                                                " elements, this rank's block has " +
                                                std::to_string(mine.size()));
  std::vector<int> counts(static_cast<std::size_t>(p));
  for (int r = 0; r < p; ++r)
    counts[static_cast<std::size_t>(r)] =
        detail::checked_count(block_of(in.size(), p, r).size(), "reduce_scatter_sum()");
  detail::mpi_check(MPI_Reduce_scatter(in.data(), out.data(), counts.data(), detail::mpi_type<T>(), MPI_SUM,
                                       MPI_Comm(comm)),
                    "MPI_Reduce_scatter");
}

// --- request ---------------------------------------------------------------

inline request::request(request&& other) noexcept
    : handles_(std::move(other.handles_)), keep_alive_(std::move(other.keep_alive_)) {
  other.handles_.clear();
}

inline request& request::operator=(request&& other) noexcept {
  if (this != &other) {
    release();
    handles_ = std::move(other.handles_);
    keep_alive_ = std::move(other.keep_alive_);
    other.handles_.clear();
  }
  return *this;
}

inline request::~request() { release(); }

inline void request::release() noexcept {
  for (auto& h : handles_) {
    if (h.mpi == MPI_REQUEST_NULL) continue;
    if (h.is_send) {
      // The send completes in the background; its header must outlive it.
      // Its header must outlive it, and nothing tells us when it is done:
      // the few bytes are deliberately leaked (this happens only when a
      // request is abandoned, e.g. while an error unwinds).
      MPI_Request_free(&h.mpi);
      if (keep_alive_) static_cast<void>(new std::shared_ptr<void>(keep_alive_));
    } else {
      MPI_Cancel(&h.mpi);
      MPI_Wait(&h.mpi, MPI_STATUS_IGNORE);
    }
  }
  handles_.clear();
  keep_alive_.reset();
}

inline void request::wait() {
  for (auto& h : handles_)
    if (h.mpi != MPI_REQUEST_NULL) detail::mpi_check(MPI_Wait(&h.mpi, MPI_STATUS_IGNORE), "MPI_Wait");
  handles_.clear();
  keep_alive_.reset();
}

inline bool request::test() {
  bool done = true;
  for (auto& h : handles_) {
    if (h.mpi == MPI_REQUEST_NULL) continue;
    int flag = 0;
    detail::mpi_check(MPI_Test(&h.mpi, &flag, MPI_STATUS_IGNORE), "MPI_Test");
    if (!flag) done = false;
  }
  if (done) {
    handles_.clear();
    keep_alive_.reset();
  }
  return done;
}

// --- point-to-point tensors ---------------------------------------------------

template <Tensor E>
void send_tensor(const mpi::communicator& comm, int dest, int tag, const E& tensor) {
  isend_tensor(comm, dest, tag, tensor).wait();
}

template <Tensor E>
request isend_tensor(const mpi::communicator& comm, int dest, int tag, const E& tensor) {
  using T = typename E::value_type;
  static_assert(MpiArithmetic<T>, "isend_tensor(): elements must be arithmetic");
  auto header = std::make_shared<detail::tensor_header>();
  const int words = detail::make_header(tensor, *header);
  const int count = detail::checked_count(tensor.size(), "isend_tensor()");
  request r;
  detail::request_access::keep_alive(r, header);
  MPI_Request h = MPI_REQUEST_NULL;
  detail::mpi_check(MPI_Isend(header->data(), words, MPI_UINT64_T, dest, tag, MPI_Comm(comm), &h),
                    "MPI_Isend");
  detail::request_access::add(r, h, true);
  detail::mpi_check(MPI_Isend(tensor.data(), count, detail::mpi_type<T>(), dest, tag, MPI_Comm(comm), &h),
                    "MPI_Isend");
  detail::request_access::add(r, h, true);
  return r;
}

template <class E>
tensor_receive<E>::tensor_receive(const mpi::communicator& comm, int source, int tag)
    : comm_(MPI_Comm(comm)), source_(source), tag_(tag), header_(std::make_unique<detail::tensor_header>()) {
  MPI_Request h = MPI_REQUEST_NULL;
  detail::mpi_check(MPI_Irecv(header_->data(), static_cast<int>(detail::header_words), MPI_UINT64_T, source,
                              tag, comm_, &h),
                    "MPI_Irecv");
  detail::request_access::add(header_request_, h, false);
}

template <class E>
tensor_receive<E>::tensor_receive(const mpi::communicator& comm, int source, int tag, E&& storage)
    : tensor_receive(comm, source, tag) {
  tensor_ = std::move(storage);
}

template <class E>
void tensor_receive<E>::on_header() {
  header_done_ = true;
  detail::apply_header(*header_, tensor_, source_);
  using T = typename E::value_type;
  MPI_Request h = MPI_REQUEST_NULL;
  detail::mpi_check(MPI_Irecv(tensor_.data(), static_cast<int>(tensor_.size()), detail::mpi_type<T>(), source_,
                              tag_, comm_, &h),
                    "MPI_Irecv");
  detail::request_access::add(data_request_, h, false);
}

template <class E>
bool tensor_receive<E>::test() {
  if (!header_done_) {
    if (!header_request_.test()) return false;
    on_header();
  }
  return data_request_.test();
}

template <class E>
E& tensor_receive<E>::wait() {
  if (!header_done_) {
    header_request_.wait();
    on_header();
  }
  data_request_.wait();
  return tensor_;
}

template <MpiArithmetic T>
tensor_receive<xt::xarray<T>> irecv_tensor(const mpi::communicator& comm, int source, int tag) {
  return tensor_receive<xt::xarray<T>>(comm, source, tag);
}

template <MpiArithmetic T>
xt::xarray<T> recv_tensor(const mpi::communicator& comm, int source, int tag) {
  return std::move(irecv_tensor<T>(comm, source, tag).wait());
}

template <Tensor E>
void recv_tensor(const mpi::communicator& comm, int source, int tag, E& out) {
  detail::tensor_header header{};
  MPI_Status status;
  detail::mpi_check(MPI_Recv(header.data(), static_cast<int>(detail::header_words), MPI_UINT64_T, source, tag,
                             MPI_Comm(comm), &status),
                    "MPI_Recv");
  detail::apply_header(header, out, source);
  using T = typename E::value_type;
  detail::mpi_check(MPI_Recv(out.data(), detail::checked_count(out.size(), "recv_tensor()"),
                             detail::mpi_type<T>(), source, tag, MPI_Comm(comm), MPI_STATUS_IGNORE),
                    "MPI_Recv");
}

// --- Bucketer ----------------------------------------------------------------

template <MpiArithmetic T>
Bucketer<T>::Bucketer(std::size_t cap_bytes) : cap_elements_(cap_bytes / sizeof(T)) {
  PARALLAX_CHECK(cap_elements_ > 0, "Bucketer: a cap of " + std::to_string(cap_bytes) +
                                        " bytes holds no element of " + std::to_string(sizeof(T)) + " bytes");
}

template <MpiArithmetic T>
template <class Range>
void Bucketer<T>::plan(const Range& tensors) {
  offsets_.clear();
  total_ = 0;
  for (const auto& t : tensors) {
    offsets_.push_back(total_);
    total_ += static_cast<std::size_t>(t.size());
  }
  offsets_.push_back(total_);
  storage_.assign(total_, T{});
  buckets_.clear();
  for (std::size_t at = 0; at < total_; at += cap_elements_)
    buckets_.emplace_back(storage_.data() + at, std::min(cap_elements_, total_ - at));
}

template <MpiArithmetic T>
template <class Range, class Copy>
void Bucketer<T>::for_each_piece(std::size_t k, Range& tensors, Copy copy) const {
  PARALLAX_CHECK(k < buckets_.size(), "Bucketer: bucket " + std::to_string(k) + " of " +
                                          std::to_string(buckets_.size()));
  const std::size_t lo = k * cap_elements_;
  const std::size_t hi = lo + buckets_[k].size();
  // First tensor that ends after lo.
  auto first = std::upper_bound(offsets_.begin(), offsets_.end() - 1, lo) - 1;
  std::size_t i = static_cast<std::size_t>(first - offsets_.begin());
  for (auto it = std::next(std::begin(tensors), static_cast<std::ptrdiff_t>(i));
       i + 1 < offsets_.size() && offsets_[i] < hi; ++i, ++it) {
    const std::size_t from = std::max(lo, offsets_[i]);
    const std::size_t to = std::min(hi, offsets_[i + 1]);
    if (from >= to) continue;
    PARALLAX_CHECK(static_cast<std::size_t>(it->size()) == offsets_[i + 1] - offsets_[i],
                   "Bucketer: tensor " + std::to_string(i) + " has " + std::to_string(it->size()) +
                       " elements, the plan has " + std::to_string(offsets_[i + 1] - offsets_[i]));
    copy(it->data() + (from - offsets_[i]), buckets_[k].data() + (from - lo), to - from);
  }
}

template <MpiArithmetic T>
template <class Range, class F>
void Bucketer<T>::visit(std::size_t k, Range& tensors, F f) {
  for_each_piece(k, tensors, f);
}

template <MpiArithmetic T>
template <class Range>
void Bucketer<T>::pack(std::size_t k, const Range& tensors) {
  for_each_piece(k, tensors, [](const T* tensor, T* bucket, std::size_t n) { std::copy_n(tensor, n, bucket); });
}

template <MpiArithmetic T>
template <class Range>
void Bucketer<T>::unpack(std::size_t k, Range& tensors) const {
  for_each_piece(k, tensors, [](T* tensor, const T* bucket, std::size_t n) { std::copy_n(bucket, n, tensor); });
}

template <MpiArithmetic T>
template <class Range>
void Bucketer<T>::pack(const Range& tensors) {
  for (std::size_t k = 0; k < buckets_.size(); ++k) pack(k, tensors);
}

template <MpiArithmetic T>
template <class Range>
void Bucketer<T>::unpack(Range& tensors) const {
  for (std::size_t k = 0; k < buckets_.size(); ++k) unpack(k, tensors);
}

}  // namespace parallax
