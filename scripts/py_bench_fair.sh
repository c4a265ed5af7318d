#!/usr/bin/env bash
# Issue 18 item 7: slotline's native plug-in beside LMCache 0.5.6's `resp` and `valkey`
# adapters, all through LMCache's own adapter classes, in one invocation, against a
# standalone redis-server and a 3-master cluster the bench starts; FLUSHALL + MEMORY
# PURGE on every master before each peer's run, peer order rotated between the three
# rounds, ratios taken within each round. Writes results/<commit>/py-fair.json (raw),
# py-fair.jsonl (records) and plots-py-fair/ (`slotline plot`). Run on an otherwise
# idle machine; about 4-7 minutes.
#   PY=/path/to/venv/bin/python bash scripts/py_bench_fair.sh
# The venv needs lmcache==0.5.6 (with torch) and valkey-glide-sync; this script
# installs the wheel of this checkout into it first. SIZES overrides the sizes
# (SIZE:COUNT:MiB per peer and operation) for a quick check.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:?set PY to the venv python with lmcache 0.5.6 and valkey-glide-sync}"
SIZES="${SIZES:-2k:128:128,4m:8:1024}"
commit=$(git rev-parse --short HEAD)
out="$PWD/results/$commit"
mkdir -p "$out"
"$PY" -c 'import lmcache, glide_sync' || {
  echo "error: $PY lacks lmcache or valkey-glide-sync (pip install valkey-glide-sync)" >&2
  exit 1
}
"$PY" -m pip install -q --no-deps --force-reinstall .
cargo build --release -q -p slotline-cli
args=(--peers native,resp,valkey --topology standalone,cluster --sizes "$SIZES" --runs 3
      --json "$out/py-fair.json" --records "$out/py-fair.jsonl" --commit "$commit")
echo "== py-fair: PY -m slotline.bench ${args[*]//"$out"\//}" | tee -a "$out/commands.txt"
# From /tmp, so that `import slotline` is the installed wheel.
(cd /tmp && "$PY" -m slotline.bench "${args[@]}") | tee "$out/py-fair.txt"
./target/release/slotline plot "$out/py-fair.jsonl" --out "$out/plots-py-fair"
echo "done: $out/py-fair.{json,jsonl,txt}, $out/plots-py-fair/"
