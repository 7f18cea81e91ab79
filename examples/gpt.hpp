// SPDX-License-Identifier: BSL-1.0
// The GPT-style model of examples/char_lm.cpp, also trained by
// benchmarks/transformer_step.cpp (against the same model in PyTorch): token
// and position embeddings, two pre-norm blocks (causal self-attention, then
// a GELU MLP of 4 x width, each inside a Residual), a final LayerNorm and a
// linear head over the vocabulary, a token-level softmax cross-entropy;
// float. The same chain as a Sequential, as ModelParallel's parts, and with
// its heads and MLP columns split over a communicator.
#pragma once

#include <parallax/core/comm.hpp>
#include <parallax/model_parallel.hpp>
#include <parallax/nn/activation.hpp>
#include <parallax/nn/attention.hpp>
#include <parallax/nn/embedding.hpp>
#include <parallax/nn/layer_norm.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/position_embedding.hpp>
#include <parallax/nn/residual.hpp>
#include <parallax/nn/sequential.hpp>
#include <parallax/nn/parallel_attention.hpp>
#include <parallax/nn/tensor_parallel.hpp>
#include <parallax/nn/token_cross_entropy.hpp>

#include <boost/mpi/communicator.hpp>

#include <cstddef>
#include <tuple>

namespace gpt {

namespace nn = parallax::nn;

struct shape {
  std::size_t vocabulary = 96;
  std::size_t context = 64;  // the longest sequence
  std::size_t width = 128;
  std::size_t heads = 4;
};

using Attention = nn::Residual<nn::LayerNorm<float, 3>, nn::CausalSelfAttention<float>>;
using Mlp = nn::Residual<nn::LayerNorm<float, 3>, nn::Linear<float, 3>, nn::GELU<float, 3>, nn::Linear<float, 3>>;

inline auto attention_parts(const shape& s) {
  return std::tuple{nn::LayerNorm<float, 3>(s.width), nn::CausalSelfAttention<float>(s.width, s.heads)};
}
inline auto mlp_parts(const shape& s) {
  return std::tuple{nn::LayerNorm<float, 3>(s.width), nn::Linear<float, 3>(s.width, 4 * s.width), nn::GELU<float, 3>{},
                    nn::Linear<float, 3>(4 * s.width, s.width)};
}

// Every part's constructor arguments, in chain order: what ModelParallel
// builds its stages from.
inline auto parts(const shape& s) {
  return std::tuple{std::tuple{s.vocabulary, s.width}, std::tuple{s.context, s.width}, attention_parts(s),
                    mlp_parts(s),                      attention_parts(s),              mlp_parts(s),
                    std::tuple{s.width},               std::tuple{s.width, s.vocabulary}, std::tuple{}};
}

using Pipeline =
    parallax::ModelParallel<nn::Embedding<float>, nn::PositionEmbedding<float>, Attention, Mlp, Attention, Mlp,
                            nn::LayerNorm<float, 3>, nn::Linear<float, 3>, nn::TokenCrossEntropy<float>>;

// The chain around its four blocks, attention() and mlp() making each one.
template <class MakeAttention, class MakeMlp>
auto assemble(const shape& s, MakeAttention attention, MakeMlp mlp) {
  return nn::Sequential{nn::Embedding<float>(s.vocabulary, s.width),
                        nn::PositionEmbedding<float>(s.context, s.width),
                        attention(),
                        mlp(),
                        attention(),
                        mlp(),
                        nn::LayerNorm<float, 3>(s.width),
                        nn::Linear<float, 3>(s.width, s.vocabulary),
                        nn::TokenCrossEntropy<float>{}};
}

// The chain as a Sequential (the same layers from the same arguments).
inline auto make(const shape& s) {
  return assemble(
      s, [&] { return std::make_from_tuple<Attention>(attention_parts(s)); },
      [&] { return std::make_from_tuple<Mlp>(mlp_parts(s)); });
}

// The same chain with the attention heads and the MLP's hidden columns split
// over the ranks of `tp` (Megatron-LM's tensor parallelism); collective over tp.
using SplitAttention = nn::Residual<nn::LayerNorm<float, 3>, nn::ParallelCausalSelfAttention<float>>;
using SplitMlp = nn::Residual<nn::LayerNorm<float, 3>, nn::ColumnParallelLinear<float, 3>, nn::GELU<float, 3>,
                              nn::RowParallelLinear<float, 3>>;

inline auto make_split(const shape& s, const boost::mpi::communicator& tp) {
  return assemble(
      s,
      [&] {
        return SplitAttention{nn::LayerNorm<float, 3>(s.width), nn::ParallelCausalSelfAttention<float>(s.width, s.heads, tp)};
      },
      [&] {
        return SplitMlp{nn::LayerNorm<float, 3>(s.width), nn::ColumnParallelLinear<float, 3>(s.width, 4 * s.width, tp),
                        nn::GELU<float, 3>{}, nn::RowParallelLinear<float, 3>(4 * s.width, s.width, tp)};
      });
}

}  // namespace gpt
