#!/usr/bin/env bash
# Rendezvous of real `ptrain node` processes on this machine: for each node count N (NODES,
# default "16 64 128"), N `ptrain node` processes (1 worker each, a tiny GPT with train.steps: 0:
# join, barrier, exit) are started at once on loopback, node 0 last; prints the medians over
# REPEATS runs (default 3) of the time from the first start to node 0's exit, and from node 0's
# coordinator listening to the last rank's join (launcher.log and the rank logs). Every node is
# three processes (node, agent, worker; ~50 MiB together), so this machine's memory bounds N.
# Usage: scripts/bench/node_scale.sh PTRAIN_BINARY
set -euo pipefail
BIN=$(readlink -f "${1:?usage: node_scale.sh PTRAIN_BINARY}")
NODES=${NODES:-"16 64 128"}
REPEATS=${REPEATS:-3}
D=$(mktemp -d /tmp/ptrain-node-scale-XXXXXX)
trap 'pkill -KILL -f "$D/job.yaml" 2>/dev/null || true; rm -rf "$D"' EXIT
export PTRAIN_TOKEN=node-scale-bench-$RANDOM$RANDOM$RANDOM
ms() { date +%s%3N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
printf '%-6s %14s %18s\n' nodes "start->exit s" "listen->joined s"
for n in $NODES; do
  totals=() joins=()
  for r in $(seq "$REPEATS"); do
    rm -rf "$D/runs"
    cat >"$D/job.yaml" <<EOF
name: scale
logging: {dir: $D/runs, console: rank0}
nodes: {procs_per_node: 1, device: cpu, threads_per_proc: 1}
parallel: {data: $n}
rendezvous: {timeout_s: 300}
model: {type: gpt, layers: 1, heads: 2, dim: 32, seq_len: 16, vocab: 64}
data: {type: synthetic, batch_size: $n}
train: {steps: 0}
EOF
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    t0=$(ms)
    pids=()
    for i in $(seq 1 $((n - 1))); do
      "$BIN" node "$D/job.yaml" --nnodes "$n" --node-rank "$i" --coordinator "127.0.0.1:$port" \
        >/dev/null 2>&1 &
      pids+=($!)
    done
    "$BIN" node "$D/job.yaml" --nnodes "$n" --node-rank 0 --coordinator "127.0.0.1:$port" \
      >"$D/node0.out" 2>&1 || { echo "node 0 failed:"; grep -v "started on\|setup published\|left with exit code 0\|ended: exit code 0" "$D"/runs/*/launcher.log | head -60; exit 1; }
    t1=$(ms)
    wait "${pids[@]}"
    run=$(ls -d "$D"/runs/*)
    grep -q '"status": "succeeded"' "$run/summary.json" || { echo "run failed: $run"; exit 1; }
    # Listening (launcher.log) to the last "joined" line of a rank log, as epoch ms.
    stamp() { date -d "$1" +%s%3N; }
    listen=$(grep -m1 "coordinator listening" "$run/launcher.log" | cut -c1-23)
    last=$(grep -h "joined on node" "$run"/rank-*.log | cut -c1-23 | sort | tail -1)
    totals+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", (b - a) / 1000}')")
    joins+=("$(awk -v a="$(stamp "$listen")" -v b="$(stamp "$last")" 'BEGIN {printf "%.3f", (b - a) / 1000}')")
  done
  printf '%-6s %14s %18s\n' "$n" "$(printf '%s\n' "${totals[@]}" | median)" \
    "$(printf '%s\n' "${joins[@]}" | median)"
done
echo "# medians of $REPEATS; load: $(cut -d' ' -f1-3 /proc/loadavg)"
