#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Checkpoints of DataParallel and ModelParallel training with
/// Boost.Serialization: parameters, optimizer state, schedule position,
/// sampler position, step counter and a header naming the element type and
/// the model's tensors by global layer index. Files are checksummed and
/// written atomically (io/file.hpp); a checkpoint is complete only when its
/// manifest, written last, names every part. Layers are keyed by their index
/// in the whole chain, so a checkpoint loads at another rank count or
/// partition, and between Sequential (one rank) and ModelParallel.
///
/// Layout: DIR/step-000000000123/{MANIFEST, state.bin | part-<first>-<end>.bin}.

#include <parallax/core/comm.hpp>
#include <parallax/core/error.hpp>
#include <parallax/data/sampler.hpp>
#include <parallax/data_parallel.hpp>
#include <parallax/detail/random.hpp>
#include <parallax/detail/tensor_list.hpp>
#include <parallax/io/file.hpp>
#include <parallax/model_parallel.hpp>
#include <parallax/optim/optimizer.hpp>

#include <boost/archive/archive_exception.hpp>
#include <boost/archive/binary_iarchive.hpp>
#include <boost/archive/binary_oarchive.hpp>
#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>
#include <boost/serialization/array_wrapper.hpp>
#include <boost/serialization/split_member.hpp>
#include <boost/serialization/string.hpp>
#include <boost/serialization/vector.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <map>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace parallax::io {

/// The newest checkpoint format this parallax writes and reads.
inline constexpr std::uint32_t checkpoint_format_version = 1;

/// A checkpoint that is intact but belongs to something else: another model,
/// element type, optimizer or sampler plan. resume_latest() never skips past
/// one (that would start over and, later, overwrite it): it throws this.
class checkpoint_mismatch : public error {
 public:
  using error::error;
  explicit checkpoint_mismatch(const error& e) : error(e) {}
};

struct checkpoint_options {
  std::size_t keep = 3;           ///< complete checkpoints kept, newest first (older ones are deleted)
  std::uint64_t every_steps = 0;  ///< maybe_save(): every k optimizer steps (0: off)
  double every_seconds = 0;       ///< maybe_save(): when t seconds passed since the last save (0: off)
  bool quiet = false;             ///< resume_latest() reports skipped checkpoints on rank 0 unless quiet
};

/// Saves and loads training state in a folder of checkpoints.
/// @code
///   parallax::io::Checkpointer checkpoints("ckpt", {.keep = 3, .every_steps = 100});
///   checkpoints.resume_latest(trainer, &sampler);           // no-op on a fresh folder
///   trainer_options.after_step = [&](auto&) { checkpoints.maybe_save(trainer, &sampler); };
/// @endcode
/// Every member function is collective over the communicator.
class Checkpointer {
 public:
  explicit Checkpointer(std::string dir, checkpoint_options options = {}, mpi::communicator comm = mpi::communicator());

  /// Writes a checkpoint of the trainer (and the sampler's epoch and
  /// position) at its current optimizer step; returns its folder. The
  /// previous checkpoints stay until this one is complete. A folder that
  /// already holds checkpoints is written only after this run resumed from
  /// it (or resume_latest() found nothing usable there): another run's
  /// checkpoints are never replaced or pruned.
  template <class Trainer>
  std::string save(Trainer& trainer, const data::DistributedSampler* sampler = nullptr);

  /// Loads the checkpoint in `path` (a step folder). Everything is read and
  /// checked before anything changes: on an error (the same on every rank,
  /// naming the file and the cause) the trainer is untouched.
  template <class Trainer>
  void load(Trainer& trainer, data::DistributedSampler* sampler, const std::string& path);

  /// Loads the newest checkpoint that is valid; newer damaged or incomplete
  /// ones are skipped with a message on rank 0 saying why. Returns the folder
  /// loaded, or nothing when the folder holds no usable checkpoint. A
  /// checkpoint of another model, element type, optimizer or sampler plan is
  /// not skipped: it throws checkpoint_mismatch on every rank.
  template <class Trainer>
  std::optional<std::string> resume_latest(Trainer& trainer, data::DistributedSampler* sampler = nullptr);

  /// Saves when the step or time policy of checkpoint_options says so;
  /// returns whether it saved.
  template <class Trainer>
  bool maybe_save(Trainer& trainer, const data::DistributedSampler* sampler = nullptr);

  /// Step folders in the directory, newest first (complete or not).
  std::vector<std::string> list() const;
  const std::string& directory() const { return dir_; }
  /// What resume_latest() skipped, newest first: (folder, cause).
  const std::vector<std::pair<std::string, std::string>>& skipped() const { return skipped_; }

 private:
  std::string dir_;
  checkpoint_options options_;
  mpi::communicator comm_;
  std::uint64_t last_saved_step_ = ~std::uint64_t{0};
  std::chrono::steady_clock::time_point last_save_time_ = std::chrono::steady_clock::now();
  std::vector<std::pair<std::string, std::string>> skipped_;
  bool claimed_ = false;  // this run resumed here, or found nothing to resume, or already saved here
};

// ===========================================================================
// Implementation
// ===========================================================================

namespace detail {

using parallax::detail::for_each_tensor;
using parallax::detail::shape_string;
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
  std::string trainer;  ///< "DataParallel" or "ModelParallel"
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

struct manifest_part {
  std::string file;
  std::uint64_t layer_begin = 0;
  std::uint64_t layer_end = 0;
};

/// The manifest: written last; its presence makes a checkpoint complete.
struct manifest {
  std::string trainer;
  std::uint32_t element = 0;
  std::uint64_t layers = 0;
  std::uint64_t step = 0;
  std::vector<manifest_part> parts;

  std::string text() const {
    std::ostringstream out;
    out << "parallax-checkpoint " << checkpoint_format_version << "\ntrainer " << trainer << "\nelement "
        << type_code_name(element) << " " << element << "\nlayers " << layers << "\nstep " << step << "\n";
    for (const auto& p : parts) out << "part " << p.file << " " << p.layer_begin << " " << p.layer_end << "\n";
    out << "end\n";
    return out.str();
  }

  static manifest parse(const std::string& text, const std::string& where) {
    manifest m;
    std::istringstream in(text);
    std::string word;
    bool ended = false;
    std::uint32_t version = 0;
    in >> word >> version;
    PARALLAX_CHECK(word == "parallax-checkpoint", where + ": not a parallax checkpoint manifest");
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
        throw_error(where + ": unexpected entry '" + word + "'");
      }
    }
    PARALLAX_CHECK(ended && in, where + ": incomplete manifest");
    return m;
  }
};

inline std::string step_folder_name(std::uint64_t step) {
  std::ostringstream s;
  s << "step-" << std::setw(12) << std::setfill('0') << step;
  return s.str();
}

/// Calls f(layer, index_in_layer, tensor) for every parameter tensor a
/// trainer holds, in the order of its optimizer's state.
template <class M, class F>
void for_each_keyed_tensor(DataParallel<M>& trainer, F&& f) {
  auto& model = trainer.model();
  if constexpr (requires { M::layer_count; model.template layer<0>(); }) {
    // A chain (Sequential): keys by layer, so pipelines can read it.
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (
          [&] {
            auto& layer = model.template layer<I>();
            if constexpr (HasLayerParameters<std::remove_cvref_t<decltype(layer)>>) {
              std::uint64_t j = 0;
              for_each_tensor(layer.parameters(), [&](auto& t) { f(std::uint64_t{I}, j++, t); });
            }
          }(),
          ...);
    }(std::make_index_sequence<M::layer_count>{});
  } else {
    std::uint64_t j = 0;
    for_each_tensor(model.parameters(), [&](auto& t) { f(std::uint64_t{0}, j++, t); });
  }
}

template <class... Parts, class F>
void for_each_keyed_tensor(ModelParallel<Parts...>& trainer, F&& f) {
  trainer.for_each_local_layer([&](std::size_t index, auto& layer) {
    if constexpr (HasLayerParameters<std::remove_cvref_t<decltype(layer)>>) {
      std::uint64_t j = 0;
      for_each_tensor(layer.parameters(), [&](auto& t) { f(std::uint64_t{index}, j++, t); });
    }
  });
}

template <class M>
constexpr const char* trainer_name(const DataParallel<M>*) {
  return "DataParallel";
}
template <class... Parts>
constexpr const char* trainer_name(const ModelParallel<Parts...>*) {
  return "ModelParallel";
}

/// How many layer keys a trainer's model has.
template <class M>
std::uint64_t layer_total(DataParallel<M>&) {
  if constexpr (requires { M::layer_count; }) return M::layer_count;
  else return 1;
}
template <class... Parts>
std::uint64_t layer_total(ModelParallel<Parts...>&) {
  return ModelParallel<Parts...>::layer_count;
}

/// The layers a trainer writes and reads on this rank: [begin, end).
template <class M>
std::pair<std::uint64_t, std::uint64_t> local_layers(DataParallel<M>& t) {
  return {0, layer_total(t)};
}
template <class... Parts>
std::pair<std::uint64_t, std::uint64_t> local_layers(ModelParallel<Parts...>& t) {
  return {t.first_layer(), t.end_layer()};
}

template <class M>
bool writes_part(DataParallel<M>& t) {
  return t.communicator().rank() == 0;  // one writer: the replicas are equal
}
template <class... Parts>
bool writes_part(ModelParallel<Parts...>&) {
  return true;  // every stage writes what it owns
}

class memory_buffer : public std::streambuf {
 public:
  memory_buffer(char* begin, char* end) { setg(begin, begin, end); }
};

template <class T>
part_payload<T> read_part(const std::string& path) {
  file_header header;
  auto bytes = read_checked(path, checkpoint_format_version, &header);
  PARALLAX_CHECK(header.element == type_code<T>(), "checkpoint file '" + path + "' holds " +
                                                       type_code_name(header.element) + " tensors, the model has " +
                                                       type_code_name(type_code<T>()));
  part_payload<T> payload;
  try {
    memory_buffer buffer(bytes.data(), bytes.data() + bytes.size());
    std::istream in(&buffer);
    boost::archive::binary_iarchive archive(in);
    archive >> payload;
  } catch (const boost::archive::archive_exception& e) {
    throw_error("checkpoint file '" + path + "': unreadable payload: " + e.what());
  }
  return payload;
}

}  // namespace detail

inline Checkpointer::Checkpointer(std::string dir, checkpoint_options options, mpi::communicator comm)
    : dir_(std::move(dir)), options_(options), comm_(std::move(comm)) {
  agree(comm_, [&] {
    PARALLAX_CHECK(!dir_.empty(), "Checkpointer: the directory name is empty");
    PARALLAX_CHECK(options_.keep >= 1, "Checkpointer: keep must be at least 1");
    std::error_code ec;
    std::filesystem::create_directories(dir_, ec);
    PARALLAX_CHECK(!ec && std::filesystem::is_directory(dir_),
                   "Checkpointer: cannot use '" + dir_ + "' as a checkpoint directory: " + ec.message());
  });
}

inline std::vector<std::string> Checkpointer::list() const {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir_, ec)) {
    const auto name = entry.path().filename().string();
    if (entry.is_directory() && name.rfind("step-", 0) == 0 && name.size() == 17) out.push_back(entry.path().string());
  }
  std::sort(out.rbegin(), out.rend());  // zero-padded: lexical order is step order
  return out;
}

template <class Trainer>
std::string Checkpointer::save(Trainer& trainer, const data::DistributedSampler* sampler) {
  using T = typename Trainer::value_type;
  namespace fs = std::filesystem;
  const std::uint64_t step = trainer.optimizer().steps();
  const fs::path folder = fs::path(dir_) / detail::step_folder_name(step);
  const fs::path manifest_path = folder / "MANIFEST";
  const auto [begin, end] = detail::local_layers(trainer);
  // A run that neither resumed from this folder nor looked for something to
  // resume must not replace or prune another run's checkpoints.
  if (!claimed_) {
    agree(comm_, [&] {
      if (comm_.rank() != 0) return;
      for (const auto& f : list())
        PARALLAX_CHECK(!fs::exists(fs::path(f) / "MANIFEST"),
                       "Checkpointer::save(): '" + dir_ + "' already holds checkpoints of another run (newest " +
                           fs::path(f).filename().string() +
                           "): resume from them (resume_latest) or choose an empty directory");
    });
    claimed_ = true;
  }
  // Rank 0 prepares the folder; a re-save of the same step first makes the
  // old one incomplete (no manifest) so nobody loads a mix.
  agree(comm_, [&] {
    if (comm_.rank() == 0) {
      fs::create_directories(folder);
      fs::remove(manifest_path);
      sync_directory(folder.string());
    }
  });
  comm_.barrier();
  std::string part_line;
  agree(comm_, [&] {
    if (!detail::writes_part(trainer)) return;
    detail::part_payload<T> payload;
    payload.trainer = detail::trainer_name(&trainer);
    payload.layer_begin = begin;
    payload.layer_end = end;
    payload.where.step = step;
    if (sampler) {
      payload.where.has_sampler = true;
      payload.where.epoch = sampler->epoch();
      payload.where.position = sampler->position();
      payload.where.sampler_seed = sampler->options().seed;
      payload.where.dataset_size = sampler->dataset_size();
      payload.where.global_batch = sampler->global_batch();
    }
    auto state = trainer.optimizer().state();
    payload.optimizer_kind = state.kind;
    payload.learning_rate = state.learning_rate;
    payload.optimizer_steps = state.steps;
    payload.slot_names = state.slot_names;
    std::size_t i = 0;
    detail::for_each_keyed_tensor(trainer, [&](std::uint64_t layer, std::uint64_t j, auto& t) {
      detail::tensor_record<T> r;
      r.layer = layer;
      r.index = j;
      r.shape.assign(t.shape().begin(), t.shape().end());
      r.view = std::span<const T>(t.data(), t.size());
      for (auto& slot : state.slots) r.slots.push_back(i < slot.size() ? std::move(slot[i]) : std::vector<T>{});
      payload.tensors.push_back(std::move(r));
      ++i;
    });
    const std::string file = payload.trainer == "DataParallel"
                                 ? std::string("state.bin")
                                 : "part-" + std::to_string(begin) + "-" + std::to_string(end) + ".bin";
    write_atomically((folder / file).string(), checkpoint_format_version, detail::type_code<T>(), [&](std::ostream& out) {
      boost::archive::binary_oarchive archive(out);
      archive << payload;
    });
    part_line = file + " " + std::to_string(begin) + " " + std::to_string(end);
  });
  // Rank 0 writes the manifest once every part is on disk, then prunes.
  std::vector<std::string> lines;
  mpi::gather(comm_, part_line, lines, 0);
  agree(comm_, [&] {
    if (comm_.rank() != 0) return;
    detail::manifest m;
    m.trainer = detail::trainer_name(&trainer);
    m.element = detail::type_code<T>();
    m.layers = detail::layer_total(trainer);
    m.step = step;
    for (const auto& line : lines) {
      if (line.empty()) continue;
      std::istringstream in(line);
      detail::manifest_part p;
      in >> p.file >> p.layer_begin >> p.layer_end;
      m.parts.push_back(p);
    }
    const auto text = m.text();
    write_atomically(manifest_path.string(), checkpoint_format_version, 0,
                     [&](std::ostream& out) { out.write(text.data(), static_cast<std::streamsize>(text.size())); });
    // Keep the newest `keep` complete checkpoints; drop older ones and
    // leftovers of interrupted saves older than this one.
    std::size_t complete = 0;
    for (const auto& f : list()) {
      if (fs::path(f).filename() > folder.filename()) continue;  // newer than this one: not ours to judge
      const bool is_complete = fs::exists(fs::path(f) / "MANIFEST");
      if (is_complete && complete < options_.keep) {
        ++complete;
        continue;
      }
      std::error_code ignored;
      fs::remove_all(f, ignored);
    }
    for (const auto& entry : fs::directory_iterator(folder))  // temporaries of a killed writer
      if (entry.path().filename().string().find(".tmp.") != std::string::npos) fs::remove(entry.path());
  });
  last_saved_step_ = step;
  last_save_time_ = std::chrono::steady_clock::now();
  return folder.string();
}

template <class Trainer>
void Checkpointer::load(Trainer& trainer, data::DistributedSampler* sampler, const std::string& path) {
  using T = typename Trainer::value_type;
  namespace fs = std::filesystem;
  const auto [begin, end] = detail::local_layers(trainer);
  // Read and check everything first; change the trainer only when all is well.
  std::map<std::pair<std::uint64_t, std::uint64_t>, detail::tensor_record<T>> records;
  detail::part_payload<T> meta;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> wanted;
  optim::optimizer_state<T> state;
  // A mismatch is told apart from damage: it throws checkpoint_mismatch.
  auto mismatch_check = [&](bool ok, const std::string& message) {
    if (!ok) detail::throw_error(error_kind::incompatible, message);
  };
  const auto failure = parallax::detail::capture([&] {
    const std::string manifest_file = (fs::path(path) / "MANIFEST").string();
    PARALLAX_CHECK(fs::exists(manifest_file), "checkpoint '" + path + "' is incomplete: it has no MANIFEST");
    const auto bytes = read_checked(manifest_file, checkpoint_format_version);
    const auto m = detail::manifest::parse(std::string(bytes.begin(), bytes.end()), "checkpoint manifest '" + manifest_file + "'");
    mismatch_check(m.element == detail::type_code<T>(), "checkpoint '" + path + "' holds " + detail::type_code_name(m.element) +
                                                    " tensors, the model has " + detail::type_code_name(detail::type_code<T>()));
    mismatch_check(m.layers == detail::layer_total(trainer),
                   "checkpoint '" + path + "' was written for a model of " + std::to_string(m.layers) +
                       " layers, this one has " + std::to_string(detail::layer_total(trainer)));
    // Complete: the parts cover every layer once.
    auto parts = m.parts;
    std::sort(parts.begin(), parts.end(), [](const auto& a, const auto& b) { return a.layer_begin < b.layer_begin; });
    std::uint64_t covered = 0;
    for (const auto& p : parts) {
      PARALLAX_CHECK(p.layer_begin == covered, "checkpoint '" + path + "' is incomplete: no part holds layers " +
                                                   std::to_string(covered) + " to " + std::to_string(p.layer_begin));
      covered = p.layer_end;
    }
    PARALLAX_CHECK(covered == m.layers && !parts.empty(), "checkpoint '" + path + "' is incomplete: no part holds layers " +
                                                               std::to_string(covered) + " to " + std::to_string(m.layers));
    bool first = true;
    for (const auto& p : parts) {
      if (p.layer_end <= begin || p.layer_begin >= end) continue;  // not ours
      const std::string file = (fs::path(path) / p.file).string();
      PARALLAX_CHECK(fs::exists(file), "checkpoint '" + path + "' is incomplete: part '" + p.file + "' is missing");
      auto payload = detail::read_part<T>(file);
      PARALLAX_CHECK(payload.layer_begin == p.layer_begin && payload.layer_end == p.layer_end &&
                         payload.where.step == m.step,
                     "checkpoint file '" + file + "' does not belong to this checkpoint's manifest");
      if (first) {
        meta = payload;
        meta.tensors.clear();
        first = false;
      } else {
        PARALLAX_CHECK(payload.optimizer_kind == meta.optimizer_kind && payload.optimizer_steps == meta.optimizer_steps,
                       "checkpoint file '" + file + "' disagrees with the other parts on the optimizer");
      }
      for (auto& r : payload.tensors) {
        if (r.layer < begin || r.layer >= end) continue;
        auto key = std::make_pair(r.layer, r.index);
        records[key] = std::move(r);
      }
    }
    // Every tensor of ours is there with our shape: the same model.
    std::size_t count = 0;
    detail::for_each_keyed_tensor(trainer, [&](std::uint64_t layer, std::uint64_t j, auto& t) {
      const auto it = records.find({layer, j});
      mismatch_check(it != records.end(), "checkpoint '" + path + "' was written for another model: it has no tensor " +
                                              std::to_string(j) + " of layer " + std::to_string(layer));
      const std::vector<std::uint64_t> shape(t.shape().begin(), t.shape().end());
      mismatch_check(it->second.shape == shape && it->second.values.size() == t.size(),
                     "checkpoint '" + path + "' was written for another model: tensor " + std::to_string(j) +
                         " of layer " + std::to_string(layer) + " has shape " + detail::shape_string(it->second.shape) +
                         " there, " + detail::shape_string(shape) + " in this model");
      wanted.push_back({layer, j});
      ++count;
    });
    mismatch_check(count == records.size(), "checkpoint '" + path + "' was written for another model: it has " +
                                                std::to_string(records.size()) + " tensors for these layers, the model " +
                                                std::to_string(count));
    // The optimizer's state in this trainer's tensor order.
    state.kind = meta.optimizer_kind;
    state.steps = meta.optimizer_steps;
    state.learning_rate = meta.learning_rate;
    state.slot_names = meta.slot_names;
    state.slots.assign(meta.slot_names.size(), {});
    if (meta.optimizer_steps > 0)
      for (std::size_t k = 0; k < meta.slot_names.size(); ++k)
        for (const auto& key : wanted) state.slots[k].push_back(records[key].slots.at(k));
    const auto current = trainer.optimizer().state();
    mismatch_check(current.kind == state.kind, "checkpoint '" + path + "' holds " + state.kind +
                                                   " optimizer state, the trainer uses " + current.kind);
    if (sampler && meta.where.has_sampler) {
      mismatch_check(sampler->options().seed == meta.where.sampler_seed &&
                         sampler->dataset_size() == meta.where.dataset_size &&
                         sampler->global_batch() == meta.where.global_batch,
                     "checkpoint '" + path + "' belongs to another sampler plan (seed " +
                         std::to_string(meta.where.sampler_seed) + ", " + std::to_string(meta.where.dataset_size) +
                         " samples, global batch " + std::to_string(meta.where.global_batch) + ")");
    }
    // A trial run of load_state on a copy, so a bad state fails here.
    auto trial = trainer.optimizer().clone();
    trial->load_state(state);
  });
  try {
    agree(comm_, failure);
  } catch (const error& e) {
    if (e.kind() == error_kind::incompatible) throw checkpoint_mismatch(e);
    throw;
  }
  // Apply.
  detail::for_each_keyed_tensor(trainer, [&](std::uint64_t layer, std::uint64_t j, auto& t) {
    const auto& values = records[{layer, j}].values;
    std::copy(values.begin(), values.end(), t.data());
  });
  trainer.optimizer().load_state(state);
  if (sampler && meta.where.has_sampler) {
    sampler->set_epoch(meta.where.epoch);
    sampler->set_position(static_cast<std::size_t>(meta.where.position));
  }
  // Every rank loaded the same state (data parallel replicas must be equal).
  if constexpr (requires { trainer.model(); }) {
    std::uint64_t h = 0;
    detail::for_each_keyed_tensor(trainer, [&](std::uint64_t, std::uint64_t, auto& t) {
      h = parallax::detail::content_hash(t.data(), t.size() * sizeof(T), h);
    });
    agree_equal(comm_, h, "Checkpointer::load(): the loaded parameters");
  }
  last_saved_step_ = trainer.optimizer().steps();
  last_save_time_ = std::chrono::steady_clock::now();
  claimed_ = true;
}

template <class Trainer>
std::optional<std::string> Checkpointer::resume_latest(Trainer& trainer, data::DistributedSampler* sampler) {
  skipped_.clear();
  // Rank 0's view of the folder decides the candidates, so all ranks try the same ones.
  std::vector<std::string> candidates = list();
  mpi::broadcast(comm_, candidates, 0);
  for (const auto& c : candidates) {
    try {
      load(trainer, sampler, c);
      if (!skipped_.empty() && comm_.rank() == 0 && !options_.quiet)
        std::cerr << "parallax: resuming from " << c << " (the newest valid checkpoint)\n";
      return c;
    } catch (const checkpoint_mismatch&) {
      throw;  // intact but not ours: starting over would later overwrite it
    } catch (const error& e) {
      skipped_.emplace_back(c, e.what());
      if (comm_.rank() == 0 && !options_.quiet) std::cerr << "parallax: skipping checkpoint " << c << ": " << e.what() << "\n";
    }
  }
  claimed_ = true;  // nothing usable here: this run may write
  return std::nullopt;
}

template <class Trainer>
bool Checkpointer::maybe_save(Trainer& trainer, const data::DistributedSampler* sampler) {
  const std::uint64_t step = trainer.optimizer().steps();
  if (step == last_saved_step_) return false;
  bool due = options_.every_steps > 0 && step % options_.every_steps == 0;
  if (options_.every_seconds > 0) {
    // Clocks differ between ranks: rank 0 decides for everyone.
    int by_time = std::chrono::duration<double>(std::chrono::steady_clock::now() - last_save_time_).count() >=
                          options_.every_seconds
                      ? 1
                      : 0;
    mpi::broadcast(comm_, by_time, 0);
    due = due || by_time == 1;
  }
  if (due) save(trainer, sampler);
  return due;
}

}  // namespace parallax::io
