// SPDX-License-Identifier: BSL-1.0
// Suite io: the checksummed, atomically written checkpoint container.

#include <parallax/io/file.hpp>

#include <doctest/doctest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {
struct temp_folder {
  fs::path path = fs::temp_directory_path() / ("parallax-file-" + std::to_string(::getpid()));
  temp_folder() { fs::create_directories(path); }
  ~temp_folder() { fs::remove_all(path); }
};
}  // namespace

TEST_CASE("file: written atomically, read back checked") {
  temp_folder dir;
  const auto path = (dir.path / "a.bin").string();
  const std::string payload(3'000'000, 'x');
  const auto header = parallax::io::write_atomically(path, 1, 7, [&](std::ostream& out) { out << payload; });
  CHECK(header.payload_bytes == payload.size());
  parallax::io::file_header read{};
  const auto back = parallax::io::read_checked(path, 1, &read);
  CHECK(std::string(back.begin(), back.end()) == payload);
  CHECK(read.element == 7);
  CHECK(read.checksum == header.checksum);
  // Nothing but the file itself is left.
  CHECK(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()) == 1);
}

TEST_CASE("file: the layout is pinned byte for byte, so files written before still load") {
  temp_folder dir;
  const auto path = (dir.path / "golden.bin").string();
  const std::vector<unsigned char> golden = {
      'P',  'L',  'X',  'C',  'K', 'P', 'T', 0,         // magic
      1,    0,    0,    0,                               // format version, little-endian
      7,    0,    0,    0,                               // element code
      9,    0,    0,    0,    0,   0,   0,   0,          // payload bytes
      0x26, 0x39, 0xF4, 0xCB,                            // CRC-32 of the payload
      '1',  '2',  '3',  '4',  '5', '6', '7', '8', '9'};  // payload
  const auto header = parallax::io::write_atomically(path, 1, 7, [](std::ostream& out) { out << "123456789"; });
  CHECK(header.checksum == 0xCBF43926u);
  std::ifstream in(path, std::ios::binary);
  const std::vector<unsigned char> written((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(written == golden);
  // A file with exactly these bytes, however it was made, reads back.
  const auto old_path = (dir.path / "old.bin").string();
  std::ofstream(old_path, std::ios::binary).write(reinterpret_cast<const char*>(golden.data()),
                                                  static_cast<std::streamsize>(golden.size()));
  parallax::io::file_header read{};
  const auto back = parallax::io::read_checked(old_path, 1, &read);
  CHECK(std::string(back.begin(), back.end()) == "123456789");
  CHECK(read.version == 1);
  CHECK(read.element == 7);
  CHECK(read.payload_bytes == 9);
  CHECK(read.checksum == 0xCBF43926u);
}

TEST_CASE("file: format 2 carries XXH3's low 32 bits where format 1 carried CRC-32") {
  temp_folder dir;
  const auto path = (dir.path / "golden2.bin").string();
  const std::vector<unsigned char> golden = {
      'P',  'L',  'X',  'C',  'K', 'P', 'T', 0,         // magic
      2,    0,    0,    0,                               // format version, little-endian
      7,    0,    0,    0,                               // element code
      9,    0,    0,    0,    0,   0,   0,   0,          // payload bytes
      0xFF, 0x7D, 0xA1, 0x67,                            // low 32 bits of XXH3-64 0x72DCB18B67A17DFF
      '1',  '2',  '3',  '4',  '5', '6', '7', '8', '9'};  // payload
  CHECK(parallax::io::payload_checksum(1) == parallax::io::checksum_kind::crc32);
  CHECK(parallax::io::payload_checksum(2) == parallax::io::checksum_kind::xxh3_low32);
  const std::string text = "123456789";
  CHECK(parallax::io::checksum_of(text, parallax::io::checksum_kind::crc32) == 0xCBF43926u);
  CHECK(parallax::io::checksum_of(text, parallax::io::checksum_kind::xxh3_low32) == 0x67A17DFFu);
  const auto header = parallax::io::write_atomically(path, 2, 7, [&](std::ostream& out) { out << text; });
  CHECK(header.checksum == 0x67A17DFFu);
  std::ifstream in(path, std::ios::binary);
  const std::vector<unsigned char> written((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(written == golden);
  parallax::io::file_header read{};
  const auto back = parallax::io::read_checked(path, 2, &read);
  CHECK(std::string(back.begin(), back.end()) == text);
  CHECK(read.version == 2);
  // A reader of format 1 refuses it by its version, before any checksum.
  CHECK_THROWS_WITH_AS(parallax::io::read_checked(path, 1),
                       doctest::Contains("field 'version' at byte offset 8: format version 2 is unknown (this parallax reads up to 1)"),
                       parallax::error);
  // Fed in pieces, through the writer's buffer, large blocks and small: the same checksum as in one piece.
  for (const std::uint32_t version : {1u, 2u}) {
    CAPTURE(version);
    std::string big(3'000'017, '\0');
    for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 131) >> 3);
    const auto h = parallax::io::write_atomically(path, version, 0, [&](std::ostream& out) {
      out.write(big.data(), 5);
      out.write(big.data() + 5, 2'000'000);
      out << big.substr(2'000'005);
    });
    CHECK(h.checksum == parallax::io::checksum_of(big, parallax::io::payload_checksum(version)));
    CHECK(parallax::io::read_checked(path, 2).size() == big.size());
  }
  // Damage in a format-2 payload names its checksum.
  {
    std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(100);
    f.put('!');
  }
  CHECK_THROWS_WITH_AS(parallax::io::read_checked(path, 2),
                       doctest::Contains("field 'checksum' at byte offset 24: corrupted: XXH3 checksum mismatch"),
                       parallax::error);
}

TEST_CASE("file: a failing writer leaves the old file and no temporary") {
  temp_folder dir;
  const auto path = (dir.path / "b.bin").string();
  parallax::io::write_atomically(path, 1, 0, [](std::ostream& out) { out << "old"; });
  CHECK_THROWS_WITH_AS(parallax::io::write_atomically(path, 1, 0,
                                                      [](std::ostream& out) {
                                                        out << "partial";
                                                        throw std::runtime_error("disk on fire");
                                                      }),
                       doctest::Contains("disk on fire"), parallax::error);
  const auto back = parallax::io::read_checked(path, 1);
  CHECK(std::string(back.begin(), back.end()) == "old");
  CHECK(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()) == 1);
}

TEST_CASE("file: damaged files are errors that name the file and the cause") {
  temp_folder dir;
  const auto path = (dir.path / "c.bin").string();
  parallax::io::write_atomically(path, 1, 0, [](std::ostream& out) { out << std::string(1000, 'y'); });
  auto flip = [&](std::streamoff at, char value) {
    std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(at);
    f.put(value);
  };
  SUBCASE("missing") { CHECK_THROWS_WITH_AS(parallax::io::read_checked(path + "x", 1), doctest::Contains("cannot open"), parallax::error); }
  SUBCASE("payload byte") {
    flip(500, 'z');
    CHECK_THROWS_WITH_AS(parallax::io::read_checked(path, 1), doctest::Contains("c.bin': field 'crc32' at byte offset 24: corrupted: CRC-32 mismatch"),
                         parallax::error);
  }
  SUBCASE("magic") {
    flip(0, 'Q');
    CHECK_THROWS_WITH_AS(parallax::io::read_checked(path, 1), doctest::Contains("wrong magic number"), parallax::error);
  }
  SUBCASE("truncated") {
    fs::resize_file(path, 600);
    CHECK_THROWS_WITH_AS(parallax::io::read_checked(path, 1), doctest::Contains("truncated or padded"), parallax::error);
  }
  SUBCASE("shorter than a header") {
    fs::resize_file(path, 5);
    CHECK_THROWS_WITH_AS(parallax::io::read_checked(path, 1), doctest::Contains("shorter than the header"), parallax::error);
  }
  SUBCASE("a newer format") {
    CHECK_THROWS_WITH_AS(parallax::io::read_checked(path, 0), doctest::Contains("format version 1 is unknown"), parallax::error);
  }
}

namespace {
/// The kind of the parallax::error f throws; fails the test when it throws none.
template <class F>
parallax::error_kind kind_of(F&& f) {
  try {
    f();
  } catch (const parallax::error& e) {
    return e.kind();
  }
  FAIL("no parallax::error thrown");
  return parallax::error_kind::invalid_argument;
}
}  // namespace

TEST_CASE("file: damage is damaged_file, a file system that refuses is io") {
  using parallax::error_kind;
  temp_folder dir;
  const auto path = (dir.path / "d.bin").string();
  parallax::io::write_atomically(path, 1, 0, [](std::ostream& out) { out << std::string(1000, 'y'); });
  auto read = [&] { parallax::io::read_checked(path, 1); };
  auto flip = [&](std::streamoff at, char value) {
    std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(at);
    f.put(value);
  };
  SUBCASE("missing file") { CHECK(kind_of([&] { parallax::io::read_checked(path + "x", 1); }) == error_kind::io); }
  SUBCASE("a folder that does not exist") {
    const auto nowhere = (dir.path / "no-such-folder" / "e.bin").string();
    CHECK(kind_of([&] { parallax::io::write_atomically(nowhere, 1, 0, [](std::ostream&) {}); }) == error_kind::io);
  }
  SUBCASE("a payload writer that throws") {
    CHECK(kind_of([&] {
            parallax::io::write_atomically(path, 1, 0, [](std::ostream&) { throw std::runtime_error("full"); });
          }) == error_kind::io);
  }
  SUBCASE("flipped payload byte") {
    flip(500, 'z');
    CHECK(kind_of(read) == error_kind::damaged_file);
  }
  SUBCASE("wrong magic") {
    flip(1, 'Q');
    CHECK(kind_of(read) == error_kind::damaged_file);
  }
  SUBCASE("unknown version") {
    flip(8, '\x63');
    CHECK(kind_of(read) == error_kind::damaged_file);
  }
  SUBCASE("truncated") {
    fs::resize_file(path, 700);
    CHECK(kind_of(read) == error_kind::damaged_file);
  }
  SUBCASE("shorter than a header") {
    fs::resize_file(path, 3);
    CHECK(kind_of(read) == error_kind::damaged_file);
  }
}
