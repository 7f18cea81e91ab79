#!/usr/bin/python3
# SPDX-License-Identifier: BSL-1.0
"""PyTorch side of the transformer comparison (benchmarks/transformer_step.cpp
is the parallax side; benchmarks/run_vs_pytorch.sh --model transformer runs
both).

The same GPT-style model as examples/gpt.hpp, written as nanoGPT writes it
(torch 1.13 has no fused attention): token and position embeddings
(nn.Embedding), two pre-norm blocks x + attn(ln(x)), x + mlp(ln(x)) with
attention through one qkv nn.Linear, q k^T / sqrt(d) masked to earlier
tokens by masked_fill(-inf), softmax, @ v and an output nn.Linear, and an
MLP nn.Linear(W, 4W), exact GELU, nn.Linear(4W, W); a final LayerNorm, a
linear head, F.cross_entropy over all tokens; float32. Vocabulary 96,
context 64, width 128, 4 heads, Adam, the same batch of sequences PER
PROCESS (default 16), one thread per process.

The batches are random token ids from a fixed seed (targets the inputs
shifted by one), built before timing. --processes 1: a single process;
--processes N: DistributedDataParallel (gloo) on N processes on 127.0.0.1.
A few warm-up steps on a scratch model, then --repeats runs of --steps
steps, each from a fresh model (torch.manual_seed), timed as the slowest
process's.

  /usr/bin/python3 benchmarks/pytorch_transformer.py [--processes 2] [--batch 16] [--steps 30]
      [--repeats 3] [--lr 0.001] [--json out.json]
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_mlp import blas_core, free_port  # noqa: E402

VOCABULARY, CONTEXT, WIDTH, HEADS = 96, 64, 128, 4


class CausalSelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_attn = nn.Linear(WIDTH, 3 * WIDTH)
        self.c_proj = nn.Linear(WIDTH, WIDTH)
        self.register_buffer("mask", torch.tril(torch.ones(CONTEXT, CONTEXT)).view(1, 1, CONTEXT, CONTEXT))

    def forward(self, x):
        b, s, w = x.shape
        d = w // HEADS
        q, k, v = self.c_attn(x).split(w, dim=2)
        q, k, v = (t.view(b, s, HEADS, d).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d))
        att = att.masked_fill(self.mask[:, :, :s, :s] == 0, float("-inf"))
        y = F.softmax(att, dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, s, w))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(WIDTH)
        self.attn = CausalSelfAttention()
        self.ln_2 = nn.LayerNorm(WIDTH)
        self.mlp = nn.Sequential(nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(), nn.Linear(4 * WIDTH, WIDTH))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(VOCABULARY, WIDTH)
        self.wpe = nn.Embedding(CONTEXT, WIDTH)
        self.blocks = nn.Sequential(Block(), Block())
        self.ln_f = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, VOCABULARY)

    def forward(self, ids, targets):
        positions = torch.arange(ids.shape[1])
        x = self.blocks(self.wte(ids) + self.wpe(positions))
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, VOCABULARY), targets.view(-1))


def make_batches(steps, batch, rank):
    g = torch.Generator()
    g.manual_seed(11 + 1000 * rank)
    batches = []
    for _ in range(steps):
        seq = torch.randint(VOCABULARY, (batch, CONTEXT + 1), generator=g)
        batches.append((seq[:, :-1].contiguous(), seq[:, 1:].contiguous()))
    return batches


def run(rank, world, args, results):
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    distributed = world > 1
    if distributed:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    batches = make_batches(args.steps, args.batch, rank)

    def make(seed):
        torch.manual_seed(seed)
        model = GPT()
        if distributed:
            model = nn.parallel.DistributedDataParallel(model)
        return model, torch.optim.Adam(model.parameters(), lr=args.lr)

    def train(model, optimizer, count):
        first = last = None
        for step in range(count):
            ids, targets = batches[step % len(batches)]
            optimizer.zero_grad(set_to_none=True)
            loss = model(ids, targets)
            loss.backward()
            optimizer.step()
            last = loss.item()
            first = last if first is None else first
        return first, last

    model, optimizer = make(args.seed + 1)
    train(model, optimizer, args.warmup_steps)
    times = []
    for repeat in range(args.repeats):
        model, optimizer = make(args.seed)
        if distributed:
            dist.barrier()
        t0 = time.perf_counter()
        first, last = train(model, optimizer, args.steps)
        seconds = torch.tensor(time.perf_counter() - t0, dtype=torch.float64)
        if distributed:
            dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
        times.append(seconds.item())
        if rank == 0:
            print(f"  run {repeat + 1}: {times[-1]:.3f} s, loss {first:.4f} -> {last:.4f}", flush=True)
    if rank == 0:
        core, lib = blas_core()
        parameters = sum(p.numel() for p in (model.module if distributed else model).parameters())
        results.put({"times": times, "first_loss": first, "last_loss": last, "parameters": parameters,
                     "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
                     "blas_core": core, "blas_library": lib})
    if distributed:
        dist.barrier()
        dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16, help="sequences per process per step")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads per process")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    world = args.processes
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    results = mp.get_context("spawn").SimpleQueue()
    kind = "single process" if world == 1 else f"DDP gloo, {world} processes"
    print(f"pytorch_transformer: torch {torch.__version__}, {kind}, {args.batch} sequences of {CONTEXT} per process, "
          f"Adam lr {args.lr}, {args.threads} thread(s) per process", flush=True)
    if world == 1:
        run(0, 1, args, results)
    else:
        mp.spawn(run, args=(world, args, results), nprocs=world, join=True)
    r = results.get()
    median = statistics.median(r["times"])
    tokens = args.steps * args.batch * CONTEXT * world
    print(f"pytorch {kind}: {args.steps} steps in {median:.3f} s median ({min(r['times']):.3f}-{max(r['times']):.3f}), "
          f"{tokens / median:.0f} tokens/s, loss {r['first_loss']:.4f} -> {r['last_loss']:.4f}, "
          f"{r['parameters']} parameters", flush=True)
    if args.json:
        name = "pytorch 1 process" if world == 1 else f"pytorch DDP {world} processes"
        document = {
            "benchmark": "pytorch_transformer",
            "meta": {
                "torch": torch.__version__, "python": sys.version.split()[0],
                "threads_per_process": r["threads"], "interop_threads": r["interop_threads"],
                "backend": "gloo" if world > 1 else "none", "blas_core": r["blas_core"],
                "blas_library": r["blas_library"], "parameters": r["parameters"],
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "(unset)"),
                "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "(unset)"),
                "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
                "cpu_capability": next((line.split(":", 1)[1].strip() for line in torch.__config__.show().splitlines()
                                        if "CPU capability" in line), "unknown"),
                "lr": args.lr,
            },
            "rows": [{
                "name": name, "framework": "pytorch", "processes": world, "batch_per_process": args.batch,
                "steps": args.steps, "run_s": median, "min": min(r["times"]), "max": max(r["times"]),
                "repeats": len(r["times"]), "tokens": tokens, "tokens_per_s": tokens / median,
                "first_loss": r["first_loss"], "last_loss": r["last_loss"],
            }],
        }
        with open(args.json, "w") as f:
            json.dump(document, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
