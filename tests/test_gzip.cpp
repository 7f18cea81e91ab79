// SPDX-License-Identifier: BSL-1.0
// Suite data: gunzip (detail/gzip.hpp, over zlib) against the system gzip
// (several levels and sizes, so stored, fixed and dynamic blocks all appear),
// gzip header fields, concatenated members and trailing garbage, the output
// limit, and truncated, bit-flipped and garbled input: each an error naming
// the cause, never a crash, never more output than the limit.

#include <parallax/detail/gzip.hpp>

#include <zlib.h>

#include "error_of.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace {

namespace fs = std::filesystem;
using bytes = std::vector<std::uint8_t>;
using parallax::detail::gunzip;

constexpr std::size_t unlimited = std::size_t{1} << 32;

bytes to_bytes(std::string_view text) { return bytes(text.begin(), text.end()); }

std::uint32_t crc32(const bytes& data) { return static_cast<std::uint32_t>(crc32_z(0, data.data(), data.size())); }

/// A fresh directory under the system's temporary directory, removed with
/// everything in it when the object goes.
struct temp_dir {
  fs::path path;
  temp_dir() {
    std::random_device seed;
    path = fs::temp_directory_path() /
           ("parallax-test-gzip-" + std::to_string(seed()) + "-" + std::to_string(seed()));
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
};

void write_file(const fs::path& path, const bytes& data) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  REQUIRE(out.good());
}

bytes read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.is_open());
  return bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

/// `data` compressed by the system gzip at `level` ("-1" ... "-9"); with
/// `with_name`, gzip also stores the file name in the header (FNAME).
bytes system_gzip(const temp_dir& dir, const bytes& data, const std::string& level, bool with_name = false) {
  const fs::path raw = dir.path / "raw";
  const fs::path gz = dir.path / "raw.gz";
  write_file(raw, data);
  const std::string command = with_name ? "gzip -c " + level + " '" + raw.string() + "' > '" + gz.string() + "'"
                                        : "gzip -c " + level + " < '" + raw.string() + "' > '" + gz.string() + "'";
  REQUIRE(std::system(command.c_str()) == 0);
  return read_file(gz);
}

/// Offset of the deflate stream in a gzip member written by gzip (which sets
/// at most FNAME).
std::size_t deflate_offset(const bytes& gz) {
  std::size_t at = 10;
  if (gz[3] & 0x08) {
    while (gz[at] != 0) ++at;
    ++at;
  }
  return at;
}

/// Type of the first deflate block: 0 stored, 1 fixed, 2 dynamic.
int first_block_type(const bytes& gz) { return (gz[deflate_offset(gz)] >> 1) & 3; }

std::uint32_t le32(std::uint32_t v, bytes& out) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
  return v;
}

/// A gzip member around a hand-built deflate stream whose content is `content`.
bytes wrap(const bytes& deflate, const bytes& content) {
  bytes out = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff};
  out.insert(out.end(), deflate.begin(), deflate.end());
  le32(crc32(content), out);
  le32(static_cast<std::uint32_t>(content.size()), out);
  return out;
}

/// Writes bits LSB first, as DEFLATE packs them; Huffman codes go MSB first.
class bit_writer {
 public:
  void put(std::uint32_t value, unsigned n) {
    for (unsigned i = 0; i < n; ++i) bit((value >> i) & 1u);
  }
  void code(std::uint32_t value, unsigned n) {
    for (unsigned i = n; i-- > 0;) bit((value >> i) & 1u);
  }
  bytes finish() { return out_; }

 private:
  void bit(std::uint32_t b) {
    if (used_ == 0) out_.push_back(0);
    out_.back() = static_cast<std::uint8_t>(out_.back() | (b << used_));
    used_ = (used_ + 1) % 8;
  }
  bytes out_;
  unsigned used_ = 0;
};

/// Fixed-code literal/length symbol (RFC 1951, 3.2.6).
void fixed_symbol(bit_writer& w, unsigned sym) {
  if (sym < 144) w.code(0x30 + sym, 8);
  else if (sym < 256) w.code(0x190 + sym - 144, 9);
  else if (sym < 280) w.code(sym - 256, 7);
  else w.code(0xc0 + sym - 280, 8);
}

bytes random_bytes(std::size_t n, std::uint32_t seed) {
  std::mt19937 gen(seed);
  bytes out(n);
  for (auto& b : out) b = static_cast<std::uint8_t>(gen() >> 24);
  return out;
}

bytes repetitive_bytes(std::size_t n) {
  const std::string_view phrase = "parallax splits the model; parallax splits the data. ";
  bytes out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<std::uint8_t>(phrase[i % phrase.size()] + (i / 4096) % 3);
  return out;
}

}  // namespace

TEST_CASE("gzip: is_gzip looks at the magic bytes only") {
  CHECK(parallax::detail::is_gzip(bytes{0x1f, 0x8b}));
  CHECK(parallax::detail::is_gzip(bytes{0x1f, 0x8b, 0, 0}));
  CHECK_FALSE(parallax::detail::is_gzip(bytes{}));
  CHECK_FALSE(parallax::detail::is_gzip(bytes{0x1f}));
  CHECK_FALSE(parallax::detail::is_gzip(bytes{0x8b, 0x1f}));
  CHECK_FALSE(parallax::detail::is_gzip(bytes{0, 0, 8, 1}));
}

TEST_CASE("gzip: decodes what the system gzip writes, at levels 1 and 9") {
  temp_dir dir;
  struct sample {
    const char* name;
    bytes data;
    int block_type;  // of the first block gzip writes
  };
  const std::vector<sample> samples = {
      {"empty", {}, 1},
      {"one byte", {0x5a}, 1},
      {"short text", to_bytes("Fashion-MNIST: 70000 images of clothes, 28 by 28 pixels."), 1},
      {"repetitive 1 MB", repetitive_bytes(std::size_t{1} << 20), 2},
      {"random 100 KB", random_bytes(100'000, 42), 0},
  };
  for (const auto& s : samples) {
    for (const std::string level : {"-1", "-9"}) {
      for (const bool with_name : {false, true}) {
        CAPTURE(s.name);
        CAPTURE(level);
        CAPTURE(with_name);
        const bytes gz = system_gzip(dir, s.data, level, with_name);
        CHECK(first_block_type(gz) == s.block_type);
        CHECK(((gz[3] & 0x08) != 0) == with_name);
        const bytes out = gunzip(gz, unlimited);
        CHECK(out == s.data);
        // An exact limit is enough, and the buffer never grows past it.
        const bytes exact = gunzip(gz, s.data.size());
        CHECK(exact == s.data);
        CHECK(exact.capacity() <= s.data.size());
      }
    }
  }
}

TEST_CASE("gzip: gzip header fields (extra, name, comment, header CRC) are skipped and checked") {
  const bytes text = to_bytes("xyz");
  bytes deflate = {0x01, 3, 0, 0xfc, 0xff, 'x', 'y', 'z'};
  bytes gz = {0x1f, 0x8b, 8, 0x02 | 0x04 | 0x08 | 0x10, 1, 2, 3, 4, 0, 3};
  gz.insert(gz.end(), {4, 0, 'a', 'b', 'c', 'd'});       // FEXTRA, 4 bytes
  gz.insert(gz.end(), {'n', 'a', 'm', 'e', 0});          // FNAME
  gz.insert(gz.end(), {'a', ' ', 'n', 'o', 't', 'e', 0});  // FCOMMENT
  const std::uint32_t header_crc = crc32(gz);
  gz.push_back(static_cast<std::uint8_t>(header_crc));
  gz.push_back(static_cast<std::uint8_t>(header_crc >> 8));
  gz.insert(gz.end(), deflate.begin(), deflate.end());
  le32(crc32(text), gz);
  le32(3, gz);
  CHECK(gunzip(gz, unlimited) == text);

  bytes bad_hcrc = gz;
  bad_hcrc[10 + 6 + 5 + 7] ^= 1;
  CHECK(contains(error_of([&] { gunzip(bad_hcrc, unlimited); }), "header CRC mismatch"));

  bytes reserved = gz;
  reserved[3] |= 0x20;
  CHECK(contains(error_of([&] { gunzip(reserved, unlimited); }), "reserved gzip header flags"));

  // Name never terminated: the header runs to the end of the input.
  bytes open_name = {0x1f, 0x8b, 8, 0x08, 0, 0, 0, 0, 0, 3, 'a', 'b', 'c'};
  CHECK(contains(error_of([&] { gunzip(open_name, unlimited); }), "truncated gzip header"));
  bytes open_extra = {0x1f, 0x8b, 8, 0x04, 0, 0, 0, 0, 0, 3, 0xff, 0xff, 1, 2};
  CHECK(contains(error_of([&] { gunzip(open_extra, unlimited); }), "truncated gzip header"));
}

TEST_CASE("gzip: concatenated members decode to the concatenation; trailing garbage is refused") {
  temp_dir dir;
  const bytes a = to_bytes("first member, ");
  const bytes b = repetitive_bytes(50'000);
  bytes gz = system_gzip(dir, a, "-9");
  const bytes gz_b = system_gzip(dir, b, "-1");
  gz.insert(gz.end(), gz_b.begin(), gz_b.end());
  bytes ab = a;
  ab.insert(ab.end(), b.begin(), b.end());
  CHECK(gunzip(gz, unlimited) == ab);
  CHECK(contains(error_of([&] { gunzip(gz, ab.size() - 1); }), "larger than the limit"));

  for (const bytes& tail : {bytes{0}, bytes{0, 0, 0, 0}, bytes{0x1f}, to_bytes("garbage")}) {
    bytes with_tail = gz;
    with_tail.insert(with_tail.end(), tail.begin(), tail.end());
    const std::string message = error_of([&] { gunzip(with_tail, unlimited); });
    INFO(message);
    CHECK(contains(message, "trailing garbage"));
  }
  // A second member that starts like one but stops.
  bytes half = gz;
  half.insert(half.end(), gz_b.begin(), gz_b.begin() + 12);
  CHECK(contains(error_of([&] { gunzip(half, unlimited); }), "truncated"));

  // Each member is its own stream: a match may not reach into the previous one.
  bit_writer w;
  w.put(1, 1);
  w.put(1, 2);
  fixed_symbol(w, 257);  // length 3
  w.code(2, 5);          // distance 3
  fixed_symbol(w, 256);
  bytes two = wrap({0x01, 3, 0, 0xfc, 0xff, 'a', 'b', 'c'}, to_bytes("abc"));
  const bytes second = wrap(w.finish(), to_bytes("abc"));
  two.insert(two.end(), second.begin(), second.end());
  CHECK(contains(error_of([&] { gunzip(two, unlimited); }), "too far back"));
}

TEST_CASE("gzip: malformed deflate data is an error of kind damaged_file with the context and zlib's cause") {
  auto check = [](const bytes& deflate, std::string_view cause) {
    std::string message;
    parallax::error_kind kind = parallax::error_kind::io;
    try {
      gunzip(wrap(deflate, {}), unlimited, "test()");
    } catch (const parallax::error& e) {
      message = e.what();
      kind = e.kind();
    }
    INFO(message);
    CHECK(kind == parallax::error_kind::damaged_file);
    CHECK(contains(message, "test(): invalid deflate stream: "));
    CHECK(contains(message, cause));
    CHECK(contains(message, "(near byte offset "));
  };
  check({0x07}, "invalid block type");
  check({0x01, 5, 0, 0, 0, 1, 2, 3, 4, 5}, "invalid stored block lengths");
  {  // distance past the start of the output
    bit_writer w;
    w.put(1, 1), w.put(1, 2);
    fixed_symbol(w, 'a');
    fixed_symbol(w, 257);
    w.code(1, 5);  // distance 2, only 1 byte decoded
    fixed_symbol(w, 256);
    check(w.finish(), "invalid distance too far back");
  }
  {  // HLIT 288 > 286
    bit_writer w;
    w.put(1, 1), w.put(2, 2);
    w.put(31, 5), w.put(0, 5), w.put(0, 4);
    check(w.finish(), "too many length or distance symbols");
  }
  {  // the input ends after a block that is not the last (no trailer either)
    bit_writer w;
    w.put(0, 1), w.put(1, 2);
    fixed_symbol(w, 'a');
    fixed_symbol(w, 256);
    bytes gz = wrap(w.finish(), {});
    gz.resize(gz.size() - 8);
    const std::string message = error_of([&] { gunzip(gz, unlimited); });
    INFO(message);
    CHECK(contains(message, "gunzip(): truncated gzip stream: the member that starts at byte offset 0 ends early"));
  }
}

TEST_CASE("gzip: bad magic, method, trailer CRC, size and limit") {
  temp_dir dir;
  const bytes data = repetitive_bytes(20'000);
  const bytes gz = system_gzip(dir, data, "-6");
  CHECK(gunzip(gz, unlimited) == data);

  CHECK(contains(error_of([] { gunzip(bytes{}, unlimited); }), "not a gzip stream (too short)"));
  CHECK(contains(error_of([] { gunzip(bytes{0, 0, 8, 3, 0, 0, 0, 1}, unlimited); }), "bad magic"));
  CHECK(contains(error_of([] { gunzip(bytes{0x1f, 0x8b, 8}, unlimited); }), "truncated gzip header"));
  bytes method = gz;
  method[2] = 7;
  CHECK(contains(error_of([&] { gunzip(method, unlimited); }), "unsupported compression method 7"));

  bytes crc = gz;
  crc[crc.size() - 8] ^= 0x40;
  CHECK(contains(error_of([&] { gunzip(crc, unlimited); }), "CRC-32 mismatch"));
  bytes size = gz;
  size[size.size() - 1] ^= 0x01;  // also makes the size hint absurd
  CHECK(contains(error_of([&] { gunzip(size, unlimited); }), "size mismatch"));

  CHECK(contains(error_of([&] { gunzip(gz, data.size() - 1); }), "output is larger than the limit of 19999 bytes"));
  CHECK(contains(error_of([&] { gunzip(gz, 0); }), "larger than the limit"));
  CHECK(gunzip(gz, data.size()) == data);
  CHECK(contains(error_of([&] { gunzip(gz, 100, "read_idx(): 'f.gz': gzip"); }), "read_idx(): 'f.gz': gzip: "));
}

TEST_CASE("gzip: every truncation of real streams is an error, never a crash") {
  temp_dir dir;
  for (const std::string level : {"-1", "-9"}) {
    const bytes sources[] = {to_bytes("a few words"), repetitive_bytes(30'000), random_bytes(70'000, 5)};
    for (const bytes& data : sources) {
      const bytes gz = system_gzip(dir, data, level, true);
      CAPTURE(level);
      CAPTURE(gz.size());
      std::size_t errors = 0;
      std::size_t checked = 0;
      const std::size_t step = gz.size() > 4000 ? 7 : 1;  // every length near the ends, a sample in between
      for (std::size_t n = 0; n < gz.size(); ++n) {
        if (n > 200 && n + 200 < gz.size() && n % step != 0) continue;
        ++checked;
        const std::string message = error_of([&] { gunzip(std::span(gz).first(n), unlimited); });
        if (contains(message, "gunzip(): ")) ++errors;
        else FAIL_CHECK("cut at " << n << ": " << message);
      }
      CHECK(errors == checked);
    }
  }
}

TEST_CASE("gzip: flipped bits and garbled bytes give an error or the exact original") {
  temp_dir dir;
  const bytes sources[] = {repetitive_bytes(40'000), to_bytes("The quick brown fox jumps over the lazy dog, twice: "
                                                              "the quick brown fox jumps over the lazy dog.")};
  for (const bytes& data : sources) {
    for (const std::string level : {"-1", "-9"}) {
      const bytes gz = system_gzip(dir, data, level);
      std::size_t errors = 0;
      std::size_t flips = 0;
      for (std::size_t i = 0; i < gz.size(); ++i) {
        for (int bit = 0; bit < 8; bit += (gz.size() > 1000 ? 3 : 1)) {
          bytes bad = gz;
          bad[i] ^= static_cast<std::uint8_t>(1u << bit);
          ++flips;
          std::string message;
          bytes out;
          try {
            out = gunzip(bad, unlimited);
          } catch (const parallax::error& e) {
            message = e.what();
          }
          if (!message.empty()) {
            ++errors;
            continue;
          }
          // Only bits nobody reads may change without an error: header
          // bytes such as MTIME, XFL and OS, and the padding after the last block.
          CAPTURE(i);
          CAPTURE(bit);
          CHECK(out == data);
        }
      }
      // All but the unread bits (MTIME, XFL, OS, FTEXT, padding) are caught.
      CAPTURE(errors);
      CAPTURE(flips);
      CHECK(errors * 100 >= flips * 85);
    }
  }

  // Random bytes behind a valid header, and garbled spans inside a stream.
  std::mt19937 gen(11);
  const bytes gz = system_gzip(dir, sources[0], "-9");
  std::size_t garbled_errors = 0;
  for (int trial = 0; trial < 300; ++trial) {
    bytes bad;
    if (trial < 150) {
      bad = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3};
      const bytes noise = random_bytes(1 + gen() % 3000, static_cast<std::uint32_t>(trial));
      bad.insert(bad.end(), noise.begin(), noise.end());
    } else {
      bad = gz;
      const std::size_t at = 10 + gen() % (gz.size() - 18);
      const std::size_t len = 1 + gen() % 16;
      for (std::size_t k = at; k < std::min(at + len, gz.size()); ++k) bad[k] = static_cast<std::uint8_t>(gen());
    }
    const std::string message = error_of([&] { gunzip(bad, std::size_t{1} << 24); });
    if (contains(message, "gunzip(): ")) ++garbled_errors;
    else CHECK(gunzip(bad, std::size_t{1} << 24) == sources[0]);  // the garbling changed nothing
  }
  CHECK(garbled_errors >= 290);
}
