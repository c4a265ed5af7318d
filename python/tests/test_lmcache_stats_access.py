"""Single-process mode: LMCache hands out its `InstrumentedRemoteConnector` (inside a
`RemoteBackend`), not slotline's connector, so `stats()` is one unwrap away;
`slotline.lmcache.slotline_connector` does it, through LMCache 0.5.6's own classes.
Skipped when lmcache is not importable."""

from __future__ import annotations

import types

import pytest

pytest.importorskip("torch")
pytest.importorskip("lmcache")

from lmcache.v1.storage_backend.connector.instrumented_connector import (  # noqa: E402
    InstrumentedRemoteConnector,
)
from lmcache_setup import backend_setup, filled, lm_key as key  # noqa: E402

from slotline.lmcache import SlotlineConnector, slotline_connector  # noqa: E402


def test_stats_reached_through_lmcache_wrappers(redis_server):
    with backend_setup(redis_server.url) as (remote, cpu, run):
        wrapped = remote.connection
        assert isinstance(wrapped, InstrumentedRemoteConnector)
        assert not hasattr(wrapped, "stats")  # why the helper exists
        conn = slotline_connector(remote)
        assert isinstance(conn, SlotlineConnector)
        assert slotline_connector(wrapped) is conn
        assert slotline_connector(conn) is conn
        # A StorageManager / LMCacheEngine shape: backends by name, one level down.
        engine = types.SimpleNamespace(
            storage_manager=types.SimpleNamespace(
                storage_backends={"LocalCPUBackend": cpu, "RemoteBackend-slotline": remote}))
        assert slotline_connector(engine) is conn

        before = conn.stats()["classes"]["put"]["keys"]
        o = filled(wrapped, cpu, 3)
        run(wrapped.batched_put([key(4100)], [o]))
        o.ref_count_down()
        assert conn.stats()["classes"]["put"]["keys"] == before + 1
        assert "slotline_operations_total" in conn.metrics_text()


def test_no_slotline_connector_is_a_lookup_error(redis_server):
    with backend_setup(redis_server.url) as (_remote, cpu, _run):
        with pytest.raises(LookupError, match="LocalCPUBackend"):
            slotline_connector(cpu)
