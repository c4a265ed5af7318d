"""`python -m slotline.bench` runs end to end with tiny counts (numbers are not checked:
speed is measured by running the bench, never by tests): every peer's run starts on an
emptied server (standalone and cluster), the peer order rotates between rounds, and
LMCache's valkey adapter runs beside its resp adapter when valkey-glide-sync is
installed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from slotline.bench.common import parse_configs
from slotline.bench.runner import main


def test_bench_direct(redis_server, tmp_path):
    out = tmp_path / "b.json"
    assert main(["--url", redis_server.url, "--via", "direct", "--sizes", "2k:8,64k:2",
                 "--runs", "2", "--batches", "2", "--warmup", "1", "--quiet",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    peers = {r["peer"] for r in res["results"]}
    assert {"native", "connector"} <= peers
    assert all(r["keys_per_s"] > 0 for r in res["results"])
    assert all(len(r["gb_per_s_runs"]) == 2 for r in res["results"] if r["op"] != "exists")
    assert any(r["slotline"] == "native" for r in res["ratios"]) or "redis" not in peers


def test_bench_module_starts_its_own_server():
    p = subprocess.run(
        [sys.executable, "-m", "slotline.bench", "--via", "direct", "--peers", "native",
         "--topology", "standalone,cluster", "--sizes", "4k:4", "--runs", "1",
         "--batches", "1", "--quiet", "--json", "-"],
        capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["servers"]["standalone"].startswith("redis://127.0.0.1:")
    # Its own cluster: three masters, the plug-in given all of them as seeds.
    assert res["servers"]["cluster"].startswith("redis-cluster://127.0.0.1:")
    assert res["servers"]["cluster"].count(",") == 2
    ops = ["put", "overwrite", "get", "exists"]
    assert [(r["topology"], r["op"]) for r in res["results"]] == (
        [("standalone", op) for op in ops] + [("cluster", op) for op in ops])


def test_sizes_take_an_optional_volume():
    assert parse_configs("2k:128,4m:8:1024,64k") == [
        (2048, 128, 0), (4 << 20, 8, 1024), (64 << 10, 1, 0)]


def check_rounds(res: dict, topologies: set, runs: int) -> None:
    """Every round of every configuration: each peer's PUT of fresh keys began on an
    empty server (DBSIZE summed over the masters), and the order rotated by one."""
    assert {r["topology"] for r in res["rounds"]} == topologies
    by_config: dict = {}
    for r in res["rounds"]:
        assert set(r["dbsize_before_put"].values()) == {0}, r
        assert set(r["dbsize_before_put"]) == set(r["order"])
        by_config.setdefault((r["topology"], r["size"]), []).append(r)
    for rounds in by_config.values():
        assert [r["round"] for r in rounds] == list(range(runs))
        first = rounds[0]["order"]
        for r in rounds:
            k = r["round"] % len(first)
            assert r["order"] == first[k:] + first[:k], rounds
        # No peer always goes first (or last) when there are several.
        if len(first) > 1:
            assert len({r["order"][0] for r in rounds}) == min(runs, len(first))


def test_bench_flushes_before_each_peer_and_rotates(redis_server, redis_cluster, tmp_path):
    """The peers write different keys, so without the FLUSHALL before a peer's run the
    keys of the peer before it would still be there (DBSIZE > 0); the cluster's
    masters (it has replicas too) are found with CLUSTER NODES."""
    out = tmp_path / "b.json"
    peers = "native,connector"
    try:
        import redis.asyncio  # noqa: F401
        peers += ",redis"
    except ImportError:
        pass
    assert main(["--url", redis_server.url, "--cluster-url", redis_cluster.url,
                 "--via", "direct", "--peers", peers, "--sizes", "2k:4",
                 "--runs", "3", "--batches", "2", "--warmup", "1", "--quiet",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    check_rounds(res, {"standalone", "cluster"}, 3)
    assert res["servers"]["cluster"].startswith("redis-cluster://")
    assert res["servers"]["cluster"].count(",") == len(redis_cluster.masters()) - 1
    got = {(r["topology"], r["peer"]) for r in res["results"]}
    assert {("standalone", "native"), ("cluster", "native"), ("cluster", "connector")} <= got
    if "redis" in peers:
        assert ("cluster", "redis") not in got and ("standalone", "redis") in got
        assert any("peer redis skipped on the cluster" in n for n in res["notes"])
    for r in res["ratios"]:
        assert len(r["ratio_runs"]) == 3 and r["ratio"] > 0


def test_bench_valkey_and_resp_peers(redis_server, redis_cluster, tmp_path):
    """LMCache's valkey adapter (valkey-glide) runs in the same invocation as its resp
    adapter and slotline's plug-in, on the standalone server and (cluster_mode) on the
    cluster; resp, which has no cluster mode, only on the standalone one."""
    pytest.importorskip("torch")
    pytest.importorskip("lmcache")
    from slotline.bench.via_lmcache import resp_available, valkey_available

    why = valkey_available()
    if why:
        pytest.skip("valkey-glide-sync not installed (LMCache's valkey adapter): %s" % why)
    out = tmp_path / "b.json"
    assert main(["--url", redis_server.url, "--cluster-url", redis_cluster.url,
                 "--via", "lmcache", "--peers", "native,resp,valkey", "--sizes", "2k:4",
                 "--runs", "2", "--batches", "2", "--warmup", "1", "--quiet",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    check_rounds(res, {"standalone", "cluster"}, 2)
    got = {(r["topology"], r["peer"], r["op"]) for r in res["results"]}
    for topo in ("standalone", "cluster"):
        for op in ("put", "overwrite", "get", "exists"):
            assert (topo, "valkey", op) in got and (topo, "native", op) in got
    pairs = {(r["topology"], r["peer"]) for r in res["ratios"] if r["slotline"] == "native"}
    assert {("standalone", "valkey"), ("cluster", "valkey")} <= pairs
    assert ("cluster", "resp") not in pairs
    if resp_available() is None:
        assert ("standalone", "resp") in pairs


def test_records_are_what_slotline_plot_reads(redis_server, tmp_path):
    """--records: one flat median record per topology, size, peer and phase with a
    payload (PUT fresh, PUT overwrite, GET; not EXISTS), in the Rust bench's JSON-lines
    form (cli/tests/cli.rs plots the same form)."""
    rec = tmp_path / "r.jsonl"
    assert main(["--url", redis_server.url, "--via", "direct", "--peers", "native",
                 "--sizes", "2k:4", "--runs", "1", "--batches", "2", "--warmup", "1",
                 "--quiet", "--commit", "abc123", "--records", str(rec)]) == 0
    lines = [json.loads(x) for x in rec.read_text().splitlines()]
    assert [(x["phase"], x["keys"]) for x in lines] == [
        ("put", "fresh"), ("put", "overwrite"), ("get", None)]
    for x in lines:
        assert x["bench"] == "slotline" and x["kind"] == "median"
        assert x["peer"] == "slotline[native]" and x["mode"] == "standalone"
        assert x["value_size"] == 2048 and x["batch"] == 4 and x["commit"] == "abc123"
        assert x["mb_per_s"] > 0 and x["masters"] == 1


def test_bench_through_lmcache(redis_server, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("lmcache")
    out = tmp_path / "b.json"
    assert main(["--url", redis_server.url, "--via", "lmcache", "--sizes", "4k:4",
                 "--runs", "1", "--batches", "2", "--warmup", "1", "--quiet",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    via = {r["peer"]: r["via"] for r in res["results"]}
    assert via["native"] == "NativeConnectorL2Adapter"
    assert via["connector"] == "RemoteBackend" and via["redis"] == "RemoteBackend"


def test_bench_null_peer_is_the_adapter_floor(redis_server, tmp_path):
    """Peer null: LMCache's adapter over a plug-in without I/O; ratios null / resp.
    With several batches in flight (run_many), every batch is still checked."""
    pytest.importorskip("torch")
    pytest.importorskip("lmcache")
    out = tmp_path / "b.json"
    assert main(["--url", redis_server.url, "--via", "lmcache", "--peers", "null,native",
                 "--sizes", "2k:16", "--runs", "1", "--batches", "7", "--warmup", "1",
                 "--quiet", "--gc", "freeze", "--inflight", "3", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["gc"] == "freeze" and res["inflight"] == 3
    assert {r["peer"] for r in res["results"]} == {"null", "native"}
    assert all(r["keys_per_s"] > 0 for r in res["results"])
