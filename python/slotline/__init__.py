"""slotline: a thread-per-core Redis / Redis Cluster engine for LMCache KV-cache chunks.

- ``slotline.native_plugin.SlotlineNativePlugin``: LMCache multiprocess mode
  (``--l2-adapter '{"type": "native_plugin", "module_path": "slotline.native_plugin",
  "class_name": "SlotlineNativePlugin", "adapter_params": {"url": "redis://..."}}'``).
- ``slotline.lmcache.SlotlineConnectorAdapter``: LMCache single-process mode
  (``remote_storage_plugins: ["slotline"]``).
- ``slotline.Client``: the native engine with eventfd completions, for direct use.
  ``Client(config_yaml)`` takes LMCache-style YAML *text* (build it from a dict with
  ``slotline.config_text({"url": "redis://..."})``); requests are submitted with
  ``submit_*`` (each returns an id at once) and their results collected with
  ``drain_completions()`` once ``event_fd()`` is readable (see ``help(slotline.Client)``
  and the README's "Python and LMCache" section).
- ``slotline.metrics``: ``serve(*sources)`` answers ``GET /metrics`` for any of them.
- ``slotline.lmcache.slotline_connector(obj)``: the slotline connector (``stats()``,
  ``metrics_text()``) inside LMCache's wrappers in single-process mode.
"""

from slotline._native import Client, Fetched, __version__
from slotline import metrics
from slotline.config import config_text

__all__ = ["Client", "Fetched", "config_text", "metrics", "__version__"]
