"""`key_prefix` through the installed wheel and LMCache's NativeConnectorL2Adapter: two
tenants with different prefixes on one server (and on one cluster) never see each
other's chunks in store, lookup, load or delete, and every key either writes is
`<prefix>@<key>`, the key LMCache's `valkey` adapter writes with the same prefix."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("torch")
pytest.importorskip("lmcache")

from lmcache.v1.distributed.l2_adapters.native_connector_l2_adapter import (  # noqa: E402
    _object_key_to_string,
)
from test_lmcache_native_adapter import load, lookup, okey, store  # noqa: E402
from test_mp_params import native_adapter  # noqa: E402

SIZE = 8192


def wire(prefix: str, k) -> str:
    return "%s@%s" % (prefix, _object_key_to_string(k))


def two_tenants(url: str, server_keys) -> None:
    a = native_adapter({"url": url, "key_prefix": "tenant-a", "cores": 1})
    b = native_adapter({"url": url, "key_prefix": "tenant-b", "cores": 1})
    try:
        keys = [okey(900 + i, "org/tenants") for i in range(12)]
        da = [os.urandom(SIZE) for _ in keys]
        db = [os.urandom(SIZE) for _ in keys]
        store(a, keys, da)
        assert server_keys() == {wire("tenant-a", k) for k in keys}

        # B sees none of A's chunks: lookup, load and delete all miss.
        assert lookup(b, keys) == 0
        got, hits = load(b, keys[:1], SIZE)
        assert hits == 0
        b.delete(keys)
        assert lookup(a, keys) == len(keys)

        # The same keys stored by B: each tenant loads its own bytes.
        store(b, keys, db)
        assert server_keys() == ({wire("tenant-a", k) for k in keys}
                                 | {wire("tenant-b", k) for k in keys})
        got, hits = load(a, keys, SIZE)
        assert hits == len(keys) and got == da
        got, hits = load(b, keys, SIZE)
        assert hits == len(keys) and got == db

        # B's delete takes B's keys only.
        b.delete(keys)
        assert server_keys() == {wire("tenant-a", k) for k in keys}
        got, hits = load(a, keys, SIZE)
        assert hits == len(keys) and got == da
        a.delete(keys)
        assert server_keys() == set()
    finally:
        a.close()
        b.close()


def test_two_tenants_standalone(redis_server, rpy):
    two_tenants(redis_server.url,
                lambda: {k.decode() for k in rpy.keys("*")})


def test_two_tenants_cluster(redis_cluster):
    def server_keys():
        out = set()
        for m in redis_cluster.masters():
            out |= {k for k in m.cmd("keys", "tenant-*").split("\n") if k}
        return out

    two_tenants(redis_cluster.url, server_keys)


def test_a_braced_prefix_is_refused_with_the_reason(redis_server):
    from slotline.native_plugin import SlotlineNativePlugin

    for bad in ("{t}", "a@b"):
        with pytest.raises(ValueError, match="key_prefix"):
            SlotlineNativePlugin(url=redis_server.url, key_prefix=bad)
