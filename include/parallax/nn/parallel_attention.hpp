#pragma once
// SPDX-License-Identifier: BSL-1.0
/// ParallelCausalSelfAttention<T>: CausalSelfAttention with its heads split
/// across the ranks of a communicator, the qkv projection column-parallel
/// and the output projection row-parallel (nn/tensor_parallel.hpp).

#include <parallax/core/agree.hpp>
#include <parallax/core/error.hpp>
#include <parallax/core/operation.hpp>
#include <parallax/detail/mpi.hpp>
#include <parallax/detail/xtensor.hpp>
#include <parallax/nn/attention.hpp>
#include <parallax/nn/detail/checks.hpp>
#include <parallax/nn/tensor_parallel.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace parallax::nn {

/// CausalSelfAttention with its heads split across the t ranks of a
/// communicator (Megatron-LM's attention): rank r computes heads
/// [r heads / t, (r + 1) heads / t) — its columns of q, k and v through a
/// ColumnParallelLinear(width, 3 width, comm, 3 groups) — and its rows of
/// the output projection, a RowParallelLinear(width, width, comm) whose
/// all-reduce gives every rank the whole output. One all-reduce forward, one
/// backward (the input gradient). The shards are cut from the unsplit
/// layer's draw (key(seed, index), 0 and 1), so any t equals
/// CausalSelfAttention(width, heads) initialised alike. t must divide heads.
/// Every call is collective; failures are agreed.
/// @code
///   parallax::nn::ParallelCausalSelfAttention<float> attention(256, 8, tp);   // 8 / t heads on each rank
/// @endcode
template <class T>
class ParallelCausalSelfAttention
    : public detail::attention_block<T, ColumnParallelLinear<T, 3>, RowParallelLinear<T, 3>> {
  using base = detail::attention_block<T, ColumnParallelLinear<T, 3>, RowParallelLinear<T, 3>>;

 public:
  using value_type = T;
  using input_type = xt::xtensor<T, 3>;
  using output_type = xt::xtensor<T, 3>;
  /// backward(x, y, dy, dx) never reads y (BackwardIgnoresOutput).
  static constexpr bool backward_reads_output = false;

  /// Collective over `comm` (MPI_COMM_WORLD by default): width and heads as
  /// CausalSelfAttention's, and t must divide heads.
  ParallelCausalSelfAttention(std::size_t width, std::size_t heads, mpi::communicator comm = {});

 private:
  struct checked {};
  /// After the sizes are checked (agreed), before either projection is built.
  ParallelCausalSelfAttention(checked, std::size_t width, std::size_t heads, mpi::communicator comm);

 public:

  /// This rank's shards of CausalSelfAttention(width, heads)'s draw from (seed, index).
  void initialize(std::uint64_t seed, std::size_t index) { this->initialize_projections(seed, index); }

  /// Collective: y [batch, sequence, width], the same on every rank.
  void forward(const input_type& x, output_type& y);
  /// Collective: dx, the same on every rank; adds this rank's shards' gradients.
  void backward(const input_type& x, const output_type& y, const output_type& dy, input_type& dx);

  // parameters(), gradients(): this rank's shards, laid out as
  // CausalSelfAttention's; qkv() and output(): the two projections.

  std::size_t width() const { return width_; }
  /// All heads.
  std::size_t heads() const { return heads_total_; }
  /// heads / t: the heads this rank computes.
  std::size_t local_heads() const { return this->heads_.heads(); }
  std::size_t head_width() const { return width_ / heads_total_; }
  const mpi::communicator& communicator() const { return comm_; }

  /// "ParallelCausalSelfAttention(256, 8 heads, 4 on each of 2 ranks)".
  std::string describe() const;
  /// The input shape itself; throws parallax::error when its rank is not 3
  /// or its last extent is not width.
  std::vector<std::size_t> output_shape(const std::vector<std::size_t>& input_shape) const;

 private:
  std::size_t width_;
  std::size_t heads_total_;
  mpi::communicator comm_;
};

namespace detail {

/// Collective: the width, once width and heads fit CausalSelfAttention and
/// t divides heads; otherwise one error on every rank.
inline std::size_t checked_parallel_heads(std::size_t width, std::size_t heads, const mpi::communicator& comm) {
  parallax::agree_settings(comm, {{"width", static_cast<double>(width)}, {"heads", static_cast<double>(heads)}},
                           "ParallelCausalSelfAttention");
  return parallax::agree(comm, [&] {
    checked_head_width(width, heads, "ParallelCausalSelfAttention");
    PARALLAX_CHECK(heads % static_cast<std::size_t>(comm.size()) == 0,
                   "ParallelCausalSelfAttention: the tensor-parallel size " + std::to_string(comm.size()) +
                       " does not divide the " + heads_text(heads));
    return width;
  });
}

}  // namespace detail

template <class T>
ParallelCausalSelfAttention<T>::ParallelCausalSelfAttention(std::size_t width, std::size_t heads,
                                                            mpi::communicator comm)
    // comm is copied, not moved: the arguments' order of evaluation is unspecified.
    : ParallelCausalSelfAttention(checked{}, detail::checked_parallel_heads(width, heads, comm), heads, comm) {}

template <class T>
ParallelCausalSelfAttention<T>::ParallelCausalSelfAttention(checked, std::size_t width, std::size_t heads,
                                                            mpi::communicator comm)
    : base(ColumnParallelLinear<T, 3>(width, 3 * width, comm, 3), RowParallelLinear<T, 3>(width, width, comm), width / static_cast<std::size_t>(comm.size()),
           heads / static_cast<std::size_t>(comm.size())),
      width_(width),
      heads_total_(heads),
      comm_(std::move(comm)) {
  initialize(0, 0);
}

template <class T>
void ParallelCausalSelfAttention<T>::forward(const input_type& x, output_type& y) {
  operation op(comm_, "ParallelCausalSelfAttention::forward()");
  parallax::agree(comm_, [&] { detail::check_attention_input(x.shape(), width_, "ParallelCausalSelfAttention::forward()"); });
  this->run_forward(x, y);
}

template <class T>
void ParallelCausalSelfAttention<T>::backward(const input_type& x, const output_type& y, const output_type& dy,
                                              input_type& dx) {
  operation op(comm_, "ParallelCausalSelfAttention::backward()");
  parallax::agree(comm_, [&] {
    detail::check_attention_input(x.shape(), width_, "ParallelCausalSelfAttention::backward()");
    detail::check_dy_shape(dy.shape(), x.shape(), "ParallelCausalSelfAttention");
  });
  this->run_backward(x, y, dy, dx);
}

template <class T>
std::string ParallelCausalSelfAttention<T>::describe() const {
  return "ParallelCausalSelfAttention(" + std::to_string(width_) + ", " + detail::heads_text(heads_total_) + ", " +
         std::to_string(local_heads()) + " on each of " + std::to_string(comm_.size()) +
         (comm_.size() == 1 ? " rank)" : " ranks)");
}

template <class T>
std::vector<std::size_t> ParallelCausalSelfAttention<T>::output_shape(
    const std::vector<std::size_t>& input_shape) const {
  detail::check_input_rank(input_shape, 3, describe());
  detail::check_attention_input(input_shape, width_, describe());
  return input_shape;
}

}  // namespace parallax::nn
