#!/usr/bin/env bash
# SPDX-License-Identifier: BSL-1.0
# Suite slurm: the demo under Slurm's srun equals the demo under mpiexec.
# Starts a one-node Slurm cluster in a scratch folder (munged with its own key
# and socket, slurmctld and slurmd in the foreground, SlurmUser=root,
# proctrack/linuxproc and task/none: no systemd or cgroups needed), waits up
# to 30 s for the node to be idle, runs the README's srun line (PMIx: Debian's
# Open MPI 4.1 is built against PMIx, not Slurm's PMI2), then the same demo
# with mpiexec -n 2, and checks that both report the same accuracy and losses.
# The daemons are stopped at exit, also on failure. Exit 77 (skipped), with
# the reason and the daemon's log, when the daemons cannot start here.
# Usage: srun_demo.sh FASHION_MNIST MPIEXEC [MPIEXEC_FLAGS...]
set -uo pipefail
fashion=$1
mpiexec_bin=$2
shift 2
mpi_flags=("$@")
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 PARALLAX_NO_BLAS_WARNING=1

# The line README.md shows under "Running on a cluster" (tests/docs checks
# that the README quotes it exactly); it runs from a folder where
# build/examples/fashion_mnist is the demo.
srun_line=$(cat <<'LINE'
srun -n 2 --mpi=pmix --export=ALL,OPENBLAS_NUM_THREADS=1 build/examples/fashion_mnist --epochs 1 --limit 4000 --json srun.json
LINE
)

skip() {
  echo "SKIPPED: $*"
  exit 77
}
for c in munged mungekey slurmctld slurmd srun sinfo; do
  command -v "$c" >/dev/null || skip "'$c' is missing (Debian packages slurm-wlm and munge)"
done
[ "$(id -u)" = 0 ] || skip "the test cluster runs its daemons as root (SlurmUser=root)"
data_dir=/usr/share/datasets/fashion-mnist
compgen -G "$data_dir/train-images-idx3-ubyte*" >/dev/null || skip "$data_dir has no data (package dataset-fashion-mnist)"

scratch=$(mktemp -d /tmp/parallax-slurm-XXXXXX)
chmod 755 "$scratch"  # munged wants its socket's folders executable by all
pids=()  # slurmctld, slurmd (in the foreground) and munged (from its pid file)
stop_daemons() {
  local pid i alive
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
  for ((i = 0; i < 50; i++)); do  # up to 5 s, then SIGKILL
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null; done
  true
}
on_exit() {
  stop_daemons
  rm -rf "$scratch"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# tail_of FILE: the last lines of a daemon's log, indented.
tail_of() { echo "  $1:"; tail -n 15 "$1" 2>/dev/null | sed 's/^/    /'; }

# --- munge ----------------------------------------------------------------------
mkdir -p "$scratch/munge" "$scratch/state" "$scratch/spool"
chmod 755 "$scratch/munge"
mungekey --create --keyfile="$scratch/munge/munge.key" >/dev/null 2>&1 || skip "mungekey could not create a key"
chmod 600 "$scratch/munge/munge.key"
socket="$scratch/munge/munge.socket"
munged --key-file="$scratch/munge/munge.key" --socket="$socket" --pid-file="$scratch/munge/munged.pid" \
  --log-file="$scratch/munge/munged.log" --seed-file="$scratch/munge/munged.seed" ||
  skip "munged did not start: $(tail_of "$scratch/munge/munged.log")"
pids+=("$(cat "$scratch/munge/munged.pid")")

# --- slurm.conf: one node, this machine, on two free ports -------------------------
read -r ctld_port slurmd_port < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))')
host=$(hostname)
cpus=$(nproc --all)  # what slurmd finds; nproc alone may see a narrower affinity mask
[ "$cpus" -ge 2 ] || skip "the node needs 2 CPUs for srun -n 2, this machine has $cpus"
export SLURM_CONF="$scratch/slurm.conf"
cat >"$SLURM_CONF" <<CONF
ClusterName=parallax
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket
StateSaveLocation=$scratch/state
SlurmdSpoolDir=$scratch/spool
SlurmctldPidFile=$scratch/slurmctld.pid
SlurmdPidFile=$scratch/slurmd.pid
SlurmctldLogFile=$scratch/slurmctld.log
SlurmdLogFile=$scratch/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=parallax Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF

slurmctld -D -f "$SLURM_CONF" >"$scratch/slurmctld.out" 2>&1 &
pids+=($!)
slurmd -D -f "$SLURM_CONF" >"$scratch/slurmd.out" 2>&1 &
pids+=($!)
state=""
for ((i = 0; i < 60; i++)); do  # up to 30 s
  state=$(sinfo -h -n "$host" -o %t 2>/dev/null)
  [ "$state" = idle ] && break
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || break 2; done
  sleep 0.5
done
if [ "$state" != idle ]; then
  skip "the node did not become idle within 30 s (sinfo: '${state:-no answer}')
$(tail_of "$scratch/slurmctld.log")
$(tail_of "$scratch/slurmd.log")"
fi
echo "slurm: node $host idle (slurmctld port $ctld_port, slurmd port $slurmd_port, $cpus CPUs)"

# --- the demo under srun, then under mpiexec ---------------------------------------
mkdir -p "$scratch/run/build/examples"
ln -s "$(realpath "$fashion")" "$scratch/run/build/examples/fashion_mnist"
cd "$scratch/run" || exit 1
echo "\$ $srun_line"
timeout -s KILL 60 bash -c "$srun_line" || { echo "FAILED: srun exited with $?"; tail_of "$scratch/slurmd.log"; exit 1; }
echo "\$ mpiexec ${mpi_flags[*]} -n 2 -x OPENBLAS_NUM_THREADS build/examples/fashion_mnist --epochs 1 --limit 4000 --json mpiexec.json"
timeout -s KILL 60 "$mpiexec_bin" "${mpi_flags[@]}" -n 2 -x OPENBLAS_NUM_THREADS \
  build/examples/fashion_mnist --epochs 1 --limit 4000 --json mpiexec.json || { echo "FAILED: mpiexec exited with $?"; exit 1; }

python3 - srun.json mpiexec.json <<'PY'
import json, sys
srun, mpi = (json.load(open(p)) for p in sys.argv[1:3])
keys = ["ranks", "train_samples", "test_samples", "parameters", "seed", "accuracy", "accuracy_per_epoch"]
bad = [k for k in keys if srun.get(k) != mpi.get(k)]
if len(srun["per_epoch"]) != len(mpi["per_epoch"]):
    bad.append("number of epochs")
for a, b in zip(srun["per_epoch"], mpi["per_epoch"]):
    bad += [f"epoch {a['epoch']} {k}" for k in ("train_loss", "test_loss", "test_accuracy") if a[k] != b[k]]
for name, r in (("srun   ", srun), ("mpiexec", mpi)):
    print(f"{name}: {r['ranks']} ranks, accuracy {r['accuracy']}, "
          f"per epoch (train loss, test loss) {[(e['train_loss'], e['test_loss']) for e in r['per_epoch']]}")
ok = not bad and srun["ranks"] == 2
print("ok      srun -n 2 --mpi=pmix gives the accuracy and losses of mpiexec -n 2" if ok else
      "FAILED  srun and mpiexec differ: " + (", ".join(bad) or f"srun ran {srun['ranks']} ranks"))
print(f"parallax-test-cases: {int(ok)} passed, {int(not ok)} failed (slurm)")
sys.exit(0 if ok else 1)
PY
