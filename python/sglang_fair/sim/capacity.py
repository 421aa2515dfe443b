"""Capacity search: the highest Poisson arrival rate at which >= 90% of requests meet both SLOs.

For one scheduler variant (policy + options, router, replicas) the search bisects the arrival rate
between 0 and the engine's saturation throughput until the bracket is narrower than ``tolerance``
(relative).  Each probe replays the same request lengths with Poisson arrivals drawn from the same
seed; warm-up requests (the first 10% by arrival) are excluded from the metrics.  A probe stops as
soon as the misses already counted make the target unreachable, which keeps overloaded probes cheap.

The saturation throughput bound runs the same engine with every request present at t = 0 under
stall-free batching at the largest batch the engine allows (prefill chunks up to the engine's
``max_prefill_tokens``, all decodes every iteration), i.e. the most efficient batch size; the bound
is ``requests / makespan``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..policy.cost_model import CostModel
from ..policy.registry import make_policy
from .engine import EngineConfig, simulate
from .metrics import summarize
from .workload import Trace, Workload, make_workload

__all__ = [
    "SARATHI_BUDGETS",
    "SGLANG_VARIANTS",
    "Variant",
    "default_variants",
    "run_probe",
    "saturation_rps",
    "search_capacity",
]

#: Sarathi-Serve token budgets swept (the best is reported).
SARATHI_BUDGETS = (128, 256, 512, 1024, 2048, 4096)
#: Stock SGLang settings swept: chunked-prefill size x mixed chunk.
SGLANG_VARIANTS = tuple(
    {"chunked_prefill_size": size, "mixed_chunk": mixed} for size in (2048, 8192) for mixed in (False, True)
)


@dataclass
class Variant:
    """One scheduler configuration to measure."""

    policy: str
    router: str = "round_robin"
    replicas: int = 1
    options: dict = field(default_factory=dict)
    admission_control: bool = False

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        extra = "+ac" if self.admission_control else ""
        return f"{self.policy}{extra}[{opts}]/{self.router}x{self.replicas}"


def default_variants(policy: str, router: str, replicas: int, options: dict, sweep: bool,
                     admission_control: bool = False) -> list[Variant]:
    """The variants a policy is measured with: a sweep of its knobs for peers, one otherwise."""
    if sweep and policy in ("sarathi", "slai", "vtc") and "token_budget" not in options:
        return [Variant(policy, router, replicas, {**options, "token_budget": b}, admission_control)
                for b in SARATHI_BUDGETS]
    if sweep and policy == "sglang" and not options:
        return [Variant(policy, router, replicas, dict(v), admission_control) for v in SGLANG_VARIANTS]
    return [Variant(policy, router, replicas, dict(options), admission_control)]


def _policy_factory(variant: Variant, cost_model: CostModel, default_ttft_slo_s: float):
    options = dict(variant.options)
    options.setdefault("default_ttft_slo_s", default_ttft_slo_s)
    make_policy(variant.policy, cost_model, **options)  # validate once, early
    return lambda: make_policy(variant.policy, cost_model, **options)


def run_probe(
    variant: Variant,
    workload: Workload,
    cost_model: CostModel,
    config: EngineConfig,
    *,
    seed: int = 0,
    target: float | None = None,
    warmup_fraction: float = 0.1,
) -> tuple[dict, object]:
    """Simulate one workload; with ``target`` stop early once it cannot be met."""
    measured = len(workload) - int(len(workload) * warmup_fraction)
    stop_after = None if target is None else int(math.floor((1.0 - target) * measured))
    result = simulate(
        workload,
        _policy_factory(variant, cost_model, float(np.median(workload.ttft_slo_s))),
        replicas=variant.replicas,
        config=config,
        router=variant.router,
        admission_control=variant.admission_control,
        seed=seed,
        warmup_fraction=warmup_fraction,
        stop_after_misses=stop_after,
    )
    return summarize(result), result


def saturation_rps(trace: Trace, num_requests: int, cost_model: CostModel, config: EngineConfig,
                   replicas: int = 1) -> float:
    """Throughput bound: all requests at t = 0, largest batches the engine allows."""
    count = min(num_requests, len(trace))
    workload = Workload(
        np.zeros(count), trace.prompt_tokens[:count].copy(), trace.output_tokens[:count].copy(),
        np.full(count, 1e9), np.full(count, 1e9), np.zeros(count, dtype=np.int64),
    )
    best_s = math.inf
    # "Most efficient batch size": with a quadratic attention term the largest chunk is not the
    # cheapest per token, so try budgets up to the engine cap and keep the shortest makespan.
    budgets = sorted({b for b in (512, 1024, 2048, 4096) if b < config.max_prefill_tokens}
                     | {config.max_prefill_tokens})
    for budget in budgets:
        variant = Variant("sarathi", "round_robin", replicas, {"token_budget": budget})
        result = simulate(
            workload, _policy_factory(variant, cost_model, 1.0), replicas=replicas, config=config,
            router="round_robin", warmup_fraction=0.0,
        )
        best_s = min(best_s, result.end_s)
    return count / best_s


def search_capacity(
    variant: Variant,
    trace: Trace,
    cost_model: CostModel,
    config: EngineConfig,
    *,
    ttft_slo_s: float,
    tpot_slo_s: float,
    num_requests: int,
    seed: int,
    upper_rps: float,
    target: float = 0.9,
    tolerance: float = 0.02,
    workload_options: dict | None = None,
    on_probe=None,
) -> dict:
    """Bisect the arrival rate; return the capacity, the metrics there and the probed curve."""
    workload_options = workload_options or {}

    def probe(rate: float) -> dict:
        workload = make_workload(trace, num_requests=num_requests, rate_rps=rate, seed=seed,
                                 ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s, **workload_options)
        summary, _ = run_probe(variant, workload, cost_model, config, seed=seed, target=target)
        point = {"rate_rps": rate, **{k: summary[k] for k in _CURVE_KEYS}}
        curve.append(point)
        if on_probe is not None:
            on_probe(point)
        return point

    curve: list[dict] = []
    lo, hi = 0.0, upper_rps
    best = None
    top = probe(hi)
    if top["attainment"] >= target:
        lo, best = hi, top
    else:
        while hi - lo > tolerance * hi:
            mid = 0.5 * (lo + hi)
            point = probe(mid)
            if point["attainment"] >= target:
                lo, best = mid, point
            else:
                hi = mid
    out = {
        "policy": variant.policy,
        "router": variant.router,
        "replicas": variant.replicas,
        "options": variant.options,
        "admission_control": variant.admission_control,
        "capacity_rps": lo,
        "ttft_p99_s": best["ttft_p99_s"] if best else math.nan,
        "tpot_p99_s": best["tpot_p99_s"] if best else math.nan,
        "at_capacity": best,
        "curve": sorted(curve, key=lambda p: p["rate_rps"]),
    }
    return out


_CURVE_KEYS = ("attainment", "envelope_attainment", "ttft_attainment", "tpot_attainment",
               "goodput_rps", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "tbt_p99_s",
               "rejected", "stopped_early", "plan_cpu_us_per_iter", "wall_s")
