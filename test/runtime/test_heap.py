"""The idle heap trim: once per idle period, only after the scheduler has been idle a while."""

from __future__ import annotations

import platform

import pytest

from sglang_fair.runtime.heap import IdleHeapTrimmer, _glibc_malloc_trim


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def make(after_idle_s=0.5):
    calls, clock = [], FakeClock()
    return IdleHeapTrimmer(after_idle_s, trim=calls.append, clock=clock), calls, clock


def test_no_trim_before_any_work_nor_during_short_gaps():
    trimmer, calls, clock = make()
    for _ in range(5):  # idle at start: nothing to give back
        clock.now_s += 1.0
        trimmer.on_idle(True)
    assert calls == []
    for _ in range(20):  # a steady stream: gaps of 0.1 s between batches
        trimmer.on_work()
        trimmer.on_idle(True)
        clock.now_s += 0.1
        trimmer.on_idle(True)
    assert calls == []


def test_one_trim_per_idle_period_after_the_threshold():
    trimmer, calls, clock = make()
    trimmer.on_work()
    trimmer.on_idle(True)
    clock.now_s += 0.4
    trimmer.on_idle(True)
    assert calls == []
    clock.now_s += 0.2
    trimmer.on_idle(True)
    for _ in range(10):
        clock.now_s += 1.0
        trimmer.on_idle(True)
    assert calls == [0] and trimmer.trims == 1
    trimmer.on_idle(False)  # queued work (not yet a batch) starts a new period too
    trimmer.on_idle(True)
    clock.now_s += 0.6
    trimmer.on_idle(True)
    assert calls == [0, 0]


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_trim_is_found_and_runs():
    trim = _glibc_malloc_trim()
    assert trim is not None
    assert trim(0) in (0, 1)
