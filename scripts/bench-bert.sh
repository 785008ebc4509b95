#!/usr/bin/env bash
# scripts/bench.sh bert: BERT masked-LM figures for the design note, on the bench BERT (layers 4,
# heads 4, dim 256, seq 128, vocab 257, global batch 8, mask_prob 0.15, AdamW; 1 thread per
# rank, byte-level configs/data/tiny.txt):
#   - tokens/s (all B*T positions per step time, median after 2 warm-up steps) at tensor 1 and
#     tensor 2, and the same model, batch and threads in PyTorch (python3-torch; skipped with a
#     line when it is not installed): ratio ptrain / PyTorch;
#   - the tensor-parallel bytes per step the trainer counts (tp_comm_mb) against the formula
#     4 B T [D (2 + 4 L) + 3] per microbatch (derived in the Python part below);
#   - the pipeline bubble at pipeline 2 (gpipe and 1f1b, 4 microbatches) against the ideal
#     (p - 1) / (m + p - 1).
# STEPS (default 20) steps per run; REPEATS (default 3) runs per configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${PTRAIN_BIN:-${PTRAIN_BUILD_DIR:-build}/apps/ptrain/ptrain}"
REPEATS=${REPEATS:-3}
STEPS=${STEPS:-20}
[[ -x "$BIN" ]] || { echo "bench-bert.sh: $BIN not found; run scripts/build.sh first" >&2; exit 2; }
L=4 H=4 D=256 T=128 V=257 B=8
work=$(mktemp -d /tmp/ptrain-bench-bert-XXXXXX)
trap 'rm -rf "$work"' EXIT
cat >"$work/bench.yaml" <<YAML
name: bench-bert
nodes: {procs_per_node: 1, device: cpu, threads_per_proc: 1}
parallel: {data: 1}
model: {type: bert, layers: $L, heads: $H, dim: $D, seq_len: $T, vocab: $V}
data: {type: text, path: $PWD/configs/data/tiny.txt, batch_size: $B, mask_prob: 0.15}
train:
  steps: $STEPS
  seed: 1
  log_every: 1
  optimizer: {type: adamw, lr: 1.0e-3, weight_decay: 0.01, grad_clip: 1.0}
checkpoint: {every: 0}
logging: {dir: $work/runs, console: none}
YAML

run() {
  local name=$1
  shift
  for i in $(seq 1 "$REPEATS"); do
    "$BIN" run "$work/bench.yaml" --set checkpoint.dir="$work/ck-$name-$i" "$@" \
      >"$work/$name-$i.out" 2>&1 ||
      { echo "bench-bert.sh: $name run $i failed:" >&2; tail -20 "$work/$name-$i.out" >&2; exit 1; }
    mv "$(ls -d "$work"/runs/bench-bert-* | head -1)" "$work/$name-$i"
  done
}

echo "bench.sh bert: layers $L, heads $H, dim $D, seq $T, vocab $V, batch $B; $STEPS steps," \
  "$REPEATS runs per configuration ($(nproc) cores, 1 thread per rank)"
run t1 --set parallel.tensor=1 --set nodes.procs_per_node=1
run t2 --set parallel.tensor=2 --set nodes.procs_per_node=2
run gpipe --set parallel.pipeline=2 --set nodes.procs_per_node=2 --set parallel.schedule=gpipe \
  --set parallel.microbatches=4
run 1f1b --set parallel.pipeline=2 --set nodes.procs_per_node=2 --set parallel.schedule=1f1b \
  --set parallel.microbatches=4

# The interpreter for the figures: the first that has torch (Debian's python3-torch lives in
# /usr/bin/python3, which a pyenv shim may hide), else python3 (the baseline is then skipped).
py=python3
for p in python3 /usr/bin/python3; do
  if "$p" -c 'import torch' 2>/dev/null; then py=$p && break; fi
done
# Passive OpenMP waiting: spinning threads make PyTorch's 2-thread figure collapse when the
# cores are shared with other work.
OMP_WAIT_POLICY=PASSIVE "$py" - "$work" "$REPEATS" $L $H $D $T $V $B "$STEPS" <<'PY'
import json, math, statistics, sys, time
work, repeats = sys.argv[1], int(sys.argv[2])
L, H, D, T, V, B, steps = map(int, sys.argv[3:10])
def lines(name, i):
    return [json.loads(l) for l in open(f"{work}/{name}-{i}/metrics.jsonl") if l.strip()]
med = lambda xs: statistics.median(xs) if xs else float("nan")
skip = 2
def per_run(name, key):
    return [med([l[key] for l in lines(name, i)[skip:]]) for i in range(1, repeats + 1)]
ms = {n: med(per_run(n, "step_ms")) for n in ("t1", "t2", "gpipe", "1f1b")}
tok = {n: B * T / (ms[n] / 1e3) for n in ms}
print(f"ptrain tensor 1 (1 rank x 1 thread) : {tok['t1']:9.0f} tokens/s ({ms['t1']:.1f} ms/step)")
print(f"ptrain tensor 2 (2 ranks x 1 thread): {tok['t2']:9.0f} tokens/s ({ms['t2']:.1f} ms/step), "
      f"speed-up {tok['t2'] / tok['t1']:.2f}x")
# Tensor-parallel payload per step and microbatch (fp32): the embedding sum, per block the two
# row-parallel outputs (forward) and the two column-parallel input gradients (backward), the
# decoder's input gradient: (2 + 4 L) allreduces of B T D floats; the vocabulary-parallel
# softmax: a max and a sum over 2 floats per row (3 B T floats).
formula = 4 * B * T * (D * (2 + 4 * L) + 3) / 1e6
measured = med(per_run("t2", "tp_comm_mb"))
print(f"tensor-parallel payload per step: measured {measured:.4f} MB, formula "
      f"4·B·T·(D·(2+4L)+3) = {formula:.4f} MB")
m, p = 4, 2
ideal = (p - 1) / (m + p - 1)
for n in ("gpipe", "1f1b"):
    print(f"pipeline 2, {n}, {m} microbatches: bubble {med(per_run(n, 'bubble')):.3f} "
          f"(ideal {ideal:.3f}), {tok[n]:.0f} tokens/s")
try:
    import torch
except ImportError:
    print("PyTorch baseline: skipped (python3 -c 'import torch' fails; apt install python3-torch)")
    sys.exit(0)
import torch.nn as nn, torch.nn.functional as F
torch.manual_seed(1)
class Block(nn.Module):
    def __init__(s):
        super().__init__()
        s.q, s.k, s.v, s.o = (nn.Linear(D, D) for _ in range(4))
        s.ln1, s.ln2 = nn.LayerNorm(D, eps=1e-12), nn.LayerNorm(D, eps=1e-12)
        s.i, s.out = nn.Linear(D, 4 * D), nn.Linear(4 * D, D)
    def forward(s, x):
        b, t, _ = x.shape
        split = lambda y: y.view(b, t, H, D // H).transpose(1, 2)
        q, k, v = split(s.q(x)), split(s.k(x)), split(s.v(x))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // H), -1) @ v
        x = s.ln1(x + s.o(a.transpose(1, 2).reshape(b, t, D)))
        return s.ln2(x + s.out(F.gelu(s.i(x))))
class Bert(nn.Module):
    def __init__(s):
        super().__init__()
        s.word, s.pos, s.ttype = nn.Embedding(V, D), nn.Embedding(T, D), nn.Embedding(2, D)
        s.ln = nn.LayerNorm(D, eps=1e-12)
        s.blocks = nn.ModuleList(Block() for _ in range(L))
        s.dense, s.hln, s.bias = nn.Linear(D, D), nn.LayerNorm(D, eps=1e-12), nn.Parameter(torch.zeros(V))
    def forward(s, tokens, targets):
        x = s.ln(s.word(tokens) + s.pos.weight[: tokens.shape[1]] + s.ttype.weight[0])
        for blk in s.blocks:
            x = blk(x)
        logits = s.hln(F.gelu(s.dense(x))) @ s.word.weight.t() + s.bias
        return F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-1)
data = open("configs/data/tiny.txt", "rb").read()
def batch(step):
    tok = torch.tensor([list(data[(step * B + j) * T:(step * B + j + 1) * T]) for j in range(B)])
    mask = torch.rand(B, T) < 0.15
    return tok.masked_fill(mask, V - 1), tok.masked_fill(~mask, -1)
for threads, ours in ((1, "t1"), (2, "t2")):
    torch.set_num_threads(threads)
    runs = []
    for r in range(repeats):
        model = Bert()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        times = []
        for step in range(steps):
            tokens, targets = batch(step)
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = model(tokens, targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            times.append(time.perf_counter() - t0)
        runs.append(med(times[skip:]))
    t = B * T / med(runs)
    print(f"PyTorch {torch.__version__}, {threads} thread(s): {t:9.0f} tokens/s; ptrain {ours} / PyTorch = "
          f"{tok[ours] / t:.2f}")
PY
