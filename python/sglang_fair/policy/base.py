"""The interface every batch policy implements, and the pieces they share.

A driver (the simulator or the SGLang runtime) calls, once per iteration::

    plan = policy.plan(view)              # which decodes run, which prefills get how many tokens
    ... run the batch ...
    policy.observe(plan, measured_s)      # feeds the online cost model

and ``policy.admission_budget(view)`` whenever a load balancer or admission control asks how much
more prefill work this replica can take and still meet TTFT SLOs (the PAB).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

from .cost_model import BatchShape, CostModel, OnlineCostModel
from .kv import admission_reservation_tokens
from .limits import UNLIMITED
from .request import RequestState

__all__ = [
    "AdmissionBudget",
    "BatchBuilder",
    "BatchPolicy",
    "IterationView",
    "Plan",
    "PrefillChunk",
    "decode_utilisation",
    "first_token_deadline",
    "min_first_token_slack_s",
    "prefill_admission_budget",
]


def _sum_context_sq(requests: Sequence[RequestState]) -> int:
    """The requests' ``context_tokens`` squared, summed (what ``mixed_context_sq`` prices)."""
    total = 0
    for request in requests:
        context = request.context_tokens
        total += context * context
    return total


@dataclass(slots=True)
class IterationView:
    """What a policy may look at to plan one iteration.

    ``decodes`` are running requests whose prompt is fully prefilled; ``prefills`` are requests with
    prompt tokens left, the partially prefilled (chunked) ones first, then the waiting queue in
    arrival order.  ``free_kv_tokens`` is what the KV pool can still hand out this iteration (prefill
    chunks and one slot per decode).  A waiting request joins only while SGLang's admission estimate
    fits (:mod:`sglang_fair.policy.kv`): ``admission_kv_tokens`` is the pool's headroom under that
    estimate, ``admission_seats`` how many more requests may join the running set.
    """

    now_s: float
    decodes: Sequence[RequestState]
    prefills: Sequence[RequestState]
    free_kv_tokens: int = UNLIMITED
    total_kv_tokens: int = UNLIMITED
    max_batch_requests: int = UNLIMITED
    #: Hard cap on prefill tokens per iteration (activation memory), as SGLang's chunked prefill size.
    max_prefill_tokens: int = UNLIMITED
    admission_kv_tokens: float = UNLIMITED
    admission_seats: int = UNLIMITED
    #: The decodes' summed ``context_tokens``, when the driver keeps it (saves a pass over them).
    decode_context_tokens: int | None = None
    #: The decodes' ``context_tokens`` squared and summed, when the driver keeps it.
    decode_context_sq: int | None = None

    def decodes_context_tokens(self) -> int:
        """The decodes' summed ``context_tokens``: :attr:`decode_context_tokens`, else a pass."""
        if self.decode_context_tokens is not None:
            return self.decode_context_tokens
        return sum(request.context_tokens for request in self.decodes)

    def decodes_context_sq(self) -> int:
        """The decodes' ``context_tokens`` squared, summed: :attr:`decode_context_sq`, else a pass
        over them (then call it only where a model prices it, i.e. has a non-zero
        ``per_mixed_context_sq_s``)."""
        if self.decode_context_sq is not None:
            return self.decode_context_sq
        return _sum_context_sq(self.decodes)

    @property
    def kv_used_fraction(self) -> float:
        if self.total_kv_tokens >= UNLIMITED or self.total_kv_tokens <= 0:
            return 0.0
        return 1.0 - self.free_kv_tokens / self.total_kv_tokens


@dataclass(slots=True)
class PrefillChunk:
    request: RequestState
    tokens: int


@dataclass(slots=True)
class Plan:
    """One iteration's batch, with the numbers that explain it."""

    decodes: list[RequestState] = field(default_factory=list)
    prefills: list[PrefillChunk] = field(default_factory=list)
    shape: BatchShape = field(default_factory=BatchShape)
    time_budget_s: float = math.inf
    predicted_s: float = 0.0
    urgent_decodes: int = 0
    skipped_decodes: int = 0
    #: The model whose prediction for ``shape`` ``predicted_s`` is (set by BatchBuilder.finish), so
    #: a reader asking that model about that shape need not ask again; None: not known.
    predicted_by: CostModel | None = None
    #: Which step of the policy decided the batch's shape (e.g. ``"mixed"``, ``"apart: prefill,
    #: amortised"``): for iteration logs and debugging only, never read by a driver's logic.
    step: str = ""

    @property
    def empty(self) -> bool:
        return not self.decodes and not self.prefills

    @property
    def prefill_tokens(self) -> int:
        return sum(chunk.tokens for chunk in self.prefills)


@dataclass(slots=True)
class AdmissionBudget:
    """Prefill Admission Budget: spare prefill work this replica can take within TTFT SLOs."""

    seconds: float
    tokens: float
    horizon_s: float
    decode_utilisation: float


class BatchBuilder:
    """Fills a plan while tracking KV, seats, token and time limits.

    Policies differ in the order they offer requests and in which limit binds (a token budget for
    Sarathi-like peers, a time budget for FairBatching); the accounting is written once, here.
    """

    __slots__ = ("plan", "model", "kv_left", "seats_left", "tokens_left", "prefill_tokens_left",
                 "time_budget_s", "predicted_s", "mixing_s", "prefill_work_s", "admission_left",
                 "admission_seats_left", "admission_blocked", "chunk_open", "decode_context_sq_pending")

    def __init__(
        self,
        view: IterationView,
        model: CostModel,
        *,
        token_budget: int = UNLIMITED,
        time_budget_s: float = math.inf,
    ) -> None:
        self.plan = Plan(time_budget_s=time_budget_s)
        self.model = model
        self.kv_left = view.free_kv_tokens
        self.seats_left = view.max_batch_requests
        self.tokens_left = token_budget
        self.prefill_tokens_left = view.max_prefill_tokens
        self.time_budget_s = time_budget_s
        self.predicted_s = model.fixed_s
        #: What the plan's prefill chunks cost: the extend path's overhead, and their own tokens.
        self.mixing_s = 0.0
        self.prefill_work_s = 0.0
        self.admission_left = view.admission_kv_tokens
        self.admission_seats_left = view.admission_seats
        #: Set once a waiting request did not fit the admission estimate: like SGLang's adder, no
        #: later waiting request is admitted this iteration (continuing chunks still are).
        self.admission_blocked = False
        #: Set once a chunk leaves its prompt partly prefilled: nothing more is prefilled this
        #: iteration.  SGLang 0.5.23 keeps one chunked request (``Scheduler.chunked_req``) and its
        #: adder fills the iteration's token budget in queue order, the chunked request first and
        #: every other prompt whole, so only the last prompt of a batch can be cut.
        self.chunk_open = False
        #: Set when :meth:`add_all_decodes` left its rows' squared contexts out of the shape (no
        #: prefill yet): the first prefill chunk adds them before it prices the mixing cost.
        self.decode_context_sq_pending = False

    @property
    def mixed(self) -> bool:
        """Whether the plan holds a prefill chunk (the batch then runs on the dearer extend path)."""
        return bool(self.plan.prefills)

    @property
    def time_left_s(self) -> float:
        return self.time_budget_s - self.predicted_s

    def add_decode(self, request: RequestState, *, force: bool = False) -> bool:
        """Add one decode if it fits (``force`` ignores the token and time budgets, not KV)."""
        if self.kv_left < 1 or self.seats_left < 1:
            return False
        context = request.context_tokens
        cost_s = self.model.decode_cost_s(context)
        if self.mixed:
            cost_s += self.model.extend_rows_cost_s(1, context, context * context)
        if not force and (self.tokens_left < 1 or cost_s > self.time_left_s):
            return False
        self.kv_left -= 1
        self.seats_left -= 1
        self.tokens_left -= 1
        self.predicted_s += cost_s
        self.plan.decodes.append(request)
        self.plan.shape.add_decode(context)
        return True

    def add_decodes(self, requests: Sequence[RequestState], *, force: bool = False,
                    sum_context: int | None = None, sum_context_sq: int | None = None) -> int:
        """Add ``requests`` in order while they fit; return how many were added.

        Same rules as :meth:`add_decode` (stops at the first that does not fit), in one pass with
        the totals kept in locals: this is the per-iteration hot path of every policy.
        ``sum_context`` and ``sum_context_sq``: the requests' contexts summed and their squares
        summed, when the caller has them: requests that all certainly fit are then added without
        a pass (:meth:`add_all_decodes`; ``predicted_s`` is then their summed cost rounded once,
        not request by request).
        """
        if (sum_context is not None and sum_context_sq is not None and not force
                and self._all_fit(len(requests), sum_context, sum_context_sq)):
            self.add_all_decodes(requests, sum_context, sum_context_sq)
            return len(requests)
        per_decode_s, per_context_s, per_context_sq_s = self.model.decode_rates_s(self.mixed)
        limit = min(self.kv_left, self.seats_left)
        if not force:
            limit = min(limit, self.tokens_left)
        room_s = math.inf if force else self.time_budget_s - self.predicted_s
        added_s = 0.0
        added_context = 0
        added_context_sq = 0
        head = requests if len(requests) <= limit else requests[:max(limit, 0)]
        count = len(head)  # unless one does not fit
        for index, request in enumerate(head):
            context = request.prefilled_tokens + request.generated_tokens
            cost_s = per_decode_s + (per_context_s + per_context_sq_s * context) * context
            if cost_s > room_s - added_s:
                count = index
                break
            added_s += cost_s
            added_context += context
            added_context_sq += context * context
        if count:
            self.plan.decodes.extend(requests[:count] if count < len(requests) else requests)
            self.kv_left -= count
            self.seats_left -= count
            self.tokens_left -= count
            self.predicted_s += added_s
            shape = self.plan.shape
            shape.new_tokens += count
            shape.sum_context += added_context
            shape.decode_context += added_context
            shape.decode_context_sq += added_context_sq
            shape.num_seqs += count
        return count

    def _all_fit(self, count: int, sum_context: int, sum_context_sq: int) -> bool:
        """Whether :meth:`add_decodes` would add all ``count`` requests (contexts summing to
        ``sum_context``, squares to ``sum_context_sq``), known without a pass: they fit KV, seats
        and tokens, and their summed cost with a negative per-row rate taken as 0 (so that every
        prefix of the one-by-one sum is below it) fits the time left with a 1e-9 margin, far
        above that sum's rounding (about 1e-13 of it at 256 rows)."""
        if count > min(self.kv_left, self.seats_left, self.tokens_left):
            return False
        per_decode_s, per_context_s, per_context_sq_s = self.model.decode_rates_s(self.mixed)
        if per_context_s < 0 or per_context_sq_s < 0:
            return False
        bound_s = count * max(per_decode_s, 0.0) + per_context_s * sum_context + per_context_sq_s * sum_context_sq
        return bound_s * (1.0 + 1e-9) < self.time_budget_s - self.predicted_s

    def add_all_decodes(self, requests: Sequence[RequestState], sum_context: int,
                        sum_context_sq: int | None = None) -> None:
        """Add every one of ``requests`` (the caller checked KV and seats) whose contexts sum to
        ``sum_context`` (and their squares to ``sum_context_sq``, when the caller has it): the
        decode step's accounting without a pass over the requests.

        Without ``sum_context_sq``, their squared contexts (``mixed_context_sq``) take a pass only
        in a batch with a prefill.  Without one the shape's ``decode_context_sq`` leaves these rows
        out: the feature is 0 without a prefill, and a first chunk joining later adds them
        (``decode_context_sq_pending``) before pricing its mixing cost.  So the decode step (every
        policy's, on every model) pays no pass."""
        count = len(requests)
        mixed = self.mixed
        per_decode_s, per_context_s, per_context_sq_s = self.model.decode_rates_s(mixed)
        self.kv_left -= count
        self.seats_left -= count
        self.tokens_left -= count
        self.predicted_s += per_decode_s * count + per_context_s * sum_context
        self.plan.decodes.extend(requests)
        shape = self.plan.shape
        shape.new_tokens += count
        shape.sum_context += sum_context
        shape.decode_context += sum_context
        shape.num_seqs += count
        if sum_context_sq is not None:
            self.predicted_s += per_context_sq_s * sum_context_sq  # (a 0 rate without a prefill)
            shape.decode_context_sq += sum_context_sq
        elif mixed:
            sum_context_sq = _sum_context_sq(requests)
            self.predicted_s += per_context_sq_s * sum_context_sq
            shape.decode_context_sq += sum_context_sq
        elif count:
            self.decode_context_sq_pending = True

    def first_chunk_mixing_s(self) -> float:
        """What a first prefill chunk would add to this plan besides its own tokens (0 once the plan
        has one): :meth:`decode_rows_mixing_s`."""
        return 0.0 if self.plan.prefills else self.decode_rows_mixing_s()

    def decode_rows_mixing_s(self) -> float:
        """The extend path's cost for this plan's decode rows beyond a decode-only step's: its fixed
        cost and the rows' extra cost there (their squared contexts summed first if
        :meth:`add_all_decodes` left them out)."""
        plan = self.plan
        shape = plan.shape
        if self.decode_context_sq_pending:
            shape.decode_context_sq = _sum_context_sq(plan.decodes)
            self.decode_context_sq_pending = False
        return self.model.mixing_cost_s(len(plan.decodes), shape.decode_context, shape.decode_context_sq)

    def add_prefill(self, request: RequestState, *, min_chunk: int = 1, force: bool = False,
                    max_chunk: int = UNLIMITED) -> int:
        """Give ``request`` the largest chunk the limits allow; returns the tokens granted.

        A chunk smaller than ``min_chunk`` (unless it finishes the prompt) is not worth its fixed
        cost and is refused.  ``force`` ignores the time budget (used to guarantee progress).
        ``max_chunk`` caps this one chunk (FairBatching's most-efficient chunk size).  The first
        chunk of a plan also pays the model's mixing cost (the extend path, for every decode row
        and its context).
        A waiting request (nothing of it prefilled) is admitted only if it has a seat and SGLang's
        reservation for it fits the admission headroom; otherwise admission stops for this plan.
        """
        if self.seats_left < 1 or self.chunk_open:
            return 0
        prefix = request.prefilled_tokens
        admitting = prefix == 0
        if admitting:
            if self.admission_blocked:
                return 0
            reservation = admission_reservation_tokens(request)
            if self.admission_seats_left < 1 or not reservation < self.admission_left:
                self.admission_blocked = True
                return 0
        # (remaining_prefill_tokens, mixed and time_left_s written out: this runs for every prompt
        # offered to every plan.)
        remaining = request.fill_tokens - prefix
        limit = min(remaining, self.kv_left, self.tokens_left, self.prefill_tokens_left, max_chunk)
        plan = self.plan
        model = self.model
        mixing_s = self.first_chunk_mixing_s()
        if not force and self.time_budget_s < math.inf:
            limit = min(limit, model.max_chunk_tokens(self.time_budget_s - self.predicted_s - mixing_s, prefix))
        if limit <= 0 or (limit < min_chunk and limit < remaining):
            if not admitting:
                # SGLang serves its chunked request before any other prompt: one that gets no chunk
                # leaves no room to start another (which would make two partly prefilled prompts).
                self.chunk_open = True
            return 0
        if admitting:
            self.admission_left -= reservation
            self.admission_seats_left -= 1
        self.mixing_s += mixing_s
        self.predicted_s += mixing_s
        self.kv_left -= limit
        self.seats_left -= 1
        self.tokens_left -= limit
        self.prefill_tokens_left -= limit
        work_s = model.prefill_cost_s(limit, prefix)
        self.prefill_work_s += work_s
        self.predicted_s += work_s
        plan.prefills.append(PrefillChunk(request, limit))
        plan.shape.add_prefill(limit, prefix)
        if limit < remaining:
            self.chunk_open = True
        return limit

    def finish(self, view: IterationView) -> Plan:
        plan = self.plan
        if plan.empty:
            plan.predicted_s = 0.0
        else:
            plan.predicted_s = self.model.predict_shape(plan.shape)
            plan.predicted_by = self.model
        plan.skipped_decodes = len(view.decodes) - len(plan.decodes)
        return plan


class BatchPolicy:
    """Base class: subclasses implement ``plan``; ``observe`` and the PAB come for free."""

    name: ClassVar[str] = "base"
    #: Whether the policy may leave running decodes out of an iteration.
    skips_decodes: ClassVar[bool] = False

    def __init__(self, cost_model: CostModel | OnlineCostModel, *, default_ttft_slo_s: float = 1.0) -> None:
        if isinstance(cost_model, OnlineCostModel):
            self.online = cost_model
        else:
            self.online = None
            self._static_model = cost_model
        self.default_ttft_slo_s = default_ttft_slo_s

    @property
    def cost_model(self) -> CostModel:
        return self.online.current if self.online is not None else self._static_model

    def plan(self, view: IterationView) -> Plan:  # pragma: no cover - abstract
        raise NotImplementedError

    def plan_decode_step(self, view: IterationView) -> Plan:
        """The iteration a driver runs when nothing waits to be prefilled: every decode.  A decode
        that sat out would free compute for nobody (SGLang's decode step in the runtime)."""
        builder = BatchBuilder(view, self.cost_model)
        if view.decode_context_tokens is None or len(view.decodes) > min(builder.kv_left, builder.seats_left):
            builder.add_decodes(view.decodes, force=True)
        else:
            builder.add_all_decodes(view.decodes, view.decode_context_tokens)
        return builder.finish(view)

    def observe(self, plan: Plan, measured_s: float) -> None:
        online = self.online
        if online is not None:
            # The plan's own prediction when the model that made it is still the current one.
            online.observe(plan.shape, measured_s, plan.predicted_s if plan.predicted_by is online.current else None)

    def observe_decode_steps(self, decodes: Sequence[RequestState], sum_context: int,
                             measured_s: Sequence[float], predicted_s: Sequence[float] | None = None,
                             predicted_by: CostModel | None = None) -> None:
        """:meth:`observe` of decode steps run back to back, each the plan :meth:`plan_decode_step`
        makes (every one of ``decodes``), the k-th attending to ``sum_context + k * len(decodes)``
        KV tokens and measured at ``measured_s[k]``: a driver's run of decode-only iterations
        reported in one call.  ``predicted_s``: each step's time as ``predicted_by`` predicts it,
        when the driver has them (a policy may use them while that is its current model).  This is
        those calls, one per step; a policy may do the same faster."""
        count = len(decodes)
        for k, step_s in enumerate(measured_s):
            shape = BatchShape()
            shape.new_tokens = shape.num_seqs = count
            shape.sum_context = shape.decode_context = sum_context + k * count
            self.observe(Plan(decodes, [], shape, math.inf, self.cost_model.predict_shape(shape)), step_s)

    def admission_budget(self, view: IterationView) -> AdmissionBudget:
        return prefill_admission_budget(view, self.cost_model, self.default_ttft_slo_s)

    def admit(self, request: RequestState, view: IterationView) -> bool:
        """Admission control: can this replica still meet ``request``'s TTFT?"""
        budget = prefill_admission_budget(view, self.cost_model, request.ttft_slo_s)
        return budget.seconds >= self.cost_model.prefill_cost_s(request.prompt_tokens, 0)

    def release(self, request: RequestState) -> None:
        """The driver calls this once a request finishes or is aborted (drop per-request state)."""

    def describe(self) -> dict:
        """Settings and state worth showing on a status endpoint."""
        return {"policy": self.name, "cost_model": self.cost_model.describe()}

    # Helper shared by policies that guarantee progress: never return an empty plan when work exists.
    @staticmethod
    def ensure_progress(builder: BatchBuilder, view: IterationView) -> None:
        if not builder.plan.empty:
            return
        for request in view.prefills:
            if builder.add_prefill(request, force=True):
                return
        for request in view.decodes:
            if builder.add_decode(request, force=True):
                return


def prefill_admission_budget(
    view: IterationView, model: CostModel, horizon_s: float
) -> AdmissionBudget:
    """How much more prefill work fits while every queued prefill and a new one meet their TTFT.

    Running decodes need an iteration every ``tpot`` seconds; the share of the machine they use at
    that pace (``decode_utilisation``) is reserved.  The rest serves prefills in deadline order: for
    each queued prefill the cumulative work ahead of and including it must finish by its first-token
    deadline, and a new request arriving now gets ``horizon_s``.  The budget is the smallest margin
    over those checks, in seconds and converted to prompt tokens.  O(n log n).
    """
    now = view.now_s
    utilisation = decode_utilisation(view.decodes, model, view.decode_context_tokens)
    spare_share = 1.0 - utilisation
    margin_s = math.inf
    cumulative_s = 0.0
    queued = sorted(view.prefills, key=first_token_deadline)
    for request in queued:
        cumulative_s += model.prefill_cost_s(request.remaining_prefill_tokens, request.prefilled_tokens)
        time_left_s = first_token_deadline(request) - now
        if time_left_s > 0:  # one already late cannot be saved by refusing others; skip its check
            margin_s = min(margin_s, time_left_s * spare_share - cumulative_s)
    margin_s = min(margin_s, horizon_s * spare_share - cumulative_s)
    per_token_s = model.per_new_token_s + model.per_context_token_s
    tokens = margin_s / per_token_s if per_token_s > 0 else 0.0
    return AdmissionBudget(margin_s, tokens, horizon_s, utilisation)


def decode_utilisation(decodes: Sequence[RequestState], model: CostModel, sum_context: int | None = None) -> float:
    """Share of the machine running decodes take at the pace their TPOT asks, the rest being what
    prefills can count on: a decode step every ``min tpot`` pays the fixed cost, and each decode its
    own row once per its own TPOT (with SLO classes a relaxed decode sits out the steps its TPOT
    does not need; counting it in every step gave up prompts that had room).  ``sum_context``: the
    decodes' summed ``context_tokens`` when the caller has it
    (:attr:`IterationView.decode_context_tokens`)."""
    if not decodes:
        return 0.0
    tpots_s = [r.tpot_slo_s for r in decodes]
    min_tpot_s = min(tpots_s)
    if max(tpots_s) > min_tpot_s:
        return min(1.0, model.fixed_s / min_tpot_s
                   + sum(model.decode_cost_s(r.context_tokens) / r.tpot_slo_s for r in decodes))
    if sum_context is None:
        sum_context = sum(r.context_tokens for r in decodes)
    return min(1.0, model.predict(len(decodes), sum_context, len(decodes)) / min_tpot_s)


def first_token_deadline(request: RequestState) -> float:
    return request.arrival_s + request.ttft_slo_s


def min_first_token_slack_s(prompts: Sequence[RequestState], now_s: float) -> float | None:
    """The least time any of ``prompts`` has left to its first-token deadline (None: no prompts)."""
    if not prompts:
        return None
    return min([first_token_deadline(request) for request in prompts]) - now_s
