#!/usr/bin/python3
# SPDX-License-Identifier: BSL-1.0
"""numpy + mpi4py side of the Fashion-MNIST comparison: data parallelism by
hand (benchmarks/mlp_epoch.cpp is the parallax side, benchmarks/pytorch_mlp.py
the PyTorch one; benchmarks/run_vs_pytorch.sh runs all three).

The same MLP 784-256-128-10 (ReLU, softmax cross-entropy, float32), the same
60000 training images read from the same .gz IDX files (benchmarks/bench.py),
the same batch PER PROCESS (default 64), SGD with momentum 0.9 and the same
fixed learning rate, applied as PyTorch does (v = momentum v + g, w -= lr v).
The weights start as PyTorch's nn.Linear default draws them (uniform in
+-1/sqrt(fan_in), weights and biases), from numpy's generator with a seed.
The data stay in memory as two arrays and each step indexes them with its
sample indices. Forward and backward are written out in numpy (float32
matrix products with @, which call OpenBLAS's sgemm); the first layer's
input gradient is not computed, as nobody reads it.

Shuffling as parallax's sampler and pytorch_mlp.py: one shared-seed
permutation per epoch (numpy's generator, so not torch's permutation), the
last global batch filled by wrapping around to the epoch's first samples;
each process takes its slice of every global batch.

Run it under mpiexec, one process per rank, with one BLAS thread per
process (OPENBLAS_NUM_THREADS=1: processes are the parallelism):

  OPENBLAS_NUM_THREADS=1 mpiexec -n 2 -x OPENBLAS_NUM_THREADS /usr/bin/python3 benchmarks/numpy_mlp.py
      [--batch 64] [--lr 0.05] [--repeats 3] [--data /usr/share/datasets/fashion-mnist] [--json out.json]
      [--check-gradients]

On N > 1 processes every step averages the gradients with one in-place
comm.Allreduce (MPI.IN_PLACE, MPI.SUM) per gradient tensor, six per step,
then divides by N; on one process there is no communication. A few warm-up
steps on a scratch model, then --repeats epochs, each from a fresh model,
timed as the slowest process's (comm.allreduce of the time with MPI.MAX);
data loading and the test evaluation are not timed. --check-gradients
compares the backward pass with central differences (float64, a tiny batch)
and exits.
"""

import argparse
import json
import os
import statistics
import sys
import time

import mpi4py
import numpy as np
from mpi4py import MPI

import bench  # benchmarks/bench.py: IDX reading, the BLAS core

SIZES = (784, 256, 128, 10)


def make_model(seed, dtype=np.float32):
    """[W1, b1, W2, b2, W3, b3], W as [in, out], drawn as nn.Linear's default."""
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(SIZES[:-1], SIZES[1:]):
        bound = 1.0 / np.sqrt(fan_in)
        params.append(rng.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype))
        params.append(rng.uniform(-bound, bound, fan_out).astype(dtype))
    return params


def logits(params, x):
    w1, b1, w2, b2, w3, b3 = params
    a1 = np.maximum(x @ w1 + b1, 0)
    a2 = np.maximum(a1 @ w2 + b2, 0)
    return a2 @ w3 + b3


def loss_and_gradient(params, x, y, grads):
    """Mean softmax cross-entropy over the batch; its gradients into `grads`
    (arrays shaped as `params`)."""
    w1, b1, w2, b2, w3, b3 = params
    g1, gb1, g2, gb2, g3, gb3 = grads
    n = x.shape[0]
    a1 = x @ w1
    a1 += b1
    np.maximum(a1, 0, out=a1)
    a2 = a1 @ w2
    a2 += b2
    np.maximum(a2, 0, out=a2)
    z = a2 @ w3
    z += b3
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    total = p.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    loss = float(np.mean(np.log(total[:, 0]) - z[rows, y]))
    # d loss / d z = (softmax - one-hot) / n
    p /= total
    p[rows, y] -= 1
    p /= n
    np.matmul(a2.T, p, out=g3)
    np.sum(p, axis=0, out=gb3)
    d2 = p @ w3.T
    d2 *= a2 > 0
    np.matmul(a1.T, d2, out=g2)
    np.sum(d2, axis=0, out=gb2)
    d1 = d2 @ w2.T
    d1 *= a1 > 0
    np.matmul(x.T, d1, out=g1)
    np.sum(d1, axis=0, out=gb1)
    return loss


def epoch_indices(n, global_batch, seed, epoch):
    """The epoch's permutation, padded by wrap-around to whole global batches."""
    perm = np.random.default_rng(seed * 1000003 + epoch).permutation(n)
    steps = (n + global_batch - 1) // global_batch
    pad = steps * global_batch - n
    if pad:
        perm = np.concatenate([perm, perm[:pad]])
    return perm.reshape(steps, global_batch)


def train_epoch(comm, params, velocity, x, y, batches, batch, lr, momentum):
    """One pass over `batches` ([steps, global batch] indices); this process
    takes its slice of each. Returns (sum of loss * samples, samples) of this process."""
    rank, world = comm.Get_rank(), comm.Get_size()
    grads = [np.empty_like(p) for p in params]
    loss_sum = 0.0
    for step in range(batches.shape[0]):
        idx = batches[step, rank * batch : (rank + 1) * batch]
        loss_sum += loss_and_gradient(params, x[idx], y[idx], grads) * idx.size
        for p, v, g in zip(params, velocity, grads):
            if world > 1:
                comm.Allreduce(MPI.IN_PLACE, g, op=MPI.SUM)
                g /= world
            v *= momentum
            v += g
            p -= lr * v
    return loss_sum, batches.shape[0] * batch


def test_accuracy(params, x, y):
    correct = 0
    for at in range(0, x.shape[0], 1000):
        correct += int((logits(params, x[at : at + 1000]).argmax(1) == y[at : at + 1000]).sum())
    return correct / x.shape[0]


def check_gradients(seed):
    """The backward pass against central differences (float64, 5 samples, up to
    20 entries of each tensor); True when every entry agrees within 1e-8 +
    1e-4 of the difference (float64 rounding of the loss alone is ~3e-10)."""
    rng = np.random.default_rng(seed)
    params = make_model(seed, np.float64)
    x = rng.random((5, SIZES[0]))
    y = rng.integers(0, SIZES[-1], 5)
    grads = [np.empty_like(p) for p in params]
    loss_and_gradient(params, x, y, grads)
    scratch = [np.empty_like(p) for p in params]
    worst, ok = 0.0, True
    for p, g in zip(params, grads):
        for flat in rng.choice(p.size, min(20, p.size), replace=False):
            at = np.unravel_index(flat, p.shape)
            keep = p[at]
            p[at] = keep + 1e-6
            up = loss_and_gradient(params, x, y, scratch)
            p[at] = keep - 1e-6
            down = loss_and_gradient(params, x, y, scratch)
            p[at] = keep
            numeric = (up - down) / 2e-6
            worst = max(worst, abs(numeric - g[at]))
            ok = ok and abs(numeric - g[at]) <= 1e-8 + 1e-4 * abs(numeric)
    print(f"numpy_mlp: gradient check against central differences: largest difference {worst:.1e} -> "
          f"{'ok' if ok else 'WRONG'}")
    return ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="samples per process per step")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup-steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", default=bench.DEFAULT_DATA)
    parser.add_argument("--json", default="")
    parser.add_argument("--check-gradients", action="store_true", help="check the backward pass and exit")
    args = parser.parse_args()
    if args.check_gradients:
        sys.exit(0 if check_gradients(args.seed) else 1)

    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    name = "numpy 1 process" if world == 1 else f"numpy+mpi4py {world} processes"
    if rank == 0:
        print(f"numpy_mlp: numpy {np.__version__}, mpi4py {mpi4py.__version__}, {world} process(es), "
              f"batch {args.batch} per process, SGD lr {args.lr} momentum {args.momentum}, "
              f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', '(unset)')}", flush=True)
    x, y = bench.load_split(args.data, "train")
    xt, yt = bench.load_split(args.data, "test")
    global_batch = args.batch * world
    lr, momentum = np.float32(args.lr), np.float32(args.momentum)

    def make(seed):
        params = make_model(seed)
        return params, [np.zeros_like(p) for p in params]

    # Warm-up on a scratch model: allocator, BLAS, MPI connections.
    params, velocity = make(args.seed + 1)
    warm = epoch_indices(x.shape[0], global_batch, args.seed + 1, 0)[: args.warmup_steps]
    train_epoch(comm, params, velocity, x, y, warm, args.batch, lr, momentum)

    times = []
    for repeat in range(args.repeats):
        params, velocity = make(args.seed)
        batches = epoch_indices(x.shape[0], global_batch, args.seed, 0)
        comm.Barrier()
        t0 = time.perf_counter()
        loss_sum, samples = train_epoch(comm, params, velocity, x, y, batches, args.batch, lr, momentum)
        seconds = time.perf_counter() - t0
        times.append(comm.allreduce(seconds, op=MPI.MAX))
        loss_sum, samples = comm.allreduce(loss_sum), comm.allreduce(samples)
        if rank == 0:
            accuracy = test_accuracy(params, xt, yt)
            train_loss = loss_sum / samples
            print(f"  epoch {repeat + 1}: {times[-1]:.3f} s, train loss {train_loss:.4f}, test accuracy {accuracy:.4f}",
                  flush=True)
    if rank != 0:
        return
    core, lib = bench.blas_core()
    median = statistics.median(times)
    per_second = samples / median
    print(f"{name}: epoch {median:.3f} s median ({min(times):.3f}-{max(times):.3f}), "
          f"{per_second:.0f} samples/s, {batches.shape[0]} steps of {global_batch}, "
          f"train loss {train_loss:.4f}, test accuracy {accuracy:.4f}", flush=True)
    if args.json:
        document = {
            "benchmark": "numpy_mlp",
            "meta": {
                "numpy": np.__version__, "mpi4py": mpi4py.__version__, "python": sys.version.split()[0],
                "mpi": MPI.Get_library_version().strip("\0\n ").splitlines()[0],
                "threads_per_process": bench.blas_threads(),
                "communication": "none" if world == 1 else "one in-place MPI Allreduce (sum) per gradient tensor",
                "blas_core": core, "blas_library": lib,
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "(unset)"),
                "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "(unset)"),
                "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
                "lr": args.lr, "momentum": args.momentum, "data": args.data,
            },
            "rows": [{
                "name": name, "framework": "numpy+mpi4py", "processes": world, "batch_per_process": args.batch,
                "global_batch": global_batch, "epoch_s": median, "min": min(times), "max": max(times),
                "repeats": len(times), "samples": samples, "steps": int(batches.shape[0]),
                "samples_per_s": per_second, "train_loss": train_loss, "test_accuracy": accuracy,
            }],
        }
        with open(args.json, "w") as f:
            json.dump(document, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
