"""The bench's shared parts: parsing sizes, waiting for completions, the Peer interface
and chunk helpers (the servers are in servers.py)."""

from __future__ import annotations

import asyncio
import os
import select
import struct
import threading
import time
from typing import Any, Callable

# put: every key fresh (after FLUSHALL); overwrite: the same keys again (the server
# reuses their memory); get; exists (keys/s only).
OPS = ("put", "overwrite", "get", "exists")
ALL_PEERS = ("native", "resp", "valkey", "connector", "redis")
# Only on request: LMCache's adapter over a plug-in without I/O (the harness's floor).
EXTRA_PEERS = ("null",)
# Which peers each slotline peer is compared with. null / resp is the largest
# native / resp ratio the adapter and harness leave room for.
COMPARE = {"native": ("resp", "valkey", "redis"), "connector": ("redis",), "null": ("resp",)}


def parse_size(text: str) -> int:
    t = text.strip().lower().rstrip("b").rstrip("i")
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(t[-1:], 1)
    return int(float(t.rstrip("kmg")) * mult)


def parse_configs(text: str) -> list[tuple[int, int, int]]:
    """SIZE[:COUNT[:MB]],... -> (size, count, MiB per peer and operation, 0: the
    --target-mb default)."""
    out = []
    for part in text.split(","):
        size, _, rest = part.partition(":")
        count, _, mb = rest.partition(":")
        out.append((parse_size(size), int(count or 1), int(mb or 0)))
    return out


def human(n: int) -> str:
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return "%d %s" % (n >> shift, unit)
    return "%d B" % n


def wait_fd(fd: int, ready: Callable[[], Any], consume: Callable[[int], None],
            timeout: float = 120.0) -> Any:
    """Polls `ready()` until it returns something, sleeping on `fd` in between."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while True:
        r = ready()
        if r:
            return r
        if time.monotonic() > deadline:
            raise TimeoutError("no completion in %.0f s" % timeout)
        if poller.poll(1000):
            consume(fd)


class PluginWaiter:
    """Completions of a native plug-in (submit, then wait for that future id)."""

    def __init__(self, plugin: Any) -> None:
        self.p = plugin
        self.fd = int(plugin.event_fd())
        self.done: dict[int, tuple] = {}

    def wait(self, fid: int) -> tuple:
        def ready():
            for c in self.p.drain_completions():
                self.done[int(c[0])] = c
            return self.done.pop(fid, None)

        return wait_fd(self.fd, ready, lambda fd: None)


def check(ok: bool, what: str) -> None:
    if not ok:
        raise RuntimeError(what)


class Peer:
    """One peer at one configuration: `count` chunks of `size` bytes a batch; `put`,
    `get` and `exists` handle batch number `batch` (its own keys) and raise on any
    failure or miss, so a number is never reported for work not done."""

    name = ""
    via = ""

    def __init__(self, url: str, size: int, count: int, settings: dict) -> None:
        self.size, self.count = size, count
        self._keys: dict[int, list[Any]] = {}

    def make_keys(self, batch: int) -> list[Any]:
        """Batch `batch`'s keys, in the form the peer's client takes."""
        raise NotImplementedError

    def keys(self, batch: int) -> list[Any]:
        """Batch `batch`'s keys, built once (see `prepare`)."""
        k = self._keys.get(batch)
        if k is None:
            k = self._keys[batch] = self.make_keys(batch)
        return k

    def prepare(self, batches: int) -> None:
        """Builds the keys of `batches` batches ahead, untimed: an application has its
        keys (LMCache's ObjectKey / CacheEngineKey objects) before it calls the client,
        so building them is not the client's cost."""
        for b in range(batches):
            self.keys(b)

    def put(self, batch: int) -> None:
        raise NotImplementedError

    def overwrite(self, batch: int) -> None:
        """PUT batch `batch` again (its keys exist: the server reuses their memory)."""
        self.put(batch)

    def get(self, batch: int) -> None:
        raise NotImplementedError

    def exists(self, batch: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def random_chunks(size: int, count: int) -> list[bytearray]:
    """`count` chunks of `size` random bytes (incompressible, all different)."""
    return [bytearray(os.urandom(size)) for _ in range(count)]


def lmcache_meta(size: int) -> bytes:
    """LMCache's RemoteMetadata for a chunk of `size` bytes: length, KV_2LTD, bfloat16,
    shape (1, 2, 16, size / 64)."""
    return struct.pack("<7i", size, 1, 3, 1, 2, 16, size // 64)


class LoopThread:
    """An asyncio loop on its own thread (LMCache's I/O loop)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.t = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.t.start()

    def run(self, coro, timeout: float = 300):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.t.join(5)
