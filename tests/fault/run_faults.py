#!/usr/bin/env python3
# SPDX-License-Identifier: BSL-1.0
"""The fault suite: runs each bad input of fault_case under mpiexec at several
rank counts, each under a hard timeout (the whole process group is killed when
it passes), and judges what every rank reported:

  - the job ended in time, every rank exited 0 and printed its line;
  - nothing in stderr says MPI or Boost.MPI aborted (MPI_ABORT, MPI_ERR_*,
    an assertion, a signal, std::terminate);
  - every rank reports the same error kind and the same message, the kind
    expected for the input, and the message names the cause (and the ranks);
  - where training continues, the follow-up succeeded on every rank and the
    replicas are equal (the same fingerprint on every rank).

Prints one line per input and rank count: input, ranks, seconds, verdict; and
last 'parallax-test-cases: P passed, F failed (...)' for scripts/count_tests.py
(one case per input and rank count, and one for the judge's self-test: made-up
runs of each kind of failure, each of which must be caught).
Inputs the library does not handle yet are known gaps: listed with what was
observed, skipped unless --gaps is given (then run with a short timeout when
they hang). Usage:
  run_faults.py --exe build/tests/fault/fault_case [--ranks 2,3] [--only a,b]
                [--gaps] [--timeout 20] [--mpiexec mpiexec] [-- mpiexec flags]
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Union

Words = List[Union[str, Callable[[int], str]]]

# Kinds as parallax::kind_name() spells them.
INVALID, MISMATCH, NONFINITE = "invalid argument", "rank mismatch", "non-finite"
DAMAGED, INCOMPATIBLE, IO, USER = "damaged file", "incompatible", "i/o", "user exception"
COMM = "communication"
ANY_ERROR = "any error"  # any one kind, agreed, but an error


@dataclass
class Input:
    name: str
    cls: int                      # the class of issue 10 (1-7)
    kind: str                     # expected kind on every rank, or "ok"
    words: Words = field(default_factory=list)  # each must appear in the message
    ranks: Optional[Callable[[int], List[int]]] = None  # expected e.ranks()
    continues: bool = False       # a follow-up step must work; replicas equal after it
    replicas: bool = False        # the fingerprints must be equal (no follow-up)
    note: Optional[str] = None    # a regular expression the rank's note must match
    warning_ok: bool = False      # "ok" with the words in stderr also passes
    gap: Optional[str] = None     # known gap: what was observed on main
    hangs: bool = False           # the gap hangs: run it with a short timeout
    ok_ranks: Optional[Callable[[int], List[int]]] = None  # ranks that returned before the others: must say ok
    env: dict = field(default_factory=dict)  # environment of the run (e.g. the stall inspector's limit)
    timeout: Optional[float] = None  # the hard timeout, when shorter than --timeout (limit + a margin)
    stderr_has: List[str] = field(default_factory=list)    # each must appear in stderr
    stderr_lacks: List[str] = field(default_factory=list)  # none may appear in stderr


def last(np):
    return np - 1


def ranks_text(ranks):
    return (" [rank %d]" % ranks[0]) if len(ranks) == 1 else " [ranks " + ", ".join(map(str, ranks)) + "]"


def names(ranks_fn):
    """The ranks suffix of what(), for an expected ranks list."""
    return lambda np: ranks_text(ranks_fn(np))


R1 = lambda np: [1]
RL = lambda np: [np - 1]
R0 = lambda np: [0]
R0L = lambda np: [0, np - 1]
ALL = lambda np: list(range(np))
# Layer 1 (the pass-through Fault layer) is on stage 0 at 2 ranks, stage 1 at 3 and 4.
FAULT_STAGE = lambda np: [0] if np == 2 else [1]
HOOK = "deliberate failure in a hook"
BATCH = "FaultData::batch(): sample file is unreadable"
STALL_2S = {"PARALLAX_STALL_TIMEOUT": "2"}  # the stall inspector's limit for the inputs that stall
MISMATCH_GAP = "no error on any rank; training goes on"

INPUTS = [
    # --- 1. callbacks the library calls -----------------------------------
    Input("dp_loss_throws_one_rank", 1, USER, ["TinyMLP: deliberate failure", names(RL)], RL, continues=True),
    Input("dp_loss_throws_two_ranks", 1, USER, ["TinyMLP: deliberate failure", names(R0L)], R0L, continues=True),
    Input("dp_loss_throws_in_accumulation", 1, USER, ["TinyMLP: deliberate failure", names(R1)], R1, continues=True),
    Input("dp_loss_throws_local_sgd", 1, USER, ["TinyMLP: deliberate failure", names(R1)], R1, continues=True),
    Input("dp_batch_throws_one_rank", 1, USER, [BATCH, names(R1)], R1, continues=True),
    Input("dp_batch_throws_all_ranks", 1, USER, [BATCH, names(ALL)], ALL),
    Input("dp_eval_batch_throws_one_rank", 1, USER, [BATCH, names(RL)], RL, continues=True),
    Input("dp_eval_size_throws_one_rank", 1, USER, ["FaultData::size(): the index file is unreadable", names(R1)], R1),
    Input("dp_eval_loss_throws_one_rank", 1, USER, ["Thrower::loss(): deliberate failure", names(R0)], R0),
    Input("dp_metric_throws_one_rank", 1, USER, ["mae metric: deliberate failure", names(RL)], RL),
    Input("dp_on_step_throws", 1, USER, [HOOK, "on_step", names(R0)], R0, continues=True),
    Input("dp_after_step_throws_one_rank", 1, USER, [HOOK, "after_step", names(RL)], RL, continues=True),
    Input("dp_after_step_throws_all_ranks", 1, USER, [HOOK, "after_step", names(ALL)], ALL),
    Input("dp_stop_when_throws_one_rank", 1, USER, [HOOK, "stop_when hook", names(R1)], R1, continues=True),
    Input("mp_forward_throws_in_shape_pass", 1, USER, ["Fault::forward(): deliberate failure", names(FAULT_STAGE)],
          FAULT_STAGE, continues=True),
    Input("mp_forward_throws_mid_schedule", 1, USER, ["Fault::forward(): deliberate failure", names(FAULT_STAGE)],
          FAULT_STAGE, continues=True),
    Input("mp_forward_throws_gpipe", 1, USER, ["Fault::forward(): deliberate failure", names(FAULT_STAGE)],
          FAULT_STAGE, continues=True),
    Input("mp_backward_throws", 1, USER, ["Fault::backward(): deliberate failure", names(FAULT_STAGE)], FAULT_STAGE,
          continues=True),
    Input("mp_batch_throws_one_rank", 1, USER, [BATCH, names(RL)], RL),
    Input("mp_eval_batch_throws_one_rank", 1, USER, [BATCH, names(R0)], R0),
    Input("mp_predict_forward_throws", 1, USER, ["Fault::forward(): deliberate failure", names(FAULT_STAGE)],
          FAULT_STAGE, continues=True),
    Input("ensemble_make_model_throws_one_rank", 1, USER, ["make_model: deliberate failure", names(R1)], R1),
    Input("ensemble_predict_throws_one_rank", 1, USER, ["FaultNet::predict(): deliberate failure", names(RL)], RL,
          continues=True),
    # --- 2. rank-local errors before the first collective --------------------
    Input("sgd_invalid_lr_one_rank", 2, INVALID, ["SGD::SGD(): lr = -1 must be finite and >= 0", names(R1)], R1),
    Input("adam_invalid_eps_one_rank", 2, INVALID, ["Adam::Adam(): eps = 0 must be finite and > 0", names(RL)], RL),
    Input("mp_adam_invalid_beta1_one_rank", 2, INVALID, ["Adam::Adam(): beta1 = 1 is outside [0, 1)", names(R0)], R0),
    Input("dp_schedule_invalid_one_rank", 2, INVALID, ["cosine_lr(): total_steps = 0 must be > 0", names(R1)], R1),
    Input("dp_schedule_negative_lr_one_rank", 2, INVALID,
          ["DataParallel: lr_schedule gives lr = -0.5 at optimizer step 10", names(RL)], RL),
    Input("ensemble_schedule_invalid_one_rank", 2, INVALID, ["step_lr(): step_size = 0 must be > 0", names(RL)], RL),
    Input("dp_accumulation_zero_one_rank", 2, INVALID, ["accumulation_steps must be at least 1", names(R1)], R1),
    Input("dp_clip_negative_one_rank", 2, INVALID, ["clip_norm must not be negative", names(RL)], RL),
    Input("dp_bucket_bytes_zero_one_rank", 2, INVALID, ["a cap of 0 bytes", names(R1)], R1),
    Input("mp_micro_batches_zero_one_rank", 2, INVALID, ["micro_batches must be at least 1", names(R1)], R1),
    Input("mp_boundaries_invalid_one_rank", 2, INVALID, ["boundaries must start at 0 and end at the layer count 4",
                                                         names(R0)], R0),
    Input("ensemble_ranks_per_replica_zero_one_rank", 2, INVALID,
          [lambda np: "%d ranks do not split into replicas of 0 ranks" % np, names(R1)], R1),
    Input("checkpointer_keep_zero_one_rank", 2, INVALID, ["keep must be at least 1", names(R1)], R1),
    # --- 3. settings that must match across ranks ------------------------------
    Input("dp_accumulation_differs", 3, MISMATCH, ["accumulation_steps"]),
    Input("dp_average_every_differs", 3, MISMATCH, ["average_every"]),
    Input("dp_bucket_bytes_differs", 3, MISMATCH, ["bucket_bytes"]),
    Input("dp_clip_norm_differs", 3, MISMATCH, ["clip_norm"]),
    Input("dp_nonfinite_policy_differs", 3, MISMATCH, ["on_nonfinite"]),
    Input("dp_lr_differs", 3, MISMATCH, ["lr", "0.2", "0.1"]),
    Input("dp_momentum_differs", 3, MISMATCH, ["momentum", "0.9"]),
    Input("dp_optimizer_kind_differs", 3, MISMATCH, ["adam", "sgd"]),
    Input("dp_lr_schedule_differs", 3, MISMATCH, ["schedule"]),
    Input("dp_lr_schedule_values_differ", 3, MISMATCH,
          [lambda np: "lr_schedule at step 100: rank 0 has 0.09755282581475769, rank %d has 0.09045084971874738" % (np - 1)]),
    Input("dp_gradient_resized_one_rank", 3, INVALID, ["gradient 3 has 2 elements, parameter 3 has 1", names(R1)], R1,
          continues=True),
    Input("dp_parameter_shapes_differ", 3, MISMATCH,
          [lambda np: "parameter 0 has shape (3, 4) on rank 0 but (3, 5) on rank %d" % (np - 1)]),
    Input("sampler_seed_differs", 3, MISMATCH, ["settings differ between ranks: seed: rank 0 has 1, rank 1 has 2"]),
    Input("sampler_global_batch_differs", 3, MISMATCH, ["the global batch: rank 0 has 12, rank 1 has 8"]),
    Input("sampler_shuffle_differs", 3, MISMATCH, [lambda np: "shuffle: rank 0 has true, rank %d has false" % (np - 1)]),
    Input("dp_eval_dataset_size_differs", 3, MISMATCH, ["dataset size", "24", "20"]),
    Input("mp_batches_differ", 3, MISMATCH, ["the ranks passed different batches"], continues=True),
    Input("mp_predict_inputs_differ", 3, MISMATCH, ["the ranks passed different batches"], continues=True),
    Input("mp_micro_batches_differs", 3, MISMATCH, ["micro_batches"]),
    Input("mp_schedule_differs", 3, MISMATCH, ["schedule"]),
    Input("mp_seed_differs", 3, MISMATCH, ["seed"]),
    Input("mp_recompute_differs", 3, MISMATCH, ["recompute"]),
    Input("mp_clip_norm_differs", 3, MISMATCH, ["clip_norm"]),
    Input("mp_lr_differs", 3, MISMATCH, ["lr", "0.5", "0.1"]),
    Input("mp_boundaries_differ", 3, MISMATCH, ["partition", lambda np: "0, 3, 4" if np == 2 else "0, 1, 3, 4"]),
    Input("ensemble_seed_differs", 3, MISMATCH, ["Ensemble: settings differ between ranks: seed: rank 0 has 1, "
                                                 "rank 1 has 2"]),
    Input("ensemble_ranks_per_replica_differs", 3, MISMATCH,
          [lambda np: "ranks_per_replica: rank 0 has 1, rank 1 has %d" % np]),
    Input("checkpoint_every_steps_differs", 3, MISMATCH, ["Checkpointer: settings differ between ranks: every_steps:",
                                                          "rank 0 has 1", "rank 1 has 2"]),
    Input("checkpoint_directory_differs", 3, MISMATCH, ["Checkpointer: settings differ between ranks: directory:",
                                                        "-rank0", "-rank1"], note=r"^not created$"),
    # --- 4. collectives reached by only some ranks -----------------------------
    # Every collective library call is an operation (core/operation.hpp): ranks in different ones get the same
    # rank_mismatch naming each rank's; a rank missing is named by the stall inspector, whose limit is small here.
    Input("dp_one_rank_skips_a_step", 4, MISMATCH,
          ["ranks are in different library operations", "in DataParallel::train_step() (operation 3, step 1",
           lambda np: "rank %d in DataParallel::evaluate() (operation 3, step 1, fault/fault_case.cpp:" % (np - 1)]),
    Input("dp_one_rank_leaves_the_loop", 4, COMM,
          ["stall: DataParallel::train_step() (operation 3, step 1, fault/fault_case.cpp:", "has waited 2 s",
           "rank 1 has not arrived (last seen in DataParallel::train_step() (operation 2, step 0, fault/fault_case.cpp:",
           names(R1)], R1, ok_ranks=R1, env=STALL_2S, timeout=14, stderr_has=["parallax: stall: DataParallel::train_step()"]),
    Input("dp_rank0_leaves_the_loop", 4, COMM,
          ["stall: DataParallel::train_step() (operation 3, step 1", "has waited 4 s without word from rank 0",
           "rank 0 has not arrived", names(R0)], R0, ok_ranks=R0, env=STALL_2S, timeout=16,
          stderr_has=["parallax: stall: DataParallel::train_step() (operation 3, step 1"]),
    Input("dp_one_rank_never_constructs", 4, COMM,
          ["stall: DataParallel::DataParallel() has waited 2 s for some rank of its communicator to enter its "
           "first library operation there"], lambda np: [], ok_ranks=R1, env=STALL_2S, timeout=14,
          stderr_has=["parallax: stall: DataParallel::DataParallel() has waited 2 s on rank 0"]),
    Input("dp_one_rank_late_beyond_the_limit", 4, COMM,
          ["stall: DataParallel::train_step() (operation 3, step 1", "has waited 2 s",
           "rank 1 has not arrived (last seen in DataParallel::train_step() (operation 2, step 0", names(R1)], R1,
          env=STALL_2S, timeout=14),
    Input("dp_one_rank_constructs_while_others_train", 4, MISMATCH,
          [lambda np: "in DataParallel::train_step() (operation 2, step 0",
           lambda np: "rank %d in DataParallel::DataParallel() (operation 2" % (np - 1)]),
    Input("save_on_one_rank_only", 4, MISMATCH,
          ["ranks are in different library operations", "rank 0 in Checkpointer::save() (operation 4, step 1, fault/fault_case.cpp:",
           "in DataParallel::train_step() (operation 4, step 1"]),
    Input("mp_one_rank_skips_a_step", 4, MISMATCH,
          ["rank 0 in ModelParallel::evaluate() (operation 3, step 1", "in ModelParallel::train_step() (operation 3"]),
    Input("dp_one_rank_slow_stall_off", 4, "ok", env={"PARALLAX_STALL_TIMEOUT": "0"}, timeout=14,
          stderr_lacks=["stall"]),
    Input("dp_one_rank_slow_stall_waits", 4, "ok", env={"PARALLAX_STALL_TIMEOUT": "1", "PARALLAX_STALL_ACTION": "wait"},
          timeout=14, stderr_has=["parallax: stall: DataParallel::train_step() (operation 3, step 1",
                                  "rank 1 has not arrived (last seen in DataParallel::train_step() (operation 2"]),
    # --- 5. non-finite values -------------------------------------------------------
    Input("dp_nan_gradient_one_rank", 5, NONFINITE, ["gradient of parameter 0 is not finite at optimizer step 0"],
          continues=True, note=r"(^| )finite$"),
    Input("dp_nan_gradient_skip_step", 5, "ok", continues=True, note=r"^skipped=1 steps=2"),
    Input("dp_nan_gradient_in_accumulation", 5, NONFINITE, ["gradient of parameter 0 is not finite"],
          continues=True, note=r"(^| )finite$"),
    Input("dp_nan_loss_one_rank", 5, NONFINITE, ["loss", names(R1)], continues=True),
    Input("dp_nan_input_sample", 5, NONFINITE, ["gradient of parameter 0 is not finite"], continues=True),
    Input("dp_nan_gradient_local_sgd", 5, NONFINITE, ["not finite"], continues=True),
    Input("mp_nan_gradient", 5, NONFINITE, ["the input gradient of layer 1 on stage", names(FAULT_STAGE),
                                            lambda np: "stage %d is not finite at optimizer step 0" % FAULT_STAGE(np)[0]],
          FAULT_STAGE, continues=True),
    Input("mp_nan_gradient_skip_step", 5, "ok", continues=True, note=r"^skipped=1 steps=0$"),
    Input("mp_nan_activation", 5, NONFINITE, ["the output of layer 1 on stage", names(FAULT_STAGE),
                                              lambda np: "stage %d is not finite at optimizer step 0" % FAULT_STAGE(np)[0]],
          FAULT_STAGE, continues=True),
    # --- 6. checkpoint folders -----------------------------------------------------------
    Input("checkpoint_all_damaged", 6, DAMAGED, ["every checkpoint in", "is damaged: step-000000000002: ",
                                                  "; step-000000000001: ", "truncated", "start_fresh"],
          note=r"^step-000000000001 step-000000000002$"),
    Input("checkpoint_all_damaged_start_fresh", 6, "ok", ["every checkpoint in", "is damaged: step-000000000002: ",
                                                          "Starting fresh", "step-000000000001.damaged"],
          warning_ok=True, note=r"^resumed nothing, 2 skipped, saved step-000000000001, step-000000000001 "
                                r"step-000000000001\.damaged step-000000000002\.damaged$"),
    Input("checkpoint_all_damaged_one_stage", 6, DAMAGED, ["is damaged: step-000000000002: ", "step-000000000001: ",
                                                           "truncated", names(RL)], continues=True),
    Input("checkpoint_newest_damaged", 6, "ok", ["skipping checkpoint", "step-000000000002", "truncated",
                                                 "kept damaged checkpoint", "resuming from"], warning_ok=True,
          note=r"^resumed step-000000000001, 1 skipped, saved step-000000000002, step-000000000001 "
               r"step-000000000002 step-000000000002\.damaged$"),
    Input("checkpoint_same_step_saved_twice", 6, INVALID, ["step-000000000001' already holds a checkpoint of step 1",
                                                           "never overwritten", names(ALL)], ALL, continues=True,
          note=r"^first checkpoint unchanged$"),
    Input("checkpoint_resumed_with_another_lr", 6, "ok",
          ["resume: lr is 0.1 in the checkpoint, 0.5 in the code; the checkpoint's value is used"], warning_ok=True,
          note=r"^lr after resume=0\.100000$"),
    Input("checkpoint_folder_of_another_run", 6, INVALID, ["already holds checkpoints of another run",
                                                          "step-000000000002", names(R0)], R0),
    Input("checkpoint_dir_is_a_file", 6, INVALID, ["cannot use", "as a checkpoint directory", names(ALL)], ALL),
    Input("checkpoint_load_missing", 6, IO, ["step-000000000042", "no MANIFEST"]),
    Input("checkpoint_of_another_model", 6, INCOMPATIBLE, ["has shape (3, 4) there, (3, 5) in this model"]),
    Input("checkpoint_part_damaged_one_stage", 6, DAMAGED, ["truncated", ".bin", names(RL)], RL, continues=True),
    # --- 7. sizes --------------------------------------------------------------------------
    Input("global_batch_larger_than_dataset", 7, INVALID, ["100", "24"], warning_ok=True),
    Input("global_batch_smaller_than_ranks", 7, INVALID,
          [lambda np: "the global batch of %d is smaller than the %d ranks" % (np - 1, np)]),
    Input("dp_empty_batch_one_rank", 7, INVALID, ["the batch is empty", names(R1)], R1, continues=True),
    Input("mp_batch_smaller_than_micro_batches", 7, INVALID, ["a batch of 3 samples cannot be cut into 4 micro-batches"],
          continues=True),
    Input("sampler_huge_dataset", 7, ANY_ERROR, ["1152921504606846976"]),
    Input("mp_huge_layer_one_stage", 7, INVALID, ["building layer 3: Linear(5 -> 1152921504606846976): cannot "
                                                  "allocate its weight [5, 1152921504606846976]", "bytes)",
                                                  names(RL)], RL),
]

FORBIDDEN = re.compile(r"MPI_ABORT|MPI_ERR|Assertion|assertion|terminate called|Segmentation fault|"
                       r"signal \d+|Process received signal|exited on signal")
LINE = re.compile(r"^parallax-fault (\{.*\})$", re.M)


def words_for(item, np):
    return [w(np) if callable(w) else w for w in item.words]


def run_once(args, item, np, timeout):
    cmd = [args.mpiexec] + args.mpiexec_flags + ["-n", str(np), args.exe, item.name]
    with tempfile.TemporaryDirectory(prefix="parallax-fault-reports-") as reports:
        # Each rank also writes its report line to a file of its own: mpiexec
        # forwards long stdout lines in pieces that can interleave.
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PARALLAX_NO_BLAS_WARNING="1",
                   PARALLAX_FAULT_REPORTS=reports, **item.env)
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
        timed_out = False
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        elapsed = time.monotonic() - start
        lines = [open(os.path.join(reports, f)).read() for f in sorted(os.listdir(reports))]
    if lines:
        out = "".join(l + "\n" for l in out.splitlines() if "parallax-fault {" not in l) + "".join(lines)
    return elapsed, timed_out, proc.returncode, out, err


def judge(item, np, timed_out, code, out, err):
    """'' when the run passes, else what is wrong."""
    reports = {}
    for m in LINE.finditer(out):
        r = json.loads(m.group(1))
        reports[r["rank"]] = r
    seen = ", ".join("rank %d: %s%s" % (k, reports[k]["kind"], (" (" + reports[k]["cause"][:80] + ")")
                                         if reports[k]["cause"] else "") for k in sorted(reports))
    if timed_out:
        return "hang: killed after the timeout; %s" % (seen or "no rank reported")
    bad = FORBIDDEN.search(err)
    if bad:
        line = next(l for l in err.splitlines() if bad.group(0) in l)
        return "abort: stderr says: " + line.strip()[:160]
    if code != 0:
        return "exit code %d; %s" % (code, seen or "no rank reported")
    if sorted(reports) != list(range(np)):
        return "ranks %s reported, expected 0..%d" % (sorted(reports), np - 1)
    lacking = [w for w in item.stderr_has if w not in err]
    if lacking:
        return "stderr lacks %s" % lacking
    unwanted = [w for w in item.stderr_lacks if w in err]
    if unwanted:
        line = next(l for l in err.splitlines() if unwanted[0] in l)
        return "stderr says: " + line.strip()[:160]
    if item.ok_ranks:
        early = item.ok_ranks(np)
        wrong = [k for k in early if reports[k]["kind"] != "ok"]
        if wrong:
            return "rank %d returned before the others and should report ok: %s" % (wrong[0], reports[wrong[0]]["kind"])
        reports = {k: r for k, r in reports.items() if k not in early}
    first = reports[min(reports)]  # the lowest rank judged
    kinds = {r["kind"] for r in reports.values()}
    if len(kinds) != 1:
        return "ranks disagree: " + seen
    kind = kinds.pop()
    if kind == "foreign":
        return "not a parallax::error: " + first["cause"][:160]
    if item.kind == ANY_ERROR:
        if kind == "ok":
            return "silent: no error on any rank"
    elif kind != item.kind and not (item.warning_ok and kind == "ok"):
        return "kind '%s', expected '%s': %s" % (kind, item.kind, first["what"][:160])
    whats = {r["what"] for r in reports.values()}
    if len(whats) != 1:
        return "messages differ between ranks"
    what = whats.pop()
    text = err if kind == "ok" and item.warning_ok else what
    missing = [w for w in words_for(item, np) if w not in text]
    if missing:
        return "the message lacks %s: %s" % (missing, (what or "(no error)")[:200])
    if item.ranks and kind != "ok" and first["ranks"] != item.ranks(np):
        return "ranks() is %s, expected %s" % (first["ranks"], item.ranks(np))
    if item.continues:
        failed = [k for k, r in reports.items() if r["after"] != "ok"]
        if failed:
            return "the follow-up step failed on rank %d: %s" % (failed[0], reports[failed[0]]["after"][:160])
    if item.continues or item.replicas:
        if len({r["hash"] for r in reports.values()}) != 1:
            return "replicas differ after the input"
    if item.note:
        wrong = [k for k, r in reports.items() if not re.search(item.note, r["note"])]
        if wrong:
            return "rank %d's note '%s' does not match '%s'" % (wrong[0], reports[wrong[0]]["note"], item.note)
    return ""


def self_test():
    """The judge on made-up runs: each way to fail must be caught. Returns the
    cases it got wrong."""
    item = Input("self_test", 1, USER, ["boom", names(R1)], R1, continues=True)

    def line(rank, kind=USER, ranks=(1,), what="boom [rank 1]", after="ok", hash="h"):
        return "parallax-fault " + json.dumps({"rank": rank, "kind": kind, "ranks": list(ranks), "cause": "boom",
                                               "what": what, "after": after, "hash": hash, "note": ""})

    good = line(0) + "\n" + line(1) + "\n"
    runs = [  # name, timed out, exit code, stdout, stderr, passes
        ("a good run", False, 0, good, "", True),
        ("a hang", True, -9, good, "", False),
        ("an MPI abort", False, 0, good, "MPI_ABORT was invoked on rank 1", False),
        ("an MPI error", False, 0, good, "MPI_ERR_TRUNCATE: message truncated", False),
        ("a non-zero exit", False, 1, good, "", False),
        ("a rank that did not report", False, 0, line(0) + "\n", "", False),
        ("kinds that differ", False, 0, line(0) + "\n" + line(1, kind=INVALID) + "\n", "", False),
        ("a foreign exception", False, 0, line(0, kind="foreign") + "\n" + line(1, kind="foreign") + "\n", "", False),
        ("the wrong kind", False, 0, line(0, kind=INVALID) + "\n" + line(1, kind=INVALID) + "\n", "", False),
        ("no error", False, 0, line(0, kind="ok", what="") + "\n" + line(1, kind="ok", what="") + "\n", "", False),
        ("a message without the cause", False, 0,
         line(0, what="bang [rank 1]") + "\n" + line(1, what="bang [rank 1]") + "\n", "", False),
        ("the wrong ranks", False, 0, line(0, ranks=(0,)) + "\n" + line(1, ranks=(0,)) + "\n", "", False),
        ("a failed follow-up", False, 0, line(0) + "\n" + line(1, after="failed: x") + "\n", "", False),
        ("replicas that differ", False, 0, line(0) + "\n" + line(1, hash="g") + "\n", "", False),
    ]
    wrong = [name for name, timed_out, code, out, err, passes in runs
             if (judge(item, 2, timed_out, code, out, err) == "") != passes]
    # An input where rank 0 returned early, with words that stderr must and must not hold.
    early = Input("self_test_early", 4, USER, ["boom"], ok_ranks=R0, stderr_has=["stall:"], stderr_lacks=["bang"])
    ok0 = line(0, kind="ok", ranks=(), what="") + "\n"
    runs = [
        ("an early rank that says ok", False, 0, ok0 + line(1) + "\n", "stall:", True),
        ("an early rank that reports an error", False, 0, good, "stall:", False),
        ("stderr without the expected words", False, 0, ok0 + line(1) + "\n", "", False),
        ("stderr with unwanted words", False, 0, ok0 + line(1) + "\n", "stall: bang", False),
    ]
    return wrong + [name for name, timed_out, code, out, err, passes in runs
                    if (judge(early, 2, timed_out, code, out, err) == "") != passes]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exe", required=True, help="the fault_case program")
    parser.add_argument("--mpiexec", default="mpiexec")
    parser.add_argument("--ranks", default="2,3", help="rank counts, comma-separated")
    parser.add_argument("--only", default="", help="inputs to run, comma-separated")
    parser.add_argument("--gaps", action="store_true", help="run the known gaps too")
    parser.add_argument("--timeout", type=float, default=20, help="seconds per run")
    parser.add_argument("--gap-timeout", type=float, default=6, help="seconds per run of a gap that hangs")
    parser.add_argument("--list", action="store_true", help="list the inputs and exit")
    parser.add_argument("mpiexec_flags", nargs="*", help="after --: flags for mpiexec")
    args = parser.parse_args()
    if not args.mpiexec_flags:
        args.mpiexec_flags = ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    rank_counts = [int(n) for n in args.ranks.split(",")]
    items = INPUTS
    if args.only:
        wanted = args.only.split(",")
        unknown = [w for w in wanted if w not in {i.name for i in INPUTS}]
        if unknown:
            sys.exit("run_faults.py: no input named " + ", ".join(unknown))
        items = [i for i in INPUTS if i.name in wanted]
    if args.list:
        for i in items:
            print("%-44s class %d  %s" % (i.name, i.cls, "known gap: " + i.gap if i.gap else "expected: " + i.kind))
        return 0
    # Every input of the program is judged here, and every input judged is in the program.
    listed = subprocess.run([args.exe, "--list"], capture_output=True, text=True).stdout.split()
    if sorted(listed) != sorted(i.name for i in INPUTS):
        print("fault_case's inputs and run_faults.py's differ: %s" %
              sorted(set(listed) ^ {i.name for i in INPUTS}))
        print("parallax-test-cases: 0 passed, 1 failed (fault suite)")
        return 1
    passed = failed = skipped = 0
    total_start = time.monotonic()
    wrong = self_test()
    print("judge self-test: %s" % ("FAIL: misjudged " + ", ".join(wrong) if wrong else "pass"), flush=True)
    passed, failed = (0, 1) if wrong else (1, 0)
    print("%-44s %5s %7s  %s" % ("input", "ranks", "seconds", "verdict"), flush=True)
    for item in items:
        for np in rank_counts:
            if item.gap and not args.gaps:
                skipped += 1
                print("%-44s %5d %7s  gap (skipped): %s" % (item.name, np, "-", item.gap), flush=True)
                continue
            timeout = args.gap_timeout if item.gap and item.hangs else min(args.timeout, item.timeout or args.timeout)
            seconds, timed_out, code, out, err = run_once(args, item, np, timeout)
            problem = judge(item, np, timed_out, code, out, err)
            if problem:
                failed += 1
                verdict = "FAIL: " + problem + ("  [known gap]" if item.gap else "")
            else:
                passed += 1
                verdict = "pass" + ("  [known gap now passes: clear its gap mark]" if item.gap else "")
            print("%-44s %5d %7.2f  %s" % (item.name, np, seconds, verdict), flush=True)
    seconds = time.monotonic() - total_start
    print("%d inputs (%d known gaps) at %s ranks in %.0f s" %
          (len(items), sum(1 for i in items if i.gap), args.ranks, seconds))
    print("parallax-test-cases: %d passed, %d failed (fault suite, %d gap runs skipped)" % (passed, failed, skipped))
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
