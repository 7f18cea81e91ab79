#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Checkpoints of training with Boost.Serialization: parameters, optimizer
/// state, schedule position, sampler position, step counter and a header
/// naming the element type and the model's tensors by global layer index.
/// Files are checksummed and written atomically (io/file.hpp); a checkpoint
/// is complete only when its manifest, written last, names every part
/// (io/checkpoint_format.hpp). Layers are keyed by their index in the whole
/// chain, so a checkpoint loads at another rank count or partition, and
/// between Sequential (one rank) and ModelParallel. The checkpointer is
/// written against io::Checkpointable (io/checkpointable.hpp): it includes
/// no trainer.
///
/// Layout: DIR/step-000000000123/{MANIFEST, state.bin | part-<first>-<end>.bin}, and
/// beside each part its buffers (state.buffers.bin, part-<first>-<end>.buffers.bin)
/// when the model has any.

#include <parallax/core/agree.hpp>
#include <parallax/core/error.hpp>
#include <parallax/core/operation.hpp>
#include <parallax/core/trace.hpp>
#include <parallax/data/sampler.hpp>
#include <parallax/detail/element_type.hpp>
#include <parallax/detail/number_text.hpp>
#include <parallax/detail/random.hpp>
#include <parallax/io/checkpoint_format.hpp>
#include <parallax/io/checkpoint_load.hpp>
#include <parallax/io/checkpointable.hpp>
#include <parallax/io/file.hpp>
#include <parallax/optim/optimizer.hpp>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>
#include <boost/mpi/operations.hpp>
#include <boost/serialization/vector.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <optional>
#include <span>
#include <source_location>
#include <string>
#include <utility>
#include <vector>

namespace parallax::io {

/// A checkpoint that is intact but belongs to something else: another model,
/// element type, optimizer or sampler plan. resume_latest() never skips past
/// one (that would start over and, later, overwrite it): it throws this.
class checkpoint_mismatch : public error {
 public:
  using error::error;
  explicit checkpoint_mismatch(const error& e) : error(e) {}
};

/// What resume_latest() does when the folder holds checkpoints and none of
/// them loads (each is damaged or incomplete).
enum class damaged_policy : std::uint8_t {
  error,        ///< throw damaged_file on every rank, naming each checkpoint and its cause (default)
  start_fresh,  ///< set them aside (renamed, never deleted), say so on rank 0 and start from scratch
};

/// The options; all but `quiet` must be the same on every rank (the
/// constructor compares them).
struct checkpoint_options {
  std::size_t keep = 3;           ///< complete checkpoints kept, newest first (older ones are deleted)
  std::uint64_t every_steps = 0;  ///< maybe_save(): every k optimizer steps (0: off)
  double every_seconds = 0;       ///< maybe_save(): when t seconds passed since the last save (0: off)
  bool quiet = false;             ///< no notices on rank 0 (skipped checkpoints, a learning rate that differs)
  damaged_policy on_all_damaged = damaged_policy::error;  ///< resume_latest() over a folder of damaged checkpoints
};

/// Saves and loads the training state of an io::Checkpointable trainer
/// (DataParallel, ModelParallel) in a folder of checkpoints.
/// @code
///   parallax::io::Checkpointer checkpoints("ckpt", {.keep = 3, .every_steps = 100});
///   checkpoints.resume_latest(trainer, &sampler);           // no-op on a fresh folder
///   trainer_options.after_step = [&](auto&) { checkpoints.maybe_save(trainer, &sampler); };
/// @endcode
/// The constructor, save, maybe_save, load and resume_latest are collective
/// over the communicator; list(), directory(), last_step() and skipped() are
/// local (list() reads the folder on the calling rank).
class Checkpointer {
 public:
  /// Checks the options and compares them between the ranks (one small
  /// all-reduce): a directory, `keep`, `every_steps`, `every_seconds` or
  /// `on_all_damaged` that differs is a rank_mismatch on every rank naming the
  /// option and each rank's value. `quiet` may differ: only rank 0 prints.
  explicit Checkpointer(std::string dir, checkpoint_options options = {}, mpi::communicator comm = mpi::communicator(),
                        std::source_location site = std::source_location::current());

  /// Writes a checkpoint of the trainer (and the sampler's epoch and
  /// position) at its current optimizer step; returns its folder. The
  /// previous checkpoints stay until this one is complete. A checkpoint is
  /// never overwritten: when the step's folder already holds one (a
  /// MANIFEST), every rank throws invalid_argument naming the folder and
  /// nothing is written (leftovers of an interrupted save of this step, a
  /// folder without MANIFEST, are replaced). A folder that already holds
  /// checkpoints is written only after this run resumed from it (or
  /// resume_latest() found nothing usable there): another run's checkpoints
  /// are never replaced or pruned. Pruning (`keep`) removes only older
  /// checkpoints of this folder's step folders, never the one just written,
  /// a newer one, or a damaged one set aside.
  template <class Trainer>
  std::string save(Trainer& trainer, const data::DistributedSampler* sampler = nullptr, std::source_location site = std::source_location::current());

  /// Loads the checkpoint in `path` (a step folder) in three steps: read (the
  /// manifest and the parts that hold this rank's layers; damage is
  /// damaged_file, a missing or unreadable file io), match (against the
  /// trainer and the sampler; any difference is incompatible) and, only after
  /// every rank read and matched, apply. On an error (the same on every rank,
  /// naming the file and the cause) the trainer is untouched; a mismatch on
  /// any rank is checkpoint_mismatch on every rank. The checkpoint's
  /// learning rate replaces the optimizer's (the run continues as the saved
  /// one would have); when the two differ, rank 0 says so unless quiet:
  /// "resume: lr is 0.1 in the checkpoint, 0.5 in the code; the checkpoint's
  /// value is used". The optimizer's other options are the code's (a
  /// checkpoint does not hold them).
  template <class Trainer>
  void load(Trainer& trainer, data::DistributedSampler* sampler, const std::string& path, std::source_location site = std::source_location::current());

  /// Loads the newest checkpoint that is valid; newer damaged or incomplete
  /// ones are skipped with a message on rank 0 saying why, and the damaged
  /// ones (those with a MANIFEST) are set aside as `step-….damaged` so later
  /// saves of their steps do not meet them. Returns the folder loaded, or
  /// nothing when the folder holds no checkpoint (only leftovers of
  /// interrupted saves, or nothing). When it holds checkpoints and none
  /// loads, every rank throws damaged_file listing each with its cause and
  /// nothing changes, unless `on_all_damaged` is start_fresh: then they are
  /// set aside, rank 0 says so, and it returns nothing. A checkpoint of
  /// another model, element type, optimizer or sampler plan is not skipped:
  /// it throws checkpoint_mismatch on every rank.
  template <class Trainer>
  std::optional<std::string> resume_latest(Trainer& trainer, data::DistributedSampler* sampler = nullptr,
                                           std::source_location site = std::source_location::current());

  /// Saves when the step or time policy of checkpoint_options says so and
  /// the step is not saved yet (last_step()); returns whether it saved.
  template <class Trainer>
  bool maybe_save(Trainer& trainer, const data::DistributedSampler* sampler = nullptr, std::source_location site = std::source_location::current());

  /// Step folders in the directory, newest first (complete or not).
  std::vector<std::string> list() const;
  const std::string& directory() const { return dir_; }
  /// The optimizer step of the checkpoint this Checkpointer last saved or
  /// loaded (nothing before either): save() at that step again is an error.
  std::optional<std::uint64_t> last_step() const;
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

  /// "parallax: <text>" on std::cerr, on rank 0, unless quiet.
  void notice(const std::string& text) const;
  /// Rank 0 renames each folder to "<folder>.damaged" (or .damaged-2, ...):
  /// outside list(), so no save or pruning meets it. Returns the new names.
  std::vector<std::string> set_aside(const std::vector<std::string>& folders);
};

// ===========================================================================
// Implementation
// ===========================================================================

namespace detail {

/// The one agreement of a load (one integer all-reduce when every rank read
/// and matched). agree() alone reports the lowest failing rank's kind, so
/// damage seen by rank 0 would hide a mismatch on rank 1 and resume_latest()
/// would skip a checkpoint it must stop at. Here a mismatch on any rank
/// decides: every rank reduces its verdict (0 fine, 1 failed, 2 mismatch),
/// and when some rank mismatched, the ranks that mismatched are agreed on and
/// checkpoint_mismatch is thrown on every rank; otherwise agree() reports the
/// failures as they are.
inline void agree_on_load(const mpi::communicator& comm, const std::optional<error>& failure) {
  const bool mismatch = failure && failure->kind() == error_kind::incompatible;
  const int mine = mismatch ? 2 : failure ? 1 : 0;
  int worst = 0;
  mpi::all_reduce(comm, mine, worst, mpi::maximum<int>());
  if (worst == 0) return;
  if (worst == 1) agree(comm, failure);  // throws on every rank
  try {
    agree(comm, mismatch ? failure : std::nullopt);
  } catch (const error& e) {
    throw checkpoint_mismatch(e);
  }
}

}  // namespace detail

inline Checkpointer::Checkpointer(std::string dir, checkpoint_options options, mpi::communicator comm,
                                  std::source_location site)
    : dir_(std::move(dir)), options_(options), comm_(std::move(comm)) {
  operation op(comm_, "Checkpointer::Checkpointer()", -1, site);
  agree(comm_, [&] {
    PARALLAX_CHECK(!dir_.empty(), "Checkpointer: the directory name is empty");
    PARALLAX_CHECK(options_.keep >= 1, "Checkpointer: keep must be at least 1");
    PARALLAX_CHECK(std::isfinite(options_.every_seconds) && options_.every_seconds >= 0,
                   "Checkpointer: every_seconds = " + parallax::detail::number_text(options_.every_seconds) +
                       " must be finite and >= 0");
  });
  // Options that differ would hang (maybe_save on some ranks only, rank 0's
  // clock broadcast to ranks that do not listen), split a checkpoint over
  // folders, or decide resume_latest() differently. `quiet` is rank 0's alone.
  agree_settings(comm_,
                 {{"directory", 0, dir_},
                  {"keep", static_cast<double>(options_.keep)},
                  {"every_steps", static_cast<double>(options_.every_steps)},
                  {"every_seconds", options_.every_seconds},
                  {"on_all_damaged", 0, options_.on_all_damaged == damaged_policy::error ? "error" : "start_fresh"}},
                 "Checkpointer");
  agree(comm_, [&] {
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
std::string Checkpointer::save(Trainer& trainer, const data::DistributedSampler* sampler, std::source_location site) {
  static_assert(check_checkpointable<Trainer>());
  operation op(comm_, "Checkpointer::save()", static_cast<std::int64_t>(trainer.optimizer().steps()), site);
  trace::span span("checkpoint save", "io");
  using T = typename Trainer::value_type;
  namespace fs = std::filesystem;
  const std::uint64_t step = trainer.optimizer().steps();
  const fs::path folder = fs::path(dir_) / detail::step_folder_name(step);
  const fs::path manifest_path = folder / "MANIFEST";
  const auto [begin, end] = trainer.checkpoint_local_layers();
  // Accumulated micro-steps are gradients, which a checkpoint does not hold:
  // saved mid-accumulation, a resumed run would group its micro-steps anew.
  if constexpr (HasPendingMicroSteps<Trainer>) {
    agree(comm_, [&] {
      PARALLAX_CHECK(trainer.pending_micro_steps() == 0,
                     "Checkpointer::save(): " + std::to_string(trainer.pending_micro_steps()) +
                         " micro-steps are accumulated towards optimizer step " + std::to_string(step + 1) +
                         " and a checkpoint does not hold their gradients: save after the optimizer step "
                         "(maybe_save() waits for it) or call flush() first");
    });
  }
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
  // Never overwrite a checkpoint. Every rank looks, since every rank that
  // writes writes into the folder it sees; one agreement, before anything is written.
  agree(comm_, [&] {
    PARALLAX_CHECK(!fs::exists(manifest_path),
                   "Checkpointer::save(): '" + folder.string() + "' already holds a checkpoint of step " +
                       std::to_string(step) +
                       ": a checkpoint is never overwritten (maybe_save() saves a step once; last_step() is the "
                       "step saved or loaded last)");
  });
  // Rank 0 prepares the folder. What it holds is not a checkpoint (no
  // MANIFEST): leftovers of an interrupted save, replaced so no stale part stays.
  agree(comm_, [&] {
    if (comm_.rank() == 0) {
      fs::remove_all(folder);
      fs::create_directories(folder);
      sync_directory(dir_);
    }
  });
  comm_.barrier();
  std::vector<detail::manifest_part> written;  // this rank's part, if it writes one
  agree(comm_, [&] {
    if (!trainer.writes_checkpoint()) return;
    detail::part_payload<T> payload;
    payload.trainer = Trainer::checkpoint_kind;
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
    const auto state = trainer.optimizer().state_view();
    payload.optimizer_kind = state.kind;
    payload.learning_rate = state.learning_rate;
    payload.optimizer_steps = state.steps;
    payload.slot_names = state.slot_names;
    // A record that lends the tensor's values (no copy), keyed as given.
    auto record = [](std::uint64_t layer, std::uint64_t j, auto& t) {
      detail::tensor_record<T> r;
      r.layer = layer;
      r.index = j;
      r.shape.assign(t.shape().begin(), t.shape().end());
      r.view = std::span<const T>(t.data(), t.size());
      return r;
    };
    std::size_t i = 0;
    trainer.for_each_keyed_tensor([&](std::uint64_t layer, std::uint64_t j, auto& t) {
      auto r = record(layer, j, t);
      for (const auto& slot : state.slots) r.slot_views.push_back(i < slot.size() ? slot[i] : std::span<const T>{});
      payload.tensors.push_back(std::move(r));
      ++i;
    });
    // Replicas write the whole state once; a stage writes the layers it owns.
    const std::string file = trainer.checkpoint_replicated()
                                 ? std::string("state.bin")
                                 : "part-" + std::to_string(begin) + "-" + std::to_string(end) + ".bin";
    detail::write_part((folder / file).string(), payload);
    // Buffers (BatchNorm's running statistics), when the model has any: a
    // file of the same format beside the part, with no optimizer slots.
    std::vector<detail::tensor_record<T>> buffers;
    for_each_trainer_buffer(trainer, [&](std::uint64_t layer, std::uint64_t j, auto& t) {
      buffers.push_back(record(layer, j, t));
    });
    if (!buffers.empty()) {
      payload.slot_names.clear();
      payload.tensors = std::move(buffers);
      detail::write_part((folder / detail::buffers_file(file)).string(), payload);
    }
    written.push_back({file, begin, end});
  });
  // Rank 0 writes the manifest once every part is on disk, then prunes.
  std::vector<std::vector<detail::manifest_part>> parts;
  mpi::gather(comm_, written, parts, 0);
  agree(comm_, [&] {
    if (comm_.rank() != 0) return;
    detail::manifest m;
    m.trainer = Trainer::checkpoint_kind;
    m.element = detail::type_code<T>();
    m.layers = trainer.checkpoint_layers();
    m.step = step;
    for (const auto& rank_parts : parts) m.parts.insert(m.parts.end(), rank_parts.begin(), rank_parts.end());
    detail::write_manifest(manifest_path.string(), m);
    // Keep the newest `keep` complete checkpoints; drop older ones and
    // leftovers of interrupted saves older than this one. This one is the
    // first counted (it is complete), newer folders are not looked at, and
    // damaged checkpoints set aside are not step folders (list()).
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
void Checkpointer::load(Trainer& trainer, data::DistributedSampler* sampler, const std::string& path,
                        std::source_location site) {
  static_assert(check_checkpointable<Trainer>());
  operation op(comm_, "Checkpointer::load()", static_cast<std::int64_t>(trainer.optimizer().steps()), site);
  trace::span span("checkpoint load", "io");
  using T = typename Trainer::value_type;
  detail::checkpoint_contents<T> contents;
  optim::optimizer_state<T> state;
  const auto failure = parallax::detail::capture([&] {
    contents = detail::read_checkpoint<T>(path, trainer.checkpoint_local_layers());
    state = detail::match_checkpoint(trainer, sampler, contents, path);
  });
  detail::agree_on_load(comm_, failure);
  // Each rank read its own parts: they must agree on where training stands.
  agree_settings(comm_, {{"optimizer steps", static_cast<double>(state.steps)}, {"lr", state.learning_rate}},
                 "Checkpointer::load(): the parts of '" + path + "' read by each rank");
  // Every rank read and matched: only now does anything change. The
  // checkpoint's learning rate wins over the code's (docs/checkpoint.md).
  const double code_lr = trainer.optimizer().learning_rate();
  // Under a schedule, the schedule sets every step's rate: nothing to tell.
  const bool scheduled = [&] {
    if constexpr (requires { trainer.options().lr_schedule; }) return static_cast<bool>(trainer.options().lr_schedule);
    else return false;
  }();
  if (!scheduled && state.learning_rate != code_lr)
    notice("resume: lr is " + parallax::detail::number_text(state.learning_rate) + " in the checkpoint, " +
           parallax::detail::number_text(code_lr) + " in the code; the checkpoint's value is used (" + path + ")");
  detail::apply_checkpoint(trainer, sampler, contents, state);
  if (trainer.checkpoint_replicated()) {
    // Every rank loaded the same state (the replicas must stay equal).
    std::uint64_t h = 0;
    auto hash = [&](std::uint64_t, std::uint64_t, auto& t) {
      h = parallax::detail::content_hash(t.data(), t.size() * sizeof(T), h);
    };
    trainer.for_each_keyed_tensor(hash);
    for_each_trainer_buffer(trainer, hash);
    agree_equal(comm_, h, "Checkpointer::load(): the loaded parameters");
  }
  last_saved_step_ = trainer.optimizer().steps();
  last_save_time_ = std::chrono::steady_clock::now();
  claimed_ = true;
}

template <class Trainer>
std::optional<std::string> Checkpointer::resume_latest(Trainer& trainer, data::DistributedSampler* sampler,
                                                       std::source_location site) {
  operation op(comm_, "Checkpointer::resume_latest()", static_cast<std::int64_t>(trainer.optimizer().steps()), site);
  skipped_.clear();
  // Rank 0's view of the folder decides the candidates, and which of them
  // are checkpoints (a MANIFEST) rather than leftovers of an interrupted
  // save, so all ranks try the same ones and reach the same verdict.
  std::vector<std::string> candidates = list();
  std::vector<int> complete;
  for (const auto& c : candidates) complete.push_back(std::filesystem::exists(std::filesystem::path(c) / "MANIFEST"));
  mpi::broadcast(comm_, candidates, 0);
  mpi::broadcast(comm_, complete, 0);
  std::vector<std::string> damaged;  // skipped checkpoints (not leftovers), newest first
  for (std::size_t i = 0; i < candidates.size(); ++i) {
    const auto& c = candidates[i];
    try {
      load(trainer, sampler, c);
    } catch (const error& e) {
      // Intact but not ours: starting over would later overwrite it.
      if (e.kind() == error_kind::incompatible) throw;
      skipped_.emplace_back(c, e.what());
      if (i < complete.size() && complete[i]) damaged.push_back(c);
      notice("skipping checkpoint " + c + ": " + e.what());
      continue;
    }
    // Newer damaged checkpoints would stand where this run saves next.
    const auto aside = set_aside(damaged);
    for (std::size_t k = 0; k < aside.size(); ++k) notice("kept damaged checkpoint " + damaged[k] + " as " + aside[k]);
    if (!skipped_.empty()) notice("resuming from " + c + " (the newest valid checkpoint)");
    return c;
  }
  if (!damaged.empty()) {
    std::string list_text;
    for (const auto& [folder, cause] : skipped_)
      if (std::find(damaged.begin(), damaged.end(), folder) != damaged.end())
        list_text += (list_text.empty() ? "" : "; ") + std::filesystem::path(folder).filename().string() + ": " + cause;
    if (options_.on_all_damaged == damaged_policy::error)
      throw error(error_kind::damaged_file,
                  "Checkpointer::resume_latest(): every checkpoint in '" + dir_ + "' is damaged: " + list_text +
                      ". Nothing was changed; to start from scratch and keep them aside, use "
                      "checkpoint_options{.on_all_damaged = damaged_policy::start_fresh}");
    const auto aside = set_aside(damaged);
    std::string kept;
    for (const auto& a : aside) kept += (kept.empty() ? "" : ", ") + std::filesystem::path(a).filename().string();
    notice("every checkpoint in '" + dir_ + "' is damaged: " + list_text +
           ". Starting fresh (on_all_damaged = start_fresh); they are kept as " + kept);
  }
  claimed_ = true;  // nothing usable here: this run may write
  return std::nullopt;
}

template <class Trainer>
bool Checkpointer::maybe_save(Trainer& trainer, const data::DistributedSampler* sampler, std::source_location site) {
  operation op(comm_, "Checkpointer::maybe_save()", static_cast<std::int64_t>(trainer.optimizer().steps()), site);
  const std::uint64_t step = trainer.optimizer().steps();
  if (step == last_saved_step_) return false;
  // Mid-accumulation nothing is due: the same on every rank (micro-steps
  // are counted in lockstep), so the ranks still decide alike.
  if constexpr (HasPendingMicroSteps<Trainer>)
    if (trainer.pending_micro_steps() > 0) return false;
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

inline std::optional<std::uint64_t> Checkpointer::last_step() const {
  if (last_saved_step_ == ~std::uint64_t{0}) return std::nullopt;
  return last_saved_step_;
}

inline void Checkpointer::notice(const std::string& text) const {
  // One write of the whole line, so other ranks' output does not land inside it.
  if (comm_.rank() == 0 && !options_.quiet) std::cerr << ("parallax: " + text + "\n") << std::flush;
}

inline std::vector<std::string> Checkpointer::set_aside(const std::vector<std::string>& folders) {
  namespace fs = std::filesystem;
  std::vector<std::string> names;
  if (folders.empty()) return names;
  agree(comm_, [&] {
    if (comm_.rank() != 0) return;
    for (const auto& f : folders) {
      std::string to = f + ".damaged";
      for (int k = 2; fs::exists(to); ++k) to = f + ".damaged-" + std::to_string(k);
      std::error_code ec;
      fs::rename(f, to, ec);
      PARALLAX_CHECK_KIND(!ec, error_kind::io,
                          "Checkpointer: cannot set the damaged checkpoint '" + f + "' aside as '" + to +
                              "': " + ec.message());
      names.push_back(to);
    }
    sync_directory(dir_);
  });
  mpi::broadcast(comm_, names, 0);
  return names;
}

}  // namespace parallax::io
