#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Checkpointer::load() (io/checkpoint.hpp) in three steps: read (the
/// manifest and the parts that hold this rank's layers; damage is
/// damaged_file, a missing file io), match (against the trainer and the
/// sampler; any difference is incompatible) and apply (only once every rank
/// read and matched). Written against io::Checkpointable.

#include <parallax/core/error.hpp>
#include <parallax/data/sampler.hpp>
#include <parallax/detail/element_type.hpp>
#include <parallax/detail/xtensor.hpp>
#include <parallax/io/checkpoint_format.hpp>
#include <parallax/io/checkpointable.hpp>
#include <parallax/io/file.hpp>
#include <parallax/optim/optimizer.hpp>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace parallax::io::detail {

/// What read_checkpoint() found: the manifest and, from the parts that hold
/// this rank's layers, their common fields and the tensors of those layers.
template <class T>
struct checkpoint_contents {
  manifest m;
  part_payload<T> meta;  ///< the first part read, without its tensors
  std::map<std::pair<std::uint64_t, std::uint64_t>, tensor_record<T>> records;  ///< by (layer, index)
  std::map<std::pair<std::uint64_t, std::uint64_t>, tensor_record<T>> buffers;  ///< by (layer, index)
  bool has_buffers = false;  ///< some part read has a buffers file
};

/// The file that holds a part's buffers (HasLayerBuffers: BatchNorm's
/// running statistics), beside the part: "part-0-2.bin" -> "part-0-2.buffers.bin".
inline std::string buffers_file(const std::string& part) {
  const auto dot = part.rfind(".bin");
  return (dot == std::string::npos ? part : part.substr(0, dot)) + ".buffers.bin";
}

/// Read: the manifest of the checkpoint in `path`, and the parts that hold
/// layers of [begin, end). Checks what the files say about themselves: every
/// layer is in exactly one part, each part belongs to this manifest.
template <class T>
checkpoint_contents<T> read_checkpoint(const std::string& path, std::pair<std::uint64_t, std::uint64_t> layers) {
  namespace fs = std::filesystem;
  const auto [begin, end] = layers;
  checkpoint_contents<T> c;
  const std::string manifest_file = (fs::path(path) / "MANIFEST").string();
  PARALLAX_CHECK_KIND(fs::exists(manifest_file), error_kind::io,
                      "checkpoint '" + path + "' is incomplete: it has no MANIFEST");
  const auto bytes = read_checked(manifest_file, checkpoint_format_version);
  c.m = manifest::parse(std::string(bytes.begin(), bytes.end()), "checkpoint manifest '" + manifest_file + "'");
  auto parts = c.m.parts;
  std::sort(parts.begin(), parts.end(), [](const auto& a, const auto& b) { return a.layer_begin < b.layer_begin; });
  std::uint64_t covered = 0;
  auto check_covered = [&](bool ok, std::uint64_t to) {
    PARALLAX_CHECK_KIND(ok, error_kind::damaged_file,
                        "checkpoint '" + path + "' is incomplete: no part holds layers " + std::to_string(covered) +
                            " to " + std::to_string(to));
  };
  for (const auto& p : parts) {
    check_covered(p.layer_begin == covered, p.layer_begin);
    covered = p.layer_end;
  }
  check_covered(covered == c.m.layers && !parts.empty(), c.m.layers);
  if (c.m.element != type_code<T>()) return c;  // the parts cannot be read as T: match says why
  bool first = true;
  for (const auto& p : parts) {
    if (p.layer_end <= begin || p.layer_begin >= end) continue;  // not ours
    const std::string file = (fs::path(path) / p.file).string();
    PARALLAX_CHECK_KIND(fs::exists(file), error_kind::io,
                        "checkpoint '" + path + "' is incomplete: part '" + p.file + "' is missing");
    auto payload = read_part<T>(file);
    PARALLAX_CHECK_KIND(payload.layer_begin == p.layer_begin && payload.layer_end == p.layer_end &&
                            payload.where.step == c.m.step && payload.trainer == c.m.trainer,
                        error_kind::damaged_file,
                        "checkpoint file '" + file + "' does not belong to this checkpoint's manifest");
    auto tensors = std::move(payload.tensors);
    if (first) {
      c.meta = std::move(payload);
      first = false;
    } else {
      PARALLAX_CHECK_KIND(
          payload.optimizer_kind == c.meta.optimizer_kind && payload.optimizer_steps == c.meta.optimizer_steps,
          error_kind::damaged_file, "checkpoint file '" + file + "' disagrees with the other parts on the optimizer");
    }
    for (auto& r : tensors)
      if (r.layer >= begin && r.layer < end) c.records[{r.layer, r.index}] = std::move(r);
    const std::string buffers = (fs::path(path) / buffers_file(p.file)).string();
    if (fs::exists(buffers)) {
      auto b = read_part<T>(buffers);
      PARALLAX_CHECK_KIND(b.layer_begin == p.layer_begin && b.layer_end == p.layer_end && b.where.step == c.m.step &&
                              b.trainer == c.m.trainer && b.slot_names.empty(),
                          error_kind::damaged_file,
                          "checkpoint file '" + buffers + "' does not belong to this checkpoint's manifest");
      c.has_buffers = true;
      for (auto& r : b.tensors)
        if (r.layer >= begin && r.layer < end) c.buffers[{r.layer, r.index}] = std::move(r);
    }
  }
  return c;
}

/// For match_checkpoint(): every tensor visit(f) visits (f(layer, j, t)) has
/// a record of its shape in `records` and there is no other, else an
/// incompatible error naming it as a `what` ("tensor", "buffer"), `hint`
/// after a missing one. Returns the keys in visiting order.
template <class T, class Visit>
std::vector<std::pair<std::uint64_t, std::uint64_t>> match_records(
    Visit&& visit, const std::map<std::pair<std::uint64_t, std::uint64_t>, tensor_record<T>>& records,
    const std::string& what, const std::string& where, const std::string& hint) {
  using parallax::detail::shape_string;
  auto check = [](bool ok, const std::string& message) {
    PARALLAX_CHECK_KIND(ok, error_kind::incompatible, message);
  };
  std::vector<std::pair<std::uint64_t, std::uint64_t>> keys;
  visit([&](std::uint64_t layer, std::uint64_t j, auto& t) {
    const auto it = records.find({layer, j});
    check(it != records.end(), where + " was written for another model: it has no " + what + " " + std::to_string(j) +
                                   " of layer " + std::to_string(layer) + hint);
    const std::vector<std::uint64_t> shape(t.shape().begin(), t.shape().end());
    check(it->second.shape == shape && it->second.values.size() == t.size(),
          where + " was written for another model: " + what + " " + std::to_string(j) + " of layer " +
              std::to_string(layer) + " has shape " + shape_string(it->second.shape) + " there, " +
              shape_string(shape) + " in this model");
    keys.push_back({layer, j});
  });
  check(keys.size() == records.size(), where + " was written for another model: it has " +
                                           std::to_string(records.size()) + " " + what + "s for these layers, the model " +
                                           std::to_string(keys.size()));
  return keys;
}

/// Match: the contents against the trainer and the sampler — the same
/// element type, layers, tensors and shapes, optimizer and sampler plan; any
/// difference is incompatible. Returns the optimizer's state in the trainer's
/// tensor order, tried on a copy of its optimizer.
template <class Trainer, class T = typename Trainer::value_type>
optim::optimizer_state<T> match_checkpoint(Trainer& trainer, const data::DistributedSampler* sampler,
                                           checkpoint_contents<T>& c, const std::string& path) {
  using parallax::detail::shape_string;
  auto check = [](bool ok, const std::string& message) {
    PARALLAX_CHECK_KIND(ok, error_kind::incompatible, message);
  };
  const std::string where = "checkpoint '" + path + "'";
  check(c.m.element == type_code<T>(),
        where + " holds " + type_code_name(c.m.element) + " tensors, the model has " + type_code_name(type_code<T>()));
  check(c.m.layers == trainer.checkpoint_layers(), where + " was written for a model of " + std::to_string(c.m.layers) +
                                                       " layers, this one has " +
                                                       std::to_string(trainer.checkpoint_layers()));
  // Every tensor of ours is there with our shape, and no other: the same
  // model. The buffers alike (BatchNorm's running statistics).
  const auto wanted = match_records<T>([&](auto&& f) { trainer.for_each_keyed_tensor(f); }, c.records, "tensor", where, "");
  match_records<T>([&](auto&& f) { for_each_trainer_buffer(trainer, f); }, c.buffers, "buffer", where,
                   c.has_buffers ? "" : " (it holds no buffers: a model without BatchNorm?)");
  const auto& meta = c.meta;
  optim::optimizer_state<T> state;
  state.kind = meta.optimizer_kind;
  state.steps = meta.optimizer_steps;
  state.learning_rate = meta.learning_rate;
  state.slot_names = meta.slot_names;
  state.slots.assign(meta.slot_names.size(), {});
  if (meta.optimizer_steps > 0)
    for (std::size_t k = 0; k < meta.slot_names.size(); ++k)
      for (const auto& key : wanted) state.slots[k].push_back(std::move(c.records[key].slots.at(k)));
  const auto current = trainer.optimizer().state_view();
  check(current.kind == state.kind, where + " holds " + state.kind + " optimizer state, the trainer uses " + current.kind);
  check(current.slot_names == state.slot_names,
        where + " holds " + state.kind + " state with slots " + optim::detail::slots_text(state.slot_names) +
            ", the trainer's optimizer keeps " + optim::detail::slots_text(current.slot_names) +
            " (another setting, e.g. momentum)");
  if (sampler && meta.where.has_sampler) {
    check(sampler->options().seed == meta.where.sampler_seed && sampler->dataset_size() == meta.where.dataset_size &&
              sampler->global_batch() == meta.where.global_batch,
          where + " belongs to another sampler plan (seed " + std::to_string(meta.where.sampler_seed) + ", " +
              std::to_string(meta.where.dataset_size) + " samples, global batch " +
              std::to_string(meta.where.global_batch) + ")");
  }
  // A trial run of load_state on a copy, so a bad state fails here (with
  // load_state's own kind, as before).
  auto trial = trainer.optimizer().clone();
  trial->load_state(state);
  return state;
}

/// Apply: the matched contents into the trainer and the sampler.
template <class Trainer, class T = typename Trainer::value_type>
void apply_checkpoint(Trainer& trainer, data::DistributedSampler* sampler, checkpoint_contents<T>& c,
                      const optim::optimizer_state<T>& state) {
  auto copy_from = [](auto& records) {
    return [&records](std::uint64_t layer, std::uint64_t j, auto& t) {
      const auto& values = records[{layer, j}].values;
      std::copy(values.begin(), values.end(), t.data());
    };
  };
  trainer.for_each_keyed_tensor(copy_from(c.records));
  for_each_trainer_buffer(trainer, copy_from(c.buffers));
  trainer.optimizer().load_state(state);
  if (sampler && c.meta.where.has_sampler) {
    sampler->set_epoch(c.meta.where.epoch);
    sampler->set_position(static_cast<std::size_t>(c.meta.where.position));
  }
}

}  // namespace parallax::io::detail
