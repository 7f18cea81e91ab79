#pragma once
// SPDX-License-Identifier: BSL-1.0
/// gunzip: a whole gzip file (RFC 1952) held in memory, decompressed by zlib
/// with a bound on the output and errors that name the cause and the byte
/// offset, for the IDX reader's .gz datasets.

#include <parallax/core/error.hpp>
#include <parallax/detail/bytes.hpp>

#include <zlib.h>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <new>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace parallax::detail {

/// True when `bytes` starts with the gzip magic number 1f 8b.
bool is_gzip(std::span<const std::uint8_t> bytes) noexcept;

/// Decompresses a whole gzip file held in memory.
///
/// Concatenated members (what `cat a.gz b.gz` makes) are supported and decode
/// to the concatenation of their contents, as `gzip -d` does; every byte after
/// a member must start another complete member, so trailing garbage (zero
/// padding included) is rejected. zlib checks each member's header CRC (when
/// present), CRC-32 and ISIZE.
///
/// Throws parallax::error of kind damaged_file "<context>: <cause> (near byte
/// offset N)" on any malformed input: not gzip, a compression method other
/// than 8 (deflate), reserved flags, a truncated header or stream, invalid
/// deflate data (zlib's diagnosis is the cause), a CRC-32 or size mismatch
/// (both values named), trailing garbage, or output longer than
/// `max_output`. The output buffer grows geometrically but never past
/// `max_output` bytes, so a small hostile file cannot make it allocate more.
/// @code
///   auto raw = parallax::detail::gunzip(file_bytes, std::size_t{1} << 31);
/// @endcode
std::vector<std::uint8_t> gunzip(std::span<const std::uint8_t> compressed, std::size_t max_output,
                                 std::string_view context = "gunzip()");

// ---------------------------------------------------------------------------
// Implementation
// ---------------------------------------------------------------------------

inline bool is_gzip(std::span<const std::uint8_t> bytes) noexcept {
  return bytes.size() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b;
}

/// One gunzip call: the zlib stream, the input and the output, and the
/// member being decoded.
class gzip_reader {
 public:
  gzip_reader(std::span<const std::uint8_t> in, std::size_t max_output, std::string_view context)
      : in_(in), max_(max_output), context_(context) {
    // windowBits 15 + 16: a gzip wrapper only (no zlib header, no raw deflate).
    const int rc = inflateInit2(&z_, 15 + 16);
    if (rc == Z_MEM_ERROR) throw std::bad_alloc();
    if (rc != Z_OK)
      throw_error(error_kind::io, std::string(context_) + ": zlib's inflateInit2 failed (" + std::to_string(rc) + ")");
  }
  ~gzip_reader() { inflateEnd(&z_); }
  gzip_reader(const gzip_reader&) = delete;
  gzip_reader& operator=(const gzip_reader&) = delete;

  std::vector<std::uint8_t> run();

 private:
  [[noreturn]] void fail(const std::string& cause, std::size_t at) const {
    throw_error(error_kind::damaged_file,
                std::string(context_) + ": " + cause + " (near byte offset " + std::to_string(at) + ")");
  }
  std::size_t consumed() const { return used_ + (given_ - z_.avail_in); }

  void check_member_start();
  void member();
  void feed();
  void grow();
  void data_error();

  std::span<const std::uint8_t> in_;
  std::size_t max_;
  std::string_view context_;
  z_stream z_{};
  gz_header head_{};
  std::size_t used_ = 0;   // input bytes handed to zlib before the current piece
  std::size_t given_ = 0;  // size of the current piece
  std::size_t member_start_ = 0;
  std::size_t member_out_ = 0;  // where the current member's output starts
  // out_.size() is what zlib may write into; written_ what it has written.
  std::vector<std::uint8_t> out_;
  std::size_t written_ = 0;
};

inline std::vector<std::uint8_t> gunzip(std::span<const std::uint8_t> compressed, std::size_t max_output,
                                        std::string_view context) {
  return gzip_reader(compressed, max_output, context).run();
}

inline std::vector<std::uint8_t> gzip_reader::run() {
  // A single-member file ends with the size of its content mod 2^32; use it to
  // size the output once. It is only a hint, so a garbled trailer must not make
  // us allocate much: it is capped at max_output and at 8 times the input
  // (typical data compresses far less; more compressible data just grows the
  // buffer a few times).
  if (in_.size() >= 18) {
    std::size_t hint = load_le32(in_.data() + in_.size() - 4);
    if (in_.size() <= std::numeric_limits<std::size_t>::max() / 8) hint = std::min(hint, in_.size() * 8);
    out_.reserve(std::min(hint, max_));
  }
  do {
    member();
  } while (consumed() < in_.size());
  out_.resize(written_);
  return std::move(out_);
}

// The fixed fields zlib would also reject, checked here first for messages
// that say which field and value.
inline void gzip_reader::check_member_start() {
  const std::span<const std::uint8_t> rest = in_.subspan(member_start_);
  if (member_start_ > 0 && !is_gzip(rest))
    fail("unexpected bytes after the gzip member at offset " + std::to_string(member_start_) + " (trailing garbage)",
         member_start_);
  if (rest.size() < 2) fail("not a gzip stream (too short)", member_start_);
  if (!is_gzip(rest)) fail("not a gzip stream (bad magic bytes)", member_start_);
  if (rest.size() >= 3 && rest[2] != Z_DEFLATED)
    fail("unsupported compression method " + std::to_string(rest[2]) + " (only 8, deflate)", member_start_ + 2);
  if (rest.size() >= 4 && (rest[3] & 0xe0u)) fail("reserved gzip header flags are set", member_start_ + 3);
}

inline void gzip_reader::member() {
  member_start_ = consumed();
  check_member_start();
  if (member_start_ > 0 && inflateReset(&z_) != Z_OK) fail("zlib's inflateReset failed", member_start_);
  head_ = gz_header{};
  inflateGetHeader(&z_, &head_);  // head_.done tells a truncated header from a truncated stream
  member_out_ = written_;
  for (;;) {
    if (z_.avail_in == 0) feed();
    if (written_ == out_.size() && written_ < max_) grow();
    // At the limit a member may still hold its trailer and no more output:
    // zlib gets one spare byte, and writing it is the error.
    std::uint8_t spare = 0;
    const bool at_limit = written_ == out_.size();
    const std::size_t room = at_limit ? 1 : std::min<std::size_t>(out_.size() - written_, UINT_MAX);
    z_.next_out = at_limit ? &spare : out_.data() + written_;
    z_.avail_out = static_cast<uInt>(room);
    const int rc = inflate(&z_, Z_NO_FLUSH);
    if (at_limit && z_.avail_out == 0)
      fail("output is larger than the limit of " + std::to_string(max_) + " bytes", consumed());
    if (!at_limit) written_ += room - z_.avail_out;
    if (rc == Z_STREAM_END) return;
    if (rc == Z_DATA_ERROR || rc == Z_NEED_DICT) data_error();
    if (rc == Z_MEM_ERROR) throw std::bad_alloc();
    if (rc != Z_OK && rc != Z_BUF_ERROR)
      throw_error(error_kind::io, std::string(context_) + ": zlib's inflate failed (" + std::to_string(rc) + ")");
    // Z_OK or Z_BUF_ERROR: zlib wants more input or more room. With all the
    // input given and room left, the member ends before its end.
    if (z_.avail_in == 0 && consumed() == in_.size() && z_.avail_out > 0) {
      if (head_.done != 1) fail("truncated gzip header", consumed());
      fail("truncated gzip stream: the member that starts at byte offset " + std::to_string(member_start_) +
               " ends early (after " + std::to_string(written_ - member_out_) + " bytes of output)",
           consumed());
    }
  }
}

// zlib's counts are 32-bit: hand it the input in pieces of at most 4 GiB.
inline void gzip_reader::feed() {
  used_ += given_;
  given_ = std::min<std::size_t>(in_.size() - used_, UINT_MAX);
  z_.next_in = const_cast<Bytef*>(in_.data() + used_);  // zlib does not write through next_in
  z_.avail_in = static_cast<uInt>(given_);
}

// Makes room for more output, below max_: grows geometrically, never past
// max_. Capacity reserved from the size hint is used first.
inline void gzip_reader::grow() {
  std::size_t capacity = std::max(out_.capacity(), std::size_t{1} << 15);
  if (capacity <= written_) capacity = written_ <= max_ / 2 ? 2 * written_ : max_;
  capacity = std::min(capacity, max_);
  out_.reserve(capacity);  // exactly `capacity`: resize alone may double
  out_.resize(capacity);
}

// zlib's message names the fault; the trailer's two checks get the values.
inline void gzip_reader::data_error() {
  const std::string zlib_cause = z_.msg != nullptr ? z_.msg : "invalid data";
  const std::size_t at = consumed();
  // zlib has just read the 4-byte field it compares; the trailer is CRC-32
  // then ISIZE.
  if (zlib_cause == "incorrect data check" && at >= 4) {
    fail("CRC-32 mismatch (the trailer says " + std::to_string(load_le32(in_.data() + at - 4)) +
             ", the data gives " + std::to_string(z_.adler) + ")",
         std::min(at + 4, in_.size()));
  }
  if (zlib_cause == "incorrect length check" && at >= 4) {
    fail("size mismatch (the trailer says " + std::to_string(load_le32(in_.data() + at - 4)) +
             " bytes mod 2^32, decoded " + std::to_string(written_ - member_out_) + ")",
         at);
  }
  if (zlib_cause == "header crc mismatch") fail("gzip header CRC mismatch", at);
  fail("invalid deflate stream: " + zlib_cause, at);
}

}  // namespace parallax::detail
