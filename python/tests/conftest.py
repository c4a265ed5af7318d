"""Fixtures: real redis-server processes on free loopback ports (never 6379), started
per test module and stopped by pid afterwards."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest


def redis_server_bin() -> str:
    found = os.environ.get("SLOTLINE_REDIS_SERVER") or shutil.which("redis-server")
    for cand in ("/usr/bin/redis-server", "/usr/sbin/redis-server"):
        if not found and os.path.exists(cand):
            found = cand
    if not found:
        pytest.fail("redis-server not found (install it, or set SLOTLINE_REDIS_SERVER)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One redis-server on 127.0.0.1:port; restartable on the same port."""

    def __init__(self, port: int | None = None, args: tuple = ()):
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="slotline-py-redis-")
        self.args = args
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return "redis://127.0.0.1:%d" % self.port

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            [redis_server_bin(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir, *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server on port %d did not start" % self.port)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_server():
    s = RedisServer().start()
    yield s
    s.stop()


@pytest.fixture
def fresh_server():
    """A server of its own, for tests that kill it."""
    s = RedisServer().start()
    yield s
    s.stop()


@pytest.fixture
def rpy(redis_server):
    redis = pytest.importorskip("redis")
    r = redis.Redis(host="127.0.0.1", port=redis_server.port)
    r.flushall()
    yield r
    r.close()
