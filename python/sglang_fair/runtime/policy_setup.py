"""The policy a FairScheduler runs: ``--batch-policy`` with an online cost model and its prior.

Options arrive typed (the launcher reads ``--fair-policy-option KEY=VALUE`` with
:func:`sglang_fair.policy.registry.parse_option_value`, by the option's default), and the policy
itself is built by :func:`sglang_fair.policy.registry.build_policy`, as the simulator builds its own.
"""

from __future__ import annotations

from sglang_fair.config import FairConfig
from sglang_fair.policy import build_policy as policy_builder
from sglang_fair.policy import load_cost_model
from sglang_fair.policy.cost_model import CostModel

__all__ = ["CPU_PRIOR_PRESET", "GPU_PRIOR_PRESET", "build_policy"]

#: Warm start for the online cost model when neither ``--cost-model`` nor the start-up calibration
#: gives one (calibration off or impossible): the tiny model profiled by kernels/ on a CPU, a 7B
#: preset on a GPU; the online refit takes over from measured iterations.
CPU_PRIOR_PRESET = "cpu-tiny"
GPU_PRIOR_PRESET = "a100-llama2-7b"


def build_policy(
    config: FairConfig,
    *,
    chunked_prefill_size: int | None = None,
    on_cpu: bool = True,
    prior: CostModel | None = None,
):
    """Policy object for ``config`` with an online cost model, or raise ``ValueError``/``CostModelError``.

    The online model's prior is ``--cost-model`` when given, else ``prior`` (the start-up
    calibration, :mod:`sglang_fair.runtime.calibration`), else a shipped preset.  Its outlier gate
    judges samples against recent samples, not against the prior, so any of them is left behind
    once measurements disagree with it (``OnlineCostModel``).
    """
    if config.cost_model:
        prior = load_cost_model(config.cost_model)
    elif prior is None:
        prior = load_cost_model(CPU_PRIOR_PRESET if on_cpu else GPU_PRIOR_PRESET)
    settings = {
        "default_ttft_slo_s": config.ttft_slo_s,
        "token_budget": config.token_budget,
        "client_fairness": config.client_fairness,
        "chunked_prefill_size": chunked_prefill_size,
    }
    return policy_builder(config.batch_policy, prior, settings=settings, options=dict(config.policy_options or {}))
