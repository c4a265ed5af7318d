#!/usr/bin/env python3
"""Summarises `slotline bench --json` outputs of several invocations (one file each).

For every (phase, key pattern) and peer: the median over invocations of each
invocation's median row; and for each slotline row its ratio to the naive and parallel
peers, computed within each invocation first, then the median taken.

    scripts/summarize_bench.py results/main-2k-<commit>-*.jsonl
"""
import json
import statistics as st
import sys


def main(paths):
    invs = []
    for p in paths:
        med = {}
        for line in open(p):
            r = json.loads(line)
            if r["kind"] == "median":
                med[(r["phase"], r.get("keys"), r["peer"])] = r
        invs.append(med)
    keys = sorted({k for m in invs for k in m}, key=str)
    print("| phase | keys | peer | keys/s | MB/s | p99 ms | CPU µs/key | syscalls/batch | × naive | × parallel |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for k in keys:
        rows = [m[k] for m in invs if k in m]

        def med(f):
            return st.median(r[f] or 0 for r in rows)

        def ratio(peer):
            rs = [m[k]["keys_per_s"] / m[(k[0], k[1], peer)]["keys_per_s"]
                  for m in invs if k in m and (k[0], k[1], peer) in m]
            return f"{st.median(rs):.2f}×" if rs and k[2] != peer else "-"
        sysb = med("syscalls_per_batch") if "syscalls_per_batch" in rows[0] else 0
        print(f"| {k[0]} | {k[1] or '-'} | {k[2]} | {med('keys_per_s') / 1e3:.1f}k | "
              f"{med('mb_per_s'):.0f} | {med('p99_ms'):.2f} | {med('cpu_us_per_key'):.2f} | "
              f"{sysb if sysb else '-'} | {ratio('naive')} | {ratio('parallel')} |")


if __name__ == "__main__":
    main(sys.argv[1:])
