"""Mixed value sizes in one batch (hybrid-attention models hand one store or load task
buffers of different lengths; LMCache's C++ connectors take the first buffer's size for
the whole batch): one store task and one load task through LMCache's
NativeConnectorL2Adapter carry three sizes, interleaved, and every byte comes back.
Standalone and cluster, through the installed wheel."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("torch")
pytest.importorskip("lmcache")

from helpers import poll_until  # noqa: E402
from test_lmcache_native_adapter import lookup, mobj, okey, store  # noqa: E402
from test_mp_params import native_adapter  # noqa: E402

# 7 B, 64 KiB and 1 MiB, interleaved so no size is "the first one" for long.
SIZES = [7, 64 * 1024, 1 << 20] * 3 + [1 << 20, 7, 64 * 1024]


def mixed(url: str) -> None:
    a = native_adapter({"url": url, "cores": 1})
    try:
        keys = [okey(4000 + i, "org/hybrid") for i in range(len(SIZES))]
        data = [os.urandom(n) for n in SIZES]
        store(a, keys, data)  # one store task
        assert lookup(a, keys) == len(keys)

        dst = [mobj(bytes(n)) for n in SIZES]
        tid = a.submit_load_task(keys, dst)  # one load task
        bm = poll_until(lambda: a.query_load_result(tid))
        assert bm.popcount() == len(keys)
        for i, d in enumerate(dst):
            got = bytes(d.byte_array)
            assert len(got) == SIZES[i] and got == data[i], "chunk %d (%d B)" % (i, SIZES[i])

        # A buffer of the wrong size for its value is a miss, not a truncated load;
        # the others in the same task still load.
        wrong = [mobj(bytes(n)) for n in SIZES[:3]]
        wrong[1] = mobj(bytes(SIZES[1] + 1))
        tid = a.submit_load_task(keys[:3], wrong)
        bm = poll_until(lambda: a.query_load_result(tid))
        assert [bm.test(i) for i in range(3)] == [True, False, True]
        assert bytes(wrong[0].byte_array) == data[0]
        assert bytes(wrong[2].byte_array) == data[2]
        a.delete(keys)
    finally:
        a.close()


def test_mixed_sizes_standalone(redis_server, rpy):
    mixed(redis_server.url)
    assert rpy.dbsize() == 0


def test_mixed_sizes_cluster(redis_cluster):
    mixed(redis_cluster.url)
