#!/usr/bin/env python3
"""Before/after comparison of two `slotline` binaries, interleaved.

Runs `BIN bench ARGS --json` for the old and the new binary in turn, ROUNDS times
(old, new, new, old, ... so neither always goes first), keeps every JSON line tagged
with the binary and round, and prints per peer and phase the median of the per-round
medians for each binary and the new/old ratio (computed within each round, then the
median taken). Each invocation starts its own redis-server, as `slotline bench` does.

    scripts/ab_bench.py --old /path/old/slotline --new target/release/slotline \
        --rounds 3 --out results/x.jsonl -- --batches 200 --runs 3 --peers slotline
"""
import argparse
import json
import statistics
import subprocess
import sys

METRICS = ("keys_per_s", "cpu_us_per_key", "p50_ms", "p99_ms")


def run(binary, args):
    out = subprocess.run([binary, "bench", *args, "--json"], check=True,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", required=True)
    ap.add_argument("bench_args", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    args = [x for x in a.bench_args if x != "--"]
    rows = []
    for r in range(a.rounds):
        order = [("old", a.old), ("new", a.new)]
        if r % 2:
            order.reverse()
        for tag, binary in order:
            for row in run(binary, args):
                row.update(binary=tag, round=r + 1)
                rows.append(row)
            print(f"round {r + 1}: {tag} done", file=sys.stderr)
    with open(a.out, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    med = [x for x in rows if x["kind"] == "median"]
    keys = sorted({(x["peer"], x["phase"], x["value_size"], x["batch"]) for x in med})
    print("| peer | phase | size x batch | " + " | ".join(
        f"{m} old | {m} new | new/old" for m in METRICS) + " |")
    print("|" + "---|" * (3 + 3 * len(METRICS)))
    for k in keys:
        cells = []
        for m in METRICS:
            by = {}
            for x in med:
                if (x["peer"], x["phase"], x["value_size"], x["batch"]) == k:
                    by.setdefault(x["round"], {})[x["binary"]] = x[m]
            pairs = [v for v in by.values() if "old" in v and "new" in v]
            old = statistics.median(v["old"] for v in pairs)
            new = statistics.median(v["new"] for v in pairs)
            ratio = statistics.median(v["new"] / v["old"] for v in pairs if v["old"])
            cells += [f"{old:.4g}", f"{new:.4g}", f"{ratio:.2f}x"]
        print(f"| {k[0]} | {k[1]} | {k[2]} x {k[3]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
