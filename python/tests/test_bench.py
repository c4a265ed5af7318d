"""`python -m slotline.bench` runs end to end with tiny counts (numbers are not checked:
speed is measured by running the bench, never by tests)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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
         "--sizes", "4k:4", "--runs", "1", "--batches", "1", "--quiet", "--json", "-"],
        capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["server"].startswith("redis://127.0.0.1:")
    assert [r["op"] for r in res["results"]] == ["put", "get", "exists"]


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
