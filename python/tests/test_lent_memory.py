"""The lent-memory contract from Python (issue 15): once a completion is drained (or
the client closed or collected) slotline never touches its buffers again, every wait
is bounded, overlapping writable lends are refused, and the eventfd handed out cannot
be turned against another file.

The fault scenarios run on canary memory in a subprocess (``canary_scenarios.py``): a
late write crashes it, which fails the test here."""

from __future__ import annotations

import gc
import os
import select
import threading
import time

import pytest

from canary import Canary, gil_ticks, run_scenario
from helpers import poll_until, wait_for
from slotline import Client, config_text


def client(url: str, timeout_ms: int = 10000) -> Client:
    # Every class gets the whole timeout (no shorter per-class deadline).
    d = {k: timeout_ms for k in ("peek_ms", "prefetch_ms", "get_ms", "put_ms")}
    return Client(config_text({"url": url, "cores": 1, "request_timeout_ms": timeout_ms,
                               "deadlines": d}, "raw"))


@pytest.fixture
def c(redis_server):
    cl = client(redis_server.url)
    yield cl
    cl.close()


# ----- canary scenarios (subprocess) -----

@pytest.mark.parametrize("name", ["close_during_submit", "timeout_mid_value",
                                  "killed_mid_value", "drop_in_flight"])
def test_canary_scenario(fresh_server, name):
    run_scenario(name, str(fresh_server.port))


# ----- aliasing -----

def refused(c: Client, fn, *args) -> str:
    """Calls a submit that must be refused before any I/O; returns the message."""
    sent, pending = c.stats()["frames_sent"], c.pending()
    with pytest.raises(ValueError) as e:
        fn(*args)
    assert c.stats()["frames_sent"] == sent, "a refused request reached the server"
    assert c.pending() == pending, "a refused request was counted"
    return str(e.value)


def test_the_same_buffer_twice_in_one_get_is_refused(c, rpy):
    rpy.set("a1", b"x" * 64)
    rpy.set("a2", b"y" * 64)
    buf = bytearray(b"\x11" * 64)
    msg = refused(c, c.submit_batch_get, ["a1", "a2"], [buf, buf])
    assert "buffer 1" in msg and "buffer 0 of the same request" in msg, msg
    assert buf == bytearray(b"\x11" * 64), "a refused get wrote its buffer"
    msg = refused(c, c.submit_get_into, ["a1", "a2"], [buf, memoryview(buf)])
    # Refused lends are not left lent: the same buffer reads fine now.
    _, ok, err, flags = wait_for(c, c.submit_batch_get(["a1"], [buf]))
    assert ok and list(flags) == [True] and bytes(buf) == b"x" * 64, err


def test_overlapping_slices_of_one_buffer_are_refused(c, rpy):
    rpy.set("s1", b"p" * 100)
    rpy.set("s2", b"q" * 100)
    pool = bytearray(b"\x22" * 300)
    mv = memoryview(pool)
    msg = refused(c, c.submit_batch_get, ["s1", "s2"], [mv[0:100], mv[50:150]])
    assert "overlaps" in msg and "written" in msg, msg
    assert pool == bytearray(b"\x22" * 300)
    # Adjacent slices do not overlap.
    _, ok, err, flags = wait_for(c, c.submit_batch_get(["s1", "s2"], [mv[0:100], mv[100:200]]))
    assert ok and list(flags) == [True, True], err
    assert bytes(pool[:200]) == b"p" * 100 + b"q" * 100
    # Writes from overlapping memory are fine (nothing is written into it).
    _, ok, err, _ = wait_for(c, c.submit_batch_set(["s3", "s4"], [mv[0:100], mv[50:150]]))
    assert ok, err
    assert rpy.get("s4") == bytes(pool[50:150])


def test_a_get_and_a_put_on_the_same_memory_in_flight(redis_server, rpy):
    rpy.set("g", b"g" * 4096)
    c = client(redis_server.url)
    try:
        assert c.exists_now(["g"]) == [True]
        buf = bytearray(4096)
        # The server answers nothing for a while: the get stays in flight.
        rpy.execute_command("CLIENT", "PAUSE", "1000", "ALL")
        sent = c.stats()["frames_sent"]
        fid = c.submit_batch_get(["g"], [buf])
        # Sent (so that `refused` sees no frame of its own), not answered.
        poll_until(lambda: c.stats()["frames_sent"] > sent)
        msg = refused(c, c.submit_batch_set, ["p"], [memoryview(buf)[100:200]])
        assert "in flight" in msg and "written" in msg, msg
        # And a put in flight refuses a get into its memory, not another put.
        src = bytearray(b"s" * 4096)
        sent = c.stats()["frames_sent"]
        pfid = c.submit_batch_set(["p2"], [src])
        poll_until(lambda: c.stats()["frames_sent"] > sent)
        refused(c, c.submit_batch_get, ["g"], [memoryview(src)[:4096]])
        pfid2 = c.submit_batch_set(["p3"], [memoryview(src)[10:20]])
        got = {}
        deadline = time.monotonic() + 30
        while len(got) < 3 and time.monotonic() < deadline:
            for d in c.drain_completions():
                got[d[0]] = d
            time.sleep(0.01)
        assert set(got) == {fid, pfid, pfid2}, got
        assert all(d[1] for d in got.values()), got
        assert bytes(buf) == b"g" * 4096
        assert rpy.get("p2") == b"s" * 4096 and rpy.get("p") is None
    finally:
        c.close()


def test_copy_into_refuses_memory_a_get_is_filling(redis_server, rpy):
    d = {k: 10000 for k in ("peek_ms", "prefetch_ms", "get_ms", "put_ms")}
    c = Client(config_text({"url": redis_server.url, "cores": 1, "deadlines": d}, "lmcache"))
    try:
        fid = c.submit_put(["f"], [b"F" * 256], [None])
        assert wait_for(c, fid)[1]
        _, ok, err, fetched = wait_for(c, c.submit_fetch(["f"]))
        assert ok, err
        dst = bytearray(256)
        rpy.execute_command("CLIENT", "PAUSE", "1000", "ALL")
        gfid = c.submit_get_into(["f"], [dst])
        with pytest.raises(ValueError):
            fetched.copy_into(0, dst)
        assert wait_for(c, gfid)[1]
        assert fetched.copy_into(0, dst) and bytes(dst) == b"F" * 256
    finally:
        c.close()


# ----- bounds and the GIL -----

def test_close_releases_the_gil_and_returns_within_the_bound(fresh_server):
    redis = pytest.importorskip("redis")
    c = client(fresh_server.url, timeout_ms=1000)
    assert c.exists_now(["x"]) == [False]
    r = redis.Redis(port=fresh_server.port)
    r.set("k", b"k" * 4096)
    r.execute_command("CLIENT", "PAUSE", "3000", "ALL")
    bufs = [bytearray(4096) for _ in range(3)]
    for b in bufs:
        c.submit_batch_get(["k"], [b])
    with gil_ticks() as g:
        c.close()
    took, ran = g["took"], g["ran"]
    assert ran >= 5, "Python threads did not run during close (%d ticks)" % ran
    assert took > 0.3, "close did not wait for the stalled gets"
    assert took < 1.0 + 7.0, "close took %.1f s" % took
    done = c.drain_completions()
    assert len(done) == 3 and not any(d[1] for d in done), done
    assert c.pending() == 0
    r.close()


# ----- the eventfd -----

def test_a_closed_and_reused_event_fd_is_never_written_nor_closed(redis_server):
    c = client(redis_server.url)
    fd = c.event_fd()
    assert c.event_fd() == fd, "event_fd must be the same number every call"
    rd, wr = os.pipe()
    os.set_blocking(rd, False)
    # The caller closes the number and it is reused (dup2: closed and reused at once).
    os.dup2(wr, fd)
    try:
        for _ in range(3):
            fid = c.submit_batch_exists(["e"])
            poll_until(lambda: [d for d in c.drain_completions() if d[0] == fid])
        c.close()
        del c
        gc.collect()
        with pytest.raises(BlockingIOError):
            os.read(rd, 64)  # the engine wrote nothing into the reused number
        os.fstat(fd)  # ... and did not close it
        os.write(fd, b"still mine")
        assert os.read(rd, 64) == b"still mine"
    finally:
        for x in (fd, rd, wr):
            os.close(x)


def test_event_fd_stays_pollable_after_close(redis_server):
    c = client(redis_server.url)
    fid = c.submit_batch_exists(["e"])
    c.close()
    p = select.poll()
    p.register(c.event_fd(), select.POLLIN)
    assert p.poll(5000), "the last completion was not announced"
    assert [d[0] for d in c.drain_completions()] == [fid]
