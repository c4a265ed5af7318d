#!/usr/bin/env bash
# Every benchmark RESULTS.md quotes, at the current commit, into results/<commit>/.
# Each invocation starts its own redis-server(s) and stops them. Run on an otherwise
# idle machine; about 25 minutes on a 2-vCPU host.
#   bash scripts/bench_all.sh            # everything
#   PY=/path/to/venv/bin/python bash scripts/bench_all.sh   # with LMCache installed there
set -euo pipefail
cd "$(dirname "$0")/.."
commit=$(git rev-parse --short HEAD)
out=results/$commit
mkdir -p "$out"
cargo build --release -q
bin=./target/release/slotline
export SLOTLINE_NO_PROGRESS=1
run() { # name, args...
  local name=$1; shift
  echo "== $name: slotline bench $*" | tee -a "$out/commands.txt"
  "$bin" bench --format json "$@" > "$out/$name.jsonl" 2> "$out/$name.log"
}
# The main job (README): 2 KiB x 128, lmcache layout, naive / parallel / slotline.
run main-2k
# Large values beside the parallel peer (LMCache's native client modelled), both
# layouts, fresh and overwritten keys, reads into caller buffers.
run large-raw --sizes 1m,4m,32m --peers parallel,slotline --layout raw --get-into
run large-lmcache --sizes 1m,4m,32m --peers parallel,slotline --layout lmcache --get-into
# A 3+3 cluster at the same sizes (hashtag layout: a chunk's two keys on one master).
run cluster-large --mode cluster --sizes 1m,4m,32m --peers naive,slotline --layout hashtag --get-into
# The cost of TLS: the same workload over TLS beside plain, same server.
run tls --tls --sizes 2k,1m --peers slotline --get-into
# One figure per job: a figure draws at most five rows.
for job in main-2k large-raw large-lmcache tls; do
  "$bin" plot "$out/$job.jsonl" --out "$out/plots-$job"
done
"$bin" plot "$out"/cluster-large.jsonl --out "$out/plots-cluster"
if [ -n "${PY:-}" ]; then
  pyrun() { # name, args... (from /tmp, so that `import slotline` is the installed wheel)
    local name=$1; shift
    echo "== $name: PY -m slotline.bench $* --json $name.json --quiet" | tee -a "$out/commands.txt"
    (cd /tmp && "$PY" -m slotline.bench "$@" --json "$OLDPWD/$out/$name.json" --quiet)
  }
  pyrun py-mp --topology standalone --sizes 2k:128,4m:8 --peers native,resp,null --runs 3 --target-mb 512
  pyrun py-sp --topology standalone --sizes 1m:32,4m:8,32m:4 --peers connector,redis --runs 3 --target-mb 512
  pyrun py-mp-inflight4 --topology standalone --sizes 2k:128 --peers native,resp,null --runs 3 --target-mb 512 --inflight 4
  # resp and valkey beside the native plug-in, standalone and cluster (issue 18 item 7).
  PY="$PY" bash scripts/py_bench_fair.sh
fi
echo "done: $out"
