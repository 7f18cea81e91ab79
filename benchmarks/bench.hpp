#pragma once
// SPDX-License-Identifier: BSL-1.0
// Shared pieces of the parallax benchmarks: timing that takes the slowest
// rank, median and spread over repeats, a tiny argument reader, JSON rows, and
// the facts every result file records (BLAS core, threads, ranks).

#include <parallax/core/blas.hpp>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>
#include <dlfcn.h>
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iomanip>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace bench {

/// Reads `count` bytes at `offset` of the open file `fd` into `out` (pread()
/// until done): the file-system baseline of the dataset benchmarks.
inline void pread_all(int fd, char* out, std::size_t count, std::uint64_t offset) {
  while (count > 0) {
    const ssize_t got = ::pread(fd, out, count, static_cast<off_t>(offset));
    if (got <= 0) throw std::runtime_error("pread failed");
    out += got, count -= static_cast<std::size_t>(got), offset += static_cast<std::uint64_t>(got);
  }
}

/// Seconds of one call of f, as the slowest rank saw it. Ranks start together.
inline double timed(const boost::mpi::communicator& comm, const std::function<void()>& f) {
  comm.barrier();
  const double t0 = MPI_Wtime();
  f();
  const double mine = MPI_Wtime() - t0;
  double slowest = 0;
  boost::mpi::all_reduce(comm, mine, slowest, boost::mpi::maximum<double>());
  return slowest;
}

struct stats {
  double median = 0, min = 0, max = 0;
};

inline stats summarize(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const auto n = v.size();
  return {n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]), v.front(), v.back()};
}

/// --name value and --flag arguments.
class args {
 public:
  args(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a.rfind("--", 0) != 0) throw std::invalid_argument("unexpected argument " + a);
      if (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) values_[a.substr(2)] = argv[++i];
      else values_[a.substr(2)] = "";
    }
  }
  std::string get(const std::string& name, const std::string& fallback) const {
    auto it = values_.find(name);
    return it == values_.end() ? fallback : it->second;
  }
  long get(const std::string& name, long fallback) const {
    auto it = values_.find(name);
    return it == values_.end() ? fallback : std::stol(it->second);
  }
  bool has(const std::string& name) const { return values_.count(name) > 0; }

 private:
  std::map<std::string, std::string> values_;
};

/// One JSON object of flat fields; values are numbers or strings.
class row {
 public:
  row& set(const std::string& key, double value) {
    std::ostringstream s;
    s << std::setprecision(9) << value;
    fields_.emplace_back(key, s.str());
    return *this;
  }
  row& set(const std::string& key, const std::string& value) {
    std::string quoted = "\"";
    for (char c : value) {
      if (c == '\n') {
        quoted += "\\n";
        continue;
      }
      if (c == '"' || c == '\\') quoted += '\\';
      quoted += c;
    }
    fields_.emplace_back(key, quoted + "\"");
    return *this;
  }
  row& set(const std::string& key, const char* value) { return set(key, std::string(value)); }
  std::string str() const {
    std::string s = "{";
    for (std::size_t i = 0; i < fields_.size(); ++i)
      s += (i ? ", " : "") + ("\"" + fields_[i].first + "\": ") + fields_[i].second;
    return s + "}";
  }

 private:
  std::vector<std::pair<std::string, std::string>> fields_;
};

/// Writes {"benchmark": name, "rows": [...]} to path (rank 0 calls it).
inline void write_json(const std::string& path, const std::string& name, const std::vector<row>& rows,
                       const row& meta = row()) {
  std::ofstream out(path);
  if (!out) throw std::runtime_error("cannot write " + path);
  out << "{\n  \"benchmark\": \"" << name << "\",\n  \"meta\": " << meta.str() << ",\n  \"rows\": [\n";
  for (std::size_t i = 0; i < rows.size(); ++i) out << "    " << rows[i].str() << (i + 1 < rows.size() ? ",\n" : "\n");
  out << "  ]\n}\n";
}

/// What parallax::detect_blas() finds, and whether this program itself has
/// OpenBLAS loaded. When it has not (allreduce uses no BLAS and the linker
/// drops it), OpenBLAS is opened on the side, globally so that detect_blas()
/// sees it, and the record still says which kernels OpenBLAS picks on this
/// machine under this environment. Looked up once.
struct blas_record {
  parallax::blas_info info;
  bool used_by_program = true;
};

inline const blas_record& blas() {
  static const blas_record record = [] {
    blas_record r{parallax::detect_blas(), true};
    if (r.info.library == "OpenBLAS") return r;
    r.used_by_program = false;
    if (dlopen("libopenblas.so.0", RTLD_LAZY | RTLD_GLOBAL) != nullptr) r.info = parallax::detect_blas();
    return r;
  }();
  return record;
}

/// The BLAS kernels in use: OpenBLAS's core name ("SkylakeX", "Haswell",
/// ...); "unknown (not OpenBLAS)" for another BLAS; a suffix says when the
/// program itself does not use OpenBLAS.
inline std::string blas_core() {
  const blas_record& b = blas();
  if (b.info.core.empty()) return "unknown (not OpenBLAS)";
  return b.used_by_program ? b.info.core : b.info.core + " (OpenBLAS not used by this program)";
}

/// The value of an environment variable, or "(unset)".
inline std::string env_or_unset(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "(unset)";
}

/// The facts every benchmark's JSON "meta" records: world size, BLAS core and
/// configuration, the thread and core variables, the host's core count.
inline row environment_meta(const boost::mpi::communicator& world) {
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  return row()
      .set("ranks", world.size())
      .set("blas_core", blas_core())
      .set("blas_config", blas().info.config)
      .set("OPENBLAS_NUM_THREADS", env_or_unset("OPENBLAS_NUM_THREADS"))
      .set("OPENBLAS_CORETYPE", env_or_unset("OPENBLAS_CORETYPE"))
      .set("cores", static_cast<double>(std::thread::hardware_concurrency()))
      .set("host", host);
}

/// A barrier that sleeps while it waits: a rank that sits out a measurement
/// leaves its core to the others instead of spinning in MPI's progress loop.
inline void idle_barrier(const boost::mpi::communicator& comm) {
  MPI_Request request;
  MPI_Ibarrier(MPI_Comm(comm), &request);
  int done = 0;
  for (MPI_Test(&request, &done, MPI_STATUS_IGNORE); !done; MPI_Test(&request, &done, MPI_STATUS_IGNORE))
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

/// "12.35 (12.01-13.20)": the median and the min-max of `s`, each times
/// `scale` (1e3 for milliseconds) with `digits` decimals.
inline std::string spread_text(const stats& s, double scale = 1.0, int digits = 3) {
  char text[128];
  std::snprintf(text, sizeof text, "%.*f (%.*f-%.*f)", digits, s.median * scale, digits, s.min * scale, digits,
                s.max * scale);
  return text;
}

/// "1 rank", "4 ranks": a count and its noun.
inline std::string count_text(long n, const std::string& noun) {
  return std::to_string(n) + " " + noun + (n == 1 ? "" : "s");
}

/// "64 KiB", "16 MiB".
inline std::string bytes_text(std::size_t b) {
  if (b >= (1u << 20) && b % (1u << 20) == 0) return std::to_string(b >> 20) + " MiB";
  if (b >= (1u << 10) && b % (1u << 10) == 0) return std::to_string(b >> 10) + " KiB";
  return std::to_string(b) + " B";
}

/// Named ways of doing one thing, each a callable.
using paths = std::vector<std::pair<std::string, std::function<void()>>>;

/// `warmup` rounds, then `repeats` rounds of every path in turn (so a slow
/// phase of the machine falls on all alike); [path][repeat] -> the slowest
/// rank's seconds.
inline std::vector<std::vector<double>> alternate(const boost::mpi::communicator& comm, const paths& ways, long warmup,
                                                  long repeats) {
  std::vector<std::vector<double>> times(ways.size());
  for (long i = 0; i < warmup + repeats; ++i)
    for (std::size_t p = 0; p < ways.size(); ++p) {
      const double t = timed(comm, ways[p].second);
      if (i >= warmup) times[p].push_back(t);
    }
  return times;
}

/// One line per path on stdout (seconds median (min-max), MB/s per rank =
/// `bytes` / median, and the ratio to path `base`, called `base_name`) and
/// one JSON row per path.
inline std::vector<row> rate_rows(const paths& ways, const std::vector<std::vector<double>>& times, double bytes,
                                  std::size_t base, const std::string& base_name, long repeats) {
  std::size_t width = 0;
  for (const auto& w : ways) width = std::max(width, w.first.size());
  std::printf("%-*s seconds, median (min-max)   MB/s per rank\n", static_cast<int>(width + 1), "");
  std::vector<row> out;
  const auto reference = summarize(times[base]);
  for (std::size_t p = 0; p < ways.size(); ++p) {
    const auto s = summarize(times[p]);
    std::printf("%-*s %-28s %8.0f   at %.2f x %s\n", static_cast<int>(width), ways[p].first.c_str(),
                spread_text(s, 1.0, 4).c_str(), bytes / s.median / 1e6, reference.median / s.median, base_name.c_str());
    out.push_back(row()
                      .set("name", ways[p].first)
                      .set("bytes_per_rank", bytes)
                      .set("median_s", s.median)
                      .set("min", s.min)
                      .set("max", s.max)
                      .set("MB_per_s_per_rank", bytes / s.median / 1e6)
                      .set("repeats", static_cast<double>(repeats)));
  }
  return out;
}

}  // namespace bench
