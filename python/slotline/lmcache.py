"""LMCache single-process mode: a remote-connector plug-in.

Configuration (LMCache 0.5.6; do not also set ``remote_url``)::

    chunk_size: 256
    max_local_cpu_size: 5
    remote_storage_plugins: ["slotline"]
    extra_config:
      remote_storage_plugin.slotline.module_path: slotline.lmcache
      remote_storage_plugin.slotline.class_name: SlotlineConnectorAdapter
      remote_storage_plugin.slotline.url: "redis://127.0.0.1:6379"
      # optional: remote_storage_plugin.slotline.layout: lmcache (default) | hashtag | raw
      # and any slotline setting: remote_storage_plugin.slotline.cores: 2, ...

Semantics: the batched calls run as single engine requests at LMCache's priorities
(``exists`` / ``batched_async_contains`` PEEK, ``batched_get_non_blocking`` PREFETCH
with prefix semantics, ``get`` / ``batched_get`` GET, ``put`` / ``batched_put`` PUT).
Completions reach asyncio through the plug-in's eventfd and ``loop.add_reader``: no
thread per call. The default layout ``lmcache`` reads and writes what LMCache's
``redis://`` connectors store.

Cancellation: a request's buffers stay referenced (``ref_count_up``) until its native
completion has been drained, whether or not the awaiting coroutine was cancelled
(LMCache wraps reads in ``asyncio.wait_for``), so LMCache never frees memory the engine
may still touch.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, List, Optional

from lmcache.v1.protocol import RemoteMetadata
from lmcache.v1.storage_backend.connector import ConnectorAdapter, ConnectorContext
from lmcache.v1.storage_backend.connector.base_connector import RemoteConnector

from slotline._native import Client
from slotline.config import config_text

logger = logging.getLogger("slotline.lmcache")

PLUGIN = "slotline"
# Settings that are LMCache's loader business, not ours.
_LOADER_KEYS = ("module_path", "class_name")
# A full lane answers at once; a put retries this many times before giving up.
_PUT_RETRIES = 8


def plugin_params(extra_config: Optional[dict], plugin_name: str = PLUGIN) -> dict:
    """The ``remote_storage_plugin.<plugin_name>.*`` settings, prefix removed."""
    prefix = "remote_storage_plugin.%s." % plugin_name
    out = {}
    for k, v in (extra_config or {}).items():
        if isinstance(k, str) and k.startswith(prefix):
            name = k[len(prefix):]
            if name not in _LOADER_KEYS:
                out[name] = v
    return out


class SlotlineConnectorAdapter(ConnectorAdapter):
    """Built by LMCache's plug-in loader with no arguments."""

    def __init__(self) -> None:
        super().__init__("plugin://%s" % PLUGIN)

    def can_parse(self, url: str) -> bool:
        if not url.startswith("plugin://"):
            return False
        name = url[len("plugin://"):]
        return name.split(".", 1)[0] == PLUGIN

    def create_connector(self, context: ConnectorContext) -> RemoteConnector:
        name = context.plugin_name or context.url[len("plugin://"):] or PLUGIN
        extra = context.config.extra_config if context.config is not None else None
        params = plugin_params(extra, name)
        return SlotlineConnector(
            loop=context.loop,
            local_cpu_backend=context.local_cpu_backend,
            config=context.config,
            metadata=context.metadata,
            params=params,
        )


class SlotlineConnector(RemoteConnector):
    """LMCache's ``RemoteConnector`` over a slotline engine."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        local_cpu_backend: Any,
        config: Any,
        metadata: Any,
        params: dict,
    ) -> None:
        super().__init__(config, metadata)
        self.loop = loop
        self.local_cpu_backend = local_cpu_backend
        self._client = Client(config_text(params, default_layout="lmcache"))
        self._fd = self._client.event_fd()
        # future id -> (asyncio future, called with (ok, result) once drained)
        self._pending: dict[int, tuple[asyncio.Future, Optional[Callable]]] = {}
        self._reader_loop: Optional[asyncio.AbstractEventLoop] = None
        self.failed_puts = 0
        self._closed = False

    # ----- completion plumbing (runs on the event loop thread) -----

    def _ensure_reader(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._reader_loop is None:
            loop.add_reader(self._fd, self._on_ready)
            self._reader_loop = loop
        return loop

    def _on_ready(self) -> None:
        for fid, ok, err, result in self._client.drain_completions():
            entry = self._pending.pop(fid, None)
            if entry is None:
                continue
            fut, after = entry
            if after is not None:
                try:
                    after(ok, result)
                except Exception:  # never let a release error stop delivery
                    logger.exception("slotline: releasing buffers of request %d", fid)
            if not fut.done():
                fut.set_result((ok, err, result))

    async def _wait(self, fid: int, after: Optional[Callable] = None):
        loop = self._ensure_reader()
        fut = loop.create_future()
        self._pending[fid] = (fut, after)
        # If this coroutine is cancelled, the entry stays: `after` still runs when the
        # native completion is drained, and only then are the buffers let go.
        return await fut

    # ----- reads -----

    def _materialize(self, fetched: Any, n: int, prefix: bool) -> List[Optional[Any]]:
        """Allocates each hit from its stored metadata and copies it in."""
        out: List[Optional[Any]] = []
        for i in range(n):
            meta = fetched.meta(i)
            obj = None
            if meta is not None:
                obj = self._allocate(meta, fetched.length(i))
                if obj is not None and not fetched.copy_into(i, obj.byte_array):
                    obj.ref_count_down()
                    obj = None
            if obj is None and prefix:
                break
            out.append(obj)
        fetched.release()
        return out

    def _allocate(self, meta: bytes, length: int) -> Optional[Any]:
        if meta:
            md = RemoteMetadata.deserialize(memoryview(meta))
            shapes, dtypes, fmt = md.shapes, md.dtypes, md.fmt
        else:  # raw layout: no metadata, a full chunk is expected
            if length != self.full_chunk_size_bytes:
                return None
            shapes, dtypes, fmt = self.meta_shapes, self.meta_dtypes, self.meta_fmt
        obj = self.local_cpu_backend.allocate(shapes, dtypes, fmt)
        if obj is None:
            logger.warning("slotline: local CPU backend out of memory during a read")
            return None
        if len(obj.byte_array) < length:
            obj.ref_count_down()
            return None
        return obj

    async def _fetch(self, keys: List[Any], prefix: bool) -> List[Optional[Any]]:
        key_strs = [k.to_string() for k in keys]
        fid = self._client.submit_fetch(key_strs, prefix)
        ok, err, fetched = await self._wait(fid)
        if not ok:
            logger.warning("slotline: read of %d keys failed: %s", len(keys), err)
            return [] if prefix else [None] * len(keys)
        return self._materialize(fetched, len(fetched) if prefix else len(keys), prefix)

    async def get(self, key: Any) -> Optional[Any]:
        return (await self._fetch([key], prefix=False))[0]

    def support_batched_get(self) -> bool:
        return True

    async def batched_get(self, keys: List[Any]) -> List[Optional[Any]]:
        return await self._fetch(keys, prefix=False)

    def support_batched_get_non_blocking(self) -> bool:
        return True

    async def batched_get_non_blocking(self, lookup_id: str, keys: List[Any]) -> List[Any]:
        return await self._fetch(keys, prefix=True)  # type: ignore[return-value]

    # ----- checks -----

    async def exists(self, key: Any) -> bool:
        fid = self._client.submit_batch_exists([key.to_string()])
        ok, err, flags = await self._wait(fid)
        if not ok:
            logger.warning("slotline: exists failed: %s", err)
            return False
        return bool(flags[0])

    def exists_sync(self, key: Any) -> bool:
        try:
            return bool(self._client.exists_now([key.to_string()])[0])
        except Exception as e:
            logger.warning("slotline: exists_sync failed: %s", e)
            return False

    def support_batched_async_contains(self) -> bool:
        return True

    async def batched_async_contains(
        self, lookup_id: str, keys: List[Any], pin: bool = False
    ) -> int:
        fid = self._client.submit_contains_prefix([k.to_string() for k in keys])
        ok, err, count = await self._wait(fid)
        if not ok:
            logger.warning("slotline: batched_async_contains failed: %s", err)
            return 0
        return int(count)

    def support_batched_contains(self) -> bool:
        return True

    def batched_contains(self, keys: List[Any]) -> int:
        try:
            return int(self._client.contains_prefix_now([k.to_string() for k in keys]))
        except Exception as e:
            logger.warning("slotline: batched_contains failed: %s", e)
            return 0

    # ----- writes -----

    async def put(self, key: Any, memory_obj: Any) -> None:
        await self.batched_put([key], [memory_obj])

    def support_batched_put(self) -> bool:
        return True

    async def batched_put(self, keys: List[Any], memory_objs: List[Any]) -> None:
        """Stores every object; a failure is logged and counted, never raised. The
        objects are held (``ref_count_up``) until the native completion is drained."""
        key_strs = [k.to_string() for k in keys]
        views = [o.byte_array for o in memory_objs]
        metas = [
            RemoteMetadata(
                len(v), o.get_shapes(), o.get_dtypes(), o.get_memory_format()
            ).serialize()
            for o, v in zip(memory_objs, views)
        ]
        for attempt in range(_PUT_RETRIES + 1):
            for o in memory_objs:
                o.ref_count_up()

            def release(_ok: bool, _res: Any, objs=memory_objs) -> None:
                for o in objs:
                    o.ref_count_down()

            fid = self._client.submit_put(key_strs, views, metas)
            ok, err, _ = await self._wait(fid, release)
            if ok:
                return
            if "is full" in err and attempt < _PUT_RETRIES:
                await asyncio.sleep(0.001 * (2**attempt))
                continue
            self.failed_puts += len(keys)
            logger.warning("slotline: put of %d chunks failed: %s", len(keys), err)
            return

    # ----- misc -----

    async def list(self) -> List[str]:
        # Listing would mean SCANning the whole keyspace; LMCache's Redis connectors
        # do not implement it either.
        return []

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reader_loop is not None:
            self._reader_loop.remove_reader(self._fd)
        # Waits for running requests, then delivers what is left (buffers released).
        self._client.close()
        for fid, ok, err, result in self._client.drain_completions():
            entry = self._pending.pop(fid, None)
            if entry is None:
                continue
            fut, after = entry
            if after is not None:
                after(ok, result)
            if not fut.done():
                fut.set_result((ok, err, result))

    def stats(self) -> str:
        """The engine's counters, as text."""
        return self._client.stats()
