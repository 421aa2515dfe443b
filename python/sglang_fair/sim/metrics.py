"""Metrics of one simulated run: TTFT, TPOT, time between tokens, SLO attainment, goodput, service.

Two SLO attainment definitions are reported (requests in the warm-up share are excluded):

* ``attainment`` (the judged one): TTFT <= ttft_slo and mean TPOT <= tpot_slo, where mean TPOT is
  ``(finish - first_token) / (output_tokens - 1)`` (a one-token request meets any TPOT);
* ``envelope_attainment``: every token j was out by ``arrival + ttft_slo + j * tpot_slo``.

Rejected requests (admission control, or too long for the KV pool) count as misses.  Goodput is
requests meeting both SLOs per second of the measured requests' arrival span.
"""

from __future__ import annotations

import numpy as np

from .engine import TBT_BIN_S, SimResult

__all__ = ["summarize", "percentile"]

#: Tolerance for float round-off in deadline comparisons (seconds).
EPS_S = 1e-9


def percentile(values: np.ndarray, q: float) -> float:
    values = values[np.isfinite(values)]
    return float(np.percentile(values, q)) if len(values) else float("nan")


def _hist_percentile(hist: np.ndarray, q: float) -> float:
    total = int(hist.sum())
    if total == 0:
        return float("nan")
    index = int(np.searchsorted(np.cumsum(hist), q / 100.0 * total))
    return (index + 1) * TBT_BIN_S  # upper edge of the bin


def summarize(result: SimResult, *, input_weight: float = 1.0, output_weight: float = 2.0) -> dict:
    w = result.workload
    start = result.warmup_requests
    measured = slice(start, len(w))
    arrival = w.arrival_s[measured]
    output = w.output_tokens[measured]
    first = result.first_token_s[measured]
    finish = result.finish_s[measured]
    rejected = result.rejected[measured]
    done = np.isfinite(finish)
    ttft = first - arrival
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(output > 1, (finish - first) / np.maximum(output - 1, 1), 0.0)
    ttft_ok = done & (ttft <= w.ttft_slo_s[measured] + EPS_S)
    tpot_ok = done & (tpot <= w.tpot_slo_s[measured] + EPS_S)
    met = ttft_ok & tpot_ok & ~rejected
    envelope = done & ~rejected & (result.worst_slack_s[measured] >= -EPS_S)
    count = len(arrival)
    span_s = float(arrival[-1] - arrival[0]) if count > 1 else 0.0
    served = done & ~rejected
    summary = {
        "requests": int(count),
        "completed": int(served.sum()),
        "rejected": int(rejected.sum()),
        "stopped_early": bool(result.stopped_early),
        "offered_rps": count / span_s if span_s > 0 else float("nan"),
        "attainment": float(met.mean()) if count else float("nan"),
        "envelope_attainment": float(envelope.mean()) if count else float("nan"),
        "ttft_attainment": float((ttft_ok & ~rejected).mean()) if count else float("nan"),
        "tpot_attainment": float((tpot_ok & ~rejected).mean()) if count else float("nan"),
        "goodput_rps": float(met.sum() / span_s) if span_s > 0 else float("nan"),
        "ttft_p50_s": percentile(ttft[served], 50),
        "ttft_p99_s": percentile(ttft[served], 99),
        "tpot_p50_s": percentile(tpot[served & (output > 1)], 50),
        "tpot_p99_s": percentile(tpot[served & (output > 1)], 99),
        "tbt_p99_s": _hist_percentile(result.tbt_hist, 99),
        "max_tbt_p99_s": percentile(result.max_tbt_s[measured][served], 99),
        "iterations": result.iterations,
        "plan_cpu_us_per_iter": 1e6 * result.plan_cpu_s / max(result.iterations, 1),
        "skipped_decodes_per_iter": result.skipped_decodes / max(result.iterations, 1),
        "simulated_s": result.end_s,
        "wall_s": result.wall_s,
        "sim_requests_per_wall_s": len(w) / result.wall_s if result.wall_s > 0 else float("nan"),
    }
    # Per-client service (VTC weights) and attainment over the measured requests.
    clients = w.client[measured]
    generated = np.where(served, output, 0)
    prompt = np.where(served, w.prompt_tokens[measured], 0)
    per_client = {}
    for client in np.unique(clients):
        mask = clients == client
        per_client[f"client{int(client)}"] = {
            "requests": int(mask.sum()),
            "attainment": float(met[mask].mean()),
            "service_tokens": float(input_weight * prompt[mask].sum() + output_weight * generated[mask].sum()),
        }
    summary["clients"] = per_client
    return summary
