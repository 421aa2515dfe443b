"""``FairScheduler``: SGLang's ``Scheduler`` with sglang_fair's batch policy.

Built in the scheduler process by :func:`sglang_fair.runtime.process.run_scheduler_process`.  The
batch-forming overrides live in :class:`sglang_fair.runtime.batching.FairBatchingMixin` (with
``--batch-policy sglang`` they all defer to SGLang, so batching is stock).
"""

from __future__ import annotations

import logging

from sglang.srt.managers.scheduler import Scheduler

from sglang_fair.config import FairConfig
from sglang_fair.runtime.batching import FairBatchingMixin

__all__ = ["FairScheduler"]

logger = logging.getLogger(__name__)


class FairScheduler(FairBatchingMixin, Scheduler):
    def __init__(self, *args, **kwargs) -> None:
        self.fair_config = FairConfig.from_env()
        super().__init__(*args, **kwargs)

    def fair_state(self) -> dict:
        """What ``/server_info`` reports under ``internal_states[i]["sglang_fair"]`` (and
        ``GET /fair/state`` / ``GET /get_load`` read): the flags plus the live runtime state."""
        config = self.fair_config
        state = {
            "batch_policy": config.batch_policy,
            "ttft_slo_s": config.ttft_slo_s,
            "tpot_slo_s": config.tpot_slo_s,
            "cost_model": config.cost_model,
            "token_budget": config.token_budget,
            "admission_control": config.admission_control,
            "client_fairness": config.client_fairness,
            "calibrate": config.calibrate,
            "policy_options": dict(config.policy_options),
        }
        state["runtime"] = self.fair_runtime_state()
        return state

    def get_internal_state(self, recv_req):
        output = super().get_internal_state(recv_req)
        output.internal_state["sglang_fair"] = self.fair_state()
        return output
