"""Per-request SLOs and skip eligibility, read off SGLang ``Req`` objects.

Plain attribute reads only (no sglang import), so the rules are testable without a scheduler.
"""

from __future__ import annotations

from sglang_fair.policy.request import validate_slo

__all__ = ["SLO_FIELDS", "can_sit_out", "check_custom_params", "parse_request_slos"]

#: ``custom_params`` keys -> what they set.  Values are seconds.
SLO_FIELDS = ("ttft_slo", "tpot_slo")


def check_custom_params(custom_params: object, field: str = "custom_params") -> dict:
    """Return our SLO keys of ``custom_params`` as seconds, or raise ``ValueError`` naming the field.

    The one rule for what a request may carry, used by the HTTP guard (400 before the request
    reaches the scheduler, :mod:`sglang_fair.runtime.http_routes`) and by the scheduler itself (a
    request that arrives another way).  ``None`` means none given; anything but an object is
    refused, since SGLang would otherwise carry it along and quietly ignore our keys in it.  Keys
    other than ours are left to whoever else reads them.
    """
    if custom_params is None:
        return {}
    if not isinstance(custom_params, dict):
        raise ValueError(f"{field} must be a JSON object, got {_json_type(custom_params)}")
    return {
        key: validate_slo(f"{field}.{key}", custom_params[key]) for key in SLO_FIELDS if key in custom_params
    }


def parse_request_slos(custom_params: object, default_ttft_s: float, default_tpot_s: float) -> tuple[float, float]:
    """Return ``(ttft_slo_s, tpot_slo_s)`` for one request or raise ``ValueError`` naming the field.

    ``custom_params`` is SGLang's free-form per-request dict (``sampling_params.custom_params`` on
    ``/generate``, top-level ``custom_params`` on the OpenAI API).
    """
    given = check_custom_params(custom_params)
    return given.get("ttft_slo", default_ttft_s), given.get("tpot_slo", default_tpot_s)


def _json_type(value: object) -> str:
    names = {list: "array", tuple: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return names.get(type(value), type(value).__name__)


def can_sit_out(req) -> bool:
    """Whether leaving ``req`` out of an iteration is safe.

    A request sits out by being split off the running batch; per-row sampling state that the split
    would have to carry (penalizer counts, grammar masks, logprob bookkeeping, custom logit
    processors, logit bias, beams, hidden-state capture) makes it stay in, always.
    """
    if getattr(req, "return_logprob", False) or getattr(req, "grammar", None) is not None:
        return False
    if getattr(req, "custom_logit_processor", None) or getattr(req, "beam_group", None) is not None:
        return False
    if getattr(req, "return_hidden_states", False) or getattr(req, "input_embeds", None) is not None:
        return False
    params = getattr(req, "sampling_params", None)
    if params is None:
        return True
    if getattr(params, "logit_bias", None):
        return False
    if getattr(params, "frequency_penalty", 0.0) or getattr(params, "presence_penalty", 0.0):
        return False
    if getattr(params, "repetition_penalty", 1.0) != 1.0 or getattr(params, "min_new_tokens", 0):
        return False
    return True
