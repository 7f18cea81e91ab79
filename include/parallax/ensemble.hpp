#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Ensemble<Model>: N replicas of a model trained independently — one per
/// rank, or one per group of ranks through a communicator split — with their
/// own seeds and optionally bootstrap shards, combined as
///   f(x) = sum_i w_i h(x; theta_i),  sum_i w_i = 1  (default w_i = 1/N),
/// which every rank receives from one all-reduce.

#include <parallax/core/comm.hpp>
#include <parallax/core/operation.hpp>
#include <parallax/core/concepts.hpp>
#include <parallax/core/error.hpp>
#include <parallax/data/sampler.hpp>
#include <parallax/data_parallel.hpp>
#include <parallax/detail/number_text.hpp>
#include <parallax/detail/random.hpp>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <numeric>
#include <source_location>
#include <string>
#include <vector>

namespace parallax {

struct ensemble_options {
  /// Ranks that train one replica together (data parallel inside the
  /// group). The world size must be a multiple of it.
  int ranks_per_replica = 1;
  /// Replica i is built from seed key(seed, i) and shuffles with it.
  std::uint64_t seed = 0;
  /// Each replica trains on a bootstrap sample (draws with replacement).
  bool bootstrap = false;
};

/// An ensemble of independently trained replicas.
/// @code
///   parallax::Ensemble<Net> ensemble([](std::uint64_t seed) { return Net(seed); },
///                                    parallax::optim::SGD<float>({.lr = 0.1}), {.seed = 7});
///   auto sampler = ensemble.make_sampler(train.size(), 64);
///   for (int e = 0; e < 5; ++e) ensemble.train_epoch(train, sampler);
///   ensemble.set_weights_from_scores(ensemble.evaluate_replica(valid).accuracy.value());
///   auto probabilities = ensemble.predict(x);   // the same on every rank
/// @endcode
template <class M>
class Ensemble {
  static_assert(check_model<M>());

 public:
  using model_type = M;
  using value_type = typename detail::value_type_of<M>::type;
  using batch_type = typename detail::batch_type_of<M>::type;

  /// Collective. Splits `comm` into replicas of ranks_per_replica
  /// consecutive ranks; replica i builds its model with
  /// make_model(replica_seed()) and trains it with its own DataParallel.
  Ensemble(const std::function<M(std::uint64_t seed)>& make_model, const optim::Optimizer<value_type>& optimizer,
           ensemble_options options = {}, data_parallel_options trainer_options = {},
           mpi::communicator comm = mpi::communicator(), std::source_location site = std::source_location::current());

  int replica() const { return replica_; }
  int replica_count() const { return replicas_; }
  std::uint64_t replica_seed() const { return detail::key(options_.seed, static_cast<std::uint64_t>(replica_)); }
  /// This replica's trainer, over its group of ranks.
  DataParallel<M>& trainer() { return *trainer_; }
  M& model() { return trainer_->model(); }

  /// Collective within the replica: a sampler seeded for this replica
  /// (bootstrap draws when ensemble_options::bootstrap).
  data::DistributedSampler make_sampler(std::size_t dataset_size, std::size_t global_batch,
                                        data::sampler_options options = {}, std::source_location site = std::source_location::current()) const;

  /// Collective over all ranks: one epoch of this replica's training (the
  /// replicas train independently). A failure in any replica is the same
  /// error on every rank, once every replica ended its epoch.
  template <class D>
    requires Dataset<D, typename M::batch_type>
  epoch_report train_epoch(const D& dataset, data::DistributedSampler& sampler, std::source_location site = std::source_location::current()) {
    operation op(world_, "Ensemble::train_epoch()", -1, site);
    return agree(world_, [&] { return trainer_->train_epoch(dataset, sampler); });
  }

  /// Collective over all ranks: this replica's loss and accuracy (a failure
  /// in any replica is the same error on every rank).
  template <class D>
    requires Dataset<D, typename M::batch_type>
  evaluation evaluate_replica(const D& dataset, std::size_t batch_size = 256, std::source_location site = std::source_location::current()) {
    operation op(world_, "Ensemble::evaluate_replica()", -1, site);
    return agree(world_, [&] { return trainer_->evaluate(dataset, batch_size); });
  }

  /// Collective over all ranks: the weighted mean of the replicas' outputs
  /// model.predict(x), the same on every rank.
  template <class X>
    requires requires(M& m, const X& x) {
      { m.predict(x) } -> Tensor;
    }
  auto predict(const X& x, std::source_location site = std::source_location::current());

  /// Collective: sets the weights (one per replica, positive sum; normalised
  /// to sum 1). Every rank must pass the same weights (checked).
  void set_weights(std::vector<double> weights, std::source_location site = std::source_location::current());
  /// Collective: weights proportional to each replica's score (e.g. its
  /// validation accuracy); every rank passes its own replica's score.
  void set_weights_from_scores(double score, std::source_location site = std::source_location::current());
  const std::vector<double>& weights() const { return weights_; }

 private:
  ensemble_options options_;
  mpi::communicator world_;
  mpi::communicator group_;
  int replica_ = 0;
  int replicas_ = 1;
  std::unique_ptr<DataParallel<M>> trainer_;
  std::vector<double> weights_;
};

// ---------------------------------------------------------------------------

template <class M>
Ensemble<M>::Ensemble(const std::function<M(std::uint64_t seed)>& make_model,
                      const optim::Optimizer<value_type>& optimizer, ensemble_options options,
                      data_parallel_options trainer_options, mpi::communicator comm, std::source_location site)
    : options_(options), world_(std::move(comm)) {
  operation op(world_, "Ensemble::Ensemble()", -1, site);
  const int p = world_.size();
  const int k = options_.ranks_per_replica;
  agree(world_, [&] {
    PARALLAX_CHECK(k >= 1 && p % k == 0, "Ensemble: " + std::to_string(p) + " ranks do not split into replicas of " +
                                             std::to_string(k) + " ranks");
    // Before the settings below, which call the schedule.
    training::check({trainer_options.on_nonfinite, trainer_options.clip_norm, trainer_options.lr_schedule},
                    optimizer, "Ensemble");
  });
  // Every rank of the world shares the ensemble's options and the replicas'
  // trainer settings (a replica of one rank would agree nothing itself).
  auto settings = data_parallel_settings(trainer_options, optimizer);
  settings.insert(settings.begin(), {{"ranks_per_replica", static_cast<double>(k)},
                                     {"seed", 0, std::to_string(options_.seed)},
                                     {"bootstrap", 0, options_.bootstrap ? "true" : "false"}});
  agree_settings(world_, settings, "Ensemble");
  replicas_ = p / k;
  replica_ = world_.rank() / k;
  group_ = world_.split(replica_, world_.rank());
  weights_.assign(static_cast<std::size_t>(replicas_), 1.0 / replicas_);
  auto model = agree(world_, [&] { return std::make_unique<M>(make_model(replica_seed())); });
  // A replica's trainer agrees its failures within the replica; the other
  // replicas learn them here.
  agree(world_, detail::capture([&] {
          trainer_ =
              std::make_unique<DataParallel<M>>(std::move(*model), optimizer, std::move(trainer_options), group_);
        }));
}

template <class M>
data::DistributedSampler Ensemble<M>::make_sampler(std::size_t dataset_size, std::size_t global_batch,
                                                   data::sampler_options options, std::source_location site) const {
  options.seed = detail::key(replica_seed(), options.seed);
  options.bootstrap = options.bootstrap || options_.bootstrap;
  return trainer_->make_sampler(dataset_size, global_batch, std::move(options), site);
}

template <class M>
template <class X>
  requires requires(M& m, const X& x) {
    { m.predict(x) } -> Tensor;
  }
auto Ensemble<M>::predict(const X& x, std::source_location site) {
  operation op(world_, "Ensemble::predict()", -1, site);
  auto out = agree(world_, [&] { return trainer_->model().predict(x); });
  agree_equal(world_, static_cast<std::uint64_t>(out.size()), "Ensemble::predict(): the output size");
  using V = typename decltype(out)::value_type;
  // Every rank of a replica holds the same output: each adds its share.
  const V share = static_cast<V>(weights_[static_cast<std::size_t>(replica_)] / options_.ranks_per_replica);
  for (auto& v : out) v *= share;
  allreduce_sum(world_, std::span<V>(out.data(), out.size()));
  return out;
}

template <class M>
void Ensemble<M>::set_weights(std::vector<double> weights, std::source_location site) {
  operation op(world_, "Ensemble::set_weights()", -1, site);
  agree(world_, [&] {
    PARALLAX_CHECK(weights.size() == static_cast<std::size_t>(replicas_),
                   "Ensemble::set_weights(): " + std::to_string(weights.size()) + " weights for " +
                       std::to_string(replicas_) + " replicas");
    double total = 0;
    for (double w : weights) {
      PARALLAX_CHECK(std::isfinite(w) && w >= 0, "Ensemble::set_weights(): weight " + detail::number_text(w) +
                                                     " is not a finite non-negative number");
      total += w;
    }
    PARALLAX_CHECK(total > 0, "Ensemble::set_weights(): the weights sum to 0");
    for (double& w : weights) w /= total;
  });
  std::vector<double> root = weights;
  broadcast(world_, std::span<double>(root), 0);
  agree(world_, [&] {
    PARALLAX_CHECK_KIND(root == weights, error_kind::rank_mismatch, "Ensemble::set_weights(): weights differ from rank 0's");
  });
  weights_ = std::move(weights);
}

template <class M>
void Ensemble<M>::set_weights_from_scores(double score, std::source_location site) {
  operation op(world_, "Ensemble::set_weights_from_scores()", -1, site);
  // One value per replica: its group's first rank contributes it.
  std::vector<double> scores(static_cast<std::size_t>(replicas_), 0.0);
  if (group_.rank() == 0) scores[static_cast<std::size_t>(replica_)] = score;
  allreduce_sum(world_, std::span<double>(scores));
  set_weights(std::move(scores));
}

}  // namespace parallax
