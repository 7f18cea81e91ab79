#pragma once
// SPDX-License-Identifier: BSL-1.0
/// A bounded reader of the Boost.Serialization binary archives checkpoint
/// payloads are written in: every count and length is checked against the
/// bytes that remain before anything is allocated, bools and versions are
/// range-checked, and every failure is damaged_file naming the file, the
/// field and its byte offset.
///
/// The layout it reads is the one binary_oarchive writes on a little-endian
/// machine with 4-byte int and float and 8-byte long and double (checked in
/// the archive's header) for library versions 8 and later (Boost 1.44 on),
/// as basic_binary_iarchive.hpp reads it:
/// - header: the signature "serialization::archive" as a string, the
///   library version (two bytes), the sizes of int, long, float and double
///   (one byte each) and the int 1;
/// - a string: its length (8 bytes), then its bytes;
/// - a vector of arithmetic values: its size (8 bytes), then the values;
/// - any other vector: its size (8 bytes), the item version (4 bytes), then
///   the items;
/// - a class (a struct with serialize(), or a vector of non-arithmetic
///   items): before the first object of that class in the archive, its
///   tracking flag (1 byte) and class version (4 bytes), both 0 for the
///   untracked, unversioned classes of a checkpoint.

#include <parallax/core/error.hpp>
#include <parallax/detail/bytes.hpp>

#include <boost/archive/basic_archive.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace parallax::io::detail {

// Values are copied as they lie in memory: the archives this reads are the
// ones this kind of machine writes.
static_assert(std::endian::native == std::endian::little && sizeof(int) == 4 && sizeof(long) == 8 &&
                  sizeof(float) == 4 && sizeof(double) == 8,
              "parallax: checkpoint payloads are read on little-endian LP64 machines");

class archive_reader {
 public:
  /// Reads `bytes`, which start `base_offset` bytes into the file `where`
  /// names (e.g. "checkpoint file '…/state.bin'"); offsets in messages are
  /// offsets in the file.
  archive_reader(std::span<const char> bytes, std::string where, std::size_t base_offset = 0)
      : p_(reinterpret_cast<const std::uint8_t*>(bytes.data())),
        begin_(p_),
        end_(p_ + bytes.size()),
        where_(std::move(where)),
        base_(base_offset) {}

  /// The archive's header (see the file comment).
  void header();
  /// The class header written before the first object of class `type` (a
  /// name of the caller's choosing, one per class): tracking and version 0.
  /// Nothing for the later objects of the class.
  void class_info(std::string_view type, const std::string& field);

  std::uint64_t u64(const std::string& field);
  /// A bool stored as one byte: anything but 0 or 1 is damage.
  bool boolean(const std::string& field);
  /// A double; a NaN or an infinity is damage.
  double finite_double(const std::string& field);
  /// A string of at most `max_bytes` bytes (and no more than remain) with no
  /// control character (a name: it goes into messages as it is).
  std::string text(const std::string& field, std::size_t max_bytes);
  /// The size of a vector of non-arithmetic items and its item version (0):
  /// at most `max_items`, and each item needs at least `min_item_bytes`
  /// bytes, so the count is checked against what remains.
  std::uint64_t items(const std::string& field, std::uint64_t min_item_bytes, std::uint64_t max_items);
  /// A vector of arithmetic values: its size, checked against what remains,
  /// then the values.
  template <class T>
  std::vector<T> values(const std::string& field);
  /// As values(), with the size known in advance: a size other than
  /// `expected` is damage, reported as `what`.
  template <class T>
  std::vector<T> values(const std::string& field, std::uint64_t expected, std::string_view what);

  /// Bytes left.
  std::size_t remaining() const { return static_cast<std::size_t>(end_ - p_); }
  /// The file offset of the next byte.
  std::size_t offset() const { return base_ + static_cast<std::size_t>(p_ - begin_); }
  /// Every byte was read: trailing bytes are damage.
  void finish();

  /// Throws damaged_file: "<where>: field '<field>' at byte offset <at>: <cause>".
  [[noreturn]] void fail(const std::string& field, std::size_t at, const std::string& cause) const;

 private:
  const std::uint8_t* take(const std::string& field, std::size_t n);
  std::uint64_t size_field(const std::string& field, std::uint64_t unit_bytes, std::uint64_t max_items);

  const std::uint8_t* p_;
  const std::uint8_t* begin_;
  const std::uint8_t* end_;
  std::string where_;
  std::size_t base_;
  std::vector<std::string> seen_;  ///< classes whose header was read
};

// ---------------------------------------------------------------------------
// Implementation
// ---------------------------------------------------------------------------

inline void archive_reader::fail(const std::string& field, std::size_t at, const std::string& cause) const {
  parallax::detail::throw_error(error_kind::damaged_file,
                                where_ + ": field '" + field + "' at byte offset " + std::to_string(at) + ": " + cause);
}

inline const std::uint8_t* archive_reader::take(const std::string& field, std::size_t n) {
  if (n > remaining())
    fail(field, offset(),
         "truncated: needs " + std::to_string(n) + " bytes, " + std::to_string(remaining()) + " remain");
  const auto* at = p_;
  p_ += n;
  return at;
}

inline std::uint64_t archive_reader::u64(const std::string& field) {
  return parallax::detail::load_le64(take(field, 8));
}

inline bool archive_reader::boolean(const std::string& field) {
  const std::size_t at = offset();
  const std::uint8_t b = *take(field, 1);
  if (b > 1) fail(field, at, "a bool holds " + std::to_string(b) + ", not 0 or 1");
  return b == 1;
}

inline double archive_reader::finite_double(const std::string& field) {
  const std::size_t at = offset();
  const double v = std::bit_cast<double>(u64(field));
  if (!std::isfinite(v)) fail(field, at, "not a finite number");
  return v;
}

inline std::uint64_t archive_reader::size_field(const std::string& field, std::uint64_t unit_bytes,
                                                std::uint64_t max_items) {
  const std::size_t at = offset();
  const std::uint64_t n = u64(field);
  if (n > max_items)
    fail(field, at, "size " + std::to_string(n) + " is more than the most allowed, " + std::to_string(max_items));
  if (unit_bytes > 0 && n > remaining() / unit_bytes)
    fail(field, at,
         "size " + std::to_string(n) + " needs at least " + std::to_string(unit_bytes) + " bytes each, " +
             std::to_string(remaining()) + " bytes remain");
  return n;
}

inline std::string archive_reader::text(const std::string& field, std::size_t max_bytes) {
  const std::uint64_t n = size_field(field, 1, max_bytes);
  const std::size_t at = offset();
  const auto* s = take(field, static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < n; ++i)
    if (s[i] < 0x20 || s[i] == 0x7f)
      fail(field, at, "control character " + std::to_string(s[i]) + " at position " + std::to_string(i) + " of a name");
  return std::string(reinterpret_cast<const char*>(s), static_cast<std::size_t>(n));
}

inline std::uint64_t archive_reader::items(const std::string& field, std::uint64_t min_item_bytes,
                                           std::uint64_t max_items) {
  const std::size_t at = offset();
  const std::uint64_t n = size_field(field, 0, max_items);
  const std::size_t version_at = offset();
  const std::uint32_t item_version = parallax::detail::load_le32(take(field + " item version", 4));
  if (item_version != 0)
    fail(field + " item version", version_at, "item version " + std::to_string(item_version) + ", expected 0");
  if (n > remaining() / std::max<std::uint64_t>(min_item_bytes, 1))
    fail(field, at,
         "size " + std::to_string(n) + " needs at least " + std::to_string(min_item_bytes) + " bytes each, " +
             std::to_string(remaining()) + " bytes remain");
  return n;
}

template <class T>
std::vector<T> archive_reader::values(const std::string& field) {
  static_assert(std::is_arithmetic_v<T> && !std::is_same_v<T, bool>);
  const std::uint64_t n = size_field(field, sizeof(T), ~std::uint64_t{0});
  std::vector<T> out(static_cast<std::size_t>(n));
  if (n > 0) std::memcpy(out.data(), take(field, out.size() * sizeof(T)), out.size() * sizeof(T));
  return out;
}

template <class T>
std::vector<T> archive_reader::values(const std::string& field, std::uint64_t expected, std::string_view what) {
  const std::size_t at = offset();
  if (remaining() >= 8 && parallax::detail::load_le64(p_) != expected)
    fail(field, at,
         "size " + std::to_string(parallax::detail::load_le64(p_)) + ", expected " + std::to_string(expected) + " (" +
             std::string(what) + ")");
  return values<T>(field);
}

inline void archive_reader::class_info(std::string_view type, const std::string& field) {
  if (std::find(seen_.begin(), seen_.end(), type) != seen_.end()) return;
  const std::size_t at = offset();
  const std::uint8_t tracking = *take(field + " class header", 1);
  if (tracking != 0) fail(field + " class header", at, "tracking flag " + std::to_string(tracking) + ", expected 0");
  const std::uint32_t version = parallax::detail::load_le32(take(field + " class header", 4));
  if (version != 0) fail(field + " class header", at + 1, "class version " + std::to_string(version) + ", expected 0");
  seen_.emplace_back(type);
}

inline void archive_reader::header() {
  static constexpr std::string_view signature = "serialization::archive";
  const std::size_t at = offset();
  const std::uint64_t n = u64("archive signature");
  const auto* s = take("archive signature", n == signature.size() ? signature.size() : 0);
  if (n != signature.size() || std::memcmp(s, signature.data(), signature.size()) != 0)
    fail("archive signature", at, "not a Boost.Serialization binary archive");
  const std::size_t version_at = offset();
  const auto* v = take("archive library version", 2);
  const unsigned newest = boost::archive::BOOST_ARCHIVE_VERSION();
  if (v[0] < 8 || v[0] > newest || v[1] != 0)
    fail("archive library version", version_at,
         "library version " + std::to_string(parallax::detail::load_le16(v)) + " is not one this reader knows (8 to " +
             std::to_string(newest) + ")");
  static constexpr std::uint8_t sizes[] = {4, 8, 4, 8};
  static constexpr const char* names[] = {"size of int", "size of long", "size of float", "size of double"};
  for (std::size_t i = 0; i < 4; ++i) {
    const std::size_t size_at = offset();
    const std::uint8_t size = *take(names[i], 1);
    if (size != sizes[i])
      fail(names[i], size_at, std::to_string(size) + " bytes, this reader reads " + std::to_string(sizes[i]));
  }
  const std::size_t order_at = offset();
  if (parallax::detail::load_le32(take("byte order", 4)) != 1)
    fail("byte order", order_at, "not a little-endian archive");
}

inline void archive_reader::finish() {
  if (remaining() != 0)
    fail("end of payload", offset(), std::to_string(remaining()) + " trailing bytes after the last field");
}

}  // namespace parallax::io::detail
