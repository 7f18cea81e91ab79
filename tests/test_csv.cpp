// SPDX-License-Identifier: BSL-1.0
// Suite data: CSV files as datasets (header or not, the target by name or
// index, integer or floating targets), row ranges against the whole file,
// and every error the reader gives, each naming the file, line and column.

#include <parallax/data/csv.hpp>

#include <parallax/core/concepts.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <string>
#include <vector>

#include "error_of.hpp"
#include "temp_dir.hpp"

namespace {

using parallax::error_kind;
using parallax::data::csv_options;
using parallax::data::read_csv;
using parallax::data::read_csv_shard;
using parallax::test::temp_dir;
using parallax::test::write_file;
using X = xt::xtensor<float, 2>;
using Y = xt::xtensor<std::int32_t, 1>;

}  // namespace

TEST_CASE("csv: a header, the target by name, in the middle") {
  temp_dir dir("csv");
  write_file(dir / "a.csv", "x,label,y\n1.5,0,2\n-3,2,4e-1\n 5 , \"1\" ,\"6\"\n");
  const auto d = read_csv<X, Y>(dir / "a.csv", {.target = "label"});
  static_assert(parallax::Dataset<decltype(d), parallax::data::Batch<X, Y>>);
  REQUIRE(d.size() == 3);
  CHECK(d.inputs() == X{{1.5f, 2.0f}, {-3.0f, 0.4f}, {5.0f, 6.0f}});
  CHECK(d.targets() == Y{0, 2, 1});
  CHECK(parallax::data::csv_row_count(dir / "a.csv") == 3);
  // A spreadsheet's byte order mark is not part of the first name.
  write_file(dir / "bom.csv", "\xEF\xBB\xBFlabel,x\n1,2\n");
  CHECK(read_csv<X, Y>(dir / "bom.csv", {.target = "label"}).targets() == Y{1});
}

TEST_CASE("csv: no header, the target by index; CRLF, blank lines, signs, whole floating labels") {
  temp_dir dir("csv");
  write_file(dir / "b.csv", "3.0,+0.25,1e3\r\n\r\n1,-0.5,inf\r\n   \n0,7,-2");
  const auto d = read_csv<xt::xarray<double>, xt::xarray<std::uint8_t>>(
      dir / "b.csv", {.header = false, .target_index = 0});
  REQUIRE(d.size() == 3);
  CHECK(d.inputs() == xt::xarray<double>{{0.25, 1000.0}, {-0.5, std::numeric_limits<double>::infinity()}, {7.0, -2.0}});
  CHECK(d.targets() == xt::xarray<std::uint8_t>{3, 1, 0});
  // Floating targets, another delimiter.
  write_file(dir / "c.csv", "p;q\n1;0.5\n2;-1.5\n");
  const auto f = read_csv<X, xt::xtensor<double, 1>>(dir / "c.csv", {.target_index = 1, .delimiter = ';'});
  CHECK(f.inputs() == X{{1.0f}, {2.0f}});
  CHECK(f.targets() == xt::xtensor<double, 1>{0.5, -1.5});
  write_file(dir / "t.tsv", "p\tq\n 1\t 2 \n");
  CHECK(read_csv<X, Y>(dir / "t.tsv", {.target = "p", .delimiter = '\t'}).inputs() == X{{2.0f}});
}

TEST_CASE("csv: a row range gives the rows of the whole file") {
  temp_dir dir("csv");
  std::string text = "a,b,c\n";
  for (int r = 0; r < 7; ++r) {
    text += std::to_string(r) + ".5," + std::to_string(r % 3) + "," + std::to_string(-r) + "\n";
    if (r == 2) text += "\n";  // a blank line is not a row
  }
  write_file(dir / "r.csv", text);
  const csv_options o{.target = "b"};
  const auto whole = read_csv<X, Y>(dir / "r.csv", o);
  REQUIRE(whole.size() == 7);
  CHECK(whole.inputs()(6, 0) == 6.5f);
  CHECK(whole.inputs()(6, 1) == -6.0f);
  CHECK(whole.targets()(5) == 2);
  CHECK(parallax::data::csv_row_count(dir / "r.csv", o) == 7);
  for (std::size_t b = 0; b <= 7; ++b) {
    for (std::size_t e = b; e <= 7; ++e) {
      const auto shard = read_csv_shard<X, Y>(dir / "r.csv", {b, e}, o);
      CHECK(shard.size() == 7);
      CHECK(shard.rows().begin == b);
      CHECK(shard.rows().end == e);
      REQUIRE(shard.local().size() == e - b);
      CHECK(shard.local().inputs() == xt::view(whole.inputs(), xt::range(b, e), xt::all()));
      CHECK(shard.local().targets() == xt::view(whole.targets(), xt::range(b, e)));
      std::vector<std::size_t> mine;
      for (std::size_t i = e; i-- > b;) mine.push_back(i);
      CHECK(shard.batch(mine).inputs == whole.batch(mine).inputs);
    }
  }
  // Rows outside the range are counted, not parsed.
  write_file(dir / "g.csv", "a,b\nnot,numbers\n1,2\n3,4\n");
  const auto tail = read_csv_shard<X, Y>(dir / "g.csv", {1, 3}, {.target_index = 1});
  CHECK(tail.local().targets() == Y{2, 4});
  check_error([&] { read_csv_shard<X, Y>(dir / "g.csv", {2, 4}, {.target_index = 1}); },
              error_kind::invalid_argument, {"read_csv_shard()", "rows [2, 4) of a file of 3 data rows"});
}

TEST_CASE("csv: every malformed file names the file and the line") {
  temp_dir dir("csv");
  const std::string path = dir / "bad.csv";
  const csv_options o{.target = "c"};
  auto fails = [&](const std::string& text, const csv_options& options, error_kind kind,
                   std::initializer_list<std::string> parts) {
    INFO(text);
    write_file(path, text);
    check_error([&] { read_csv<X, Y>(path, options); }, kind, {"read_csv(): '" + path + "'"});
    check_error([&] { read_csv<X, Y>(path, options); }, kind, parts);
  };
  using enum parallax::error_kind;
  check_error([&] { read_csv<X, Y>(dir / "none.csv", o); }, io, {"no such file"});
  check_error([&] { parallax::data::csv_row_count(dir / "none.csv"); }, io, {"csv_row_count()", "no such file"});
  fails("", o, damaged_file, {"the file is empty"});
  fails("\n  \n\r\n", o, damaged_file, {"the file is empty"});
  fails("a,b,c\n", o, damaged_file, {"no data rows after the header"});
  fails("a,b,c\n1,2,3\n4,5\n", o, damaged_file, {"line 3: short row: 2 cells, the header (line 1) has 3"});
  fails("a,b,c\n1,2,3,4\n", o, damaged_file, {"line 2: long row: 4 cells, the header (line 1) has 3"});
  fails("\n1,2\n1,2,3\n", {.header = false, .target_index = 0}, damaged_file,
        {"line 3: long row: 3 cells, the first row read (line 2) has 2"});
  fails("a,b,c\n1,2,3\n1,x,3\n", o, incompatible, {"line 3, column 2 ('b'): 'x' is not a number"});
  fails("a,b,c\n1,,3\n", o, incompatible, {"line 2, column 2 ('b'): empty cell, expected a number"});
  fails("1,2,3\n4,5,six\n", {.header = false, .target_index = 1}, incompatible,
        {"line 2, column 3: 'six' is not a number"});
  fails("a,b,c\n1,2,2.5\n", o, incompatible, {"line 2, column 3 ('c'): 2.5 does not fit in int32 (the target)"});
  fails("a,b,c\n1,2,nan\n", o, incompatible, {"column 3 ('c'): nan does not fit in int32"});
  fails("a,b,c\n1e300,2,1\n", o, incompatible, {"line 2, column 1 ('a'): 1e300 does not fit in float32"});
  write_file(path, "a,b\n1,300\n");
  check_error([&] { read_csv<X, xt::xtensor<std::uint8_t, 1>>(path, {.target = "b"}); }, incompatible,
              {"300 does not fit in uint8 (the target)"});
  fails("c\n1\n", o, incompatible, {"line 1 has one column: no inputs besides the target"});
  fails("a,b,c\n1,2,3\n" + std::string(100, '1') + "\n", {.target = "c", .max_line_bytes = 64}, damaged_file,
        {"line 3 is longer than max_line_bytes (64)"});
  // Two rows of 2 floats and an int32 are 24 bytes.
  fails("a,b,c\n1,2,3\n4,5,6\n7,8,9\n", {.target = "c", .max_bytes = 24}, damaged_file,
        {"line 4: the rows read so far are more than csv_options::max_bytes (24 bytes)"});
  write_file(path, "a,b,c\n1,2,3\n4,5,6\n");
  CHECK(read_csv<X, Y>(path, {.target = "c", .max_bytes = 24}).size() == 2);
  CHECK(read_csv<X, Y>(path, {.target = "c", .max_line_bytes = 5}).size() == 2);
}

TEST_CASE("csv: a target column the file does not have") {
  temp_dir dir("csv");
  const std::string path = dir / "t.csv";
  write_file(path, "a,b,b\n1,2,3\n");
  using enum parallax::error_kind;
  check_error([&] { read_csv<X, Y>(path, {.target = "label"}); }, invalid_argument,
              {"read_csv(): '" + path + "'", "no column named 'label' in the header (line 1: 'a', 'b', 'b')"});
  check_error([&] { read_csv<X, Y>(path, {.target = "b"}); }, invalid_argument, {"two columns are named 'b'"});
  check_error([&] { read_csv<X, Y>(path, {.target_index = 3}); }, invalid_argument,
              {"target column index 3, but line 1 has 3 columns"});
  check_error([&] { read_csv<X, Y>(path, {}); }, invalid_argument, {"give the target column either by name"});
  check_error([&] { read_csv<X, Y>(path, {.target = "a", .target_index = 0}); }, invalid_argument,
              {"either by name"});
  check_error([&] { read_csv<X, Y>(path, {.header = false, .target = "a"}); }, invalid_argument,
              {"the target column 'a' is named, but csv_options::header is false"});
  CHECK(read_csv<X, Y>(path, {.target = "a"}).targets() == Y{1});
}
