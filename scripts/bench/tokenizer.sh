#!/usr/bin/env bash
# GPT-2 tokenizer throughput, one thread: ptrain's C++ tokenizer against the reference encoder
# (npm gpt-3-encoder under node), on the same text, plus the TensorBoard event writer's cost per
# logged step. Usage: scripts/bench/tokenizer.sh BIN [TEXT_FILE...] (default: Vim's help files,
# /usr/share/vim/vim90/doc/*.txt, about 9.5 MB of English). REPEATS passes (default 5; the
# reference gets min(REPEATS, 3): it runs at about 0.1-0.5 MB/s). The reference is looked up in
# NODE_PATH; without it: `npm install --prefix DIR gpt-3-encoder` and NODE_PATH=DIR/node_modules.
set -euo pipefail
BIN=$1
shift
files=("$@")
if ((${#files[@]} == 0)); then files=(/usr/share/vim/vim90/doc/*.txt); fi
REPEATS=${REPEATS:-5}
work=$(mktemp -d /tmp/ptrain-bench-tok-XXXXXX)
trap 'rm -rf "$work"' EXIT
cat "${files[@]}" > "$work/text.txt"
"$BIN" bench tokenizer "$work/text.txt" --repeats "$REPEATS"
if node -e "require('gpt-3-encoder')" 2>/dev/null; then
  REPEATS=$((REPEATS < 3 ? REPEATS : 3)) node "$(dirname "$0")/tokenizer-ref.js" "$work/text.txt"
else
  echo "reference: skipped, gpt-3-encoder is not in NODE_PATH (see the header of $0)" >&2
fi
"$BIN" bench events --repeats "$REPEATS"
