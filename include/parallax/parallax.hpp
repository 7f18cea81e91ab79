#pragma once
// SPDX-License-Identifier: BSL-1.0
/// The umbrella header: includes every public parallax header.

#include <parallax/version.hpp>

#include <parallax/core/agree.hpp>
#include <parallax/core/blas.hpp>
#include <parallax/core/block.hpp>
#include <parallax/core/bucketer.hpp>
#include <parallax/core/collectives.hpp>
#include <parallax/core/comm.hpp>
#include <parallax/core/concepts.hpp>
#include <parallax/core/error.hpp>
#include <parallax/core/operation.hpp>
#include <parallax/core/p2p.hpp>
#include <parallax/core/reducer.hpp>
#include <parallax/core/request.hpp>
#include <parallax/core/ring.hpp>
#include <parallax/core/trace.hpp>

#include <parallax/data/batch.hpp>
#include <parallax/data/csv.hpp>
#include <parallax/data/idx.hpp>
#include <parallax/data/npy.hpp>
#include <parallax/data/sampler.hpp>
#include <parallax/data/shard_batches.hpp>

#include <parallax/optim/adam.hpp>
#include <parallax/optim/clip.hpp>
#include <parallax/optim/optimizer.hpp>
#include <parallax/optim/schedule.hpp>
#include <parallax/optim/sgd.hpp>

#include <parallax/nn/activation.hpp>
#include <parallax/nn/attention.hpp>
#include <parallax/nn/conv2d.hpp>
#include <parallax/nn/dropout.hpp>
#include <parallax/nn/embedding.hpp>
#include <parallax/nn/flatten.hpp>
#include <parallax/nn/batch_norm.hpp>
#include <parallax/nn/layer_norm.hpp>
#include <parallax/nn/linear.hpp>
#include <parallax/nn/loss.hpp>
#include <parallax/nn/maxpool2d.hpp>
#include <parallax/nn/position_embedding.hpp>
#include <parallax/nn/residual.hpp>
#include <parallax/nn/sequential.hpp>
#include <parallax/nn/parallel_attention.hpp>
#include <parallax/nn/tensor_parallel.hpp>
#include <parallax/nn/token_cross_entropy.hpp>

#include <parallax/pipeline/engine.hpp>
#include <parallax/pipeline/executor.hpp>
#include <parallax/pipeline/links.hpp>
#include <parallax/pipeline/loss_head.hpp>
#include <parallax/pipeline/nonfinite.hpp>
#include <parallax/pipeline/options.hpp>
#include <parallax/pipeline/partition.hpp>
#include <parallax/pipeline/profile.hpp>
#include <parallax/pipeline/runner.hpp>
#include <parallax/pipeline/schedule.hpp>
#include <parallax/pipeline/shape_pass.hpp>
#include <parallax/pipeline/slots.hpp>
#include <parallax/pipeline/stage.hpp>

#include <parallax/training/evaluate.hpp>
#include <parallax/training/local_sgd.hpp>
#include <parallax/training/loop.hpp>
#include <parallax/training/replicas.hpp>
#include <parallax/training/sampler.hpp>
#include <parallax/training/trainer.hpp>
#include <parallax/training/update.hpp>
#include <parallax/data_parallel.hpp>
#include <parallax/ensemble.hpp>
#include <parallax/evaluation.hpp>
#include <parallax/model_parallel.hpp>

#include <parallax/io/checkpoint.hpp>
#include <parallax/io/checkpoint_format.hpp>
#include <parallax/io/checkpoint_load.hpp>
#include <parallax/io/checkpointable.hpp>
#include <parallax/io/file.hpp>
