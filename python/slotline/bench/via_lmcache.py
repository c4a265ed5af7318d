"""Peers driven through LMCache 0.5.6's own classes: NativeConnectorL2Adapter
(multiprocess mode: slotline's native plug-in, LMCache's resp adapter and its valkey
adapter) and
RemoteBackend built by CreateStorageBackends (single-process mode: slotline's connector
and LMCache's redis:// connector). lmcache is imported only when a peer is built."""

from __future__ import annotations

import os
import select
import sys
import threading
import time
from typing import Any, Callable, Optional

from slotline.bench.common import LoopThread, Peer, check, random_chunks, wait_fd


class AdapterPeer(Peer):
    """A multiprocess-mode adapter through LMCache's NativeConnectorL2Adapter."""

    via = "NativeConnectorL2Adapter"

    def __init__(self, url, size, count, settings, name: str, make: Callable[[], Any]):
        super().__init__(url, size, count, settings)
        self.name = name
        import torch
        from lmcache.v1.distributed.api import ObjectKey
        from lmcache.v1.memory_management import (
            MemoryFormat, MemoryObjMetadata, TensorMemoryObj)
        from lmcache.v1.platform.event_notifier import consume_fd

        def mobj(data: bytearray):
            t = torch.frombuffer(data, dtype=torch.uint8)
            md = MemoryObjMetadata(shape=torch.Size([len(data)]), dtype=torch.uint8,
                                   address=0, phy_size=len(data), ref_count=1,
                                   fmt=MemoryFormat.BINARY)
            return TensorMemoryObj(t, md, None)

        self.consume = consume_fd
        self.ObjectKey = ObjectKey
        self._mobj = mobj
        self._bufs = random_chunks(size, count) + [bytearray(size) for _ in range(count)]
        self.src = [mobj(b) for b in self._bufs[:count]]
        self.dst = [mobj(b) for b in self._bufs[count:]]
        # Destinations of concurrent loads (run_many): one set per request in flight.
        self._dst_sets = [self.dst]
        self.a = make()

    def make_keys(self, batch):
        return [self.ObjectKey(chunk_hash=(batch * self.count + i).to_bytes(8, "big"),
                               model_name="bench/" + self.name, kv_rank=0)
                for i in range(self.count)]

    def put(self, batch):
        tid = self.a.submit_store_task(self.keys(batch), self.src)
        done = wait_fd(self.a.get_store_event_fd(),
                       lambda: self.a.pop_completed_store_tasks(), self.consume)
        check(tid in done and int(done[tid]) >= 0, "%s store failed" % self.name)

    def get(self, batch):
        tid = self.a.submit_load_task(self.keys(batch), self.dst)
        bm = wait_fd(self.a.get_load_event_fd(),
                     lambda: self.a.query_load_result(tid), self.consume)
        check(bm.popcount() == self.count, "%s load: %d hits" % (self.name, bm.popcount()))

    def exists(self, batch):
        keys = self.keys(batch)
        tid = self.a.submit_lookup_and_lock_task(keys, {})
        bm = wait_fd(self.a.get_lookup_and_lock_event_fd(),
                     lambda: self.a.query_lookup_and_lock_result(tid), self.consume)
        self.a.submit_unlock(keys)
        check(bm.popcount() == self.count, "%s lookup: %d hits" % (self.name, bm.popcount()))

    def run_many(self, op: str, batches: int, depth: int, timeout: float = 300.0) -> None:
        """`batches` batches of `op` with up to `depth` tasks in flight at once (as
        LMCache's server has when several workers store and load), each checked as in
        the one-at-a-time methods."""
        if op == "overwrite":
            op = "put"
        while len(self._dst_sets) < depth:
            self._dst_sets.append([self._mobj(bytearray(self.size))
                                   for _ in range(self.count)])
        free = list(range(depth))
        a = self.a
        fd = {"put": a.get_store_event_fd, "get": a.get_load_event_fd,
              "exists": a.get_lookup_and_lock_event_fd}[op]()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        pending: dict[int, tuple[int, int]] = {}  # task id -> (batch, destination set)
        nxt = 0
        deadline = time.monotonic() + timeout
        while nxt < batches or pending:
            while nxt < batches and len(pending) < depth:
                slot = free.pop()
                keys = self.keys(nxt)
                if op == "put":
                    tid = a.submit_store_task(keys, self.src)
                elif op == "get":
                    tid = a.submit_load_task(keys, self._dst_sets[slot])
                else:
                    tid = a.submit_lookup_and_lock_task(keys, {})
                pending[tid] = (nxt, slot)
                nxt += 1
            done = []
            if op == "put":
                for tid, res in a.pop_completed_store_tasks().items():
                    check(int(res) >= 0, "%s store failed" % self.name)
                    done.append(tid)
            else:
                query = a.query_load_result if op == "get" else a.query_lookup_and_lock_result
                for tid in list(pending):
                    bm = query(tid)
                    if bm is not None:
                        check(bm.popcount() == self.count,
                              "%s %s: %d hits" % (self.name, op, bm.popcount()))
                        if op == "exists":
                            a.submit_unlock(self.keys(pending[tid][0]))
                        done.append(tid)
            for tid in done:
                free.append(pending.pop(tid)[1])
            if not done:
                check(time.monotonic() < deadline, "%s %s: no completion" % (self.name, op))
                if poller.poll(1000):
                    self.consume(fd)

    def close(self):
        self.a.close()


def native_adapter(url, size, count, settings):
    from lmcache.v1.distributed.l2_adapters.native_plugin_l2_adapter import (
        NativePluginL2AdapterConfig, _create_native_plugin_l2_adapter)

    cfg = NativePluginL2AdapterConfig.from_dict({
        "type": "native_plugin", "module_path": "slotline.native_plugin",
        "class_name": "SlotlineNativePlugin", "adapter_params": {"url": url, **settings}})
    return AdapterPeer(url, size, count, settings, "native",
                       lambda: _create_native_plugin_l2_adapter(cfg))


class NullPlugin:
    """A native plug-in that does no I/O: every request completes at once, all found.
    Through NativeConnectorL2Adapter it measures the harness's and the adapter's own
    Python cost per batch, a floor no plug-in goes under (peer ``null``)."""

    def __init__(self) -> None:
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._next = 0
        self._done: list = []
        self._lock = threading.Lock()

    def event_fd(self) -> int:
        return self._fd

    def _finish(self, flags) -> int:
        with self._lock:
            self._next += 1
            self._done.append((self._next, True, "", flags))
            os.eventfd_write(self._fd, 1)
            return self._next

    def submit_batch_get(self, keys, _views) -> int:
        return self._finish([True] * len(keys))

    def submit_batch_set(self, _keys, _views) -> int:
        return self._finish(None)

    def submit_batch_exists(self, keys) -> int:
        return self._finish([True] * len(keys))

    def submit_batch_delete(self, keys) -> int:
        return self._finish([True] * len(keys))

    def drain_completions(self) -> list:
        with self._lock:
            try:
                os.eventfd_read(self._fd)
            except BlockingIOError:
                pass
            done, self._done = self._done, []
        return done

    def close(self) -> None:
        os.close(self._fd)


def null_adapter(url, size, count, settings):
    from lmcache.v1.distributed.l2_adapters.native_connector_l2_adapter import (
        NativeConnectorL2Adapter)

    return AdapterPeer(url, size, count, settings, "null",
                       lambda: NativeConnectorL2Adapter(NullPlugin()))


def resp_adapter(url, size, count, settings, host: str, port: int, workers: int):
    from lmcache.lmcache_redis import LMCacheRedisClient  # noqa: F401  (availability)
    from lmcache.v1.distributed.l2_adapters.resp_l2_adapter import (
        RESPL2AdapterConfig, _create_resp_l2_adapter)

    cfg = RESPL2AdapterConfig.from_dict(
        {"type": "resp", "host": host, "port": port, "num_workers": workers})
    return AdapterPeer(url, size, count, settings, "resp",
                       lambda: _create_resp_l2_adapter(cfg))


def valkey_adapter(url, size, count, settings, startup_nodes: str, cluster: bool,
                   workers: int):
    """LMCache's ``valkey`` adapter (valkey-glide's sync client; GlideClusterClient with
    cluster_mode), built by its factory from the dict its server's config gives."""
    from lmcache.v1.distributed.l2_adapters.valkey_l2_adapter import (
        ValkeyL2AdapterConfig, _create_valkey_l2_adapter)

    cfg = ValkeyL2AdapterConfig.from_dict(
        {"type": "valkey", "startup_nodes": startup_nodes, "cluster_mode": cluster,
         "num_workers": workers})
    return AdapterPeer(url, size, count, settings, "valkey",
                       lambda: _create_valkey_l2_adapter(cfg))


class BackendPeer(Peer):
    """A single-process-mode connector inside LMCache's RemoteBackend, built by
    CreateStorageBackends, with MemoryObjs from its LocalCPUBackend."""

    via = "RemoteBackend"

    def __init__(self, url, size, count, settings, name: str):
        super().__init__(url, size, count, settings)
        import torch
        from lmcache.utils import CacheEngineKey
        from lmcache.v1.config import LMCacheEngineConfig
        from lmcache.v1.metadata import LMCacheMetadata
        from lmcache.v1.storage_backend import CreateStorageBackends

        self.name = name
        check(size % 64 == 0, "chunk sizes must be multiples of 64 bytes")
        kv_shape = (1, 2, 16, 1, size // 64)  # bfloat16: exactly `size` bytes a chunk
        cpu_gb = (3 * size * count) / 1e9 + 0.05
        if name == "connector":
            extra = {
                "remote_storage_plugin.slotline.module_path": "slotline.lmcache",
                "remote_storage_plugin.slotline.class_name": "SlotlineConnectorAdapter",
                "remote_storage_plugin.slotline.url": url,
            }
            extra.update({"remote_storage_plugin.slotline." + k: v
                          for k, v in settings.items()})
            cfg = LMCacheEngineConfig.from_defaults(
                chunk_size=16, max_local_cpu_size=cpu_gb, local_cpu=False,
                remote_storage_plugins=["slotline"], extra_config=extra)
            backend_name = "RemoteBackend-slotline"
        else:
            cfg = LMCacheEngineConfig.from_defaults(
                chunk_size=16, max_local_cpu_size=cpu_gb, local_cpu=False,
                remote_url=url, remote_serde="naive")
            backend_name = "RemoteBackend"
        md = LMCacheMetadata(model_name="bench/" + name, world_size=1, local_world_size=1,
                             worker_id=0, local_worker_id=0, kv_dtype=torch.bfloat16,
                             kv_shape=kv_shape, chunk_size=16)
        self.Key = CacheEngineKey
        self.torch = torch
        self.lt = LoopThread()
        self.backends = CreateStorageBackends(cfg, md, self.lt.loop)
        self.remote = self.backends.get(backend_name)
        cpu = self.backends.get("LocalCPUBackend")
        check(self.remote is not None and self.remote.connection is not None,
              "no %s built: %s" % (backend_name, list(self.backends)))
        conn = getattr(self.remote.connection, "_connector", self.remote.connection)
        self.src = []
        for _ in range(count):
            o = cpu.allocate(conn.meta_shapes, conn.meta_dtypes, conn.meta_fmt)
            check(o is not None, "LocalCPUBackend out of memory")
            view = o.byte_array
            check(len(view) == size, "chunk of %d bytes, expected %d" % (len(view), size))
            view.cast("B")[:] = os.urandom(size)
            self.src.append(o)

    def make_keys(self, batch):
        return [self.Key(model_name="bench/" + self.name, world_size=1, worker_id=0,
                         chunk_hash=batch * self.count + i, dtype=self.torch.bfloat16)
                for i in range(self.count)]

    def put(self, batch):
        keys = self.keys(batch)
        done = threading.Event()
        left = [len(keys)]
        lock = threading.Lock()

        def on_done(_k):
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    done.set()

        self.remote.batched_submit_put_task(keys, self.src, on_complete_callback=on_done)
        check(done.wait(300), "%s put never finished" % self.name)

    def get(self, batch):
        got = self.remote.batched_get_blocking(self.keys(batch))
        hits = 0
        for o in got:
            if o is not None:
                hits += 1
                o.ref_count_down()
        check(hits == self.count, "%s get: %d hits" % (self.name, hits))

    def exists(self, batch):
        n = self.remote.batched_contains(self.keys(batch))
        check(n == self.count, "%s exists: %d" % (self.name, n))

    def close(self):
        for o in self.src:
            o.ref_count_down()
        # LMCache 0.5.6's redis:// connector deadlocks in close() (its priority
        # executor's shutdown waits, on the loop thread, for a job of that same loop):
        # close on a helper thread, give up after a while, leave the daemon threads.
        closer = threading.Thread(target=lambda: [
            b.close() for b in reversed(list(self.backends.values()))], daemon=True)
        closer.start()
        closer.join(3)
        if closer.is_alive():
            print("# %s: LMCache's close() did not return in 3 s; left behind"
                  % self.name, file=sys.stderr)
            return
        self.lt.stop()


def lmcache_available() -> Optional[str]:
    """None when lmcache (with torch) imports, else why not."""
    try:
        import lmcache.v1.distributed.l2_adapters.native_connector_l2_adapter  # noqa: F401
        import lmcache.v1.storage_backend  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return "%s: %s" % (type(e).__name__, e)
    return None


def valkey_available() -> Optional[str]:
    """None when LMCache's valkey adapter and valkey-glide's sync client import."""
    try:
        import glide_sync  # noqa: F401
        import lmcache.v1.distributed.l2_adapters.valkey_l2_adapter  # noqa: F401
    except Exception as e:
        return "%s: %s" % (type(e).__name__, e)
    return None


def resp_available() -> Optional[str]:
    try:
        from lmcache.lmcache_redis import LMCacheRedisClient  # noqa: F401
    except Exception as e:
        return "%s: %s" % (type(e).__name__, e)
    return None
