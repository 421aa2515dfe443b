"""Give the C heap's free pages back to the OS once the scheduler has gone idle.

A burst of varied batch shapes (FairBatching's time budget cuts prefill chunks to any length)
leaves glibc's heap fragmented: the memory is free to malloc but still counted in the process's
RSS, which then creeps up burst after burst (measured 2026-12-04: +75-190 MiB per 15 s overload on
the tiny CPU model, with the Python heap flat under tracemalloc; ``malloc_trim`` took it back).
Trimming costs milliseconds, so it runs once per idle period, and only after the scheduler has been
idle a while, never between the requests of a steady stream.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time

__all__ = ["IdleHeapTrimmer", "TRIM_AFTER_IDLE_S"]

#: Idle this long (seconds) before the heap is trimmed: longer than the gaps of a live stream.
TRIM_AFTER_IDLE_S = 0.5


def _glibc_malloc_trim():
    """``malloc_trim`` of glibc, or ``None`` where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None)
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


class IdleHeapTrimmer:
    """Call :meth:`on_idle` from the scheduler's idle hook (with whether it is fully idle)."""

    def __init__(self, after_idle_s: float = TRIM_AFTER_IDLE_S, trim=None, clock=time.monotonic) -> None:
        self.after_idle_s = after_idle_s
        self._trim = trim if trim is not None else _glibc_malloc_trim()
        self._clock = clock
        self._idle_since_s: float | None = None
        self._trimmed = True  # nothing to give back before the first work
        self.trims = 0

    def on_idle(self, fully_idle: bool) -> None:
        if not fully_idle:
            self._idle_since_s, self._trimmed = None, False
            return
        now_s = self._clock()
        if self._idle_since_s is None:
            self._idle_since_s = now_s
        if self._trimmed or now_s - self._idle_since_s < self.after_idle_s:
            return
        self._trimmed = True
        if self._trim is not None:
            self._trim(0)
            self.trims += 1

    def on_work(self) -> None:
        """A batch ran: the next idle period is a new one."""
        self._idle_since_s, self._trimmed = None, False
