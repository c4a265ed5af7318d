"""LMCache MP drop-in: the `adapter_params` of LMCache 0.5.6's `valkey` and `resp` L2
adapters, given unchanged to slotline's native plug-in, mean what they mean there; what
slotline cannot honour is named in one warning. Through the installed wheel: the mapping
itself, then engines built from those parameters against real servers (standalone and
cluster) through LMCache's own NativeConnectorL2Adapter."""

from __future__ import annotations

import logging
import os

import pytest

from slotline.config import adapter_settings, config_text
from slotline.native_plugin import SlotlineNativePlugin

VALKEY = {
    "startup_nodes": "10.0.0.1:7000,10.0.0.2:7001",
    "cluster_mode": True,
    "tls_enable": True,
    "key_prefix": "tenant-a",
    "username": "svc",
    "password": "s3cret",
    "database_id": None,
    "request_timeout": 2.5,
    "connection_timeout": 0.75,
    "num_workers": 1,
    "ttl_seconds": 600,
}


def test_valkey_params_map_onto_slotline_settings():
    s, ignored = adapter_settings(VALKEY)
    assert ignored == []
    assert s == {
        "url": "rediss://10.0.0.1:7000,10.0.0.2:7001",
        "redis_mode": "cluster",
        "key_prefix": "tenant-a",
        "redis_username": "svc",
        "redis_password": "s3cret",
        "request_timeout_ms": 2500,
        "connect_timeout_ms": 750,
        "cores": 1,
        "ttl": 600,
    }
    # startup_nodes as a list, of strings or of [host, port] pairs (IPv6 bracketed).
    for nodes in (["10.0.0.1:7000", "10.0.0.2:7001"], [["10.0.0.1", 7000], ("::1", 7001)]):
        s, _ = adapter_settings({"startup_nodes": nodes, "cluster_mode": True})
        assert s["url"].startswith("redis://10.0.0.1:7000,"), s
    s, _ = adapter_settings({"startup_nodes": [["::1", 7001]]})
    assert s["url"] == "redis://[::1]:7001"
    # Standalone: the database, and the valkey adapter's empty-string "not given".
    s, ignored = adapter_settings({"startup_nodes": "h:1", "database_id": 3,
                                   "username": "", "password": ""})
    assert s == {"url": "redis://h:1", "redis_database": 3} and ignored == []


def test_resp_params_map_onto_slotline_settings(monkeypatch):
    for k in ("HOST", "PORT", "USERNAME", "PASSWORD"):
        monkeypatch.delenv("LMCACHE_RESP_" + k, raising=False)
    s, ignored = adapter_settings({"host": "cache", "port": 6380, "username": "u",
                                   "password": "p", "num_workers": 1})
    assert ignored == []
    assert s == {"url": "redis://cache:6380", "redis_username": "u",
                 "redis_password": "p", "cores": 1}
    # The resp adapter's environment defaults fill in what is not given.
    monkeypatch.setenv("LMCACHE_RESP_HOST", "envhost")
    monkeypatch.setenv("LMCACHE_RESP_PASSWORD", "envpw")
    s, _ = adapter_settings({"port": 7000})
    assert s == {"url": "redis://envhost:7000", "redis_password": "envpw"}


def test_what_cannot_be_honoured_is_named_in_one_warning(caplog):
    many = os.cpu_count() or 1
    params = {
        "url": "redis://127.0.0.1:1",
        "startup_nodes": "a:1,b:2",
        "host": "h", "port": 2,
        "num_workers": 10 * many + 7,
        "max_capacity_gb": 4,
        "type": "valkey",
    }
    with caplog.at_level(logging.WARNING, logger="slotline"):
        text = config_text(params, default_layout="raw")
    records = [r for r in caplog.records if r.name == "slotline"]
    assert len(records) == 1, [r.getMessage() for r in records]
    msg = records[0].getMessage()
    for name in ("startup_nodes", "host/port", "num_workers", "max_capacity_gb", "type"):
        assert name in msg, msg
    # url wins; the rest went nowhere near the engine's settings.
    assert '"url": "redis://127.0.0.1:1"' in text and "startup_nodes" not in text
    assert "max_capacity_gb" not in text and '"type"' not in text

    # Cluster-only and standalone-only parameters that do not fit are named too.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="slotline"):
        config_text({"startup_nodes": "a:1,b:2", "cluster_mode": False, "database_id": 2},
                    default_layout="raw")
        config_text({"startup_nodes": "a:1,b:2", "cluster_mode": True, "database_id": 2},
                    default_layout="raw")
    msgs = [r.getMessage() for r in caplog.records if r.name == "slotline"]
    assert len(msgs) == 2, msgs
    assert "b:2" in msgs[0] and "a:1 is used" in msgs[0], msgs[0]
    assert "database_id" in msgs[1], msgs[1]


def test_nothing_to_say_means_no_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="slotline"):
        config_text(VALKEY, default_layout="raw")
        config_text({"url": "redis://h:1", "cores": 2, "io_backend": "epoll"}, "raw")
    assert [r for r in caplog.records if r.name == "slotline"] == []


def test_bad_startup_nodes_are_refused():
    for bad in ("", "nohostport", "h:", "h:port", [["h"]]):
        with pytest.raises(ValueError, match="startup_nodes"):
            adapter_settings({"startup_nodes": bad})
    with pytest.raises(ValueError, match="request_timeout"):
        adapter_settings({"url": "redis://h:1", "request_timeout": 0})


# ----- through LMCache's adapter, against real servers -----

def lmcache_helpers():
    """The LMCache test helpers (skips without torch and lmcache)."""
    pytest.importorskip("torch")
    pytest.importorskip("lmcache")
    import test_lmcache_native_adapter as h
    return h


def native_adapter(params: dict):
    lmcache_helpers()
    from lmcache.v1.distributed.l2_adapters.native_plugin_l2_adapter import (
        NativePluginL2AdapterConfig,
        _create_native_plugin_l2_adapter,
    )
    cfg = NativePluginL2AdapterConfig.from_dict({
        "type": "native_plugin",
        "module_path": "slotline.native_plugin",
        "class_name": "SlotlineNativePlugin",
        "adapter_params": params,
    })
    return _create_native_plugin_l2_adapter(cfg)


def round_trip(adapter, tag: int, n: int = 6, size: int = 4096) -> list:
    h = lmcache_helpers()
    keys = [h.okey(tag + i, "org/params") for i in range(n)]
    data = [os.urandom(size) for _ in keys]
    h.store(adapter, keys, data)
    assert h.lookup(adapter, keys) == n
    got, hits = h.load(adapter, keys, size)
    assert hits == n and got == data
    return keys


def test_valkey_params_standalone(redis_server):
    redis = pytest.importorskip("redis")
    params = {
        "startup_nodes": "127.0.0.1:%d" % redis_server.port,
        "cluster_mode": False,
        "tls_enable": False,
        "key_prefix": "team-x",
        "username": "",
        "password": "",
        "database_id": 5,
        "request_timeout": 5.0,
        "connection_timeout": 2.0,
        "num_workers": 1,
    }
    plugin = SlotlineNativePlugin(**params)
    assert plugin.stats()["shards"] == 1  # num_workers
    plugin.close()
    a = native_adapter(params)
    try:
        keys = round_trip(a, 100)
    finally:
        a.close()
    from lmcache.v1.distributed.l2_adapters.native_connector_l2_adapter import (
        _object_key_to_string,
    )
    r5 = redis.Redis(host="127.0.0.1", port=redis_server.port, db=5)
    r0 = redis.Redis(host="127.0.0.1", port=redis_server.port, db=0)
    try:
        # database_id: db 5; key_prefix: the valkey adapter's `<prefix>@<key>` keys.
        want = {("team-x@" + _object_key_to_string(k)).encode() for k in keys}
        assert set(r5.keys("*")) == want
        assert r0.keys("team-x@*") == []
    finally:
        r5.flushdb()
        r5.close()
        r0.close()


def test_resp_params_standalone(redis_server, rpy):
    params = {"host": "127.0.0.1", "port": redis_server.port, "num_workers": 1,
              "username": "", "password": ""}
    a = native_adapter(params)
    try:
        keys = round_trip(a, 200)
    finally:
        a.close()
    assert rpy.dbsize() == len(keys)


def test_valkey_params_cluster(redis_cluster):
    params = {
        "startup_nodes": ",".join("127.0.0.1:%d" % s.port for s in redis_cluster.nodes[:2]),
        "cluster_mode": True,
        "key_prefix": "team-c",
        "request_timeout": 10,
        "num_workers": 1,
    }
    a = native_adapter(params)
    try:
        keys = round_trip(a, 300, n=24)
    finally:
        a.close()
    # Spread over the masters, every key under the prefix.
    found = []
    for m in redis_cluster.masters():
        found += [k for k in m.cmd("keys", "team-c@*").split("\n") if k]
    assert len(found) == len(keys)
    assert sum(1 for m in redis_cluster.masters() if m.cmd("keys", "team-c@*").strip()) >= 2
