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

Statistics: LMCache wraps every remote connector in its ``InstrumentedRemoteConnector``
(and that in a ``RemoteBackend``), so ``stats()`` and ``metrics_text()`` are not on the
object LMCache hands out. ``slotline_connector(obj)`` finds the slotline connector inside
any of them (or an ``LMCacheEngine`` / ``StorageManager``)::

    from slotline.lmcache import slotline_connector
    print(slotline_connector(engine).stats())      # engine = LMCacheEngineBuilder.get(...)

Cancellation: a request's buffers stay referenced (``ref_count_up``) until its native
completion has been drained, whether or not the awaiting coroutine was cancelled
(LMCache wraps reads in ``asyncio.wait_for``), so LMCache never frees memory the engine
may still touch.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Callable, List, Optional

from lmcache.v1.protocol import RemoteMetadata
from lmcache.v1.storage_backend.connector import ConnectorAdapter, ConnectorContext
from lmcache.v1.storage_backend.connector.base_connector import RemoteConnector

from slotline._native import Client
from slotline.config import config_text, resolve_files

logger = logging.getLogger("slotline.lmcache")

PLUGIN = "slotline"
# Settings that are LMCache's loader business, not ours.
_LOADER_KEYS = ("module_path", "class_name")
# A full lane answers at once; a put retries this many times before giving up.
_PUT_RETRIES = 8
# Stands for "no metadata, a full chunk" in the raw layout.
_FULL_CHUNK = b""


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


def slotline_connector(obj: Any) -> "SlotlineConnector":
    """The ``SlotlineConnector`` inside ``obj``, for its ``stats()`` / ``metrics_text()``.

    ``obj`` may be the connector itself, LMCache's ``InstrumentedRemoteConnector`` (what
    ``CreateConnector`` returns; unwrapped through ``getWrappedConnector()``), its
    ``RemoteBackend`` (``.connection``), a ``StorageManager`` (``.storage_backends``) or
    an ``LMCacheEngine`` (``.storage_manager``). Raises ``LookupError`` naming what was
    searched when none of them holds a slotline connector (e.g. the remote backend uses
    another connector, or has not connected yet).
    """
    seen: set = set()
    todo = [obj]
    searched: List[str] = []
    while todo:
        o = todo.pop(0)
        if o is None or id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, SlotlineConnector):
            return o
        searched.append(type(o).__name__)
        unwrap = getattr(o, "getWrappedConnector", None)
        if callable(unwrap):
            todo.append(unwrap())
        todo.append(getattr(o, "connection", None))
        todo.append(getattr(o, "storage_manager", None))
        backends = getattr(o, "storage_backends", None)
        if isinstance(backends, dict):
            todo.extend(backends.values())
    raise LookupError(
        "no slotline connector in %s (searched: %s); is remote_storage_plugins "
        "[\"slotline\"] configured and the remote backend connected?"
        % (type(obj).__name__, ", ".join(searched) or "nothing")
    )


class _Loan:
    """MemoryObjs lent to a native read: an extra reference each until the read's
    completion is drained. If the awaiting coroutine was cancelled, nobody will take
    the objects, so their owner's reference goes too, but only once the engine has
    handed the buffers back."""

    def __init__(self, objs: List[Any]) -> None:
        self.objs = objs
        self.drained = False
        self.abandoned = False
        for o in objs:
            o.ref_count_up()

    def returned(self, _ok: bool, _result: Any) -> None:
        """Runs when the completion is drained: the engine no longer holds them."""
        self.drained = True
        for o in self.objs:
            o.ref_count_down()
        if self.abandoned:
            self._release_owner()

    def abandon(self) -> None:
        """The reader was cancelled: release the owner's references now if the
        engine is done with the buffers, else when it is."""
        if self.abandoned:
            return
        self.abandoned = True
        if self.drained:
            self._release_owner()

    def _release_owner(self) -> None:
        for o in self.objs:
            o.ref_count_down()


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
        # Relative TLS files resolve against the YAML file's directory, as in the engine.
        params = resolve_files(plugin_params(extra, name), os.environ.get("LMCACHE_CONFIG_FILE"))
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
        # RemoteMetadata bytes -> (length, shapes, dtypes, fmt): a model's chunks share
        # a handful of shapes, so each is decoded once.
        self._meta_cache: dict[bytes, tuple] = {}

    # ----- completion plumbing (runs on the event loop thread) -----

    def _ensure_reader(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._reader_loop is None:
            loop.add_reader(self._fd, self._on_ready)
            self._reader_loop = loop
        return loop

    def _on_ready(self) -> None:
        self._deliver(self._client.drain_completions())

    def _deliver(self, completions) -> None:
        """Releases each drained request's buffers, then resolves its future."""
        for fid, ok, err, result in completions:
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

    def _allocate(self, meta: bytes) -> Optional[Any]:
        """A MemoryObj from LMCache's CPU allocator, shaped by the stored metadata, and
        the writable view of exactly the stored payload length (``None`` if the
        allocator is out of memory or the object is smaller than the payload)."""
        shape = self._meta_cache.get(meta)
        if meta is _FULL_CHUNK:
            shape = (self.full_chunk_size_bytes, self.meta_shapes, self.meta_dtypes,
                     self.meta_fmt)
        elif shape is None:
            md = RemoteMetadata.deserialize(memoryview(meta))
            shape = (md.length, md.shapes, md.dtypes, md.fmt)
            if len(self._meta_cache) < 64:
                self._meta_cache[meta] = shape
        length, shapes, dtypes, fmt = shape
        obj = self.local_cpu_backend.allocate(shapes, dtypes, fmt)
        if obj is None:
            logger.warning("slotline: local CPU backend out of memory during a read")
            return None
        view = obj.byte_array
        if len(view) < length:
            obj.ref_count_down()
            return None
        return obj, view[:length] if len(view) != length else view

    async def _fetch(self, keys: List[Any], prefix: bool) -> List[Optional[Any]]:
        """Metadata first (one batched read of the metadata keys), then MemoryObjs
        allocated from it, then the payloads read straight into them (no copy)."""
        miss: List[Optional[Any]] = [] if prefix else [None] * len(keys)
        key_strs = [k.to_string() for k in keys]
        if self._client.layout == "raw":
            # No metadata stored: a full chunk is expected (a shorter one is a miss).
            ok, err, metas = True, "", [_FULL_CHUNK] * len(keys)
        else:
            fid = self._client.submit_fetch_meta(key_strs, prefix)
            ok, err, metas = await self._wait(fid)
        if not ok:
            logger.warning("slotline: read of %d keys failed: %s", len(keys), err)
            return miss
        objs: List[Optional[Any]] = []
        sub_keys, sub_objs, views = [], [], []
        for k, m in zip(key_strs, metas):
            got = self._allocate(m) if m is not None else None
            if got is None:
                if prefix:
                    break
                objs.append(None)
                continue
            objs.append(got[0])
            sub_keys.append(k)
            sub_objs.append(got[0])
            views.append(got[1])
        if not sub_objs:
            return [] if prefix else objs
        loan = _Loan(sub_objs)
        try:
            fid = self._client.submit_get_into(sub_keys, views)
        except ValueError as e:
            # Refused before any I/O (memory already lent to a request in flight).
            loan.returned(False, None)
            for o in sub_objs:
                o.ref_count_down()
            logger.warning("slotline: read of %d keys refused: %s", len(sub_keys), e)
            return miss
        del views
        try:
            ok, err, flags = await self._wait(fid, loan.returned)
        except asyncio.CancelledError:
            loan.abandon()
            raise
        if not ok:
            logger.warning("slotline: read of %d keys failed: %s", len(sub_keys), err)
            flags = [False] * len(sub_objs)
        out: List[Optional[Any]] = []
        it = iter(flags)
        stopped = False
        for o in objs:
            if o is not None and next(it) and not stopped:
                out.append(o)
                continue
            if o is not None:
                o.ref_count_down()  # a miss (gone, or a length mismatch), or past a gap
            if prefix:
                stopped = True
                continue
            out.append(None)
        return out

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

            try:
                fid = self._client.submit_put(key_strs, views, metas)
            except ValueError as e:
                # Refused before any I/O (memory being read into by a request in flight).
                release(False, None)
                self.failed_puts += len(keys)
                logger.warning("slotline: put of %d chunks refused: %s", len(keys), e)
                return
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
        self._deliver(self._client.drain_completions())

    def stats(self) -> dict:
        """The engine's counters as a dict (``Client.stats``), plus ``failed_puts``."""
        d = self._client.stats()
        d["failed_puts"] = self.failed_puts
        return d

    def metrics_text(self) -> str:
        """The engine's counters in the Prometheus text format (``Client.metrics_text``)."""
        return self._client.metrics_text()
