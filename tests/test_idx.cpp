// SPDX-License-Identifier: BSL-1.0
// Suite data: the IDX reader (every element type, plain and gzip, every
// header and size error), the MNIST image/label loader on synthetic files,
// and, when installed, the real Fashion-MNIST splits.

#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <parallax/data/idx.hpp>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "error_of.hpp"
#include "idx_files.hpp"

namespace {

namespace fs = std::filesystem;
using bytes = std::vector<std::uint8_t>;
using parallax::data::idx_limits;
using parallax::data::read_idx;

/// A fresh directory under the system's temporary directory, removed with
/// everything in it when the object goes.
struct temp_dir {
  fs::path path;
  temp_dir() {
    std::random_device seed;
    path = fs::temp_directory_path() / ("parallax-test-idx-" + std::to_string(seed()) + "-" + std::to_string(seed()));
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::permissions(path / "locked", fs::perms::owner_all, ec);
    fs::remove_all(path, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

void write_file(const std::string& path, const bytes& data) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  REQUIRE(out.good());
}

bytes read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.is_open());
  return bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

/// Compresses `source` into `target` with the system gzip.
void gzip_file(const std::string& source, const std::string& target, const std::string& level = "-9") {
  const std::string command = "gzip -c " + level + " < '" + source + "' > '" + target + "'";
  REQUIRE(std::system(command.c_str()) == 0);
}

using parallax::test::make_idx;
using parallax::test::put_be32;

/// An unsigned-byte IDX file of the given shape filled by `value(i)`.
template <class F>
bytes make_u8_idx(const std::vector<std::uint32_t>& shape, F value) {
  std::size_t n = 1;
  for (const auto extent : shape) n *= extent;
  bytes payload(n);
  for (std::size_t i = 0; i < n; ++i) payload[i] = static_cast<std::uint8_t>(value(i));
  return make_idx(0x08, shape, payload);
}

/// Checks that f throws parallax::error whose message holds every part.
template <class F>
void check_error(F&& f, std::initializer_list<std::string_view> parts) {
  const std::string message = error_of(f);
  INFO(message);
  for (const auto part : parts) CHECK(contains(message, part));
}

bool fashion_mnist_present() {
  std::error_code ec;
  return fs::is_directory(parallax::data::default_fashion_mnist_dir, ec);
}

}  // namespace

TEST_CASE("idx: every element type decodes big-endian, plain and gzip alike") {
  temp_dir dir;
  struct sample {
    std::uint8_t type;
    bytes payload;
    std::vector<double> values;
  };
  const std::vector<sample> samples = {
      {0x08, {0, 1, 127, 128, 255, 42}, {0, 1, 127, 128, 255, 42}},
      {0x09, {0, 1, 127, 0x80, 0xff, 0xfe}, {0, 1, 127, -128, -1, -2}},
      {0x0B, {0x01, 0x02, 0xff, 0xfe, 0x7f, 0xff, 0x80, 0x00, 0, 0, 0, 7}, {258, -2, 32767, -32768, 0, 7}},
      {0x0C,
       {0, 0, 1, 0, 0xff, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x02, 0x03, 0x04},
       {256, -1, 2147483647.0, -2147483648.0, 0, 16909060}},
      {0x0D,
       {0x3f, 0x80, 0, 0, 0xc0, 0, 0, 0, 0x3e, 0x80, 0, 0, 0, 0, 0, 0, 0x42, 0xc8, 0, 0, 0xbf, 0, 0, 0},
       {1.0, -2.0, 0.25, 0.0, 100.0, -0.5}},
      {0x0E, [] {
         bytes b;
         for (const std::uint64_t bits : {0x3ff0000000000000ull, 0x4000000000000000ull, 0xc008000000000000ull,
                                          0x3fb999999999999aull, 0x0000000000000000ull, 0x40f86a0000000000ull}) {
           for (int shift = 56; shift >= 0; shift -= 8) b.push_back(static_cast<std::uint8_t>(bits >> shift));
         }
         return b;
       }(),
       {1.0, 2.0, -3.0, 0.1, 0.0, 100000.0}},
  };
  for (const auto& s : samples) {
    CAPTURE(int(s.type));
    const bytes file = make_idx(s.type, {2, 3}, s.payload);
    const std::string plain = dir / "plain";
    const std::string gz = dir / "compressed";
    write_file(plain, file);
    gzip_file(plain, gz);
    for (const auto& path : {plain, gz}) {
      const xt::xarray<double> a = read_idx<double>(path);
      REQUIRE(a.dimension() == 2);
      CHECK(a.shape()[0] == 2);
      CHECK(a.shape()[1] == 3);
      for (std::size_t i = 0; i < 6; ++i) CHECK(a.data()[i] == s.values[i]);
      // In memory too, and through the header parser.
      const auto in_memory = parallax::data::decode_idx<double>(read_file(path), "memory");
      CHECK(in_memory == a);
    }
    const auto header = parallax::data::parse_idx_header(file, "x");
    CHECK(static_cast<int>(header.type) == s.type);
    CHECK(header.shape == std::vector<std::size_t>{2, 3});
    CHECK(header.data_offset == 12);
    CHECK(header.count() == 6);
    CHECK(header.data_bytes() == s.payload.size());
  }
}

TEST_CASE("idx: conversion to T keeps exact values and refuses values T cannot hold") {
  temp_dir dir;
  const std::string path = dir / "values";
  write_file(path, make_idx(0x0B, {4}, {0x01, 0x2c, 0xff, 0xff, 0, 200, 0, 3}));  // 300, -1, 200, 3
  const auto i32 = read_idx<std::int32_t>(path);
  CHECK(i32 == xt::xarray<std::int32_t>{300, -1, 200, 3});
  check_error([&] { read_idx<std::uint8_t>(path); }, {"read_idx(): '" + path + "'", "element 0 (300) does not fit in uint8"});
  check_error([&] { read_idx<std::uint16_t>(path); }, {"element 1 (-1) does not fit in uint16"});
  CHECK(read_idx<float>(path) == xt::xarray<float>{300, -1, 200, 3});

  write_file(path, make_idx(0x0D, {3}, {0x40, 0x20, 0, 0, 0xc0, 0x20, 0, 0, 0x7f, 0xc0, 0, 0}));  // 2.5, -2.5, NaN
  check_error([&] { read_idx<std::int32_t>(path); }, {"element 2 (nan) does not fit in int32"});
  const auto f = read_idx<double>(path);
  CHECK(f(0) == 2.5);
  CHECK(f(1) == -2.5);
  CHECK(std::isnan(f(2)));

  write_file(path, make_idx(0x0D, {2}, {0x40, 0x20, 0, 0, 0xc0, 0x20, 0, 0}));
  CHECK(read_idx<std::int64_t>(path) == xt::xarray<std::int64_t>{2, -2});  // truncation toward zero
  check_error([&] { read_idx<std::uint32_t>(path); }, {"element 1 (-2.5) does not fit in uint32"});

  auto doubles = [](std::initializer_list<std::uint64_t> all) {
    bytes out;
    for (const std::uint64_t bits : all)
      for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<std::uint8_t>(bits >> shift));
    return out;
  };
  write_file(path, make_idx(0x0E, {1}, doubles({0x7e37e43c8800759cull})));  // 1e300
  check_error([&] { read_idx<float>(path); }, {"element 0 (1e+300) does not fit in float"});
  check_error([&] { read_idx<std::int64_t>(path); }, {"element 0 (1e+300) does not fit in int64"});
  CHECK(read_idx<double>(path)(0) == 1e300);
  write_file(path, make_idx(0x0E, {1}, doubles({0x41e0000000000000ull})));  // 2^31
  check_error([&] { read_idx<std::int32_t>(path); }, {"element 0 (2147483648) does not fit in int32"});
  CHECK(read_idx<std::uint32_t>(path)(0) == 2147483648u);
  CHECK(read_idx<std::int64_t>(path)(0) == 2147483648);
}

TEST_CASE("idx: plain or gzip is told by the magic bytes, not by the file name") {
  temp_dir dir;
  const bytes file = make_u8_idx({3, 4, 5}, [](std::size_t i) { return i * 7; });
  write_file(dir / "looks-compressed.gz", file);
  write_file(dir / "source", file);
  gzip_file(dir / "source", dir / "looks-plain-idx3-ubyte", "-1");
  const auto a = read_idx<std::uint8_t>(dir / "looks-compressed.gz");
  const auto b = read_idx<std::uint8_t>(dir / "looks-plain-idx3-ubyte");
  CHECK(a.shape() == std::vector<std::size_t>{3, 4, 5});
  CHECK(a == b);
  CHECK(a(2, 3, 4) == static_cast<std::uint8_t>(59 * 7));
}

TEST_CASE("idx: header errors name the file and the cause") {
  temp_dir dir;
  const std::string path = dir / "bad-idx";
  auto read_bytes = [&](const bytes& file, idx_limits limits = {}) {
    write_file(path, file);
    return error_of([&] { read_idx<float>(path, limits); });
  };
  auto check = [&](const bytes& file, std::string_view cause, idx_limits limits = {}) {
    const std::string message = read_bytes(file, limits);
    INFO(message);
    CHECK(contains(message, "read_idx(): '" + path + "': "));
    CHECK(contains(message, cause));
  };
  const bytes good = make_u8_idx({2, 3}, [](std::size_t i) { return i; });
  write_file(path, good);
  CHECK(read_idx<float>(path).size() == 6);

  check({}, "only 0 bytes, too short for an IDX header");
  check({0, 0, 8}, "only 3 bytes, too short");
  check({1, 0, 8, 1, 0, 0, 0, 1, 5}, "bad magic number: the first two bytes are not zero");
  check({0, 7, 8, 1, 0, 0, 0, 1, 5}, "the first two bytes are not zero");
  check({0, 0, 0x0A, 1, 0, 0, 0, 1, 5}, "unknown element type code 0x0A");
  check({0, 0, 0xFF, 1, 0, 0, 0, 1, 5}, "unknown element type code 0xFF");
  check({0, 0, 8, 0}, "bad magic number: 0 dimensions, expected 1 to 4");
  check(make_u8_idx({1, 1, 1, 1, 1}, [](std::size_t) { return 0; }), "5 dimensions, expected 1 to 4");
  check(good, "2 dimensions, expected 1 to 1", idx_limits{.max_dimensions = 1});
  check({0, 0, 8, 3, 0, 0, 0, 1, 0, 0}, "truncated header: 3 dimensions need 16 bytes, the file has 10");
  check(make_idx(8, {2, 0, 3}, {}), "dimension 1 has extent 0");
  // Extents whose product would overflow: refused before anything is allocated.
  check(make_idx(8, {0xffffffffu, 0xffffffffu, 0xffffffffu}, {}),
        "dimension 0 has extent 4294967295, which makes the data larger than limits.max_bytes (2147483648 bytes)");
  check(make_idx(0x0E, {0x10000000u}, {1, 2, 3}), "needs 2147483648 bytes of data, the file holds 3");  // at the limit
  check(make_idx(0x0E, {0x10000001u}, {1, 2, 3}), "dimension 0 has extent 268435457, which makes the data larger");
  check(make_idx(8, {60000, 60000, 60000}, {1, 2, 3}), "dimension 1 has extent 60000, which makes the data larger");
  check(good, "larger than limits.max_bytes (5 bytes)", idx_limits{.max_bytes = 5});
  CHECK(read_bytes(good, idx_limits{.max_bytes = 6}) == "no error");

  bytes short_data = good;
  short_data.pop_back();
  check(short_data, "truncated: shape (2, 3) of unsigned byte (0x08) needs 6 bytes of data, the file holds 5");
  bytes long_data = good;
  long_data.push_back(0);
  check(long_data, "trailing garbage: shape (2, 3) of unsigned byte (0x08) needs 6 bytes of data, the file holds 7");
  check(make_idx(0x0C, {3}, bytes(11)), "truncated: shape (3,) of int32 (0x0C) needs 12 bytes");

  // The same checks through parse_idx_header, on bytes in memory.
  check_error([&] { parallax::data::parse_idx_header(short_data, "in-memory"); },
              {"parse_idx_header(): 'in-memory': at byte offset 12: truncated"});
  check_error([&] { parallax::data::decode_idx<int>(long_data, "buffer"); },
              {"decode_idx(): 'buffer': at byte offset 12: trailing garbage"});
}

TEST_CASE("idx: missing, unreadable and oversized files") {
  temp_dir dir;
  const std::string missing = dir / "no-such-file";
  check_error([&] { read_idx<float>(missing); }, {"read_idx(): '" + missing + "': no such file"});
  check_error([&] { read_idx<float>(dir.path.string()); }, {"'" + dir.path.string() + "': not a regular file"});

  const std::string locked = dir / "locked";
  write_file(locked, make_u8_idx({2}, [](std::size_t i) { return i; }));
  fs::permissions(locked, fs::perms::none);
  if (std::ifstream(locked).is_open()) {
    MESSAGE("running with rights that read any file (root?): the unreadable-file check is not exercised");
  } else {
    check_error([&] { read_idx<float>(locked); }, {"'" + locked + "': cannot open the file for reading"});
  }
  fs::permissions(locked, fs::perms::owner_all);

  // A plain file bigger than the limits allow is refused before it is read.
  const std::string big = dir / "big";
  write_file(big, make_u8_idx({1000}, [](std::size_t i) { return i; }));
  check_error([&] { read_idx<float>(big, idx_limits{.max_bytes = 100}); },
              {"'" + big + "': the file is 1008 bytes, more than limits.max_bytes allows"});
}

TEST_CASE("idx: each failure has its kind: io, damaged_file with the byte offset, incompatible") {
  temp_dir dir;
  auto kind_and_message = [](auto&& f) -> std::pair<parallax::error_kind, std::string> {
    try {
      f();
    } catch (const parallax::error& e) {
      return {e.kind(), e.what()};
    }
    return {parallax::error_kind::user_exception, "no error"};
  };
  using parallax::error_kind;
  const std::string missing = dir / "no-such-file";
  CHECK(kind_and_message([&] { read_idx<float>(missing); }).first == error_kind::io);
  CHECK(kind_and_message([&] { read_idx<float>(dir.path.string()); }).first == error_kind::io);
  // 0, 0, type, dimensions at offsets 0-3; extents from offset 4; data after them.
  const std::vector<std::pair<bytes, std::string>> damaged = {
      {{1, 0, 8, 1}, "at byte offset 0: bad magic number"},
      {{0, 0, 0x0A, 1}, "at byte offset 2: bad magic number: unknown element type code 0x0A"},
      {{0, 0, 8, 9}, "at byte offset 3: bad magic number: 9 dimensions"},
      {make_idx(8, {2, 0, 3}, {}), "at byte offset 8: dimension 1 has extent 0"},
      {make_idx(8, {2, 3}, bytes(5)), "at byte offset 12: truncated: shape (2, 3)"},
      {make_idx(8, {2}, bytes(3)), "at byte offset 8: trailing garbage"},
  };
  for (const auto& [file, part] : damaged) {
    const auto [kind, message] = kind_and_message([&] { parallax::data::decode_idx<float>(file, "m"); });
    INFO(message);
    CHECK(kind == error_kind::damaged_file);
    CHECK(contains(message, "decode_idx(): 'm': " + part));
  }
  // Intact files holding what the caller cannot take.
  const auto too_big = kind_and_message([&] {
    parallax::data::decode_idx<std::uint8_t>(make_idx(0x0B, {2}, {0, 1, 0x01, 0x2c}), "m");
  });
  CHECK(too_big.first == error_kind::incompatible);
  CHECK(contains(too_big.second, "at byte offset 10: element 1 (300) does not fit in uint8"));
  const std::string images = dir / "images";
  const std::string labels = dir / "labels";
  write_file(images, make_u8_idx({2, 1, 1}, [](std::size_t i) { return i; }));
  write_file(labels, make_u8_idx({2}, [](std::size_t i) { return 9 + i; }));
  const auto label = kind_and_message([&] { parallax::data::read_image_set(images, labels); });
  CHECK(label.first == error_kind::incompatible);
  CHECK(contains(label.second, "at byte offset 9: label 1 is 10, outside the classes 0..9"));
  // Damage inside a gzip stream: damaged_file near the offset of the fault.
  const std::string plain = dir / "plain";
  const std::string gz = dir / "plain.gz";
  write_file(plain, make_u8_idx({64}, [](std::size_t i) { return i; }));
  gzip_file(plain, gz);
  bytes compressed = read_file(gz);
  compressed[compressed.size() - 8] ^= 1;  // the trailer's CRC-32
  const auto crc = kind_and_message([&] { parallax::data::decode_idx<float>(compressed, "z"); });
  CHECK(crc.first == error_kind::damaged_file);
  CHECK(contains(crc.second, "decode_idx(): 'z': gzip: CRC-32 mismatch"));
  CHECK(contains(crc.second, "(near byte offset " + std::to_string(compressed.size()) + ")"));
}

TEST_CASE("idx: gzip errors are reported with the path") {
  temp_dir dir;
  const std::string plain = dir / "images";
  const std::string gz = dir / "images.gz";
  const bytes file = make_u8_idx({50, 20, 20}, [](std::size_t i) { return (i * i) % 251; });
  write_file(plain, file);
  gzip_file(plain, gz, "-6");
  const bytes compressed = read_file(gz);
  REQUIRE(read_idx<std::uint8_t>(gz).size() == 20'000);

  const std::string bad = dir / "bad.gz";
  // Truncated at many offsets: always an error naming the file.
  std::size_t errors = 0;
  std::size_t cuts = 0;
  for (std::size_t n = 0; n < compressed.size(); n += (n < 40 || n + 40 > compressed.size()) ? 1 : 13) {
    write_file(bad, bytes(compressed.begin(), compressed.begin() + static_cast<std::ptrdiff_t>(n)));
    const std::string message = error_of([&] { read_idx<std::uint8_t>(bad); });
    ++cuts;
    if (contains(message, "read_idx(): '" + bad + "'")) ++errors;
    else FAIL_CHECK("cut at " << n << ": " << message);
  }
  CHECK(errors == cuts);

  // Corrupted CRC and size in the trailer.
  bytes crc = compressed;
  crc[crc.size() - 6] ^= 0x10;
  write_file(bad, crc);
  check_error([&] { read_idx<std::uint8_t>(bad); }, {"read_idx(): '" + bad + "': gzip: CRC-32 mismatch"});
  bytes size = compressed;
  size[size.size() - 4] ^= 0x01;
  write_file(bad, size);
  check_error([&] { read_idx<std::uint8_t>(bad); }, {"read_idx(): '" + bad + "': gzip: size mismatch"});

  // Bytes flipped inside the deflate stream: an error naming the file, or
  // (flips in bits nobody reads) the original content.
  std::mt19937 gen(3);
  const auto original = read_idx<std::uint8_t>(plain);
  std::size_t flips_detected = 0;
  for (int trial = 0; trial < 200; ++trial) {
    bytes flipped = compressed;
    const std::size_t at = 10 + gen() % (compressed.size() - 18);
    flipped[at] ^= static_cast<std::uint8_t>(1 + gen() % 255);
    write_file(bad, flipped);
    const std::string message = error_of([&] { read_idx<std::uint8_t>(bad); });
    if (contains(message, "read_idx(): '" + bad + "': gzip: ")) ++flips_detected;
    else CHECK(read_idx<std::uint8_t>(bad) == original);
  }
  CHECK(flips_detected >= 190);

  // Not a gzip stream after all: 1f 8b then junk.
  write_file(bad, {0x1f, 0x8b, 9, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3});
  check_error([&] { read_idx<std::uint8_t>(bad); }, {"'" + bad + "': gzip: unsupported compression method 9"});
}

TEST_CASE("idx: a gzip file is never inflated past the limits") {
  temp_dir dir;
  // 4 MB of zeros compresses to about 4 KB; a 1 MB limit (plus the largest
  // header, 4 + 4 * 4 bytes) stops it early.
  const std::string plain = dir / "zeros";
  const std::string gz = dir / "zeros.gz";
  write_file(plain, make_idx(8, {4u << 20}, bytes(4u << 20)));
  gzip_file(plain, gz);
  CHECK(fs::file_size(gz) < 10'000);
  check_error([&] { read_idx<std::uint8_t>(gz, idx_limits{.max_bytes = 1u << 20}); },
              {"read_idx(): '" + gz + "': gzip: output is larger than the limit of 1048596 bytes"});
  CHECK(read_idx<std::uint8_t>(gz, idx_limits{.max_bytes = 4u << 20}).size() == (4u << 20));

  // A small gzip file whose header claims a huge array: refused by the header check.
  write_file(plain, make_idx(8, {60000, 60000, 60000}, bytes(100)));
  gzip_file(plain, gz);
  check_error([&] { read_idx<std::uint8_t>(gz); }, {"'" + gz + "': at byte offset 8: dimension 1 has extent 60000", "limits.max_bytes"});
  // ... and one whose header claims more than the stream holds.
  write_file(plain, make_idx(8, {1000, 28, 28}, bytes(100)));
  gzip_file(plain, gz);
  check_error([&] { read_idx<std::uint8_t>(gz); }, {"'" + gz + "': at byte offset 16: truncated: shape (1000, 28, 28)"});
}

TEST_CASE("idx: read_image_set scales pixels to [0, 1] and checks its two files") {
  temp_dir dir;
  const std::string images = dir / "images";
  const std::string labels = dir / "labels";
  write_file(images, make_u8_idx({5, 3, 2}, [](std::size_t i) { return i == 0 ? 255 : i * 8; }));
  write_file(labels, make_u8_idx({5}, [](std::size_t i) { return 9 - 2 * i; }));
  gzip_file(labels, dir / "labels.gz");

  for (const auto& label_path : {labels, dir / "labels.gz"}) {
    const auto set = parallax::data::read_image_set(images, label_path);
    CHECK(set.rows == 3);
    CHECK(set.cols == 2);
    REQUIRE(set.images.shape() == std::array<std::size_t, 2>{5, 6});
    REQUIRE(set.labels.shape() == std::array<std::size_t, 1>{5});
    CHECK(set.images(0, 0) == 1.0f);  // exactly
    CHECK(set.images(0, 1) == 8.0f / 255.0f);
    CHECK(set.images(4, 5) == 232.0f / 255.0f);
    CHECK(set.labels == xt::xtensor<std::int32_t, 1>{9, 7, 5, 3, 1});
  }

  const std::string other = dir / "other";
  write_file(other, make_u8_idx({4}, [](std::size_t) { return 0; }));
  check_error([&] { parallax::data::read_image_set(images, other); },
              {"read_image_set(): '" + images + "' holds 5 images but '" + other + "' holds 4 labels"});
  write_file(other, make_u8_idx({5}, [](std::size_t i) { return i == 3 ? 10 : 0; }));
  check_error([&] { parallax::data::read_image_set(images, other); },
              {"read_image_set(): '" + other + "': at byte offset 11: label 3 is 10, outside the classes 0..9"});
  write_file(other, make_u8_idx({5, 1}, [](std::size_t) { return 0; }));
  check_error([&] { parallax::data::read_image_set(images, other); },
              {"'" + other + "': labels have 2 dimensions, expected 1"});
  check_error([&] { parallax::data::read_image_set(labels, labels); },
              {"'" + labels + "': images have 1 dimensions, expected 3"});
  write_file(other, make_idx(0x0C, {5}, bytes(20)));
  check_error([&] { parallax::data::read_image_set(images, other); },
              {"'" + other + "': labels hold int32 (0x0C) elements, expected unsigned byte"});
  write_file(other, make_idx(0x0D, {1, 1, 1}, bytes(4)));
  check_error([&] { parallax::data::read_image_set(other, labels); },
              {"'" + other + "': images hold float (0x0D) elements, expected unsigned byte"});
  check_error([&] { parallax::data::read_image_set(images, dir / "none"); },
              {"read_image_set(): '" + dir / "none" + "': no such file"});
}

TEST_CASE("idx: load_mnist_split finds the standard names, plain before .gz") {
  temp_dir dir;
  auto write_split = [&](const std::string& prefix, std::uint32_t n, std::uint8_t pixel, bool gz) {
    const std::string images = dir / (prefix + "-images-idx3-ubyte");
    const std::string labels = dir / (prefix + "-labels-idx1-ubyte");
    write_file(images, make_u8_idx({n, 2, 2}, [&](std::size_t) { return pixel; }));
    write_file(labels, make_u8_idx({n}, [](std::size_t i) { return i % 10; }));
    if (gz) {
      gzip_file(images, images + ".gz");
      gzip_file(labels, labels + ".gz");
      fs::remove(images);
      fs::remove(labels);
    }
  };
  write_split("train", 12, 51, true);
  write_split("t10k", 3, 102, false);

  const auto train = parallax::data::load_mnist_split(dir.path.string(), "train");
  CHECK(train.images.shape()[0] == 12);
  CHECK(train.images(11, 3) == 0.2f);
  CHECK(train.labels(11) == 1);
  const auto test = parallax::data::load_mnist_split(dir.path.string(), "test");
  CHECK(test.images.shape()[0] == 3);
  CHECK(test.images(0, 0) == 0.4f);

  // Both forms present: the plain file wins.
  write_split("train", 7, 153, false);
  const auto both = parallax::data::load_mnist_split(dir.path.string(), "train");
  CHECK(both.images.shape()[0] == 7);
  CHECK(both.images(0, 0) == 0.6f);

  check_error([&] { parallax::data::load_mnist_split(dir.path.string(), "validation"); },
              {"load_mnist_split(): split must be \"train\" or \"test\", not \"validation\""});
  fs::remove(dir / "t10k-labels-idx1-ubyte");
  check_error([&] { parallax::data::load_mnist_split(dir.path.string(), "test"); },
              {"load_mnist_split(): neither '" + dir / "t10k-labels-idx1-ubyte" + "' nor '" +
                   dir / "t10k-labels-idx1-ubyte.gz" + "' exists"});
  check_error([&] { parallax::data::load_mnist_split(dir / "nowhere", "train"); }, {"neither", "nowhere"});
}

TEST_CASE("idx: the real Fashion-MNIST splits load with the published shapes and balanced classes" *
          doctest::skip(!fashion_mnist_present())) {
  for (const std::string split : {"train", "test"}) {
    CAPTURE(split);
    const auto set = parallax::data::load_mnist_split(parallax::data::default_fashion_mnist_dir, split);
    const std::size_t n = split == "train" ? 60000 : 10000;
    CHECK(set.rows == 28);
    CHECK(set.cols == 28);
    REQUIRE(set.images.shape() == std::array<std::size_t, 2>{n, 784});
    REQUIRE(set.labels.shape() == std::array<std::size_t, 1>{n});
    std::array<std::size_t, 10> per_class{};
    for (const auto label : set.labels) {
      REQUIRE(label >= 0);
      REQUIRE(label <= 9);
      ++per_class[static_cast<std::size_t>(label)];
    }
    for (const auto count : per_class) CHECK(count == n / 10);
    const auto [lo, hi] = std::minmax_element(set.images.begin(), set.images.end());
    CHECK(*lo == 0.0f);
    CHECK(*hi == 1.0f);
    CHECK(set.labels(0) == 9);  // both splits start with an ankle boot
  }
}

TEST_CASE("idx: the Fashion-MNIST check above is reported when the dataset is missing") {
  if (!fashion_mnist_present()) {
    MESSAGE("Fashion-MNIST not found in " << parallax::data::default_fashion_mnist_dir
                                          << ": the real-data test case is skipped");
  }
  // Either way the loader must fail clearly, not silently, on a missing folder.
  check_error([] { parallax::data::load_mnist_split("/nonexistent/fashion-mnist", "train"); },
              {"load_mnist_split(): neither '/nonexistent/fashion-mnist/train-images-idx3-ubyte'"});
}
