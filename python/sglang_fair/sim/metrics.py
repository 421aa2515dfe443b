"""Metrics of one simulated run (TTFT, TPOT, time between tokens, SLO attainment, goodput, service)
and the criteria a run must meet to count as within capacity.

Two SLO attainment definitions are reported (requests in the warm-up share are excluded), both with
the verdicts of :mod:`sglang_fair.policy.request`:

* ``attainment`` (the judged one by default, ``mean``): TTFT <= ttft_slo and mean TPOT <= tpot_slo,
  where mean TPOT is ``(finish - first_token) / (output_tokens - 1)`` (a one-token request meets any
  TPOT);
* ``envelope_attainment`` (``envelope``): every token j was out by ``arrival + ttft_slo + j * tpot_slo``.

Rejected requests (admission control, or too long for the KV pool) count as misses and as an infinite
TTFT.  Goodput is requests meeting both SLOs per second of the measured requests' arrival span.

The TTFT tail is judged per request against its own SLO: ``ttft_ratio_p99`` is the 99th percentile
of ``TTFT_i / ttft_slo_i`` over the measured requests.  With SLO classes, ``slo_classes`` splits the
attainment by (TTFT, TPOT) pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..policy.request import mean_tpot_s, meets_envelope, meets_mean_tpot, meets_ttft
from .engine import SimResult

__all__ = ["DEFINITIONS", "Criteria", "percentile", "summarize", "ttft_ratio_p99", "weighted_percentile"]

DEFINITIONS = ("mean", "envelope")


@dataclass(frozen=True)
class Criteria:
    """What a run must reach to be within capacity: >= ``target`` of the measured requests meet
    their SLOs (``definition``), **and** the P99 of ``TTFT_i / ttft_slo_i`` is at most
    ``max_ttft_p99_factor`` (0: no bound on the tail).  The bound is what keeps a scheduler from
    "winning" by serving the forgiven share minutes late: users see that as hung requests."""

    target: float = 0.9
    definition: str = "mean"
    max_ttft_p99_factor: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.target <= 1:
            raise ValueError(f"target must be in (0, 1], got {self.target}")
        if self.definition not in DEFINITIONS:
            raise ValueError(f"definition must be one of {', '.join(DEFINITIONS)}, got {self.definition!r}")
        if not (self.max_ttft_p99_factor >= 0 and math.isfinite(self.max_ttft_p99_factor)):
            raise ValueError(f"max_ttft_p99_factor must be >= 0 (0: no tail bound), got {self.max_ttft_p99_factor}")

    @property
    def attainment_key(self) -> str:
        return "attainment" if self.definition == "mean" else "envelope_attainment"

    @property
    def tail_bounded(self) -> bool:
        return self.max_ttft_p99_factor > 0

    def met(self, summary: dict) -> bool:
        if not summary[self.attainment_key] >= self.target:
            return False
        return not self.tail_bounded or summary["ttft_ratio_p99"] <= self.max_ttft_p99_factor

    def stop_after(self, measured: int) -> tuple[int, int | None]:
        """Misses, and TTFTs past the tail bound, beyond which a run of ``measured`` requests can
        no longer meet the criteria (lets an overloaded probe stop early)."""
        tail = int(math.floor(0.01 * measured)) if self.tail_bounded else None
        return int(math.floor((1.0 - self.target) * measured)), tail


def percentile(values: np.ndarray, q: float) -> float:
    values = values[np.isfinite(values)]
    return float(np.percentile(values, q)) if len(values) else float("nan")




def weighted_percentile(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    """The ``q``-th percentile of ``values`` each seen ``counts`` times (the lowest value with at
    least q% of the mass at or below it)."""
    if not len(values) or counts.sum() == 0:
        return float("nan")
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(counts[order])
    index = int(np.searchsorted(cumulative, q / 100.0 * cumulative[-1]))
    return float(values[order][min(index, len(values) - 1)])


def ttft_ratio_p99(ttft_ratio: np.ndarray) -> float:
    """The tail the capacity bound judges: the 99th percentile of TTFT / TTFT-SLO, an observed value
    (inverted CDF, no interpolation), so a rejected request's infinite ratio counts as it is."""
    return float(np.quantile(ttft_ratio, 0.99, method="inverted_cdf"))


def summarize(result: SimResult, *, input_weight: float = 1.0, output_weight: float = 2.0,
              max_ttft_p99_factor: float = Criteria.max_ttft_p99_factor,
              arrival_window_s: tuple[float, float] | None = None) -> dict:
    """The run's metrics over its measured requests; with ``arrival_window_s`` (start, end in
    simulated seconds) also ``arrival_window``: the requests that arrived then, how many missed
    (and how many of those on TTFT) beside the run's misses, and their attainment per SLO class, by
    the same verdicts (where in a run a scheduler's misses come from)."""
    w = result.workload
    start = result.warmup_requests
    measured = slice(start, len(w))
    arrival = w.arrival_s[measured]
    output = w.output_tokens[measured]
    first = result.first_token_s[measured]
    finish = result.finish_s[measured]
    rejected = result.rejected[measured]
    done = np.isfinite(finish)
    generated = result.generated_tokens[measured]
    ttft = first - arrival
    ttft_slo = w.ttft_slo_s[measured]
    tpot_slo = w.tpot_slo_s[measured]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = mean_tpot_s(first, finish, generated)
        ttft_ok = done & meets_ttft(ttft, ttft_slo)
        tpot_ok = done & meets_mean_tpot(tpot, tpot_slo)
        envelope = done & ~rejected & meets_envelope(result.worst_slack_s[measured])
    met = ttft_ok & tpot_ok & ~rejected
    ttft_met, tpot_met = ttft_ok & ~rejected, tpot_ok & ~rejected
    count = len(arrival)
    span_s = float(arrival[-1] - arrival[0]) if count > 1 else 0.0
    served = done & ~rejected
    # Per-request TTFT against its own SLO; a request never served (rejected) waits forever.
    ttft_ratio = np.where(served & np.isfinite(first), ttft / ttft_slo, np.inf)
    summary = {
        "requests": int(count),
        "completed": int(served.sum()),
        "rejected": int(rejected.sum()),
        "stopped_early": bool(result.stopped_early),
        "offered_rps": count / span_s if span_s > 0 else float("nan"),
        "attainment": float(met.mean()) if count else float("nan"),
        "envelope_attainment": float(envelope.mean()) if count else float("nan"),
        "ttft_attainment": float(ttft_met.mean()) if count else float("nan"),
        "tpot_attainment": float(tpot_met.mean()) if count else float("nan"),
        "goodput_rps": float(met.sum() / span_s) if span_s > 0 else float("nan"),
        "ttft_p50_s": percentile(ttft[served], 50),
        "ttft_p99_s": percentile(ttft[served], 99),
        "ttft_ratio_p99": ttft_ratio_p99(ttft_ratio) if count else math.nan,
        "ttft_ratio_max": float(ttft_ratio.max()) if count else math.nan,
        "ttft_over_bound": int((ttft_ratio > max_ttft_p99_factor).sum()) if max_ttft_p99_factor > 0 else 0,
        "tpot_p50_s": percentile(tpot[served & (generated > 1)], 50),
        "tpot_p99_s": percentile(tpot[served & (generated > 1)], 99),
        "tbt_p99_s": weighted_percentile(result.tbt_gaps_s, result.tbt_counts, 99),
        "max_tbt_p99_s": percentile(result.max_tbt_s[measured][served], 99),
        "iterations": result.iterations,
        "plan_cpu_us_per_iter": 1e6 * result.plan_cpu_s / max(result.iterations, 1),
        "skipped_decodes_per_iter": result.skipped_decodes / max(result.iterations, 1),
        "retractions": result.retractions,
        "simulated_s": result.end_s,
        "wall_s": result.wall_s,
        "sim_requests_per_wall_s": len(w) / result.wall_s if result.wall_s > 0 else float("nan"),
    }
    # Per-client service (VTC weights) and attainment over the measured requests.
    clients = w.client[measured]
    generated_served = np.where(served, output, 0)
    prompt = np.where(served, w.prompt_tokens[measured], 0)
    per_client = {}
    for client in np.unique(clients):
        mask = clients == client
        per_client[f"client{int(client)}"] = {
            "requests": int(mask.sum()),
            "attainment": float(met[mask].mean()),
            "service_tokens": float(input_weight * prompt[mask].sum() + output_weight * generated_served[mask].sum()),
        }
    summary["clients"] = per_client
    summary["slo_classes"] = _per_slo_class(ttft_slo, tpot_slo, met, ttft_met, tpot_met, ttft_ratio)
    if arrival_window_s is not None:
        start_s, end_s = arrival_window_s
        inside = (arrival >= start_s) & (arrival < end_s)
        summary["arrival_window"] = {
            "start_s": start_s,
            "end_s": end_s,
            "requests": int(inside.sum()),
            "missed": int((inside & ~met).sum()),
            "missed_ttft": int((inside & ~ttft_met).sum()),
            "missed_in_run": int((~met).sum()),
            "slo_classes": _per_slo_class(ttft_slo[inside], tpot_slo[inside], met[inside],
                                          ttft_met[inside], tpot_met[inside], ttft_ratio[inside]),
        }
    return summary


def _per_slo_class(ttft_slo, tpot_slo, met, ttft_met, tpot_met, ttft_ratio) -> list[dict]:
    """With more than one (TTFT, TPOT) SLO pair among the measured requests, each pair's requests
    and their attainment, by the same per-request verdicts as the totals (which class misses which
    SLO); an empty list with one pair (the totals say it)."""
    pairs = np.unique(np.stack([ttft_slo, tpot_slo], axis=1), axis=0) if len(ttft_slo) else []
    if len(pairs) < 2:
        return []
    out = []
    for ttft_slo_s, tpot_slo_s in pairs:
        mask = (ttft_slo == ttft_slo_s) & (tpot_slo == tpot_slo_s)
        out.append({
            "ttft_slo_s": float(ttft_slo_s),
            "tpot_slo_s": float(tpot_slo_s),
            "requests": int(mask.sum()),
            "attainment": float(met[mask].mean()),
            "ttft_attainment": float(ttft_met[mask].mean()),
            "tpot_attainment": float(tpot_met[mask].mean()),
            "ttft_ratio_p99": ttft_ratio_p99(ttft_ratio[mask]),
        })
    return out
