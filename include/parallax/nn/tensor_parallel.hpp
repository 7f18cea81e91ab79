#pragma once
// SPDX-License-Identifier: BSL-1.0
/// ColumnParallelLinear<T, N> and RowParallelLinear<T, N>: one Linear's
/// weight cut across the t ranks of a communicator, Megatron-LM's pair. A
/// column-parallel layer followed by a row-parallel one (with elementwise
/// layers between) computes the unsplit pair with one all-reduce forward
/// (the row-parallel output) and one backward (the column-parallel input
/// gradient). nn/parallel_attention.hpp splits attention's heads with them.

#include <parallax/core/agree.hpp>
#include <parallax/core/error.hpp>
#include <parallax/core/operation.hpp>
#include <parallax/core/ring.hpp>
#include <parallax/detail/mpi.hpp>
#include <parallax/detail/xtensor.hpp>
#include <parallax/nn/detail/checks.hpp>
#include <parallax/nn/detail/strided_gemm.hpp>
#include <parallax/nn/detail/weight_and_bias.hpp>
#include <parallax/nn/linear.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace parallax::nn {

namespace detail {

/// Collective: total / comm.size(), agreed: a tensor-parallel size that does
/// not divide `total` (on any rank) is one error on every rank, naming the
/// layer, what is cut and both sizes.
inline std::size_t shard_of(std::size_t total, const mpi::communicator& comm, const char* layer, const char* what) {
  // Every rank must cut the same layer: sizes that differ between ranks are
  // one rank_mismatch error naming them.
  parallax::agree_settings(comm, {{what, static_cast<double>(total)}}, layer);
  return parallax::agree(comm, [&] {
    const auto t = static_cast<std::size_t>(comm.size());
    PARALLAX_CHECK(total > 0 && total % t == 0, std::string(layer) + ": the tensor-parallel size " +
                                                    std::to_string(t) + " does not divide the " + what + " " +
                                                    std::to_string(total));
    return total / t;
  });
}

/// Collective: out / groups, agreed: groups must be positive and divide out.
inline std::size_t group_width(std::size_t out, std::size_t groups, const mpi::communicator& comm) {
  return parallax::agree(comm, [&] {
    PARALLAX_CHECK(groups > 0 && out % groups == 0, "ColumnParallelLinear: " + std::to_string(groups) +
                                                        " output groups do not divide the output width " +
                                                        std::to_string(out));
    return out / groups;
  });
}

/// Collective: the extents of `shape` must be the same on every rank (the
/// operand of an all-reduce), else one rank_mismatch error naming them.
template <class Shape>
void agree_shape(const mpi::communicator& comm, const Shape& shape, const std::string& who) {
  std::vector<parallax::setting> extents;
  for (std::size_t d = 0; d < shape.size(); ++d)
    extents.push_back({"extent " + std::to_string(d), static_cast<double>(shape[d])});
  parallax::agree_settings(comm, extents, who);
}

/// The unsplit Linear(in, out)'s initial weight and bias for (seed, index):
/// what every shard is cut from, so any t starts from the same layer.
template <class T>
Linear<T, 2> unsplit_linear(std::size_t in, std::size_t out, std::uint64_t seed, std::size_t index) {
  Linear<T, 2> full(in, out);
  full.initialize(seed, index);
  return full;
}

}  // namespace detail

/// The first of Megatron-LM's pair: y_r = x W[:, block r] + b[block r] on
/// rank r of the communicator, for x [..., in] the same on every rank and
/// y_r [..., out / t], rank r's block of the unsplit layer's output columns.
/// backward sums the ranks' partial input gradients (one all-reduce), so
/// every rank holds the unsplit dx; backward_parameters (a chain's first
/// layer) needs no communication. The shards are cut from the unsplit
/// Linear(in, out) drawn from (seed, index), so any t starts from the same
/// weights. Every call is collective over the communicator, and a failure on
/// one rank (a wrong input width) is the same error on all of them.
/// @code
///   parallax::mpi::communicator tp = world.split(world.rank() / 2);   // pairs of ranks
///   parallax::nn::Sequential mlp{parallax::nn::ColumnParallelLinear<float>(256, 1024, tp), parallax::nn::GELU<float>{},
///                                parallax::nn::RowParallelLinear<float>(1024, 256, tp), ...};
/// @endcode
template <class T, std::size_t N = 2>
class ColumnParallelLinear {
 public:
  using value_type = T;
  using input_type = xt::xtensor<T, N>;
  using output_type = xt::xtensor<T, N>;
  /// backward(x, y, dy, dx) never reads y (BackwardIgnoresOutput).
  static constexpr bool backward_reads_output = false;

  /// Collective over `comm` (t ranks; MPI_COMM_WORLD by default): rank r
  /// holds columns [r out / t, (r + 1) out / t) of the weight and the bias;
  /// t must divide out. With `groups` > 1 the output columns are that many
  /// equal groups (attention's q, k and v), each cut alike: rank r holds
  /// block r of every group, side by side; t * groups must divide out.
  ColumnParallelLinear(std::size_t in, std::size_t out, mpi::communicator comm = {}, std::size_t groups = 1);

  /// This rank's columns of the unsplit Linear(in, out)'s draw from (seed, index).
  void initialize(std::uint64_t seed, std::size_t index);

  /// Collective over the communicator: y_r = x W_r + b_r.
  void forward(const input_type& x, output_type& y);
  /// Collective: dx = sum over the ranks of dy_r W_r^T (every rank the same
  /// bits); adds x^T dy_r and colsum(dy_r) to this rank's gradients.
  void backward(const input_type& x, const output_type& y, const output_type& dy, input_type& dx);
  /// Collective (the agreement only): the parameter gradients, no dx.
  void backward_parameters(const input_type& x, const output_type& y, const output_type& dy);

  /// This rank's weight [in, out / t] and bias [out / t].
  auto parameters() { return shard_.parameters(); }
  auto parameters() const { return shard_.parameters(); }
  auto gradients() { return shard_.gradients(); }
  auto gradients() const { return shard_.gradients(); }
  /// This rank's block, as a Linear(in, out / t).
  Linear<T, N>& shard() { return shard_; }
  const Linear<T, N>& shard() const { return shard_; }

  std::size_t in_features() const { return in_; }
  /// The unsplit layer's outputs.
  std::size_t out_features() const { return out_; }
  /// The column of the unsplit layer that this rank's output column j is.
  std::size_t unsplit_column(std::size_t j) const {
    const std::size_t per_group = shard_.out_features() / groups_;
    return (j / per_group) * (out_ / groups_) + static_cast<std::size_t>(comm_.rank()) * per_group + j % per_group;
  }
  /// unsplit_column(0): with one group, this rank's columns are
  /// [first_column(), first_column() + out / t).
  std::size_t first_column() const { return unsplit_column(0); }
  /// How many groups the output columns form.
  std::size_t groups() const { return groups_; }
  const mpi::communicator& communicator() const { return comm_; }

  /// "ColumnParallelLinear(256 -> 1024, 512 columns on each of 2 ranks)".
  std::string describe() const;
  /// x's shape with out / t last.
  std::vector<std::size_t> output_shape(const std::vector<std::size_t>& input_shape) const;

 private:
  std::size_t in_;
  std::size_t out_;
  std::size_t groups_;
  mpi::communicator comm_;
  Linear<T, N> shard_;
};

/// The second of Megatron-LM's pair: y = sum over ranks r of x_r W[block r, :]
/// + b, for x_r [..., in / t] (rank r's block of the unsplit input's
/// columns: a ColumnParallelLinear's output, through elementwise layers) and
/// y [..., out] the same on every rank (one all-reduce; the bias added once,
/// after it). backward needs no communication: dx_r = dy W_r^T, and the
/// gradients of W_r and of the bias (the same on every rank, as dy is) are
/// added. The shards are cut from the unsplit Linear(in, out) drawn from
/// (seed, index). Every call is collective, failures agreed.
template <class T, std::size_t N = 2>
class RowParallelLinear : public detail::WeightAndBias<T> {
 public:
  using value_type = T;
  using input_type = xt::xtensor<T, N>;
  using output_type = xt::xtensor<T, N>;
  /// backward(x, y, dy, dx) never reads y (BackwardIgnoresOutput).
  static constexpr bool backward_reads_output = false;

  /// Collective over `comm` (t ranks; MPI_COMM_WORLD by default): rank r
  /// holds rows [r in / t, (r + 1) in / t) of the weight and the whole bias;
  /// t must divide in.
  RowParallelLinear(std::size_t in, std::size_t out, mpi::communicator comm = {});

  /// This rank's rows of the unsplit Linear(in, out)'s draw from (seed,
  /// index), and its whole bias.
  void initialize(std::uint64_t seed, std::size_t index);

  /// Collective: y = allreduce(x_r W_r) + b.
  void forward(const input_type& x, output_type& y);
  /// Collective (the agreement only): dx_r = dy W_r^T; adds x_r^T dy and
  /// colsum(dy).
  void backward(const input_type& x, const output_type& y, const output_type& dy, input_type& dx);
  void backward_parameters(const input_type& x, const output_type& y, const output_type& dy);

  // parameters(), gradients(), weight() [in / t, out] and bias() [out]:
  // from WeightAndBias.

  /// The unsplit layer's inputs.
  std::size_t in_features() const { return in_; }
  std::size_t out_features() const { return out_; }
  /// in / t: the input columns this rank takes.
  std::size_t local_in_features() const { return local_in_; }
  /// The first of this rank's weight rows in the unsplit weight.
  std::size_t first_row() const { return static_cast<std::size_t>(comm_.rank()) * local_in_; }
  const mpi::communicator& communicator() const { return comm_; }

  /// "RowParallelLinear(1024 -> 256, 512 rows on each of 2 ranks)".
  std::string describe() const;
  /// x's shape with out last, for x [..., in / t].
  std::vector<std::size_t> output_shape(const std::vector<std::size_t>& input_shape) const;

 private:
  void backward_impl(const input_type& x, const output_type& dy, input_type* dx);

  std::size_t in_;
  std::size_t out_;
  mpi::communicator comm_;
  std::size_t local_in_;
};

// ---------------------------------------------------------------------------

namespace detail {

inline std::string shards_text(std::size_t per_rank, const char* what, int ranks) {
  return std::to_string(per_rank) + " " + what + " on each of " + std::to_string(ranks) +
         (ranks == 1 ? " rank" : " ranks");
}

}  // namespace detail

template <class T, std::size_t N>
ColumnParallelLinear<T, N>::ColumnParallelLinear(std::size_t in, std::size_t out, mpi::communicator comm,
                                                 std::size_t groups)
    : in_(in),
      out_(out),
      groups_(groups),
      comm_(std::move(comm)),
      shard_(in, groups * detail::shard_of(detail::group_width(out, groups, comm_), comm_, "ColumnParallelLinear",
                                           groups > 1 ? "width of each output group" : "output width")) {
  initialize(0, 0);
}

template <class T, std::size_t N>
void ColumnParallelLinear<T, N>::initialize(std::uint64_t seed, std::size_t index) {
  const auto full = detail::unsplit_linear<T>(in_, out_, seed, index);
  const std::size_t local = shard_.out_features();
  for (std::size_t j = 0; j < local; ++j) {
    const std::size_t c = unsplit_column(j);
    for (std::size_t i = 0; i < in_; ++i) shard_.weight()(i, j) = full.weight()(i, c);
    shard_.bias()(j) = full.bias()(c);
  }
}

template <class T, std::size_t N>
void ColumnParallelLinear<T, N>::forward(const input_type& x, output_type& y) {
  operation op(comm_, "ColumnParallelLinear::forward()");
  parallax::agree(comm_, [&] { shard_.forward(x, y); });
}

template <class T, std::size_t N>
void ColumnParallelLinear<T, N>::backward(const input_type& x, const output_type& y, const output_type& dy,
                                          input_type& dx) {
  operation op(comm_, "ColumnParallelLinear::backward()");
  parallax::agree(comm_, [&] { shard_.backward(x, y, dy, dx); });
  detail::agree_shape(comm_, dx.shape(), "ColumnParallelLinear::backward(): the input gradient's shape");
  parallax::allreduce_sum(comm_, std::span<T>(dx.data(), dx.size()));
}

template <class T, std::size_t N>
void ColumnParallelLinear<T, N>::backward_parameters(const input_type& x, const output_type& y,
                                                     const output_type& dy) {
  operation op(comm_, "ColumnParallelLinear::backward_parameters()");
  parallax::agree(comm_, [&] { shard_.backward_parameters(x, y, dy); });
}

template <class T, std::size_t N>
std::string ColumnParallelLinear<T, N>::describe() const {
  return "ColumnParallelLinear(" + std::to_string(in_) + " -> " + std::to_string(out_) + ", " +
         detail::shards_text(shard_.out_features(), "columns", comm_.size()) + ")";
}

template <class T, std::size_t N>
std::vector<std::size_t> ColumnParallelLinear<T, N>::output_shape(const std::vector<std::size_t>& input_shape) const {
  PARALLAX_CHECK(input_shape.size() == N && input_shape[N - 1] == in_,
                 describe() + ": input shape " + parallax::detail::shape_string(input_shape) +
                     " does not fit the expected (batch, ..., " + std::to_string(in_) + ") of rank " +
                     std::to_string(N));
  return shard_.output_shape(input_shape);
}

template <class T, std::size_t N>
RowParallelLinear<T, N>::RowParallelLinear(std::size_t in, std::size_t out, mpi::communicator comm)
    : in_(in), out_(out), comm_(std::move(comm)), local_in_(detail::shard_of(in, comm_, "RowParallelLinear", "input width")) {
  PARALLAX_CHECK(out > 0, "RowParallelLinear: the output width must be positive, got 0");
  this->allocate(local_in_, out_, out_, describe());
  initialize(0, 0);
}

template <class T, std::size_t N>
void RowParallelLinear<T, N>::initialize(std::uint64_t seed, std::size_t index) {
  const auto full = detail::unsplit_linear<T>(in_, out_, seed, index);
  std::copy_n(full.weight().data() + first_row() * out_, local_in_ * out_, this->weight_.data());
  std::copy(full.bias().begin(), full.bias().end(), this->bias_.begin());
}

template <class T, std::size_t N>
void RowParallelLinear<T, N>::forward(const input_type& x, output_type& y) {
  operation op(comm_, "RowParallelLinear::forward()");
  parallax::agree(comm_, [&] {
    PARALLAX_CHECK(x.shape()[N - 1] == local_in_, "RowParallelLinear::forward(): input has " +
                                                      std::to_string(x.shape()[N - 1]) + " features, expected " +
                                                      std::to_string(local_in_) + " (" + std::to_string(in_) +
                                                      " over " + std::to_string(comm_.size()) + " ranks)");
    const auto shape = detail::with_last_extent<N>(x.shape(), out_);
    if (!std::equal(y.shape().begin(), y.shape().end(), shape.begin(), shape.end())) y.resize(shape);
  });
  detail::agree_shape(comm_, y.shape(), "RowParallelLinear::forward(): the output's shape");
  const std::size_t rows = x.size() / local_in_;
  if (rows > 0) this->multiply(x.data(), rows, T(0), y.data());
  parallax::allreduce_sum(comm_, std::span<T>(y.data(), y.size()));
  const T* b = this->bias_.data();
  T* out = y.data();
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t j = 0; j < out_; ++j) out[r * out_ + j] += b[j];
}

template <class T, std::size_t N>
void RowParallelLinear<T, N>::backward_impl(const input_type& x, const output_type& dy, input_type* dx) {
  operation op(comm_, "RowParallelLinear::backward()");
  parallax::agree(comm_, [&] {
    PARALLAX_CHECK(x.shape()[N - 1] == local_in_, "RowParallelLinear::backward(): input has " +
                                                      std::to_string(x.shape()[N - 1]) + " features, expected " +
                                                      std::to_string(local_in_));
    detail::check_dy_shape(dy.shape(), detail::with_last_extent<N>(x.shape(), out_), "RowParallelLinear");
    if (dx && dx->shape() != x.shape()) dx->resize(x.shape());
  });
  const std::size_t rows = x.size() / local_in_;
  if (rows == 0) return;
  if (dx) this->input_gradient(dy.data(), rows, dx->data());
  this->add_gradients(x.data(), dy.data(), rows);
}

template <class T, std::size_t N>
void RowParallelLinear<T, N>::backward(const input_type& x, const output_type& /*y*/, const output_type& dy,
                                       input_type& dx) {
  backward_impl(x, dy, &dx);
}

template <class T, std::size_t N>
void RowParallelLinear<T, N>::backward_parameters(const input_type& x, const output_type& /*y*/,
                                                  const output_type& dy) {
  backward_impl(x, dy, nullptr);
}

template <class T, std::size_t N>
std::string RowParallelLinear<T, N>::describe() const {
  return "RowParallelLinear(" + std::to_string(in_) + " -> " + std::to_string(out_) + ", " +
         detail::shards_text(local_in_, "rows", comm_.size()) + ")";
}

template <class T, std::size_t N>
std::vector<std::size_t> RowParallelLinear<T, N>::output_shape(const std::vector<std::size_t>& input_shape) const {
  PARALLAX_CHECK(input_shape.size() == N && input_shape[N - 1] == local_in_,
                 describe() + ": input shape " + parallax::detail::shape_string(input_shape) +
                     " does not fit the expected (batch, ..., " + std::to_string(local_in_) + ") of rank " +
                     std::to_string(N));
  auto shape = input_shape;
  shape[N - 1] = out_;
  return shape;
}

}  // namespace parallax::nn
