"""The remote connector through LMCache 0.5.6's own plug-in loader
(`remote_storage_plugins` -> CreateConnector), with MemoryObjs from a real
LocalCPUBackend, and byte interop with what LMCache's `redis://` connector stores.
Skipped when lmcache is not importable."""

from __future__ import annotations

import asyncio
import threading

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lmcache")

from lmcache.utils import CacheEngineKey  # noqa: E402
from lmcache.v1.config import LMCacheEngineConfig  # noqa: E402
from lmcache.v1.metadata import LMCacheMetadata  # noqa: E402
from lmcache.v1.protocol import RemoteMetadata  # noqa: E402
from lmcache.v1.storage_backend.connector import CreateConnector  # noqa: E402
from lmcache.v1.storage_backend.local_cpu_backend import LocalCPUBackend  # noqa: E402

CHUNK = 16
KV_SHAPE = (2, 2, CHUNK, 4, 32)  # layers, kv, tokens, heads, head size


@pytest.fixture
def setup(redis_server):
    cfg = LMCacheEngineConfig.from_defaults(
        chunk_size=CHUNK, max_local_cpu_size=0.1, local_cpu=False,
        remote_storage_plugins=["slotline"],
        extra_config={
            "remote_storage_plugin.slotline.module_path": "slotline.lmcache",
            "remote_storage_plugin.slotline.class_name": "SlotlineConnectorAdapter",
            "remote_storage_plugin.slotline.url": redis_server.url,
            "remote_storage_plugin.slotline.cores": 1,
        })
    md = LMCacheMetadata(model_name="m", world_size=1, local_world_size=1, worker_id=0,
                         local_worker_id=0, kv_dtype=torch.bfloat16, kv_shape=KV_SHAPE,
                         chunk_size=CHUNK)
    cpu = LocalCPUBackend(cfg, md)
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    conn = CreateConnector("plugin://slotline", loop, cpu, cfg, md, plugin_name="slotline")

    def run(coro, timeout=20):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    yield conn, cpu, run
    run(conn.close())
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)


def key(i: int) -> CacheEngineKey:
    return CacheEngineKey(model_name="m", world_size=1, worker_id=0, chunk_hash=i,
                          dtype=torch.bfloat16)


def filled(conn, cpu, value: int):
    inner = getattr(conn, "_connector", conn)  # LMCache wraps it for metrics
    obj = cpu.allocate(inner.meta_shapes, inner.meta_dtypes, inner.meta_fmt)
    obj.tensor.fill_(value)
    return obj


def test_put_get_prefix_contains(setup, rpy):
    conn, cpu, run = setup
    keys = [key(i) for i in range(4)]
    objs = [filled(conn, cpu, i + 1) for i in range(4)]
    run(conn.batched_put(keys[:3], objs[:3]))
    for o in objs:
        o.ref_count_down()

    # Stored in LMCache's redis:// layout, readable by its own rules.
    ks = keys[1].to_string()
    raw_meta = rpy.get(ks + "metadata")
    payload = rpy.get(ks + "kv_bytes")
    m = RemoteMetadata.deserialize(memoryview(raw_meta))
    assert m.length == len(payload) == conn._connector.full_chunk_size_bytes

    assert run(conn.batched_async_contains("l1", keys)) == 3
    assert conn.batched_contains(keys) == 3
    assert run(conn.exists(keys[0])) and not run(conn.exists(keys[3]))
    assert conn.exists_sync(keys[2]) and not conn.exists_sync(keys[3])

    got = run(conn.batched_get(keys))
    assert got[3] is None
    for i in range(3):
        assert torch.equal(got[i].tensor, torch.full_like(got[i].tensor, i + 1))
        got[i].ref_count_down()

    pre = run(conn.batched_get_non_blocking("l2", [keys[0], keys[3], keys[1]]))
    assert len(pre) == 1
    pre[0].ref_count_down()


def test_reads_what_lmcache_redis_connector_wrote(setup, rpy):
    conn, cpu, run = setup
    obj = filled(conn, cpu, 9)
    ks = key(42).to_string()
    # What RedisConnector._put writes: payload, then metadata.
    rpy.set(ks + "kv_bytes", bytes(obj.byte_array))
    rpy.set(ks + "metadata", RemoteMetadata(len(obj.byte_array), obj.get_shapes(),
                                            obj.get_dtypes(), obj.get_memory_format()).serialize())
    obj.ref_count_down()
    got = run(conn.get(key(42)))
    assert got is not None and torch.equal(got.tensor, torch.full_like(got.tensor, 9))
    got.ref_count_down()


def test_cancelled_read_is_safe(setup):
    conn, cpu, run = setup
    keys = [key(100 + i) for i in range(4)]
    objs = [filled(conn, cpu, 3) for _ in keys]
    run(conn.batched_put(keys, objs))
    for o in objs:
        o.ref_count_down()

    async def cancelled():
        try:
            await asyncio.wait_for(conn.batched_get_non_blocking("c", keys), 0.0)
        except asyncio.TimeoutError:
            pass

    for _ in range(20):
        run(cancelled())
    # The connector still works, and nothing leaked into later reads.
    got = run(conn.batched_get_non_blocking("c2", keys))
    assert len(got) == 4
    for g in got:
        g.ref_count_down()
