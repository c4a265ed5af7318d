"""The native plug-in through LMCache 0.5.6's own classes: the `native_plugin` factory
wraps it in NativeConnectorL2Adapter, which runs store, lookup-and-lock and load tasks
with real MemoryObjs. Skipped when lmcache is not importable."""

from __future__ import annotations

import os
import select
import time

import pytest

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


def poll_until(fn, timeout: float = 20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = fn()
        if r:
            return r
        time.sleep(0.005)
    raise AssertionError("no result in time")


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
    tid = adapter.submit_store_task(keys, [mobj(d) for d in data])
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
    adapter.submit_store_task([k], [mobj(b"q" * 1024)])
    poll_until(lambda: adapter.pop_completed_store_tasks())
    adapter.delete([k])
    tid = adapter.submit_lookup_and_lock_task([k], {})
    bm = poll_until(lambda: adapter.query_lookup_and_lock_result(tid))
    assert bm.popcount() == 0
