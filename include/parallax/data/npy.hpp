#pragma once
// SPDX-License-Identifier: BSL-1.0
/// NumPy .npy files: the header, a whole array or only rows [begin, end) of
/// it (a seek to the first row, so a rank reads only its shard), datasets of
/// an inputs file and a targets file, and a small writer.
///
/// Files are untrusted input, checked as data/idx.hpp checks IDX files: a
/// file that cannot be read is error_kind::io; a malformed one damaged_file
/// (the message names the file, the field and the byte offset); an intact
/// one holding what the caller cannot take (a dtype other than '<f4', '<f8',
/// '<i4', '<i8', '|u1'; Fortran order; a shape the container cannot hold; a
/// value the element type cannot hold) incompatible. Nothing is allocated
/// for a size the header declares before it is checked against the file and
/// npy_limits. Readers are local: in an MPI program read through
/// parallax::agree so a file missing on one host fails every rank together.
///
/// Written by hand rather than with xtensor's xt::load_npy (xnpy.hpp, 0.24):
/// that reads the whole file (no row range), allocates whatever header
/// length the file declares, and reports "invalid header" without the field
/// or the offset.

#include <parallax/core/block.hpp>
#include <parallax/core/error.hpp>
#include <parallax/data/batch.hpp>
#include <parallax/detail/bytes.hpp>
#include <parallax/detail/element_type.hpp>
#include <parallax/detail/input_file.hpp>
#include <parallax/detail/number_text.hpp>
#include <parallax/detail/xtensor.hpp>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace parallax::data {

/// Limits that keep a hostile header from asking for absurd memory.
struct npy_limits {
  std::size_t max_header_bytes = 10000;  ///< numpy's own bound when it reads (max_header_size)
  std::size_t max_dimensions = 32;       ///< NumPy 1.x's NPY_MAXDIMS
  std::size_t max_bytes = std::size_t{1} << 31;  ///< most bytes of elements one read returns
};

/// The element types read: little-endian (or single-byte) numbers.
enum class npy_dtype : std::uint8_t { u1, i4, i8, f4, f8 };

/// Bytes per element.
constexpr std::size_t npy_item_size(npy_dtype dtype);

/// "'<f4' (float32)": a dtype for messages.
std::string npy_dtype_name(npy_dtype dtype);

/// A checked .npy header: dtype, C-order shape, where the elements start.
struct npy_header {
  npy_dtype dtype = npy_dtype::f4;
  std::vector<std::size_t> shape;  ///< empty for a 0-dimensional array
  std::size_t data_offset = 0;     ///< bytes of magic, version, length and header text
  /// shape[0] (0 for a 0-dimensional array, which has no rows).
  std::size_t rows() const;
  /// Elements of one row: the product of shape[1:].
  std::size_t row_elements() const;
  /// Bytes of one row.
  std::size_t row_bytes() const;
  /// Bytes of all elements.
  std::size_t data_bytes() const;
};

/// Parses the header at the front of `bytes` (at least the header; the
/// elements may follow): the magic string, version 1.0, 2.0 or 3.0, a header
/// length within limits.max_header_bytes, and a dictionary of exactly
/// 'descr', 'fortran_order' and 'shape'. `name` is quoted in every message.
npy_header parse_npy_header(std::span<const std::uint8_t> bytes, const std::string& name, npy_limits limits = {});

/// Reads and checks the header of the file at `path`, and that the file
/// holds exactly the bytes the shape declares (fewer: truncated; more:
/// trailing garbage).
npy_header read_npy_header(const std::string& path, npy_limits limits = {});

/// Reads the whole array, converting each element to T. A value T cannot
/// hold (300 into uint8, 1e300 into float, 2.5 or NaN into an integer) is an
/// error, not a silent wrap.
template <class T>
xt::xarray<T> read_npy(const std::string& path, npy_limits limits = {});

/// Reads rows [rows.begin, rows.end) of an array of at least one dimension
/// (a seek past the rows before), converting as read_npy does.
/// @code
///   const auto n = parallax::data::read_npy_header("x.npy").rows();
///   auto mine = parallax::data::read_npy_rows<float>("x.npy", parallax::block_of(n, comm.size(), comm.rank()));
/// @endcode
template <class T>
xt::xarray<T> read_npy_rows(const std::string& path, block rows, npy_limits limits = {});

/// Writes `array` (float, double, int32, int64 or uint8 elements) as a
/// version 1.0 .npy file in C order; error_kind::io when it cannot.
template <class E>
void save_npy(const std::string& path, const E& array);

/// A dataset of every row of an inputs file and a targets file with the same
/// number of rows (leading extent); X and Y are xtensor containers (xarray,
/// or xtensor of the files' dimensions).
template <class X, class Y>
TensorDataset<X, Y> load_npy_dataset(const std::string& inputs_path, const std::string& targets_path,
                                     npy_limits limits = {});

/// As load_npy_dataset, holding only rows [rows.begin, rows.end): the rank's
/// shard (docs/datasets.md says which shards fit which sampler).
template <class X, class Y>
ShardDataset<X, Y> load_npy_shard(const std::string& inputs_path, const std::string& targets_path, block rows,
                                  npy_limits limits = {});

// ---------------------------------------------------------------------------
// Implementation
// ---------------------------------------------------------------------------

}  // namespace parallax::data

namespace parallax::detail {

inline constexpr std::string_view npy_magic = "\x93NUMPY";

/// a * b, or nothing when that overflows.
inline std::optional<std::size_t> npy_multiply(std::size_t a, std::size_t b) {
  if (a != 0 && b > std::numeric_limits<std::size_t>::max() / a) return std::nullopt;
  return a * b;
}

/// The header dictionary, read left to right; `base` is the byte offset of
/// its first character in the file, so every message can name one.
class npy_dict_parser {
 public:
  npy_dict_parser(std::string_view text, std::size_t base, const std::string& where, const data::npy_limits& limits)
      : text_(text), base_(base), where_(where), limits_(limits) {}

  data::npy_header parse(std::size_t data_offset) {
    data::npy_header h;
    h.data_offset = data_offset;
    bool have_descr = false, have_order = false, have_shape = false;
    skip_space();
    expect('{', "the header is not a dictionary: expected '{'");
    skip_space();
    while (peek() != '}') {
      const std::size_t key_at = at_;
      const std::string_view key = string_literal("a key");
      skip_space();
      expect(':', "expected ':' after the key '" + std::string(key) + "'");
      skip_space();
      auto once = [&](bool& seen) {
        if (seen) fail(key_at, "the key '" + std::string(key) + "' appears twice");
        seen = true;
      };
      if (key == "descr") {
        once(have_descr);
        h.dtype = descr();
      } else if (key == "fortran_order") {
        once(have_order);
        const std::size_t value_at = at_;
        if (word("True")) {
          throw_error(error_kind::incompatible,
                      at(value_at) + ": 'fortran_order' is True: the array is stored column-major; only C order "
                                     "is read (numpy.save(path, numpy.ascontiguousarray(a)) writes it so)");
        }
        if (!word("False")) fail(value_at, "'fortran_order' is neither True nor False");
      } else if (key == "shape") {
        once(have_shape);
        h.shape = shape();
      } else {
        fail(key_at, "unknown key '" + std::string(key) + "' (expected 'descr', 'fortran_order' and 'shape')");
      }
      skip_space();
      if (peek() == ',') {
        ++at_;
        skip_space();
      } else if (peek() != '}') {
        fail(at_, "expected ',' or '}' after the value of '" + std::string(key) + "'");
      }
    }
    const std::size_t close = at_++;
    skip_space();
    if (at_ != text_.size()) fail(at_, "unexpected text after the header dictionary");
    if (!have_descr) fail(close, "the header has no 'descr' key");
    if (!have_order) fail(close, "the header has no 'fortran_order' key");
    if (!have_shape) fail(close, "the header has no 'shape' key");
    return h;
  }

 private:
  std::string at(std::size_t i) const { return where_ + ": at byte offset " + std::to_string(base_ + i); }
  [[noreturn]] void fail(std::size_t i, const std::string& what) const {
    throw_error(error_kind::damaged_file, at(i) + ": bad header: " + what);
  }
  char peek() const { return at_ < text_.size() ? text_[at_] : '\0'; }
  void skip_space() {
    while (at_ < text_.size() && (text_[at_] == ' ' || text_[at_] == '\n' || text_[at_] == '\t')) ++at_;
  }
  void expect(char c, const std::string& what) {
    if (peek() != c) fail(at_, what);
    ++at_;
  }
  bool word(std::string_view w) {
    if (text_.substr(at_, w.size()) != w) return false;
    at_ += w.size();
    return true;
  }
  /// A Python string in single or double quotes (no escapes: the keys and
  /// dtypes read here have none).
  std::string_view string_literal(const std::string& what) {
    const char quote = peek();
    if (quote != '\'' && quote != '"') fail(at_, "expected " + what + " in quotes");
    const std::size_t start = ++at_;
    while (at_ < text_.size() && text_[at_] != quote) ++at_;
    if (at_ == text_.size()) fail(start - 1, "unterminated string");
    return text_.substr(start, at_++ - start);
  }
  data::npy_dtype descr() {
    using data::npy_dtype;
    const std::size_t value_at = at_;
    if (peek() != '\'' && peek() != '"') {
      throw_error(error_kind::incompatible, at(value_at) + ": 'descr' is not a dtype string (a structured array?); "
                                                           "only '<f4', '<f8', '<i4', '<i8' and '|u1' are read");
    }
    const std::string_view d = string_literal("the dtype");
    if (d == "<f4") return npy_dtype::f4;
    if (d == "<f8") return npy_dtype::f8;
    if (d == "<i4") return npy_dtype::i4;
    if (d == "<i8") return npy_dtype::i8;
    if (d == "|u1" || d == "<u1") return npy_dtype::u1;
    const bool big = !d.empty() && d[0] == '>';
    throw_error(error_kind::incompatible,
                at(value_at) + ": dtype '" + std::string(d) + "'" + (big ? " is big-endian;" : " is not read;") +
                    " only '<f4', '<f8', '<i4', '<i8' and '|u1' are (numpy: a.astype('<f4'))");
  }
  std::vector<std::size_t> shape() {
    std::vector<std::size_t> extents;
    expect('(', "'shape' is not a tuple: expected '('");
    skip_space();
    while (peek() != ')') {
      const std::size_t start = at_;
      while (at_ < text_.size() && text_[at_] >= '0' && text_[at_] <= '9') ++at_;
      std::size_t extent = 0;
      if (!parse_number(text_.substr(start, at_ - start), extent)) {
        fail(start, "'shape' holds something other than a non-negative integer that fits in size_t");
      }
      if (extents.size() == limits_.max_dimensions) {
        fail(start, "'shape' has more than limits.max_dimensions (" + std::to_string(limits_.max_dimensions) +
                        ") dimensions");
      }
      extents.push_back(extent);
      skip_space();
      if (peek() == ',') {
        ++at_;
        skip_space();
      } else if (peek() != ')') {
        fail(at_, "expected ',' or ')' in 'shape'");
      }
    }
    ++at_;
    return extents;
  }

  std::string_view text_;
  std::size_t base_;
  const std::string& where_;
  const data::npy_limits& limits_;
  std::size_t at_ = 0;
};

/// Checks the header at the front of `bytes`; `where` starts every message.
inline data::npy_header npy_parse_header(std::span<const std::uint8_t> bytes, const std::string& where,
                                         const data::npy_limits& limits) {
  PARALLAX_CHECK_KIND(bytes.size() >= 10, error_kind::damaged_file,
                      where + ": only " + std::to_string(bytes.size()) +
                          " bytes, too short for a .npy header (not a .npy file?)");
  PARALLAX_CHECK_KIND(std::memcmp(bytes.data(), npy_magic.data(), npy_magic.size()) == 0, error_kind::damaged_file,
                      where + ": at byte offset 0: bad magic string: expected \\x93NUMPY (not a .npy file?)");
  const unsigned major = bytes[6];
  const unsigned minor = bytes[7];
  PARALLAX_CHECK_KIND((major == 1 || major == 2 || major == 3) && minor == 0, error_kind::incompatible,
                      where + ": at byte offset 6: format version " + std::to_string(major) + "." +
                          std::to_string(minor) + ", expected 1.0, 2.0 or 3.0");
  const std::size_t length_bytes = major == 1 ? 2 : 4;
  PARALLAX_CHECK_KIND(bytes.size() >= 8 + length_bytes, error_kind::damaged_file,
                      where + ": truncated header: the header length needs " + std::to_string(8 + length_bytes) +
                          " bytes, the file has " + std::to_string(bytes.size()));
  const std::size_t length = major == 1 ? load_le16(bytes.data() + 8) : load_le32(bytes.data() + 8);
  PARALLAX_CHECK_KIND(length <= limits.max_header_bytes, error_kind::damaged_file,
                      where + ": at byte offset 8: header length " + std::to_string(length) +
                          " is more than limits.max_header_bytes (" + std::to_string(limits.max_header_bytes) + ")");
  const std::size_t text_at = 8 + length_bytes;
  const std::size_t data_offset = text_at + length;
  PARALLAX_CHECK_KIND(bytes.size() >= data_offset, error_kind::damaged_file,
                      where + ": truncated header: the header needs " + std::to_string(data_offset) +
                          " bytes, the file has " + std::to_string(bytes.size()));
  const std::string_view text(reinterpret_cast<const char*>(bytes.data()) + text_at, length);
  data::npy_header h = npy_dict_parser(text, text_at, where, limits).parse(data_offset);
  // Every size the header implies must be countable. Multiplying from the
  // last extent, every product of trailing extents fits, so row_bytes() and
  // data_bytes() are plain products.
  std::optional<std::size_t> total = data::npy_item_size(h.dtype);
  for (std::size_t i = h.shape.size(); i-- > 0 && total;) total = npy_multiply(*total, h.shape[i]);
  PARALLAX_CHECK_KIND(total.has_value(), error_kind::damaged_file,
                      where + ": at byte offset " + std::to_string(text_at) + ": bad header: 'shape' " +
                          shape_string(h.shape) + " makes more bytes than size_t counts");
  return h;
}

/// The file size must be exactly the header plus the elements declared.
inline void npy_check_size(const data::npy_header& h, std::uintmax_t size, const std::string& where) {
  const std::uintmax_t actual = size - h.data_offset;
  const std::string declared = "shape " + shape_string(h.shape) + " of " + data::npy_dtype_name(h.dtype) +
                               " needs " + std::to_string(h.data_bytes()) + " bytes of data, the file holds " +
                               std::to_string(actual);
  const std::string at_data = where + ": at byte offset " + std::to_string(h.data_offset);
  PARALLAX_CHECK_KIND(actual >= h.data_bytes(), error_kind::damaged_file, at_data + ": truncated: " + declared);
  PARALLAX_CHECK_KIND(actual <= h.data_bytes(), error_kind::damaged_file, at_data + ": trailing garbage: " + declared);
}

/// An open .npy file whose header and size are checked.
struct npy_file {
  std::ifstream in;
  data::npy_header header;
  std::string where;
};

inline npy_file npy_open(const std::string& path, const std::string& where, const data::npy_limits& limits) {
  const std::uintmax_t size = input_file_size(path, where);
  npy_file f{open_input(path, where), {}, where};
  // The longest header the limits allow, or the whole file when shorter.
  const std::size_t prefix_cap = 12 + std::min<std::size_t>(limits.max_header_bytes, 0xffffffffu);
  std::vector<std::uint8_t> prefix(static_cast<std::size_t>(std::min<std::uintmax_t>(size, prefix_cap)));
  read_exactly(f.in, 0, reinterpret_cast<char*>(prefix.data()), prefix.size(), where);
  f.header = npy_parse_header(prefix, where, limits);
  npy_check_size(f.header, size, where);
  return f;
}

/// Converts little-endian elements of type S at `values` into `out`;
/// element `first` of the file is values[0], at byte offset `offset`.
template <class S, class T>
void npy_convert(const std::uint8_t* values, std::span<T> out, std::size_t first, std::size_t offset,
                 const std::string& where) {
  using bits_type = uint_of_size<sizeof(S)>;
  for (std::size_t i = 0; i < out.size(); ++i) {
    const S value = std::bit_cast<S>(load_le<bits_type>(values + i * sizeof(S)));
    if (!fits_exactly<T>(value)) {
      throw_error(error_kind::incompatible, where + ": at byte offset " + std::to_string(offset + i * sizeof(S)) +
                                                ": element " + std::to_string(first + i) + " (" +
                                                number_text(value) + ") does not fit in " + type_name<T>());
    }
    out[i] = static_cast<T>(value);
  }
}

/// Reads rows `rows` (nothing: the whole array) of `f` into `out`, an
/// xtensor container, resized to the rows' shape.
template <class E>
void npy_read(npy_file& f, std::optional<block> rows, const data::npy_limits& limits, E& out) {
  using T = typename E::value_type;
  static_assert(std::is_arithmetic_v<T> && !std::is_same_v<T, bool>,
                "parallax: .npy arrays are read into containers of an arithmetic element type (not bool)");
  const data::npy_header& h = f.header;
  const std::string& where = f.where;
  constexpr std::size_t rank = xt::get_rank<E>::value;
  if constexpr (rank != SIZE_MAX) {
    PARALLAX_CHECK_KIND(h.shape.size() == rank, error_kind::incompatible,
                        where + ": shape " + shape_string(h.shape) + " has " + std::to_string(h.shape.size()) +
                            " dimensions, the container takes " + std::to_string(rank));
  }
  std::vector<std::size_t> shape = h.shape;
  std::size_t first_row = 0, row_elements = 1;
  if (rows) {
    PARALLAX_CHECK_KIND(!h.shape.empty(), error_kind::incompatible,
                        where + ": a 0-dimensional array has no rows to read");
    PARALLAX_CHECK(rows->begin <= rows->end && rows->end <= h.rows(),
                   where + ": rows [" + std::to_string(rows->begin) + ", " + std::to_string(rows->end) +
                       ") of an array of " + std::to_string(h.rows()) + " rows");
    first_row = rows->begin;
    shape[0] = rows->size();
  }
  if (!h.shape.empty()) row_elements = h.row_elements();
  const std::size_t count = (h.shape.empty() ? 1 : shape[0]) * row_elements;
  PARALLAX_CHECK_KIND(count <= limits.max_bytes / sizeof(T), error_kind::damaged_file,
                      where + ": " + std::to_string(count) + " elements of " + type_name<T>() +
                          " are more than limits.max_bytes (" + std::to_string(limits.max_bytes) + " bytes)");
  out.resize(shape);
  const std::size_t item = data::npy_item_size(h.dtype);
  const std::size_t first = first_row * row_elements;
  // Read and convert in chunks: the file's bytes are never held whole next
  // to the converted elements.
  const std::size_t chunk = std::max<std::size_t>(1, std::min<std::size_t>(count, (std::size_t{1} << 20) / item));
  std::vector<std::uint8_t> buffer(chunk * item);
  T* dst = out.data();
  for (std::size_t done = 0; done < count;) {
    const std::size_t n = std::min(chunk, count - done);
    const std::size_t offset = h.data_offset + (first + done) * item;
    read_exactly(f.in, offset, reinterpret_cast<char*>(buffer.data()), n * item, where);
    const std::span<T> to(dst + done, n);
    switch (h.dtype) {
      case data::npy_dtype::u1: npy_convert<std::uint8_t>(buffer.data(), to, first + done, offset, where); break;
      case data::npy_dtype::i4: npy_convert<std::int32_t>(buffer.data(), to, first + done, offset, where); break;
      case data::npy_dtype::i8: npy_convert<std::int64_t>(buffer.data(), to, first + done, offset, where); break;
      case data::npy_dtype::f4: npy_convert<float>(buffer.data(), to, first + done, offset, where); break;
      case data::npy_dtype::f8: npy_convert<double>(buffer.data(), to, first + done, offset, where); break;
    }
    done += n;
  }
}

/// Opens both files of a dataset and checks that they have as many rows.
inline std::pair<npy_file, npy_file> npy_open_pair(std::string_view function, const std::string& inputs_path,
                                                   const std::string& targets_path, const data::npy_limits& limits) {
  auto x = npy_open(inputs_path, file_where(function, inputs_path), limits);
  auto y = npy_open(targets_path, file_where(function, targets_path), limits);
  PARALLAX_CHECK_KIND(!x.header.shape.empty() && !y.header.shape.empty(), error_kind::incompatible,
                      std::string(function) + ": '" + (x.header.shape.empty() ? inputs_path : targets_path) +
                          "' holds a 0-dimensional array, not one row per sample");
  PARALLAX_CHECK_KIND(x.header.rows() == y.header.rows(), error_kind::incompatible,
                      std::string(function) + ": '" + inputs_path + "' holds " + std::to_string(x.header.rows()) +
                          " rows of inputs but '" + targets_path + "' holds " + std::to_string(y.header.rows()) +
                          " rows of targets");
  return {std::move(x), std::move(y)};
}

template <class T>
constexpr std::string_view npy_descr_of() {
  if constexpr (std::is_same_v<T, float>) return "<f4";
  else if constexpr (std::is_same_v<T, double>) return "<f8";
  else if constexpr (std::is_same_v<T, std::int32_t>) return "<i4";
  else if constexpr (std::is_same_v<T, std::int64_t>) return "<i8";
  else if constexpr (std::is_same_v<T, std::uint8_t>) return "|u1";
  else static_assert(sizeof(T) == 0, "parallax: save_npy writes float, double, int32, int64 or uint8 elements");
}

}  // namespace parallax::detail

namespace parallax::data {

constexpr std::size_t npy_item_size(npy_dtype dtype) {
  switch (dtype) {
    case npy_dtype::u1: return 1;
    case npy_dtype::i4: case npy_dtype::f4: return 4;
    case npy_dtype::i8: case npy_dtype::f8: return 8;
  }
  return 0;
}

inline std::string npy_dtype_name(npy_dtype dtype) {
  switch (dtype) {
    case npy_dtype::u1: return "'|u1' (uint8)";
    case npy_dtype::i4: return "'<i4' (int32)";
    case npy_dtype::i8: return "'<i8' (int64)";
    case npy_dtype::f4: return "'<f4' (float32)";
    case npy_dtype::f8: return "'<f8' (float64)";
  }
  return "unknown";
}

inline std::size_t npy_header::rows() const { return shape.empty() ? 0 : shape[0]; }

inline std::size_t npy_header::row_elements() const {
  std::size_t n = 1;
  for (std::size_t i = 1; i < shape.size(); ++i) n *= shape[i];
  return n;
}

inline std::size_t npy_header::row_bytes() const { return row_elements() * npy_item_size(dtype); }

inline std::size_t npy_header::data_bytes() const { return (shape.empty() ? 1 : rows()) * row_bytes(); }

inline npy_header parse_npy_header(std::span<const std::uint8_t> bytes, const std::string& name, npy_limits limits) {
  return detail::npy_parse_header(bytes, detail::file_where("parse_npy_header()", name), limits);
}

inline npy_header read_npy_header(const std::string& path, npy_limits limits) {
  return detail::npy_open(path, detail::file_where("read_npy_header()", path), limits).header;
}

template <class T>
xt::xarray<T> read_npy(const std::string& path, npy_limits limits) {
  auto f = detail::npy_open(path, detail::file_where("read_npy()", path), limits);
  xt::xarray<T> out;
  detail::npy_read(f, std::nullopt, limits, out);
  return out;
}

template <class T>
xt::xarray<T> read_npy_rows(const std::string& path, block rows, npy_limits limits) {
  auto f = detail::npy_open(path, detail::file_where("read_npy_rows()", path), limits);
  xt::xarray<T> out;
  detail::npy_read(f, rows, limits, out);
  return out;
}

template <class E>
void save_npy(const std::string& path, const E& array) {
  using T = typename E::value_type;
  const std::string where = detail::file_where("save_npy()", path);
  std::string header = "{'descr': '" + std::string(detail::npy_descr_of<T>()) + "', 'fortran_order': False, 'shape': (";
  for (std::size_t i = 0; i < array.dimension(); ++i) {
    header += std::to_string(array.shape()[i]) + (array.dimension() == 1 ? "," : i + 1 < array.dimension() ? ", " : "");
  }
  header += "), }";
  // numpy pads with spaces and a newline so the elements start on a
  // multiple of 64 bytes.
  const std::size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  std::vector<std::uint8_t> bytes(detail::npy_magic.begin(), detail::npy_magic.end());
  bytes.insert(bytes.end(), {1, 0, static_cast<std::uint8_t>(header.size() & 0xff),
                             static_cast<std::uint8_t>(header.size() >> 8)});
  bytes.insert(bytes.end(), header.begin(), header.end());
  const std::size_t at = bytes.size();
  bytes.resize(at + array.size() * sizeof(T));
  using bits_type = detail::uint_of_size<sizeof(T)>;
  const T* values = array.data();
  for (std::size_t i = 0; i < array.size(); ++i) {
    detail::store_le(bytes.data() + at + i * sizeof(T), std::bit_cast<bits_type>(values[i]));
  }
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  PARALLAX_CHECK_KIND(out.is_open(), error_kind::io, where + ": cannot open the file for writing");
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  out.close();
  PARALLAX_CHECK_KIND(!out.fail(), error_kind::io, where + ": write error");
}

template <class X, class Y>
TensorDataset<X, Y> load_npy_dataset(const std::string& inputs_path, const std::string& targets_path,
                                     npy_limits limits) {
  auto [x_file, y_file] = detail::npy_open_pair("load_npy_dataset()", inputs_path, targets_path, limits);
  X x;
  Y y;
  detail::npy_read(x_file, std::nullopt, limits, x);
  detail::npy_read(y_file, std::nullopt, limits, y);
  return TensorDataset<X, Y>(std::move(x), std::move(y));
}

template <class X, class Y>
ShardDataset<X, Y> load_npy_shard(const std::string& inputs_path, const std::string& targets_path, block rows,
                                  npy_limits limits) {
  auto [x_file, y_file] = detail::npy_open_pair("load_npy_shard()", inputs_path, targets_path, limits);
  X x;
  Y y;
  detail::npy_read(x_file, rows, limits, x);
  detail::npy_read(y_file, rows, limits, y);
  return ShardDataset<X, Y>(TensorDataset<X, Y>(std::move(x), std::move(y)), rows.begin, x_file.header.rows());
}

}  // namespace parallax::data
