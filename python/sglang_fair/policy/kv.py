"""What SGLang 0.5.23 reserves in the KV pool when it admits a prompt, written once for every driver.

A server does not know how many tokens a request will generate, only its ``max_new_tokens``.
SGLang's ``PrefillAdder`` therefore admits a waiting request only while an *estimate* of the KV the
admitted requests will need fits in the pool (``free + evictable``):

* a new (or retracted, re-queued) request is charged its remaining fill plus
  ``min(max_new_tokens - generated, CLIP_MAX_NEW_TOKENS)``, in full;
* a running request is charged its remaining ``min(max_new_tokens - generated, CLIP)`` scaled by the
  *new-token ratio*, a guess of the share of ``max_new_tokens`` that requests really generate.  The
  ratio starts at 0.7, decays linearly to 0.7 x 0.14 over 600 decode steps, and after a retraction is
  reset to what the remaining requests have generated (plus 20 steps' worth) over what they may;
* a request that ignores EOS will generate all of its ``max_new_tokens``: ratio 1.

When decodes outgrow the pool anyway, SGLang retracts running requests (fewest generated tokens
first, the longest prompt among equals), frees their KV and re-queues them.

The simulator owns a :class:`NewTokenRatio` per replica and uses these functions to build the view's
``admission_kv_tokens`` and to retract; the policies' :class:`~sglang_fair.policy.base.BatchBuilder`
charges admissions with :func:`admission_reservation_tokens`; the runtime reads SGLang's own ratio.
"""

from __future__ import annotations

from typing import Iterable

from .request import RequestState

__all__ = [
    "CLIP_MAX_NEW_TOKENS",
    "NewTokenRatio",
    "admission_reservation_tokens",
    "retraction_order",
    "running_reservation_tokens",
]

#: SGLang's ``SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION`` default.
CLIP_MAX_NEW_TOKENS = 4096
#: SGLang's new-token ratio schedule (``SGLANG_INIT_NEW_TOKEN_RATIO``, ``..._MIN_..._FACTOR``,
#: ``..._DECAY_STEPS``, ``SGLANG_RETRACT_DECODE_STEPS``), schedule conservativeness 1.
INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO_FACTOR = 0.14
NEW_TOKEN_RATIO_DECAY_STEPS = 600
RETRACT_DECODE_STEPS = 20


def _tokens_left(request: RequestState) -> int:
    """Output tokens the request may still generate, clipped as SGLang clips its estimate."""
    limit = request.max_new_tokens
    if limit is None:
        return CLIP_MAX_NEW_TOKENS
    return min(max(limit - request.generated_tokens, 0), CLIP_MAX_NEW_TOKENS)


def admission_reservation_tokens(request: RequestState) -> int:
    """KV an admission charges a waiting request: its remaining fill and every token it may generate."""
    return request.fill_tokens - request.prefilled_tokens + _tokens_left(request)


def running_reservation_tokens(requests: Iterable[RequestState], ratio: float) -> float:
    """KV SGLang holds back for the tokens running requests may still generate."""
    return ratio * sum(_tokens_left(request) for request in requests)


def retraction_order(running: list[RequestState]) -> list[RequestState]:
    """``running`` in the order SGLang retracts them: fewest generated tokens first, the longest
    prompt first among equals."""
    return sorted(running, key=lambda r: (r.generated_tokens, -r.prompt_tokens))


class NewTokenRatio:
    """SGLang's new-token ratio: decays with every decode step, jumps back up after a retraction."""

    __slots__ = ("current", "minimum", "decay")

    def __init__(self) -> None:
        self.current = INIT_NEW_TOKEN_RATIO
        self.minimum = INIT_NEW_TOKEN_RATIO * MIN_NEW_TOKEN_RATIO_FACTOR
        self.decay = (INIT_NEW_TOKEN_RATIO - self.minimum) / NEW_TOKEN_RATIO_DECAY_STEPS

    def decode_step(self) -> None:
        current = self.current - self.decay
        self.current = current if current > self.minimum else self.minimum

    def decode_steps(self, steps: int) -> None:
        """:meth:`decode_step` ``steps`` times (a simulator's run of decode steps); once at the
        minimum the ratio stays there, so the rest are skipped."""
        for _ in range(steps):
            if self.current == self.minimum:
                return
            self.decode_step()

    def after_retraction(self, still_running: Iterable[RequestState]) -> None:
        """What the requests kept have generated (plus a few steps) over what they may generate."""
        generated = may_generate = count = 0
        for request in still_running:
            generated += request.generated_tokens
            may_generate += request.max_new_tokens or CLIP_MAX_NEW_TOKENS
            count += 1
        self.current = min(1.0, (generated + RETRACT_DECODE_STEPS * count) / (may_generate + 1))
