"""Policy names -> classes, so every driver (simulator, runtime, benchmarks) selects them the same way."""

from __future__ import annotations

import inspect

from .base import BatchPolicy
from .cost_model import CostModel, OnlineCostModel
from .fairbatching import FairBatchingPolicy
from .peers import SarathiPolicy, SglangPolicy, SlaiPolicy, VtcPolicy

__all__ = ["POLICIES", "POLICY_NAMES", "make_policy", "policy_options"]

POLICIES: dict[str, type[BatchPolicy]] = {
    cls.name: cls
    for cls in (SglangPolicy, SarathiPolicy, SlaiPolicy, VtcPolicy, FairBatchingPolicy)
}
POLICY_NAMES = tuple(POLICIES)


def policy_options(name: str) -> dict[str, object]:
    """Keyword options a policy accepts, with their defaults."""
    signature = inspect.signature(POLICIES[name].__init__)
    return {
        param.name: param.default
        for param in signature.parameters.values()
        if param.kind is inspect.Parameter.KEYWORD_ONLY
    }


def make_policy(name: str, cost_model: CostModel | OnlineCostModel, **options) -> BatchPolicy:
    """Build policy ``name``; options it does not know are an error, not silently dropped."""
    if name not in POLICIES:
        raise ValueError(f"unknown batch policy {name!r} (choose from {', '.join(POLICY_NAMES)})")
    known = policy_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"policy {name!r} does not take option(s) {', '.join(unknown)}")
    return POLICIES[name](cost_model, **options)
