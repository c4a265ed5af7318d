"""Fault scenarios on canary memory, each run in a subprocess by
``test_lent_memory.py`` (``canary.run_scenario``): a late write into memory slotline
had handed back kills the subprocess (SIGSEGV), which fails the test.

Each takes the redis-server port as its argument, prints ``ok`` and exits 0 when the
contract held. Values are 4 KiB: the engine copies such values out of its receive
buffer (a shard-thread write, which faults on a sealed page). Every wait is bounded.
"""

from __future__ import annotations

import gc
import select
import threading
import time

import redis

from canary import Canary, gil_ticks
from faultproxy import FaultProxy
from slotline import Client, config_text

SIZE = 4096


def _client(url: str, timeout_ms: int, get_ms: int | None = None) -> Client:
    # Every class gets the whole timeout unless `get_ms` shortens the GET deadline
    # (the connection is still only declared stalled after `timeout_ms`).
    d = {k: timeout_ms for k in ("peek_ms", "prefetch_ms", "get_ms", "put_ms")}
    if get_ms is not None:
        d["get_ms"] = get_ms
    return Client(config_text({"url": url, "cores": 1, "request_timeout_ms": timeout_ms,
                               "deadlines": d}, "raw"))


def _drain_any(c: Client, timeout: float = 30.0) -> list:
    """The next completions (at least one), waiting on the eventfd at most `timeout`."""
    poller = select.poll()
    poller.register(c.event_fd(), select.POLLIN)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        poller.poll(100)
        got = c.drain_completions()
        if got:
            return got
    raise AssertionError("no completion within %.0f s" % timeout)


def _bounded(cond, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.002)


def _join(t: threading.Thread, what: str, timeout: float = 40.0) -> None:
    t.join(timeout)
    assert not t.is_alive(), what + " did not return"


def close_during_submit(port: str) -> None:
    """close() runs after a get reached the engine and before its completion side
    started: the request must still be waited for, and its completion published only
    once the engine handed the buffer back."""
    r = redis.Redis(port=int(port))
    val = bytes([0x5A]) * SIZE
    r.set("cds", val)
    c = _client("redis://127.0.0.1:%s" % port, 10000)
    assert c.exists_now(["cds"]) == [True]  # connected
    can = Canary(SIZE)
    # The server answers nothing for 1.5 s: the get stays in flight through the window.
    r.execute_command("CLIENT", "PAUSE", "1500", "ALL")
    c._debug_pause_next_submit()
    sub = threading.Thread(target=c.submit_batch_get, args=(["cds"], [can.view]))
    sub.start()
    assert c._debug_wait_paused(20), "the submission never reached the pause point"
    closer = threading.Thread(target=c.close)
    closer.start()
    _bounded(c._debug_closing, "close() to begin")
    c._debug_release()
    done = _drain_any(c)
    snap = can.snapshot()
    can.seal()
    # Let everything run to its end: the submitting thread and close() return (the
    # engine stopped), and the server answers again.
    _join(sub, "the submission")
    _join(closer, "close()")
    assert r.ping()
    assert len(done) == 1, done
    _, ok, err, flags = done[0]
    assert ok and list(flags) == [True], (ok, err, flags)
    assert snap == val, "the value did not land before the completion"
    print("ok")


def _held_get(port: str, timeout_ms: int, get_ms: int | None = None):
    """A get through a proxy that holds the value after its first 1000 bytes."""
    r = redis.Redis(port=int(port))
    val = bytes([0x3C]) * SIZE
    r.set("held", val)
    proxy = FaultProxy(int(port))
    c = _client(proxy.url, timeout_ms, get_ms)
    assert c.exists_now(["held"]) == [True]  # connected through the proxy
    can = Canary(SIZE)
    proxy.hold_after(1000)
    c.submit_batch_get(["held"], [can.view])
    assert proxy.wait_held(20), "the proxy never held the value"
    return r, val, proxy, c, can


def _reads_again(c: Client, val: bytes, tries: int = 20) -> None:
    """A later get on the same client lands whole (the connection was recovered and
    the late bytes went nowhere)."""
    for _ in range(tries):
        fresh = Canary(SIZE, fill=0)
        c.submit_batch_get(["held"], [fresh.view])
        _, ok, err, flags = _drain_any(c)[0]
        if ok and list(flags) == [True]:
            assert fresh.snapshot() == val
            return
    raise AssertionError("the client never read again: %s" % err)


def timeout_mid_value(port: str) -> None:
    """The value stalls mid-transfer past the GET deadline while the connection is
    still alive (it is declared stalled only after the 10 s request timeout): the get
    fails, and its completion comes only once the buffer is out of the connection's
    hands; the rest of the value, released after the deadline, never lands in it."""
    r, val, proxy, c, can = _held_get(port, 10000, get_ms=1000)
    try:
        done: list = []

        def expired() -> bool:
            # Drain as we wait: a completion must be sealed the moment it is seen.
            got = c.drain_completions()
            if got:
                can.seal()
                done.extend(got)
            return bool(done) or c.stats()["errors"].get("timeout", 0) > 0

        _bounded(expired, "the GET deadline to pass", 30)
        proxy.resume()  # the rest of the value arrives now
        if not done:
            done.extend(_drain_any(c))
            can.seal()
        _, ok, err, _ = done[0]
        assert not ok and "tim" in err.lower(), err
        _reads_again(c, val)
        c.close()
    finally:
        proxy.close()
    print("ok")


def killed_mid_value(port: str) -> None:
    """The connection is reset mid-value: the get fails, the buffer is never written
    after its completion, and the client reads again on a new connection."""
    r, val, proxy, c, can = _held_get(port, 10000)
    try:
        proxy.cut()
        _, ok, err, _ = _drain_any(c)[0]
        can.seal()
        assert not ok, "a get cut mid-value succeeded"
        proxy.resume()
        _reads_again(c, val)
        c.close()
    finally:
        proxy.close()
    print("ok")


def drop_in_flight(port: str) -> None:
    """The client is collected (no close()) with gets stalled mid-value: the drop
    returns within the bound, without holding the GIL, and the buffers, sealed right
    after, are never written again."""
    r, val, proxy, c, can = _held_get(port, 1000)
    more = [Canary(SIZE) for _ in range(3)]
    for m in more:
        c.submit_batch_get(["held"], [m.view])
    try:
        with gil_ticks() as g:
            del c
            gc.collect()
        for x in [can, *more]:
            x.seal()
        proxy.resume()
        # A new client on the same server: its read completes after the old
        # connection's late bytes were sent.
        c2 = _client(proxy.url, 10000)
        _reads_again(c2, val)
        c2.close()
    finally:
        proxy.close()
    took, ran = g["took"], g["ran"]
    assert ran >= 5, "Python threads did not run while the client dropped (%d ticks)" % ran
    assert took > 0.3, "the drop did not wait for the stalled gets (%.2f s)" % took
    assert took < 1.0 + 7.0, "dropping the client took %.1f s" % took
    print("ok")
