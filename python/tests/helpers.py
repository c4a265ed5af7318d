"""Test helpers: driving a native plug-in the way LMCache 0.5.6's
NativeConnectorL2Adapter does, and waiting for one completion of a client."""

from __future__ import annotations

import select
import threading
import time


class Driver:
    """A stand-in for LMCache's adapter: lock, pending-op table, demux thread."""

    def __init__(self, plugin):
        self.p = plugin
        self.fd = int(plugin.event_fd())
        self.lock = threading.Lock()
        self.pending: dict[int, str] = {}
        self.results: dict[int, tuple] = {}
        self.events: dict[int, threading.Event] = {}
        self.unknown = 0
        self.stop = threading.Event()
        self.spins = 0
        # What ended the demux thread early, for the main thread to assert on.
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._demux_checked, daemon=True)
        self.thread.start()

    def _demux_checked(self) -> None:
        try:
            self._demux()
        except BaseException as e:  # noqa: BLE001 - reported by wait() and close()
            self.error = e

    def _demux(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while not self.stop.is_set():
            if not poller.poll(500):
                continue
            done = self.p.drain_completions()  # outside the lock, as LMCache does
            if not done:
                self.spins += 1
                continue
            with self.lock:
                for fid, ok, err, flags in done:
                    op = self.pending.pop(int(fid), None)
                    if op is None:
                        self.unknown += 1
                        continue
                    self.results[int(fid)] = (op, ok, err, flags)
                    self.events[int(fid)].set()

    def submit(self, op: str, *args) -> int:
        with self.lock:
            fid = int(getattr(self.p, "submit_batch_" + op)(*args))
            self.pending[fid] = op
            self.events[fid] = threading.Event()
        return fid

    def wait(self, fid: int, timeout: float = 20.0) -> tuple:
        ev = self.events[fid]
        assert ev.wait(timeout), "future %d never completed (demux error: %r)" % (
            fid, self.error)
        with self.lock:
            self.events.pop(fid)
            return self.results.pop(fid)

    def run(self, op: str, *args, timeout: float = 20.0) -> tuple:
        return self.wait(self.submit(op, *args), timeout)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.p.close()
        assert not self.thread.is_alive(), "the demux thread did not stop"
        assert self.error is None, "the demux thread failed: %r" % self.error


def loaded(n: int, flags) -> list[bool]:
    return [True] * n if flags is None else list(flags)


def wait_for(client, fid: int, timeout: float = 20.0):
    poller = select.poll()
    poller.register(client.event_fd(), select.POLLIN)
    deadline = time.time() + timeout
    while time.time() < deadline:
        poller.poll(200)
        for c in client.drain_completions():
            if c[0] == fid:
                return c
    raise AssertionError("future %d never completed" % fid)


def poll_until(fn, timeout: float = 20.0):
    """Calls ``fn`` every 5 ms until it returns something truthy; that is returned."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = fn()
        if r:
            return r
        time.sleep(0.005)
    raise AssertionError("no result in time")
