"""Simulator: drives the policy objects of :mod:`sglang_fair.policy` against a cost-model engine.

``python -m sglang_fair.sim capacity|run ...``; see ``docs/design.md`` and ``docs/results-sim.md``.
"""

from .engine import ROUTER_NAMES, EngineConfig, Replica, SimRequest, SimResult, Simulation, simulate
from .metrics import summarize
from .workload import SloClass, Trace, TraceError, Workload, load_trace, make_workload, shared_dir

__all__ = [
    "EngineConfig",
    "ROUTER_NAMES",
    "Replica",
    "SimRequest",
    "SimResult",
    "Simulation",
    "SloClass",
    "Trace",
    "TraceError",
    "Workload",
    "load_trace",
    "make_workload",
    "shared_dir",
    "simulate",
    "summarize",
]
