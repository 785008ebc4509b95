#!/usr/bin/env bash
# Benchmarks for the design note. Each subcommand runs the matching `ptrain bench` harness or
# real `ptrain run` jobs and prints medians over REPEATS runs (default 5):
#   scripts/bench.sh launch|rdzv|comm|step [extra args for `ptrain bench <name>`]
#   scripts/bench.sh dp    data parallelism on the bench GPT (layers 4, heads 4, dim 256, seq 128,
#                          vocab 256, global batch 8, AdamW; 1 thread per rank): tokens/s with 1
#                          and 2 sync ranks -> scaling efficiency, the allreduce time hidden behind
#                          backward, ZeRO-1 optimizer memory per rank, async vs sync throughput
#                          and loss after equal wall time.
#   scripts/bench.sh resnet  images/s per worker of ptrain's ResNet against PyTorch (Debian's
#                          python3-torch; the same ResNet, batch, SGD and threads) for the shipped
#                          Fashion-MNIST model and ResNet-18 on 32x32 CIFAR-shaped images, and the
#                          BatchNorm allreduce cost of batch_norm: sync against local (2 workers).
#   scripts/bench.sh gpt [THREADS]  the bench GPT step on the CPU against PyTorch (same model,
#                          threads): fp32, bf16, ratios, and the model GFLOP/s over the best GEMM
#                          rate of the same run (scripts/bench/gpt_cpu.sh).
#   scripts/bench.sh sched  time to first step under srun (a local Slurm the script starts) against
#                          ssh (a local sshd), the same job alternated (scripts/bench/sched.sh).
# PTRAIN_BUILD_DIR picks the build (default build); STEPS (default 20) steps per dp run.
# COMM (default auto = shm on one host) sets parallel.comm of the dp runs: COMM=gloo for Gloo.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${PTRAIN_BIN:-${PTRAIN_BUILD_DIR:-build}/apps/ptrain/ptrain}"
REPEATS=${REPEATS:-5}
[[ -x "$BIN" ]] || { echo "bench.sh: $BIN not found; run scripts/build.sh first" >&2; exit 2; }

cmd=${1:-}
shift || true
case "$cmd" in
  launch) exec "$BIN" bench launch --repeats "$REPEATS" "$@" ;;
  rdzv) exec "$BIN" bench rdzv --repeats "$REPEATS" "$@" ;;
  comm) exec "$BIN" bench comm --runs "$REPEATS" "$@" ;;
  step) exec "$BIN" bench step "$@" ;;
  dp) ;;
  resnet) exec scripts/bench/resnet.sh "$BIN" "$@" ;;
  bert) exec scripts/bench-bert.sh "$@" ;;  # BERT masked-LM figures (scripts/bench-bert.sh)
  dlrm) exec scripts/bench-dlrm.sh "$@" ;;  # DLRM samples/s, 1 and 2 workers, vs PyTorch
  tokenizer) exec scripts/bench/tokenizer.sh "$BIN" "$@" ;;  # GPT-2 BPE MB/s vs the reference; event writer us/step
  gpt) exec scripts/bench/gpt_cpu.sh "$BIN" "$@" ;;  # the bench GPT on the CPU vs PyTorch
  sched) exec scripts/bench/sched.sh "$BIN" "$@" ;;  # time to first step: srun vs ssh (local Slurm, sshd)
  *)
    echo "usage: scripts/bench.sh launch|rdzv|comm|step|dp|bert|dlrm|resnet|gpt|tokenizer|sched [args]" >&2
    exit 2
    ;;
esac

STEPS=${STEPS:-20}
work=$(mktemp -d /tmp/ptrain-bench-dp-XXXXXX)
trap 'rm -rf "$work"' EXIT
cat >"$work/bench.yaml" <<YAML
name: bench-dp
nodes: {procs_per_node: 1, device: cpu, threads_per_proc: 1}
parallel: {data: 1, bucket_mb: 4, comm: ${COMM:-auto}}
model: {type: gpt, layers: 4, heads: 4, dim: 256, seq_len: 128, vocab: 256}
data: {type: synthetic, batch_size: 8}
train:
  steps: $STEPS
  seed: 1
  log_every: 1
  optimizer: {type: adamw, lr: 1.0e-3, weight_decay: 0.1, grad_clip: 1.0}
checkpoint: {every: 0}
logging: {dir: $work/runs, console: none}
YAML

# run NAME --set ... : one job per repeat; each run folder is renamed NAME-<i>.
run() {
  local name=$1
  shift
  for i in $(seq 1 "$REPEATS"); do
    "$BIN" run "$work/bench.yaml" "$@" >"$work/$name-$i.out" 2>&1 ||
      { echo "bench.sh: $name run $i failed:" >&2; tail -20 "$work/$name-$i.out" >&2; exit 1; }
    mv "$(ls -d "$work"/runs/bench-dp-* | head -1)" "$work/$name-$i"
  done
}

echo "bench.sh dp: $STEPS steps per run, $REPEATS runs per configuration ($(nproc) cores)"
run sync1 --set parallel.data=1 --set nodes.procs_per_node=1
run sync2 --set parallel.data=2 --set nodes.procs_per_node=2
run zero2 --set parallel.data=2 --set nodes.procs_per_node=2 --set parallel.zero=1
run async2 --set parallel.data=2 --set nodes.procs_per_node=2 --set parallel.data_mode=async \
  --set parallel.staleness=4 --set parallel.servers=1

python3 - "$work" "$REPEATS" <<'PY'
import json, statistics, sys
work, repeats = sys.argv[1], int(sys.argv[2])
def lines(name, i):
    return [json.loads(l) for l in open(f"{work}/{name}-{i}/metrics.jsonl") if l.strip()]
def med(xs):
    return statistics.median(xs) if xs else float("nan")
def per_run(name, fn):
    return [fn(lines(name, i)) for i in range(1, repeats + 1)]
skip = 2  # warm-up steps left out of rates
def tok_s(ls):
    return med([l["tokens_per_s"] for l in ls[skip:]])
def wall(ls):  # seconds of training steps (rank 0's step times)
    return sum(l["step_ms"] for l in ls) / 1e3
def loss_at(ls, t):
    acc = 0.0
    last = ls[0]["loss"]
    for l in ls:
        acc += l["step_ms"] / 1e3
        if acc > t:
            break
        last = l["loss"]
    return last
t1, t2 = med(per_run("sync1", tok_s)), med(per_run("sync2", tok_s))
print(f"sync, 1 rank : {t1:10.0f} tokens/s")
print(f"sync, 2 ranks: {t2:10.0f} tokens/s   scaling efficiency {t2 / (2 * t1) * 100:.1f}%")
hid = per_run("sync2", lambda ls: med([l.get("comm_hidden", float("nan")) for l in ls[skip:]]))
wait = per_run("sync2", lambda ls: med([l.get("comm_wait_ms", float("nan")) for l in ls[skip:]]))
span = per_run("sync2", lambda ls: med([l.get("comm_span_ms", float("nan")) for l in ls[skip:]]))
print(f"allreduce hidden behind backward: {med(hid) * 100:.1f}% "
      f"(wait {med(wait):.1f} ms of a {med(span):.1f} ms span)")
for name in ("sync1", "sync2", "zero2"):
    mb = med(per_run(name, lambda ls: ls[-1].get("optimizer_mb", float("nan"))))
    print(f"optimizer state per rank, {name}: {mb:.2f} MiB")
ta = med(per_run("async2", tok_s))
st = med(per_run("async2", lambda ls: med([l["staleness_mean"] for l in ls[skip:]])))
print(f"async, 2 ranks (staleness 4, 1 server): {ta:10.0f} tokens/s (estimate: rank 0 x 2), "
      f"mean staleness {st:.2f}")
# Loss after equal wall time: the shorter of the two runs' training time.
ts = [min(wall(lines("sync2", i)), wall(lines("async2", i))) for i in range(1, repeats + 1)]
ls_sync = [loss_at(lines("sync2", i), t) for i, t in zip(range(1, repeats + 1), ts)]
ls_async = [loss_at(lines("async2", i), t) for i, t in zip(range(1, repeats + 1), ts)]
print(f"loss after {med(ts):.1f} s of training: sync {med(ls_sync):.4f}, async {med(ls_async):.4f}"
      " (async: rank 0's share of the batch)")
PY
