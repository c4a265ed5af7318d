"""Choosing the peers, running them interleaved, and reporting medians and ratios."""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import sys
import time
from typing import Callable, Optional

import slotline.bench as _pkg
from slotline.bench.common import (
    ALL_PEERS,
    COMPARE,
    EXTRA_PEERS,
    OPS,
    Peer,
    Server,
    human,
    parse_configs,
)
from slotline.bench.direct import ConnectorDirect, NativeDirect, RedisPyDirect
from slotline.bench.via_lmcache import (
    BackendPeer,
    lmcache_available,
    native_adapter,
    null_adapter,
    resp_adapter,
    resp_available,
)


def peer_factories(args, server: Server, notes: list[str]) -> dict[str, Callable]:
    """name -> factory(size, count) for every requested peer that can run here."""
    settings = settings_of(args)
    url = server.url
    via = args.via
    lm_why = lmcache_available() if via != "direct" else "--via direct"
    if via == "lmcache" and lm_why:
        raise SystemExit("--via lmcache, but lmcache does not import: %s" % lm_why)
    use_lm = lm_why is None
    if not use_lm:
        notes.append("without LMCache's classes (%s): plug-in APIs directly" % lm_why)
    out: dict[str, Callable] = {}
    for name in args.peers.split(","):
        name = name.strip()
        if name == "native":
            out[name] = ((lambda s, c: native_adapter(url, s, c, settings)) if use_lm
                         else (lambda s, c: NativeDirect(url, s, c, settings)))
        elif name == "connector":
            out[name] = ((lambda s, c: BackendPeer(url, s, c, settings, "connector"))
                         if use_lm else (lambda s, c: ConnectorDirect(url, s, c, settings)))
        elif name == "redis":
            if use_lm:
                out[name] = lambda s, c: BackendPeer(url, s, c, {}, "redis")
            else:
                try:
                    import redis.asyncio  # noqa: F401
                except ImportError as e:
                    notes.append("peer redis skipped: redis-py missing (%s)" % e)
                    continue
                out[name] = lambda s, c: RedisPyDirect(url, s, c, {})
        elif name == "resp":
            why = lm_why or resp_available()
            if why:
                notes.append("peer resp skipped: LMCache's C++ RESP client unavailable (%s)"
                             % why)
                continue
            out[name] = lambda s, c: resp_adapter(url, s, c, {}, server.host, server.port,
                                                  args.resp_workers)
        elif name == "null":
            if not use_lm:
                notes.append("peer null skipped: it runs inside LMCache's adapter (%s)" % lm_why)
                continue
            out[name] = lambda s, c: null_adapter(url, s, c, {})
        else:
            raise SystemExit("unknown peer %r (known: %s)"
                             % (name, ", ".join(ALL_PEERS + EXTRA_PEERS)))
    return out


# Fewest EXISTS batches timed per peer and run.
MIN_EXISTS_BATCHES = 256


def measure(peer: Peer, server: Server, batches: int,
            inflight: int = 1) -> tuple[dict[str, float], dict[str, tuple]]:
    """Seconds per operation over `batches` batches (FLUSHALL first: fresh keys), one
    batch at a time, or up to `inflight` at once for peers that can (`run_many`); and
    per operation the CPU seconds per batch of this process (every thread: harness,
    LMCache, the client's own threads) and of the redis-server (None when the bench
    did not start it)."""
    server.flush()
    out = {}
    cpu = {}
    many = getattr(peer, "run_many", None) if inflight > 1 else None
    for op in OPS:
        fn = getattr(peer, op)
        # EXISTS moves no payload: with large chunks the batches that move the target
        # bytes are too few to time, so it goes over them several times (reported
        # per pass).
        passes = -(-MIN_EXISTS_BATCHES // batches) if op == "exists" else 1
        c0, s0 = process_cpu(), server.cpu_seconds()
        t0 = time.perf_counter()
        for _ in range(passes):
            if many is not None:
                many(op, batches, inflight)
            else:
                for b in range(batches):
                    fn(b)
        out[op] = (time.perf_counter() - t0) / passes
        c1, s1 = process_cpu(), server.cpu_seconds()
        n = batches * passes
        cpu[op] = ((c1 - c0) / n, None if s0 is None or s1 is None else (s1 - s0) / n)
    return out, cpu


def process_cpu() -> float:
    """User + system CPU seconds of this process, all threads."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def settings_of(args) -> dict:
    return json.loads(args.settings) if args.settings else {}


def run(args) -> dict:
    notes: list[str] = []
    server = Server(args.url)
    try:
        factories = peer_factories(args, server, notes)
        results = []
        ratios = []
        for size, count in parse_configs(args.sizes):
            batch_bytes = size * count
            batches = args.batches or max(2, min(4096, (args.target_mb << 20) // batch_bytes))
            peers = {}
            try:
                for name, make in factories.items():
                    peers[name] = make(size, count)
                    # Untimed: connections opened, pools and allocators warm, keys built.
                    for b in range(args.warmup):
                        for op in OPS:
                            getattr(peers[name], op)(b)
                    peers[name].prepare(batches)
                if args.gc != "on":
                    # Setup garbage (LMCache's and torch's imports, the peers) out of the
                    # collector's way; "off" also stops collections while timing.
                    gc.collect()
                    gc.freeze()
                    if args.gc == "off":
                        gc.disable()
                per_run: list[dict[str, dict[str, float]]] = []
                cpu_runs: list[dict[str, dict[str, tuple]]] = []
                for r in range(args.runs):
                    # Peers take turns; the order rotates from run to run.
                    names = list(peers)
                    names = names[r % len(names):] + names[:r % len(names)]
                    both = {n: measure(peers[n], server, batches, args.inflight)
                            for n in names}
                    secs = {n: b[0] for n, b in both.items()}
                    per_run.append(secs)
                    cpu_runs.append({n: b[1] for n, b in both.items()})
                    if not args.quiet:
                        print("# %s x %d, run %d: %s" % (human(size), count, r + 1, " ".join(
                            "%s put/get/exists %.3f/%.3f/%.3f s" % (n, s["put"], s["get"],
                                                                   s["exists"])
                            for n, s in secs.items())), file=sys.stderr)
            finally:
                if args.gc != "on":
                    gc.enable()
                    gc.unfreeze()
                for p in peers.values():
                    p.close()
            for name in peers:
                for op in OPS:
                    # EXISTS moves no payload: keys/s only.
                    runs = [batches * batch_bytes / s[name][op] / 1e9 for s in per_run
                            if op != "exists"]
                    client_us = [c[name][op][0] * 1e6 for c in cpu_runs]
                    server_us = [c[name][op][1] * 1e6 for c in cpu_runs
                                 if c[name][op][1] is not None]
                    results.append({
                        "size": size, "count": count, "batches": batches, "peer": name,
                        "via": peers[name].via, "op": op,
                        "gb_per_s_runs": runs,
                        "gb_per_s": statistics.median(runs) if runs else None,
                        "keys_per_s": statistics.median(
                            batches * count / s[name][op] for s in per_run),
                        "wall_us_per_batch": statistics.median(
                            s[name][op] * 1e6 / batches for s in per_run),
                        "client_cpu_us_per_batch": statistics.median(client_us),
                        "server_cpu_us_per_batch": (statistics.median(server_us)
                                                    if server_us else None),
                    })
            for ours, theirs in COMPARE.items():
                for other in theirs:
                    if ours not in peers or other not in peers:
                        continue
                    for op in OPS:
                        rs = [s[other][op] / s[ours][op] for s in per_run]
                        ratios.append({"size": size, "count": count, "op": op,
                                       "slotline": ours, "peer": other, "ratio_runs": rs,
                                       "ratio": statistics.median(rs)})
        if args.inflight > 1:
            notes.append("up to %d batches in flight for the NativeConnectorL2Adapter peers "
                         "(native, resp, null); the others one at a time" % args.inflight)
        return {"server": server.url, "runs": args.runs, "notes": notes, "gc": args.gc,
                "inflight": args.inflight,
                "settings": settings_of(args),
                "key_pattern": "FLUSHALL before each peer's run; every PUT to a fresh key; "
                               "peer order rotates between runs; keys built before timing",
                "results": results, "ratios": ratios}
    finally:
        server.stop()


def report(out: dict) -> str:
    lines = ["slotline bench against %s, medians of %d runs (%s; gc %s)"
             % (out["server"], out["runs"], out["key_pattern"], out.get("gc", "on"))]
    lines += ["note: " + n for n in out["notes"]]
    lines.append("per batch: wall time, CPU of this process (all threads) and of the "
                 "redis-server, in microseconds")
    lines.append("%-14s %-10s %-26s %-7s %10s %12s %9s %9s %9s" % (
        "chunks", "peer", "via", "op", "GB/s", "keys/s", "wall", "cpu", "srv cpu"))
    for r in out["results"]:
        gbps = "-" if r["gb_per_s"] is None else "%.3f" % r["gb_per_s"]
        srv = r.get("server_cpu_us_per_batch")
        lines.append("%-14s %-10s %-26s %-7s %10s %12.0f %9.0f %9.0f %9s" % (
            "%s x %d" % (human(r["size"]), r["count"]), r["peer"], r["via"], r["op"],
            gbps, r["keys_per_s"], r["wall_us_per_batch"], r["client_cpu_us_per_batch"],
            "-" if srv is None else "%.0f" % srv))
    if out["ratios"]:
        lines.append("ratios (slotline / peer, within each run, median):")
    for r in out["ratios"]:
        lines.append("  %-14s %-7s %-10s / %-10s %6.2fx" % (
            "%s x %d" % (human(r["size"]), r["count"]), r["op"], r["slotline"], r["peer"],
            r["ratio"]))
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m slotline.bench", description=_pkg.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="an existing standalone server (default: start one)")
    ap.add_argument("--sizes", default="2k:128,4m:8",
                    help="SIZE:COUNT chunk size and chunks per batch, comma separated")
    ap.add_argument("--runs", type=int, default=3, help="runs per configuration (median)")
    ap.add_argument("--target-mb", type=int, default=256,
                    help="MiB each peer moves per operation and run")
    ap.add_argument("--batches", type=int, default=0,
                    help="batches per operation and run (overrides --target-mb)")
    ap.add_argument("--warmup", type=int, default=2,
                    help="untimed batches per operation after each peer is built")
    ap.add_argument("--peers", default=",".join(ALL_PEERS),
                    help="comma separated, from: %s (null: LMCache's adapter over a "
                         "plug-in without I/O, the harness's floor; only on request)"
                         % ", ".join(ALL_PEERS + EXTRA_PEERS))
    ap.add_argument("--via", choices=("auto", "lmcache", "direct"), default="auto",
                    help="drive the plug-ins through LMCache's classes (auto: if importable)")
    ap.add_argument("--settings", default="",
                    help='slotline settings as JSON, e.g. \'{"cores": 2}\'')
    ap.add_argument("--resp-workers", type=int, default=8,
                    help="num_workers of LMCache's resp adapter (its default 8)")
    ap.add_argument("--gc", choices=("on", "freeze", "off"), default="on",
                    help="Python's garbage collector while timing: on (default), freeze "
                         "(gc.freeze() of everything built before timing), off (also "
                         "gc.disable()); the same for every peer")
    ap.add_argument("--inflight", type=int, default=1,
                    help="batches in flight at once through NativeConnectorL2Adapter "
                         "(native, resp, null; default 1: one at a time)")
    ap.add_argument("--json", metavar="PATH",
                    help="also write the results as JSON ('-': only JSON, to stdout)")
    ap.add_argument("--quiet", action="store_true", help="no per-run lines on stderr")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    if args.inflight < 1:
        ap.error("--inflight must be at least 1")
    out = run(args)
    if args.json == "-":
        print(json.dumps(out, indent=1))
    else:
        print(report(out))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
