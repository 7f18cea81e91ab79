#!/usr/bin/env bash
# SPDX-License-Identifier: BSL-1.0
# shellcheck source-path=SCRIPTDIR disable=SC2317  # the checks are functions that case_ calls
# Suite reliability: two hosts. Two Linux network namespaces joined by a veth
# pair (10.77.0.1/24 and 10.77.0.2/24) play two machines; mpiexec runs in the
# first with a hostfile of both (slots=1 each), starts the second's daemon
# through a plm_rsh_agent that enters the other namespace (where ssh would
# log in to another machine), and the ranks talk over Open MPI's TCP
# transport on the veth only (pml ob1, btl tcp,self). Checks:
#   - the Fashion-MNIST demo (1 epoch on 4000 images) reports the accuracy
#     and losses of the same run at 2 ranks on one host, and its gradient
#     traffic crossed the veth;
#   - ckpt_tool (DataParallel and a 2-stage pipeline) reaches bitwise the
#     single-host parameters, and a checkpoint written on one host resumes
#     on two hosts to bitwise the same parameters;
#   - hdf5_shard_tool (when built: the meson feature hdf5): each host reads
#     its own rows of one HDF5 file through MPI-IO, independent and
#     collective, each rank in its own host's namespace.
# Needs root and iproute2 (`ip`); otherwise the test reports itself skipped
# (exit 77). The namespaces and the veth are removed at exit.
# Usage: two_hosts.sh CKPT_TOOL MPIEXEC FASHION_MNIST|none HDF5_SHARD_TOOL|none [MPIEXEC_FLAGS...]
here=$(dirname "$0")
# shellcheck source=common.sh
. "$here/common.sh"
fashion=$1
hdf5_tool=$2
shift 2
mpi_flags=("$@")

skip() {
  echo "SKIPPED: $*"
  exit 77
}
[ "$(id -u)" = 0 ] || skip "creating network namespaces needs root"
command -v ip >/dev/null || skip "the 'ip' command (package iproute2) is missing"

tag=$(printf '%06x' $(((RANDOM << 9 ^ $$) & 0xffffff)))
ns1="plx-$tag-1"
ns2="plx-$tag-2"
veth1="plx${tag}a"
veth2="plx${tag}b"
remove_namespaces() {
  local ns pid
  for ns in "$ns1" "$ns2"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null
  done
  ip link del "$veth1" 2>/dev/null  # only if it never left this namespace
  true
}
cleanups+=(remove_namespaces)
ip netns add "$ns1" 2>"$log" || skip "ip netns add failed: $(cat "$log")"
ip netns add "$ns2" 2>"$log" || skip "ip netns add failed: $(cat "$log")"
ip link add "$veth1" type veth peer name "$veth2" 2>"$log" || skip "cannot create a veth pair: $(cat "$log")"
set -e
ip link set "$veth1" netns "$ns1"
ip link set "$veth2" netns "$ns2"
ip -n "$ns1" addr add 10.77.0.1/24 dev "$veth1"
ip -n "$ns2" addr add 10.77.0.2/24 dev "$veth2"
ip -n "$ns1" link set lo up
ip -n "$ns1" link set "$veth1" up
ip -n "$ns2" link set lo up
ip -n "$ns2" link set "$veth2" up
set +e
echo "namespaces $ns1 (10.77.0.1, $veth1) and $ns2 (10.77.0.2, $veth2)"

# The "remote shell": runs the daemon's command line in the host's namespace.
agent="$scratch/netns_agent.sh"
cat >"$agent" <<AGENT
#!/bin/sh
host=\$1
shift
case "\$host" in
  10.77.0.1) ns=$ns1 ;;
  10.77.0.2) ns=$ns2 ;;
  *) echo "netns_agent: unknown host \$host" >&2; exit 1 ;;
esac
exec ip netns exec "\$ns" /bin/sh -c "\$*"
AGENT
chmod +x "$agent"
printf '10.77.0.1 slots=1\n10.77.0.2 slots=1\n' >"$scratch/hosts"

# two_hosts PROGRAM ARGS...: one rank per namespace, launched from the first.
two_hosts() {
  timeout -s KILL 120 ip netns exec "$ns1" "$mpiexec_bin" "${mpi_flags[@]}" --hostfile "$scratch/hosts" -n 2 \
    --map-by node --mca plm_rsh_agent "$agent" --mca pml ob1 --mca btl tcp,self \
    --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24 -x OPENBLAS_NUM_THREADS "$@"
}
one_host() { timeout -s KILL 120 "$mpiexec_bin" "${mpi_flags[@]}" -n 2 -x OPENBLAS_NUM_THREADS "$@"; }
# Bytes the second host has received on its veth so far.
received() { ip netns exec "$ns2" cat "/sys/class/net/$veth2/statistics/rx_bytes"; }

# --- the Fashion-MNIST demo ----------------------------------------------------
data_dir=/usr/share/datasets/fashion-mnist
if [ "$fashion" != none ] && [ -x "$fashion" ] && compgen -G "$data_dir/train-images-idx3-ubyte*" >/dev/null; then
  fashion_case() {
    local before after
    one_host "$fashion" --epochs 1 --limit 4000 --quiet --json "$scratch/one.json" || return 1
    before=$(received)
    two_hosts "$fashion" --epochs 1 --limit 4000 --quiet --json "$scratch/two.json" || return 1
    after=$(received)
    python3 - "$scratch/one.json" "$scratch/two.json" $((after - before)) <<'PY'
import json, sys
one, two = (json.load(open(p)) for p in sys.argv[1:3])
crossed = int(sys.argv[3])
keys = ["ranks", "train_samples", "test_samples", "parameters", "accuracy", "accuracy_per_epoch"]
bad = [k for k in keys if one.get(k) != two.get(k)]
for e1, e2 in zip(one["per_epoch"], two["per_epoch"]):
    bad += [f"epoch {e1['epoch']} {k}" for k in ("train_loss", "test_loss", "test_accuracy") if e1[k] != e2[k]]
print(f"one host:  accuracy {one['accuracy']}, per epoch {[(e['train_loss'], e['test_loss']) for e in one['per_epoch']]}")
print(f"two hosts: accuracy {two['accuracy']}, per epoch {[(e['train_loss'], e['test_loss']) for e in two['per_epoch']]}")
# Every step all-reduces the float gradients (4 bytes per parameter): at
# least half of that reaches the second host.
steps = -(-one["train_samples"] // one["batch_size"])
need = one["parameters"] * 4 * steps // 2
print(f"the second host received {crossed / 1e6:.1f} MB on its veth (at least {need / 1e6:.1f} MB expected)")
if bad:
    print("differ:", ", ".join(bad))
sys.exit(1 if bad or crossed < need else 0)
PY
  }
  case_ "fashion_mnist MLP, 1 epoch on 4000 images: two hosts over TCP give the single-host accuracy and losses" fashion_case
  grep -h "^one host:\|^two hosts:\|received" "$log" | sed 's/^/        /'
else
  note "fashion_mnist is not built or $data_dir has no data: only ckpt_tool runs across the two hosts"
fi

# --- ckpt_tool: bitwise across hosts ----------------------------------------------
tool_case() {
  local mode=$1 before after
  one_host "$tool" --mode "$mode" --steps 30 --out "$scratch/$mode-one.bin" || return 1
  before=$(received)
  two_hosts "$tool" --mode "$mode" --steps 30 --out "$scratch/$mode-two.bin" || return 1
  after=$(received)
  echo "the second host received $((after - before)) bytes on its veth"
  [ $((after - before)) -ge 50000 ] || { echo "too little traffic crossed the veth"; return 1; }
  same_bits "$scratch/$mode-one.bin" "$scratch/$mode-two.bin"
}
case_ "ckpt_tool DataParallel, 30 Adam steps: two hosts give the single-host parameters bitwise" tool_case dp
case_ "ckpt_tool 2-stage pipeline, 30 Adam steps: two hosts give the single-host parameters bitwise" tool_case pipe

moved_case() {
  one_host "$tool" --mode dp --steps 13 --every 5 --dir "$scratch/moved" || return 1
  two_hosts "$tool" --mode dp --steps 30 --dir "$scratch/moved" --resume --out "$scratch/moved.bin" | tee "$scratch/moved.out" ||
    return 1
  grep -q "resumed from step-000000000013, steps 13 -> 30" "$scratch/moved.out" || return 1
  same_bits "$scratch/dp-one.bin" "$scratch/moved.bin"
}
case_ "a checkpoint written on one host resumes on two hosts, bitwise equal to the uninterrupted run" moved_case
# --- an HDF5 shard read: each host its own rows ------------------------------------
if [ "$hdf5_tool" != none ] && [ -x "$hdf5_tool" ]; then
  hdf5_case() {
    local transfer=$1 out="$scratch/hdf5-$1.out" ns1_id ns2_id
    ns1_id=$(ip netns exec "$ns1" readlink /proc/self/ns/net)
    ns2_id=$(ip netns exec "$ns2" readlink /proc/self/ns/net)
    two_hosts "$hdf5_tool" "$scratch/shard.h5" "$transfer" | tee "$out" || return 1
    grep -qxF "rank 0 netns $ns1_id rows [0, 501) ok" "$out" || { echo "rank 0 did not read rows [0, 501) in $ns1"; return 1; }
    grep -qxF "rank 1 netns $ns2_id rows [501, 1001) ok" "$out" || { echo "rank 1 did not read rows [501, 1001) in $ns2"; return 1; }
  }
  case_ "HDF5 shard read through MPI-IO, independent: each host reads its own rows" hdf5_case independent
  case_ "HDF5 shard read through MPI-IO, collective: each host reads its own rows" hdf5_case collective
else
  note "hdf5_shard_tool is not built (meson feature hdf5 off): no HDF5 read across the two hosts"
fi
finish "reliability two hosts"
