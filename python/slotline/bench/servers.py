"""The servers the bench runs against: a standalone redis-server or a Redis Cluster of
three masters, started on free loopback ports (stopped by pid), or existing ones given
by URL. Before each peer's run the bench empties every master (FLUSHALL) and asks its
allocator to hand the freed pages back (MEMORY PURGE), so every peer's PUT of fresh
keys pays the same first-touch page faults whatever ran before it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any, Optional

TOPOLOGIES = ("standalone", "cluster")


def _read_reply(f) -> Any:
    """One RESP2 reply from the file `f` (errors raised as RuntimeError)."""
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise OSError("connection closed mid-reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise RuntimeError("unexpected reply %r" % line[:40])


def call(host: str, port: int, *args: str, timeout: float = 30) -> Any:
    """One command over a fresh connection; its whole reply, parsed."""
    req = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(req)
        with s.makefile("rb") as f:
            return _read_reply(f)


def _free_ports(n: int) -> list[int]:
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


def _binary(name: str, env: str) -> str:
    b = os.environ.get(env) or shutil.which(name)
    if not b:
        raise SystemExit("%s not found: install it, or pass --url" % name)
    return b


def _hostports(url: str) -> list[tuple[str, int]]:
    """The host:port pairs of a redis://, redis-cluster:// or plain h:p,h:p URL."""
    rest = url.split("://", 1)[-1].rsplit("@", 1)[-1].split("/", 1)[0]
    out = []
    for part in rest.split(","):
        host, _, port = part.strip().rpartition(":")
        out.append((host or "127.0.0.1", int(port or 6379)))
    return out


def _wait(what: str, ok, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ok():
                return
        except (OSError, RuntimeError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit("%s in %.0f s" % (what, timeout))
        time.sleep(0.05)


class Target:
    """One topology the peers run against: `masters` (host, port) hold the data."""

    topology = ""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.dirs: list[str] = []
        self.masters: list[tuple[str, int]] = []

    @property
    def host(self) -> str:
        return self.masters[0][0]

    @property
    def port(self) -> int:
        return self.masters[0][1]

    @property
    def startup_nodes(self) -> str:
        """Every master as "host:port,host:port" (LMCache's valkey adapter's form)."""
        return ",".join("%s:%d" % hp for hp in self.masters)

    @property
    def url(self) -> str:
        raise NotImplementedError

    def _start(self, port: int, *extra: str) -> None:
        d = tempfile.mkdtemp(prefix="slotline-bench-")
        self.dirs.append(d)
        self.procs.append(subprocess.Popen(
            [_binary("redis-server", "SLOTLINE_REDIS_SERVER"), "--port", str(port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", d, *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait("redis-server on port %d did not start" % port,
              lambda: call("127.0.0.1", port, "PING", timeout=2) == "PONG", 10)

    def cpu_seconds(self) -> Optional[float]:
        """User + system CPU seconds the servers the bench started have used (/proc,
        clock ticks), or None when it started none."""
        if not self.procs:
            return None
        total = 0.0
        for p in self.procs:
            try:
                with open("/proc/%d/stat" % p.pid) as f:
                    # Fields after the command name; utime and stime are 14 and 15.
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                return None
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def flush(self) -> None:
        """Empties every master and returns the freed pages to the system."""
        for host, port in self.masters:
            reply = call(host, port, "FLUSHALL")
            if reply != "OK":
                raise RuntimeError("FLUSHALL on %s:%d answered %r" % (host, port, reply))
            try:
                call(host, port, "MEMORY", "PURGE")
            except RuntimeError:
                pass  # an allocator without purge (libc malloc): nothing to hand back

    def dbsize(self) -> int:
        """Keys on all masters together."""
        return sum(int(call(h, p, "DBSIZE")) for h, p in self.masters)

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        self.procs = []
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.dirs = []


class Standalone(Target):
    """A standalone redis-server: started on a free port, or the one at `url`."""

    topology = "standalone"

    def __init__(self, url: Optional[str] = None) -> None:
        super().__init__()
        if url:
            self.masters = _hostports(url)[:1]
            return
        port = _free_ports(1)[0]
        self.masters = [("127.0.0.1", port)]
        try:
            self._start(port)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return "redis://%s:%d" % (self.host, self.port)


class Cluster(Target):
    """A Redis Cluster: three masters without replicas started on free ports (bus
    ports free too), or the cluster one of `url`'s seeds belongs to (its masters
    found with CLUSTER NODES)."""

    topology = "cluster"
    MASTERS = 3

    def __init__(self, url: Optional[str] = None) -> None:
        super().__init__()
        if url:
            seed = _hostports(url)[0]
            self.masters = self._masters_of(seed)
            return
        ports = _free_ports(2 * self.MASTERS)
        self.masters = [("127.0.0.1", p) for p in ports[:self.MASTERS]]
        try:
            for i, (_, port) in enumerate(self.masters):
                self._start(port, "--cluster-enabled", "yes", "--cluster-port",
                            str(ports[self.MASTERS + i]), "--cluster-config-file",
                            "nodes.conf")
            subprocess.run(
                [_binary("redis-cli", "SLOTLINE_REDIS_CLI"), "--cluster", "create",
                 *["%s:%d" % hp for hp in self.masters], "--cluster-replicas", "0",
                 "--cluster-yes"],
                check=True, capture_output=True, text=True, timeout=60)
            _wait("the bench's cluster did not reach cluster_state:ok", lambda: all(
                b"cluster_state:ok" in call(h, p, "CLUSTER", "INFO")
                for h, p in self.masters))
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _masters_of(seed: tuple[str, int]) -> list[tuple[str, int]]:
        nodes = call(seed[0], seed[1], "CLUSTER", "NODES").decode()
        out = []
        for line in nodes.splitlines():
            f = line.split()
            # id addr flags master-id ping pong epoch link-state slot...
            if len(f) > 8 and "master" in f[2].split(","):
                host, _, port = f[1].split("@")[0].rpartition(":")
                out.append((host or seed[0], int(port)))
        if not out:
            raise SystemExit("no master with slots in %s:%d's CLUSTER NODES" % seed)
        return sorted(out)

    @property
    def url(self) -> str:
        return "redis-cluster://" + self.startup_nodes


def open_target(topology: str, url: Optional[str]) -> Target:
    return Cluster(url) if topology == "cluster" else Standalone(url)


def topology_of_url(url: str) -> str:
    """cluster for redis-cluster:// or several seeds, else standalone."""
    return "cluster" if url.startswith("redis-cluster://") or len(_hostports(url)) > 1 \
        else "standalone"
