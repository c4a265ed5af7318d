#!/usr/bin/env python3
"""Markdown tables for RESULTS.md from `slotline bench --format json` files.

One row per (value size, phase, key pattern): GB/s (medians over runs) of the
reference peer and of slotline on each backend, and slotline's ratios to the reference
and io_uring's to epoll in throughput and client CPU per key, each ratio taken within
a run and then the median over runs; syscalls per batch of each backend.

    scripts/results_tables.py FILE.jsonl [--ref parallel]
"""
import json
import statistics as st
import sys
from collections import defaultdict


def size(n):
    for unit, s in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= s and n % s == 0:
            return f"{n // s} {unit}"
    return f"{n} B"


def main(path, ref):
    runs = defaultdict(dict)  # (size, batch, phase, keys, run) -> peer -> record
    meds = defaultdict(dict)
    for line in open(path):
        r = json.loads(line)
        k = (r["value_size"], r["batch"], r["phase"], r.get("keys") or "-")
        if r["kind"] == "run":
            runs[k + (r["run"],)][r["peer"]] = r
        elif r["kind"] == "median":
            meds[k][r["peer"]] = r
    U, E = "slotline[io_uring]", "slotline[epoll]"
    ref_name = ref
    print(f"| value × batch | phase | keys | {ref_name} GB/s | io_uring GB/s | epoll GB/s "
          f"| io_uring ÷ {ref_name} (GB/s, CPU/key) | epoll ÷ {ref_name} (GB/s, CPU/key) "
          "| io_uring ÷ epoll (GB/s, CPU/key) | syscalls/batch io_uring, epoll |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")

    def ratio(k, a, b, field):
        xs = []
        for rk, peers in runs.items():
            if rk[:4] == k and a in peers and b in peers and peers[b][field]:
                xs.append(peers[a][field] / peers[b][field])
        return st.median(xs) if xs else None

    def f(x, fmt="{:.2f}"):
        return "-" if x is None else fmt.format(x)

    for k in sorted(meds, key=lambda k: (k[0], k[2] != "put", k[3])):
        m = meds[k]
        g = lambda p: m[p]["gb_per_s"] if p in m else None
        cells = []
        for a, b in ((U, ref), (E, ref), (U, E)):
            cells.append(f"{f(ratio(k, a, b, 'gb_per_s'))}×, {f(ratio(k, a, b, 'cpu_us_per_key'))}×")
        sysc = lambda p: m[p]["syscalls_per_batch"] if p in m else None
        print(f"| {size(k[0])} × {k[1]} | {k[2]} | {k[3]} | {f(g(ref))} | {f(g(U))} | {f(g(E))} "
              f"| {cells[0]} | {cells[1]} | {cells[2]} | {f(sysc(U), '{:.1f}')}, {f(sysc(E), '{:.1f}')} |")


if __name__ == "__main__":
    args = sys.argv[1:]
    ref = "parallel"
    if "--ref" in args:
        i = args.index("--ref")
        ref = args[i + 1]
        del args[i:i + 2]
    for p in args:
        main(p, ref)
