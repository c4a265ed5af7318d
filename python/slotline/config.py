"""Turning plug-in parameters into the configuration text the engine reads.

The engine reads LMCache's YAML form (``remote_url`` plus ``extra_config``); JSON is
YAML, so the parameters are passed as JSON and every slotline setting
(``cores``, ``io_backend``, ``request_timeout_ms``, ``chunk_size``, ...) is accepted
under its usual name.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

# Names a caller may use for the Redis URL, first match wins.
URL_KEYS = ("url", "remote_url", "redis_url")
# Short names accepted for the key layout.
LAYOUT_KEYS = ("layout", "key_layout")


def default_cores() -> int:
    """Shards for an engine inside LMCache's process: a quarter of the CPUs this process
    may run on, 1 to 4. The engine alone would pin one shard to every core, which suits
    a process of its own; a plug-in shares the machine with LMCache (and the inference
    engine, and often redis-server), and a few shards carry a Redis server's traffic.
    On a 2-vCPU machine one shard was as fast at 2 KiB chunks and faster at 4 MiB."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(4, n // 4))


# Bytes in flight per connection for a plug-in's engine (the engine's own default is
# 4 MiB). A plug-in runs few shards (`default_cores`), so a shard's connections carry
# large values in MGETs of several values; on a 2-vCPU host with one shard, four 1 MiB
# values per MGET cost redis-server 1.5x the CPU per GET batch and the connector read
# 1.42-1.49 GB/s against 2.00-2.09 with one value per command (RESULTS.md A.6).
PLUGIN_MAX_INFLIGHT_BYTES = 1 << 20


def config_text(params: Mapping[str, Any], default_layout: str) -> str:
    """The engine configuration for ``params``: a URL under ``url`` (or
    ``remote_url`` / ``redis_url``: ``redis://host:port``, ``redis://h1:p1,h2:p2`` for
    cluster seeds, ``redis-cluster://...``, ``unix:///path``), a layout under
    ``layout`` (default ``default_layout``), ``cores`` (default ``default_cores()``),
    ``max_inflight_bytes`` (default ``PLUGIN_MAX_INFLIGHT_BYTES``), and any other
    slotline setting."""
    extra = {}
    url = None
    layout = default_layout
    for k, v in params.items():
        if k in URL_KEYS:
            url = url or v
        elif k in LAYOUT_KEYS:
            layout = v
        else:
            extra[k] = v
    if not url:
        raise ValueError("slotline: no Redis URL given (adapter parameter 'url')")
    extra["url"] = url
    extra["key_layout"] = layout
    extra.setdefault("cores", default_cores())
    extra.setdefault("max_inflight_bytes", PLUGIN_MAX_INFLIGHT_BYTES)
    if "," in url.split("://", 1)[-1] and "redis_mode" not in extra:
        # Several seeds: a cluster (LMCache's own syntax for cluster seeds).
        extra["redis_mode"] = "cluster"
    return json.dumps({"extra_config": extra})
