#pragma once
// SPDX-License-Identifier: BSL-1.0
/// CSV files of numbers as datasets: every column an input except one
/// target column (chosen by name when there is a header row, or by index),
/// whole or only data rows [begin, end) (the lines around them are counted,
/// not parsed, so a rank reads only its shard's numbers).
///
/// Files are untrusted input: a file that cannot be read is error_kind::io;
/// a malformed one (empty, no data rows, a row with too few or too many
/// cells, a line longer than csv_options::max_line_bytes) damaged_file; an
/// intact one holding what the caller cannot take (a cell that is not a
/// number, a value the element type cannot hold: 3.5 or 300 as a uint8
/// label, 1e300 as a float) incompatible; an option the file cannot meet (a
/// target column it does not have) invalid_argument. Messages name the file,
/// the line (from 1) and the column (from 1, with its header name).
///
/// Cells are split at the delimiter, with spaces around them and one pair
/// of double quotes taken off; quoted delimiters and line breaks inside
/// quotes are not read. Numbers are std::from_chars text (a '+' in front is
/// allowed), so "1e-3", "inf" and "nan" are numbers and "1,5" is two cells.
/// Blank lines are skipped and not counted as rows; a UTF-8 byte order mark
/// at the start is dropped. Readers are local: in an
/// MPI program read through parallax::agree.

#include <parallax/core/block.hpp>
#include <parallax/core/error.hpp>
#include <parallax/data/batch.hpp>
#include <parallax/detail/element_type.hpp>
#include <parallax/detail/input_file.hpp>
#include <parallax/detail/number_text.hpp>
#include <parallax/detail/xtensor.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace parallax::data {

struct csv_options {
  bool header = true;  ///< the first line names the columns
  /// The target column by its name in the header ...
  std::string target{};
  /// ... or by its index, from 0 (exactly one of the two is given).
  std::optional<std::size_t> target_index{};
  char delimiter = ',';
  std::size_t max_line_bytes = std::size_t{1} << 20;  ///< a longer line is an error, not an allocation
  std::size_t max_bytes = std::size_t{1} << 31;       ///< most bytes of inputs and targets one read returns
};

/// The data rows of the file: its non-blank lines after the header. Reads
/// the lines without parsing a number, to find a rank's rows:
/// @code
///   const auto n = parallax::data::csv_row_count("iris.csv", options);
///   auto mine = parallax::data::read_csv_shard<X, Y>("iris.csv", parallax::block_of(n, comm.size(), comm.rank()), options);
/// @endcode
std::size_t csv_row_count(const std::string& path, const csv_options& options = {});

/// Every data row: inputs [rows, columns - 1] (the columns other than the
/// target, in file order) and targets [rows]. X is a 2-dimensional and Y a
/// 1-dimensional xtensor container (xarray, xtensor<T, 2>, xtensor<T, 1>);
/// integer targets are class labels and must be whole numbers.
template <class X, class Y>
TensorDataset<X, Y> read_csv(const std::string& path, const csv_options& options);

/// As read_csv, holding only data rows [rows.begin, rows.end) of the file
/// (docs/datasets.md says which shards fit which sampler).
template <class X, class Y>
ShardDataset<X, Y> read_csv_shard(const std::string& path, block rows, const csv_options& options);

// ---------------------------------------------------------------------------
// Implementation
// ---------------------------------------------------------------------------

}  // namespace parallax::data

namespace parallax::detail {

/// The lines of a file, each at most max_line_bytes long (a carriage return
/// before the newline and a UTF-8 byte order mark before the first line are
/// dropped), with their numbers.
class csv_lines {
 public:
  csv_lines(const std::string& path, const std::string& where, std::size_t max_line_bytes)
      : where_(where), max_(max_line_bytes) {
    const std::uintmax_t size = input_file_size(path, where);
    in_ = open_input(path, where);
    // A line never needs more room than the file has.
    buffer_.resize(static_cast<std::size_t>(std::min<std::uintmax_t>(max_line_bytes, size)) + 1);
  }

  /// The next line, or false at the end of the file.
  bool next(std::string_view& line) {
    if (!in_.good()) return false;
    in_.getline(buffer_.data(), static_cast<std::streamsize>(buffer_.size()));
    const auto got = static_cast<std::size_t>(in_.gcount());
    PARALLAX_CHECK_KIND(!in_.bad(), error_kind::io, where_ + ": read error after line " + std::to_string(number_));
    if (in_.eof() && got == 0) return false;
    ++number_;
    PARALLAX_CHECK_KIND(!in_.fail(), error_kind::damaged_file,
                        where_ + ": line " + std::to_string(number_) + " is longer than max_line_bytes (" +
                            std::to_string(max_) + ")");
    std::size_t length = in_.eof() ? got : got - 1;
    if (length > 0 && buffer_[length - 1] == '\r') --length;
    line = std::string_view(buffer_.data(), length);
    // The byte order mark some editors and spreadsheets write is not part
    // of the first column's name.
    if (number_ == 1 && line.starts_with("\xEF\xBB\xBF")) line.remove_prefix(3);
    return true;
  }
  /// The number of the line next() returned last, from 1.
  std::size_t number() const { return number_; }

 private:
  const std::string& where_;
  std::size_t max_;
  std::ifstream in_;
  std::vector<char> buffer_;
  std::size_t number_ = 0;
};

inline bool csv_blank(std::string_view line) {
  return line.find_first_not_of(" \t") == std::string_view::npos;
}

/// Splits `line` at `delimiter` into `cells`, trimmed of spaces (and tabs,
/// unless they delimit) and of one pair of double quotes.
inline void csv_split(std::string_view line, char delimiter, std::vector<std::string_view>& cells) {
  const std::string_view space = delimiter == '\t' ? " " : " \t";
  cells.clear();
  for (std::size_t start = 0;;) {
    const std::size_t end = std::min(line.find(delimiter, start), line.size());
    std::string_view cell = line.substr(start, end - start);
    const std::size_t first = cell.find_first_not_of(space);
    cell = first == std::string_view::npos ? std::string_view{} : cell.substr(first, cell.find_last_not_of(space) - first + 1);
    if (cell.size() >= 2 && cell.front() == '"' && cell.back() == '"') cell = cell.substr(1, cell.size() - 2);
    cells.push_back(cell);
    if (end == line.size()) return;
    start = end + 1;
  }
}

enum class csv_cell_status { ok, not_a_number, does_not_fit };

/// Reads one cell as a T: floating types directly (no double rounding);
/// integer types as integers, or as whole floating values ("3.0").
template <class T>
csv_cell_status csv_number(std::string_view text, T& out) {
  if (text.size() > 1 && text[0] == '+' && text[1] != '-') text.remove_prefix(1);
  if (parse_number(text, out)) return csv_cell_status::ok;
  long double wide = 0;
  if (!parse_number(text, wide)) return csv_cell_status::not_a_number;
  if constexpr (std::is_integral_v<T>) {
    if (fits_exactly<T>(wide)) {
      out = static_cast<T>(wide);
      return csv_cell_status::ok;
    }
  }
  return csv_cell_status::does_not_fit;
}

/// What one pass over a file found: the data rows in range, parsed, and the
/// count of all of them.
template <class XT, class YT>
struct csv_table {
  std::vector<XT> inputs;
  std::vector<YT> targets;
  std::size_t input_columns = 0;
  std::size_t total_rows = 0;
};

inline std::string csv_column_name(const std::vector<std::string>& names, std::size_t column) {
  return "column " + std::to_string(column + 1) + (column < names.size() ? " ('" + names[column] + "')" : "");
}

/// One pass over the file. With `parse`, the data rows in `rows` (nothing:
/// all) are parsed and checked; the others are only counted.
template <class XT, class YT>
csv_table<XT, YT> csv_read(const std::string& path, const std::string& where, const data::csv_options& o, bool parse,
                           std::optional<block> rows) {
  PARALLAX_CHECK(!parse || o.target.empty() != !o.target_index.has_value(),
                 where + ": give the target column either by name (csv_options::target) or by index "
                         "(csv_options::target_index)");
  PARALLAX_CHECK(!parse || o.target.empty() || o.header,
                 where + ": the target column '" + o.target + "' is named, but csv_options::header is false");
  csv_lines lines(path, where, o.max_line_bytes);
  csv_table<XT, YT> table;
  std::vector<std::string> names;
  std::vector<std::string_view> cells;
  std::size_t columns = 0, target = 0, first_line = 0;
  std::string_view line;
  bool any_line = false;
  auto set_columns = [&](std::size_t count) {
    columns = count;
    first_line = lines.number();
    if (!parse) return;
    if (o.target_index) {
      PARALLAX_CHECK(*o.target_index < columns, where + ": target column index " + std::to_string(*o.target_index) +
                                                    ", but line " + std::to_string(first_line) + " has " +
                                                    std::to_string(columns) + " columns (indices from 0)");
      target = *o.target_index;
    }
    PARALLAX_CHECK_KIND(columns >= 2, error_kind::incompatible,
                        where + ": line " + std::to_string(first_line) +
                            " has one column: no inputs besides the target");
    table.input_columns = columns - 1;
  };
  while (lines.next(line)) {
    if (csv_blank(line)) continue;
    any_line = true;
    if (o.header && columns == 0) {
      csv_split(line, o.delimiter, cells);
      names.assign(cells.begin(), cells.end());
      set_columns(names.size());
      if (parse && !o.target.empty()) {
        const auto found = std::find(names.begin(), names.end(), o.target);
        std::string all;
        for (const auto& n : names) all += (all.empty() ? "'" : ", '") + n + "'";
        PARALLAX_CHECK(found != names.end(), where + ": no column named '" + o.target + "' in the header (line " +
                                                 std::to_string(first_line) + ": " + all + ")");
        PARALLAX_CHECK(std::find(found + 1, names.end(), o.target) == names.end(),
                       where + ": two columns are named '" + o.target + "' in the header (line " +
                           std::to_string(first_line) + ")");
        target = static_cast<std::size_t>(found - names.begin());
      }
      continue;
    }
    const std::size_t row = table.total_rows++;
    if (!parse || (rows && (row < rows->begin || row >= rows->end))) continue;
    csv_split(line, o.delimiter, cells);
    if (columns == 0) set_columns(cells.size());
    // Messages are built only on failure: this loop runs once per row.
    auto at_line = [&] { return where + ": line " + std::to_string(lines.number()); };
    if (cells.size() != columns) {
      const std::string first = (o.header ? "the header (line " : "the first row read (line ") +
                                std::to_string(first_line) + ")";
      throw_error(error_kind::damaged_file, at_line() + (cells.size() < columns ? ": short row: " : ": long row: ") +
                                                std::to_string(cells.size()) + " cells, " + first + " has " +
                                                std::to_string(columns));
    }
    const std::size_t bytes = (table.inputs.size() + columns - 1) * sizeof(XT) + (table.targets.size() + 1) * sizeof(YT);
    PARALLAX_CHECK_KIND(bytes <= o.max_bytes, error_kind::damaged_file,
                        at_line() + ": the rows read so far are more than csv_options::max_bytes (" +
                            std::to_string(o.max_bytes) + " bytes)");
    for (std::size_t c = 0; c < columns; ++c) {
      auto check = [&](csv_cell_status status, const std::string& type) {
        const std::string cell = at_line() + ", " + csv_column_name(names, c) + ": ";
        if (cells[c].empty()) throw_error(error_kind::incompatible, cell + "empty cell, expected a number");
        if (status == csv_cell_status::not_a_number) {
          throw_error(error_kind::incompatible, cell + "'" + std::string(cells[c]) + "' is not a number");
        }
        throw_error(error_kind::incompatible, cell + std::string(cells[c]) + " does not fit in " + type +
                                                  (c == target ? " (the target)" : ""));
      };
      if (c == target) {
        YT v{};
        const auto status = csv_number(cells[c], v);
        if (status != csv_cell_status::ok) check(status, type_name<YT>());
        table.targets.push_back(v);
      } else {
        XT v{};
        const auto status = csv_number(cells[c], v);
        if (status != csv_cell_status::ok) check(status, type_name<XT>());
        table.inputs.push_back(v);
      }
    }
  }
  PARALLAX_CHECK_KIND(any_line, error_kind::damaged_file, where + ": the file is empty");
  PARALLAX_CHECK_KIND(table.total_rows > 0, error_kind::damaged_file, where + ": no data rows after the header");
  if (rows) {
    PARALLAX_CHECK(rows->begin <= rows->end && rows->end <= table.total_rows,
                   where + ": rows [" + std::to_string(rows->begin) + ", " + std::to_string(rows->end) +
                       ") of a file of " + std::to_string(table.total_rows) + " data rows");
  }
  return table;
}

/// The table as a dataset's inputs [rows, columns - 1] and targets [rows].
template <class X, class Y, class XT, class YT>
data::TensorDataset<X, Y> csv_dataset(csv_table<XT, YT>&& table) {
  static_assert(xt::get_rank<X>::value == SIZE_MAX || xt::get_rank<X>::value == 2,
                "parallax: CSV inputs are 2-dimensional (rows, columns): X is an xarray or an xtensor<T, 2>");
  static_assert(xt::get_rank<Y>::value == SIZE_MAX || xt::get_rank<Y>::value == 1,
                "parallax: CSV targets are 1-dimensional (rows): Y is an xarray or an xtensor<T, 1>");
  const std::size_t n = table.targets.size();
  X x;
  Y y;
  x.resize(std::vector<std::size_t>{n, table.input_columns});
  y.resize(std::vector<std::size_t>{n});
  std::copy(table.inputs.begin(), table.inputs.end(), x.data());
  std::copy(table.targets.begin(), table.targets.end(), y.data());
  return data::TensorDataset<X, Y>(std::move(x), std::move(y));
}

}  // namespace parallax::detail

namespace parallax::data {

inline std::size_t csv_row_count(const std::string& path, const csv_options& options) {
  using table = detail::csv_table<float, float>;
  const table t = detail::csv_read<float, float>(path, detail::file_where("csv_row_count()", path), options, false,
                                                 std::nullopt);
  return t.total_rows;
}

template <class X, class Y>
TensorDataset<X, Y> read_csv(const std::string& path, const csv_options& options) {
  using XT = typename X::value_type;
  using YT = typename Y::value_type;
  return detail::csv_dataset<X, Y>(
      detail::csv_read<XT, YT>(path, detail::file_where("read_csv()", path), options, true, std::nullopt));
}

template <class X, class Y>
ShardDataset<X, Y> read_csv_shard(const std::string& path, block rows, const csv_options& options) {
  using XT = typename X::value_type;
  using YT = typename Y::value_type;
  auto table = detail::csv_read<XT, YT>(path, detail::file_where("read_csv_shard()", path), options, true, rows);
  const std::size_t total = table.total_rows;
  return ShardDataset<X, Y>(detail::csv_dataset<X, Y>(std::move(table)), rows.begin, total);
}

}  // namespace parallax::data
