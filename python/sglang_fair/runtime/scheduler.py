"""``FairScheduler``: SGLang's ``Scheduler`` with sglang_fair's batch policy.

Built in the scheduler process by :func:`sglang_fair.runtime.process.run_scheduler_process`. This
first version selects and reports the policy; forming batches with it comes next.
"""

from __future__ import annotations

import logging

from sglang.srt.managers.scheduler import Scheduler

from sglang_fair.config import FairConfig

__all__ = ["FairScheduler"]

logger = logging.getLogger(__name__)


class FairScheduler(Scheduler):
    def __init__(self, *args, **kwargs) -> None:
        self.fair_config = FairConfig.from_env()
        super().__init__(*args, **kwargs)
        logger.info("sglang_fair: batch policy = %s", self.fair_config.batch_policy)

    def fair_state(self) -> dict:
        """What ``/server_info`` reports under ``internal_states[i]["sglang_fair"]``."""
        config = self.fair_config
        return {
            "batch_policy": config.batch_policy,
            "ttft_slo_s": config.ttft_slo_s,
            "tpot_slo_s": config.tpot_slo_s,
            "cost_model": config.cost_model,
            "token_budget": config.token_budget,
            "admission_control": config.admission_control,
            "client_fairness": config.client_fairness,
            "policy_options": dict(config.policy_options),
        }

    def get_internal_state(self, recv_req):
        output = super().get_internal_state(recv_req)
        output.internal_state["sglang_fair"] = self.fair_state()
        return output
