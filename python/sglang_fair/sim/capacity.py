"""Capacity search: the highest arrival rate a scheduler serves within its SLOs, honestly.

For one scheduler variant (policy + options, router, replicas) the search bisects the arrival rate
until the bracket is narrower than ``tolerance`` (relative).  A rate is within capacity when the run
meets :class:`~sglang_fair.sim.metrics.Criteria`: by default >= 90% of the measured requests meet
TTFT and mean TPOT **and** the P99 over measured requests of ``TTFT_i / ttft_slo_i`` is <= 5, rejected
requests counting as misses with an infinite TTFT (so neither serving the forgiven 10% minutes late
nor rejecting them can buy capacity).  Each probe replays the same request lengths with arrivals
drawn from the same seed; warm-up requests (the first 10% by arrival) are excluded.  A probe stops as
soon as the misses already counted make the criteria unreachable, which keeps overloaded probes cheap.

The search runs between 0 and :func:`work_bound`, the physical limit: the time the unavoidable work
takes (every token computed once, every decode reading its context, the per-sequence cost, and the
fixed cost of the fewest iterations the seats and the KV pool allow) whatever the scheduler.  A
variant with admission control may serve a higher arrival rate (the rejected share is what it does
not serve), so its search goes up to ``work bound / target``.  :func:`saturation_rps` is reported
beside it: the same engine with every request present at t = 0 under stall-free batching at the most
efficient budget (``requests / makespan``), what a good scheduler reaches with an unbounded queue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..policy.cost_model import CostModel
from ..policy.registry import build_policy
from .engine import EngineConfig, simulate
from .metrics import Criteria, summarize
from .workload import DEFAULT_MAX_NEW_TOKENS, Trace, Workload, make_workload

__all__ = [
    "SARATHI_BUDGETS",
    "SGLANG_VARIANTS",
    "TOKEN_BUDGET_POLICIES",
    "Variant",
    "default_variants",
    "run_probe",
    "saturation_rps",
    "search_capacity",
    "work_bound",
    "heaviest_stretch",
]

#: Token budgets swept for Sarathi-Serve and the other token-budget peers (the best is reported).
SARATHI_BUDGETS = (128, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
TOKEN_BUDGET_POLICIES = ("sarathi", "slai", "vtc")
#: Stock SGLang settings swept: chunked-prefill size x mixed chunk.
SGLANG_VARIANTS = tuple(
    {"chunked_prefill_size": size, "mixed_chunk": mixed}
    for size in (512, 1024, 2048, 4096, 8192) for mixed in (False, True)
)


@dataclass
class Variant:
    """One scheduler configuration to measure."""

    policy: str
    router: str = "round_robin"
    replicas: int = 1
    options: dict = field(default_factory=dict)
    admission_control: bool = False
    #: How stale the router's view of replica loads is (seconds between polls; 0: always fresh),
    #: and how many other replicas it tries after a rejection.
    load_poll_s: float = 0.0
    retries: int = 0

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        extra = "+ac" if self.admission_control else ""
        stale = f",poll={self.load_poll_s:g}s,retries={self.retries}" if self.load_poll_s or self.retries else ""
        return f"{self.policy}{extra}[{opts}]/{self.router}x{self.replicas}{stale}"


def default_variants(policy: str, router: str, replicas: int, options: dict, sweep: bool,
                     admission_control: bool = False, load_poll_s: float = 0.0,
                     retries: int = 0) -> list[Variant]:
    """The variants a policy is measured with: a sweep of its knobs for peers, one otherwise."""
    common = dict(admission_control=admission_control, load_poll_s=load_poll_s, retries=retries)
    if sweep and policy in TOKEN_BUDGET_POLICIES and "token_budget" not in options:
        return [Variant(policy, router, replicas, {**options, "token_budget": b}, **common)
                for b in SARATHI_BUDGETS]
    if sweep and policy == "sglang" and not options:
        return [Variant(policy, router, replicas, dict(v), **common) for v in SGLANG_VARIANTS]
    return [Variant(policy, router, replicas, dict(options), **common)]


def _policy_factory(variant: Variant, cost_model: CostModel, default_ttft_slo_s: float):
    settings = {"default_ttft_slo_s": default_ttft_slo_s}
    build_policy(variant.policy, cost_model, settings=settings, options=variant.options)  # validate early
    return lambda: build_policy(variant.policy, cost_model, settings=settings, options=variant.options)


def run_probe(
    variant: Variant,
    workload: Workload,
    cost_model: CostModel,
    config: EngineConfig,
    *,
    seed: int = 0,
    criteria: Criteria | None = None,
    warmup_fraction: float = 0.1,
) -> tuple[dict, object]:
    """Simulate one workload; with ``criteria`` stop early once they cannot be met."""
    measured = len(workload) - int(len(workload) * warmup_fraction)
    stop_after, stop_after_tail = (None, None) if criteria is None else criteria.stop_after(measured)
    judged = criteria or Criteria()
    result = simulate(
        workload,
        _policy_factory(variant, cost_model, float(np.median(workload.ttft_slo_s))),
        replicas=variant.replicas,
        config=config,
        router=variant.router,
        admission_control=variant.admission_control,
        load_poll_s=variant.load_poll_s,
        retries=variant.retries,
        seed=seed,
        warmup_fraction=warmup_fraction,
        stop_after_misses=stop_after,
        stop_after_tail_misses=stop_after_tail,
        definition=judged.definition,
        max_ttft_factor=judged.max_ttft_p99_factor,
    )
    return summarize(result, max_ttft_p99_factor=judged.max_ttft_p99_factor), result


def _all_at_once(trace: Trace, count: int, max_new_tokens) -> Workload:
    caps = trace.output_tokens[:count].copy() if max_new_tokens == "trace" else np.full(count, int(max_new_tokens))
    return Workload(np.zeros(count), trace.prompt_tokens[:count].copy(), trace.output_tokens[:count].copy(),
                    np.full(count, 1e9), np.full(count, 1e9), np.zeros(count, dtype=np.int64), caps)


def saturation_rps(trace: Trace, num_requests: int, cost_model: CostModel, config: EngineConfig,
                   replicas: int = 1, max_new_tokens=DEFAULT_MAX_NEW_TOKENS) -> float:
    """Throughput bound: all requests at t = 0, largest batches the engine allows."""
    count = min(num_requests, len(trace))
    workload = _all_at_once(trace, count, max_new_tokens)
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


def work_bound(trace: Trace, num_requests: int, cost_model: CostModel, config: EngineConfig,
               replicas: int = 1) -> dict:
    """The unavoidable work of the first ``num_requests`` rows on this engine, and the throughput
    it allows: no schedule serves these requests faster than ``rps``.

    Every prompt and output token is computed once (``b``); every decode step reads its context
    (``c`` times prompt + tokens so far) and every prompt its own tokens once; every output token is a
    sequence row (``d``); and the fixed cost ``a`` is paid by at least as many iterations as the seats
    (``max_running_requests``) and the KV pool (the context every decode step holds, summed over
    steps, over the pool's size) allow.  Chunking terms, which a schedule can shrink, are left out.
    """
    count = min(num_requests, len(trace))
    output = trace.output_tokens[:count]
    # (the longest request needs as many iterations as it has output tokens)
    return _work_of(trace.prompt_tokens[:count], output, cost_model, config, replicas, float(output.max()))


def heaviest_stretch(trace: Trace, num_requests: int, cost_model: CostModel, config: EngineConfig,
                     stretch_requests: int, replicas: int = 1) -> dict:
    """:func:`work_bound` of the heaviest ``stretch_requests`` consecutive rows among the first
    ``num_requests`` (windows stepped by a tenth of their length): the rate at which that stretch
    can be served back to back.  A trace whose requests grow heavier for a while (Azure conv's longer
    prompts some minutes in) is served below its whole-trace bound while that lasts; an arrival rate
    above this one falls further behind for the whole stretch, whatever the schedule.  (Unlike the
    whole trace's, a stretch's fixed cost is not floored by its longest request: those iterations
    also serve the stretches around it.)"""
    count = min(num_requests, len(trace))
    stretch = max(1, min(stretch_requests, count))
    step = max(1, stretch // 10)
    worst = None
    for start in range(0, count - stretch + 1, step):
        bound = _work_of(trace.prompt_tokens[start:start + stretch], trace.output_tokens[start:start + stretch],
                         cost_model, config, replicas, 0.0)
        if worst is None or bound["rps"] < worst["rps"]:
            worst = {**bound, "first_row": start, "rows": stretch}
    return worst


def _work_of(prompt_tokens: np.ndarray, output_tokens: np.ndarray, cost_model: CostModel, config: EngineConfig,
             replicas: int, min_iterations: float) -> dict:
    """:func:`work_bound` of these rows, paying the fixed cost at least ``min_iterations`` times."""
    count = len(prompt_tokens)
    prompt = prompt_tokens.astype(float)
    output = output_tokens.astype(float)
    tokens_s = cost_model.per_new_token_s * float((prompt + output).sum())
    kv_reads_s = cost_model.per_context_token_s * float((prompt + output * prompt + output * (output - 1) / 2).sum())
    rows_s = cost_model.per_seq_s * float((output + 1).sum())
    seat_iterations = float(output.sum()) / (config.max_running_requests * replicas)
    kv_iterations = float((output * prompt + output * (output - 1) / 2).sum()) / (config.kv_capacity_tokens * replicas)
    iterations = max(seat_iterations, kv_iterations, min_iterations)
    fixed_s = cost_model.fixed_s * iterations
    total_s = (tokens_s + kv_reads_s + rows_s) / replicas + fixed_s
    return {
        "rps": count / total_s,
        "seconds": total_s,
        "tokens_s": tokens_s,
        "kv_reads_s": kv_reads_s,
        "per_sequence_s": rows_s,
        "fixed_s": fixed_s,
        "min_iterations": iterations,
        "binding_limit": "kv" if kv_iterations >= seat_iterations else "seats",
    }


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
    criteria: Criteria | None = None,
    tolerance: float = 0.01,
    workload_options: dict | None = None,
    on_probe=None,
) -> dict:
    """Bisect the arrival rate; return the capacity, the metrics there and the probed curve."""
    workload_options = workload_options or {}
    criteria = criteria or Criteria()
    if variant.admission_control:
        upper_rps = upper_rps / criteria.target  # the rejected share is not served

    def probe(rate: float) -> dict:
        workload = make_workload(trace, num_requests=num_requests, rate_rps=rate, seed=seed,
                                 ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s, **workload_options)
        summary, _ = run_probe(variant, workload, cost_model, config, seed=seed, criteria=criteria)
        point = {"rate_rps": rate, "within": criteria.met(summary), **{k: summary[k] for k in _CURVE_KEYS}}
        curve.append(point)
        if on_probe is not None:
            on_probe(point)
        return point

    curve: list[dict] = []
    lo, hi = 0.0, upper_rps
    best = None
    top = probe(hi)
    if top["within"]:
        lo, best = hi, top
    else:
        while hi - lo > tolerance * hi:
            mid = 0.5 * (lo + hi)
            point = probe(mid)
            if point["within"]:
                lo, best = mid, point
            else:
                hi = mid
    at = best or {}
    return {
        "policy": variant.policy,
        "router": variant.router,
        "replicas": variant.replicas,
        "options": variant.options,
        "admission_control": variant.admission_control,
        "load_poll_s": variant.load_poll_s,
        "retries": variant.retries,
        "definition": criteria.definition,
        "max_ttft_p99_factor": criteria.max_ttft_p99_factor,
        "capacity_rps": lo,
        "capacity_is_search_limit": best is top,
        **{key: at.get(key, math.nan) for key in _REPORTED_AT_CAPACITY},
        "at_capacity": best,
        "curve": sorted(curve, key=lambda p: p["rate_rps"]),
    }


#: Reported beside every capacity, even where they hurt.
_REPORTED_AT_CAPACITY = ("ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "tbt_p99_s",
                         "ttft_ratio_p99", "ttft_ratio_max", "ttft_over_bound")
_CURVE_KEYS = ("attainment", "envelope_attainment", "ttft_attainment", "tpot_attainment",
               "goodput_rps", "ttft_p50_s", "ttft_p99_s", "ttft_ratio_p99", "ttft_ratio_max",
               "ttft_over_bound", "tpot_p50_s", "tpot_p99_s", "tbt_p99_s", "rejected", "retractions",
               "stopped_early", "plan_cpu_us_per_iter", "wall_s", "slo_classes")
