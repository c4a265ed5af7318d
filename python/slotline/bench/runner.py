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
    valkey_adapter,
    valkey_available,
)
from slotline.bench.servers import TOPOLOGIES, Target, open_target, topology_of_url


def peer_factories(args, target: Target, notes: list[str]) -> dict[str, Callable]:
    """name -> factory(size, count) for every requested peer that can run here, against
    `target` (a standalone server or a cluster)."""
    settings = settings_of(args)
    url = target.url
    topo = target.topology
    via = args.via
    lm_why = lmcache_available() if via != "direct" else "--via direct"
    if via == "lmcache" and lm_why:
        raise SystemExit("--via lmcache, but lmcache does not import: %s" % lm_why)
    use_lm = lm_why is None
    if not use_lm:
        note(notes, "without LMCache's classes (%s): plug-in APIs directly" % lm_why)
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
            if topo == "cluster":
                note(notes, "peer redis skipped on the cluster: LMCache's redis:// "
                            "connector talks to one standalone server")
                continue
            if use_lm:
                out[name] = lambda s, c: BackendPeer(url, s, c, {}, "redis")
            else:
                try:
                    import redis.asyncio  # noqa: F401
                except ImportError as e:
                    note(notes, "peer redis skipped: redis-py missing (%s)" % e)
                    continue
                out[name] = lambda s, c: RedisPyDirect(url, s, c, {})
        elif name == "resp":
            if topo == "cluster":
                note(notes, "peer resp skipped on the cluster: LMCache's resp adapter has "
                            "no cluster mode (one host and port)")
                continue
            why = lm_why or resp_available()
            if why:
                note(notes, "peer resp skipped: LMCache's C++ RESP client unavailable (%s)"
                     % why)
                continue
            out[name] = lambda s, c: resp_adapter(url, s, c, {}, target.host, target.port,
                                                  args.resp_workers)
        elif name == "valkey":
            why = lm_why or valkey_available()
            if why:
                note(notes, "peer valkey skipped: LMCache's valkey adapter or "
                            "valkey-glide-sync unavailable (%s)" % why)
                continue
            out[name] = lambda s, c: valkey_adapter(url, s, c, {}, target.startup_nodes,
                                                    topo == "cluster", args.valkey_workers)
        elif name == "null":
            if not use_lm:
                note(notes, "peer null skipped: it runs inside LMCache's adapter (%s)"
                     % lm_why)
                continue
            out[name] = lambda s, c: null_adapter(url, s, c, {})
        else:
            raise SystemExit("unknown peer %r (known: %s)"
                             % (name, ", ".join(ALL_PEERS + EXTRA_PEERS)))
    return out


def note(notes: list[str], text: str) -> None:
    if text not in notes:
        notes.append(text)


# Fewest EXISTS batches timed per peer and run.
MIN_EXISTS_BATCHES = 256


def measure(peer: Peer, target: Target, batches: int,
            inflight: int = 1) -> tuple[dict[str, float], dict[str, tuple], int]:
    """Seconds per operation over `batches` batches, one batch at a time, or up to
    `inflight` at once for peers that can (`run_many`); per operation the CPU seconds
    per batch of this process (every thread: harness, LMCache, the client's own
    threads) and of the redis-servers (None when the bench did not start them); and
    the keys on the masters when the PUT of fresh keys began (0: FLUSHALL first)."""
    target.flush()
    keys_before = target.dbsize()
    out = {}
    cpu = {}
    many = getattr(peer, "run_many", None) if inflight > 1 else None
    for op in OPS:
        fn = getattr(peer, op)
        # EXISTS moves no payload: with large chunks the batches that move the target
        # bytes are too few to time, so it goes over them several times (reported
        # per pass).
        passes = -(-MIN_EXISTS_BATCHES // batches) if op == "exists" else 1
        c0, s0 = process_cpu(), target.cpu_seconds()
        t0 = time.perf_counter()
        for _ in range(passes):
            if many is not None:
                many(op, batches, inflight)
            else:
                for b in range(batches):
                    fn(b)
        out[op] = (time.perf_counter() - t0) / passes
        c1, s1 = process_cpu(), target.cpu_seconds()
        n = batches * passes
        cpu[op] = ((c1 - c0) / n, None if s0 is None or s1 is None else (s1 - s0) / n)
    return out, cpu, keys_before


def targets_of(args) -> list[tuple[str, Optional[str]]]:
    """(topology, existing URL or None: start one) for each topology to run."""
    if args.url or args.cluster_url:
        out = []
        if args.url:
            out.append((topology_of_url(args.url), args.url))
        if args.cluster_url:
            out.append(("cluster", args.cluster_url))
        return out
    topos = [t.strip() for t in args.topology.split(",") if t.strip()]
    for t in topos:
        if t not in TOPOLOGIES:
            raise SystemExit("unknown topology %r (known: %s)" % (t, ", ".join(TOPOLOGIES)))
    return [(t, None) for t in topos]


def process_cpu() -> float:
    """User + system CPU seconds of this process, all threads."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def settings_of(args) -> dict:
    return json.loads(args.settings) if args.settings else {}


def run(args) -> dict:
    notes: list[str] = []
    results: list[dict] = []
    ratios: list[dict] = []
    rounds: list[dict] = []
    servers: dict[str, str] = {}
    for topo, url in targets_of(args):
        target = open_target(topo, url)
        try:
            servers[topo] = target.url
            factories = peer_factories(args, target, notes)
            for size, count, mb in parse_configs(args.sizes):
                run_config(args, target, factories, size, count, mb or args.target_mb,
                           results, ratios, rounds)
        finally:
            target.stop()
    if args.inflight > 1:
        notes.append("up to %d batches in flight for the NativeConnectorL2Adapter peers "
                     "(native, resp, valkey, null); the others one at a time" % args.inflight)
    return {"server": next(iter(servers.values()), ""), "servers": servers,
            "runs": args.runs, "notes": notes, "gc": args.gc, "inflight": args.inflight,
            "settings": settings_of(args),
            "key_pattern": "FLUSHALL and MEMORY PURGE on every master before each peer's "
                           "run; put: fresh keys, overwrite: the same keys again; peer "
                           "order rotates between runs; keys built before timing",
            "rounds": rounds, "results": results, "ratios": ratios}


def run_config(args, target: Target, factories: dict[str, Callable], size: int,
               count: int, target_mb: int, results: list, ratios: list,
               rounds: list) -> None:
    """Every peer at one configuration against `target`, `args.runs` rounds with the
    peer order rotated each round; appends rows, ratios and each round's order."""
    topo = target.topology
    batch_bytes = size * count
    batches = args.batches or max(2, min(4096, (target_mb << 20) // batch_bytes))
    peers: dict[str, Peer] = {}
    per_run: list[dict[str, dict[str, float]]] = []
    cpu_runs: list[dict[str, dict[str, tuple]]] = []
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
        for r in range(args.runs):
            # Peers take turns; the order rotates from round to round, so no peer
            # always runs right after another one.
            names = list(peers)
            names = names[r % len(names):] + names[:r % len(names)]
            got = {n: measure(peers[n], target, batches, args.inflight) for n in names}
            secs = {n: g[0] for n, g in got.items()}
            per_run.append(secs)
            cpu_runs.append({n: g[1] for n, g in got.items()})
            rounds.append({"topology": topo, "size": size, "count": count, "round": r,
                           "order": names,
                           "dbsize_before_put": {n: g[2] for n, g in got.items()}})
            if not args.quiet:
                print("# %s %s x %d, round %d: %s" % (topo, human(size), count, r + 1, " ".join(
                    "%s %s s" % (n, "/".join("%.3f" % s[op] for op in OPS))
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
                "topology": topo, "size": size, "count": count, "batches": batches,
                "peer": name, "via": peers[name].via, "op": op,
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
                # Within each round (same server state, adjacent in time), then the median.
                rs = [s[other][op] / s[ours][op] for s in per_run]
                ratios.append({"topology": topo, "size": size, "count": count, "op": op,
                               "slotline": ours, "peer": other, "ratio_runs": rs,
                               "ratio": statistics.median(rs)})


def report(out: dict) -> str:
    servers = out.get("servers") or {"standalone": out["server"]}
    lines = ["slotline bench against %s, medians of %d runs (%s; gc %s)"
             % (", ".join("%s %s" % kv for kv in servers.items()), out["runs"],
                out["key_pattern"], out.get("gc", "on"))]
    lines += ["note: " + n for n in out["notes"]]
    lines.append("per batch: wall time, CPU of this process (all threads) and of the "
                 "redis-servers, in microseconds")
    lines.append("%-10s %-14s %-10s %-26s %-9s %10s %12s %9s %9s %9s" % (
        "topology", "chunks", "peer", "via", "op", "GB/s", "keys/s", "wall", "cpu",
        "srv cpu"))
    for r in out["results"]:
        gbps = "-" if r["gb_per_s"] is None else "%.3f" % r["gb_per_s"]
        srv = r.get("server_cpu_us_per_batch")
        lines.append("%-10s %-14s %-10s %-26s %-9s %10s %12.0f %9.0f %9.0f %9s" % (
            r.get("topology", "standalone"), "%s x %d" % (human(r["size"]), r["count"]),
            r["peer"], r["via"], r["op"],
            gbps, r["keys_per_s"], r["wall_us_per_batch"], r["client_cpu_us_per_batch"],
            "-" if srv is None else "%.0f" % srv))
    if out["ratios"]:
        lines.append("ratios (slotline / peer, within each round, median; each round):")
    for r in out["ratios"]:
        lines.append("  %-10s %-14s %-9s %-10s / %-10s %6.2fx  (%s)" % (
            r.get("topology", "standalone"), "%s x %d" % (human(r["size"]), r["count"]),
            r["op"], r["slotline"], r["peer"], r["ratio"],
            " ".join("%.2f" % x for x in r.get("ratio_runs", []))))
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m slotline.bench", description=_pkg.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="an existing server: standalone, or a cluster given as "
                                  "redis-cluster://h:p,... or several seeds (default: "
                                  "start the --topology servers)")
    ap.add_argument("--cluster-url", help="an existing cluster (beside --url)")
    ap.add_argument("--topology", default="standalone,cluster",
                    help="without --url: the servers to start and run every peer "
                         "against, comma separated: standalone (one redis-server), "
                         "cluster (three masters, no replicas)")
    ap.add_argument("--sizes", default="2k:128,4m:8",
                    help="SIZE:COUNT[:MB] chunk size, chunks per batch and (optional) "
                         "MiB per peer and operation, comma separated")
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
    ap.add_argument("--valkey-workers", type=int, default=8,
                    help="num_workers of LMCache's valkey adapter (its default 8)")
    ap.add_argument("--gc", choices=("on", "freeze", "off"), default="on",
                    help="Python's garbage collector while timing: on (default), freeze "
                         "(gc.freeze() of everything built before timing), off (also "
                         "gc.disable()); the same for every peer")
    ap.add_argument("--inflight", type=int, default=1,
                    help="batches in flight at once through NativeConnectorL2Adapter "
                         "(native, resp, null; default 1: one at a time)")
    ap.add_argument("--json", metavar="PATH",
                    help="also write the results as JSON ('-': only JSON, to stdout)")
    ap.add_argument("--records", metavar="PATH",
                    help="also write the medians as the JSON lines `slotline plot` reads "
                         "(see slotline.bench.records)")
    ap.add_argument("--commit", default="unknown",
                    help="the commit to name in --records (the wheel's)")
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
    if args.records:
        from slotline.bench.records import write
        write(out, args.records, args.commit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
