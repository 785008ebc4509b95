#!/usr/bin/env bash
# `scripts/bench.sh dlrm`: DLRM samples/s on the bench model (13 dense, 26 tables x TABLE_ROWS x
# 16, bottom [64,16], top [64,1], global batch 256, SGD, 1 thread per worker) for every
# embedding placement (`replicated` on 1 and 2 workers, `table` and `row` on 2), memory per
# worker, all-to-all bytes and time per step, and the same model in PyTorch (Debian's
# python3-torch: nn.Embedding with sparse gradients, SGD, 1 thread, random indices) when
# `python3 -c 'import torch'` works; the ratio is against PyTorch's 1-thread rate.
# Medians over REPEATS runs (default 3) of the steps after the first quarter.
# PTRAIN_BUILD_DIR picks the build; STEPS (default 40) steps per run; TABLE_ROWS (default 10000).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${PTRAIN_BIN:-${PTRAIN_BUILD_DIR:-build}/apps/ptrain/ptrain}"
STEPS=${STEPS:-40}
TABLE_ROWS=${TABLE_ROWS:-10000}
REPEATS=${REPEATS:-3}
[[ -x "$BIN" ]] || { echo "bench-dlrm.sh: $BIN not found; run scripts/build.sh first" >&2; exit 2; }
PY=/usr/bin/python3  # Debian's python3-torch lives there, whatever python3 is first on PATH
[[ -x $PY ]] || PY=python3
work=$(mktemp -d /tmp/ptrain-bench-dlrm-XXXXXX)
trap 'rm -rf "$work"' EXIT
cat >"$work/bench.yaml" <<YAML
name: bench-dlrm
nodes: {procs_per_node: 1, device: cpu, threads_per_proc: 1}
parallel: {data: 1, bucket_mb: 4}
model: {type: dlrm, dense: 13, sparse: 26, table_rows: $TABLE_ROWS, embedding_dim: 16,
        bottom_mlp: [64, 16], top_mlp: [64, 1]}
data: {type: synthetic-criteo, batch_size: 256}
train: {steps: $STEPS, log_every: 1, optimizer: {type: sgd, lr: 0.5}}
checkpoint: {every: 0}
logging: {dir: $work/runs, console: none}
YAML
# run NAME WORKERS PLACEMENT: REPEATS jobs; each run folder is renamed NAME-<i>.
run() {
  local name=$1 n=$2 placement=$3
  for i in $(seq 1 "$REPEATS"); do
    "$BIN" run "$work/bench.yaml" --set parallel.data="$n" --set nodes.procs_per_node="$n" \
      --set parallel.embeddings="$placement" >"$work/$name-$i.out" 2>&1 ||
      { echo "bench-dlrm.sh: $name run $i failed:" >&2; tail -20 "$work/$name-$i.out" >&2; exit 1; }
    mv "$(ls -d "$work"/runs/bench-dlrm-* | head -1)" "$work/$name-$i"
  done
}
echo "bench-dlrm.sh: $STEPS steps per run, $REPEATS runs per placement, $(nproc) cores," \
  "load $(cut -d' ' -f1 /proc/loadavg)"
run rep1 1 replicated
run rep2 2 replicated
run table2 2 table
run row2 2 row
torch_rate=""
if "$PY" -c 'import torch' 2>/dev/null; then
  torch_rate=$("$PY" - "$TABLE_ROWS" "$STEPS" "$REPEATS" <<'PY'
import statistics, sys, time, torch
torch.set_num_threads(1)
rows, steps, repeats, B, K, D = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), 256, 26, 16
torch.manual_seed(1)
emb = torch.nn.ModuleList([torch.nn.Embedding(rows, D, sparse=True) for _ in range(K)])
bot = torch.nn.Sequential(torch.nn.Linear(13, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16), torch.nn.ReLU())
F = K + 1
top = torch.nn.Sequential(torch.nn.Linear(D + F * (F - 1) // 2, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
params = list(emb.parameters()) + list(bot.parameters()) + list(top.parameters())
opt = torch.optim.SGD(params, lr=0.5)
li, lj = torch.tril_indices(F, F, offset=-1)
def step():
    x = torch.rand(B, 13); s = torch.randint(0, rows, (B, K)); y = torch.randint(0, 2, (B,)).float()
    b = bot(x)
    v = torch.stack([b] + [emb[k](s[:, k]) for k in range(K)], dim=1)
    z = torch.bmm(v, v.transpose(1, 2))[:, li, lj]
    logit = top(torch.cat([b, z], dim=1)).squeeze(1)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, y)
    opt.zero_grad(); loss.backward(); opt.step()
rates = []
for _ in range(repeats):
    for _ in range(5): step()
    t0 = time.perf_counter()
    for _ in range(steps): step()
    rates.append(steps * B / (time.perf_counter() - t0))
print(f"{statistics.median(rates):.1f} {torch.__version__}")
PY
  )
fi
python3 - "$work" "$STEPS" "$REPEATS" "$torch_rate" <<'PY'
import json, statistics, sys
work, steps, repeats, torch_rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def med(name, key, default=None):
    vals = []
    for i in range(1, repeats + 1):
        ls = [json.loads(l) for l in open(f"{work}/{name}-{i}/metrics.jsonl") if '"step"' in l]
        ls = ls[steps // 4:]  # skip warm-up
        vals.append(statistics.median(l.get(key, default) for l in ls))
    return statistics.median(vals)
base = None
if torch_rate:
    base = float(torch_rate.split()[0])
print(f"{'placement':<12} {'workers':>7} {'samples/s':>10} {'MiB/worker':>10} {'a2a MB/step':>11} {'a2a ms':>7}"
      + ("  vs PyTorch" if base else ""))
for name, n, placement in (("rep1", 1, "replicated"), ("rep2", 2, "replicated"),
                           ("table2", 2, "table"), ("row2", 2, "row")):
    rate = med(name, "tokens_per_s")
    line = (f"{placement:<12} {n:>7} {rate:>10.0f} {med(name, 'mem_mb', float('nan')):>10.1f}"
            f" {med(name, 'a2a_mb', 0):>11.3f} {med(name, 'a2a_ms', 0):>7.1f}")
    if base:
        line += f"  {rate / base:10.2f}x"
    print(line)
print(f"scaling replicated 1 -> 2 workers: {med('rep2', 'tokens_per_s') / med('rep1', 'tokens_per_s'):.2f}x")
if base:
    print(f"pytorch {torch_rate.split()[1]}, 1 thread, sparse embedding gradients: {base:.0f} samples/s")
else:
    print("pytorch baseline: not run (importing torch fails here; "
          "PTRAIN_SETUP_TORCH=1 scripts/setup.sh installs it)")
PY
