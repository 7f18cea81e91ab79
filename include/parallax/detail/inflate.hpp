#pragma once
// SPDX-License-Identifier: BSL-1.0
/// gunzip: a small bounds-checked decoder for gzip files (RFC 1952) and the
/// DEFLATE streams inside them (RFC 1951), so that the IDX reader opens .gz
/// datasets without depending on zlib.

#include <parallax/core/error.hpp>
#include <parallax/detail/bytes.hpp>
#include <parallax/detail/crc32.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
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
/// padding included) is rejected. Each member's CRC-32 and ISIZE are checked.
///
/// Throws parallax::error of kind damaged_file "<context>: <cause> (near byte
/// offset N)" on any malformed input: bad
/// magic, a compression method other than 8 (deflate), reserved flags, a
/// truncated header, stream or trailer, a bad stored-block length, an invalid
/// Huffman code or code-length table, a distance reaching before the start of
/// the member, a CRC-32 or size mismatch, or output longer than `max_output`.
/// It never reads outside `compressed`, and the output buffer grows
/// geometrically but never past `max_output` bytes.
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

/// A canonical Huffman code as a lookup table: a primary table indexed by the
/// next `root` bits of the stream (first bit in the lowest position, as
/// DEFLATE packs them), whose entries either name a symbol or point to a
/// subtable indexed by the following bits, for codes longer than `root`.
///
/// Entry layout: bits 0-15 the symbol (or the subtable's offset), bits 16-23
/// the code's full length (or the subtable's index width), bits 24-31 the kind.
class huffman_table {
 public:
  static constexpr std::uint32_t leaf = 0;
  static constexpr std::uint32_t link = 1;
  static constexpr std::uint32_t invalid = 2;
  static constexpr unsigned max_length = 15;
  static constexpr unsigned max_root = 10;

  /// Builds the table for code lengths `lengths` (0 = symbol unused, at most
  /// 15, at most 320 symbols) with a primary table of at most
  /// min(root, max_root) bits. Returns false for an over-subscribed set of
  /// lengths, and for an incomplete set unless `allow_single` and the set is
  /// empty or holds exactly one code of length 1 (RFC 1951 allows one
  /// distance code; zlib's encoder also emits a single literal/length code).
  bool build(std::span<const std::uint8_t> lengths, unsigned root, bool allow_single);

  std::vector<std::uint32_t> entries;
  unsigned root = 0;
  std::uint64_t mask = 0;

 private:
  static constexpr std::uint32_t entry(std::uint32_t kind, std::uint32_t length, std::uint32_t value) {
    return (kind << 24) | (length << 16) | value;
  }
};

inline bool huffman_table::build(std::span<const std::uint8_t> lengths, unsigned root_bits, bool allow_single) {
  std::array<unsigned, max_length + 1> count{};
  if (lengths.size() > 320) return false;
  for (const auto len : lengths) {
    if (len > max_length) return false;
    ++count[len];
  }
  count[0] = 0;
  long left = 1;  // codes still available at the current length
  unsigned longest = 0;
  unsigned total = 0;
  for (unsigned len = 1; len <= max_length; ++len) {
    left = 2 * left - static_cast<long>(count[len]);
    if (left < 0) return false;  // over-subscribed
    if (count[len] > 0) longest = len;
    total += count[len];
  }
  if (left > 0 && !(allow_single && (total == 0 || (total == 1 && longest == 1)))) return false;

  root = std::max(1u, std::min({root_bits, max_root, longest}));
  mask = (std::uint64_t{1} << root) - 1;
  entries.assign(std::size_t{1} << root, entry(invalid, 0, 0));
  if (total == 0) return true;

  // Canonical codes (RFC 1951, 3.2.2), then bit-reversed because the stream
  // delivers a code's first bit in the lowest position of our bit buffer.
  std::array<unsigned, max_length + 1> next{};
  unsigned code = 0;
  for (unsigned len = 1; len <= max_length; ++len) {
    code = (code + count[len - 1]) << 1;
    next[len] = code;
  }
  std::array<std::uint16_t, 320> reversed{};
  std::array<std::uint8_t, std::size_t{1} << max_root> sub_bits{};  // subtable index width per primary entry
  for (std::size_t sym = 0; sym < lengths.size(); ++sym) {
    const unsigned len = lengths[sym];
    if (len == 0) continue;
    unsigned c = next[len]++;
    unsigned r = 0;
    for (unsigned i = 0; i < len; ++i, c >>= 1) r = (r << 1) | (c & 1u);
    reversed[sym] = static_cast<std::uint16_t>(r);
    if (len > root) {
      auto& bits = sub_bits[r & mask];
      bits = static_cast<std::uint8_t>(std::max<unsigned>(bits, len - root));
    }
  }
  for (std::size_t prefix = 0; prefix <= mask; ++prefix) {
    if (sub_bits[prefix] == 0) continue;
    const auto offset = static_cast<std::uint32_t>(entries.size());
    entries[prefix] = entry(link, sub_bits[prefix], offset);
    entries.resize(entries.size() + (std::size_t{1} << sub_bits[prefix]), entry(invalid, 0, 0));
  }
  for (std::size_t sym = 0; sym < lengths.size(); ++sym) {
    const unsigned len = lengths[sym];
    if (len == 0) continue;
    const std::uint32_t value = entry(leaf, len, static_cast<std::uint32_t>(sym));
    const unsigned r = reversed[sym];
    if (len <= root) {
      for (std::size_t i = r; i <= mask; i += std::size_t{1} << len) entries[i] = value;
    } else {
      const std::uint32_t l = entries[r & mask];
      const std::size_t offset = l & 0xffffu;
      const std::size_t size = std::size_t{1} << ((l >> 16) & 0xffu);
      for (std::size_t i = r >> root; i < size; i += std::size_t{1} << (len - root)) entries[offset + i] = value;
    }
  }
  return true;
}

/// The state of one gunzip call: input cursor, bit buffer, output buffer and
/// the current block's tables.
class inflater {
 public:
  inflater(std::span<const std::uint8_t> in, std::size_t max_output, std::string_view context)
      : begin_(in.data()), p_(in.data()), end_(in.data() + in.size()), max_(max_output), context_(context) {}

  std::vector<std::uint8_t> run();

 private:
  // The offset is the input cursor's: the bit buffer may have read up to 8
  // bytes past the bit at fault.
  [[noreturn]] void fail(const std::string& cause) const {
    throw_error(error_kind::damaged_file,
                std::string(context_) + ": " + cause + " (near byte offset " + std::to_string(offset()) + ")");
  }
  std::size_t offset() const { return static_cast<std::size_t>(p_ - begin_); }
  std::size_t remaining() const { return static_cast<std::size_t>(end_ - p_); }

  void member();
  void header(bool first);
  void trailer(std::size_t start);
  void deflate_stream();
  void stored_block();
  void dynamic_tables();
  void huffman_block();

  void refill();
  std::uint32_t bits(unsigned n);
  unsigned decode(const huffman_table& table);
  void reserve_hint();
  void room(std::size_t n);

  const std::uint8_t* begin_;
  const std::uint8_t* p_;
  const std::uint8_t* end_;
  std::uint64_t bitbuf_ = 0;
  unsigned bitcount_ = 0;

  // out_.size() is what has been decoded; room() keeps capacity ahead of it
  // so that push_back and resize never reallocate on their own.
  std::vector<std::uint8_t> out_;
  std::size_t start_ = 0;    // where the current member's output starts
  std::size_t max_;
  std::string_view context_;

  huffman_table lit_, dist_, lengths_;
  bool fixed_ = false;       // lit_ and dist_ hold the fixed code
};

// Base values and extra bits of length symbols 257..285 and distance symbols
// 0..29 (RFC 1951, 3.2.5).
inline constexpr std::array<std::uint16_t, 29> length_base = {
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
inline constexpr std::array<std::uint8_t, 29> length_extra = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                                              2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
inline constexpr std::array<std::uint16_t, 30> distance_base = {
    1,   2,   3,   4,   5,   7,    9,    13,   17,   25,   33,   49,   65,    97,    129,
    193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
inline constexpr std::array<std::uint8_t, 30> distance_extra = {0, 0, 0, 0, 1, 1, 2, 2,  3,  3,  4,  4,  5,  5,  6,
                                                                6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};

inline std::vector<std::uint8_t> gunzip(std::span<const std::uint8_t> compressed, std::size_t max_output,
                                        std::string_view context) {
  return inflater(compressed, max_output, context).run();
}

inline std::vector<std::uint8_t> inflater::run() {
  reserve_hint();
  header(true);
  member();
  while (p_ != end_) {
    header(false);
    member();
  }
  return std::move(out_);
}

// A single-member file ends with the size of its content mod 2^32; use it to
// size the output once. It is only a hint, so a garbled trailer must not make
// us allocate much: it is capped at max_output and at 8 times the input
// (typical data compresses far less; more compressible data just grows the
// buffer a few times). Reserved memory is not touched until written.
inline void inflater::reserve_hint() {
  const std::size_t n = remaining();
  if (n < 18) return;
  std::size_t hint = load_le32(end_ - 4);
  if (n <= std::numeric_limits<std::size_t>::max() / 8) hint = std::min(hint, n * 8);
  hint = std::min(hint, max_);
  out_.reserve(hint);
}

inline void inflater::header(bool first) {
  const std::size_t at = offset();
  if (!first && !is_gzip({p_, remaining()}))
    fail("unexpected bytes after the gzip member at offset " + std::to_string(at) + " (trailing garbage)");
  if (remaining() < 2) fail("not a gzip stream (too short)");
  if (!is_gzip({p_, remaining()})) fail("not a gzip stream (bad magic bytes)");
  if (remaining() < 10) fail("truncated gzip header");
  if (p_[2] != 8) fail("unsupported compression method " + std::to_string(p_[2]) + " (only 8, deflate)");
  const std::uint8_t flags = p_[3];
  if (flags & 0xe0u) fail("reserved gzip header flags are set");
  p_ += 10;
  if (flags & 0x04u) {  // FEXTRA: 2-byte length, then that many bytes
    if (remaining() < 2) fail("truncated gzip header (extra field)");
    const std::size_t xlen = load_le16(p_);
    p_ += 2;
    if (remaining() < xlen) fail("truncated gzip header (extra field)");
    p_ += xlen;
  }
  for (const std::uint8_t field : {std::uint8_t{0x08}, std::uint8_t{0x10}}) {  // FNAME, FCOMMENT: zero-terminated
    if (!(flags & field)) continue;
    const auto* zero = std::find(p_, end_, std::uint8_t{0});
    if (zero == end_) fail("truncated gzip header (file name or comment)");
    p_ = zero + 1;
  }
  if (flags & 0x02u) {  // FHCRC: low 16 bits of the header's CRC-32
    if (remaining() < 2) fail("truncated gzip header (header CRC)");
    const std::uint32_t stored = load_le16(p_);
    const std::uint32_t computed = crc32({begin_ + at, offset() - at}) & 0xffffu;
    if (stored != computed) fail("gzip header CRC mismatch");
    p_ += 2;
  }
}

inline void inflater::member() {
  start_ = out_.size();
  bitbuf_ = 0;
  bitcount_ = 0;
  deflate_stream();
  trailer(start_);
}

inline void inflater::trailer(std::size_t start) {
  if (remaining() < 8) fail("truncated gzip trailer (CRC-32 and size)");
  const std::uint32_t stored_crc = load_le32(p_);
  const std::uint32_t stored_size = load_le32(p_ + 4);
  p_ += 8;
  const std::size_t size = out_.size() - start;
  const std::uint32_t crc = crc32({out_.data() + start, size});
  if (crc != stored_crc)
    fail("CRC-32 mismatch (the trailer says " + std::to_string(stored_crc) + ", the data gives " + std::to_string(crc) +
         ")");
  if (stored_size != static_cast<std::uint32_t>(size))
    fail("size mismatch (the trailer says " + std::to_string(stored_size) + " bytes mod 2^32, decoded " +
         std::to_string(size) + ")");
}

inline void inflater::deflate_stream() {
  for (;;) {
    const std::uint32_t final_block = bits(1);
    const std::uint32_t type = bits(2);
    if (type == 0) {
      stored_block();
    } else if (type == 1) {
      if (!fixed_) {
        std::array<std::uint8_t, 320> lens{};
        std::fill(lens.begin(), lens.begin() + 144, std::uint8_t{8});
        std::fill(lens.begin() + 144, lens.begin() + 256, std::uint8_t{9});
        std::fill(lens.begin() + 256, lens.begin() + 280, std::uint8_t{7});
        std::fill(lens.begin() + 280, lens.begin() + 288, std::uint8_t{8});
        std::fill(lens.begin() + 288, lens.begin() + 320, std::uint8_t{5});
        lit_.build({lens.data(), 288}, 10, false);
        dist_.build({lens.data() + 288, 32}, 8, false);
        fixed_ = true;
      }
      huffman_block();
    } else if (type == 2) {
      dynamic_tables();
      huffman_block();
    } else {
      fail("invalid deflate block type 3");
    }
    if (final_block) break;
  }
  // The trailer starts at the next byte boundary; give back whole bytes that
  // the bit buffer read ahead.
  p_ -= bitcount_ >> 3;
  bitbuf_ = 0;
  bitcount_ = 0;
}

inline void inflater::stored_block() {
  p_ -= bitcount_ >> 3;  // drop the partial byte, return the read-ahead
  bitbuf_ = 0;
  bitcount_ = 0;
  if (remaining() < 4) fail("truncated deflate stream (stored block header)");
  const std::size_t len = load_le16(p_);
  const std::size_t nlen = load_le16(p_ + 2);
  if (len != (~nlen & 0xffffu)) fail("stored block length does not match its complement");
  p_ += 4;
  if (remaining() < len) fail("truncated deflate stream (stored block data)");
  room(len);
  out_.insert(out_.end(), p_, p_ + len);
  p_ += len;
}

inline void inflater::dynamic_tables() {
  fixed_ = false;
  const unsigned nlit = bits(5) + 257;
  const unsigned ndist = bits(5) + 1;
  const unsigned ncode = bits(4) + 4;
  if (nlit > 286 || ndist > 30) fail("too many literal/length or distance codes in a dynamic block");
  static constexpr std::array<std::uint8_t, 19> order = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};
  std::array<std::uint8_t, 19> code_lengths{};
  for (unsigned i = 0; i < ncode; ++i) code_lengths[order[i]] = static_cast<std::uint8_t>(bits(3));
  if (!lengths_.build(code_lengths, 7, false)) fail("invalid code-length code in a dynamic block");

  std::array<std::uint8_t, 320> lens{};
  const unsigned total = nlit + ndist;
  for (unsigned n = 0; n < total;) {
    const unsigned sym = decode(lengths_);
    if (sym < 16) {
      lens[n++] = static_cast<std::uint8_t>(sym);
      continue;
    }
    std::uint8_t value = 0;
    unsigned repeat = 0;
    if (sym == 16) {
      if (n == 0) fail("code-length repeat with no previous length");
      value = lens[n - 1];
      repeat = 3 + bits(2);
    } else if (sym == 17) {
      repeat = 3 + bits(3);
    } else {
      repeat = 11 + bits(7);
    }
    if (repeat > total - n) fail("code-length repeat runs past the end of the code lengths");
    std::fill_n(lens.begin() + n, repeat, value);
    n += repeat;
  }
  if (lens[256] == 0) fail("dynamic block has no end-of-block code");
  if (!lit_.build({lens.data(), nlit}, 10, true)) fail("invalid literal/length code lengths (over-subscribed or incomplete)");
  if (!dist_.build({lens.data() + nlit, ndist}, 8, true)) fail("invalid distance code lengths (over-subscribed or incomplete)");
}

inline void inflater::huffman_block() {
  for (;;) {
    if (bitcount_ < 48) refill();  // with 8+ input bytes left, one symbol needs no further refill
    const unsigned sym = decode(lit_);
    if (sym < 256) {
      if (out_.size() == out_.capacity()) room(1);
      out_.push_back(static_cast<std::uint8_t>(sym));
      continue;
    }
    if (sym == 256) return;
    const unsigned li = sym - 257;
    if (li >= length_base.size()) fail("invalid literal/length symbol " + std::to_string(sym));
    const std::size_t len = length_base[li] + bits(length_extra[li]);
    const unsigned di = decode(dist_);
    if (di >= distance_base.size()) fail("invalid distance symbol " + std::to_string(di));
    const std::size_t dist = distance_base[di] + bits(distance_extra[di]);
    const std::size_t pos = out_.size();
    if (dist > pos - start_)
      fail("distance " + std::to_string(dist) + " is too far back (only " + std::to_string(pos - start_) +
           " bytes decoded)");
    room(len);
    out_.resize(pos + len);
    std::uint8_t* d = out_.data() + pos;
    const std::uint8_t* s = d - dist;
    if (dist >= len) {
      std::memcpy(d, s, len);
    } else {
      for (std::size_t i = 0; i < len; ++i) d[i] = s[i];  // overlapping: repeats the last `dist` bytes
    }
  }
}

// Tops the bit buffer up to at least 56 bits when input allows. Bits above
// bitcount_ may already hold the next input bytes; OR-ing them in again is
// harmless because they are the same bits.
inline void inflater::refill() {
  if (remaining() >= 8) {
    bitbuf_ |= load_le64(p_) << bitcount_;
    p_ += (63 - bitcount_) >> 3;
    bitcount_ |= 56;
  } else {
    while (bitcount_ < 56 && p_ != end_) {
      bitbuf_ |= std::uint64_t{*p_++} << bitcount_;
      bitcount_ += 8;
    }
  }
}

inline std::uint32_t inflater::bits(unsigned n) {
  if (bitcount_ < n) {
    refill();
    if (bitcount_ < n) fail("truncated deflate stream");
  }
  const auto v = static_cast<std::uint32_t>(bitbuf_ & ((std::uint64_t{1} << n) - 1));
  bitbuf_ >>= n;
  bitcount_ -= n;
  return v;
}

inline unsigned inflater::decode(const huffman_table& table) {
  if (bitcount_ < huffman_table::max_length) refill();
  std::uint32_t e = table.entries[bitbuf_ & table.mask];
  if ((e >> 24) == huffman_table::link) {
    const std::uint64_t sub = (std::uint64_t{1} << ((e >> 16) & 0xffu)) - 1;
    e = table.entries[(e & 0xffffu) + ((bitbuf_ >> table.root) & sub)];
  }
  const unsigned len = (e >> 16) & 0xffu;
  // Past the end of input the missing bits read as zeros; a code that needs
  // them is a truncation, not a bad code.
  if ((e >> 24) != huffman_table::leaf)
    fail(bitcount_ < huffman_table::max_length ? "truncated deflate stream" : "invalid Huffman code in deflate stream");
  if (len > bitcount_) fail("truncated deflate stream");
  bitbuf_ >>= len;
  bitcount_ -= len;
  return e & 0xffffu;
}

// Makes room for n more output bytes: grows geometrically, never past max_.
inline void inflater::room(std::size_t n) {
  const std::size_t size = out_.size();
  if (n <= out_.capacity() - size) return;
  if (n > max_ - size) fail("output is larger than the limit of " + std::to_string(max_) + " bytes");
  std::size_t capacity = std::max({out_.capacity(), size + n, std::size_t{1} << 15});
  capacity = capacity <= max_ / 2 ? 2 * capacity : max_;
  out_.reserve(capacity);  // exactly `capacity`; push_back and insert would double
}

}  // namespace parallax::detail
