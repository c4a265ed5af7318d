"""Both plug-ins against a real 6-node Redis Cluster (3 masters, 3 replicas; the
session's `redis_cluster` fixture): the native plug-in with cluster seeds (something
LMCache's own native client cannot do), the remote connector's engine calls with a
`redis-cluster://` URL, keys spread over every master and checked there with redis-py."""

from __future__ import annotations

import os
import struct
import time

import pytest

from helpers import Driver, loaded, poll_until, wait_for
from slotline import Client, config_text
from slotline.native_plugin import SlotlineNativePlugin

redis = pytest.importorskip("redis")

N_KEYS = 48  # enough that every master owns some (checked below)


@pytest.fixture
def crpy(redis_cluster):
    """A redis-py cluster client over an emptied cluster."""
    for m in redis_cluster.masters():
        m.cmd("flushall")
    r = redis.cluster.RedisCluster(host="127.0.0.1", port=redis_cluster.nodes[0].port)
    yield r
    r.close()


def per_master_counts(cluster) -> dict[int, int]:
    return {m.port: int(m.cmd("dbsize").strip()) for m in cluster.masters()}


@pytest.mark.parametrize("seeds", ["all", "cluster-scheme"])
def test_native_plugin_on_cluster(redis_cluster, crpy, seeds):
    url = redis_cluster.url if seeds == "all" else (
        "redis-cluster://127.0.0.1:%d" % redis_cluster.nodes[0].port)
    d = Driver(SlotlineNativePlugin(url=url, cores=1, request_timeout_ms=5000))
    try:
        keys = ["org/model@%08x@0@%x" % (0, i) for i in range(N_KEYS)]
        vals = [os.urandom(4096) for _ in keys]
        _, ok, err, _ = d.run("set", keys, [memoryview(v) for v in vals])
        assert ok, err

        counts = per_master_counts(redis_cluster)
        assert len(counts) == 3 and all(c > 0 for c in counts.values()), counts
        assert sum(counts.values()) == N_KEYS  # raw layout: one key per chunk
        assert all(crpy.get(k) == v for k, v in zip(keys, vals))

        bufs = [bytearray(4096) for _ in keys]
        _, ok, err, flags = d.run("get", keys, [memoryview(b) for b in bufs])
        assert ok and loaded(N_KEYS, flags) == [True] * N_KEYS, err
        assert [bytes(b) for b in bufs] == vals

        # A missing key among hits: a prompt per-key miss, its buffer untouched.
        probe = [keys[0], "never-stored-%s" % seeds, keys[-1]]
        bufs = [bytearray(b"\xaa" * 4096) for _ in probe]
        t0 = time.monotonic()
        _, ok, err, flags = d.run("get", probe, [memoryview(b) for b in bufs])
        assert time.monotonic() - t0 < 2.0
        assert ok and list(flags) == [True, False, True], err
        assert bufs[1] == bytearray(b"\xaa" * 4096)

        _, ok, err, flags = d.run("exists", keys[:3] + ["nope"])
        assert ok and list(flags) == [True, True, True, False], err
        _, ok, err, flags = d.run("delete", keys[:2] + ["nope"])
        assert ok and list(flags) == [True, True, False], err
        assert crpy.get(keys[0]) is None and crpy.get(keys[2]) == vals[2]

        # redis-py writes on every master, the plug-in reads.
        more = ["w%d" % i for i in range(N_KEYS)]
        for k in more:
            crpy.set(k, k.encode() * 100)
        bufs = [bytearray(len(k) * 100) for k in more]
        _, ok, err, flags = d.run("get", more, [memoryview(b) for b in bufs])
        assert ok and loaded(N_KEYS, flags) == [True] * N_KEYS, err
        assert all(bytes(b) == k.encode() * 100 for b, k in zip(bufs, more))
        assert d.unknown == 0
    finally:
        d.close()


def lmcache_meta(length: int) -> bytes:
    # RemoteMetadata: length, fmt KV_2LTD, dtype bfloat16, shape [2, 4, 16, length/256].
    return struct.pack("<7i", length, 1, 3, 2, 4, 16, length // 256)


def test_connector_engine_on_cluster(redis_cluster, crpy):
    """The calls SlotlineConnector makes, in its default `lmcache` layout, over
    `redis-cluster://` (one seed; the rest is discovered)."""
    url = "redis-cluster://127.0.0.1:%d" % redis_cluster.nodes[1].port
    c = Client(config_text({"url": url, "cores": 1}, default_layout="lmcache"))
    try:
        keys = ["m@1@0@%x@bfloat16" % i for i in range(N_KEYS)]
        vals = [os.urandom(8192) for _ in keys]
        metas = [lmcache_meta(8192) for _ in keys]
        _, ok, err, _ = wait_for(c, c.submit_put(keys, [memoryview(v) for v in vals], metas))
        assert ok, err

        counts = per_master_counts(redis_cluster)
        assert all(n > 0 for n in counts.values()), counts
        assert sum(counts.values()) == 2 * N_KEYS  # K+"metadata" and K+"kv_bytes"
        # What LMCache's own redis-cluster connector would read.
        assert crpy.get(keys[5] + "kv_bytes") == vals[5]
        assert crpy.get(keys[5] + "metadata") == metas[5]

        probe = keys[:10] + ["missing@1@0@0@bfloat16"] + keys[10:12]
        _, ok, err, n = wait_for(c, c.submit_contains_prefix(probe))
        assert ok and n == 10, err
        assert c.contains_prefix_now(probe) == 10
        assert c.exists_now([keys[3], "missing@1@0@0@bfloat16"]) == [True, False]

        _, ok, err, fetched = wait_for(c, c.submit_fetch(probe, True))
        assert ok and len(fetched) == 10, err
        out = bytearray(8192)
        assert fetched.copy_into(7, memoryview(out)) and bytes(out) == vals[7]
        fetched.release()

        _, ok, err, fetched = wait_for(c, c.submit_fetch(probe, False))
        assert ok, err
        assert fetched.meta(10) is None and fetched.meta(12) == metas[12]
        fetched.release()
    finally:
        c.close()


def test_remote_connector_through_lmcache_on_cluster(redis_cluster, crpy):
    """SlotlineConnector itself, built by LMCache's plug-in loader, over cluster seeds."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("lmcache")
    from lmcache_setup import connector_setup, lm_key, filled

    with connector_setup(redis_cluster.url) as (conn, cpu, run):
        keys = [lm_key(i) for i in range(N_KEYS)]
        objs = [filled(conn, cpu, i % 100) for i in range(N_KEYS)]
        run(conn.batched_put(keys, objs))
        for o in objs:
            o.ref_count_down()
        counts = per_master_counts(redis_cluster)
        assert all(n > 0 for n in counts.values()), counts

        assert run(conn.batched_async_contains("l", keys)) == N_KEYS
        got = run(conn.batched_get_non_blocking("g", keys))
        assert len(got) == N_KEYS
        for i, g in enumerate(got):
            assert torch.equal(g.tensor, torch.full_like(g.tensor, i % 100))
            g.ref_count_down()


def test_native_plugin_through_lmcache_adapter_on_cluster(redis_cluster, crpy):
    """LMCache's native_plugin factory and NativeConnectorL2Adapter over cluster seeds:
    stores land on every master, lookups and loads find them."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("lmcache")
    from lmcache.v1.distributed.api import ObjectKey
    from lmcache.v1.distributed.l2_adapters.native_plugin_l2_adapter import (
        NativePluginL2AdapterConfig,
        _create_native_plugin_l2_adapter,
    )
    from lmcache.v1.memory_management import MemoryFormat, MemoryObjMetadata, TensorMemoryObj

    def mobj(data: bytearray) -> TensorMemoryObj:
        md = MemoryObjMetadata(shape=torch.Size([len(data)]), dtype=torch.uint8, address=0,
                               phy_size=len(data), ref_count=1, fmt=MemoryFormat.BINARY)
        return TensorMemoryObj(torch.frombuffer(data, dtype=torch.uint8), md, None)

    cfg = NativePluginL2AdapterConfig.from_dict({
        "type": "native_plugin", "module_path": "slotline.native_plugin",
        "class_name": "SlotlineNativePlugin",
        "adapter_params": {"url": redis_cluster.url, "cores": 1}})
    a = _create_native_plugin_l2_adapter(cfg)
    try:
        keys = [ObjectKey(chunk_hash=i.to_bytes(8, "big"), model_name="org/m", kv_rank=0)
                for i in range(N_KEYS)]
        data = [bytearray(os.urandom(8192)) for _ in keys]
        src = [mobj(d) for d in data]  # alive until stored: the adapter keeps raw pointers
        tid = a.submit_store_task(keys, src)
        done = poll_until(a.pop_completed_store_tasks)
        assert tid in done and int(done[tid]) >= 0
        counts = per_master_counts(redis_cluster)
        assert all(n > 0 for n in counts.values()) and sum(counts.values()) == N_KEYS

        missing = ObjectKey(chunk_hash=b"\xff" * 8, model_name="org/m", kv_rank=0)
        tid = a.submit_lookup_and_lock_task(keys + [missing], {})
        bm = poll_until(lambda: a.query_lookup_and_lock_result(tid))
        assert bm.count_leading_ones() == N_KEYS and not bm.test(N_KEYS)
        a.submit_unlock(keys)

        dst_bufs = [bytearray(8192) for _ in keys]
        dst = [mobj(b) for b in dst_bufs]
        tid = a.submit_load_task(keys, dst)
        bm = poll_until(lambda: a.query_load_result(tid))
        assert bm.popcount() == N_KEYS and dst_bufs == data
    finally:
        a.close()
