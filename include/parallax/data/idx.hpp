#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Readers for IDX files, the format of MNIST and Fashion-MNIST (plain or
/// gzip-compressed, told apart by their first bytes), and the loader of an
/// MNIST-style split of images and labels.
///
/// Files are untrusted input: every size is checked before it is allocated.
/// A file that cannot be read is error_kind::io; a malformed one
/// damaged_file (the message names the byte offset); an intact one holding
/// what the caller cannot take (a value T cannot hold, images that are not
/// unsigned bytes, a label outside 0..9) incompatible.
///
/// Every reader here is local: it throws parallax::error on this rank only.
/// In an MPI program, read through parallax::agree (core/comm.hpp) so that a
/// file missing on one host fails every rank together:
/// @code
///   auto train = parallax::agree(comm, [&] { return parallax::data::load_mnist_split(dir, "train"); });
/// @endcode

#include <parallax/core/error.hpp>
#include <parallax/detail/bytes.hpp>
#include <parallax/detail/element_type.hpp>
#include <parallax/detail/gzip.hpp>
#include <parallax/detail/input_file.hpp>
#include <parallax/detail/number_text.hpp>
#include <parallax/detail/xtensor.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

namespace parallax::data {

/// Limits that keep a garbled file from asking for absurd memory.
struct idx_limits {
  std::size_t max_dimensions = 4;               ///< most dimensions a header may declare
  std::size_t max_bytes = std::size_t{1} << 31;  ///< most bytes of element data (after decompression)
};

/// IDX element types: the third byte of the magic number. Multi-byte
/// elements are stored big-endian.
enum class idx_type : std::uint8_t {
  u8 = 0x08,   ///< unsigned byte
  i8 = 0x09,   ///< signed byte
  i16 = 0x0B,  ///< 16-bit integer
  i32 = 0x0C,  ///< 32-bit integer
  f32 = 0x0D,  ///< IEEE 754 single
  f64 = 0x0E,  ///< IEEE 754 double
};

/// Bytes per element of `type`.
constexpr std::size_t idx_element_size(idx_type type);

/// "unsigned byte (0x08)", ...: an element type for messages.
std::string idx_type_name(idx_type type);

/// The header of an IDX file: element type, shape, and where the values start.
struct idx_header {
  idx_type type = idx_type::u8;
  std::vector<std::size_t> shape;
  std::size_t data_offset = 0;  ///< bytes of magic number and extents
  /// Number of elements: the product of the extents.
  std::size_t count() const;
  /// Bytes of element data: count() times the element size.
  std::size_t data_bytes() const;
};

/// Parses and checks the header at the front of the decoded bytes of an IDX
/// file: two zero bytes, a known type code, 1..limits.max_dimensions
/// dimensions, nonzero extents, at most limits.max_bytes of data, and exactly
/// that many bytes after the header (fewer: truncated; more: trailing
/// garbage). `name` (usually the path) is quoted in every message.
idx_header parse_idx_header(std::span<const std::uint8_t> bytes, const std::string& name, idx_limits limits = {});

/// Decodes an IDX file held in memory, plain or gzip-compressed (told by its
/// magic bytes), converting each element to T. A value that T cannot hold
/// (300 into uint8, NaN or 1e10 into int32, 1e300 into float) is an error, not
/// a silent wrap. `name` is quoted in messages.
template <class T>
xt::xarray<T> decode_idx(std::span<const std::uint8_t> bytes, const std::string& name, idx_limits limits = {});

/// Reads an IDX file, plain or gzip-compressed (told by its magic bytes, not
/// by its name), converting each element to T as decode_idx does. Errors name
/// the path and the cause: missing or unreadable file, bad header, truncated
/// data or trailing garbage, gzip errors, values T cannot hold.
/// @code
///   xt::xarray<std::uint8_t> images = parallax::data::read_idx<std::uint8_t>("train-images-idx3-ubyte.gz");
///   // images.shape() == {60000, 28, 28}
/// @endcode
template <class T>
xt::xarray<T> read_idx(const std::string& path, idx_limits limits = {});

/// Fashion-MNIST / MNIST split loaded as float images in [0, 1] and int32 labels.
struct image_set {
  xt::xtensor<float, 2> images;         ///< [n, rows * cols], pixel / 255
  xt::xtensor<std::int32_t, 1> labels;  ///< [n], each in 0..9
  std::size_t rows = 0, cols = 0;
};

/// Reads an image file (unsigned bytes, 3 dimensions: n, rows, cols) and a
/// label file (unsigned bytes, 1 dimension: n), each plain or gzip. Checks
/// that the counts match and that every label is a class 0..9 (MNIST and
/// Fashion-MNIST have ten; for sets with more classes, such as EMNIST, use
/// read_idx directly).
image_set read_image_set(const std::string& images_path, const std::string& labels_path, idx_limits limits = {});

/// Where Debian-style dataset packages put Fashion-MNIST.
inline constexpr const char* default_fashion_mnist_dir = "/usr/share/datasets/fashion-mnist";

/// Loads split "train" (train-images-idx3-ubyte, train-labels-idx1-ubyte) or
/// "test" (t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte) from `dir`. Each
/// file may be plain or end in .gz; when both exist the plain file is used,
/// because someone unpacked it on purpose and it loads faster.
/// @code
///   auto train = parallax::data::load_mnist_split(parallax::data::default_fashion_mnist_dir, "train");
///   // train.images: [60000, 784], train.labels: [60000]
/// @endcode
image_set load_mnist_split(const std::string& dir, const std::string& split, idx_limits limits = {});

// ---------------------------------------------------------------------------
// Implementation
// ---------------------------------------------------------------------------

}  // namespace parallax::data

namespace parallax::detail {

/// a + b, or the largest size_t when that overflows.
inline std::size_t idx_saturating_add(std::size_t a, std::size_t b) {
  return b > std::numeric_limits<std::size_t>::max() - a ? std::numeric_limits<std::size_t>::max() : a + b;
}

/// Largest header that `limits` allow: magic number plus max_dimensions extents.
inline std::size_t idx_max_header_bytes(const data::idx_limits& limits) {
  const std::size_t dims = std::min<std::size_t>(limits.max_dimensions, 255);  // the count is one byte
  return 4 + 4 * dims;
}

/// The total size `limits` allow for a decoded file: header plus data.
inline std::size_t idx_max_file_bytes(const data::idx_limits& limits) {
  return idx_saturating_add(limits.max_bytes, idx_max_header_bytes(limits));
}

/// Checks the header of decoded IDX bytes; `where` starts every message.
inline data::idx_header idx_parse_header(std::span<const std::uint8_t> bytes, const std::string& where,
                                         const data::idx_limits& limits) {
  using data::idx_type;
  PARALLAX_CHECK_KIND(
      bytes.size() >= 4, error_kind::damaged_file,
      where + ": only " + std::to_string(bytes.size()) + " bytes, too short for an IDX header (not an IDX file?)");
  PARALLAX_CHECK_KIND(
      bytes[0] == 0 && bytes[1] == 0, error_kind::damaged_file,
      where + ": at byte offset 0: bad magic number: the first two bytes are not zero (not an IDX file?)");
  data::idx_header h;
  const std::uint8_t code = bytes[2];
  switch (code) {
    case 0x08: case 0x09: case 0x0B: case 0x0C: case 0x0D: case 0x0E:
      h.type = static_cast<idx_type>(code);
      break;
    default: {
      static constexpr char hex[] = "0123456789ABCDEF";
      const std::string text{'0', 'x', hex[code >> 4], hex[code & 15]};
      throw_error(error_kind::damaged_file, where + ": at byte offset 2: bad magic number: unknown element type code " +
                                                text + " (expected 0x08, 0x09, 0x0B, 0x0C, 0x0D or 0x0E)");
    }
  }
  const std::size_t dims = bytes[3];
  PARALLAX_CHECK_KIND(dims >= 1 && dims <= limits.max_dimensions, error_kind::damaged_file,
                      where + ": at byte offset 3: bad magic number: " + std::to_string(dims) +
                          " dimensions, expected 1 to " + std::to_string(limits.max_dimensions));
  h.data_offset = 4 + 4 * dims;
  PARALLAX_CHECK_KIND(bytes.size() >= h.data_offset, error_kind::damaged_file,
                      where + ": truncated header: " + std::to_string(dims) + " dimensions need " +
                          std::to_string(h.data_offset) + " bytes, the file has " + std::to_string(bytes.size()));
  // Multiply in bytes, checking against max_bytes at every step: no overflow,
  // and nothing is allocated for a size the limits refuse.
  std::size_t total = data::idx_element_size(h.type);
  for (std::size_t i = 0; i < dims; ++i) {
    const std::size_t extent = load_be32(bytes.data() + 4 + 4 * i);
    const std::string dimension =
        where + ": at byte offset " + std::to_string(4 + 4 * i) + ": dimension " + std::to_string(i);
    PARALLAX_CHECK_KIND(extent != 0, error_kind::damaged_file, dimension + " has extent 0");
    PARALLAX_CHECK_KIND(total <= limits.max_bytes / extent, error_kind::damaged_file,
                        dimension + " has extent " + std::to_string(extent) +
                            ", which makes the data larger than limits.max_bytes (" + std::to_string(limits.max_bytes) +
                            " bytes)");
    total *= extent;
    h.shape.push_back(extent);
  }
  const std::size_t actual = bytes.size() - h.data_offset;
  const std::string declared = "shape " + shape_string(h.shape) + " of " + data::idx_type_name(h.type) + " needs " +
                               std::to_string(total) + " bytes of data, the file holds " + std::to_string(actual);
  const std::string at_data = where + ": at byte offset " + std::to_string(h.data_offset);
  PARALLAX_CHECK_KIND(actual >= total, error_kind::damaged_file, at_data + ": truncated: " + declared);
  PARALLAX_CHECK_KIND(actual <= total, error_kind::damaged_file, at_data + ": trailing garbage: " + declared);
  return h;
}

/// The whole file, decompressed when it starts with the gzip magic. Reads no
/// more than `limits` can accept: decompressed, at most max_bytes plus the
/// largest header; compressed, that plus gzip's own overhead (5 bytes per
/// 64 KiB stored block, 18 per member, optional name and comment), allowed
/// as 1/64 plus 1 MiB.
inline std::vector<std::uint8_t> idx_read_file(const std::string& path, const std::string& where,
                                               const data::idx_limits& limits) {
  const std::uintmax_t size = input_file_size(path, where);
  const std::size_t raw_cap = idx_max_file_bytes(limits);
  const std::size_t file_cap = idx_saturating_add(raw_cap, idx_saturating_add(raw_cap / 64, std::size_t{1} << 20));
  PARALLAX_CHECK_KIND(size <= file_cap, error_kind::damaged_file,
                      where + ": the file is " + std::to_string(size) + " bytes, more than limits.max_bytes allows");
  std::ifstream in = open_input(path, where);
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(size));
  read_exactly(in, 0, reinterpret_cast<char*>(bytes.data()), bytes.size(), where);
  if (is_gzip(bytes)) return gunzip(bytes, raw_cap, where + ": gzip");
  PARALLAX_CHECK_KIND(bytes.size() <= raw_cap, error_kind::damaged_file,
                      where + ": the file is " + std::to_string(size) + " bytes, more than limits.max_bytes allows");
  return bytes;
}

/// A file of unsigned bytes (type 0x08) with `dims` dimensions: its decoded
/// bytes and checked header. `what` ("images") and `dims_text` ("count, rows,
/// columns") say in messages what the file should hold.
struct idx_bytes_file {
  std::vector<std::uint8_t> bytes;
  data::idx_header header;
};

inline idx_bytes_file idx_read_bytes_file(const std::string& path, const std::string& where,
                                          const data::idx_limits& limits, std::string_view what, std::size_t dims,
                                          std::string_view dims_text) {
  idx_bytes_file file{idx_read_file(path, where, limits), {}};
  file.header = idx_parse_header(file.bytes, where, limits);
  const data::idx_header& h = file.header;
  PARALLAX_CHECK_KIND(h.type == data::idx_type::u8, error_kind::incompatible,
                      where + ": " + std::string(what) + " hold " + data::idx_type_name(h.type) +
                          " elements, expected unsigned byte (0x08)");
  PARALLAX_CHECK_KIND(h.shape.size() == dims, error_kind::incompatible,
                      where + ": " + std::string(what) + " have " + std::to_string(h.shape.size()) +
                          " dimensions, expected " + std::to_string(dims) + " (" + std::string(dims_text) + ")");
  return file;
}

/// Decodes big-endian elements of type S at `values` into `out`.
template <class S, class T>
void idx_convert(const std::uint8_t* values, std::span<T> out, const std::string& where, std::size_t data_offset) {
  using bits_type = uint_of_size<sizeof(S)>;
  for (std::size_t i = 0; i < out.size(); ++i) {
    const S value = std::bit_cast<S>(load_be<bits_type>(values + i * sizeof(S)));
    if (!fits<T>(value)) {
      throw_error(error_kind::incompatible, where + ": at byte offset " + std::to_string(data_offset + i * sizeof(S)) +
                                                ": element " + std::to_string(i) + " (" + number_text(value) +
                                                ") does not fit in " + type_name<T>());
    }
    out[i] = static_cast<T>(value);
  }
}

/// Decodes checked, decompressed IDX bytes into an array of T.
template <class T>
xt::xarray<T> idx_decode(std::span<const std::uint8_t> decoded, const std::string& where,
                         const data::idx_limits& limits) {
  static_assert(std::is_arithmetic_v<T> && !std::is_same_v<T, bool>,
                "parallax: read_idx<T> needs an arithmetic element type T (not bool)");
  using data::idx_type;
  const data::idx_header h = idx_parse_header(decoded, where, limits);
  auto out = xt::xarray<T>::from_shape(h.shape);
  const std::uint8_t* values = decoded.data() + h.data_offset;
  const std::span<T> flat(out.data(), out.size());
  switch (h.type) {
    case idx_type::u8: idx_convert<std::uint8_t>(values, flat, where, h.data_offset); break;
    case idx_type::i8: idx_convert<std::int8_t>(values, flat, where, h.data_offset); break;
    case idx_type::i16: idx_convert<std::int16_t>(values, flat, where, h.data_offset); break;
    case idx_type::i32: idx_convert<std::int32_t>(values, flat, where, h.data_offset); break;
    case idx_type::f32: idx_convert<float>(values, flat, where, h.data_offset); break;
    case idx_type::f64: idx_convert<double>(values, flat, where, h.data_offset); break;
  }
  return out;
}

}  // namespace parallax::detail

namespace parallax::data {

constexpr std::size_t idx_element_size(idx_type type) {
  switch (type) {
    case idx_type::u8: case idx_type::i8: return 1;
    case idx_type::i16: return 2;
    case idx_type::i32: case idx_type::f32: return 4;
    case idx_type::f64: return 8;
  }
  return 0;
}

inline std::string idx_type_name(idx_type type) {
  switch (type) {
    case idx_type::u8: return "unsigned byte (0x08)";
    case idx_type::i8: return "signed byte (0x09)";
    case idx_type::i16: return "int16 (0x0B)";
    case idx_type::i32: return "int32 (0x0C)";
    case idx_type::f32: return "float (0x0D)";
    case idx_type::f64: return "double (0x0E)";
  }
  return "unknown";
}

inline std::size_t idx_header::count() const {
  std::size_t n = 1;
  for (const auto extent : shape) n *= extent;
  return n;
}

inline std::size_t idx_header::data_bytes() const { return count() * idx_element_size(type); }

inline idx_header parse_idx_header(std::span<const std::uint8_t> bytes, const std::string& name, idx_limits limits) {
  return detail::idx_parse_header(bytes, detail::file_where("parse_idx_header()", name), limits);
}

template <class T>
xt::xarray<T> decode_idx(std::span<const std::uint8_t> bytes, const std::string& name, idx_limits limits) {
  const std::string where = detail::file_where("decode_idx()", name);
  if (!detail::is_gzip(bytes)) return detail::idx_decode<T>(bytes, where, limits);
  const auto raw = detail::gunzip(bytes, detail::idx_max_file_bytes(limits), where + ": gzip");
  return detail::idx_decode<T>(raw, where, limits);
}

template <class T>
xt::xarray<T> read_idx(const std::string& path, idx_limits limits) {
  const std::string where = detail::file_where("read_idx()", path);
  return detail::idx_decode<T>(detail::idx_read_file(path, where, limits), where, limits);
}

inline image_set read_image_set(const std::string& images_path, const std::string& labels_path, idx_limits limits) {
  const std::string at_images = detail::file_where("read_image_set()", images_path);
  const std::string at_labels = detail::file_where("read_image_set()", labels_path);

  const auto [image_bytes, ih] = detail::idx_read_bytes_file(images_path, at_images, limits, "images", 3,
                                                            "count, rows, columns");
  const auto [label_bytes, lh] = detail::idx_read_bytes_file(labels_path, at_labels, limits, "labels", 1, "count");

  const std::size_t n = ih.shape[0];
  PARALLAX_CHECK_KIND(n == lh.shape[0], error_kind::incompatible,
                      "read_image_set(): '" + images_path + "' holds " + std::to_string(n) + " images but '" +
                          labels_path + "' holds " + std::to_string(lh.shape[0]) + " labels");
  image_set set;
  set.rows = ih.shape[1];
  set.cols = ih.shape[2];

  set.labels = xt::xtensor<std::int32_t, 1>(std::array<std::size_t, 1>{n});
  const std::uint8_t* labels = label_bytes.data() + lh.data_offset;
  for (std::size_t i = 0; i < n; ++i) {
    PARALLAX_CHECK_KIND(labels[i] <= 9, error_kind::incompatible,
                        at_labels + ": at byte offset " + std::to_string(lh.data_offset + i) + ": label " +
                            std::to_string(i) + " is " + std::to_string(labels[i]) + ", outside the classes 0..9");
    set.labels(i) = labels[i];
  }

  // A table, not a multiply by 1/255: 255 must map to exactly 1.0f.
  std::array<float, 256> scale{};
  for (std::size_t v = 0; v < 256; ++v) scale[v] = static_cast<float>(v) / 255.0f;
  const std::size_t pixels = set.rows * set.cols;
  set.images = xt::xtensor<float, 2>(std::array<std::size_t, 2>{n, pixels});
  const std::uint8_t* src = image_bytes.data() + ih.data_offset;
  float* dst = set.images.data();
  for (std::size_t i = 0; i < n * pixels; ++i) dst[i] = scale[src[i]];
  return set;
}

inline image_set load_mnist_split(const std::string& dir, const std::string& split, idx_limits limits) {
  PARALLAX_CHECK(split == "train" || split == "test",
                 "load_mnist_split(): split must be \"train\" or \"test\", not \"" + split + "\"");
  const std::string prefix = split == "train" ? "train" : "t10k";
  auto find = [&](const std::string& base) {
    const std::filesystem::path plain = std::filesystem::path(dir) / base;
    const std::filesystem::path gz = std::filesystem::path(dir) / (base + ".gz");
    std::error_code ec;
    if (std::filesystem::exists(plain, ec)) return plain.string();
    PARALLAX_CHECK_KIND(std::filesystem::exists(gz, ec), error_kind::io,
                        "load_mnist_split(): neither '" + plain.string() + "' nor '" + gz.string() + "' exists");
    return gz.string();
  };
  const std::string images = find(prefix + "-images-idx3-ubyte");
  const std::string labels = find(prefix + "-labels-idx1-ubyte");
  return read_image_set(images, labels, limits);
}

}  // namespace parallax::data
