"""Turning plug-in parameters into the configuration text the engine reads.

The engine reads LMCache's YAML form (``remote_url`` plus ``extra_config``); JSON is
YAML, so the parameters are passed as JSON and every slotline setting
(``cores``, ``io_backend``, ``request_timeout_ms``, ``chunk_size``, ...) is accepted
under its usual name.

The ``adapter_params`` of LMCache's own MP adapters are accepted too, so a switch is a
change of ``type``/``module_path``/``class_name`` (see ``adapter_settings``): the
``valkey`` adapter's (``startup_nodes``, ``cluster_mode``, ``tls_enable``,
``key_prefix``, ``username``, ``password``, ``database_id``, ``request_timeout``,
``connection_timeout``, ``num_workers``, ``ttl_seconds``) and the ``resp`` adapter's
(``host``, ``port``, ``username``, ``password``, ``num_workers``).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping

log = logging.getLogger("slotline")

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


def _host_port(host: str, port: Any) -> str:
    host = str(host).strip()
    if ":" in host and not host.startswith("["):
        host = "[%s]" % host  # an IPv6 address
    return "%s:%s" % (host, int(port))


def _startup_nodes(raw: Any) -> list[str]:
    """``"h:p,h:p"`` (the valkey adapter's JSON form), a list of ``"h:p"`` strings or a
    list of ``[host, port]`` pairs, as ``host:port`` strings."""
    items = raw.split(",") if isinstance(raw, str) else list(raw or [])
    nodes = []
    for item in items:
        if isinstance(item, str):
            item = item.strip()
            if not item:
                continue
            host, sep, port = item.rpartition(":")
            if not sep or not host or not port.strip().isdigit():
                raise ValueError("slotline: startup_nodes entry must be 'host:port', got %r"
                                 % item)
            nodes.append(_host_port(host.strip("[]"), port))
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            nodes.append(_host_port(item[0], item[1]))
        else:
            raise ValueError("slotline: startup_nodes entry must be 'host:port' or "
                             "[host, port], got %r" % (item,))
    if not nodes:
        raise ValueError("slotline: startup_nodes is empty")
    return nodes


def _flag(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


def _millis(name: str, seconds: Any) -> int:
    ms = round(float(seconds) * 1000)
    if ms <= 0:
        raise ValueError("slotline: %s must be > 0 seconds, got %r" % (name, seconds))
    return ms


# The valkey and resp adapters' parameters that map one to one onto a slotline setting.
RENAMED = {
    "username": "redis_username",
    "password": "redis_password",
    "ttl_seconds": "ttl",
}
# Parameters of LMCache's adapter configs that mean nothing inside adapter_params.
NOT_HERE = {
    "max_capacity_gb": "belongs next to adapter_params in the --l2-adapter JSON, where "
                       "LMCache reads it",
    "type": "names the adapter; slotline's is type native_plugin",
}


def adapter_settings(params: Mapping[str, Any]) -> tuple[dict, list[str]]:
    """Plug-in parameters as slotline settings, plus what cannot be honoured (one
    ``"name: why"`` entry each; ``config_text`` logs them in one warning).

    - ``url`` (or ``remote_url`` / ``redis_url``) wins over ``startup_nodes`` and
      ``host``/``port``, which are then ignored (and named).
    - ``startup_nodes`` (valkey) makes ``redis://h:p,...`` (``rediss://`` with
      ``tls_enable``); ``cluster_mode`` sets ``redis_mode``. Without ``cluster_mode``
      only the first node is used, as the valkey adapter does.
    - ``host``/``port`` (resp) make ``redis://host:port``; as in the resp adapter,
      ``LMCACHE_RESP_HOST``/``_PORT``/``_USERNAME``/``_PASSWORD`` fill in what is not
      given.
    - ``key_prefix`` is slotline's own: keys become ``<key_prefix>@<key>``, the keys
      the valkey adapter writes with the same prefix.
    - ``database_id`` is ``redis_database`` (ignored in cluster mode, as in valkey);
      ``request_timeout`` / ``connection_timeout`` (seconds) are ``request_timeout_ms``
      / ``connect_timeout_ms``; ``num_workers`` is ``cores`` (shards), at most this
      process's CPUs; ``username`` / ``password`` / ``ttl_seconds`` are
      ``redis_username`` / ``redis_password`` / ``ttl``.
    """
    p = dict(params)
    ignored: list[str] = []
    extra: dict = {}
    url = None
    for k in URL_KEYS:
        v = p.pop(k, None)
        if v and not url:
            url = v
        elif v and v != url:
            ignored.append("%s: %s is used" % (k, "url"))
    nodes_raw = p.pop("startup_nodes", None)
    cluster = p.pop("cluster_mode", None)
    tls = p.pop("tls_enable", None)
    host = p.pop("host", None)
    port = p.pop("port", None)
    resp_style = host is not None or port is not None
    if url:
        if nodes_raw is not None:
            ignored.append("startup_nodes: url is used")
        if resp_style:
            ignored.append("host/port: url is used")
    elif nodes_raw is not None:
        nodes = _startup_nodes(nodes_raw)
        if resp_style:
            ignored.append("host/port: startup_nodes is used")
        if cluster is not None and not _flag(cluster) and len(nodes) > 1:
            ignored.append("startup_nodes %s: cluster_mode is false, only %s is used"
                           % (",".join(nodes[1:]), nodes[0]))
            nodes = nodes[:1]
        url = "%s://%s" % ("rediss" if _flag(tls) else "redis", ",".join(nodes))
        tls = None
    elif resp_style:
        host = host or os.environ.get("LMCACHE_RESP_HOST", "")
        port = port or os.environ.get("LMCACHE_RESP_PORT", "")
        if not host or not port:
            raise ValueError("slotline: host and port are both needed (or url)")
        url = "%s://%s" % ("rediss" if _flag(tls) else "redis", _host_port(host, port))
        tls = None
        for k, env in (("username", "LMCACHE_RESP_USERNAME"),
                       ("password", "LMCACHE_RESP_PASSWORD")):
            if not p.get(k) and os.environ.get(env):
                p[k] = os.environ[env]
    if cluster is not None:
        extra["redis_mode"] = "cluster" if _flag(cluster) else "standalone"
    if tls is not None and _flag(tls):
        extra["use_tls"] = True
    db = p.pop("database_id", None)
    if db is not None:
        if cluster is not None and _flag(cluster):
            ignored.append("database_id: a cluster has database 0 only")
        else:
            extra["redis_database"] = int(db)
    for name, setting in (("request_timeout", "request_timeout_ms"),
                          ("connection_timeout", "connect_timeout_ms")):
        v = p.pop(name, None)
        if v is not None:
            extra[setting] = _millis(name, v)
    workers = p.pop("num_workers", None)
    if workers is not None and "cores" not in p:
        n = int(workers)
        cpus = _cpus()
        if n > cpus:
            ignored.append("num_workers %d: %d shards, the CPUs this process may use"
                           % (n, cpus))
            n = cpus
        extra["cores"] = max(1, n)
    elif workers is not None:
        ignored.append("num_workers: cores is used")
    for name, why in NOT_HERE.items():
        if name in p:
            p.pop(name)
            ignored.append("%s: %s" % (name, why))
    for k, v in p.items():
        if k in RENAMED:
            if v in ("", None):
                continue  # the valkey and resp adapters' "not given"
            k = RENAMED[k]
        extra[k] = v
    if url:
        extra["url"] = url
    return extra, ignored


# Parameters that name files.
FILE_KEYS = ("tls_ca_file", "tls_cert_file", "tls_key_file")


def resolve_files(params: Mapping[str, Any], config_file: Any) -> dict:
    """``params`` with relative ``tls_ca_file`` / ``tls_cert_file`` / ``tls_key_file``
    resolved against the directory of ``config_file``, the LMCache YAML file they came
    from (env ``LMCACHE_CONFIG_FILE``), as the engine resolves a YAML file it reads
    itself (``slotline --config``); unchanged without one (relative to the current
    directory)."""
    out = dict(params)
    if not config_file:
        return out
    base = os.path.dirname(os.path.abspath(str(config_file)))
    for k in FILE_KEYS:
        v = out.get(k)
        if isinstance(v, str) and v and not os.path.isabs(v):
            out[k] = os.path.join(base, v)
    return out


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def config_text(params: Mapping[str, Any], default_layout: str) -> str:
    """The engine configuration for ``params``: a URL under ``url`` (or
    ``remote_url`` / ``redis_url``: ``redis://host:port``, ``redis://h1:p1,h2:p2`` for
    cluster seeds, ``redis-cluster://...``, ``unix:///path``), or the valkey / resp
    adapters' parameters (``adapter_settings``), a layout under ``layout`` (default
    ``default_layout``), ``cores`` (default ``default_cores()``),
    ``max_inflight_bytes`` (default ``PLUGIN_MAX_INFLIGHT_BYTES``), and any other
    slotline setting. What cannot be honoured is named in one warning."""
    settings, ignored = adapter_settings(params)
    if ignored:
        log.warning("slotline: adapter parameters not honoured: %s", "; ".join(ignored))
    extra = {}
    url = settings.pop("url", None)
    layout = default_layout
    for k, v in settings.items():
        if k in LAYOUT_KEYS:
            layout = v
        else:
            extra[k] = v
    if not url:
        raise ValueError("slotline: no Redis URL given (adapter parameter 'url', "
                         "'startup_nodes' or 'host' and 'port')")
    extra["url"] = url
    extra["key_layout"] = layout
    extra.setdefault("cores", default_cores())
    extra.setdefault("max_inflight_bytes", PLUGIN_MAX_INFLIGHT_BYTES)
    if "," in url.split("://", 1)[-1] and "redis_mode" not in extra:
        # Several seeds: a cluster (LMCache's own syntax for cluster seeds).
        extra["redis_mode"] = "cluster"
    return json.dumps({"extra_config": extra})
