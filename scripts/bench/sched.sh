#!/usr/bin/env bash
# Time to first step under Slurm's srun against SSH, on this machine: starts its own munged,
# slurmctld and slurmd (one node `localhost`, everything in a temp folder, as
# tests/launch/slurm_cluster_test.cc does) and one sshd on 127.0.0.2, then alternates
#   salloc -N1 ptrain launch --slurm job.yaml          (srun starts the node's agent)
#   ptrain launch job.yaml --hosts 127.0.0.2:2 ...     (ssh starts it)
# REPEATS times each (default 5) and prints the medians of the time from the command's start to
# the first "step 1/" line, and to its exit. The job: the tiny GPT, 2 workers, 3 steps.
# Needs root (slurmd and sshd); scripts/setup.sh installs slurm-wlm, munge and openssh-server.
# Usage: scripts/bench/sched.sh PTRAIN_BINARY
set -euo pipefail
BIN=$(readlink -f "${1:?usage: sched.sh PTRAIN_BINARY}")
REPEATS=${REPEATS:-5}
[[ $(id -u) == 0 ]] || { echo "sched.sh: slurmd and sshd need root" >&2; exit 2; }
for p in munged mungekey slurmctld slurmd salloc sinfo /usr/sbin/sshd ssh-keygen python3; do
  command -v "$p" >/dev/null || { echo "sched.sh: $p is missing (scripts/setup.sh installs it)" >&2; exit 2; }
done
D=$(mktemp -d /tmp/ptrain-sched-bench-XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$D"
}
trap cleanup EXIT
free_port() {
  python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$1"
}

# ---- Slurm ----
mkdir -p "$D/state" "$D/spool"
mungekey -c -k "$D/munge.key" && chmod 600 "$D/munge.key"
cat >"$D/slurm.conf" <<EOF
ClusterName=ptrainbench
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$(free_port 127.0.0.1)
SlurmdPort=$(free_port 127.0.0.1)
AuthType=auth/munge
AuthInfo=socket=$D/munge.sock
CredType=cred/munge
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/slurmctld.log
SlurmdLogFile=$D/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SchedulerType=sched/builtin
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=localhost CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$D/slurm.conf
munged -F -f --key-file="$D/munge.key" --socket="$D/munge.sock" --pid-file="$D/munged.pid" \
  --log-file="$D/munged.log" --seed-file="$D/munge.seed" >/dev/null 2>&1 &
pids+=($!)
sleep 0.3
slurmctld -D -i -f "$D/slurm.conf" >/dev/null 2>&1 &
pids+=($!)
slurmd -D -f "$D/slurm.conf" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 150); do
  sinfo -h -o %T 2>/dev/null | grep -q idle && break
  sleep 0.2
done
sinfo -h -o %T | grep -q idle || { echo "sched.sh: slurm did not come up ($D/slurmctld.log)" >&2; exit 1; }

# ---- sshd on 127.0.0.2 ----
mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$D/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$D/user_key"
cp "$D/user_key.pub" "$D/authorized_keys"
SSH_PORT=$(free_port 127.0.0.2)
cat >"$D/sshd.conf" <<EOF
ListenAddress 127.0.0.2:$SSH_PORT
HostKey $D/host_key
PidFile $D/sshd.pid
AuthorizedKeysFile $D/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin yes
LogLevel QUIET
EOF
/usr/sbin/sshd -D -e -f "$D/sshd.conf" 2>/dev/null &
pids+=($!)
cat >"$D/ssh_config" <<EOF
Host 127.0.0.2
  Port $SSH_PORT
Host *
  User root
  IdentitiesOnly yes
  IdentityFile $D/user_key
  UserKnownHostsFile $D/known_hosts
  StrictHostKeyChecking accept-new
  LogLevel ERROR
EOF
for _ in $(seq 50); do
  ssh -F "$D/ssh_config" 127.0.0.2 true 2>/dev/null && break
  sleep 0.1
done

cat >"$D/job.yaml" <<EOF
name: sched-bench
logging: {dir: $D/runs, console: rank0}
nodes: {procs_per_node: 2, device: cpu, threads_per_proc: 1}
parallel: {data: 2}
model: {type: gpt, layers: 1, heads: 2, dim: 32, seq_len: 16, vocab: 64}
data: {type: synthetic, batch_size: 8}
train: {steps: 3, log_every: 1}
EOF

# Seconds from the start to the first "step 1/" line and to the exit: "FIRST TOTAL".
timed() {
  python3 - "$@" <<'PY'
import subprocess, sys, time
t0 = time.monotonic()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
first = None
for line in p.stdout:
    if first is None and "step 1/" in line:
        first = time.monotonic() - t0
code = p.wait()
total = time.monotonic() - t0
if code != 0 or first is None:
    sys.exit(f"sched.sh: {' '.join(sys.argv[1:])} exited {code} (first step seen: {first is not None})")
print(f"{first:.3f} {total:.3f}")
PY
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

srun_first=() srun_total=() ssh_first=() ssh_total=()
for i in $(seq "$REPEATS"); do
  read -r f t < <(timed salloc -N1 -Q "$BIN" launch --slurm "$D/job.yaml")
  srun_first+=("$f") srun_total+=("$t")
  read -r f t < <(timed "$BIN" launch "$D/job.yaml" --hosts 127.0.0.2:2 --ssh-config "$D/ssh_config")
  ssh_first+=("$f") ssh_total+=("$t")
  echo "run $i: srun first step ${srun_first[-1]} s (exit ${srun_total[-1]} s), ssh first step ${ssh_first[-1]} s (exit ${ssh_total[-1]} s)"
done
sf=$(printf '%s\n' "${srun_first[@]}" | median)
st=$(printf '%s\n' "${srun_total[@]}" | median)
hf=$(printf '%s\n' "${ssh_first[@]}" | median)
ht=$(printf '%s\n' "${ssh_total[@]}" | median)
echo "# 1 node x 2 workers, tiny GPT, 3 steps; medians of $REPEATS; load: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-36s %10s %10s\n' "launcher" "first step" "exit"
printf '%-36s %9ss %9ss\n' "salloc -N1 ptrain launch --slurm" "$sf" "$st"
printf '%-36s %9ss %9ss\n' "ptrain launch --hosts (ssh)" "$hf" "$ht"
awk -v a="$sf" -v b="$hf" 'BEGIN {printf "srun / ssh time to first step: %.2f\n", a / b}'
