// SPDX-License-Identifier: BSL-1.0
// checksum: MB/s of the checksums a checkpoint file could carry, on one
// buffer of --mib MiB (default 64) of pseudo-random bytes, in one process:
// zlib's crc32_z (format-1 checkpoint files), XXH3-64 from libxxhash (what
// io/file.hpp writes), and, as the baseline, the slicing-by-8 CRC-32 that
// parallax carried itself before it used zlib (kept here, and only here, so
// that the comparison can be rerun). A pass of std::accumulate over the same
// bytes as 64-bit words shows what reading the memory costs.
//
// --warmup passes first, then --repeats passes of each, rotating the order;
// reported as the median and min-max. 1 MB = 1e6 B.
//
//   build/benchmarks/checksum [--mib 64] [--repeats 9] [--warmup 2] [--json checksum.json]
#include "bench.hpp"

#include <boost/mpi/environment.hpp>

#include <xxhash.h>
#include <zlib.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <iostream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace {

/// The eight tables of slicing-by-8 for the reflected polynomial 0xEDB88320.
constexpr std::array<std::array<std::uint32_t, 256>, 8> slicing_tables = [] {
  std::array<std::array<std::uint32_t, 256>, 8> t{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    t[0][i] = c;
  }
  for (std::size_t k = 1; k < 8; ++k)
    for (std::size_t i = 0; i < 256; ++i) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xffu];
  return t;
}();

std::uint32_t load_le32(const unsigned char* p) {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;  // little-endian host (x86-64)
}

/// CRC-32 by slicing-by-8, as parallax's own detail/crc32.hpp computed it.
std::uint32_t slicing_by_8(const unsigned char* p, std::size_t n) {
  const auto& t = slicing_tables;
  std::uint32_t c = ~0u;
  for (; n >= 8; p += 8, n -= 8) {
    const std::uint32_t a = c ^ load_le32(p);
    const std::uint32_t b = load_le32(p + 4);
    c = t[7][a & 0xffu] ^ t[6][(a >> 8) & 0xffu] ^ t[5][(a >> 16) & 0xffu] ^ t[4][a >> 24] ^ t[3][b & 0xffu] ^
        t[2][(b >> 8) & 0xffu] ^ t[1][(b >> 16) & 0xffu] ^ t[0][b >> 24];
  }
  for (; n > 0; ++p, --n) c = t[0][(c ^ *p) & 0xffu] ^ (c >> 8);
  return ~c;
}

struct method {
  const char* name;
  std::function<std::uint64_t(const unsigned char*, std::size_t)> run;
  std::vector<double> seconds;
  std::uint64_t result = 0;
};

}  // namespace

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  boost::mpi::communicator world;
  const bench::args args(argc, argv);
  const std::size_t bytes = static_cast<std::size_t>(args.get("mib", 64L)) << 20;
  const long repeats = args.get("repeats", 9L);
  const long warmup = args.get("warmup", 2L);
  const auto json = args.get("json", std::string());

  std::vector<unsigned char> data(bytes);
  std::mt19937_64 gen(7);
  for (std::size_t i = 0; i + 8 <= bytes; i += 8) {
    const std::uint64_t v = gen();
    std::memcpy(data.data() + i, &v, 8);
  }

  std::vector<method> methods;
  methods.push_back({"zlib crc32_z", [](const unsigned char* p, std::size_t n) -> std::uint64_t {
                       return crc32_z(crc32_z(0, nullptr, 0), p, n);
                     }, {}, 0});
  methods.push_back({"XXH3-64 (libxxhash)", [](const unsigned char* p, std::size_t n) -> std::uint64_t {
                       return XXH3_64bits(p, n);
                     }, {}, 0});
  methods.push_back({"slicing-by-8 CRC-32 (parallax's own, before zlib)", slicing_by_8, {}, 0});
  methods.push_back({"memory read (sum of 64-bit words)", [](const unsigned char* p, std::size_t n) -> std::uint64_t {
                       const auto* w = reinterpret_cast<const std::uint64_t*>(p);
                       return std::accumulate(w, w + n / 8, std::uint64_t{0});
                     }, {}, 0});

  for (long pass = 0; pass < warmup + repeats; ++pass) {
    for (std::size_t k = 0; k < methods.size(); ++k) {
      auto& m = methods[(k + static_cast<std::size_t>(pass)) % methods.size()];
      const double t = bench::timed(world, [&] { m.result = m.run(data.data(), data.size()); });
      if (pass >= warmup) m.seconds.push_back(t);
    }
  }
  if (world.rank() != 0) return 0;

  // Both CRC-32 implementations must agree, and give the published check value.
  const unsigned char check[] = "123456789";
  const std::uint32_t zlib_check = static_cast<std::uint32_t>(crc32_z(crc32_z(0, nullptr, 0), check, 9));
  std::printf("checksum of %zu MiB; CRC-32(\"123456789\"): zlib %08X, slicing-by-8 %08X (expected CBF43926)\n",
              bytes >> 20, zlib_check, slicing_by_8(check, 9));
  const bool crcs_agree = methods.front().result == slicing_by_8(data.data(), data.size());
  std::printf("zlib and slicing-by-8 agree on the buffer: %s\n", crcs_agree ? "yes" : "NO");
  std::printf("%-52s %-24s %9s\n", "", "seconds, median (min-max)", "MB/s");
  std::vector<bench::row> rows;
  for (auto& m : methods) {
    const auto s = bench::summarize(m.seconds);
    const double mb = static_cast<double>(bytes) / s.median / 1e6;
    std::printf("%-52s %-24s %9.0f\n", m.name, bench::spread_text(s, 1.0, 4).c_str(), mb);
    rows.push_back(bench::row()
                       .set("name", m.name)
                       .set("bytes", static_cast<double>(bytes))
                       .set("median_s", s.median)
                       .set("min", s.min)
                       .set("max", s.max)
                       .set("MB_per_s", mb)
                       .set("repeats", static_cast<double>(repeats)));
  }
  if (!json.empty()) {
    bench::write_json(json, "checksum", rows, bench::environment_meta(world).set("zlib", zlibVersion()));
    std::cout << "wrote " << json << "\n";
  }
  return crcs_agree && zlib_check == 0xCBF43926u ? 0 : 1;
}
