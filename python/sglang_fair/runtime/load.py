"""The load a replica reports upward, derived from its Prefill Admission Budget (PAB).

``sglang-router --policy power_of_two`` (0.3.2) polls ``GET /get_load`` about every 30 s, expects a
JSON list with one object per data-parallel rank (``dp_rank``, ``num_tokens``, integers), sums
``num_tokens`` per worker and sends a request to the less loaded of two random workers; a negative
load counts as a failed poll.  So the value must be a non-negative integer, lower is better.

We report *how much of the TTFT horizon is already spoken for*, in prompt tokens:
``horizon_tokens - pab_tokens`` clipped at 0, where ``horizon_tokens`` is what an idle replica could
prefill within the default TTFT SLO.  An idle replica reports 0; a replica whose queued prefills and
running decodes leave no budget reports at least ``horizon_tokens`` (more when already over).
"""

from __future__ import annotations

import math

__all__ = ["horizon_tokens", "load_entry", "load_tokens"]

#: Reported when the budget is not a finite number (should not happen; keeps the router's sum sane).
SATURATED_LOAD_TOKENS = 1 << 40


def horizon_tokens(model, horizon_s: float) -> float:
    per_token_s = model.per_new_token_s + model.per_context_token_s
    return horizon_s / per_token_s if per_token_s > 0 else 0.0


def load_tokens(model, pab) -> int:
    full = horizon_tokens(model, pab.horizon_s)
    used = full - pab.tokens
    if not math.isfinite(used):
        return SATURATED_LOAD_TOKENS
    return int(min(max(used, 0.0), SATURATED_LOAD_TOKENS))


def load_entry(dp_rank: int, fair_state: dict) -> dict:
    """One rank's ``/get_load`` object from its ``sglang_fair`` internal state."""
    runtime = fair_state.get("runtime", fair_state)
    return {
        "dp_rank": int(dp_rank),
        "num_reqs": int(runtime.get("running_requests", 0)) + int(runtime.get("waiting_requests", 0)),
        "num_waiting_reqs": int(runtime.get("waiting_requests", 0)),
        "num_tokens": int(runtime.get("load_tokens", 0)),
        "pab_tokens": (runtime.get("pab") or {}).get("tokens"),
        "pab_seconds": (runtime.get("pab") or {}).get("seconds"),
    }
