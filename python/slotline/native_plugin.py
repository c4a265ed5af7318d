"""LMCache multiprocess mode: a native plug-in for ``NativeConnectorL2Adapter``.

LMCache builds it as ``SlotlineNativePlugin(**adapter_params)``::

    lmcache server ... --l2-adapter '{"type": "native_plugin",
        "module_path": "slotline.native_plugin", "class_name": "SlotlineNativePlugin",
        "adapter_params": {"url": "redis://127.0.0.1:6379"}, "max_capacity_gb": 0}'

``adapter_params``: ``url`` (standalone URL, ``redis://h1:p1,h2:p2`` cluster seeds or
``redis-cluster://...``), ``layout`` (default ``raw``, what LMCache's native clients
write), ``key_prefix`` (keys become ``<key_prefix>@<key>``), and any slotline setting
(``cores``, ``io_backend``, ``request_timeout_ms``, ``max_connections``, ...). The
``adapter_params`` of LMCache's ``valkey`` and ``resp`` adapters work unchanged
(``slotline.config.adapter_settings``); ``url`` wins over ``startup_nodes`` and
``host``/``port``, and what cannot be honoured is named in one warning.

Semantics (LMCache 0.5.6, section 7b of the format notes): ``submit_batch_*`` return a
future id at once and never wait (a full submission lane is a failed completion);
reads land in the caller's memoryviews; a buffer is touched only until its future id
has been returned by ``drain_completions``, which also resets the eventfd. The GIL is
released inside every native step.
"""

from __future__ import annotations

from typing import Any

from slotline._native import Client
from slotline.config import config_text


class SlotlineNativePlugin:
    """The object LMCache's native-plugin L2 adapter drives."""

    def __init__(self, **adapter_params: Any) -> None:
        self._client = Client(config_text(adapter_params, default_layout="raw"))
        # Bound methods: LMCache calls these on its hot path.
        self.event_fd = self._client.event_fd
        self.submit_batch_get = self._client.submit_batch_get
        self.submit_batch_set = self._client.submit_batch_set
        self.submit_batch_exists = self._client.submit_batch_exists
        self.submit_batch_delete = self._client.submit_batch_delete
        self.drain_completions = self._client.drain_completions

    def close(self) -> None:
        """Waits for running requests (bounded by the request timeout) and stops."""
        self._client.close()

    def stats(self) -> dict:
        """The engine's counters as a dict (``Client.stats``)."""
        return self._client.stats()

    def metrics_text(self) -> str:
        """The engine's counters in the Prometheus text format (``Client.metrics_text``):
        serve it with ``slotline.metrics.serve`` or a ``prometheus_client`` collector."""
        return self._client.metrics_text()

    def pending(self) -> int:
        """Requests submitted and not yet finished."""
        return self._client.pending()
