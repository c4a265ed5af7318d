"""Serving slotline's Prometheus metrics from Python.

Every slotline object (``Client``, ``SlotlineNativePlugin``, the LMCache connector) has
``metrics_text()``: the engine's own Prometheus text exposition (format 0.0.4). This
module serves one or more of them on ``GET /metrics`` with the standard library only,
for processes that do not run ``prometheus_client``; with ``prometheus_client``, add the
text to its registry's output instead (see the README).
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Union

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Source = Union[Any, Callable[[], str]]


def render(sources: Iterable[Source]) -> str:
    """The metrics text of every source: an object with ``metrics_text()`` or a callable
    returning text. A source that fails (e.g. closed) is reported as a comment line and
    the others are still served."""
    parts = []
    for s in sources:
        fn = getattr(s, "metrics_text", s)
        try:
            parts.append(fn())
        except Exception as e:  # a closed plug-in must not break the whole scrape
            parts.append("# slotline source failed: %s\n" % str(e).replace("\n", " "))
    return "".join(parts)


class MetricsServer:
    """A ``/metrics`` endpoint on a daemon thread; ``close()`` stops it."""

    def __init__(self, sources: Iterable[Source], host: str = "127.0.0.1", port: int = 0):
        srcs = list(sources)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404)
                    return
                body = render(srcs).encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass  # scrapes every few seconds would flood stderr

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.host, self.port = self._httpd.server_address[:2]
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        name="slotline-metrics", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """Where to scrape."""
        return "http://%s:%d/metrics" % (self.host, self.port)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def serve(*sources: Source, host: str = "127.0.0.1", port: int = 0) -> MetricsServer:
    """Serves the sources' metrics on ``http://host:port/metrics`` (loopback by default,
    no authentication; port 0 picks a free one, see ``.port``)."""
    return MetricsServer(sources, host, port)
