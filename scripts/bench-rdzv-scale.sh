#!/usr/bin/env bash
# The figures of the 100,000-rank rendezvous: flat 4,096 vs 65,536 clients in one run,
# 65,536 ranks as 8,192 nodes x 8 and 131,072 as 16,384 x 8 through node relays, the
# coordinator's RSS per rank and its heartbeat RPCs/s, then the same nodes in a relay tree.
# Medians of REPEATS runs (default 3).
# Usage: scripts/bench-rdzv-scale.sh [path/to/ptrain]
set -euo pipefail
cd "$(dirname "$0")/.."
PTRAIN=${1:-build/apps/ptrain/ptrain}
REPEATS=${REPEATS:-3}
CONNS=${CONNS:-256}
echo "## flat: every rank calls the coordinator"
"$PTRAIN" bench rdzv --clients 4096,65536 --connections "$CONNS" --repeats "$REPEATS"
echo "## hierarchical: one NodeRelay per node of 8 ranks (heartbeat_s 1 for 3 s afterwards)"
"$PTRAIN" bench rdzv --clients 65536,131072 --ranks-per-node 8 --connections "$CONNS" \
  --repeats "$REPEATS" --heartbeat-s 1
echo "## relay tree: the same node relays with tree_fanout 32 (only the top 32 call the coordinator)"
"$PTRAIN" bench rdzv --clients 65536,131072 --ranks-per-node 8 --tree-fanout 32 \
  --connections "$CONNS" --repeats "$REPEATS" --heartbeat-s 1
