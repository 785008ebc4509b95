#!/usr/bin/env bash
# `scripts/bench.sh dlrm`: DLRM samples/s with 1 and 2 CPU workers (1 thread each) on the bench
# model (13 dense, 26 tables x TABLE_ROWS x 16, bottom [64,16], top [64,1], global batch 256,
# SGD), memory per worker, and the same model in PyTorch (same threads, same shapes, random
# indices) when `python3 -c 'import torch'` works. Only the `replicated` placement exists.
# PTRAIN_BUILD_DIR picks the build; STEPS (default 40) steps per run; TABLE_ROWS (default 10000).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${PTRAIN_BIN:-${PTRAIN_BUILD_DIR:-build}/apps/ptrain/ptrain}"
STEPS=${STEPS:-40}
TABLE_ROWS=${TABLE_ROWS:-10000}
[[ -x "$BIN" ]] || { echo "bench-dlrm.sh: $BIN not found; run scripts/build.sh first" >&2; exit 2; }
work=$(mktemp -d /tmp/ptrain-bench-dlrm-XXXXXX)
trap 'rm -rf "$work"' EXIT
for n in 1 2; do
  cat >"$work/w$n.yaml" <<YAML
name: bench-dlrm-$n
nodes: {procs_per_node: $n, device: cpu, threads_per_proc: 1}
parallel: {data: $n, bucket_mb: 4}
model: {type: dlrm, dense: 13, sparse: 26, table_rows: $TABLE_ROWS, embedding_dim: 16,
        bottom_mlp: [64, 16], top_mlp: [64, 1]}
data: {type: synthetic-criteo, batch_size: 256}
train: {steps: $STEPS, log_every: 1, optimizer: {type: sgd, lr: 0.5}}
logging: {dir: $work/runs, console: none}
YAML
  "$BIN" run "$work/w$n.yaml" >"$work/w$n.log" 2>&1 || { cat "$work/w$n.log"; exit 1; }
done
python3 - "$work" "$STEPS" "$TABLE_ROWS" <<'PY'
import glob, json, statistics, sys
work, steps, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def lines(n):
    path = glob.glob(f"{work}/runs/bench-dlrm-{n}-*/metrics.jsonl")[0]
    return [json.loads(l) for l in open(path) if '"step"' in l]
res = {}
for n in (1, 2):
    ls = lines(n)[steps // 4:]  # skip warm-up
    res[n] = statistics.median(l["tokens_per_s"] for l in ls)
    mem = ls[-1].get("mem_mb", float("nan"))
    extra = ""
    if n == 2:
        extra = (f"  allreduce wait {statistics.median(l.get('comm_wait_ms', 0) for l in ls):.1f} ms/step"
                 f" ({(26 * rows * 16 + 16 * 13 + 16 + 64 * 367 + 64 + 64 + 1) * 4 / 1e6:.1f} MB of gradients)")
    print(f"replicated, {n} worker(s): {res[n]:9.0f} samples/s   mem {mem:.1f} MiB/worker{extra}")
print(f"scaling 1 -> 2 workers: {res[2] / res[1]:.2f}x")
print(f"table, row placements: not implemented")
PY
if python3 -c 'import torch' 2>/dev/null; then
  python3 - "$TABLE_ROWS" "$STEPS" <<'PY'
import sys, time, torch
torch.set_num_threads(1)
rows, steps, B, K, D = int(sys.argv[1]), int(sys.argv[2]), 256, 26, 16
emb = torch.nn.ModuleList([torch.nn.Embedding(rows, D) for _ in range(K)])
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
for _ in range(5): step()
t0 = time.perf_counter()
for _ in range(steps): step()
print(f"pytorch {torch.__version__}, 1 thread: {steps * B / (time.perf_counter() - t0):9.0f} samples/s")
PY
else
  echo "pytorch baseline: skipped (python3 -c 'import torch' fails here)"
fi
