#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The files of a checkpoint (io/checkpoint.hpp), as structs: the payload of
/// a part file (tensors keyed by global layer index, optimizer state, the
/// training position) in Boost.Serialization, and the MANIFEST that names
/// every part, as text. Reading them checks what a file can say about
/// itself; damage is error_kind::damaged_file, whatever model reads it.

#include <parallax/core/error.hpp>
#include <parallax/detail/element_type.hpp>
#include <parallax/io/file.hpp>

#include <boost/archive/archive_exception.hpp>
#include <boost/archive/binary_iarchive.hpp>
#include <boost/serialization/array_wrapper.hpp>
#include <boost/serialization/split_member.hpp>
#include <boost/serialization/string.hpp>
#include <boost/serialization/vector.hpp>

#include <cstdint>
#include <iomanip>
#include <istream>
#include <span>
#include <sstream>
#include <streambuf>
#include <string>
#include <vector>

namespace parallax::io {

/// The newest checkpoint format this parallax writes and reads.
inline constexpr std::uint32_t checkpoint_format_version = 1;

namespace detail {

using parallax::detail::throw_error;
using parallax::detail::type_code;
using parallax::detail::type_code_name;

/// One parameter tensor, keyed by (global layer index, index within the layer).
/// Saving writes the values straight from the tensor (`view`), without a copy.
template <class T>
struct tensor_record {
  std::uint64_t layer = 0;
  std::uint64_t index = 0;
  std::vector<std::uint64_t> shape;
  std::vector<T> values;              ///< filled when loading
  std::span<const T> view;            ///< what saving writes
  std::vector<std::vector<T>> slots;  ///< optimizer state per slot

  template <class Archive>
  void save(Archive& a, unsigned) const {
    const std::uint64_t n = view.size();
    a << layer << index << shape << n;
    if (n > 0) a << boost::serialization::make_array(view.data(), view.size());
    a << slots;
  }
  template <class Archive>
  void load(Archive& a, unsigned) {
    std::uint64_t n = 0;
    a >> layer >> index >> shape >> n;
    // The count is checked against the shape before anything is allocated.
    std::uint64_t expected = 1;
    for (auto e : shape) expected *= e;
    if (n != expected) throw boost::archive::archive_exception(boost::archive::archive_exception::input_stream_error);
    values.resize(n);
    if (n > 0) a >> boost::serialization::make_array(values.data(), values.size());
    a >> slots;
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

/// Reads a part file whose tensors are T (the manifest said so).
template <class T>
part_payload<T> read_part(const std::string& path);

// ---------------------------------------------------------------------------

inline std::string manifest::text() const {
  std::ostringstream out;
  out << "parallax-checkpoint " << checkpoint_format_version << "\ntrainer " << trainer << "\nelement "
      << type_code_name(element) << " " << element << "\nlayers " << layers << "\nstep " << step << "\n";
  for (const auto& p : parts) out << "part " << p.file << " " << p.layer_begin << " " << p.layer_end << "\n";
  out << "end\n";
  return out.str();
}

inline manifest manifest::parse(const std::string& text, const std::string& where) {
  manifest m;
  std::istringstream in(text);
  std::string word;
  bool ended = false;
  std::uint32_t version = 0;
  in >> word >> version;
  PARALLAX_CHECK_KIND(word == "parallax-checkpoint", error_kind::damaged_file,
                      where + ": not a parallax checkpoint manifest");
  while (in >> word) {
    if (word == "trainer") in >> m.trainer;
    else if (word == "element") {
      std::string name;
      in >> name >> m.element;
    } else if (word == "layers") in >> m.layers;
    else if (word == "step") in >> m.step;
    else if (word == "part") {
      manifest_part p;
      in >> p.file >> p.layer_begin >> p.layer_end;
      m.parts.push_back(p);
    } else if (word == "end") {
      ended = true;
      break;
    } else {
      throw_error(error_kind::damaged_file, where + ": unexpected entry '" + word + "'");
    }
  }
  PARALLAX_CHECK_KIND(ended && in, error_kind::damaged_file, where + ": incomplete manifest");
  return m;
}

inline std::string step_folder_name(std::uint64_t step) {
  std::ostringstream s;
  s << "step-" << std::setw(12) << std::setfill('0') << step;
  return s.str();
}

class memory_buffer : public std::streambuf {
 public:
  memory_buffer(char* begin, char* end) { setg(begin, begin, end); }
};

template <class T>
part_payload<T> read_part(const std::string& path) {
  file_header header;
  auto bytes = read_checked(path, checkpoint_format_version, &header);
  // The manifest promised T: a part that holds another type is not its part.
  PARALLAX_CHECK_KIND(header.element == type_code<T>(), error_kind::damaged_file,
                      "checkpoint file '" + path + "' holds " + type_code_name(header.element) +
                          " tensors, the model has " + type_code_name(type_code<T>()));
  part_payload<T> payload;
  try {
    memory_buffer buffer(bytes.data(), bytes.data() + bytes.size());
    std::istream in(&buffer);
    boost::archive::binary_iarchive archive(in);
    archive >> payload;
  } catch (const boost::archive::archive_exception& e) {
    throw_error(error_kind::damaged_file, "checkpoint file '" + path + "': unreadable payload: " + e.what());
  }
  return payload;
}

}  // namespace detail
}  // namespace parallax::io
