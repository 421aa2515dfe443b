"""Per-request scheduling state and the SLO envelope derived from it.

A request i that arrives at ``arrival_s`` with SLOs ``(ttft_slo_s, tpot_slo_s)`` owes its first token
by ``arrival_s + ttft_slo_s`` and its j-th output token (j >= 1) by
``min(arrival_s + ttft_slo_s, first_token_s) + j * tpot_slo_s``: the envelope line, anchored at the
first token when that came early.  Anchoring matters because the judged TPOT SLO is the *mean* time
per output token after the first: a request whose first token came 0.8 s early could otherwise spend
those 0.8 s between later tokens and miss its TPOT while staying inside the arrival-anchored
envelope.  Meeting every deadline of this line meets both the envelope (every token j by
``arrival + ttft + j * tpot``) and the mean-TPOT definition.  Slack is the deadline of the *next*
token minus now.  Deadlines and slack are always derived, never stored, so the record
cannot disagree with itself.

The judged verdicts (:func:`meets_ttft`, :func:`meets_mean_tpot`, :meth:`RequestState.envelope_slack_s`)
are defined here once; the simulator's metrics, the runtime's counters and its Prometheus metrics call
them (the first two take numpy arrays as well as numbers).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["RequestState", "SLO_TOLERANCE_S", "any_lost", "envelope_slacks_s", "mean_tpot_s", "meets_envelope",
           "meets_mean_tpot", "meets_ttft", "next_deadlines_s", "validate_slo"]

#: Float round-off allowed in the judged comparisons (seconds).
SLO_TOLERANCE_S = 1e-9


def meets_ttft(ttft_s, ttft_slo_s):
    """The judged TTFT verdict (numbers or numpy arrays)."""
    return ttft_s <= ttft_slo_s + SLO_TOLERANCE_S


def mean_tpot_s(first_token_s, last_token_s, generated_tokens):
    """Mean time per output token after the first (0 for a one-token output; numbers or arrays)."""
    if isinstance(generated_tokens, int):  # one request (every finish): numpy's scalar path is slow
        return (last_token_s - first_token_s) / max(generated_tokens - 1, 1)
    return (last_token_s - first_token_s) / np.maximum(generated_tokens - 1, 1)


def meets_mean_tpot(mean_tpot, tpot_slo_s):
    """The judged TPOT verdict: the *mean* time per output token after the first (numbers or arrays)."""
    return mean_tpot <= tpot_slo_s + SLO_TOLERANCE_S


def meets_envelope(worst_envelope_slack_s):
    """The envelope verdict: no token came out after its line (:meth:`RequestState.envelope_slack_s`
    of every token >= 0; numbers or arrays)."""
    return worst_envelope_slack_s >= -SLO_TOLERANCE_S


class RequestState:
    """The small record a policy sees for one request.

    The driver (simulator or SGLang runtime) owns it and updates the progress fields
    (``prefilled_tokens``, ``generated_tokens``, ``last_token_s``) after each iteration; policies
    only read it.  ``handle`` is an opaque reference the driver uses to map a plan back to its own
    objects (an SGLang ``Req``, a simulator record).
    """

    __slots__ = (
        "rid",
        "client",
        "arrival_s",
        "ttft_slo_s",
        "tpot_slo_s",
        "prompt_tokens",
        "fill_tokens",
        "prefilled_tokens",
        "generated_tokens",
        "_max_new_tokens",
        "can_skip",
        "_first_token_s",
        "last_token_s",
        "line_start_s",
        "lost_after_s",
        "skipped_iterations",
        "handle",
    )

    def __init__(
        self,
        rid: str,
        arrival_s: float,
        prompt_tokens: int,
        ttft_slo_s: float,
        tpot_slo_s: float,
        *,
        client: str = "default",
        max_new_tokens: int | None = None,
        can_skip: bool = True,
        prefilled_tokens: int = 0,
        generated_tokens: int = 0,
        handle: object = None,
    ) -> None:
        self.rid = rid
        self.client = client
        self.arrival_s = arrival_s
        self.ttft_slo_s = ttft_slo_s
        self.tpot_slo_s = tpot_slo_s
        self.prompt_tokens = prompt_tokens
        # What must be in KV before the next decode: the prompt, or after a retraction (KV dropped
        # under memory pressure) the prompt and every token generated so far.
        self.fill_tokens = prompt_tokens
        self.prefilled_tokens = prefilled_tokens
        self.generated_tokens = generated_tokens
        self._max_new_tokens = max_new_tokens
        # False for requests whose state a skipped iteration would corrupt (penalizers, grammar...).
        self.can_skip = can_skip
        self.last_token_s: float | None = None
        # Fixed when the first token comes out (the first_token_s setter), so the per-iteration
        # questions below are one multiply-add each: where the planning line starts (the first
        # token's deadline, or the first token itself if earlier) and when the request can no
        # longer meet its SLO.
        self.line_start_s = arrival_s + ttft_slo_s
        self.lost_after_s = math.inf
        self._first_token_s: float | None = None
        self.skipped_iterations = 0
        self.handle = handle

    # --- derived envelope -------------------------------------------------------------------
    def deadline_s(self, token_index: int) -> float:
        """Deadline of output token ``token_index`` (0 is the first token)."""
        if token_index == 0:
            return self.arrival_s + self.ttft_slo_s
        return self.line_start_s + self.tpot_slo_s * token_index

    @property
    def next_deadline_s(self) -> float:
        """Deadline of the next token: the planning line every policy step reads."""
        return self.line_start_s + self.tpot_slo_s * self.generated_tokens

    def slack_s(self, now_s: float) -> float:
        """Time left until the next token is due; negative means late."""
        return self.line_start_s + self.tpot_slo_s * self.generated_tokens - now_s

    # --- judged SLO definitions (docs/design.md, Metrics), shared by the simulator and runtime ---
    def envelope_deadline_s(self, token_index: int) -> float:
        """The judged envelope line: token j due by ``arrival + ttft + j * tpot`` (not anchored)."""
        return self.arrival_s + self.ttft_slo_s + self.tpot_slo_s * token_index

    def envelope_slack_s(self, token_index: int, emitted_s: float) -> float:
        """How early token ``token_index`` came out at ``emitted_s`` against the judged envelope
        (negative: late)."""
        return self.arrival_s + self.ttft_slo_s + self.tpot_slo_s * token_index - emitted_s

    def slo_met(self) -> tuple[bool, bool]:
        """``(ttft_met, mean_tpot_met)`` of a request that has its first token (:func:`meets_ttft`,
        :func:`meets_mean_tpot`; a one-token output has no TPOT and meets it)."""
        ttft_met = bool(meets_ttft(self.first_token_s - self.arrival_s, self.ttft_slo_s))
        tpot = mean_tpot_s(self.first_token_s, self.last_token_s, self.generated_tokens)
        return ttft_met, bool(meets_mean_tpot(tpot, self.tpot_slo_s))

    def is_lost(self, now_s: float) -> bool:
        """Whether a decode can no longer meet its SLO: it missed its TTFT, or even its last possible
        token (``max_new_tokens``) is already past its line."""
        return now_s > self.lost_after_s

    @property
    def first_token_s(self) -> float | None:
        return self._first_token_s

    @first_token_s.setter
    def first_token_s(self, emitted_s: float | None) -> None:
        self._first_token_s = emitted_s
        self._fix_lines()

    @property
    def max_new_tokens(self) -> int | None:
        return self._max_new_tokens

    @max_new_tokens.setter
    def max_new_tokens(self, tokens: int | None) -> None:
        self._max_new_tokens = tokens
        self._fix_lines()

    def _fix_lines(self) -> None:
        emitted_s = self._first_token_s
        due_s = self.arrival_s + self.ttft_slo_s
        self.line_start_s = emitted_s if emitted_s is not None and emitted_s < due_s else due_s
        if emitted_s is None:
            self.lost_after_s = math.inf
        elif emitted_s > due_s:
            self.lost_after_s = -math.inf
        elif self.max_new_tokens:
            self.lost_after_s = emitted_s + (self.max_new_tokens - 1) * self.tpot_slo_s
        else:
            self.lost_after_s = math.inf

    @property
    def remaining_prefill_tokens(self) -> int:
        return self.fill_tokens - self.prefilled_tokens

    @property
    def is_prefilling(self) -> bool:
        return self.prefilled_tokens < self.fill_tokens

    @property
    def context_tokens(self) -> int:
        """KV tokens this request attends to in its next decode step."""
        return self.prefilled_tokens + self.generated_tokens

    # --- bookkeeping helpers for drivers ----------------------------------------------------
    def record_prefill(self, tokens: int, end_s: float) -> None:
        """Account a prefill chunk; the chunk that completes the fill emits a token (the first one,
        or after a retraction the next one)."""
        self.prefilled_tokens += tokens
        if self.prefilled_tokens >= self.fill_tokens:
            # The fill is in KV: the prompt, and any regenerated outputs, which context_tokens
            # counts through generated_tokens.
            self.prefilled_tokens = self.fill_tokens = self.prompt_tokens
            self.record_token(end_s)

    def record_retraction(self) -> None:
        """Its KV was dropped under memory pressure: prompt and outputs so far must be prefilled again."""
        self.fill_tokens = self.prompt_tokens + self.generated_tokens
        self.prefilled_tokens = 0

    def record_token(self, end_s: float) -> None:
        if self.generated_tokens == 0:
            self.first_token_s = end_s
        self.generated_tokens += 1
        self.last_token_s = end_s

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return (
            f"RequestState(rid={self.rid!r}, client={self.client!r}, prompt={self.prompt_tokens}, "
            f"fill={self.fill_tokens}, prefilled={self.prefilled_tokens}, generated={self.generated_tokens})"
        )


# --- the same questions for many requests at once ---------------------------------------------
# Planning and the simulator ask them of every running request every iteration; a property or
# method call costs several times its arithmetic, so these are the same expressions, term for term
# (the results are bit for bit those of the methods; test_request checks it), in one comprehension.
# (Here and in the methods a product is written ``tpot * tokens``: the float first takes the int
# directly, where ``int * float`` first asks the int, which declines; the product is the same.)

def next_deadlines_s(requests) -> list[float]:
    """Each request's :attr:`RequestState.next_deadline_s`."""
    return [r.line_start_s + r.tpot_slo_s * r.generated_tokens for r in requests]


def envelope_slacks_s(requests, emitted_s: float, ahead_tokens: int = 0) -> list[float]:
    """Each request's :meth:`RequestState.envelope_slack_s` for its next token (``generated_tokens``),
    or the token ``ahead_tokens`` after it, out at ``emitted_s``."""
    if ahead_tokens:
        return [r.arrival_s + r.ttft_slo_s + r.tpot_slo_s * (r.generated_tokens + ahead_tokens) - emitted_s
                for r in requests]
    return [r.arrival_s + r.ttft_slo_s + r.tpot_slo_s * r.generated_tokens - emitted_s for r in requests]


def any_lost(requests, now_s: float) -> bool:
    """Whether :meth:`RequestState.is_lost` holds at ``now_s`` for any of ``requests``."""
    return bool(requests) and now_s > min([r.lost_after_s for r in requests])


#: SLOs outside this range are almost certainly a unit mistake (milliseconds passed as seconds).
MAX_SLO_S = 3600.0


def validate_slo(field: str, value: object) -> float:
    """Return ``value`` as seconds or raise ``ValueError`` naming ``field``.

    Used by every entry point that accepts SLOs from users (flags, ``custom_params``, trace
    files), so the rules and the messages are the same everywhere.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{field} must be a number of seconds, got {type(value).__name__}")
    seconds = float(value)
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"{field} must be a finite number of seconds, got {value!r}")
    if seconds <= 0:
        raise ValueError(f"{field} must be positive (seconds), got {value!r}")
    if seconds > MAX_SLO_S:
        raise ValueError(f"{field} must be at most {MAX_SLO_S:g} seconds, got {value!r}")
    return seconds
