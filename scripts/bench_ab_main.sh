#!/usr/bin/env bash
# Re-measures RESULTS.md §A's main rows at HEAD, with an older binary (OLD=path, e.g. built
# from the commit before a change) run alternately as an A/B; on an otherwise idle machine.
#   OLD=/path/to/old/slotline bash scripts/bench_ab_main.sh
set -euo pipefail
cd "$(dirname "$0")/.."
commit=$(git rev-parse --short HEAD)
out=results/$commit; mkdir -p "$out/ab"
cargo build --release -q
new=./target/release/slotline; old="${OLD:?set OLD to the older slotline binary}"
export SLOTLINE_NO_PROGRESS=1
run() { # bin, file, args...
  local bin=$1 f=$2; shift 2
  echo "== $(date -u +%H:%M:%S) $f: slotline bench $*" | tee -a "$out/commands.txt"
  "$bin" bench --format json "$@" > "$out/$f.jsonl" 2> "$out/$f.log"
}
run $new main-2k
run $old ab/main-2k-old
run $new ab/main-2k-new-2
run $new large-raw --sizes 1m,4m,32m --peers parallel,slotline --layout raw --get-into
run $old ab/large-4m-old --sizes 4m --peers parallel,slotline --layout raw --get-into
run $new ab/large-4m-new --sizes 4m --peers parallel,slotline --layout raw --get-into
echo "== $(date -u +%H:%M:%S) done rust"
for job in main-2k large-raw; do "$new" plot "$out/$job.jsonl" --out "$out/plots-$job"; done
