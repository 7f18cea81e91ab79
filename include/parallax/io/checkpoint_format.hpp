#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The files of a checkpoint (io/checkpoint.hpp), as structs: the payload of
/// a part file (tensors keyed by global layer index, optimizer state, the
/// training position), written with Boost.Serialization and read back by a
/// bounded reader (io/archive_reader.hpp), and the MANIFEST that names every
/// part, as text. Files are untrusted input: reading them checks everything
/// a file can say about itself before anything is allocated for it; damage
/// is error_kind::damaged_file naming the file, the field and the byte
/// offset, whatever model reads it.

#include <parallax/core/error.hpp>
#include <parallax/detail/element_type.hpp>
#include <parallax/detail/number_text.hpp>
#include <parallax/detail/xtensor.hpp>
#include <parallax/io/archive_reader.hpp>
#include <parallax/io/file.hpp>

#include <boost/archive/binary_oarchive.hpp>
#include <boost/serialization/array_wrapper.hpp>
#include <boost/serialization/collection_size_type.hpp>
#include <boost/serialization/item_version_type.hpp>
#include <boost/serialization/split_member.hpp>
#include <boost/serialization/string.hpp>
#include <boost/serialization/vector.hpp>

#include <algorithm>
#include <cstdint>
#include <iomanip>
#include <set>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace parallax::io {

/// The newest checkpoint format this parallax writes and reads. Version 2
/// checksums each file with XXH3 where version 1 used CRC-32 (io/file.hpp);
/// payload and MANIFEST are alike in both, so version 1 checkpoints still load.
inline constexpr std::uint32_t checkpoint_format_version = 2;

namespace detail {

using parallax::detail::throw_error;
using parallax::detail::type_code;
using parallax::detail::type_code_name;

/// Spans saved as Boost saves a std::vector<std::vector<T>> (decode_part()
/// reads them as one): the count, item version 0, then each span's size and
/// values. Its class header, written before the first one, is the vector's
/// too: not tracked, version 0.
template <class T>
struct span_list {
  std::span<const std::span<const T>> items;

  template <class Archive>
  void save(Archive& a, unsigned) const {
    const boost::serialization::collection_size_type count(items.size());
    const boost::serialization::item_version_type item_version(0);
    a << count << item_version;
    for (const auto item : items) {
      const boost::serialization::collection_size_type n(item.size());
      a << n;
      if (!item.empty()) a << boost::serialization::make_array(item.data(), item.size());
    }
  }
  BOOST_SERIALIZATION_SPLIT_MEMBER()
};

/// One parameter tensor, keyed by (global layer index, index within the layer).
/// Saving writes the values and the optimizer state straight from where the
/// trainer and the optimizer keep them (`view`, `slot_views`), without a copy.
template <class T>
struct tensor_record {
  std::uint64_t layer = 0;
  std::uint64_t index = 0;
  std::vector<std::uint64_t> shape;
  std::vector<T> values;                   ///< filled when loading
  std::span<const T> view;                 ///< what saving writes
  std::vector<std::vector<T>> slots;       ///< optimizer state per slot, filled when loading
  std::vector<std::span<const T>> slot_views;  ///< what saving writes for the slots

  // Only written through Boost: decode_part() reads it back.
  template <class Archive>
  void save(Archive& a, unsigned) const {
    const std::uint64_t n = view.size();
    a << layer << index << shape << n;
    if (n > 0) a << boost::serialization::make_array(view.data(), view.size());
    const span_list<T> state{slot_views};
    a << state;
  }
  BOOST_SERIALIZATION_SPLIT_MEMBER()
};

/// What training stands at, with the plan the position belongs to.
struct training_position {
  std::uint64_t step = 0;  ///< optimizer steps taken
  bool has_sampler = false;
  std::uint64_t epoch = 0;
  std::uint64_t position = 0;
  std::uint64_t sampler_seed = 0;
  std::uint64_t dataset_size = 0;
  std::uint64_t global_batch = 0;
  template <class Archive>
  void serialize(Archive& a, unsigned) {
    a& step& has_sampler& epoch& position& sampler_seed& dataset_size& global_batch;
  }
};

/// The payload of one part file.
template <class T>
struct part_payload {
  std::string trainer;  ///< the writer's checkpoint_kind: "DataParallel" or "ModelParallel"
  std::uint64_t layer_begin = 0;
  std::uint64_t layer_end = 0;
  training_position where;
  std::string optimizer_kind;
  double learning_rate = 0;
  std::uint64_t optimizer_steps = 0;
  std::vector<std::string> slot_names;
  std::vector<tensor_record<T>> tensors;
  template <class Archive>
  void serialize(Archive& a, unsigned) {
    a& trainer& layer_begin& layer_end& where& optimizer_kind& learning_rate& optimizer_steps& slot_names& tensors;
  }
};

/// One writer's part: its file (in the step folder) and its layers
/// [layer_begin, layer_end). Writers send it to rank 0 as it is (gathered).
struct manifest_part {
  std::string file;
  std::uint64_t layer_begin = 0;
  std::uint64_t layer_end = 0;
  template <class Archive>
  void serialize(Archive& a, unsigned) {
    a& file& layer_begin& layer_end;
  }
};

/// The manifest: written last; its presence makes a checkpoint complete.
struct manifest {
  std::string trainer;
  std::uint32_t element = 0;
  std::uint64_t layers = 0;
  std::uint64_t step = 0;
  std::vector<manifest_part> parts;

  /// The file's text ("parallax-checkpoint 1", "trainer …", …, a "part" line
  /// per part, "end").
  std::string text() const;
  /// Reads text() back; anything else is damaged_file, naming `where`.
  static manifest parse(const std::string& text, const std::string& where);
};

/// "step-000000000123".
std::string step_folder_name(std::uint64_t step);

/// Bounds of a payload's fields, beyond the bytes that remain.
struct payload_limits {
  std::size_t max_name_bytes = 256;  ///< trainer, optimizer and slot names
  std::size_t max_slots = 16;        ///< optimizer slots per tensor
  std::size_t max_rank = 32;         ///< dimensions of a tensor
};

/// Writes a part file (atomically, io/file.hpp) holding `payload`.
template <class T>
void write_part(const std::string& path, const part_payload<T>& payload);

/// Writes the MANIFEST file of a checkpoint.
void write_manifest(const std::string& path, const manifest& m);

/// Decodes and checks the payload of a part file whose tensors are T, the
/// file `path` names in messages: every field range-checked, every size
/// against the bytes that remain before it is allocated, every byte read;
/// each tensor's values match its shape and every optimizer slot its
/// values, the layers lie in the part's range and no tensor is there twice.
template <class T>
part_payload<T> decode_part(std::span<const char> payload, const std::string& path, payload_limits limits = {});

/// Reads a part file whose tensors are T (the manifest said so).
template <class T>
part_payload<T> read_part(const std::string& path);

/// Checks a whole part file held in memory (header, checksum, payload) and
/// decodes it: read_part without the file system.
template <class T>
part_payload<T> parse_part(std::span<const char> file, const std::string& path);

// ---------------------------------------------------------------------------

inline std::string manifest::text() const {
  std::ostringstream out;
  out << "parallax-checkpoint " << checkpoint_format_version << "\ntrainer " << trainer << "\nelement "
      << type_code_name(element) << " " << element << "\nlayers " << layers << "\nstep " << step << "\n";
  for (const auto& p : parts) out << "part " << p.file << " " << p.layer_begin << " " << p.layer_end << "\n";
  out << "end\n";
  return out.str();
}

namespace manifest_text {

/// A decimal number without sign or spaces that fits in U.
template <class U>
bool number(std::string_view word, U& out) {
  return word.size() <= 20 && parallax::detail::parse_number(word, out);
}

/// A part's file name: a plain name in the step folder, never a path.
inline bool file_name(std::string_view word) {
  if (word.empty() || word.size() > 255 || word[0] == '.') return false;
  for (const char c : word)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '-' ||
          c == '_'))
      return false;
  return true;
}

}  // namespace manifest_text

inline manifest manifest::parse(const std::string& text, const std::string& where) {
  manifest m;
  std::size_t at = 0;  // byte offset of the current line in the payload
  std::size_t line_number = 0;
  std::string_view line;
  std::vector<std::string_view> words;
  auto fail = [&](std::string_view field, const std::string& cause) {
    throw_error(error_kind::damaged_file, where + ": line " + std::to_string(line_number) + " (byte offset " +
                                              std::to_string(file_header_bytes + at) + "), field '" +
                                              std::string(field) + "': " + cause);
  };
  // Splits the next line into words; false at the end of the text.
  auto next_line = [&]() {
    if (line_number > 0) at += line.size() + 1;
    if (at >= text.size()) return false;
    const auto newline = text.find('\n', at);
    ++line_number;
    if (newline == std::string::npos) {
      line = std::string_view(text).substr(at);
      fail("end of line", "the last line does not end (incomplete manifest)");
    }
    line = std::string_view(text).substr(at, newline - at);
    words.clear();
    for (std::size_t i = 0; i <= line.size();) {
      const auto space = std::min(line.find(' ', i), line.size());
      words.push_back(line.substr(i, space - i));
      i = space + 1;
    }
    return true;
  };
  auto expect_words = [&](std::size_t n) {
    if (words.size() != n)
      fail(words[0], std::to_string(words.size() - 1) + " values, expected " + std::to_string(n - 1));
    for (const auto w : words)
      if (w.empty()) fail(words[0], "empty value (two spaces, or a space at the end of the line)");
  };
  auto number = [&](std::size_t i, auto& out) {
    if (!manifest_text::number(words[i], out))
      fail(words[0], "'" + std::string(words[i]) + "' is not a number that fits");
  };
  if (!next_line() || words[0] != "parallax-checkpoint") {
    line_number = std::max<std::size_t>(line_number, 1);
    fail("parallax-checkpoint", "not a parallax checkpoint manifest");
  }
  expect_words(2);
  std::uint32_t version = 0;
  number(1, version);
  if (version < 1 || version > checkpoint_format_version)
    fail("parallax-checkpoint", "format version " + std::to_string(version) +
                                    " is unknown (this parallax reads up to " +
                                    std::to_string(checkpoint_format_version) + ")");
  // Each entry once (text() writes them in this order), parts, then "end".
  static constexpr std::string_view keys[] = {"trainer", "element", "layers", "step"};
  bool seen[4] = {};
  bool ended = false;
  while (!ended && next_line()) {
    const auto key = std::find(std::begin(keys), std::end(keys), words[0]);
    if (key != std::end(keys)) {
      bool& once = seen[key - std::begin(keys)];
      if (once) fail(words[0], "the entry is there twice");
      once = true;
    }
    if (words[0] == "trainer") {
      expect_words(2);
      m.trainer = std::string(words[1]);
    } else if (words[0] == "element") {
      expect_words(3);
      number(2, m.element);
      if (type_code_name(m.element) != words[1])
        fail(words[0], "name '" + std::string(words[1]) + "' does not match code " + std::to_string(m.element));
    } else if (words[0] == "layers") {
      expect_words(2);
      number(1, m.layers);
    } else if (words[0] == "step") {
      expect_words(2);
      number(1, m.step);
    } else if (words[0] == "part") {
      expect_words(4);
      manifest_part p;
      if (!manifest_text::file_name(words[1]))
        fail("part", "'" + std::string(words[1]) + "' is not a file name in the checkpoint's folder");
      p.file = std::string(words[1]);
      number(2, p.layer_begin);
      number(3, p.layer_end);
      if (p.layer_begin >= p.layer_end)
        fail("part", "layers " + std::string(words[2]) + " to " + std::string(words[3]) + " are empty");
      m.parts.push_back(std::move(p));
    } else if (words[0] == "end") {
      expect_words(1);
      ended = true;
    } else {
      fail(words[0], "unexpected entry '" + std::string(words[0]) + "'");
    }
  }
  for (std::size_t k = 0; k < 4; ++k)
    if (!seen[k]) fail(keys[k], "no such entry (incomplete manifest)");
  if (!ended) fail("end", "missing (incomplete manifest)");
  if (at + line.size() + 1 < text.size()) {
    at += line.size() + 1;
    ++line_number;
    fail("end", "trailing bytes after 'end'");
  }
  return m;
}

inline std::string step_folder_name(std::uint64_t step) {
  std::ostringstream s;
  s << "step-" << std::setw(12) << std::setfill('0') << step;
  return s.str();
}

/// The manifest promised T: a part that holds another type is not its part.
template <class T>
void check_element(const file_header& header, const std::string& path) {
  PARALLAX_CHECK_KIND(header.element == type_code<T>(), error_kind::damaged_file,
                      file_where(path) + ": field 'element' at byte offset 12: it holds " +
                          type_code_name(header.element) + " tensors, the model has " + type_code_name(type_code<T>()));
}

template <class T>
void write_part(const std::string& path, const part_payload<T>& payload) {
  write_atomically(path, checkpoint_format_version, type_code<T>(), [&](std::ostream& out) {
    boost::archive::binary_oarchive archive(out);
    archive << payload;
  });
}

inline void write_manifest(const std::string& path, const manifest& m) {
  const auto text = m.text();
  write_atomically(path, checkpoint_format_version, 0,
                   [&](std::ostream& out) { out.write(text.data(), static_cast<std::streamsize>(text.size())); });
}

template <class T>
part_payload<T> decode_part(std::span<const char> bytes, const std::string& path, payload_limits limits) {
  static_assert(std::is_floating_point_v<T>, "parallax: checkpoints hold floating-point tensors");
  archive_reader in(bytes, file_where(path), file_header_bytes);
  in.header();
  part_payload<T> p;
  in.class_info("part_payload", "part");
  p.trainer = in.text("trainer", limits.max_name_bytes);
  p.layer_begin = in.u64("layer_begin");
  const std::size_t end_at = in.offset();
  p.layer_end = in.u64("layer_end");
  if (p.layer_end < p.layer_begin)
    in.fail("layer_end", end_at, "layers " + std::to_string(p.layer_begin) + " to " + std::to_string(p.layer_end));
  in.class_info("training_position", "where");
  p.where.step = in.u64("where.step");
  p.where.has_sampler = in.boolean("where.has_sampler");
  p.where.epoch = in.u64("where.epoch");
  p.where.position = in.u64("where.position");
  p.where.sampler_seed = in.u64("where.sampler_seed");
  p.where.dataset_size = in.u64("where.dataset_size");
  p.where.global_batch = in.u64("where.global_batch");
  p.optimizer_kind = in.text("optimizer_kind", limits.max_name_bytes);
  p.learning_rate = in.finite_double("learning_rate");
  const std::size_t steps_at = in.offset();
  p.optimizer_steps = in.u64("optimizer_steps");
  if (p.optimizer_steps != p.where.step)  // both are the optimizer's step count when saved
    in.fail("optimizer_steps", steps_at,
            std::to_string(p.optimizer_steps) + " steps, the part's position says " + std::to_string(p.where.step));
  in.class_info("vector<string>", "slot_names");
  const auto slots = in.items("slot_names", 8, limits.max_slots);  // a name: its length, then its bytes
  for (std::uint64_t k = 0; k < slots; ++k)
    p.slot_names.push_back(in.text("slot_names[" + std::to_string(k) + "]", limits.max_name_bytes));
  // A tensor is at least its layer, index, shape size, value count, slot
  // count and item version (44 bytes) and the size of each slot: so what is
  // reserved here is at most sizeof(tensor_record) / 44 (about 2.4) times
  // the bytes that remain.
  in.class_info("vector<tensor_record>", "tensors");
  const auto count = in.items("tensors", 44 + 8 * p.slot_names.size(), ~std::uint64_t{0});
  p.tensors.reserve(static_cast<std::size_t>(count));
  std::set<std::pair<std::uint64_t, std::uint64_t>> keys;
  for (std::uint64_t i = 0; i < count; ++i) {
    const std::string f = "tensors[" + std::to_string(i) + "].";
    tensor_record<T> r;
    in.class_info("tensor_record", f.substr(0, f.size() - 1));
    const std::size_t key_at = in.offset();
    r.layer = in.u64(f + "layer");
    r.index = in.u64(f + "index");
    if (r.layer < p.layer_begin || r.layer >= p.layer_end)
      in.fail(f + "layer", key_at,
              "layer " + std::to_string(r.layer) + " is not in the part's layers " + std::to_string(p.layer_begin) +
                  " to " + std::to_string(p.layer_end));
    if (!keys.insert({r.layer, r.index}).second)
      in.fail(f + "layer", key_at,
              "tensor " + std::to_string(r.index) + " of layer " + std::to_string(r.layer) + " is there twice");
    const std::size_t shape_at = in.offset();
    r.shape = in.values<std::uint64_t>(f + "shape");
    if (r.shape.size() > limits.max_rank)
      in.fail(f + "shape", shape_at,
              std::to_string(r.shape.size()) + " dimensions, more than " + std::to_string(limits.max_rank));
    // The product, without overflow: the values must fit in what remains.
    std::uint64_t n = 1;
    for (const auto e : r.shape) {
      if (e != 0 && n > (in.remaining() / sizeof(T)) / e)
        in.fail(f + "shape", shape_at,
                "shape " + parallax::detail::shape_string(r.shape) + " holds more values than the " +
                    std::to_string(in.remaining()) + " bytes that remain");
      n *= e;
    }
    r.values = in.values<T>(f + "values", n, "the values of shape " + parallax::detail::shape_string(r.shape));
    in.class_info("vector<vector<T>>", f + "slots");
    const std::size_t slots_at = in.offset();
    const auto slot_count = in.items(f + "slots", 8, limits.max_slots);
    if (slot_count != p.slot_names.size())
      in.fail(
          f + "slots", slots_at,
          std::to_string(slot_count) + " optimizer slots, the optimizer names " + std::to_string(p.slot_names.size()));
    // The writer saves each slot with the tensor's size once the optimizer
    // has stepped, empty before.
    const bool stepped = p.optimizer_steps > 0;
    for (std::uint64_t k = 0; k < slot_count; ++k)
      r.slots.push_back(
          in.values<T>(f + "slots[" + std::to_string(k) + "]", stepped ? n : 0,
                       stepped ? "one value per value of the tensor" : "none before the optimizer's first step"));
    p.tensors.push_back(std::move(r));
  }
  in.finish();
  return p;
}

template <class T>
part_payload<T> read_part(const std::string& path) {
  file_header header;
  const auto bytes = read_checked(path, checkpoint_format_version, &header);
  check_element<T>(header, path);
  return decode_part<T>(bytes, path);
}

template <class T>
part_payload<T> parse_part(std::span<const char> file, const std::string& path) {
  file_header header;
  const auto payload = check_file(file, path, checkpoint_format_version, &header);
  check_element<T>(header, path);
  return decode_part<T>(payload, path);
}

}  // namespace detail
}  // namespace parallax::io
