"""The native plug-in driven the way LMCache 0.5.6's NativeConnectorL2Adapter drives it:
a demux thread polls the eventfd with select.poll and calls drain_completions outside
the adapter lock; submits happen under the lock, from other threads."""

from __future__ import annotations

import gc
import json
import os
import select
import threading
import time

import pytest

from helpers import Driver, loaded
from slotline import config_text
from slotline.native_plugin import SlotlineNativePlugin


@pytest.fixture
def driver(redis_server):
    d = Driver(SlotlineNativePlugin(url=redis_server.url, cores=1, request_timeout_ms=3000))
    yield d
    d.close()


def test_plugin_defaults_in_the_engine_config():
    """A plug-in's engine: a few shards and 1 MiB in flight per connection, unless
    the adapter parameters say otherwise."""
    extra = json.loads(config_text({"url": "redis://127.0.0.1:1"}, "raw"))["extra_config"]
    assert extra["max_inflight_bytes"] == 1 << 20
    assert 1 <= extra["cores"] <= 4
    assert extra["key_layout"] == "raw"
    extra = json.loads(config_text({"url": "redis://127.0.0.1:1", "cores": 3,
                                    "max_inflight_bytes": 4 << 20}, "raw"))["extra_config"]
    assert (extra["cores"], extra["max_inflight_bytes"]) == (3, 4 << 20)


def test_set_get_exists_delete(driver, rpy):
    keys = ["model@%08x@0@%x" % (0, i) for i in range(8)]
    data = [bytes([i]) * 4096 for i in range(8)]
    op, ok, err, _ = driver.run("set", keys, [memoryview(d) for d in data])
    assert ok, err
    # Stored under the raw key (what LMCache's native clients write).
    assert rpy.get(keys[3]) == data[3]

    bufs = [bytearray(4096) for _ in keys]
    op, ok, err, flags = driver.run("get", keys, [memoryview(b) for b in bufs])
    assert ok, err
    assert loaded(len(keys), flags) == [True] * 8
    assert [bytes(b) for b in bufs] == data

    op, ok, err, flags = driver.run("exists", keys[:2] + ["nope"])
    assert ok and list(flags) == [True, True, False]

    op, ok, err, flags = driver.run("delete", [keys[0], "nope"])
    assert ok and list(flags) == [True, False]
    assert rpy.get(keys[0]) is None
    assert driver.unknown == 0


def test_ctypes_buffers_with_lmcache_format(driver):
    """LMCache hands over memoryviews of ctypes c_ubyte arrays: format '<B'."""
    import ctypes

    src = (ctypes.c_ubyte * 65536).from_buffer(bytearray(os.urandom(65536)))
    dst = (ctypes.c_ubyte * 65536)()
    assert memoryview(dst).format == "<B"
    _, ok, err, _ = driver.run("set", ["ct"], [memoryview(src)])
    assert ok, err
    _, ok, err, flags = driver.run("get", ["ct"], [memoryview(dst)])
    assert ok and loaded(1, flags) == [True]
    assert bytes(dst) == bytes(src)


def test_missing_key_is_a_prompt_miss(driver):
    buf = bytearray(b"\xaa" * 1024)
    t0 = time.monotonic()
    _, ok, err, flags = driver.run("get", ["never-stored"], [memoryview(buf)], timeout=5)
    assert time.monotonic() - t0 < 2.0
    assert ok and list(flags) == [False]
    assert buf == bytearray(b"\xaa" * 1024), "a miss must not touch the buffer"


def test_wrong_length_is_a_miss(driver, rpy):
    rpy.set("short", b"x" * 100)
    rpy.set("exact", b"y" * 128)
    bufs = [bytearray(128), bytearray(128)]
    _, ok, err, flags = driver.run("get", ["short", "exact"], [memoryview(b) for b in bufs])
    assert ok and list(flags) == [False, True]
    assert bufs[0] == bytearray(128)
    assert bytes(bufs[1]) == b"y" * 128


def test_eventfd_is_reset_by_drain(redis_server):
    p = SlotlineNativePlugin(url=redis_server.url, cores=1)
    try:
        fid = p.submit_batch_exists(["a"])
        poller = select.poll()
        poller.register(p.event_fd(), select.POLLIN)
        assert poller.poll(5000), "eventfd never became readable"
        got = []
        deadline = time.time() + 5
        while not got and time.time() < deadline:
            got = [c for c in p.drain_completions() if c[0] == fid]
        assert got and got[0][1]
        assert not poller.poll(0), "drain_completions must reset the eventfd"
    finally:
        p.close()


def test_bad_buffers_fail_the_request_not_the_caller(driver):
    ro = memoryview(b"read-only")  # a read needs a writable buffer
    _, ok, err, _ = driver.run("get", ["k"], [ro])
    assert not ok and "read-only" in err
    _, ok, err, _ = driver.run("get", ["k", "l"], [memoryview(bytearray(4))])
    assert not ok


def test_submits_from_many_threads(driver):
    # A failed assert inside a thread is only a warning to pytest: each worker records
    # its failure (or its completion) and the main thread asserts on them.
    failures: list[str] = []
    finished: list[int] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        try:
            for i in range(50):
                k = "t%d-%d" % (t, i)
                v = bytes([t]) * 2048
                _, ok, err, _ = driver.run("set", [k], [memoryview(v)])
                assert ok, "set %s: %s" % (k, err)
                b = bytearray(2048)
                _, ok, err, flags = driver.run("get", [k], [memoryview(b)])
                assert ok and loaded(1, flags) == [True], "get %s: %s %s" % (k, err, flags)
                assert bytes(b) == v, "get %s: wrong bytes" % k
        except BaseException as e:  # noqa: BLE001 - reported in the main thread
            with lock:
                failures.append("worker %d: %r" % (t, e))
        else:
            with lock:
                finished.append(t)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    assert not failures, failures
    assert sorted(finished) == [0, 1, 2, 3]
    assert driver.unknown == 0
    assert driver.error is None, driver.error


def test_server_killed_mid_batch_then_back(fresh_server):
    d = Driver(SlotlineNativePlugin(url=fresh_server.url, cores=1,
                                    request_timeout_ms=2000, connect_timeout_ms=500))
    try:
        keys = ["big%d" % i for i in range(16)]
        vals = [os.urandom(1 << 20) for _ in keys]
        _, ok, err, _ = d.run("set", keys, [memoryview(v) for v in vals])
        assert ok, err
        # Many reads in flight, then the server dies under them.
        fids = [d.submit("get", keys, [memoryview(bytearray(1 << 20)) for _ in keys])
                for _ in range(8)]
        fresh_server.kill()
        t0 = time.monotonic()
        outcomes = [d.wait(f, timeout=30) for f in fids]
        assert time.monotonic() - t0 < 25, "completions must not hang"
        # Some may have finished before the kill; at least the later ones failed.
        assert any(not ok for _, ok, _, _ in outcomes)
        for _, ok, err, _ in outcomes:
            assert ok or err
        # While it is down: a failed completion, promptly.
        _, ok, err, _ = d.run("exists", ["x"], timeout=30)
        assert not ok and err

        fresh_server.start()  # same port, empty
        deadline = time.time() + 20
        while True:
            _, ok, err, _ = d.run("set", ["after"], [memoryview(b"z" * 4096)], timeout=30)
            if ok or time.time() > deadline:
                break
            time.sleep(0.2)
        assert ok, "the plug-in must work again once the server is back: %s" % err
        b = bytearray(4096)
        _, ok, err, flags = d.run("get", ["after"], [memoryview(b)])
        assert ok and loaded(1, flags) == [True] and bytes(b) == b"z" * 4096
    finally:
        d.close()


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_10000_batches_flat_memory(driver):
    keys = ["m%d" % i for i in range(4)]
    vals = [memoryview(bytes([i]) * 2048) for i in range(4)]
    # One set of destinations per read in flight: reads never share memory.
    bufs = [[memoryview(bytearray(2048)) for _ in keys] for _ in range(5)]
    _, ok, err, _ = driver.run("set", keys, vals)
    assert ok, err

    def batches(n: int) -> None:
        # Several in flight at once, as LMCache does.
        for _ in range(n // 10):
            fids = [driver.submit("get", keys, bufs[j]) for j in range(5)]
            fids += [driver.submit("exists", keys) for _ in range(5)]
            for f in fids:
                _, ok, err, _ = driver.wait(f)
                assert ok, err

    batches(2000)  # warm up allocator pools
    gc.collect()
    before = rss_kib()
    batches(10000)
    gc.collect()
    grown = rss_kib() - before
    assert grown < 16 * 1024, "RSS grew by %d KiB over 10,000 batches" % grown
