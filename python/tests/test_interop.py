"""Byte interop with redis-py reading and writing LMCache's formats (section 1-2 of the
format notes): the `raw` layout of the native clients and the `lmcache` layout
(K+"metadata" / K+"kv_bytes", RemoteMetadata as packed little-endian int32)."""

from __future__ import annotations

import os
import struct

import pytest

from helpers import wait_for
from slotline import Client, config_text
from slotline.native_plugin import SlotlineNativePlugin

# KV_2LTD, bfloat16, shape [2, 4, 16, 64]: 16384 bytes.
SHAPE = (2, 4, 16, 64)
LENGTH = 2 * 4 * 16 * 64 * 2


def lmcache_meta(length: int, fmt: int = 1, dtype: int = 3, shape=SHAPE) -> bytes:
    return struct.pack("<7i", length, fmt, dtype, *shape)


@pytest.fixture
def lm_client(redis_server):
    c = Client(config_text({"url": redis_server.url, "cores": 1}, default_layout="lmcache"))
    yield c
    c.close()


def test_raw_layout_both_ways(redis_server, rpy):
    p = SlotlineNativePlugin(url=redis_server.url, cores=1)
    try:
        # redis-py writes, slotline reads.
        v = os.urandom(LENGTH)
        rpy.set("m@00000000@0@abc", v)
        buf = bytearray(LENGTH)
        _, ok, err, flags = wait_for(p, p.submit_batch_get(["m@00000000@0@abc"], [memoryview(buf)]))
        assert ok and (flags is None or list(flags) == [True]) and bytes(buf) == v
        # slotline writes, redis-py reads: exactly the bytes, one key, nothing else.
        w = os.urandom(LENGTH)
        _, ok, err, _ = wait_for(p, p.submit_batch_set(["m@00000000@0@def"], [memoryview(w)]))
        assert ok, err
        assert rpy.get("m@00000000@0@def") == w
        assert rpy.exists("m@00000000@0@defmetadata", "m@00000000@0@defkv_bytes") == 0
    finally:
        p.close()


def test_lmcache_layout_written_by_redis_py(lm_client, rpy):
    key = "meta-llama/Llama-3.1-8B-Instruct@1@0@3f9a0c1@bfloat16"
    payload = os.urandom(LENGTH)
    # What LMCache's RedisConnector._put does: payload first, then metadata.
    rpy.set(key + "kv_bytes", payload)
    rpy.set(key + "metadata", lmcache_meta(LENGTH))

    fid = lm_client.submit_fetch([key, "missing@1@0@1@bfloat16"], False)
    _, ok, err, fetched = wait_for(lm_client, fid)
    assert ok, err
    assert fetched.meta(0) == lmcache_meta(LENGTH)
    assert fetched.length(0) == LENGTH
    assert fetched.meta(1) is None
    out = bytearray(LENGTH)
    assert fetched.copy_into(0, memoryview(out))
    assert bytes(out) == payload

    _, ok, _, count = wait_for(lm_client, lm_client.submit_contains_prefix([key, "missing", key]))
    assert ok and count == 1
    assert lm_client.exists_now([key, "missing"]) == [True, False]


def test_lmcache_layout_read_by_redis_py(lm_client, rpy):
    key = "model@1@0@beef@bfloat16"
    payload = os.urandom(LENGTH)
    meta = lmcache_meta(LENGTH)
    _, ok, err, _ = wait_for(lm_client, lm_client.submit_put([key], [memoryview(payload)], [meta]))
    assert ok, err
    assert rpy.get(key + "kv_bytes") == payload
    assert rpy.get(key + "metadata") == meta
    got = struct.unpack("<7i", rpy.get(key + "metadata"))
    assert got == (LENGTH, 1, 3, *SHAPE)


def test_lmcache_layout_evicted_payload_is_a_miss(lm_client, rpy):
    key = "model@1@0@dead@bfloat16"
    rpy.set(key + "metadata", lmcache_meta(LENGTH))  # payload evicted
    _, ok, err, fetched = wait_for(lm_client, lm_client.submit_fetch([key], False))
    assert ok and fetched.meta(0) is None


def test_prefix_fetch_stops_at_first_miss(lm_client, rpy):
    keys = ["p@1@0@%x@bfloat16" % i for i in range(4)]
    for i, k in enumerate(keys):
        if i == 2:
            continue
        rpy.set(k + "kv_bytes", bytes([i]) * LENGTH)
        rpy.set(k + "metadata", lmcache_meta(LENGTH))
    _, ok, err, fetched = wait_for(lm_client, lm_client.submit_fetch(keys, True))
    assert ok, err
    assert len(fetched) == 2
