"""Policy names -> classes, so every driver (simulator, runtime, benchmarks) selects them the same way."""

from __future__ import annotations

import inspect
import json

from .base import BatchPolicy
from .cost_model import CostModel, OnlineCostModel
from .fairbatching import FairBatchingPolicy
from .peers import SarathiPolicy, SglangPolicy, SlaiPolicy, VtcPolicy

__all__ = ["POLICIES", "POLICY_NAMES", "build_policy", "make_policy", "parse_option_value", "policy_options"]

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


def build_policy(
    name: str,
    prior: CostModel,
    *,
    settings: dict | None = None,
    options: dict | None = None,
    online: dict | None = None,
) -> BatchPolicy:
    """The policy a driver runs (the simulator and the SGLang runtime both build theirs here):
    ``name`` planning with an :class:`OnlineCostModel` warm-started from ``prior`` and refitted from
    the iteration times the driver reports through ``observe``.

    ``settings`` are driver-wide values (``default_ttft_slo_s``, ``token_budget``,
    ``client_fairness``, ``chunked_prefill_size``...) given to the policies that take them and
    ignored by the others; ``options`` are the policy's own and must all be known; ``online`` are
    keyword arguments of the online model.
    """
    known = policy_options(name) if name in POLICIES else {}
    merged = {key: value for key, value in (settings or {}).items() if key in known and value is not None}
    merged.update(options or {})
    return make_policy(name, OnlineCostModel(prior, **(online or {})), **merged)


def parse_option_value(name: str, key: str, text: str) -> object:
    """Read a ``KEY=VALUE`` policy option given as text (flags), typed by the option's default.

    Options whose default is ``None`` (e.g. "adaptive") take a JSON value: a number, true/false,
    or null.  Raises ``ValueError`` with a message naming the option.
    """
    known = policy_options(name)
    if key not in known:
        raise ValueError(f"policy {name!r} has no option {key!r} (options: {', '.join(sorted(known))})")
    default = known[key]
    text = text.strip()
    if isinstance(default, bool):
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key} takes true or false, got {text!r}")
    try:
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if default is None:
            return None if text.lower() in ("null", "none", "auto") else json.loads(text)
    except ValueError:
        raise ValueError(f"{key} takes a number, got {text!r}") from None
    return text
