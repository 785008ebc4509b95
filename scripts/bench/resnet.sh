#!/usr/bin/env bash
# scripts/bench.sh resnet: (1) images/s of one worker's training step, ptrain (`ptrain bench
# step`) against PyTorch (scripts/bench/torch_resnet_step.py: the same ResNet, batch, SGD with
# momentum, threads) for the model of configs/resnet-fashion-mnist.yaml (batch 64, one worker's
# share) and ResNet-18 on 32x32x3 images (batch 32), at 1 and 2 threads; (2) the cost of
# synchronised BatchNorm: the shipped config on 2 workers for STEPS steps with batch_norm local
# and sync (median step time, time inside the statistics' allreduces, their count per step).
# Usage: scripts/bench/resnet.sh PTRAIN_BINARY. REPEATS (default 5) bench-step runs are not
# repeated: each reports the median of its own steps; STEPS (default 60) for (2).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$1
STEPS=${STEPS:-60}
PY=/usr/bin/python3
[[ -x $PY ]] || PY=python3
work=$(mktemp -d /tmp/ptrain-bench-resnet-XXXXXX)
trap 'rm -rf "$work"' EXIT
cfg=configs/resnet-fashion-mnist.yaml
[[ -r /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]] ||
  { echo "bench resnet: Fashion-MNIST is missing; run scripts/setup.sh" >&2; exit 2; }

# 32x32x3 CIFAR-10-format records of random pixels for ResNet-18 (timing only).
$PY -c "import os,sys; open(sys.argv[1],'wb').write(b''.join(bytes([i%10])+os.urandom(3072) for i in range(64)))" \
  "$work/data_batch_1.bin"
cat >"$work/r18.yaml" <<YAML
name: bench-r18
nodes: {device: cpu, threads_per_proc: 1}
model: {type: resnet}
data: {type: cifar, path: $work, batch_size: 32}
train: {optimizer: {type: sgd, lr: 0.01, momentum: 0.9, weight_decay: 5.0e-4}}
YAML

field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p"; }
echo "bench resnet: $(nproc) cores, $($PY -c 'import torch; print("PyTorch", torch.__version__)' 2>/dev/null || echo 'no PyTorch')"
printf '%-34s %7s %12s %12s %8s\n' model threads "ptrain img/s" "torch img/s" ratio
for t in 1 2; do
  for m in fmnist r18; do
    if [[ $m == fmnist ]]; then
      ours=$("$BIN" bench step "$cfg" --batch 64 --threads "$t" --steps 10 | grep RESULT)
      theirs=$($PY scripts/bench/torch_resnet_step.py --in-channels 1 --size 28 --classes 10 \
        --widths 16,32,64 --blocks 1,1,1 --stem cifar --batch 64 --threads "$t" 2>/dev/null |
        grep RESULT || true)
      name="fmnist [16,32,64]x[1,1,1] b64"
    else
      ours=$("$BIN" bench step "$work/r18.yaml" --batch 32 --threads "$t" --steps 5 | grep RESULT)
      theirs=$($PY scripts/bench/torch_resnet_step.py --in-channels 3 --size 32 --classes 10 \
        --batch 32 --threads "$t" --steps 5 2>/dev/null | grep RESULT || true)
      name="resnet18 32x32x3 b32"
    fi
    a=$(echo "$ours" | field tokens_per_s)
    b=$(echo "$theirs" | field images_per_s)
    r=$([[ -n $b ]] && $PY -c "print(f'{$a/$b:.2f}')" || echo -)
    printf '%-34s %7s %12s %12s %8s\n' "$name" "$t" "$a" "${b:--}" "$r"
  done
done

echo
echo "BatchNorm statistics over 2 workers ($cfg, $STEPS steps, medians after 5):"
for bn in local sync; do
  "$BIN" run "$cfg" --set train.steps="$STEPS" --set train.log_every=1 --set train.eval_every=0 \
    --set train.schedule.warmup=0 --set checkpoint.every=0 --set model.batch_norm=$bn \
    --set logging.dir="$work/runs-$bn" --set logging.console=none >"$work/$bn.out" 2>&1 ||
    { echo "bench resnet: the $bn run failed:" >&2; tail -20 "$work/$bn.out" >&2; exit 1; }
  $PY - "$bn" "$work/runs-$bn"/*/metrics.jsonl <<'PY'
import json, statistics, sys
ls = [json.loads(l) for l in open(sys.argv[2]) if l.strip()][5:]
med = lambda k: statistics.median(l.get(k, 0) for l in ls)
print(f"  batch_norm {sys.argv[1]:5}: step {med('step_ms'):7.1f} ms, images/s {med('tokens_per_s'):7.1f}, "
      f"statistics allreduces {med('dp_stat_allreduces'):3.0f}/step taking {med('dp_stat_ms'):6.1f} ms, "
      f"gradient allreduce wait {med('comm_wait_ms'):5.2f} ms")
PY
done
