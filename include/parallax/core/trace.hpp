#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Timeline traces: spans of what each rank did (steps, batches, forward and
/// backward, bucket reductions, pipeline operations, the optimizer,
/// checkpoint writes), written as one Chrome trace-event JSON file with one
/// track per rank (opens in Perfetto and chrome://tracing).
///
/// Off unless PARALLAX_TRACE names a file or trace::set_file() does; when off
/// a span is one test of a flag, and compiling with -DPARALLAX_NO_TRACE
/// removes even that (tracing cannot be turned on then). The file is written
/// by trace::write() (collective over MPI_COMM_WORLD), and by MPI_Finalize on
/// the ranks that recorded spans the file lacks (so a program that calls
/// write() last on every rank writes once). Spans are recorded by the thread that calls the
/// library (one per rank); the trace is not meant for spans from other
/// threads.
/// @code
///   PARALLAX_TRACE=run.json mpiexec -n 2 ./train      # or, in the program:
///   parallax::trace::set_file("run.json");           // alike on every rank
///   { parallax::trace::span s("my phase", "user"); ... }
/// @endcode

#include <parallax/core/error.hpp>
#include <parallax/detail/mpi.hpp>

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace parallax::trace {

/// Whether spans are recorded (always false under -DPARALLAX_NO_TRACE).
bool enabled() noexcept;

/// Records spans from now on and writes them to `path` (an empty path turns
/// tracing off and drops what was recorded). Call it alike on every rank.
void set_file(std::string path);

/// Collective over MPI_COMM_WORLD: every rank's spans so far into the file
/// (rank 0 writes it; each call replaces it with everything recorded since
/// tracing began). When no rank recorded a span since the file was last
/// written, the file is left as it is. Returns, on every rank alike, whether
/// the file holds every span; true when tracing is off (nothing to write).
/// A rank that does not take part within 10 s leaves each waiting rank to
/// write its own spans to "<file>.rank<r>" instead and return false; a file
/// rank 0 cannot write is named on its standard error and every rank returns
/// false. After a failure, write() does nothing and returns false (the ranks
/// may no longer be in step) until set_file() is called again.
bool write();

/// One span of the trace: from construction to destruction, on this rank's
/// track. `name` and `category` must outlive the span (string literals);
/// `index` (a micro-batch, a bucket, a layer; -1: none) is shown with it.
class span {
 public:
  span(const char* name, const char* category, std::int64_t index = -1) noexcept;
  /// A span whose name is made only when tracing is on (e.g. a layer's
  /// describe()).
  template <class MakeName>
    requires std::is_invocable_r_v<std::string, MakeName&>
  span(MakeName&& make_name, const char* category, std::int64_t index = -1);
  span(const span&) = delete;
  span& operator=(const span&) = delete;
  ~span();

 private:
  const char* name_ = nullptr;
  std::string made_name_;
  const char* category_ = nullptr;
  std::int64_t index_ = -1;
  std::int64_t begin_ = -1;  // nanoseconds (detail::now_ns); -1: not recording
};

// ===========================================================================
// Implementation
// ===========================================================================

namespace detail {

struct event {
  const char* name;   // a span's literal name, or null: `made` holds it
  std::string made;   // a name made when tracing was on (a layer's description)
  const char* category;
  std::int64_t index;
  std::int64_t begin;  // nanoseconds, detail::now_ns
  std::int64_t duration;  // nanoseconds
};

struct state {
  bool on = false;
  bool at_finalize = false;  // MPI_Finalize writes the trace
  std::string path;
  std::vector<event> events;
  std::size_t written = static_cast<std::size_t>(-1);  // events in the file written last; -1: none written
  bool failed = false;  // a write failed: no more collectives until set_file()
};

inline state& the_state() {
  static state s = [] {
    state made;
    if (const char* p = std::getenv("PARALLAX_TRACE"); p && *p) {
      made.on = true;
      made.path = p;
    }
    return made;
  }();
  return s;
}

/// Nanoseconds of the steady clock (never steps back, so a span's end is
/// never before its begin), moved once per process onto the system clock so
/// that the ranks' tracks line up (exactly on one host, as closely as the
/// hosts' clocks agree across hosts).
inline std::int64_t now_ns() noexcept {
  using namespace std::chrono;
  static const std::int64_t to_system =
      duration_cast<nanoseconds>(system_clock::now().time_since_epoch()).count() -
      duration_cast<nanoseconds>(steady_clock::now().time_since_epoch()).count();
  return duration_cast<nanoseconds>(steady_clock::now().time_since_epoch()).count() + to_system;
}

/// "1234.567": nanoseconds as the microseconds a trace event's "ts" and
/// "dur" hold (fractions keep the order of spans shorter than a microsecond).
inline std::string micros_text(std::int64_t ns) {
  char text[32];
  std::snprintf(text, sizeof text, "%lld.%03lld", static_cast<long long>(ns / 1000), static_cast<long long>(ns % 1000));
  return text;
}

/// The JSON text of a string (quotes and control characters escaped).
inline std::string json_text(std::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char code[8];
      std::snprintf(code, sizeof code, "\\u%04x", static_cast<unsigned>(static_cast<unsigned char>(c)));
      out += code;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

/// This rank's events as JSON objects, comma-separated, times relative to
/// `origin`; `rank` is the track.
inline std::string events_json(const std::vector<event>& events, int rank, std::int64_t origin) {
  std::string out;
  const std::string track = std::to_string(rank);
  out += "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":" + track + ",\"tid\":0,\"args\":{\"name\":\"rank " +
         track + "\"}}";
  out += ",{\"name\":\"process_sort_index\",\"ph\":\"M\",\"pid\":" + track + ",\"tid\":0,\"args\":{\"sort_index\":" +
         track + "}}";
  for (const auto& e : events) {
    const std::string_view name = e.name ? std::string_view(e.name) : std::string_view(e.made);
    out += ",{\"name\":" + json_text(name) + ",\"cat\":" + json_text(e.category) +
           ",\"ph\":\"X\",\"pid\":" + track + ",\"tid\":0,\"ts\":" + micros_text(e.begin - origin) +
           ",\"dur\":" + micros_text(e.duration);
    if (e.index >= 0) out += ",\"args\":{\"index\":" + std::to_string(e.index) + "}";
    out += "}";
  }
  return out;
}

/// Waits for `request` up to `seconds`; false when it did not complete (the
/// request is left pending: MPI_Finalize follows).
inline bool wait_for(MPI_Request& request, double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  for (;;) {
    int done = 0;
    MPI_Test(&request, &done, MPI_STATUS_IGNORE);
    if (done) return true;
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

inline bool write_file(const std::string& path, const std::string& json) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << json;
  out.close();
  if (!out) std::cerr << "parallax: trace: cannot write '" << path << "'\n";
  return static_cast<bool>(out);
}

/// Written by MPI_Finalize (an attribute of MPI_COMM_SELF, whose delete
/// callback runs first thing in MPI_Finalize), from the first span on.
inline void write_at_finalize() {
  auto& s = the_state();
  if (s.at_finalize) return;
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) return;
  int key = MPI_KEYVAL_INVALID;
  // Only a rank with spans the file lacks writes: a rank that called write()
  // last, with nothing recorded since, has nothing to add (and its peers
  // may have finished already).
  auto on_free = [](MPI_Comm, int, void*, void*) -> int {
    const auto& s = the_state();
    if (s.on && !s.failed && s.events.size() != s.written) (void)write();
    return MPI_SUCCESS;
  };
  if (MPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, on_free, &key, nullptr) != MPI_SUCCESS) return;
  if (MPI_Comm_set_attr(MPI_COMM_SELF, key, nullptr) != MPI_SUCCESS) return;
  s.at_finalize = true;
}

}  // namespace detail

inline bool enabled() noexcept {
#ifdef PARALLAX_NO_TRACE
  return false;
#else
  return detail::the_state().on;
#endif
}

inline void set_file(std::string path) {
  auto& s = detail::the_state();
  s.on = !path.empty();
  s.path = std::move(path);
  s.written = static_cast<std::size_t>(-1);
  s.failed = false;
  if (!s.on) s.events.clear();
  else detail::write_at_finalize();
}

inline bool write() {
  auto& s = detail::the_state();
  if (!enabled()) return true;
  if (s.failed) return false;  // the ranks may no longer call write() in step
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  // What the nonblocking collectives read and write. A request given up at
  // its deadline stays pending and may still complete (when a late rank
  // joins), even after MPI_Finalize has begun: its buffers are then left
  // allocated on purpose, never freed under it.
  struct exchange {
    std::int64_t mine[2] = {INT64_MAX, 0};
    std::int64_t agreed[2] = {INT64_MAX, 0};
    std::string text;
    int length = 0;
    std::vector<int> lengths, offsets;
    std::string all;
    int written = 1;
  };
  auto x = std::make_unique<exchange>();
  for (const auto& e : s.events) x->mine[0] = std::min(x->mine[0], e.begin);
  const std::int64_t first = x->mine[0];
  // The origin, the earliest span of any rank, and whether any rank has a
  // span the file lacks: one nonblocking reduction (minimum of first and of
  // -fresh).
  x->mine[1] = s.events.size() != s.written ? -1 : 0;
  MPI_Request request = MPI_REQUEST_NULL;
  const auto own_file = [&] {
    s.failed = true;
    (void)x.release();  // the pending request's buffers: see exchange
    const std::string path = s.path + ".rank" + std::to_string(rank);
    std::cerr << "parallax: trace: not every rank wrote its trace within 10 s; rank " << rank << " wrote '" << path
              << "'\n";
    detail::write_file(path, "{\"traceEvents\":[" + detail::events_json(s.events, rank, first) + "]}\n");
    return false;
  };
  MPI_Iallreduce(x->mine, x->agreed, 2, MPI_INT64_T, MPI_MIN, MPI_COMM_WORLD, &request);
  if (!detail::wait_for(request, 10)) return own_file();
  if (x->agreed[1] == 0) return true;  // the file holds every rank's spans already
  const std::int64_t origin = x->agreed[0] == INT64_MAX ? 0 : x->agreed[0];
  x->text = detail::events_json(s.events, rank, origin);
  x->length = static_cast<int>(std::min<std::size_t>(x->text.size(), INT32_MAX));
  x->lengths.assign(static_cast<std::size_t>(size), 0);
  MPI_Igather(&x->length, 1, MPI_INT, x->lengths.data(), 1, MPI_INT, 0, MPI_COMM_WORLD, &request);
  if (!detail::wait_for(request, 10)) return own_file();
  x->offsets.assign(static_cast<std::size_t>(size), 0);
  std::size_t total = 0;
  for (std::size_t r = 0; r < x->lengths.size(); ++r) {
    x->offsets[r] = static_cast<int>(total);
    total += static_cast<std::size_t>(x->lengths[r]);
  }
  x->all.assign(rank == 0 ? total : 0, '\0');
  MPI_Igatherv(x->text.data(), x->length, MPI_CHAR, x->all.data(), x->lengths.data(), x->offsets.data(), MPI_CHAR, 0,
               MPI_COMM_WORLD, &request);
  if (!detail::wait_for(request, 10)) return own_file();
  if (rank == 0) {
    std::string json = "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[";
    for (std::size_t r = 0; r < x->lengths.size(); ++r) {
      if (r > 0) json += ',';
      json.append(x->all, static_cast<std::size_t>(x->offsets[r]), static_cast<std::size_t>(x->lengths[r]));
    }
    json += "]}\n";
    x->written = detail::write_file(s.path, json) ? 1 : 0;
  }
  // Every rank learns whether rank 0 wrote the file (same deadline).
  MPI_Ibcast(&x->written, 1, MPI_INT, 0, MPI_COMM_WORLD, &request);
  if (!detail::wait_for(request, 10)) return own_file();
  if (x->written == 1) s.written = s.events.size();
  else s.failed = true;
  return x->written == 1;
}

inline span::span(const char* name, const char* category, std::int64_t index) noexcept {
  if (!enabled()) return;
  name_ = name;
  category_ = category;
  index_ = index;
  begin_ = detail::now_ns();
}

template <class MakeName>
  requires std::is_invocable_r_v<std::string, MakeName&>
span::span(MakeName&& make_name, const char* category, std::int64_t index) {
  if (!enabled()) return;
  made_name_ = make_name();
  category_ = category;
  index_ = index;
  begin_ = detail::now_ns();
}

inline span::~span() {
  if (begin_ < 0) return;
  auto& s = detail::the_state();
  if (!s.on) return;
  const std::int64_t end = detail::now_ns();
  try {
    s.events.push_back({name_, std::move(made_name_), category_, index_, begin_, end - begin_});
    detail::write_at_finalize();
  } catch (...) {
    // A trace that cannot grow drops the span; training goes on.
  }
}

}  // namespace parallax::trace
