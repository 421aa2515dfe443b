"""The scheduling brain: plain Python (numpy only), no torch or sglang imports.

Drivers build an :class:`IterationView`, ask a :class:`BatchPolicy` for a :class:`Plan`, run it, and
report the measured time back with ``observe``.  See ``docs/design.md``.
"""

from .base import (
    AdmissionBudget,
    BatchBuilder,
    BatchPolicy,
    IterationView,
    Plan,
    PrefillChunk,
    min_first_token_slack_s,
    prefill_admission_budget,
)
from .cost_model import (
    BatchShape,
    CostModel,
    CostModelError,
    OnlineCostModel,
    fit_cost_model,
    fit_physical_cost_model,
    load_cost_model,
    preset_names,
)
from .fairbatching import FairBatchingPolicy
from .fairness import ClientCounters
from .peers import SarathiPolicy, SglangPolicy, SlaiPolicy, VtcPolicy
from .registry import POLICIES, POLICY_NAMES, build_policy, make_policy, policy_options
from .request import RequestState, validate_slo

__all__ = [
    "AdmissionBudget",
    "BatchBuilder",
    "BatchPolicy",
    "BatchShape",
    "ClientCounters",
    "CostModel",
    "CostModelError",
    "FairBatchingPolicy",
    "IterationView",
    "OnlineCostModel",
    "POLICIES",
    "POLICY_NAMES",
    "Plan",
    "PrefillChunk",
    "RequestState",
    "SarathiPolicy",
    "SglangPolicy",
    "SlaiPolicy",
    "VtcPolicy",
    "build_policy",
    "fit_cost_model",
    "fit_physical_cost_model",
    "load_cost_model",
    "make_policy",
    "min_first_token_slack_s",
    "policy_options",
    "prefill_admission_budget",
    "preset_names",
    "validate_slo",
]
