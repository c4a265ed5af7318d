"""Fixtures: real redis-server processes on free loopback ports (never 6379), started
per test module (a standalone server) or once per session (a 6-node cluster) and
stopped by pid afterwards."""

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


def redis_cli_bin() -> str:
    server = redis_server_bin()
    cand = os.path.join(os.path.dirname(server), "redis-cli")
    found = cand if os.path.exists(cand) else shutil.which("redis-cli")
    if not found:
        pytest.fail("redis-cli not found next to %s" % server)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """n distinct free ports (all bound at once, so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class RedisServer:
    """One redis-server on 127.0.0.1:port; restartable on the same port."""

    def __init__(self, port: int | None = None, args: tuple = (), tag: str = "redis"):
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="slotline-py-%s-" % tag)
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

    def cmd(self, *args: str) -> str:
        """One redis-cli command against this server, its reply as text."""
        return subprocess.run(
            [redis_cli_bin(), "-h", "127.0.0.1", "-p", str(self.port), *args],
            check=True, capture_output=True, text=True, timeout=10,
        ).stdout

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisCluster:
    """3 masters + 3 replicas on free loopback ports (cluster bus ports chosen free
    too, with --cluster-port), created with redis-cli --cluster create."""

    MASTERS = 3

    def __init__(self) -> None:
        ports = free_ports(2 * 2 * self.MASTERS)
        n = 2 * self.MASTERS
        self.nodes = [
            RedisServer(port=ports[i], tag="cluster", args=(
                "--cluster-enabled", "yes", "--cluster-port", str(ports[n + i]),
                "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000",
                "--repl-diskless-sync-delay", "0",
            ))
            for i in range(n)
        ]

    @property
    def seeds(self) -> str:
        """Every node as host:port, comma separated."""
        return ",".join("127.0.0.1:%d" % s.port for s in self.nodes)

    @property
    def url(self) -> str:
        """Cluster seeds as LMCache's enhanced connector writes them."""
        return "redis://" + self.seeds

    def start(self) -> "RedisCluster":
        try:
            for s in self.nodes:
                s.start()
            subprocess.run(
                [redis_cli_bin(), "--cluster", "create",
                 *["127.0.0.1:%d" % s.port for s in self.nodes],
                 "--cluster-replicas", "1", "--cluster-yes"],
                check=True, capture_output=True, text=True, timeout=60,
            )
            self._wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ok(self) -> None:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                states = [s.cmd("cluster", "info") for s in self.nodes]
                roles = [s.cmd("role").split()[0] for s in self.nodes]
            except subprocess.SubprocessError:
                states, roles = [], []
            if (states and all("cluster_state:ok" in st for st in states)
                    and roles.count("master") == self.MASTERS
                    and all(m.port in self.master_ports() for m in self.masters())):
                return
            time.sleep(0.2)
        raise RuntimeError("redis cluster did not reach cluster_state:ok in 30 s")

    def masters(self) -> list[RedisServer]:
        return [s for s in self.nodes if s.cmd("role").split()[0] == "master"]

    def master_ports(self) -> set[int]:
        """Ports of the nodes owning slots, as the cluster itself reports them."""
        out = set()
        for line in self.nodes[0].cmd("cluster", "nodes").splitlines():
            f = line.split()
            if "master" in f[2] and len(f) > 8:
                out.add(int(f[1].split("@")[0].rsplit(":", 1)[1]))
        return out

    def stop(self) -> None:
        for s in self.nodes:
            s.stop()


@pytest.fixture(scope="session")
def redis_cluster():
    c = RedisCluster().start()
    yield c
    c.stop()


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


# ----- skips: CI fails on any skip allowed_skips.txt does not list -----

def _allowed_skips() -> list[tuple[str, str, str]]:
    """(file[::test prefix], reason substring) rules in force, from allowed_skips.txt."""
    path = os.environ.get("SLOTLINE_PY_ALLOWED_SKIPS") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "allowed_skips.txt")
    lmcache_required = os.environ.get("SLOTLINE_PY_LMCACHE") == "1"
    rules = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = [x.strip() for x in line.split(" | ")]
            if len(fields) != 4 or fields[0] not in ("always", "no-lmcache") or not all(fields):
                raise ValueError("allowed_skips.txt:%d: malformed rule: %r" % (n, line))
            cond, where, reason, _why = fields
            if cond == "no-lmcache" and lmcache_required:
                continue
            rules.append((where, reason, line))
    return rules


def _skip_of(rep) -> tuple[str, str]:
    """(file::test, reason) of a skipped test or module, the file without its directory."""
    reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
    nodeid = rep.nodeid or (rep.longrepr[0] if isinstance(rep.longrepr, tuple) else "")
    path, _, name = nodeid.partition("::")
    where = path.rsplit("/", 1)[-1] + ("::" + name if name else "")
    return where, reason


def _matches(where: str, rule: str) -> bool:
    """A rule `file` covers the file and its tests; `file::prefix` tests by prefix."""
    if "::" in rule:
        return where.startswith(rule)
    return where == rule or where.startswith(rule + "::")


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("SLOTLINE_PY_CHECK_SKIPS") != "1":
        return
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = tr.stats.get("skipped", []) if tr is not None else []
    rules = _allowed_skips()
    unexpected = []
    for rep in skipped:
        where, reason = _skip_of(rep)
        if not any(_matches(where, w) and r in reason for w, r, _ in rules):
            unexpected.append("%s: %s" % (where, reason))
    if unexpected:
        lines = ["%d skip(s) not allowed by python/tests/allowed_skips.txt%s:" % (
            len(unexpected),
            " (SLOTLINE_PY_LMCACHE=1: LMCache skips are not allowed)"
            if os.environ.get("SLOTLINE_PY_LMCACHE") == "1" else "")]
        lines += ["  " + u for u in unexpected]
        if tr is not None:
            tr.write_line("")
            for line in lines:
                tr.write_line(line, red=True)
        else:
            print("\n".join(lines))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
