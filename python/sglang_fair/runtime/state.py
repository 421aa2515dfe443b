"""What the scheduler reports about itself: ``GET /fair/state``'s runtime entry and the PAB load.

Read-only over the scheduler (a view is built from the synced records, the policy answers the PAB);
called between iterations through SGLang's ``get_internal_state`` (``FairScheduler.fair_state``)
and, with ``--load-balance-method pab``, from the load snapshot SGLang's DP controller reads.
"""

from __future__ import annotations

import logging
import time

from sglang_fair import strict_json
from sglang_fair.runtime.load import horizon_tokens, load_tokens

__all__ = ["PabLoadInquirer", "pab_load_tokens", "runtime_state"]

logger = logging.getLogger(__name__)


def pab_load_tokens(scheduler) -> int:
    """The PAB-derived load (``/get_load``'s ``num_tokens``; lower is better)."""
    view = scheduler._fair_build_view(scheduler.running_batch, time.perf_counter())
    policy = scheduler.fair_policy
    return load_tokens(policy.cost_model, policy.admission_budget(view))


class PabLoadInquirer:
    """Delegates to SGLang's load inquirer; ``get_loads`` reports the PAB load as total tokens."""

    def __init__(self, inner, scheduler) -> None:
        self._inner = inner
        self._scheduler = scheduler

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def get_loads(self, *args, **kwargs):
        import msgspec

        load = self._inner.get_loads(*args, **kwargs)
        try:
            return msgspec.structs.replace(load, num_total_tokens=pab_load_tokens(self._scheduler))
        except Exception as exc:  # never let the load report take the scheduler down
            logger.warning("sglang_fair: PAB load failed, reporting stock load: %s", exc)
            return load


def runtime_state(scheduler) -> dict:
    """Everything ``GET /fair/state`` shows: plain JSON types, non-finite numbers as null with
    a ``*_nonfinite`` sibling (:mod:`sglang_fair.strict_json`), odd values as text."""
    policy = scheduler.fair_policy
    now_s = time.perf_counter()
    state = {
        "batch_policy": scheduler.fair_config.batch_policy,
        "active": scheduler.fair_active,
        "decode_skipping": bool(scheduler.fair_can_split),
        "policy": policy.describe(),
        "iterations": scheduler.fair_iterations,
        "running_requests": len(scheduler.running_batch.reqs),
        "waiting_requests": len(scheduler.waiting_queue),
        "skipped_decodes_total": scheduler.fair_skipped_decodes_total,
        "slo": scheduler.fair_slo.snapshot(),
    }
    view = scheduler._fair_build_view(scheduler.running_batch, now_s)
    pab = policy.admission_budget(view)
    state["pab"] = {
        "seconds": pab.seconds,
        "tokens": pab.tokens,
        "horizon_s": pab.horizon_s,
        "horizon_tokens": horizon_tokens(policy.cost_model, pab.horizon_s),
        "decode_utilisation": pab.decode_utilisation,
    }
    state["load_tokens"] = load_tokens(policy.cost_model, pab)
    if not scheduler.fair_active:
        return strict_json.to_json_types(state, other=str)
    plan = scheduler.fair_last_plan
    calibration = scheduler.fair_calibration
    state.update(
        time_budget_s=scheduler.fair_last_budget_s,
        min_slack_s=scheduler.fair_last_min_slack_s,
        last_iteration_s=scheduler.fair_last_measured_s,
        last_plan=None
        if plan is None
        else {
            "decodes": len(plan.decodes),
            "urgent_decodes": plan.urgent_decodes,
            "skipped_decodes": plan.skipped_decodes,
            "prefill_tokens": plan.prefill_tokens,
            "predicted_s": plan.predicted_s,
        },
        cost_model=policy.online.snapshot() if policy.online is not None else policy.cost_model.to_dict(),
        calibration=calibration.snapshot() if calibration else None,
    )
    return strict_json.to_json_types(state, other=str)
