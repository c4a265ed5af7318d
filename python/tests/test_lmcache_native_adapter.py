"""The native plug-in through LMCache 0.5.6's own classes: the `native_plugin` factory
wraps it in NativeConnectorL2Adapter, which runs store, lookup-and-lock and load tasks
with real MemoryObjs. In the same run, LMCache's built-in `resp` adapter (its C++
LMCacheRedisClient in the same wrapper) on the same server: what one stores, the other
loads, byte for byte. Skipped when lmcache is not importable; the `resp` tests are
skipped when the wheel lacks the C++ extension `lmcache.lmcache_redis`."""

from __future__ import annotations

import os
import select
import time

import pytest

from helpers import poll_until

torch = pytest.importorskip("torch")
pytest.importorskip("lmcache")

from lmcache.v1.distributed.api import ObjectKey  # noqa: E402
from lmcache.v1.distributed.l2_adapters.native_plugin_l2_adapter import (  # noqa: E402
    NativePluginL2AdapterConfig,
    _create_native_plugin_l2_adapter,
)
from lmcache.v1.memory_management import (  # noqa: E402
    MemoryFormat,
    MemoryObjMetadata,
    TensorMemoryObj,
)


def mobj(data: bytes) -> TensorMemoryObj:
    t = torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()
    md = MemoryObjMetadata(shape=torch.Size([len(data)]), dtype=torch.uint8, address=0,
                           phy_size=len(data), ref_count=1, fmt=MemoryFormat.BINARY)
    return TensorMemoryObj(t, md, None)


def okey(i: int, model: str = "org/model") -> ObjectKey:
    return ObjectKey(chunk_hash=i.to_bytes(8, "big"), model_name=model, kv_rank=0)


def wait_fd(fd: int, timeout: float = 20.0) -> None:
    p = select.poll()
    p.register(fd, select.POLLIN)
    assert p.poll(int(timeout * 1000)), "adapter event fd never fired"


@pytest.fixture
def adapter(redis_server):
    cfg = NativePluginL2AdapterConfig.from_dict({
        "type": "native_plugin",
        "module_path": "slotline.native_plugin",
        "class_name": "SlotlineNativePlugin",
        "adapter_params": {"url": redis_server.url, "cores": 1},
    })
    a = _create_native_plugin_l2_adapter(cfg)
    yield a
    a.close()


def test_store_lookup_load(adapter, rpy):
    n, size = 8, 64 * 1024
    data = [os.urandom(size) for _ in range(n)]
    keys = [okey(i) for i in range(n)]
    objs = [mobj(d) for d in data]  # alive until stored: the adapter keeps raw pointers
    tid = adapter.submit_store_task(keys, objs)
    stored = poll_until(lambda: adapter.pop_completed_store_tasks())
    assert tid in stored

    # Lookup: the first n exist, one more does not.
    tid = adapter.submit_lookup_and_lock_task(keys + [okey(999)], {})
    bm = poll_until(lambda: adapter.query_lookup_and_lock_result(tid))
    assert bm.count_leading_ones() == n and not bm.test(n)
    adapter.submit_unlock(keys)

    # Load into fresh MemoryObjs: bytes land in place.
    dst = [mobj(bytes(size)) for _ in range(n)]
    tid = adapter.submit_load_task(keys, dst)
    bm = poll_until(lambda: adapter.query_load_result(tid))
    assert bm.popcount() == n
    assert all(bytes(d.byte_array) == data[i] for i, d in enumerate(dst))


def test_load_of_missing_key_is_prompt_miss(adapter):
    dst = [mobj(bytes(4096))]
    t0 = time.time()
    tid = adapter.submit_load_task([okey(123456, "org/other")], dst)
    bm = poll_until(lambda: adapter.query_load_result(tid), timeout=5)
    assert time.time() - t0 < 2
    assert bm.popcount() == 0


def test_delete_through_adapter(adapter):
    k = okey(77)
    obj = mobj(b"q" * 1024)
    adapter.submit_store_task([k], [obj])
    poll_until(lambda: adapter.pop_completed_store_tasks())
    adapter.delete([k])
    tid = adapter.submit_lookup_and_lock_task([k], {})
    bm = poll_until(lambda: adapter.query_lookup_and_lock_result(tid))
    assert bm.popcount() == 0


# ----- LMCache's built-in `resp` adapter on the same server -----


def resp_available() -> str | None:
    """None when LMCache's C++ RESP client is importable, else why not."""
    try:
        from lmcache.lmcache_redis import LMCacheRedisClient  # noqa: F401
    except ImportError as e:
        return "lmcache wheel without its C++ RESP extension (lmcache.lmcache_redis): %s" % e
    return None


@pytest.fixture
def resp_adapter(redis_server):
    why = resp_available()
    if why:
        pytest.skip(why)
    from lmcache.v1.distributed.l2_adapters.resp_l2_adapter import (
        RESPL2AdapterConfig,
        _create_resp_l2_adapter,
    )

    cfg = RESPL2AdapterConfig.from_dict(
        {"type": "resp", "host": "127.0.0.1", "port": redis_server.port, "num_workers": 2})
    a = _create_resp_l2_adapter(cfg)
    yield a
    a.close()


def store(adapter, keys, datas) -> None:
    # The adapter hands the native client raw pointers into the objects (as LMCache's
    # L1 does, it keeps them alive until the store completed).
    objs = [mobj(d) for d in datas]
    tid = adapter.submit_store_task(keys, objs)
    done = poll_until(lambda: adapter.pop_completed_store_tasks())
    assert tid in done and int(done[tid]) >= 0, done
    del objs


def load(adapter, keys, size: int) -> tuple[list[bytes], int]:
    dst = [mobj(bytes(size)) for _ in keys]
    tid = adapter.submit_load_task(keys, dst)
    bm = poll_until(lambda: adapter.query_load_result(tid))
    return [bytes(d.byte_array) for d in dst], bm.popcount()


def lookup(adapter, keys) -> int:
    tid = adapter.submit_lookup_and_lock_task(keys, {})
    bm = poll_until(lambda: adapter.query_lookup_and_lock_result(tid))
    adapter.submit_unlock(keys)
    return bm.popcount()


# LMCache 0.5.6's C++ RESP client desyncs or hangs its connection on a GET of a missing
# key, so these tests only ever load keys that exist.
@pytest.mark.parametrize("size", [2048, 256 * 1024])
def test_slotline_writes_resp_adapter_reads(adapter, resp_adapter, rpy, size):
    keys = [okey(5000 + i, "org/interop") for i in range(8)]
    data = [os.urandom(size) for _ in keys]
    store(adapter, keys, data)
    assert lookup(resp_adapter, keys) == len(keys)
    got, hits = load(resp_adapter, keys, size)
    assert hits == len(keys) and got == data


@pytest.mark.parametrize("size", [2048, 256 * 1024])
def test_resp_adapter_writes_slotline_reads(adapter, resp_adapter, rpy, size):
    keys = [okey(6000 + i, "org/interop") for i in range(8)]
    data = [os.urandom(size) for _ in keys]
    store(resp_adapter, keys, data)
    assert lookup(adapter, keys + [okey(6999, "org/interop")]) == len(keys)
    got, hits = load(adapter, keys, size)
    assert hits == len(keys) and got == data
    # The same Redis keys, one per chunk, nothing else: the `raw` layout.
    assert rpy.dbsize() == len(keys)
    # And a key LMCache's client never wrote is a prompt miss on slotline's side.
    got, hits = load(adapter, [okey(6999, "org/interop")], size)
    assert hits == 0
