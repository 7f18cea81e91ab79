#!/usr/bin/python3
# SPDX-License-Identifier: BSL-1.0
"""PyTorch side of the Fashion-MNIST comparison (benchmarks/mlp_epoch.cpp is
the parallax side; benchmarks/run_vs_pytorch.sh runs both).

The same MLP 784-256-128-10 (ReLU, cross-entropy, float32), the same 60000
training images read from the same .gz IDX files (gzip + numpy, in
benchmarks/bench.py), the same batch PER PROCESS (default 64), SGD with
momentum 0.9 and the same fixed learning rate, one thread per process
(torch.set_num_threads(1)). The data stay in memory as two tensors and each
step indexes them with its sample indices, as parallax does: no DataLoader,
whose per-sample collation would make PyTorch slower for reasons unrelated
to training.

Shuffling as parallax's sampler: one shared-seed permutation per epoch, the
last global batch filled by wrapping around to the epoch's first samples, so
both process the same number of samples in the same number of steps.

--processes 1: a single process. --processes N: DistributedDataParallel with
the gloo backend on N processes started by torch.multiprocessing.spawn on
127.0.0.1 (no network needed). A few warm-up steps on a scratch model, then
--repeats epochs, each from a fresh model (torch.manual_seed), timed as the
slowest process's; data loading and the test evaluation are not timed.

  /usr/bin/python3 benchmarks/pytorch_mlp.py [--processes 2] [--batch 64] [--lr 0.05]
      [--repeats 3] [--data /usr/share/datasets/fashion-mnist] [--json out.json]
"""

import argparse
import json
import os
import socket
import statistics
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import bench  # benchmarks/bench.py: IDX reading, the BLAS core


def load_split(directory, split):
    """bench.load_split's arrays as tensors."""
    x, y = bench.load_split(directory, split)
    return torch.from_numpy(x), torch.from_numpy(y)


def make_model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))


def epoch_indices(n, global_batch, seed, epoch):
    """The epoch's permutation, padded by wrap-around to whole global batches."""
    g = torch.Generator()
    g.manual_seed(seed * 1000003 + epoch)
    perm = torch.randperm(n, generator=g)
    steps = (n + global_batch - 1) // global_batch
    pad = steps * global_batch - n
    if pad:
        perm = torch.cat([perm, perm[:pad]])
    return perm.view(steps, global_batch)


def train_epoch(model, optimizer, x, y, batches, rank, batch):
    """One pass over `batches` ([steps, global batch] indices); this process
    takes its slice of each. Returns (sum of loss * samples, samples) of this process."""
    criterion = nn.CrossEntropyLoss()
    loss_sum = torch.zeros((), dtype=torch.float64)
    for step in range(batches.shape[0]):
        idx = batches[step, rank * batch : (rank + 1) * batch]
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().double() * idx.numel()
    return loss_sum, batches.shape[0] * batch


def test_accuracy(model, x, y):
    model.eval()
    correct = 0
    with torch.no_grad():
        for at in range(0, x.shape[0], 1000):
            correct += (model(x[at : at + 1000]).argmax(1) == y[at : at + 1000]).sum().item()
    model.train()
    return correct / x.shape[0]


def run(rank, world, args, results):
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    distributed = world > 1
    if distributed:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    x, y = load_split(args.data, "train")
    xt, yt = load_split(args.data, "test")
    global_batch = args.batch * world

    def make(seed):
        model = make_model(seed)
        if distributed:
            model = nn.parallel.DistributedDataParallel(model)
        return model, torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)

    # Warm-up on a scratch model: allocator, BLAS, gloo connections.
    model, optimizer = make(args.seed + 1)
    warm = epoch_indices(x.shape[0], global_batch, args.seed + 1, 0)[: args.warmup_steps]
    train_epoch(model, optimizer, x, y, warm, rank, args.batch)

    times = []
    for repeat in range(args.repeats):
        model, optimizer = make(args.seed)
        batches = epoch_indices(x.shape[0], global_batch, args.seed, 0)
        if distributed:
            dist.barrier()
        t0 = time.perf_counter()
        loss_sum, samples = train_epoch(model, optimizer, x, y, batches, rank, args.batch)
        seconds = torch.tensor(time.perf_counter() - t0, dtype=torch.float64)
        totals = torch.stack([loss_sum, torch.tensor(float(samples), dtype=torch.float64)])
        if distributed:
            dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
            dist.all_reduce(totals)
        times.append(seconds.item())
        if rank == 0:
            net = model.module if distributed else model
            accuracy = test_accuracy(net, xt, yt)
            train_loss = (totals[0] / totals[1]).item()
            print(f"  epoch {repeat + 1}: {times[-1]:.3f} s, train loss {train_loss:.4f}, test accuracy {accuracy:.4f}",
                  flush=True)
    if rank == 0:
        core, lib = bench.blas_core()
        results.put({
            "times": times, "samples": int(totals[1].item()), "steps": int(batches.shape[0]),
            "train_loss": train_loss, "test_accuracy": accuracy,
            "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "blas_core": core, "blas_library": lib,
        })
    if distributed:
        dist.barrier()
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64, help="samples per process per step")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads per process")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup-steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", default=bench.DEFAULT_DATA)
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    world = args.processes
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    kind = "single process" if world == 1 else f"DDP gloo, {world} processes"
    print(f"pytorch_mlp: torch {torch.__version__}, {kind}, batch {args.batch} per process, "
          f"SGD lr {args.lr} momentum {args.momentum}, {args.threads} thread(s) per process", flush=True)
    if world == 1:
        run(0, 1, args, results)
    else:
        mp.spawn(run, args=(world, args, results), nprocs=world, join=True)
    r = results.get()
    median = statistics.median(r["times"])
    per_second = r["samples"] / median
    print(f"pytorch {kind}: epoch {median:.3f} s median ({min(r['times']):.3f}-{max(r['times']):.3f}), "
          f"{per_second:.0f} samples/s, {r['steps']} steps of {args.batch * world}, "
          f"train loss {r['train_loss']:.4f}, test accuracy {r['test_accuracy']:.4f}", flush=True)
    if args.json:
        name = "pytorch 1 process" if world == 1 else f"pytorch DDP {world} processes"
        document = {
            "benchmark": "pytorch_mlp",
            "meta": {
                "torch": torch.__version__, "python": sys.version.split()[0], "numpy": np.__version__,
                "threads_per_process": r["threads"], "interop_threads": r["interop_threads"],
                "backend": "gloo" if world > 1 else "none",
                "blas_core": r["blas_core"], "blas_library": r["blas_library"],
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "(unset)"),
                "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "(unset)"),
                "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
                "cpu_capability": next((line.split(":", 1)[1].strip() for line in torch.__config__.show().splitlines()
                                        if "CPU capability" in line), "unknown"),
                "lr": args.lr, "momentum": args.momentum, "data": args.data,
            },
            "rows": [{
                "name": name, "framework": "pytorch", "processes": world, "batch_per_process": args.batch,
                "global_batch": args.batch * world, "epoch_s": median, "min": min(r["times"]),
                "max": max(r["times"]), "repeats": len(r["times"]), "samples": r["samples"], "steps": r["steps"],
                "samples_per_s": per_second, "train_loss": r["train_loss"], "test_accuracy": r["test_accuracy"],
            }],
        }
        with open(args.json, "w") as f:
            json.dump(document, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
