"""The Python bench's results as the JSON lines ``slotline plot`` reads (the Rust
bench's records): one median record per topology, chunk size, peer and phase.

    python -m slotline.bench.records BENCH.json [--commit C] > records.jsonl
    slotline plot records.jsonl --out plots/

(``python -m slotline.bench --records PATH`` writes them directly.) Peers are named
``slotline[native]`` / ``slotline[connector]`` (slotline's plug-ins: the plot's ratio
is their best ÷ the best other row) and ``lmcache[resp]``, ``lmcache[valkey]``,
``lmcache[redis]``; put is ``PUT fresh``, overwrite ``PUT overwrite``, get ``GET``.
EXISTS moves no payload (no GB/s) and the ``null`` peer is the harness's floor, not a
client: neither is written (said on stderr)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

PEER_LABELS = {
    "native": "slotline[native]",
    "connector": "slotline[connector]",
    "resp": "lmcache[resp]",
    "valkey": "lmcache[valkey]",
    "redis": "lmcache[redis]",
}
PHASES = {"put": ("put", "fresh"), "overwrite": ("put", "overwrite"), "get": ("get", None)}


def records(out: dict, commit: str = "unknown", skipped: Optional[list] = None) -> list[dict]:
    """The median rows of a bench result (`run`'s dict, or its --json file) as records;
    rows not written are appended to `skipped` as text."""
    servers = out.get("servers") or {"standalone": out.get("server", "")}
    masters = {t: max(1, url.count(",") + 1) for t, url in servers.items()}
    recs = []
    for r in out["results"]:
        topo = r.get("topology", "standalone")
        label = PEER_LABELS.get(r["peer"])
        phase = PHASES.get(r["op"])
        if label is None or phase is None or r.get("gb_per_s") is None:
            what = "%s %s" % (r["peer"], r["op"])
            if skipped is not None and what not in skipped:
                skipped.append(what)
            continue
        count = r["count"]
        srv = r.get("server_cpu_us_per_batch")
        recs.append({
            "bench": "slotline", "kind": "median", "run": None, "peer": label,
            "phase": phase[0], "keys": phase[1], "value_size": r["size"], "batch": count,
            "batches": r["batches"], "runs": out.get("runs"),
            "concurrency": out.get("inflight", 1), "layout": "", "mode": topo,
            "masters": masters.get(topo, 1), "read": "", "via": r.get("via", ""),
            "keys_per_s": r["keys_per_s"], "mb_per_s": r["gb_per_s"] * 1e3,
            "gb_per_s": r["gb_per_s"], "p50_ms": None, "p95_ms": None, "p99_ms": None,
            "max_ms": None, "cpu_us_per_key": r["client_cpu_us_per_batch"] / count,
            "server_cpu_us_per_key": None if srv is None else srv / count,
            "commit": commit, "profile": "python",
        })
    return recs


def write(out: dict, path: str, commit: str = "unknown") -> None:
    skipped: list = []
    recs = records(out, commit, skipped)
    with (sys.stdout if path == "-" else open(path, "w")) as f:
        for rec in recs:
            f.write(json.dumps(rec, separators=(",", ":")) + "\n")
    if skipped:
        print("# records: rows not written (no GB/s, or the null floor): %s"
              % ", ".join(skipped),
              file=sys.stderr)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m slotline.bench.records",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", help="a `python -m slotline.bench --json` file")
    ap.add_argument("--commit", default="unknown", help="the commit the wheel was built at")
    ap.add_argument("--out", default="-", help="where to write (default stdout)")
    args = ap.parse_args(argv)
    with open(args.json) as f:
        out = json.load(f)
    write(out, args.out, args.commit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
