"""Building LMCache 0.5.6's own single-process objects around slotline's remote
connector: an LMCache config naming the plug-in, a LocalCPUBackend for MemoryObjs, an
event loop on its own thread (LMCache's `loop`), the connector through LMCache's
plug-in loader (`CreateConnector`), or the whole `RemoteBackend` through
`CreateStorageBackends`. Import only after `pytest.importorskip("lmcache")`."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any, Iterator

import torch
from lmcache.utils import CacheEngineKey
from lmcache.v1.config import LMCacheEngineConfig
from lmcache.v1.metadata import LMCacheMetadata
from lmcache.v1.storage_backend import CreateStorageBackends
from lmcache.v1.storage_backend.connector import CreateConnector
from lmcache.v1.storage_backend.local_cpu_backend import LocalCPUBackend

CHUNK = 16
KV_SHAPE = (2, 2, CHUNK, 4, 32)  # layers, kv, tokens, heads, head size: 16 KiB bf16


def lm_config(url: str, cpu_gb: float = 0.1, **params: Any) -> LMCacheEngineConfig:
    """A config with slotline as LMCache's only remote storage plug-in."""
    extra = {
        "remote_storage_plugin.slotline.module_path": "slotline.lmcache",
        "remote_storage_plugin.slotline.class_name": "SlotlineConnectorAdapter",
        "remote_storage_plugin.slotline.url": url,
        "remote_storage_plugin.slotline.cores": 1,
    }
    for k, v in params.items():
        extra["remote_storage_plugin.slotline." + k] = v
    return LMCacheEngineConfig.from_defaults(
        chunk_size=CHUNK, max_local_cpu_size=cpu_gb, local_cpu=False,
        remote_storage_plugins=["slotline"], extra_config=extra)


def lm_metadata(kv_shape=KV_SHAPE) -> LMCacheMetadata:
    return LMCacheMetadata(model_name="m", world_size=1, local_world_size=1, worker_id=0,
                           local_worker_id=0, kv_dtype=torch.bfloat16, kv_shape=kv_shape,
                           chunk_size=kv_shape[2])


@contextlib.contextmanager
def loop_thread() -> Iterator[tuple[asyncio.AbstractEventLoop, Any]]:
    """LMCache's I/O loop on its own thread, and `run(coro)` to wait for a coroutine."""
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()

    def run(coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    try:
        yield loop, run
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)
        loop.close()


@contextlib.contextmanager
def connector_setup(url: str, **params: Any):
    """(connector, LocalCPUBackend, run): the connector as LMCache's loader builds it."""
    cfg = lm_config(url, **params)
    md = lm_metadata()
    cpu = LocalCPUBackend(cfg, md)
    with loop_thread() as (loop, run):
        conn = CreateConnector("plugin://slotline", loop, cpu, cfg, md,
                               plugin_name="slotline")
        try:
            yield conn, cpu, run
        finally:
            run(conn.close())
            cpu.close()


@contextlib.contextmanager
def backend_setup(url: str, kv_shape=KV_SHAPE, cpu_gb: float = 0.1, **params: Any):
    """(RemoteBackend, LocalCPUBackend, run), both built by LMCache's
    `CreateStorageBackends` from a config naming the slotline plug-in."""
    cfg = lm_config(url, cpu_gb=cpu_gb, **params)
    md = lm_metadata(kv_shape)
    with loop_thread() as (loop, run):
        backends = CreateStorageBackends(cfg, md, loop)
        remote = backends.get("RemoteBackend-slotline")
        cpu = backends.get("LocalCPUBackend")
        try:
            assert remote is not None and remote.connection is not None, (
                "CreateStorageBackends built no slotline RemoteBackend: %s" % list(backends))
            assert cpu is not None
            yield remote, cpu, run
        finally:
            for b in reversed(list(backends.values())):
                b.close()


def lm_key(i: int, model: str = "m") -> CacheEngineKey:
    return CacheEngineKey(model_name=model, world_size=1, worker_id=0, chunk_hash=i,
                          dtype=torch.bfloat16)


def connector_of(conn: Any) -> Any:
    """The slotline connector inside LMCache's metrics wrapper (if any)."""
    return getattr(conn, "_connector", conn)


def filled(conn: Any, cpu: Any, value: int):
    """A full chunk from the LocalCPUBackend, every element `value`."""
    inner = connector_of(conn)
    obj = cpu.allocate(inner.meta_shapes, inner.meta_dtypes, inner.meta_fmt)
    assert obj is not None, "LocalCPUBackend out of memory"
    obj.tensor.fill_(value)
    return obj
