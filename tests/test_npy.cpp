// SPDX-License-Identifier: BSL-1.0
// Suite data: the .npy reader on files built byte by byte here (every dtype,
// row ranges against the whole array, every header, size and conversion
// error), save_npy against hand-built bytes, the npy datasets and shards,
// and, when python3-numpy is installed, a file numpy wrote.

#include <parallax/data/npy.hpp>

#include <parallax/core/concepts.hpp>

#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "error_of.hpp"
#include "temp_dir.hpp"

namespace {

using bytes = std::vector<std::uint8_t>;
using parallax::error_kind;
using parallax::data::npy_dtype;
using parallax::data::npy_limits;
using parallax::data::read_npy;
using parallax::data::read_npy_rows;
using parallax::test::temp_dir;
using parallax::test::write_file;

/// Little-endian bytes of each value.
template <class T>
bytes le(std::initializer_list<T> values) {
  using U = std::conditional_t<sizeof(T) == 1, std::uint8_t,
            std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>>;
  bytes out;
  for (const T v : values) {
    const auto u = std::bit_cast<U>(v);
    for (std::size_t i = 0; i < sizeof(T); ++i) out.push_back(static_cast<std::uint8_t>(u >> (8 * i)));
  }
  return out;
}

/// A .npy file: magic, version major.0, header length, `dict` padded with
/// spaces and a newline to a multiple of 64 bytes (as numpy writes it), payload.
bytes npy(const std::string& dict, const bytes& payload, std::uint8_t major = 1) {
  const std::size_t prefix = major == 1 ? 10 : 12;
  std::string header = dict;
  header.append((64 - (prefix + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  bytes out = {0x93, 'N', 'U', 'M', 'P', 'Y', major, 0};
  for (std::size_t i = 0; i < prefix - 8; ++i) out.push_back(static_cast<std::uint8_t>(header.size() >> (8 * i)));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

std::string dict(const std::string& descr, const std::string& shape) {
  return "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
}


}  // namespace

TEST_CASE("npy: every dtype reads the values written") {
  temp_dir dir("npy");
  write_file(dir / "f4.npy", npy(dict("<f4", "(2, 3)"), le<float>({0.5f, -1.25f, 3.0f, 1e-8f, -0.0f, 65504.0f})));
  const auto f4 = read_npy<float>(dir / "f4.npy");
  REQUIRE(f4.shape() == std::vector<std::size_t>{2, 3});
  CHECK(f4(0, 0) == 0.5f);
  CHECK(f4(0, 1) == -1.25f);
  CHECK(f4(0, 2) == 3.0f);
  CHECK(f4(1, 0) == 1e-8f);
  CHECK(f4(1, 2) == 65504.0f);

  write_file(dir / "f8.npy", npy(dict("<f8", "(3,)"), le<double>({0.1, -2.5e300, 7.0})));
  const auto f8 = read_npy<double>(dir / "f8.npy");
  REQUIRE(f8.shape() == std::vector<std::size_t>{3});
  CHECK(f8(0) == 0.1);
  CHECK(f8(1) == -2.5e300);
  CHECK(f8(2) == 7.0);

  write_file(dir / "i4.npy", npy(dict("<i4", "(2, 2)"), le<std::int32_t>({-7, 2147483647, 0, 9})));
  const auto i4 = read_npy<std::int64_t>(dir / "i4.npy");
  CHECK(i4(0, 0) == -7);
  CHECK(i4(0, 1) == 2147483647);
  CHECK(i4(1, 1) == 9);

  write_file(dir / "i8.npy", npy(dict("<i8", "(2,)"), le<std::int64_t>({-5000000000LL, 3})));
  const auto i8 = read_npy<double>(dir / "i8.npy");
  CHECK(i8(0) == -5e9);
  CHECK(i8(1) == 3.0);

  for (const std::string descr : {"|u1", "<u1"}) {
    write_file(dir / "u1.npy", npy(dict(descr, "(1, 2, 2)"), {0, 1, 200, 255}));
    const auto u1 = read_npy<float>(dir / "u1.npy");
    REQUIRE(u1.shape() == std::vector<std::size_t>{1, 2, 2});
    CHECK(u1(0, 1, 0) == 200.0f);
    CHECK(u1(0, 1, 1) == 255.0f);
  }

  // Version 2.0 (a 4-byte header length); a 0-dimensional array.
  write_file(dir / "v2.npy", npy(dict("<i4", "(2,)"), le<std::int32_t>({4, -4}), 2));
  CHECK(read_npy<int>(dir / "v2.npy")(1) == -4);
  write_file(dir / "scalar.npy", npy(dict("<f8", "()"), le<double>({2.5})));
  const auto scalar = read_npy<double>(dir / "scalar.npy");
  CHECK(scalar.dimension() == 0);
  CHECK(scalar() == 2.5);
}

TEST_CASE("npy: the header gives dtype, shape and where the rows start") {
  temp_dir dir("npy");
  write_file(dir / "a.npy", npy(dict("<f8", "(4, 2, 3)"), bytes(4 * 2 * 3 * 8)));
  const auto h = parallax::data::read_npy_header(dir / "a.npy");
  CHECK(h.dtype == npy_dtype::f8);
  CHECK(h.shape == std::vector<std::size_t>{4, 2, 3});
  CHECK(h.data_offset == npy(dict("<f8", "(4, 2, 3)"), {}).size());
  CHECK(h.data_offset % 64 == 0);
  CHECK(h.rows() == 4);
  CHECK(h.row_elements() == 6);
  CHECK(h.row_bytes() == 48);
  CHECK(h.data_bytes() == 192);
  // Only the header needs to be in memory to parse it.
  const bytes file = npy(dict("|u1", "(7,)"), {});
  CHECK(parallax::data::parse_npy_header(file, "mem").shape == std::vector<std::size_t>{7});
}

TEST_CASE("npy: a row range gives the rows of the whole array") {
  temp_dir dir("npy");
  std::vector<float> values(5 * 3);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = 0.25f * static_cast<float>(i) - 1.0f;
  bytes payload;
  for (const float v : values) {
    const bytes b = le<float>({v});
    payload.insert(payload.end(), b.begin(), b.end());
  }
  write_file(dir / "m.npy", npy(dict("<f4", "(5, 3)"), payload));
  write_file(dir / "v.npy", npy(dict("<f4", "(15,)"), payload));
  const auto whole = read_npy<double>(dir / "m.npy");
  const auto whole_v = read_npy<double>(dir / "v.npy");
  for (std::size_t b = 0; b <= 5; ++b) {
    for (std::size_t e = b; e <= 5; ++e) {
      const auto part = read_npy_rows<double>(dir / "m.npy", {b, e});
      REQUIRE(part.shape() == std::vector<std::size_t>{e - b, 3});
      CHECK(part == xt::view(whole, xt::range(b, e), xt::all()));
      for (std::size_t r = b; r < e; ++r) CHECK(part(r - b, 2) == static_cast<double>(values[r * 3 + 2]));
    }
  }
  for (std::size_t b = 0; b <= 15; b += 4) {
    const auto part = read_npy_rows<double>(dir / "v.npy", {b, 15});
    CHECK(part == xt::view(whole_v, xt::range(b, 15)));
  }
}

TEST_CASE("npy: a range longer than one read chunk") {
  // 300000 int32 rows of 2 are 2.4 MB: three chunks of 1 MiB and a part.
  temp_dir dir("npy");
  const std::size_t n = 300000;
  bytes payload;
  payload.reserve(n * 8);
  for (std::size_t i = 0; i < 2 * n; ++i) {
    const bytes b = le<std::int32_t>({static_cast<std::int32_t>(i * 7 % 1000003)});
    payload.insert(payload.end(), b.begin(), b.end());
  }
  write_file(dir / "big.npy", npy(dict("<i4", "(300000, 2)"), payload));
  const auto whole = read_npy<std::int64_t>(dir / "big.npy");
  const auto part = read_npy_rows<std::int64_t>(dir / "big.npy", {1, n - 3});
  CHECK(part == xt::view(whole, xt::range(1, n - 3), xt::all()));
  // Element k of the file is k * 7 mod 1000003; the part starts at element 2.
  std::size_t wrong = 0;
  for (std::size_t k = 0; k < part.size(); ++k)
    wrong += part.data()[k] != static_cast<std::int64_t>((k + 2) * 7 % 1000003);
  CHECK(wrong == 0);
  CHECK(part(n - 5, 1) == static_cast<std::int64_t>((2 * (n - 4) + 1) * 7 % 1000003));
}

TEST_CASE("npy: values the element type cannot hold are errors naming the element and its offset") {
  temp_dir dir("npy");
  // Element k starts at the header's size plus k times the item size.
  auto at = [](const std::string& d, std::size_t byte) {
    return "at byte offset " + std::to_string(npy(d, {}).size() + byte);
  };
  write_file(dir / "big.npy", npy(dict("<i8", "(3,)"), le<std::int64_t>({1, 300, 2})));
  check_error([&] { read_npy<std::uint8_t>(dir / "big.npy"); }, error_kind::incompatible,
              {"read_npy(): '" + (dir / "big.npy") + "'", at(dict("<i8", "(3,)"), 8), "element 1 (300)", "uint8"});
  write_file(dir / "half.npy", npy(dict("<f4", "(2,)"), le<float>({3.0f, 2.5f})));
  check_error([&] { read_npy<std::int32_t>(dir / "half.npy"); }, error_kind::incompatible,
              {at(dict("<f4", "(2,)"), 4), "element 1 (2.5)", "int32"});
  // The offset and element number count from the start of the file, not of the range.
  write_file(dir / "nan.npy", npy(dict("<f8", "(3, 1)"), le<double>({1.0, 2.0, std::nan("")})));
  check_error([&] { read_npy_rows<std::int64_t>(dir / "nan.npy", {1, 3}); }, error_kind::incompatible,
              {"read_npy_rows()", at(dict("<f8", "(3, 1)"), 16), "element 2 (nan)", "int64"});
  CHECK(read_npy_rows<std::int64_t>(dir / "nan.npy", {0, 2})(1, 0) == 2);
  write_file(dir / "huge.npy", npy(dict("<f8", "(1,)"), le<double>({1e300})));
  check_error([&] { read_npy<float>(dir / "huge.npy"); }, error_kind::incompatible, {"element 0 (1e+300)", "float32"});
  write_file(dir / "neg.npy", npy(dict("<i4", "(1,)"), le<std::int32_t>({-1})));
  check_error([&] { read_npy<std::uint32_t>(dir / "neg.npy"); }, error_kind::incompatible, {"element 0 (-1)", "uint32"});
}

TEST_CASE("npy: a file that cannot be read is an i/o error") {
  temp_dir dir("npy");
  check_error([&] { read_npy<float>(dir / "missing.npy"); }, error_kind::io,
              {"read_npy(): '" + (dir / "missing.npy") + "'", "no such file"});
  std::filesystem::create_directory(dir / "folder.npy");
  check_error([&] { read_npy<float>(dir / "folder.npy"); }, error_kind::io, {"not a regular file"});
  check_error([&] { parallax::data::save_npy(dir / "no/such/dir/a.npy", xt::xarray<float>{1.0f}); }, error_kind::io,
              {"save_npy()", "cannot open the file for writing"});
}

TEST_CASE("npy: every garbled header names the file, the field and the byte offset") {
  temp_dir dir("npy");
  const std::string path = dir / "bad.npy";
  auto fails = [&](const bytes& file, error_kind kind, std::initializer_list<std::string> parts) {
    write_file(path, file);
    check_error([&] { parallax::data::read_npy_header(path); }, kind, parts);
    check_error([&] { parallax::data::parse_npy_header(file, "in memory"); }, kind, parts);
  };
  const bytes good = npy(dict("<f4", "(2,)"), le<float>({1, 2}));
  // Prefix: magic, version, header length.
  fails(bytes(good.begin(), good.begin() + 9), error_kind::damaged_file, {"only 9 bytes", "not a .npy file?"});
  bytes magic = good;
  magic[1] = 'n';
  fails(magic, error_kind::damaged_file, {"at byte offset 0", "bad magic string"});
  bytes version = good;
  version[6] = 4;
  fails(version, error_kind::incompatible, {"at byte offset 6", "format version 4.0"});
  bytes v2_short = npy(dict("<f4", "(2,)"), {}, 2);
  v2_short.resize(11);
  fails(v2_short, error_kind::damaged_file, {"truncated header", "needs 12 bytes"});
  bytes long_header = good;
  long_header[8] = 0x20;
  long_header[9] = 0x4e;  // 20000
  fails(long_header, error_kind::damaged_file, {"at byte offset 8", "header length 20000", "max_header_bytes (10000)"});
  fails(bytes(good.begin(), good.begin() + 40), error_kind::damaged_file,
        {"truncated header", "needs " + std::to_string(good.size() - 8) + " bytes", "has 40"});

  // The dictionary: the offset is 10 (the text's start) plus the position in it.
  auto header_fails = [&](const std::string& text, error_kind kind, const std::string& marker,
                          std::initializer_list<std::string> parts) {
    INFO(text);
    const std::size_t at = text.find(marker);
    REQUIRE(at != std::string::npos);
    std::vector<std::string> all(parts);
    all.push_back("at byte offset " + std::to_string(10 + at));
    write_file(path, npy(text, le<float>({1, 2})));
    const thrown t = thrown_by([&] { parallax::data::read_npy_header(path); });
    INFO(t.message);
    REQUIRE(t.kind.has_value());
    CHECK(*t.kind == kind);
    CHECK(contains(t.message, "read_npy_header(): '" + path + "'"));
    for (const auto& part : all) CHECK(contains(t.message, part));
  };
  using enum parallax::error_kind;
  header_fails("['descr', '<f4']", damaged_file, "[", {"not a dictionary"});
  header_fails("{descr: '<f4'}", damaged_file, "descr", {"expected a key in quotes"});
  header_fails("{'descr' '<f4'}", damaged_file, "'<f4'", {"expected ':' after the key 'descr'"});
  header_fails("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1}", damaged_file, "'extra'",
               {"unknown key 'extra'"});
  header_fails("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", damaged_file,
               "'descr': '<f4', 'f", {"'descr' appears twice"});
  header_fails("{'descr': '<f4' 'fortran_order': False, 'shape': (2,)}", damaged_file, "'fortran",
               {"expected ',' or '}' after the value of 'descr'"});
  header_fails("{'descr': '<f4', 'fortran_order: False}", damaged_file, "'fortran_order:", {"unterminated string"});
  header_fails("{'fortran_order': False, 'shape': (2,), }", damaged_file, "}", {"no 'descr' key"});
  header_fails("{'descr': '<f4', 'shape': (2,), }", damaged_file, "}", {"no 'fortran_order' key"});
  header_fails("{'descr': '<f4', 'fortran_order': False, }", damaged_file, "}", {"no 'shape' key"});
  header_fails("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), } x", damaged_file, "x",
               {"unexpected text after the header dictionary"});
  header_fails("{'descr': '<f4', 'fortran_order': 0, 'shape': (2,)}", damaged_file, "0,",
               {"'fortran_order' is neither True nor False"});
  header_fails("{'descr': '<f4', 'fortran_order': False, 'shape': [2]}", damaged_file, "[2]",
               {"'shape' is not a tuple"});
  header_fails("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,)}", damaged_file, "-2",
               {"non-negative integer"});
  header_fails("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,)}", damaged_file,
               "9999", {"non-negative integer that fits in size_t"});
  header_fails("{'descr': '<f4', 'fortran_order': False, 'shape': (2 1)}", damaged_file, "1)",
               {"expected ',' or ')' in 'shape'"});
  header_fails("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296)}", damaged_file,
               "{", {"'shape' (4294967296, 4294967296) makes more bytes than size_t counts"});
  header_fails("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4294967296, 4294967296)}", damaged_file,
               "{", {"makes more bytes than size_t counts"});
  // Intact headers of arrays this reader does not take.
  header_fails("{'descr': '<f4', 'fortran_order': True, 'shape': (2,)}", incompatible, "True",
               {"'fortran_order' is True", "C order"});
  header_fails("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,)}", incompatible, "[(",
               {"not a dtype string"});
  header_fails("{'descr': '>f4', 'fortran_order': False, 'shape': (2,)}", incompatible, "'>f4'",
               {"dtype '>f4' is big-endian"});
  header_fails("{'descr': '<c8', 'fortran_order': False, 'shape': (2,)}", incompatible, "'<c8'",
               {"dtype '<c8' is not read"});

  // Dimensions beyond the limit.
  write_file(path, npy(dict("<f4", "(1, 1, 2)"), le<float>({1, 2})));
  check_error([&] { parallax::data::read_npy_header(path, {.max_dimensions = 2}); }, damaged_file,
              {"more than limits.max_dimensions (2)", "at byte offset " + std::to_string(10 + dict("<f4", "(1, 1, 2)").find("2)"))});
  // A long but legal header passes within the limit, fails past it.
  write_file(path, npy(dict("<f4", "(2,)") + std::string(200, ' '), le<float>({1, 2})));
  CHECK(parallax::data::read_npy_header(path).rows() == 2);
  check_error([&] { parallax::data::read_npy_header(path, {.max_header_bytes = 100}); }, damaged_file,
              {"max_header_bytes (100)"});
}

TEST_CASE("npy: the file must hold exactly the elements the shape declares") {
  temp_dir dir("npy");
  write_file(dir / "short.npy", npy(dict("<f4", "(3,)"), le<float>({1, 2})));
  check_error([&] { read_npy<float>(dir / "short.npy"); }, error_kind::damaged_file,
              {"at byte offset " + std::to_string(npy(dict("<f4", "(3,)"), {}).size()), "truncated", "shape (3,) of '<f4' (float32) needs 12 bytes of data, the file holds 8"});
  write_file(dir / "long.npy", npy(dict("<f4", "(1,)"), le<float>({1, 2})));
  check_error([&] { read_npy_rows<float>(dir / "long.npy", {0, 1}); }, error_kind::damaged_file,
              {"trailing garbage", "needs 4 bytes of data, the file holds 8"});
}

TEST_CASE("npy: limits, ranges and containers that do not fit the file") {
  temp_dir dir("npy");
  write_file(dir / "m.npy", npy(dict("<f4", "(4, 2)"), le<float>({1, 2, 3, 4, 5, 6, 7, 8})));
  // 8 doubles are 64 bytes; the rows [1, 3) 32.
  check_error([&] { read_npy<double>(dir / "m.npy", {.max_bytes = 63}); }, error_kind::damaged_file,
              {"8 elements of float64", "limits.max_bytes (63 bytes)"});
  CHECK(read_npy_rows<double>(dir / "m.npy", {1, 3}, {.max_bytes = 32})(1, 1) == 6.0);
  check_error([&] { read_npy_rows<float>(dir / "m.npy", {3, 5}); }, error_kind::invalid_argument,
              {"read_npy_rows()", "rows [3, 5) of an array of 4 rows"});
  check_error([&] { read_npy_rows<float>(dir / "m.npy", {3, 2}); }, error_kind::invalid_argument, {"rows [3, 2)"});
  write_file(dir / "s.npy", npy(dict("<f4", "()"), le<float>({1})));
  check_error([&] { read_npy_rows<float>(dir / "s.npy", {0, 1}); }, error_kind::incompatible,
              {"a 0-dimensional array has no rows"});
  write_file(dir / "y.npy", npy(dict("<i4", "(4,)"), le<std::int32_t>({0, 1, 2, 3})));
  using X1 = xt::xtensor<float, 1>;
  using Y = xt::xtensor<std::int32_t, 1>;
  check_error([&] { parallax::data::load_npy_dataset<X1, Y>(dir / "m.npy", dir / "y.npy"); },
              error_kind::incompatible, {"load_npy_dataset(): '" + (dir / "m.npy") + "'", "shape (4, 2) has 2 dimensions, the container takes 1"});
}

TEST_CASE("npy: datasets of an inputs file and a targets file, whole or a shard") {
  temp_dir dir("npy");
  using X = xt::xtensor<float, 2>;
  using Y = xt::xtensor<std::int32_t, 1>;
  write_file(dir / "x.npy", npy(dict("<f8", "(5, 2)"), le<double>({0, 1, 10, 11, 20, 21, 30, 31, 40, 41})));
  write_file(dir / "y.npy", npy(dict("<i8", "(5,)"), le<std::int64_t>({4, 3, 2, 1, 0})));
  const auto all = parallax::data::load_npy_dataset<X, Y>(dir / "x.npy", dir / "y.npy");
  static_assert(parallax::Dataset<decltype(all), parallax::data::Batch<X, Y>>);
  REQUIRE(all.size() == 5);
  const std::vector<std::size_t> pick = {3, 1};
  const auto b = all.batch(pick);
  CHECK(b.inputs == X{{30, 31}, {10, 11}});
  CHECK(b.targets == Y{1, 3});

  const auto shard = parallax::data::load_npy_shard<X, Y>(dir / "x.npy", dir / "y.npy", {2, 4});
  static_assert(parallax::Dataset<decltype(shard), parallax::data::Batch<X, Y>>);
  CHECK(shard.size() == 5);
  CHECK(shard.rows().begin == 2);
  CHECK(shard.rows().end == 4);
  CHECK(shard.local().size() == 2);
  const std::vector<std::size_t> mine = {3, 2};
  const auto s = shard.batch(mine);
  CHECK(s.inputs == all.batch(mine).inputs);
  CHECK(s.targets == all.batch(mine).targets);
  check_error([&] { shard.batch(pick); }, error_kind::invalid_argument, {"sample 1 is not in the rows [2, 4)"});

  write_file(dir / "y4.npy", npy(dict("<i4", "(4,)"), le<std::int32_t>({0, 1, 2, 3})));
  check_error([&] { parallax::data::load_npy_shard<X, Y>(dir / "x.npy", dir / "y4.npy", {0, 1}); },
              error_kind::incompatible, {"load_npy_shard()", "holds 5 rows of inputs but", "holds 4 rows of targets"});
  write_file(dir / "y0.npy", npy(dict("<i4", "()"), le<std::int32_t>({0})));
  check_error([&] { parallax::data::load_npy_dataset<X, Y>(dir / "x.npy", dir / "y0.npy"); },
              error_kind::incompatible, {"'" + (dir / "y0.npy") + "' holds a 0-dimensional array"});
  write_file(dir / "yf.npy", npy(dict("<f4", "(5,)"), le<float>({0, 1, 2.5f, 3, 4})));
  check_error([&] { parallax::data::load_npy_shard<X, Y>(dir / "x.npy", dir / "yf.npy", {1, 3}); },
              error_kind::incompatible, {"element 2 (2.5) does not fit in int32"});
}

TEST_CASE("npy: save_npy writes the bytes numpy writes, and reads back") {
  temp_dir dir("npy");
  const xt::xarray<float> a = {{0.5f, -1.0f, 2.0f}, {3.0f, 4.0f, 5.0f}};
  parallax::data::save_npy(dir / "a.npy", a);
  std::ifstream in(dir / "a.npy", std::ios::binary);
  const bytes written((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(written == npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
                       le<float>({0.5f, -1.0f, 2.0f, 3.0f, 4.0f, 5.0f})));
  const xt::xtensor<std::int64_t, 1> v = {-3, 0, 5000000000LL};
  parallax::data::save_npy(dir / "v.npy", v);
  std::ifstream in_v(dir / "v.npy", std::ios::binary);
  const bytes written_v((std::istreambuf_iterator<char>(in_v)), std::istreambuf_iterator<char>());
  CHECK(written_v == npy("{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }", le<std::int64_t>({-3, 0, 5000000000LL})));
  const xt::xarray<std::uint8_t> u = {{{1, 2}}, {{3, 255}}};
  parallax::data::save_npy(dir / "u.npy", u);
  CHECK(read_npy<std::uint8_t>(dir / "u.npy") == u);
  const xt::xarray<double> d = {1e-300, -0.0, 3.25};
  parallax::data::save_npy(dir / "d.npy", d);
  CHECK(read_npy<double>(dir / "d.npy") == d);
  const xt::xtensor<std::int32_t, 2> i = {{-1}, {7}};
  parallax::data::save_npy(dir / "i.npy", i);
  CHECK(read_npy<std::int32_t>(dir / "i.npy") == i);
}

TEST_CASE("npy: a file numpy wrote (when python3-numpy is installed)") {
  if (std::system("python3 -c 'import numpy' > /dev/null 2>&1") != 0) {
    MESSAGE("python3-numpy is not installed: the cross-check against numpy is skipped");
    return;
  }
  temp_dir dir("npy");
  const std::string script = "import numpy as np; "
                             "np.save('" + (dir / "x.npy") + "', np.arange(12, dtype='<f4').reshape(4, 3) / 4); "
                             "np.save('" + (dir / "y.npy") + "', np.array([3, 1, 4, 1], dtype='<i8')); "
                             "np.save('" + (dir / "f.npy") + "', np.asfortranarray(np.ones((2, 2))))";
  REQUIRE(std::system(("python3 -c \"" + script + "\"").c_str()) == 0);
  const auto x = read_npy<float>(dir / "x.npy");
  REQUIRE(x.shape() == std::vector<std::size_t>{4, 3});
  for (std::size_t i = 0; i < 12; ++i) CHECK(x.data()[i] == static_cast<float>(i) / 4.0f);
  CHECK(read_npy_rows<float>(dir / "x.npy", {2, 3})(0, 1) == 7.0f / 4.0f);
  CHECK(read_npy<std::int32_t>(dir / "y.npy") == xt::xarray<std::int32_t>{3, 1, 4, 1});
  check_error([&] { read_npy<double>(dir / "f.npy"); }, error_kind::incompatible, {"'fortran_order' is True"});
}
