#!/usr/bin/env bash
# SPDX-License-Identifier: BSL-1.0
# parallax against PyTorch in one run, at 1 process and at N: parallax at 1
# rank and at N ranks, PyTorch in a single process and
# DistributedDataParallel (gloo) on N processes; the same model, batch per
# process, optimizer and data. Prints a table (time, throughput, ratio to
# parallax at the same process count), the targets, and writes one JSON for
# benchmarks/plot.py.
#   --model mlp (default): one epoch of Fashion-MNIST with the MLP
#     784-256-128-10, SGD momentum (benchmarks/mlp_epoch.cpp,
#     benchmarks/pytorch_mlp.py), and the same by hand in numpy with mpi4py
#     under mpiexec at 1 process and at N (benchmarks/numpy_mlp.py: one
#     in-place Allreduce per gradient tensor);
#   --model transformer: --steps steps of the GPT-style model of
#     examples/char_lm.cpp on random tokens, Adam, tokens/s
#     (benchmarks/transformer_step.cpp, benchmarks/pytorch_transformer.py).
#
#   benchmarks/run_vs_pytorch.sh [--model mlp|transformer] [--json build-bench/vs_pytorch.json] [--repeats 5]
#                                [--ranks 2] [--build build-bench] [--batch 64] [--lr 0.05] [--steps 30]
#
# --batch is per process (defaults: 64 images, 16 sequences); --lr defaults
# to 0.05 (SGD) and 0.001 (Adam). Installs what is missing (python3-torch,
# python3-matplotlib, python3-numpy, python3-mpi4py and the build packages of
# scripts/setup.sh) as root or through sudo. One BLAS thread per process;
# OPENBLAS_CORETYPE=SkylakeX when the CPU has AVX-512 (F, BW, VL, DQ), as
# scripts/setup.sh's parallax_pick_blas_core sets it (an OpenBLAS older than
# the CPU need not pick its AVX-512 kernels by itself); the value is
# recorded. Run it on an otherwise idle machine.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
model=mlp
json=""
build="$root/build-bench"
repeats=5
ranks=2
batch=""
lr=""
steps=30
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model=$2; shift 2 ;;
    --json) json=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    --ranks) ranks=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --lr) lr=$2; shift 2 ;;
    -h|--help) sed -n '3,28p' "$0"; exit 0 ;;
    *) echo "run_vs_pytorch.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$model" in
  mlp) bench=mlp_epoch script=pytorch_mlp.py numpy_script=numpy_mlp.py; batch=${batch:-64}; lr=${lr:-0.05}
       json=${json:-$root/build-bench/vs_pytorch.json}; extra=() ;;
  transformer) bench=transformer_step script=pytorch_transformer.py numpy_script=""; batch=${batch:-16}
       lr=${lr:-0.001}; json=${json:-$root/build-bench/vs_pytorch_transformer.json}; extra=(--steps "$steps") ;;
  *) echo "run_vs_pytorch.sh: --model is mlp or transformer, not $model" >&2; exit 2 ;;
esac
case "$json" in /*) ;; *) json="$PWD/$json" ;; esac
case "$build" in /*) ;; *) build="$PWD/$build" ;; esac

# Packages: the build's (scripts/setup.sh installs them when sourced), PyTorch's
# and numpy_mlp.py's.
# shellcheck source=../scripts/setup.sh
source "$root/scripts/setup.sh"
parallax_install_missing python3-torch python3-matplotlib python3-numpy python3-mpi4py
# Debian's python3-torch lives in the system interpreter, which need not be
# the first python3 on PATH.
python=${PYTHON:-/usr/bin/python3}

# One BLAS thread per process: processes are the parallelism, in every framework.
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
parallax_pick_blas_core  # from scripts/setup.sh, sourced above
echo "run_vs_pytorch: OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-(unset)}, OPENBLAS_NUM_THREADS=$OPENBLAS_NUM_THREADS"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Build only the benchmark this needs.
if [ ! -f "$build/build.ninja" ]; then
  meson setup "$build" "$root" >"$work/setup.log" 2>&1 || { cat "$work/setup.log"; exit 1; }
fi
meson compile -C "$build" "benchmarks/$bench" >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }

mpiexec_flags=()
[ "$(id -u)" = 0 ] && mpiexec_flags+=(--allow-run-as-root)
mpiexec_flags+=(-x OPENBLAS_NUM_THREADS -x OMP_NUM_THREADS)
[ -n "${OPENBLAS_CORETYPE:-}" ] && mpiexec_flags+=(-x OPENBLAS_CORETYPE)

load_before=$(cut -d' ' -f1-3 /proc/loadavg)

echo "== parallax, 1 rank"
mpiexec "${mpiexec_flags[@]}" -n 1 "$build/benchmarks/$bench" --batch "$batch" --lr "$lr" \
  --repeats "$repeats" "${extra[@]}" --json "$work/parallax_1.json"
echo "== parallax, $ranks ranks"
mpiexec "${mpiexec_flags[@]}" -n "$ranks" "$build/benchmarks/$bench" --batch "$batch" --lr "$lr" \
  --repeats "$repeats" "${extra[@]}" --json "$work/parallax_n.json"
echo "== PyTorch, 1 process"
"$python" "$root/benchmarks/$script" --processes 1 --batch "$batch" --lr "$lr" --repeats "$repeats" \
  "${extra[@]}" --json "$work/pytorch_1.json"
echo "== PyTorch DDP, $ranks processes"
MASTER_ADDR=127.0.0.1 "$python" "$root/benchmarks/$script" --processes "$ranks" --batch "$batch" \
  --lr "$lr" --repeats "$repeats" "${extra[@]}" --json "$work/pytorch_n.json"
if [ -n "$numpy_script" ]; then
  echo "== numpy, 1 process"
  mpiexec "${mpiexec_flags[@]}" -n 1 "$python" "$root/benchmarks/$numpy_script" --batch "$batch" --lr "$lr" \
    --repeats "$repeats" --json "$work/numpy_1.json"
  echo "== numpy + mpi4py, $ranks processes"
  mpiexec "${mpiexec_flags[@]}" -n "$ranks" "$python" "$root/benchmarks/$numpy_script" --batch "$batch" --lr "$lr" \
    --repeats "$repeats" --json "$work/numpy_n.json"
fi
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

mkdir -p "$(dirname "$json")"
"$python" - "$work" "$json" "$load_before" "$load_after" "$model" <<'EOF'
import datetime, json, os, platform, subprocess, sys

work, out, load_before, load_after, model = sys.argv[1:6]
# The MLP also has the numpy + mpi4py rows (benchmarks/numpy_mlp.py).
keys = ["parallax_1", "parallax_n", "pytorch_1", "pytorch_n"] + (["numpy_1", "numpy_n"] if model == "mlp" else [])
parts = {k: json.load(open(os.path.join(work, k + ".json"))) for k in keys}
rows = [parts[k]["rows"][0] for k in keys]
seconds = "epoch_s" if model == "mlp" else "run_s"
ours = {r["processes"]: r[seconds] for r in rows if r["framework"] == "parallax"}
for r in rows:
    r["ratio_to_parallax"] = r[seconds] / ours[r["processes"]]


def text(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
mem_kib = next((int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal")), 0)
px, pt = parts["parallax_n"]["meta"], parts["pytorch_n"]["meta"]
meta = {
    "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    "cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kib / 2**20, 1),
    "kernel": platform.release(),
    "blas_core": px["blas_core"], "blas_config": px["blas_config"], "torch_blas_core": pt["blas_core"],
    "OPENBLAS_CORETYPE": px["OPENBLAS_CORETYPE"], "OPENBLAS_NUM_THREADS": px["OPENBLAS_NUM_THREADS"],
    "OMP_NUM_THREADS": pt["OMP_NUM_THREADS"],
    "torch": pt["torch"], "torch_debian_package": text(["dpkg-query", "-W", "-f=${Version}", "python3-torch"]),
    "torch_threads_per_process": pt["threads_per_process"], "torch_interop_threads": pt["interop_threads"],
    "torch_cpu_capability": pt["cpu_capability"], "ddp_backend": pt["backend"],
    "mpi": (text(["mpirun", "--version"]).splitlines() or [""])[0],
    "model": px["model"], "lr": px["lr"], "momentum": px.get("momentum"),
    "batch_per_process": rows[0]["batch_per_process"], "data": px.get("data", "random token ids"),
    "load_before": load_before, "load_after": load_after,
}
if "numpy_n" in parts:
    nm = parts["numpy_n"]["meta"]
    meta.update({"numpy": nm["numpy"], "mpi4py": nm["mpi4py"], "numpy_blas_core": nm["blas_core"],
                 "numpy_threads_per_process": nm["threads_per_process"]})
with open(out, "w") as f:
    json.dump({"benchmark": "vs_pytorch" if model == "mlp" else "vs_pytorch_transformer", "meta": meta, "rows": rows},
              f, indent=2)

n = rows[1]["processes"]
p1, pn, t1, tn = (r[seconds] for r in rows[:4])
if model == "transformer":
    print(f"\nGPT-style model {px['model']}, {rows[0]['steps']:.0f} Adam steps of {rows[0]['batch_per_process']:.0f} "
          f"sequences of 64 tokens per process; {meta['cores']} cores {cpu}; OpenBLAS core {meta['blas_core']}; "
          f"torch {meta['torch_debian_package'] or meta['torch']}")
    print(f"{'run':<26} | {'run s median (min-max)':>25} | {'tokens/s':>9} | {'x parallax':>10} | {'loss first -> last':>18}")
    for r in rows:
        print(f"{r['name']:<26} | {r[seconds]:8.3f} ({r['min']:.3f}-{r['max']:.3f})   | {r['tokens_per_s']:9.0f} | "
              f"{r['ratio_to_parallax']:10.2f} | {r['first_loss']:8.4f} -> {r['last_loss']:.4f}")
    checks = [
        ("parallax 1 rank at least as fast as PyTorch single process", p1 / t1, p1 <= t1),
        (f"parallax {n} ranks ahead of PyTorch DDP {n} processes", pn / tn, pn < tn),
    ]
    for name, ratio, ok in checks:
        print(f"target: {name}: {ratio:.2f}x -> {'met' if ok else 'MISSED'}")
    print(f"load average before {load_before}, after {load_after}; wrote {out}")
    sys.exit(0)

print(f"\nFashion-MNIST, one epoch of {rows[0]['samples']} samples, MLP 784-256-128-10, batch "
      f"{rows[0]['batch_per_process']} per process; {meta['cores']} cores {cpu}; OpenBLAS core {meta['blas_core']}; "
      f"torch {meta['torch_debian_package'] or meta['torch']}, numpy {meta['numpy']}, mpi4py {meta['mpi4py']}")
print(f"{'run':<26} | {'epoch s median (min-max)':>25} | {'samples/s':>9} | {'x parallax':>10} | "
      f"{'train loss':>10} | {'test acc':>8}")
for r in rows:
    print(f"{r['name']:<26} | {r['epoch_s']:8.3f} ({r['min']:.3f}-{r['max']:.3f})   | {r['samples_per_s']:9.0f} | "
          f"{r['ratio_to_parallax']:10.2f} | {r['train_loss']:10.4f} | {r['test_accuracy']:8.4f}")
np_n = parts["numpy_n"]["rows"][0][seconds]
checks = [
    (f"parallax {n} ranks <= 0.25 x PyTorch DDP {n} processes", pn / tn, pn <= 0.25 * tn),
    (f"parallax {n} ranks <= 0.5 x PyTorch single process", pn / t1, pn <= 0.5 * t1),
    (f"parallax {n} ranks <= 0.7 x numpy + mpi4py {n} processes", pn / np_n, pn <= 0.7 * np_n),
    ("parallax 1 rank faster than PyTorch single process", p1 / t1, p1 < t1),
]
for name, ratio, ok in checks:
    print(f"target: {name}: {ratio:.2f}x -> {'met' if ok else 'MISSED'}")
print(f"load average before {load_before}, after {load_after}; wrote {out}")
EOF
