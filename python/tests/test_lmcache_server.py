"""LMCache's real ``lmcache server`` process (multiprocess mode, CPU, a small L1) with
slotline's native plug-in as its ``--l2-adapter``, against a real redis-server and a
real 6-node cluster: the server's HTTP API (``/status``) reports one L2 adapter, of
slotline's class, healthy; the plug-in holds connections to Redis; a store through
LMCache's own client (``lmcache bench server`` in CPU mode) reaches Redis; a signal, as a user
sends it (Ctrl-C, or ``kill``), stops the server within a few seconds, through
LMCache's shutdown (which closes the plug-in) and without a traceback.

Every wait is bounded; on a failure the server's log is printed. Skipped (as every
LMCache test here) when LMCache or torch cannot be imported."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import free_ports

pytest.importorskip("torch")
pytest.importorskip("lmcache")
if importlib.util.find_spec("lmcache.v1.multiprocess.http_server") is None:
    pytest.skip("could not import lmcache.v1.multiprocess.http_server: this LMCache "
                "has no multiprocess server", allow_module_level=True)

PLUGIN_CLASS = "SlotlineNativePlugin"
# Import and engine start of a loaded, shared 2-core machine: generous, and bounded.
START_TIMEOUT = 180.0
# "A few seconds" for the whole shutdown; the plug-in's own close() bound is the request
# timeout plus 2 s, and nothing is in flight here.
STOP_TIMEOUT = 15.0
# Tokens per chunk: the store below writes 2 chunks of a tiny KV cache.
CHUNK = 64
BENCH_TIMEOUT = 180.0


class LmcacheServer:
    """One ``lmcache server`` process on free loopback ports, its output in a log file."""

    def __init__(self, url: str, workdir: str) -> None:
        self.zmq_port, self.http_port, self.prom_port = free_ports(3)
        self.log_path = os.path.join(workdir, "lmcache-server.log")
        adapter = {
            "type": "native_plugin",
            "module_path": "slotline.native_plugin",
            "class_name": PLUGIN_CLASS,
            "adapter_params": {"url": url, "cores": 1},
            "max_capacity_gb": 0,
        }
        self.argv = [
            sys.executable, "-m", "lmcache.cli.main", "server",
            "--host", "127.0.0.1", "--port", str(self.zmq_port),
            "--http-host", "127.0.0.1", "--http-port", str(self.http_port),
            "--prometheus-port", str(self.prom_port),
            "--chunk-size", str(CHUNK), "--l1-size-gb", "0.05", "--eviction-policy", "LRU",
            "--l2-adapter", json.dumps(adapter),
        ]
        env = dict(os.environ, LMCACHE_DISABLE_BANNER="1", PYTHONUNBUFFERED="1")
        self.log = open(self.log_path, "wb")
        # cwd: a directory of its own, so nothing there shadows a module.
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=workdir, env=env)

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def fail(self, why: str) -> None:
        pytest.fail("%s\n----- lmcache server log (%s) -----\n%s" % (
            why, " ".join(self.argv), self.log_text()), pytrace=False)

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, dict]:
        url = "http://127.0.0.1:%d%s" % (self.http_port, path)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, {}

    def wait_status(self) -> dict:
        """``/status`` once the engine is up; fails if the process dies or time runs out."""
        deadline = time.monotonic() + START_TIMEOUT
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.fail("lmcache server exited (%d) before it served /status"
                          % self.proc.returncode)
            try:
                code, body = self.get("/status")
                if code == 200:
                    return body
                last = "HTTP %d" % code
            except (OSError, ValueError) as e:
                last = repr(e)
            time.sleep(0.2)
        self.fail("lmcache server did not serve /status in %.0f s (last: %s)"
                  % (START_TIMEOUT, last))
        raise AssertionError("unreachable")

    def stop(self, sig: int) -> tuple[int, float]:
        """Sends ``sig`` and waits at most STOP_TIMEOUT: (exit status, seconds taken)."""
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.fail("lmcache server did not exit within %.0f s of %s (hang in close?)"
                      % (STOP_TIMEOUT, signal.Signals(sig).name))
        return rc, time.monotonic() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()

    def store(self) -> str:
        """One request through LMCache's own client (``lmcache bench server``, CPU mode,
        KV cache in POSIX shared memory): 2 chunks looked up, stored, looked up and
        retrieved. Its output; fails on a non-zero exit or a time-out."""
        argv = [
            sys.executable, "-m", "lmcache.cli.main", "bench", "server",
            "--rpc-url", "tcp://127.0.0.1:%d" % self.zmq_port,
            "--url", "http://127.0.0.1:%d" % self.http_port,
            "--mode", "cpu", "--transfer-mode", "lmcache_driven",
            "--kvcache-shape-spec", "(2,64,16,2,32):float16:2",
            "--num-tokens", str(2 * CHUNK), "--start", "0", "--end", "1",
            "--interval", "0",
        ]
        env = dict(os.environ, LMCACHE_DISABLE_BANNER="1")
        try:
            r = subprocess.run(argv, capture_output=True, text=True, env=env,
                               cwd=os.path.dirname(self.log_path), timeout=BENCH_TIMEOUT)
        except subprocess.TimeoutExpired as e:
            self.fail("lmcache bench server did not finish in %.0f s:\n%s" % (
                BENCH_TIMEOUT, e.stdout))
        if r.returncode != 0 or "STORE: stored" not in r.stdout:
            self.fail("lmcache bench server (exit %d) did not store:\n%s\n%s" % (
                r.returncode, r.stdout, r.stderr))
        return r.stdout


def key_count(nodes) -> int:
    """Keys on these redis-servers (masters only where a cluster: replicas repeat)."""
    n = 0
    for node in nodes:
        if node.cmd("role").split()[0] == "master":
            n += int(node.cmd("dbsize").strip())
    return n


def client_count(nodes) -> int:
    """Connections open on these redis-servers, the redis-cli asking excluded."""
    n = 0
    for node in nodes:
        n += sum(1 for line in node.cmd("client", "list").splitlines()
                 if line.strip() and "cmd=client" not in line)
    return n


def run_server(url: str, nodes, tmp_path, sig: int) -> None:
    for node in nodes:  # a fresh cache: the store below must store, not find
        if node.cmd("role").split()[0] == "master":
            node.cmd("flushall")
    before = client_count(nodes)
    srv = LmcacheServer(url, str(tmp_path))
    try:
        status = srv.wait_status()
        sm = status.get("storage_manager", {})
        adapters = sm.get("l2_adapters", [])
        if [a.get("type") for a in adapters] != [PLUGIN_CLASS]:
            srv.fail("L2 adapters in /status are %r, not one %s" % (adapters, PLUGIN_CLASS))
        if adapters[0].get("is_healthy") is not True:
            srv.fail("slotline's L2 adapter is not healthy: %r" % adapters[0])
        if status.get("is_healthy") is not True:
            srv.fail("the server is not healthy: %r" % status)
        code, _ = srv.get("/healthcheck")
        if code != 200:
            srv.fail("/healthcheck answered HTTP %d" % code)
        if "Created native plugin L2 adapter: slotline.native_plugin.%s" % PLUGIN_CLASS \
                not in srv.log_text():
            srv.fail("the log does not name slotline's plug-in as the L2 adapter")
        after = client_count(nodes)
        if after <= before:
            srv.fail("no connection from the plug-in on the Redis server(s): %d before the "
                     "server started, %d with it up" % (before, after))

        # A store through the server reaches Redis: LMCache's L1 writes through to
        # slotline's plug-in in the background, so wait (bounded) for the keys.
        keys_before = key_count(nodes)
        srv.store()
        deadline = time.monotonic() + 30
        while key_count(nodes) < keys_before + 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        if key_count(nodes) < keys_before + 2:
            srv.fail("the 2 stored chunks did not reach Redis in 30 s (%d keys before, "
                     "%d after)" % (keys_before, key_count(nodes)))

        rc, took = srv.stop(sig)
        log = srv.log_text()
        # lmcache's CLI turns KeyboardInterrupt into 130; uvicorn re-raises SIGTERM.
        clean = {signal.SIGINT: (0, 130, -signal.SIGINT),
                 signal.SIGTERM: (0, -signal.SIGTERM, 128 + signal.SIGTERM)}[sig]
        if rc not in clean:
            srv.fail("lmcache server exited with %d after %s, not one of %r"
                     % (rc, signal.Signals(sig).name, clean))
        if "LMCache HTTP server stopped" not in log:
            srv.fail("the server's shutdown (engine close, plug-in close) did not finish")
        if "Traceback" in log:
            srv.fail("a traceback in the server's log")
        print("lmcache server stopped by %s in %.1f s (exit %d)"
              % (signal.Signals(sig).name, took, rc))
    finally:
        srv.kill()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_server_standalone(redis_server, tmp_path, sig):
    run_server(redis_server.url, [redis_server], tmp_path, sig)


def test_server_cluster(redis_cluster, tmp_path):
    run_server(redis_cluster.url, redis_cluster.nodes, tmp_path, signal.SIGTERM)
