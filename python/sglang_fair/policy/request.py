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
"""

from __future__ import annotations

import math

__all__ = ["RequestState", "validate_slo"]


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
        "prefilled_tokens",
        "generated_tokens",
        "max_new_tokens",
        "can_skip",
        "first_token_s",
        "last_token_s",
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
        self.prefilled_tokens = prefilled_tokens
        self.generated_tokens = generated_tokens
        self.max_new_tokens = max_new_tokens
        # False for requests whose state a skipped iteration would corrupt (penalizers, grammar...).
        self.can_skip = can_skip
        self.first_token_s: float | None = None
        self.last_token_s: float | None = None
        self.skipped_iterations = 0
        self.handle = handle

    # --- derived envelope -------------------------------------------------------------------
    def _anchor_s(self) -> float:
        first_due_s = self.arrival_s + self.ttft_slo_s
        first_s = self.first_token_s
        return first_s if first_s is not None and first_s < first_due_s else first_due_s

    def deadline_s(self, token_index: int) -> float:
        """Deadline of output token ``token_index`` (0 is the first token)."""
        if token_index == 0:
            return self.arrival_s + self.ttft_slo_s
        return self._anchor_s() + token_index * self.tpot_slo_s

    @property
    def next_deadline_s(self) -> float:
        return self._anchor_s() + self.generated_tokens * self.tpot_slo_s

    def slack_s(self, now_s: float) -> float:
        """Time left until the next token is due; negative means late."""
        return self._anchor_s() + self.generated_tokens * self.tpot_slo_s - now_s

    # --- judged SLO definitions (docs/design.md, Metrics), shared by the simulator and runtime ---
    def envelope_deadline_s(self, token_index: int) -> float:
        """The judged envelope line: token j due by ``arrival + ttft + j * tpot`` (not anchored)."""
        return self.arrival_s + self.ttft_slo_s + token_index * self.tpot_slo_s

    def slo_met(self) -> tuple[bool, bool]:
        """``(ttft_met, mean_tpot_met)`` of a request that has its first token.

        Mean TPOT is the time from the first to the last token over the tokens after the first; a
        one-token output has no TPOT and meets it.
        """
        ttft_met = self.first_token_s - self.arrival_s <= self.ttft_slo_s
        if self.generated_tokens < 2:
            return ttft_met, True
        mean_tpot_s = (self.last_token_s - self.first_token_s) / (self.generated_tokens - 1)
        return ttft_met, mean_tpot_s <= self.tpot_slo_s

    @property
    def remaining_prefill_tokens(self) -> int:
        return self.prompt_tokens - self.prefilled_tokens

    @property
    def is_prefilling(self) -> bool:
        return self.prefilled_tokens < self.prompt_tokens

    @property
    def context_tokens(self) -> int:
        """KV tokens this request attends to in its next decode step."""
        return self.prefilled_tokens + self.generated_tokens

    # --- bookkeeping helpers for drivers ----------------------------------------------------
    def record_prefill(self, tokens: int, end_s: float) -> None:
        """Account a prefill chunk; the chunk that completes the prompt emits the first token."""
        self.prefilled_tokens += tokens
        if self.prefilled_tokens >= self.prompt_tokens:
            self.prefilled_tokens = self.prompt_tokens
            self.record_token(end_s)

    def record_token(self, end_s: float) -> None:
        if self.generated_tokens == 0:
            self.first_token_s = end_s
        self.generated_tokens += 1
        self.last_token_s = end_s

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return (
            f"RequestState(rid={self.rid!r}, client={self.client!r}, prompt={self.prompt_tokens}, "
            f"prefilled={self.prefilled_tokens}, generated={self.generated_tokens})"
        )


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
