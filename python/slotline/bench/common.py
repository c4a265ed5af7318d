"""The bench's shared parts: parsing sizes, the redis-server it runs against, waiting
for completions, the Peer interface and chunk helpers."""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from typing import Any, Callable, Optional

OPS = ("put", "get", "exists")
ALL_PEERS = ("native", "resp", "connector", "redis")
# Only on request: LMCache's adapter over a plug-in without I/O (the harness's floor).
EXTRA_PEERS = ("null",)
# Which peers each slotline peer is compared with. null / resp is the largest
# native / resp ratio the adapter and harness leave room for.
COMPARE = {"native": ("resp", "redis"), "connector": ("redis",), "null": ("resp",)}


def parse_size(text: str) -> int:
    t = text.strip().lower().rstrip("b").rstrip("i")
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(t[-1:], 1)
    return int(float(t.rstrip("kmg")) * mult)


def parse_configs(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        size, _, count = part.partition(":")
        out.append((parse_size(size), int(count or 1)))
    return out


def human(n: int) -> str:
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return "%d %s" % (n >> shift, unit)
    return "%d B" % n


def redis_cmd(host: str, port: int, *args: str) -> bytes:
    """One command over a fresh connection; the first reply line."""
    req = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a), a.encode()) for a in args)
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(req)
        return s.recv(4096).split(b"\r\n", 1)[0]


class Server:
    """A redis-server on a free loopback port (stopped by pid), or an existing one."""

    def __init__(self, url: Optional[str]) -> None:
        self.proc: Optional[subprocess.Popen] = None
        self.dir: Optional[str] = None
        if url:
            hostport = url.split("://", 1)[-1].rsplit("@", 1)[-1].split("/", 1)[0]
            host, _, port = hostport.rpartition(":")
            self.host, self.port = host or "127.0.0.1", int(port or 6379)
            return
        binary = os.environ.get("SLOTLINE_REDIS_SERVER") or shutil.which("redis-server")
        if not binary:
            raise SystemExit("redis-server not found: install it, or pass --url")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.host, self.port = "127.0.0.1", s.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="slotline-bench-")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while True:
            try:
                if redis_cmd(self.host, self.port, "PING") == b"+PONG":
                    break
            except OSError:
                pass
            if time.time() > deadline:
                self.stop()
                raise SystemExit("redis-server on port %d did not start" % self.port)
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return "redis://%s:%d" % (self.host, self.port)

    def cpu_seconds(self) -> Optional[float]:
        """User + system CPU seconds the redis-server has used (/proc, clock ticks),
        or None when the bench did not start it."""
        if self.proc is None:
            return None
        try:
            with open("/proc/%d/stat" % self.proc.pid) as f:
                # Fields after the command name; utime and stime are fields 14 and 15.
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def flush(self) -> None:
        """Empties the server (a standalone server without AUTH)."""
        reply = redis_cmd(self.host, self.port, "FLUSHALL")
        check(reply == b"+OK", "FLUSHALL answered %r" % reply)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


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
