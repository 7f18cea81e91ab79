// SPDX-License-Identifier: BSL-1.0
// Suite io: the files of a checkpoint as untrusted input. A payload written
// by Boost.Serialization 1.74 (pinned byte for byte) decodes field by field
// and is what the writer still writes; the inputs fuzzing found against the
// Boost reader (sizes trusted from the file, a bool that is not 0 or 1,
// trailing bytes), minimized, fail as damaged_file naming the field and the
// byte offset; the MANIFEST parser takes only what text() writes.
#include <parallax/io/checkpoint_format.hpp>
#include <parallax/io/file.hpp>

#include "error_of.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using parallax::error_kind;
using namespace parallax::io::detail;
using bytes = std::vector<char>;

/// The payload binary_oarchive (Boost 1.74, library version 18) wrote for a
/// part of one SGD-with-momentum tensor, as laid out field by field; offsets
/// are in the payload (the file adds its 28-byte header).
const std::vector<unsigned char> golden = {
    // 0: signature "serialization::archive" (size, bytes), 30: library version 18
    0x16, 0, 0, 0, 0, 0, 0, 0, 's', 'e', 'r', 'i', 'a', 'l', 'i', 'z', 'a', 't', 'i', 'o', 'n', ':', ':', 'a', 'r', 'c',
    'h', 'i', 'v', 'e', 0x12, 0x00,
    // 32: sizes of int, long, float, double; 36: the int 1
    4, 8, 4, 8, 1, 0, 0, 0,
    // 40: part_payload's class header (tracking, version); 45: trainer "DP"
    0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 'D', 'P',
    // 55: layer_begin 0, 63: layer_end 1
    0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,
    // 71: training_position's class header; 76: step 1; 84: has_sampler true
    0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1,
    // 85: epoch 0, position 4, sampler_seed 7, dataset_size 8, global_batch 4
    0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0,
    0,
    // 125: optimizer_kind "sgd"; 136: learning_rate 0.5; 144: optimizer_steps 1
    3, 0, 0, 0, 0, 0, 0, 0, 's', 'g', 'd', 0, 0, 0, 0, 0, 0, 0xe0, 0x3f, 1, 0, 0, 0, 0, 0, 0, 0,
    // 152: vector<string>'s class header; 157: slot_names size 1; 165: item version; 169: "momentum"
    0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 'm', 'o', 'm', 'e', 'n', 't', 'u', 'm',
    // 185: vector<tensor_record>'s class header; 190: tensors size 1; 198: item version
    0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    // 202: tensor_record's class header; 207: layer 0; 215: index 0
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    // 223: shape (size 1; 2); 239: value count 2; 247: values 1.5f, -2.0f
    1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xc0, 0x3f, 0, 0, 0, 0xc0,
    // 255: vector<vector<float>>'s class header; 260: slots size 1; 268: item version
    0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    // 272: slot 0 (size 2; 0.25f, 0.5f)
    2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x3e, 0, 0, 0, 0x3f};

bytes golden_bytes() { return bytes(golden.begin(), golden.end()); }

/// The golden payload with the 8 bytes at `offset` set to little-endian `v`.
bytes with_u64(std::size_t offset, std::uint64_t v) {
  auto b = golden_bytes();
  for (std::size_t i = 0; i < 8; ++i) b[offset + i] = static_cast<char>(v >> (8 * i));
  return b;
}

/// The kind and message of the error decode_part throws on `payload`.
struct failure {
  error_kind kind;
  std::string message;
};
failure decode_failure(const bytes& payload) {
  try {
    decode_part<float>(payload, "p.bin");
  } catch (const parallax::error& e) {
    return {e.kind(), e.what()};
  } catch (const std::exception& e) {
    return {error_kind::user_exception, std::string("unexpected exception: ") + e.what()};
  }
  return {error_kind::user_exception, "no error"};
}

/// A payload that must fail as damaged_file with a message holding
/// "field <message>" (message: "'<field>' at byte offset <n>: <cause>").
struct damaged_case {
  const char* what;
  bytes payload;
  std::string message;
};

void check_damaged(const std::vector<damaged_case>& cases) {
  for (const auto& c : cases) {
    CAPTURE(std::string(c.what));
    const auto f = decode_failure(c.payload);
    CAPTURE(f.message);
    CHECK(f.kind == error_kind::damaged_file);
    CHECK(contains(f.message, "checkpoint file 'p.bin': field " + c.message));
  }
}

struct temp_dir {
  fs::path path;
  temp_dir() {
    std::random_device seed;
    path =
        fs::temp_directory_path() / ("parallax-test-format-" + std::to_string(seed()) + "-" + std::to_string(seed()));
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

}  // namespace

TEST_CASE("checkpoint payload: a payload Boost 1.74 wrote decodes field by field") {
  const auto p = decode_part<float>(golden_bytes(), "p.bin");
  CHECK(p.trainer == "DP");
  CHECK(p.layer_begin == 0);
  CHECK(p.layer_end == 1);
  CHECK(p.where.step == 1);
  CHECK(p.where.has_sampler);
  CHECK(p.where.epoch == 0);
  CHECK(p.where.position == 4);
  CHECK(p.where.sampler_seed == 7);
  CHECK(p.where.dataset_size == 8);
  CHECK(p.where.global_batch == 4);
  CHECK(p.optimizer_kind == "sgd");
  CHECK(p.learning_rate == 0.5);
  CHECK(p.optimizer_steps == 1);
  CHECK(p.slot_names == std::vector<std::string>{"momentum"});
  REQUIRE(p.tensors.size() == 1);
  const auto& t = p.tensors[0];
  CHECK(t.layer == 0);
  CHECK(t.index == 0);
  CHECK(t.shape == std::vector<std::uint64_t>{2});
  CHECK(t.values == std::vector<float>{1.5f, -2.0f});
  CHECK(t.slots == std::vector<std::vector<float>>{{0.25f, 0.5f}});
}

TEST_CASE("checkpoint payload: write_part writes the bytes Boost 1.74 wrote, and read_part reads them back") {
  temp_dir dir;
  part_payload<float> p;
  p.trainer = "DP";
  p.layer_end = 1;
  p.where = {.step = 1,
             .has_sampler = true,
             .epoch = 0,
             .position = 4,
             .sampler_seed = 7,
             .dataset_size = 8,
             .global_batch = 4};
  p.optimizer_kind = "sgd";
  p.learning_rate = 0.5;
  p.optimizer_steps = 1;
  p.slot_names = {"momentum"};
  const std::vector<float> values = {1.5f, -2.0f};
  tensor_record<float> r;
  r.shape = {2};
  r.view = values;
  const std::vector<float> momentum = {0.25f, 0.5f};
  r.slot_views = {momentum};
  p.tensors.push_back(r);
  const auto path = (dir.path / "p.bin").string();
  write_part(path, p);
  std::ifstream in(path, std::ios::binary);
  const bytes file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  REQUIRE(file.size() == parallax::io::file_header_bytes + golden.size());
  CHECK(bytes(file.begin() + parallax::io::file_header_bytes, file.end()) == golden_bytes());
  CHECK(read_part<float>(path).tensors.at(0).values == values);
  CHECK(parse_part<float>(file, path).tensors.at(0).slots == std::vector<std::vector<float>>{momentum});
  // The header names the element type: the part is not a double part.
  const auto f = error_of([&] { read_part<double>(path); });
  CHECK(contains(f, "field 'element' at byte offset 12: it holds float32 tensors, the model has float64"));
}

TEST_CASE(
    "checkpoint payload: the inputs that crashed the Boost reader fail as damaged_file, naming field and offset") {
  // Each made the Boost reader allocate what the file asked (up to 2^46
  // bytes; the first 8 bytes alone asked for 2^45 + ...), load a bool that is
  // not 0 or 1 (undefined behaviour), or accept trailing bytes. Offsets in the
  // messages are in the file: 28 header bytes plus the payload offset.
  check_damaged({
      {"signature size", bytes{0x00, 0x35, 0x23, 0x00, 0x00, 0x20, 0x00, 0x00},
       "'archive signature' at byte offset 28: not a Boost.Serialization binary archive"},
      {"trainer name size", with_u64(45, std::uint64_t{1} << 46),
       "'trainer' at byte offset 73: size 70368744177664 is more than the most allowed, 256"},
      {"optimizer name size", with_u64(125, std::uint64_t{1} << 40),
       "'optimizer_kind' at byte offset 153: size 1099511627776 is more than the most allowed, 256"},
      {"slot count", with_u64(157, std::uint64_t{1} << 25),
       "'slot_names' at byte offset 185: size 33554432 is more than the most allowed, 16"},
      {"tensor count", with_u64(190, std::uint64_t{1} << 40),
       "'tensors' at byte offset 218: size 1099511627776 needs at least 52 bytes each, 86 bytes remain"},
      {"shape size", with_u64(223, std::uint64_t{1} << 40),
       "'tensors[0].shape' at byte offset 251: size 1099511627776 needs at least 8 bytes each, 57 bytes remain"},
      {"slot size", with_u64(272, std::uint64_t{1} << 40),
       "'tensors[0].slots[0]' at byte offset 300: size 1099511627776, expected 2"},
      {"bool",
       [] {
         auto b = golden_bytes();
         b[84] = 2;
         return b;
       }(),
       "'where.has_sampler' at byte offset 112: a bool holds 2, not 0 or 1"},
      {"trailing byte",
       [] {
         auto b = golden_bytes();
         b.push_back(0);
         return b;
       }(),
       "'end of payload' at byte offset 316: 1 trailing bytes after the last field"},
  });
}

TEST_CASE("checkpoint payload: what the payload says about itself is checked") {
  const auto patched = [](std::size_t offset, std::initializer_list<unsigned char> b) {
    auto out = golden_bytes();
    for (const auto v : b) out[offset++] = static_cast<char>(v);
    return out;
  };
  check_damaged({
      {"library version 7", patched(30, {7}), "'archive library version' at byte offset 58: library version 7"},
      {"size of long 4", patched(33, {4}), "'size of long' at byte offset 61: 4 bytes, this reader reads 8"},
      {"big-endian", patched(36, {0, 0, 0, 1}), "'byte order' at byte offset 64: not a little-endian archive"},
      {"tracked class", patched(40, {1}), "'part class header' at byte offset 68: tracking flag 1, expected 0"},
      {"class version 1", patched(72, {1}), "'where class header' at byte offset 100: class version 1, expected 0"},
      {"layers 2 to 1", with_u64(55, 2), "'layer_end' at byte offset 91: layers 2 to 1"},
      {"infinite learning rate", with_u64(136, 0x7ff0000000000000ull),
       "'learning_rate' at byte offset 164: not a finite"},
      {"a NUL in the optimizer's name", patched(134, {0}),
       "'optimizer_kind' at byte offset 161: control character 0 at position 1 of a name"},
      {"optimizer steps other than the position's", with_u64(144, 8388749),
       "'optimizer_steps' at byte offset 172: 8388749 steps, the part's position says 1"},
      {"item version 1", patched(165, {1}), "'slot_names item version' at byte offset 193: item version 1, expected 0"},
      {"a layer outside the part", with_u64(207, 1),
       "'tensors[0].layer' at byte offset 235: layer 1 is not in the part's layers 0 to 1"},
      {"values that do not match the shape", with_u64(231, 3),
       "'tensors[0].values' at byte offset 267: size 2, expected 3"},
      {"a shape whose product overflows",
       [] {
         auto b = golden_bytes();
         // shape (2^32, 2^32): the product is 0 modulo 2^64
         b.insert(b.begin() + 239, 8, 0);
         for (std::size_t i = 0; i < 8; ++i) b[223 + i] = i == 0 ? 2 : 0;
         b[231] = 0;
         b[231 + 4] = 1;
         b[239 + 4] = 1;
         return b;
       }(),
       "'tensors[0].shape' at byte offset 251: shape (4294967296, 4294967296) holds more values"},
      {"more slots than the optimizer names", with_u64(260, 2),
       "'tensors[0].slots' at byte offset 288: 2 optimizer slots, the optimizer names 1"},
      {"truncated in a value",
       [] {
         auto b = golden_bytes();
         b.resize(b.size() - 3);
         return b;
       }(),
       "'tensors[0].slots[0]' at byte offset 300: size 2 needs at least 4 bytes each, 5 bytes remain"},
  });
  SUBCASE("the same tensor twice") {
    // Two records of (layer 0, tensor 0): the tensors size says 2 and the record repeats.
    auto b = with_u64(190, 2);
    b.insert(b.end(), golden.begin() + 207, golden.end());
    const auto f = decode_failure(b);
    CHECK(f.kind == error_kind::damaged_file);
    CHECK(contains(f.message, "field 'tensors[1].layer' at byte offset 316: tensor 0 of layer 0 is there twice"));
  }
  SUBCASE("slots before the optimizer's first step") {
    auto b = with_u64(144, 0);
    b[76] = 0;  // where.step 0 as well: a part saved before the first step
    const auto f = decode_failure(b);
    CHECK(contains(
        f.message,
        "'tensors[0].slots[0]' at byte offset 300: size 2, expected 0 (none before the optimizer's first step)"));
  }
}

TEST_CASE("checkpoint file: a whole file in memory is checked as on disk, format 2 (XXH3) and format 1 (CRC-32)") {
  // The container around the golden payload: magic, version, element float32
  // ((1 << 8) | 4), payload size, checksum. Version 1 files, written before
  // format 2, still load.
  temp_dir dir;
  const auto path = (dir.path / "p.bin").string();
  for (const std::uint32_t version : {parallax::io::checkpoint_format_version, 1u}) {
    CAPTURE(version);
    parallax::io::write_atomically(path, version, (1 << 8) | 4, [](std::ostream& out) {
      out.write(reinterpret_cast<const char*>(golden.data()), golden.size());
    });
    std::ifstream in(path, std::ios::binary);
    bytes file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    REQUIRE(file.size() > 12);
    CHECK(file[8] == static_cast<char>(version));
    CHECK(parse_part<float>(file, path).trainer == "DP");
    CHECK(read_part<float>(path).tensors.at(0).values == std::vector<float>{1.5f, -2.0f});
    auto damaged = file;
    damaged[16] = 1;  // payload size
    CHECK(contains(error_of([&] { parse_part<float>(damaged, path); }),
                   "field 'payload size' at byte offset 16: truncated or padded: the header announces"));
    damaged = file;
    damaged.back() ^= 1;
    CHECK(contains(error_of([&] { parse_part<float>(damaged, path); }),
                   version == 1 ? "field 'crc32' at byte offset 24: corrupted: CRC-32 mismatch"
                                : "field 'checksum' at byte offset 24: corrupted: XXH3 checksum mismatch"));
    CHECK(contains(error_of([&] { parse_part<float>(bytes(file.begin(), file.begin() + 20), path); }),
                   "truncated (20 bytes, shorter than the header)"));
  }
  CHECK(parallax::io::checkpoint_format_version == 2);
}

TEST_CASE("checkpoint manifest: parse takes what text() writes, and nothing else") {
  const std::string good =
      "parallax-checkpoint 2\ntrainer ModelParallel\nelement float64 264\nlayers 5\nstep 3\npart part-0-2.bin 0 2\n"
      "part part-2-5.bin 2 5\nend\n";
  const auto m = manifest::parse(good, "M");
  CHECK(m.trainer == "ModelParallel");
  CHECK(m.element == ((1u << 8) | 8));
  CHECK(m.layers == 5);
  CHECK(m.step == 3);
  REQUIRE(m.parts.size() == 2);
  CHECK(m.parts[1].file == "part-2-5.bin");
  CHECK(m.parts[1].layer_begin == 2);
  CHECK(m.parts[1].layer_end == 5);
  CHECK(m.text() == good);
  // A format-1 manifest, as parallax wrote them before format 2, reads the same.
  std::string old = good;
  old.replace(0, 21, "parallax-checkpoint 1");
  CHECK(manifest::parse(old, "M").parts.size() == 2);

  // Offsets are in the file: 28 header bytes before the text.
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"parallax-checkpoint 3\n", "line 1 (byte offset 28), field 'parallax-checkpoint': format version 3 is unknown (this parallax reads up to 2)"},
      {"PLX 1\n", "line 1 (byte offset 28), field 'parallax-checkpoint': not a parallax checkpoint manifest"},
      {"parallax-checkpoint 1\ntrainer A\nelement float64 264\nlayers -1\n",
       "line 4 (byte offset 80), field 'layers': '-1' is not a number that fits"},
      {"parallax-checkpoint 1\nlayers 18446744073709551616\n",
       "field 'layers': '18446744073709551616' is not a number that fits"},
      {"parallax-checkpoint 1\nstep 1\nstep 2\n", "line 3 (byte offset 57), field 'step': the entry is there twice"},
      {"parallax-checkpoint 1\nelement float32 264\n", "field 'element': name 'float32' does not match code 264"},
      {"parallax-checkpoint 1\npart ../state.bin 0 5\n",
       "field 'part': '../state.bin' is not a file name in the checkpoint's folder"},
      {"parallax-checkpoint 1\npart /etc/passwd 0 5\n", "'/etc/passwd' is not a file name"},
      {"parallax-checkpoint 1\npart a.bin 3 3\n", "field 'part': layers 3 to 3 are empty"},
      {"parallax-checkpoint 1\npart a.bin 0\n", "field 'part': 2 values, expected 3"},
      {"parallax-checkpoint 1\ntrainer  A\n", "field 'trainer': 2 values, expected 1"},
      {"parallax-checkpoint 1\nlayers 5\n", "field 'trainer': no such entry (incomplete manifest)"},
      {"parallax-checkpoint 1\ntrainer A\nelement float64 264\nlayers 5\nstep 3\n",
       "field 'end': missing (incomplete manifest)"},
      {"parallax-checkpoint 1\ntrainer A\nelement float64 264\nlayers 5\nstep 3\nend", "the last line does not end"},
      {good + "\n", "line 9 (byte offset 156), field 'end': trailing bytes after 'end'"},
      {"parallax-checkpoint 1\nhello\n", "field 'hello': unexpected entry 'hello'"},
  };
  for (const auto& [text, message] : bad) {
    CAPTURE(text);
    std::string what;
    error_kind kind = error_kind::user_exception;
    try {
      manifest::parse(text, "M");
      what = "no error";
    } catch (const parallax::error& e) {
      what = e.what();
      kind = e.kind();
    }
    CAPTURE(what);
    CHECK(kind == error_kind::damaged_file);
    CHECK(what.rfind("M: line ", 0) == 0);
    CHECK(contains(what, message));
  }
}
