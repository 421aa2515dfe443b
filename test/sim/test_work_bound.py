"""The physical limits the capacities are read against: the whole trace's work bound and its
heaviest stretch."""

import numpy as np
import pytest

from sglang_fair.policy import load_cost_model
from sglang_fair.sim.capacity import heaviest_stretch, work_bound
from sglang_fair.sim.engine import EngineConfig
from sglang_fair.sim.workload import Trace

MODEL = load_cost_model("a100-llama3-8b")
CONFIG = EngineConfig.for_cost_model(MODEL)


def _trace(prompt, output):
    return Trace(np.asarray(prompt), np.asarray(output), None, "test")


def test_a_uniform_trace_has_no_heavier_stretch():
    # (large enough that the seats, not the longest request, set the whole trace's iterations)
    trace = _trace([800] * 8000, [100] * 8000)
    whole = work_bound(trace, 8000, MODEL, CONFIG)
    stretch = heaviest_stretch(trace, 8000, MODEL, CONFIG, 1000)
    assert whole["min_iterations"] > 100
    assert stretch["rps"] == pytest.approx(whole["rps"]) and stretch["rows"] == 1000


def test_the_heaviest_stretch_is_found_and_served_slower_than_the_whole_trace():
    prompt = [500] * 1000
    prompt[600:700] = [4000] * 100  # a stretch of long prompts
    trace = _trace(prompt, [100] * 1000)
    whole = work_bound(trace, 1000, MODEL, CONFIG)
    stretch = heaviest_stretch(trace, 1000, MODEL, CONFIG, 100)
    assert stretch["first_row"] == 600
    assert stretch["rps"] < 0.5 * whole["rps"]
    # only the first num_requests rows count: before the long prompts every stretch is alike
    early = heaviest_stretch(trace, 500, MODEL, CONFIG, 100)
    assert early["rps"] == pytest.approx(heaviest_stretch(trace, 500, MODEL, CONFIG, 50)["rps"])
    assert early["rps"] > 2 * stretch["rps"]
