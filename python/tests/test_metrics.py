"""Metrics from Python: the engine's Prometheus text and a stats dict on the client and
the native plug-in, and the stdlib /metrics endpoint serving them."""

from __future__ import annotations

import urllib.request

import pytest

from helpers import Driver, loaded
from slotline import Client, config_text
from slotline.metrics import CONTENT_TYPE, render, serve
from slotline.native_plugin import SlotlineNativePlugin


@pytest.fixture
def plugin(redis_server):
    p = SlotlineNativePlugin(url=redis_server.url, cores=1, request_timeout_ms=3000)
    d = Driver(p)
    yield p, d
    d.close()


def _sample(text: str, name: str) -> float:
    """The value of the first sample line of `name` (with or without labels)."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no sample %s in:\n%s" % (name, text))


def test_plugin_stats_and_metrics_count_the_traffic(plugin):
    p, d = plugin
    before = p.stats()
    keys = ["m@00000000@0@%x" % i for i in range(5)]
    data = [bytes([i]) * 3000 for i in range(5)]
    _, ok, err, _ = d.run("set", keys, [memoryview(x) for x in data])
    assert ok, err
    bufs = [bytearray(3000) for _ in keys]
    _, ok, err, flags = d.run("get", keys + ["missing"], [memoryview(b) for b in bufs]
                              + [memoryview(bytearray(3000))])
    assert ok, err
    assert loaded(6, flags) == [True] * 5 + [False]

    s = p.stats()
    assert s["backend"] in ("io_uring", "epoll")
    assert s["shards"] == 1 and len(s["cores"]) == 1
    assert s["hits"] - before["hits"] == 5
    assert s["misses"] - before["misses"] == 1
    assert s["bytes_sent"] >= before["bytes_sent"] + 5 * 3000
    assert s["bytes_received"] >= before["bytes_received"] + 5 * 3000
    assert set(s["classes"]) == {"peek", "prefetch", "get", "put"}
    assert s["classes"]["put"]["ops"] >= 1 and s["classes"]["put"]["keys"] >= 5
    assert s["classes"]["get"]["keys"] >= 6
    assert 0 < s["classes"]["get"]["p50_s"] <= s["classes"]["get"]["max_s"]
    assert isinstance(s["errors"], dict) and isinstance(s["syscalls"], dict)
    assert s["pending"] == 0

    text = p.metrics_text()
    assert "# TYPE slotline_hits_total counter" in text
    assert _sample(text, "slotline_hits_total") == s["hits"]
    assert _sample(text, "slotline_misses_total") == s["misses"]
    assert 'slotline_operations_total{class="put"}' in text


def test_client_metrics_and_closed_client(redis_server):
    c = Client(config_text({"url": redis_server.url, "cores": 1}, default_layout="lmcache"))
    assert c.exists_now(["a", "b"]) == [False, False]
    s = c.stats()
    assert s["classes"]["peek"]["ops"] >= 1 and s["classes"]["peek"]["keys"] >= 2
    assert "slotline_engine_info" in c.metrics_text()
    assert "peek" in c.stats_text()
    c.close()
    with pytest.raises(RuntimeError, match="closed"):
        c.stats()
    with pytest.raises(RuntimeError, match="closed"):
        c.metrics_text()
    # A closed source does not break a scrape of the others.
    assert render([c, lambda: "x 1\n"]).endswith("x 1\n")


def test_metrics_endpoint_serves_every_source(plugin, redis_server):
    p, d = plugin
    _, ok, err, _ = d.run("exists", ["k1", "k2"])
    assert ok, err
    srv = serve(p, lambda: "# extra\n")
    try:
        with urllib.request.urlopen(srv.url, timeout=10) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == CONTENT_TYPE
            body = r.read().decode()
        assert _sample(body, "slotline_operations_total") >= 1
        assert body.endswith("# extra\n")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(srv.url.replace("/metrics", "/other"), timeout=10)
        assert e.value.code == 404
    finally:
        srv.close()


def test_prometheus_client_collector(plugin):
    """The README's recipe: the engine's text parsed into a prometheus_client registry."""
    prom = pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    p, d = plugin
    _, ok, err, _ = d.run("exists", ["k1"])
    assert ok, err

    class SlotlineCollector:
        def __init__(self, source):
            self.source = source

        def collect(self):
            yield from text_string_to_metric_families(self.source.metrics_text())

    reg = prom.CollectorRegistry()
    reg.register(SlotlineCollector(p))
    out = prom.generate_latest(reg).decode()
    assert "slotline_operations_total" in out
    assert reg.get_sample_value("slotline_operations_total", {"class": "peek"}) >= 1


def test_plugin_default_shards_and_explicit_cores(redis_server):
    """Inside LMCache a plug-in takes a few shards (default_cores), not one per core;
    an explicit `cores` wins."""
    import json

    from slotline.config import default_cores

    assert 1 <= default_cores() <= 4
    extra = json.loads(config_text({"url": redis_server.url}, "raw"))["extra_config"]
    assert extra["cores"] == default_cores()
    extra = json.loads(config_text({"url": redis_server.url, "cores": "0"}, "raw"))
    assert extra["extra_config"]["cores"] == "0"
    p = SlotlineNativePlugin(url=redis_server.url)
    try:
        assert p.stats()["shards"] == default_cores()
    finally:
        p.close()
