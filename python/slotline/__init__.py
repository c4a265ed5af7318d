"""slotline: a thread-per-core Redis / Redis Cluster engine for LMCache KV-cache chunks.

- ``slotline.native_plugin.SlotlineNativePlugin``: LMCache multiprocess mode
  (``--l2-adapter '{"type": "native_plugin", "module_path": "slotline.native_plugin",
  "class_name": "SlotlineNativePlugin", "adapter_params": {"url": "redis://..."}}'``).
- ``slotline.lmcache.SlotlineConnectorAdapter``: LMCache single-process mode
  (``remote_storage_plugins: ["slotline"]``).
- ``slotline.Client``: the native engine with eventfd completions, for direct use.
"""

from slotline._native import Client, Fetched, __version__
from slotline.config import config_text

__all__ = ["Client", "Fetched", "config_text", "__version__"]
