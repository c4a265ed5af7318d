"""A fault-injecting TCP proxy in front of a real redis-server, for tests.

Client-to-server bytes pass freely. Server-to-client bytes pass until the proxy is
told to hold (:meth:`FaultProxy.hold_after`): it then forwards exactly ``n`` more bytes
and stops forwarding (a value stalled mid-transfer), until :meth:`resume` or
:meth:`cut` (every connection closed with a reset: a connection killed mid-value).
"""

from __future__ import annotations

import select
import socket
import struct
import threading


class FaultProxy:
    def __init__(self, server_port: int) -> None:
        self.server_port = server_port
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.cv = threading.Condition()
        self.budget: int | None = None  # None: forward everything
        self.held = 0  # connections currently holding back bytes
        self.closed = False
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self.threads.append(t)

    @property
    def url(self) -> str:
        return "redis://127.0.0.1:%d" % self.port

    def hold_after(self, n: int) -> None:
        """From now on, forward at most ``n`` more server bytes (over all connections),
        then hold the rest."""
        with self.cv:
            self.budget = n
            self.held = 0

    def wait_held(self, timeout: float = 20.0) -> bool:
        """Waits until some server bytes are being held back."""
        with self.cv:
            return self.cv.wait_for(lambda: self.held > 0, timeout)

    def resume(self) -> None:
        with self.cv:
            self.budget = None
            self.cv.notify_all()

    def cut(self) -> None:
        """Resets every connection (SO_LINGER 0), the held bytes never delivered."""
        with self.cv:
            pairs, self.pairs = self.pairs, []
            self.cv.notify_all()
        for a, b in pairs:
            for s in (a, b):
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.resume()
        self.lsock.close()
        for t in self.threads:
            t.join(5)

    def _accept(self) -> None:
        while not self.closed:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            s = socket.create_connection(("127.0.0.1", self.server_port))
            with self.cv:
                self.pairs.append((c, s))
            t = threading.Thread(target=self._pump, args=(c, s), daemon=True)
            t.start()
            self.threads.append(t)

    def _live(self, c: socket.socket) -> bool:
        with self.cv:
            return any(c is a for a, _ in self.pairs)

    def _pump(self, c: socket.socket, s: socket.socket) -> None:
        pending = b""  # server bytes not yet forwarded
        try:
            while not self.closed and self._live(c):
                r, _, _ = select.select([c, s], [], [], 0.05)
                if c in r:
                    d = c.recv(1 << 16)
                    if not d:
                        return
                    s.sendall(d)
                if s in r:
                    d = s.recv(1 << 16)
                    if not d:
                        return
                    pending += d
                with self.cv:
                    n = len(pending) if self.budget is None else min(self.budget, len(pending))
                    if self.budget is not None:
                        self.budget -= n
                    if n < len(pending) and self.held == 0:
                        self.held = 1
                        self.cv.notify_all()
                if n:
                    c.sendall(pending[:n])
                    pending = pending[n:]
        except OSError:
            return
