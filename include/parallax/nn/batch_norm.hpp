#pragma once
// SPDX-License-Identifier: BSL-1.0
/// BatchNorm<T, N> and SyncBatchNorm<T, N>: batch normalisation over every
/// axis but the channels (axis 1), with running statistics for eval mode, as
/// PyTorch's nn.BatchNorm1d/2d; SyncBatchNorm takes the batch statistics
/// over every rank of a communicator (the data-parallel group), so N ranks
/// with batch B/N train as one rank with batch B.

#include <parallax/core/agree.hpp>
#include <parallax/core/error.hpp>
#include <parallax/core/operation.hpp>
#include <parallax/detail/mpi.hpp>
#include <parallax/detail/number_text.hpp>
#include <parallax/detail/xtensor.hpp>
#include <parallax/nn/detail/checks.hpp>
#include <parallax/nn/detail/gain_and_bias.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace parallax::nn {

/// Batch normalisation of a [batch, channels, ...] tensor (rank N >= 2:
/// [batch, features] as nn.BatchNorm1d, [batch, channels, height, width] as
/// nn.BatchNorm2d). In training mode each channel is normalised with the
/// mean and biased variance of its values over the batch and every spatial
/// position,
///   y = (x - mean) / sqrt(var + eps) * gain + bias,
/// and backward folds that batch's statistics into the running ones:
///   running_mean = (1 - momentum) running_mean + momentum mean,
///   running_var  = (1 - momentum) running_var  + momentum var n / (n - 1)
/// (n the values per channel: the unbiased variance, as PyTorch). In eval
/// mode (`set_training(false)`) the running statistics normalise instead and
/// nothing is updated. gain starts at 1, bias at 0, the running mean at 0 and
/// the running variance at 1.
///
/// The running statistics are the layer's buffers(): state that is not
/// trained but is saved in checkpoints with the parameters (docs/layer.md,
/// "Buffers"). They change in backward, not forward: a chain that recomputes
/// forwards (a pipeline's recompute, a Residual) runs each micro-batch's
/// backward once, so each micro-batch is counted once, as PyTorch counts each
/// forward. Statistics are taken in double in two passes (the means, then
/// the squares about them: sums SyncBatchNorm adds across ranks), and
/// backward recomputes them from x: nothing is kept between the calls. A NaN in a channel makes that
/// channel's output, input gradient and running statistics NaN for the
/// whole batch, as in PyTorch.
/// @code
///   parallax::nn::BatchNorm<float, 4> norm(16);     // [batch, 16, height, width]
///   norm.forward(x, y);
///   norm.backward(x, y, dy, dx);                    // updates running_mean(), running_var()
/// @endcode
template <class T, std::size_t N = 2>
class BatchNorm : public detail::GainAndBias<T> {
  static_assert(N >= 2, "parallax: BatchNorm needs tensors of rank 2 or more: batch first, then the channels");

 public:
  using value_type = T;
  using input_type = xt::xtensor<T, N>;
  using output_type = xt::xtensor<T, N>;

  /// backward(x, y, dy, dx) never reads y (BackwardIgnoresOutput).
  static constexpr bool backward_reads_output = false;

  /// PyTorch's defaults.
  static constexpr double default_momentum = 0.1;
  static constexpr double default_eps = 1e-5;

  /// A layer normalising `channels` (> 0) channels; momentum in [0, 1] and
  /// eps >= 0, both finite.
  explicit BatchNorm(std::size_t channels, double momentum = default_momentum, double eps = default_eps);

  /// gain 1, bias 0, running mean 0 and running variance 1, as PyTorch:
  /// nothing is drawn, so the seed and the index do not matter.
  void initialize(std::uint64_t seed, std::size_t index);

  /// Training mode (the default) normalises with the batch's statistics and
  /// updates the running ones; eval mode (false) normalises with the running
  /// statistics.
  void set_training(bool training) { training_ = training; }
  bool training() const { return training_; }

  /// y = (x - mean) / sqrt(var + eps) * gain + bias per channel; y is
  /// resized only when its shape differs from x's. Throws parallax::error in
  /// training mode when a channel has a single value (the variance needs
  /// two).
  void forward(const input_type& x, output_type& y) const;

  /// dx = gain / sqrt(var + eps) (dy - mean(dy) - xhat mean(dy xhat)) in
  /// training mode, dx = gain / sqrt(running_var + eps) dy in eval mode (dx
  /// resized only when needed); adds sum dy xhat to the gain gradient and
  /// sum dy to the bias gradient. In training mode it then updates the
  /// running statistics with this batch's.
  void backward(const input_type& x, const output_type& y, const output_type& dy, input_type& dx);

  // parameters() (the gain, then the bias, each [channels]), gradients(),
  // gain() (PyTorch's `weight`) and bias(): detail::GainAndBias's.
  /// The running mean, then the running variance, each [channels]: saved
  /// and loaded with the parameters, never trained (HasLayerBuffers).
  auto buffers() { return std::tie(running_mean_, running_var_); }
  auto buffers() const { return std::tie(running_mean_, running_var_); }

  /// The running mean [channels].
  xt::xtensor<T, 1>& running_mean() { return running_mean_; }
  const xt::xtensor<T, 1>& running_mean() const { return running_mean_; }
  /// The running (unbiased) variance [channels].
  xt::xtensor<T, 1>& running_var() { return running_var_; }
  const xt::xtensor<T, 1>& running_var() const { return running_var_; }

  /// The channel count (axis 1).
  std::size_t channels() const { return channels_; }
  /// The running statistics' update weight.
  double momentum() const { return momentum_; }
  /// What is added to the variance.
  double eps() const { return eps_; }

  /// "BatchNorm(16)", "BatchNorm(16, momentum 0.01, eps 0.001)" for other
  /// settings.
  std::string describe() const;
  /// The input shape itself; throws parallax::error when its rank is not N
  /// or its extent 1 is not channels.
  std::vector<std::size_t> output_shape(const std::vector<std::size_t>& input_shape) const;
  /// 2 * channels: the gain and the bias.
  static std::size_t parameter_count(std::size_t channels, double /*momentum*/ = default_momentum,
                                     double /*eps*/ = default_eps) {
    return 2 * channels;
  }

 protected:
  /// With a communicator, the batch statistics are summed over its ranks
  /// (SyncBatchNorm); `name` is what describe() and the errors say.
  BatchNorm(std::size_t channels, double momentum, double eps, std::optional<mpi::communicator> comm,
            const char* name);
  /// The communicator the statistics are summed over, if any.
  const std::optional<mpi::communicator>& group() const { return comm_; }

 private:
  /// Per channel: the shift and the scale that normalise it, and the
  /// batch's mean and biased variance (for the running update).
  struct channel_statistics {
    std::vector<double> mean, inv_std, var;
    double count = 0;        ///< values per channel, over every rank
    double local_count = 0;  ///< values per channel on this rank
    /// With dy: this rank's sum dy and sum dy (x - mean) per channel, and
    /// the global batch's means of dy and dy xhat (each rank's dy weighted by its share).
    std::vector<double> sum_dy, sum_dy_xmu, mean_dy, mean_dy_xhat;
  };
  /// Throws parallax::error unless x has channels_ channels.
  void check_input(const input_type& x, const char* where) const;
  /// Calls f(c, offset) for every run of contiguous values of channel c
  /// (the spatial positions of one sample's channel), runs of spatial() values.
  template <class F>
  void for_each_run(const input_type& x, F&& f) const;
  static std::size_t spatial(const input_type& x);
  /// Sums `values` over the communicator's ranks with every rank's failure
  /// agreed (SyncBatchNorm), else throws `failure` if there is one.
  void combine(std::vector<double>& values, const std::optional<parallax::error>& failure) const;
  /// The batch's statistics of x (with dy, its sums too), over every rank
  /// for SyncBatchNorm, in two passes and double: the means, then the
  /// squares about them. Checks the input (and dy); throws when a channel
  /// has a single value.
  channel_statistics batch_statistics(const input_type& x, const output_type* dy, const char* where) const;
  /// The running statistics as shift and scale (eval mode).
  channel_statistics running_statistics() const;
  /// y from x with the statistics.
  void normalize(const input_type& x, const channel_statistics& s, output_type& y) const;

  std::size_t channels_;
  double momentum_;
  double eps_;
  std::optional<mpi::communicator> comm_;
  const char* name_;
  bool training_ = true;
  using detail::GainAndBias<T>::gain_;
  using detail::GainAndBias<T>::bias_;
  using detail::GainAndBias<T>::gain_grad_;
  using detail::GainAndBias<T>::bias_grad_;
  xt::xtensor<T, 1> running_mean_;
  xt::xtensor<T, 1> running_var_;
};

/// BatchNorm whose batch statistics are those of the global batch: every
/// training forward and backward sums each channel's statistics over the
/// ranks of `comm` (in an operation, two small all-reduces: 1 + channels
/// doubles with the failure verdict, then channels forward, 3 x channels
/// backward).
/// Under a DataParallel on `comm`, N ranks with batch B/N then train as one
/// rank with batch B: parameters and running statistics equal to 1e-12 in
/// double, where BatchNorm's would normalise each rank's shard alone
/// (PyTorch's nn.SyncBatchNorm).
///
/// Pass the communicator the DataParallel trains on (with tensor
/// parallelism, the data-parallel group's). Training forward and backward are
/// collective on it: every rank of it must run them together, as a
/// DataParallel's ranks do; each call enters a library operation, so ranks
/// out of step (one rank failed in an earlier layer and went on to the
/// trainer) get one rank_mismatch error instead of a hang. The gradient the
/// backward passes down is that of this rank's share of the global loss
/// scaled by the trainer's weight for it (its share of the samples), which is
/// what DataParallel's sample-weighted average undoes: the averaged gradient
/// is that of the global batch. Eval mode communicates nothing. It does not
/// combine with DataParallel's reproducible_atom (each atom would be a
/// collective the ranks run different numbers of).
/// @code
///   parallax::nn::SyncBatchNorm<double> norm(64, comm);   // comm: the DataParallel's
/// @endcode
template <class T, std::size_t N = 2>
class SyncBatchNorm : public BatchNorm<T, N> {
 public:
  /// Its training forward and backward are collectives over comm (CombinesRanks).
  static constexpr bool combines_ranks = true;
  /// Collective: channels, momentum and eps are agreed over `comm` (a
  /// difference is one rank_mismatch error naming them), and so are their
  /// checks.
  SyncBatchNorm(std::size_t channels, mpi::communicator comm, double momentum = BatchNorm<T, N>::default_momentum,
                double eps = BatchNorm<T, N>::default_eps);
  /// The ranks the statistics are summed over.
  const mpi::communicator& communicator() const { return *this->group(); }
  /// 2 * channels: the gain and the bias.
  static std::size_t parameter_count(std::size_t channels, const mpi::communicator& /*comm*/,
                                     double /*momentum*/ = BatchNorm<T, N>::default_momentum,
                                     double /*eps*/ = BatchNorm<T, N>::default_eps) {
    return 2 * channels;
  }

 private:
  static mpi::communicator agreed(std::size_t channels, double momentum, double eps, mpi::communicator comm);
};

// ---------------------------------------------------------------------------

template <class T, std::size_t N>
BatchNorm<T, N>::BatchNorm(std::size_t channels, double momentum, double eps)
    : BatchNorm(channels, momentum, eps, std::nullopt, "BatchNorm") {}

template <class T, std::size_t N>
BatchNorm<T, N>::BatchNorm(std::size_t channels, double momentum, double eps, std::optional<mpi::communicator> comm,
                           const char* name)
    : detail::GainAndBias<T>(channels),
      channels_(channels),
      momentum_(momentum),
      eps_(eps),
      comm_(std::move(comm)),
      name_(name) {
  PARALLAX_CHECK(channels > 0, std::string(name_) + ": the channel count must be positive, got 0");
  PARALLAX_CHECK(std::isfinite(momentum) && momentum >= 0 && momentum <= 1,
                 std::string(name_) + "(" + std::to_string(channels) + "): momentum must be in [0, 1], got " +
                     parallax::detail::number_text(momentum));
  PARALLAX_CHECK(std::isfinite(eps) && eps >= 0, std::string(name_) + "(" + std::to_string(channels) +
                                                     "): eps must be finite and >= 0, got " +
                                                     parallax::detail::number_text(eps));
  const std::array<std::size_t, 1> shape{channels};
  running_mean_ = xt::xtensor<T, 1>(shape, T(0));
  running_var_ = xt::xtensor<T, 1>(shape, T(1));
}

template <class T, std::size_t N>
void BatchNorm<T, N>::initialize(std::uint64_t /*seed*/, std::size_t /*index*/) {
  this->reset_gain_and_bias();
  std::fill(running_mean_.begin(), running_mean_.end(), T(0));
  std::fill(running_var_.begin(), running_var_.end(), T(1));
}

template <class T, std::size_t N>
void BatchNorm<T, N>::check_input(const input_type& x, const char* where) const {
  PARALLAX_CHECK(x.shape()[1] == channels_, std::string(name_) + "::" + where + "(): input of shape " +
                                                parallax::detail::shape_string(x.shape()) + " has " +
                                                std::to_string(x.shape()[1]) + " channels (extent 1), expected " +
                                                std::to_string(channels_));
}

template <class T, std::size_t N>
std::size_t BatchNorm<T, N>::spatial(const input_type& x) {
  std::size_t s = 1;
  for (std::size_t d = 2; d < N; ++d) s *= x.shape()[d];
  return s;
}

template <class T, std::size_t N>
template <class F>
void BatchNorm<T, N>::for_each_run(const input_type& x, F&& f) const {
  const std::size_t batch = x.shape()[0];
  const std::size_t s = spatial(x);
  for (std::size_t b = 0; b < batch; ++b)
    for (std::size_t c = 0; c < channels_; ++c) f(c, (b * channels_ + c) * s);
}

template <class T, std::size_t N>
void BatchNorm<T, N>::combine(std::vector<double>& values, const std::optional<parallax::error>& failure) const {
  if (!comm_) {
    if (failure) throw *failure;
    return;
  }
  parallax::sum_and_agree(*comm_, values, failure);
}

template <class T, std::size_t N>
auto BatchNorm<T, N>::batch_statistics(const input_type& x, const output_type* dy, const char* where) const
    -> channel_statistics {
  const std::size_t C = channels_;
  // One operation for the call (SyncBatchNorm): ranks out of step meet here.
  std::optional<operation> op;
  if (comm_) op.emplace(*comm_, std::string(name_) + "::" + where + "()");
  // Pass 1: the count and the sums of x, for the means.
  std::vector<double> first(1 + C, 0.0);
  const auto failure = parallax::detail::capture([&] {
    check_input(x, where);
    if (dy) detail::check_dy_shape(dy->shape(), x.shape(), name_);
    const std::size_t s = spatial(x);
    first[0] = static_cast<double>(x.shape()[0] * s);
    for_each_run(x, [&](std::size_t c, std::size_t at) {
      double a = 0;
      for (std::size_t k = 0; k < s; ++k) a += static_cast<double>(x.data()[at + k]);
      first[1 + c] += a;
    });
  });
  const double local_count = failure ? 0.0 : first[0];
  if (failure) std::fill(first.begin(), first.end(), 0.0);  // a failed rank still takes part, with zeros
  combine(first, failure);
  const double n = first[0];
  if (!(n > 1)) {
    const std::string message = std::string(name_) + "(" + std::to_string(C) +
                                "): training needs more than one value per channel, got " +
                                parallax::detail::number_text(n) + (comm_ ? " over every rank" : "") +
                                " (batch x spatial positions); use eval mode for a single value";
    if (!comm_) parallax::detail::throw_error(message);
    // The sums are the same on every rank: so is the verdict, naming them all.
    std::vector<int> ranks(static_cast<std::size_t>(comm_->size()));
    for (std::size_t r = 0; r < ranks.size(); ++r) ranks[r] = static_cast<int>(r);
    throw parallax::error(error_kind::invalid_argument, message,
                          parallax::detail::world_ranks_of(MPI_Comm(*comm_), ranks));
  }
  channel_statistics st;
  st.count = n;
  st.local_count = local_count;
  st.mean.resize(C);
  for (std::size_t c = 0; c < C; ++c) st.mean[c] = first[1 + c] / n;
  // Pass 2: the squares about the mean (as exact as two passes are), and
  // with dy its sums: [sum (x - mean)^2, sum dy, sum dy (x - mean)].
  std::vector<double> second((dy ? 3 : 1) * C, 0.0);
  const std::size_t s = spatial(x);
  if (local_count > 0)
    for_each_run(x, [&](std::size_t c, std::size_t at) {
      double q = 0, d = 0, dq = 0;
      for (std::size_t k = 0; k < s; ++k) {
        const double u = static_cast<double>(x.data()[at + k]) - st.mean[c];
        q += u * u;
        if (dy) {
          const double g = static_cast<double>(dy->data()[at + k]);
          d += g;
          dq += g * u;
        }
      }
      second[c] += q;
      if (dy) {
        second[C + c] += d;
        second[2 * C + c] += dq;
      }
    });
  if (dy) {
    st.sum_dy.assign(second.begin() + static_cast<std::ptrdiff_t>(C), second.begin() + static_cast<std::ptrdiff_t>(2 * C));
    st.sum_dy_xmu.assign(second.begin() + static_cast<std::ptrdiff_t>(2 * C), second.end());
    // dy is this rank's share of the loss: weighted by its values (the
    // trainer's weight for its samples) before the sum, divided back below.
    for (std::size_t k = C; k < 3 * C; ++k) second[k] *= local_count;
  }
  combine(second, std::nullopt);
  st.var.resize(C);
  st.inv_std.resize(C);
  for (std::size_t c = 0; c < C; ++c) {
    st.var[c] = second[c] / n;
    st.inv_std[c] = 1.0 / std::sqrt(st.var[c] + eps_);
  }
  if (dy && local_count > 0) {
    const double weight = n * local_count;
    st.mean_dy.resize(C);
    st.mean_dy_xhat.resize(C);
    for (std::size_t c = 0; c < C; ++c) {
      st.mean_dy[c] = second[C + c] / weight;
      st.mean_dy_xhat[c] = second[2 * C + c] / weight * st.inv_std[c];
    }
  }
  return st;
}

template <class T, std::size_t N>
auto BatchNorm<T, N>::running_statistics() const -> channel_statistics {
  channel_statistics s;
  s.mean.resize(channels_);
  s.inv_std.resize(channels_);
  for (std::size_t c = 0; c < channels_; ++c) {
    s.mean[c] = static_cast<double>(running_mean_(c));
    s.inv_std[c] = 1.0 / std::sqrt(static_cast<double>(running_var_(c)) + eps_);
  }
  return s;
}

template <class T, std::size_t N>
void BatchNorm<T, N>::normalize(const input_type& x, const channel_statistics& s, output_type& y) const {
  if (y.shape() != x.shape()) y.resize(x.shape());
  const std::size_t n = spatial(x);
  for_each_run(x, [&](std::size_t c, std::size_t at) {
    const double scale = s.inv_std[c] * static_cast<double>(gain_(c));
    const double shift = static_cast<double>(bias_(c));
    const T* in = x.data() + at;
    T* out = y.data() + at;
    for (std::size_t k = 0; k < n; ++k) out[k] = static_cast<T>((static_cast<double>(in[k]) - s.mean[c]) * scale + shift);
  });
}

template <class T, std::size_t N>
void BatchNorm<T, N>::forward(const input_type& x, output_type& y) const {
  if (!training_) {
    check_input(x, "forward");
    normalize(x, running_statistics(), y);
    return;
  }
  normalize(x, batch_statistics(x, nullptr, "forward"), y);
}

template <class T, std::size_t N>
void BatchNorm<T, N>::backward(const input_type& x, const output_type& /*y*/, const output_type& dy,
                               input_type& dx) {
  const std::size_t C = channels_;
  const std::size_t n = spatial(x);
  if (!training_) {
    check_input(x, "backward");
    detail::check_dy_shape(dy.shape(), x.shape(), name_);
    if (dx.shape() != x.shape()) dx.resize(x.shape());
    const auto s = running_statistics();
    for_each_run(x, [&](std::size_t c, std::size_t at) {
      const double g = static_cast<double>(gain_(c)) * s.inv_std[c];
      double d = 0, dxhat = 0;
      for (std::size_t k = 0; k < n; ++k) {
        const double gk = static_cast<double>(dy.data()[at + k]);
        dx.data()[at + k] = static_cast<T>(gk * g);
        d += gk;
        dxhat += gk * (static_cast<double>(x.data()[at + k]) - s.mean[c]) * s.inv_std[c];
      }
      gain_grad_(c) += static_cast<T>(dxhat);
      bias_grad_(c) += static_cast<T>(d);
    });
    return;
  }
  const auto s = batch_statistics(x, &dy, "backward");
  if (dx.shape() != x.shape()) dx.resize(x.shape());
  if (s.local_count == 0) return;  // no values here (SyncBatchNorm: other ranks have them)
  for_each_run(x, [&](std::size_t c, std::size_t at) {
    const double g = static_cast<double>(gain_(c)) * s.inv_std[c];
    for (std::size_t k = 0; k < n; ++k) {
      const double xhat = (static_cast<double>(x.data()[at + k]) - s.mean[c]) * s.inv_std[c];
      dx.data()[at + k] =
          static_cast<T>(g * (static_cast<double>(dy.data()[at + k]) - s.mean_dy[c] - xhat * s.mean_dy_xhat[c]));
    }
  });
  const double unbiased = s.count / (s.count - 1);
  for (std::size_t c = 0; c < C; ++c) {
    gain_grad_(c) += static_cast<T>(s.sum_dy_xmu[c] * s.inv_std[c]);
    bias_grad_(c) += static_cast<T>(s.sum_dy[c]);
    running_mean_(c) =
        static_cast<T>((1 - momentum_) * static_cast<double>(running_mean_(c)) + momentum_ * s.mean[c]);
    running_var_(c) =
        static_cast<T>((1 - momentum_) * static_cast<double>(running_var_(c)) + momentum_ * s.var[c] * unbiased);
  }
}

template <class T, std::size_t N>
std::string BatchNorm<T, N>::describe() const {
  std::string text = std::string(name_) + "(" + std::to_string(channels_);
  if (momentum_ != default_momentum) text += ", momentum " + parallax::detail::number_text(momentum_);
  if (eps_ != default_eps) text += ", eps " + parallax::detail::number_text(eps_);
  if (comm_) text += ", over " + std::to_string(comm_->size()) + (comm_->size() == 1 ? " rank" : " ranks");
  return text + ")";
}

template <class T, std::size_t N>
std::vector<std::size_t> BatchNorm<T, N>::output_shape(const std::vector<std::size_t>& input_shape) const {
  detail::check_input_rank(input_shape, N, describe());
  PARALLAX_CHECK(input_shape[1] == channels_, describe() + ": input shape " +
                                                  parallax::detail::shape_string(input_shape) + " has " +
                                                  std::to_string(input_shape[1]) + " channels (extent 1), expected " +
                                                  std::to_string(channels_));
  return input_shape;
}

template <class T, std::size_t N>
SyncBatchNorm<T, N>::SyncBatchNorm(std::size_t channels, mpi::communicator comm, double momentum, double eps)
    : BatchNorm<T, N>(channels, momentum, eps, agreed(channels, momentum, eps, std::move(comm)), "SyncBatchNorm") {}

template <class T, std::size_t N>
mpi::communicator SyncBatchNorm<T, N>::agreed(std::size_t channels, double momentum, double eps,
                                              mpi::communicator comm) {
  parallax::agree_settings(comm,
                           {{"channels", static_cast<double>(channels)}, {"momentum", momentum}, {"eps", eps}},
                           "SyncBatchNorm");
  // The settings' checks, agreed: the same error on every rank.
  parallax::agree(comm, [&] { BatchNorm<T, N> probe(channels, momentum, eps); });
  return comm;
}

}  // namespace parallax::nn
