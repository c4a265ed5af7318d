"""Canary memory for the Python side of the lent-memory contract.

A :class:`Canary` is a buffer on anonymous pages of its own (``mmap``), lent to slotline
as a memoryview. The moment slotline reports the request finished (its completion was
drained, a blocking call returned, the client was closed or collected) the test calls
:meth:`Canary.seal`, which makes the pages ``PROT_NONE`` (``mprotect`` through ctypes):
a later write by a shard thread then kills the process with SIGSEGV, and a later kernel
write into them fails with EFAULT. Sealed pages are never unmapped (the mmap object and
its ctypes export are kept for the life of the process), so no later allocation can
reuse the addresses and hide a late write.

A sealed canary must not be touched from Python either (that would crash too): read it
with :meth:`Canary.snapshot` before sealing. Tests that seal run their scenario in a
subprocess (:func:`run_scenario`), so that a late write shows as a failed test with the
signal's name, not a dead pytest.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mprotect.restype = ctypes.c_int

PAGE = mmap.PAGESIZE
PROT_NONE = 0  # <sys/mman.h>; the mmap module does not export it
# Every canary ever made, so that its pages stay mapped until the process ends.
_KEEP: list = []


class Canary:
    """``size`` bytes at the start of their own mapping, each set to ``fill``."""

    def __init__(self, size: int, fill: int = 0xAA) -> None:
        self.size = size
        self.map_len = max(PAGE, -(-size // PAGE) * PAGE)
        self._mm = mmap.mmap(-1, self.map_len, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                             prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._mm.write(bytes([fill]) * self.map_len)
        # The export pins the mapping: the mmap can no longer be closed or resized.
        self._anchor = ctypes.c_char.from_buffer(self._mm)
        self.addr = ctypes.addressof(self._anchor)
        self.view = memoryview(self._mm)[:size]
        self.sealed = False
        _KEEP.append(self)

    def snapshot(self) -> bytes:
        """The bytes now (only before :meth:`seal`)."""
        assert not self.sealed, "a sealed canary cannot be read"
        return bytes(self.view)

    def seal(self) -> None:
        """No access by anyone from here on: a late write faults."""
        if self.sealed:
            return
        if _libc.mprotect(self.addr, self.map_len, PROT_NONE) != 0:
            e = ctypes.get_errno()
            raise OSError(e, "mprotect(PROT_NONE): %s" % os.strerror(e))
        self.sealed = True


def run_scenario(name: str, *args: str, timeout: float = 90.0) -> str:
    """Runs ``canary_scenarios.<name>(*args)`` in a fresh interpreter and returns its
    output; fails the calling test on a non-zero exit, a signal (SIGSEGV: a late write
    into sealed memory) or a hang past ``timeout`` seconds."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = "import sys, canary_scenarios as s; s.%s(*sys.argv[1:])" % name
    try:
        p = subprocess.run([sys.executable, "-c", code, *args], cwd=here,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"")[-4000:] if isinstance(e.stdout, bytes) else (e.stdout or "")
        raise AssertionError("scenario %s hung past %.0f s:\n%s" % (name, timeout, out))
    out = (p.stdout + p.stderr)[-6000:]
    if p.returncode < 0:
        sig = signal.Signals(-p.returncode).name
        raise AssertionError("scenario %s died of %s (a write into memory slotline had "
                             "handed back?):\n%s" % (name, sig, out))
    assert p.returncode == 0, "scenario %s failed (exit %d):\n%s" % (name, p.returncode, out)
    return out


@contextmanager
def gil_ticks():
    """Counts how often another Python thread runs (every 5 ms) while the body runs:
    yields a dict whose ``ran`` (ticks) and ``took`` (seconds) are filled in on exit. A
    call that waits on the engine while holding the GIL shows as (almost) no ticks."""
    ticks = [0]
    stop = threading.Event()

    def count() -> None:
        while not stop.is_set():
            ticks[0] += 1
            time.sleep(0.005)

    t = threading.Thread(target=count, daemon=True)
    t.start()
    out = {"ran": 0, "took": 0.0}
    t0, before = time.monotonic(), ticks[0]
    try:
        yield out
    finally:
        out["took"], out["ran"] = time.monotonic() - t0, ticks[0] - before
        stop.set()
        t.join(5)
