"""The remote connector through LMCache 0.5.6's own classes: its plug-in loader
(`remote_storage_plugins` -> CreateConnector) and the whole `RemoteBackend` built by
`CreateStorageBackends`, with MemoryObjs from its LocalCPUBackend; byte interop with
what LMCache's `redis://` connector stores. Skipped when lmcache is not importable."""

from __future__ import annotations

import threading
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lmcache")

from lmcache.v1.protocol import RemoteMetadata  # noqa: E402
from lmcache_setup import (  # noqa: E402
    backend_setup,
    connector_of,
    connector_setup,
    filled,
    lm_key as key,
)


@pytest.fixture
def setup(redis_server):
    with connector_setup(redis_server.url) as s:
        yield s


def test_put_get_prefix_contains(setup, rpy):
    conn, cpu, run = setup
    keys = [key(i) for i in range(4)]
    objs = [filled(conn, cpu, i + 1) for i in range(4)]
    run(conn.batched_put(keys[:3], objs[:3]))
    for o in objs:
        o.ref_count_down()

    # Stored in LMCache's redis:// layout, readable by its own rules.
    ks = keys[1].to_string()
    raw_meta = rpy.get(ks + "metadata")
    payload = rpy.get(ks + "kv_bytes")
    m = RemoteMetadata.deserialize(memoryview(raw_meta))
    assert m.length == len(payload) == connector_of(conn).full_chunk_size_bytes

    assert run(conn.batched_async_contains("l1", keys)) == 3
    assert conn.batched_contains(keys) == 3
    assert run(conn.exists(keys[0])) and not run(conn.exists(keys[3]))
    assert conn.exists_sync(keys[2]) and not conn.exists_sync(keys[3])

    got = run(conn.batched_get(keys))
    assert got[3] is None
    for i in range(3):
        assert torch.equal(got[i].tensor, torch.full_like(got[i].tensor, i + 1))
        got[i].ref_count_down()

    pre = run(conn.batched_get_non_blocking("l2", [keys[0], keys[3], keys[1]]))
    assert len(pre) == 1
    pre[0].ref_count_down()


def test_reads_what_lmcache_redis_connector_wrote(setup, rpy):
    conn, cpu, run = setup
    obj = filled(conn, cpu, 9)
    ks = key(42).to_string()
    # What RedisConnector._put writes: payload, then metadata.
    rpy.set(ks + "kv_bytes", bytes(obj.byte_array))
    rpy.set(ks + "metadata", RemoteMetadata(len(obj.byte_array), obj.get_shapes(),
                                            obj.get_dtypes(), obj.get_memory_format()).serialize())
    obj.ref_count_down()
    got = run(conn.get(key(42)))
    assert got is not None and torch.equal(got.tensor, torch.full_like(got.tensor, 9))
    got.ref_count_down()


def allocated(cpu) -> int:
    """Bytes LMCache's pinned CPU allocator has handed out."""
    return cpu.memory_allocator.pin_allocator.total_allocated_size


class _Stalling:
    """The connector's native client, with the server paused (CLIENT PAUSE ALL)
    right before each payload read is submitted: the read then stays in flight."""

    def __init__(self, inner, rpy, pause_ms: int) -> None:
        self._inner, self._rpy, self._ms = inner, rpy, pause_ms
        self.submitted = threading.Event()

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def submit_get_into(self, keys, views):
        self._rpy.execute_command("CLIENT", "PAUSE", str(self._ms), "ALL")
        fid = self._inner.submit_get_into(keys, views)
        self.submitted.set()
        return fid


class _Recording:
    """LMCache's LocalCPUBackend, remembering every MemoryObj it allocates."""

    def __init__(self, cpu) -> None:
        self._cpu = cpu
        self.objs: list = []

    def __getattr__(self, name):
        return getattr(self._cpu, name)

    def allocate(self, *args, **kwargs):
        o = self._cpu.allocate(*args, **kwargs)
        self.objs.append(o)
        return o


def test_cancelled_read_is_safe(setup, rpy):
    """A read cancelled while really in flight (the server stalled, the payload read
    submitted): its MemoryObjs stay referenced until the engine hands the buffers
    back, then every reference goes and LMCache's allocator is back to its baseline.
    (LMCache's pool cannot be sealed page by page; the engine side of "never touched
    after it is handed back" is what test_lent_memory.py proves on canary memory.)"""
    conn, cpu, run = setup
    inner = connector_of(conn)
    keys = [key(100 + i) for i in range(4)]
    objs = [filled(conn, cpu, 3) for _ in keys]
    run(conn.batched_put(keys, objs))
    for o in objs:
        o.ref_count_down()
    base = allocated(cpu)

    native = inner._client
    stall = _Stalling(native, rpy, 1500)
    rec = _Recording(inner.local_cpu_backend)
    inner._client, inner.local_cpu_backend = stall, rec
    box: dict = {}
    finished = threading.Event()

    def start() -> None:
        t = inner.loop.create_task(conn.batched_get_non_blocking("c", keys))
        t.add_done_callback(lambda _t: finished.set())
        box["task"] = t

    try:
        inner.loop.call_soon_threadsafe(start)
        assert stall.submitted.wait(20), "the payload read was never submitted"
        assert native.pending() == 1, "the read is not in flight"
        inner.loop.call_soon_threadsafe(box["task"].cancel)
        assert finished.wait(20), "the cancelled read never ended"
        assert box["task"].cancelled(), "the read finished before it was cancelled"
        # Cancelled, but the engine still holds the buffers: owner + loan references.
        assert len(rec.objs) == len(keys)
        assert native.pending() == 1, "the server answered before the cancel"
        assert [o.get_ref_count() for o in rec.objs] == [2] * len(keys)
        assert allocated(cpu) > base
        # The server answers, the completion is drained: every reference goes.
        deadline = time.monotonic() + 20
        while native.pending() or allocated(cpu) != base:
            assert time.monotonic() < deadline, (
                "cancelled read not released: pending %d, allocated %d (baseline %d)"
                % (native.pending(), allocated(cpu), base))
            time.sleep(0.01)
        assert [o.get_ref_count() for o in rec.objs] == [0] * len(keys)
    finally:
        inner._client, inner.local_cpu_backend = native, rec._cpu

    # The connector still works, and nothing leaked into later reads.
    got = run(conn.batched_get_non_blocking("c2", keys))
    assert len(got) == 4
    for g in got:
        assert torch.equal(g.tensor, torch.full_like(g.tensor, 3))
        g.ref_count_down()
    assert allocated(cpu) == base


def put_and_wait(remote, keys, objs, timeout: float = 20.0) -> None:
    """RemoteBackend.batched_submit_put_task runs the put on LMCache's loop and calls
    `on_complete_callback` once per key when it finished."""
    done = []
    ev = threading.Event()

    def on_done(k) -> None:
        done.append(k)
        if len(done) == len(keys):
            ev.set()

    remote.batched_submit_put_task(keys, objs, on_complete_callback=on_done)
    assert ev.wait(timeout), "RemoteBackend puts never finished"


def test_remote_backend_from_create_storage_backends(redis_server, rpy):
    with backend_setup(redis_server.url) as (remote, cpu, run):
        conn = remote.connection
        assert type(connector_of(conn)).__name__ == "SlotlineConnector"
        keys = [key(1000 + i) for i in range(6)]
        objs = [filled(conn, cpu, i + 1) for i in range(6)]
        # Keys 0..3 stored; 4 missing; 5 stored (after the gap).
        stored = [0, 1, 2, 3, 5]
        put_and_wait(remote, [keys[i] for i in stored], [objs[i] for i in stored])
        for o in objs:
            o.ref_count_down()
        assert remote.put_failed_count == 0
        assert rpy.exists(keys[5].to_string() + "kv_bytes") == 1

        # contains: per key, and the prefix count.
        assert remote.contains(keys[0]) and not remote.contains(keys[4])
        assert remote.batched_contains(keys) == 4
        assert run(remote.batched_async_contains("l1", keys)) == 4

        # get: blocking, per key and batched (a miss is None).
        one = remote.get_blocking(keys[2])
        assert one is not None and torch.equal(one.tensor, torch.full_like(one.tensor, 3))
        one.ref_count_down()
        assert remote.get_blocking(keys[4]) is None
        got = remote.batched_get_blocking(keys)
        assert got[4] is None
        for i in stored:
            assert torch.equal(got[i].tensor, torch.full_like(got[i].tensor, i + 1))
            got[i].ref_count_down()

        # Prefix semantics: stops at the first miss, even though key 5 exists.
        pre = run(remote.batched_get_non_blocking("l2", keys))
        assert len(pre) == 4
        for i, p in enumerate(pre):
            assert torch.equal(p.tensor, torch.full_like(p.tensor, i + 1))
            p.ref_count_down()
        assert run(remote.batched_get_non_blocking("l3", [keys[4], keys[0]])) == []


def test_remote_backend_single_puts(redis_server):
    """LMCache's per-key put path (submit_put_task -> connector.put)."""
    with backend_setup(redis_server.url) as (remote, cpu, run):
        k = key(2000)
        o = filled(remote.connection, cpu, 7)
        remote.submit_put_task(k, o).result(20)
        o.ref_count_down()
        got = remote.get_blocking(k)
        assert got is not None and torch.equal(got.tensor, torch.full_like(got.tensor, 7))
        got.ref_count_down()
