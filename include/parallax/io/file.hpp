#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Durable files for checkpoints: a checksummed container (magic, version,
/// element code, payload size, checksum of the payload) written atomically —
/// to a temporary file in the same folder, flushed and synced, then renamed
/// over the final name, and the folder synced — and read back with every
/// field checked, so that a truncated, corrupted or foreign file is a clear
/// error naming the file and the cause.

#include <parallax/core/error.hpp>
#include <parallax/detail/bytes.hpp>

#include <xxhash.h>
#include <zlib.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <new>
#include <ostream>
#include <span>
#include <streambuf>
#include <string>
#include <vector>

namespace parallax::io {

/// The fixed-size header in front of every checkpoint file.
struct file_header {
  static constexpr std::array<char, 8> magic = {'P', 'L', 'X', 'C', 'K', 'P', 'T', '\0'};
  std::uint32_t version = 0;
  std::uint32_t element = 0;  ///< element type code of the tensors inside (0: none)
  std::uint64_t payload_bytes = 0;
  std::uint32_t checksum = 0;  ///< of the payload, as payload_checksum(version) says
};
inline constexpr std::size_t file_header_bytes = 8 + 4 + 4 + 8 + 4;

/// The checksums a file's header may hold at byte offset 24.
enum class checksum_kind {
  crc32,       ///< CRC-32 (zlib's crc32_z): format version 1
  xxh3_low32,  ///< the low 32 bits of XXH3-64 (xxHash): format version 2 on
};

/// Format version 2 replaced CRC-32 by XXH3, 3 times faster here (12.9
/// against 4.3 GB/s, benchmarks/README.md), so that checksumming no longer
/// halves checkpoint writes. The layout stayed: 32 bits at byte offset 24.
inline constexpr std::uint32_t first_xxh3_version = 2;

/// The checksum a file of format `version` carries.
constexpr checksum_kind payload_checksum(std::uint32_t version) {
  return version >= first_xxh3_version ? checksum_kind::xxh3_low32 : checksum_kind::crc32;
}

/// The checksum of `bytes` of `kind`.
std::uint32_t checksum_of(std::span<const char> bytes, checksum_kind kind);

/// Writes `path` atomically: `write_payload(out)` streams the payload into an
/// std::ostream that checksums it on the way to a temporary file; the header
/// is completed, the file synced and renamed over `path`, the folder synced.
/// A crash at any moment leaves either the old file or the new one, never a
/// mix. Returns the header written. Failures (cannot create, write, sync or
/// rename; an exception of write_payload) throw kind io.
file_header write_atomically(const std::string& path, std::uint32_t version, std::uint32_t element,
                             const std::function<void(std::ostream&)>& write_payload);

/// Reads and checks a file written by write_atomically: magic, version (at
/// most `newest_version`), size and the checksum of its version. Returns the
/// header and the payload.
/// A file that cannot be opened or read throws kind io; a truncated, corrupt
/// or foreign file, or one of a newer format, kind damaged_file.
std::vector<char> read_checked(const std::string& path, std::uint32_t newest_version, file_header* header = nullptr);

/// The checks of read_checked on a whole file held in memory (`path` names
/// it in messages). Returns the payload, a view into `file`.
std::span<const char> check_file(std::span<const char> file, const std::string& path, std::uint32_t newest_version,
                                 file_header* header = nullptr);

/// Syncs a folder so that renames inside it are durable.
void sync_directory(const std::string& dir);

// ---------------------------------------------------------------------------

namespace detail {

inline std::string errno_text() { return std::strerror(errno); }

/// A checksum of `kind` over bytes fed in pieces.
class payload_hasher {
 public:
  explicit payload_hasher(checksum_kind kind) : kind_(kind) {
    if (kind_ == checksum_kind::crc32) return;
    xxh3_.reset(XXH3_createState());
    if (!xxh3_ || XXH3_64bits_reset(xxh3_.get()) != XXH_OK) throw std::bad_alloc();
  }
  void update(const char* data, std::size_t n) {
    if (kind_ == checksum_kind::crc32) crc_ = crc32_z(crc_, reinterpret_cast<const Bytef*>(data), n);
    else XXH3_64bits_update(xxh3_.get(), data, n);
  }
  std::uint32_t value() const {
    if (kind_ == checksum_kind::crc32) return static_cast<std::uint32_t>(crc_);
    return static_cast<std::uint32_t>(XXH3_64bits_digest(xxh3_.get()));
  }

 private:
  struct xxh3_free {
    void operator()(XXH3_state_t* s) const { XXH3_freeState(s); }
  };
  checksum_kind kind_;
  unsigned long crc_ = 0;  // crc32_z's initial value
  std::unique_ptr<XXH3_state_t, xxh3_free> xxh3_;
};

/// A streambuf that checksums and writes to a file descriptor through a
/// buffer.
class checksum_file_buffer : public std::streambuf {
 public:
  checksum_file_buffer(int fd, checksum_kind kind) : fd_(fd), buffer_(std::size_t{1} << 20), hasher_(kind) {
    setp(buffer_.data(), buffer_.data() + buffer_.size());
  }
  std::uint32_t checksum() const { return hasher_.value(); }
  std::uint64_t bytes() const { return bytes_; }
  bool failed() const { return failed_; }
  int sync() override { return flush_buffer() ? 0 : -1; }

 protected:
  int_type overflow(int_type ch) override {
    if (!flush_buffer()) return traits_type::eof();
    if (!traits_type::eq_int_type(ch, traits_type::eof())) {
      *pptr() = traits_type::to_char_type(ch);
      pbump(1);
    }
    return traits_type::not_eof(ch);
  }
  std::streamsize xsputn(const char* s, std::streamsize n) override {
    if (n >= static_cast<std::streamsize>(buffer_.size())) {
      // Large blocks (tensors) go straight to the file.
      if (!flush_buffer() || !write_all(s, static_cast<std::size_t>(n))) return 0;
      return n;
    }
    return std::streambuf::xsputn(s, n);
  }

 private:
  bool write_all(const char* s, std::size_t n) {
    hasher_.update(s, n);
    bytes_ += n;
    while (n > 0) {
      const ssize_t w = ::write(fd_, s, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        failed_ = true;
        return false;
      }
      s += w;
      n -= static_cast<std::size_t>(w);
    }
    return true;
  }
  bool flush_buffer() {
    const auto n = static_cast<std::size_t>(pptr() - pbase());
    if (n > 0 && !write_all(pbase(), n)) return false;
    setp(buffer_.data(), buffer_.data() + buffer_.size());
    return true;
  }
  int fd_;
  std::vector<char> buffer_;
  payload_hasher hasher_;  ///< over the bytes so far
  std::uint64_t bytes_ = 0;
  bool failed_ = false;
};

/// The header's bytes: the magic, then each field little-endian.
inline std::array<std::uint8_t, file_header_bytes> encode(const file_header& h) {
  std::array<std::uint8_t, file_header_bytes> out{};
  std::memcpy(out.data(), file_header::magic.data(), 8);
  parallax::detail::store_le32(out.data() + 8, h.version);
  parallax::detail::store_le32(out.data() + 12, h.element);
  parallax::detail::store_le64(out.data() + 16, h.payload_bytes);
  parallax::detail::store_le32(out.data() + 24, h.checksum);
  return out;
}

/// Reads back what encode wrote after the magic.
inline file_header decode(const std::array<std::uint8_t, file_header_bytes>& raw) {
  file_header h;
  h.version = parallax::detail::load_le32(raw.data() + 8);
  h.element = parallax::detail::load_le32(raw.data() + 12);
  h.payload_bytes = parallax::detail::load_le64(raw.data() + 16);
  h.checksum = parallax::detail::load_le32(raw.data() + 24);
  return h;
}

/// Checks the header of a file of `file_size` bytes: magic, version (at
/// most `newest_version`) and payload size, before anything is allocated
/// for the payload. `where` starts every message.
inline file_header check_header(const std::array<std::uint8_t, file_header_bytes>& raw, std::uint64_t file_size,
                                const std::string& where, std::uint32_t newest_version) {
  PARALLAX_CHECK_KIND(std::memcmp(raw.data(), file_header::magic.data(), 8) == 0, error_kind::damaged_file,
                      where + ": field 'magic' at byte offset 0: not a parallax checkpoint (wrong magic number)");
  const file_header h = decode(raw);
  PARALLAX_CHECK_KIND(h.version >= 1 && h.version <= newest_version, error_kind::damaged_file,
                      where + ": field 'version' at byte offset 8: format version " + std::to_string(h.version) +
                          " is unknown (this parallax reads up to " + std::to_string(newest_version) + ")");
  PARALLAX_CHECK_KIND(file_size - file_header_bytes == h.payload_bytes, error_kind::damaged_file,
                      where + ": field 'payload size' at byte offset 16: truncated or padded: the header announces " +
                          std::to_string(h.payload_bytes) + " payload bytes, the file has " +
                          std::to_string(file_size - file_header_bytes));
  return h;
}

/// Checks the payload against the header's checksum, of the kind its
/// version says.
inline void check_checksum(std::span<const char> payload, const file_header& h, const std::string& where) {
  const checksum_kind kind = payload_checksum(h.version);
  PARALLAX_CHECK_KIND(checksum_of(payload, kind) == h.checksum, error_kind::damaged_file,
                      where + (kind == checksum_kind::crc32
                                   ? ": field 'crc32' at byte offset 24: corrupted: CRC-32 mismatch"
                                   : ": field 'checksum' at byte offset 24: corrupted: XXH3 checksum mismatch"));
}

/// "checkpoint file '<path>'": the start of every message about one file.
inline std::string file_where(const std::string& path) { return "checkpoint file '" + path + "'"; }

/// A file of `size` bytes holds at least the header: otherwise damaged_file.
inline void check_size(std::uint64_t size, const std::string& where) {
  PARALLAX_CHECK_KIND(size >= file_header_bytes, error_kind::damaged_file,
                      where + ": truncated (" + std::to_string(size) + " bytes, shorter than the header)");
}

}  // namespace detail

inline std::uint32_t checksum_of(std::span<const char> bytes, checksum_kind kind) {
  if (kind == checksum_kind::crc32)
    return static_cast<std::uint32_t>(crc32_z(0, reinterpret_cast<const Bytef*>(bytes.data()), bytes.size()));
  return static_cast<std::uint32_t>(XXH3_64bits(bytes.data(), bytes.size()));
}

inline void sync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;  // best effort: some file systems do not allow it
  ::fsync(fd);
  ::close(fd);
}

inline file_header write_atomically(const std::string& path, std::uint32_t version, std::uint32_t element,
                                    const std::function<void(std::ostream&)>& write_payload) {
  namespace fs = std::filesystem;
  const fs::path target(path);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::string temp_name = ".";  // built piece by piece: GCC 12 warns falsely on "." + std::string&&
  temp_name += target.filename().string();
  temp_name += ".tmp.";
  temp_name += std::to_string(::getpid());
  const fs::path temp = dir / temp_name;
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  PARALLAX_CHECK_KIND(fd >= 0, error_kind::io,
                      "checkpoint: cannot create '" + temp.string() + "': " + detail::errno_text());
  file_header header{version, element, 0, 0};
  bool ok = true;
  std::string cause;
  try {
    const auto blank = detail::encode(header);
    ok = ::write(fd, blank.data(), blank.size()) == static_cast<ssize_t>(blank.size());
    if (!ok) cause = detail::errno_text();
    if (ok) {
      detail::checksum_file_buffer buffer(fd, payload_checksum(version));
      std::ostream out(&buffer);
      write_payload(out);
      out.flush();
      ok = !buffer.failed() && out.good();
      if (!ok) cause = "write failed: " + detail::errno_text();
      header.payload_bytes = buffer.bytes();
      header.checksum = buffer.checksum();
    }
    if (ok) {
      const auto full = detail::encode(header);
      ok = ::pwrite(fd, full.data(), full.size(), 0) == static_cast<ssize_t>(full.size()) && ::fsync(fd) == 0;
      if (!ok) cause = detail::errno_text();
    }
  } catch (const std::exception& e) {
    ok = false;
    cause = e.what();
  }
  ::close(fd);
  if (!ok) {
    std::error_code ignored;
    fs::remove(temp, ignored);
    parallax::detail::throw_error(error_kind::io, "checkpoint: writing '" + path + "' failed: " + cause);
  }
  std::error_code ec;
  fs::rename(temp, target, ec);
  if (ec) {
    fs::remove(temp, ec);
    parallax::detail::throw_error(error_kind::io,
                                  "checkpoint: cannot rename '" + temp.string() + "' to '" + path + "': " + ec.message());
  }
  sync_directory(dir.string());
  return header;
}

inline std::vector<char> read_checked(const std::string& path, std::uint32_t newest_version, file_header* header) {
  const std::string where = detail::file_where(path);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  PARALLAX_CHECK_KIND(fd >= 0, error_kind::io, where + ": cannot open: " + detail::errno_text());
  struct closer {
    int fd;
    ~closer() { ::close(fd); }
  } close_at_exit{fd};
  auto read_all = [&](char* into, std::uint64_t n) {
    std::uint64_t got = 0;
    while (got < n) {
      const ssize_t r = ::read(fd, into + got, n - got);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) break;
      got += static_cast<std::uint64_t>(r);
    }
    return got;
  };
  struct stat st {};
  PARALLAX_CHECK_KIND(::fstat(fd, &st) == 0, error_kind::io, where + ": cannot stat: " + detail::errno_text());
  const auto size = static_cast<std::uint64_t>(st.st_size);
  detail::check_size(size, where);
  std::array<std::uint8_t, file_header_bytes> raw{};
  PARALLAX_CHECK_KIND(read_all(reinterpret_cast<char*>(raw.data()), raw.size()) == raw.size(), error_kind::io,
                      where + ": cannot read the header");
  // The size is checked against the file before anything is allocated.
  const file_header h = detail::check_header(raw, size, where, newest_version);
  std::vector<char> payload(h.payload_bytes);
  PARALLAX_CHECK_KIND(read_all(payload.data(), payload.size()) == payload.size(), error_kind::io,
                      where + ": short read");
  detail::check_checksum(payload, h, where);
  if (header) *header = h;
  return payload;
}

inline std::span<const char> check_file(std::span<const char> file, const std::string& path,
                                        std::uint32_t newest_version, file_header* header) {
  const std::string where = detail::file_where(path);
  detail::check_size(file.size(), where);
  std::array<std::uint8_t, file_header_bytes> raw{};
  std::memcpy(raw.data(), file.data(), raw.size());
  const file_header h = detail::check_header(raw, file.size(), where, newest_version);
  const auto payload = file.subspan(file_header_bytes);
  detail::check_checksum(payload, h, where);
  if (header) *header = h;
  return payload;
}

}  // namespace parallax::io
