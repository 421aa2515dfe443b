"""FairBatching (Lyu et al., arXiv 2510.14392): time-budgeted, three-phase batch formation.

Each iteration:

1. **Time budget.**  ``budget = safety * max(min_slack, min_tpot)`` over running decodes: the batch
   may take as long as the most hurried decode can wait, but never less than one TPOT (a floor that
   keeps batches from collapsing during a decode burst).  With no decodes, prefill runs unbounded in
   time, limited by tokens and KV.
2. **Urgent decodes** (ascending slack): a decode is urgent when sitting out this iteration would make
   it miss its next deadline even if the next iteration serves it, i.e. ``slack < budget + floor``.
   Urgent decodes always run.
3. **Prefills**: partial (chunked) prefills first, then new ones by ascending first-token slack (or,
   with client fairness, lowest VTC counter first).  Each gets the largest chunk the cost model says
   fits the time left, so the chunk size falls out of the budget instead of a fixed token count.
   Where the engine's extend path is dear (the cost model's mixing cost: no CUDA graph, a slow
   per-sequence attention loop), an iteration's prefill work must at least match that overhead.
   When the budget cannot fit that much, the prefill waits while the next prompt can afford one
   more iteration (the short decode-only step banks slack, and the next budget fits a chunk worth
   its overhead); when it cannot wait, the iteration is stretched to one such chunk rather than
   paying the overhead for a sliver, which under overload would leave the machine busy with
   overhead while the queue grows.
4. **Remaining decodes** (ascending slack) while they fit.  Decodes left out banked enough slack to
   sit out; that compute went to the prefill surge.

Prefill Admission Budget and admission control come from :func:`prefill_admission_budget`.
"""

from __future__ import annotations

import bisect
import math

import numpy as np

from .base import UNLIMITED, BatchBuilder, BatchPolicy, IterationView, Plan, first_token_deadline
from .cost_model import CostModel, OnlineCostModel
from .fairness import ClientCounters
from .request import RequestState

__all__ = ["FairBatchingPolicy"]

#: Adaptive budget safety: the margin before enough iterations were measured, the floor, and the
#: window / refresh period of the measured-over-predicted ratios it is derived from.
COLD_START_SAFETY = 0.9
MIN_SAFETY = 0.8
ERROR_WINDOW = 256
ERROR_MIN_SAMPLES = 32
ERROR_REFRESH = 32


class FairBatchingPolicy(BatchPolicy):
    name = "fairbatching"
    skips_decodes = True

    def __init__(
        self,
        cost_model: CostModel | OnlineCostModel,
        *,
        default_ttft_slo_s: float = 1.0,
        budget_safety: float | None = None,
        min_chunk_tokens: int = 32,
        max_time_budget_s: float = math.inf,
        max_chunk_tokens: int | None = None,
        client_fairness: bool = False,
        input_weight: float = 1.0,
        output_weight: float = 2.0,
        demote_lost_requests: bool = True,
        lost_tpot_factor: float = 2.0,
    ) -> None:
        super().__init__(cost_model, default_ttft_slo_s=default_ttft_slo_s)
        if budget_safety is not None and not 0 < budget_safety <= 1:
            raise ValueError("budget_safety must be in (0, 1] (or None: adaptive)")
        if min_chunk_tokens < 1:
            raise ValueError("min_chunk_tokens must be >= 1")
        # Plan against a slightly tighter line than the SLO so cost-model error does not turn into
        # a missed TPOT: the steady-state iteration is ``budget_safety * tpot``.  ``None`` derives
        # the margin from the model's observed error (see ``observe``), starting at 0.9.
        self.fixed_safety = budget_safety
        self.budget_safety = COLD_START_SAFETY if budget_safety is None else budget_safety
        self._ratios = [0.0] * ERROR_WINDOW  # measured / predicted, a ring buffer
        self._observed = 0
        self.min_chunk_tokens = min_chunk_tokens
        self.max_time_budget_s = max_time_budget_s
        # None: cap each chunk at the cost model's most efficient size (see
        # CostModel.efficient_chunk_tokens); 0: no cap; n > 0: at most n tokens per chunk.
        if max_chunk_tokens is not None and max_chunk_tokens < 0:
            raise ValueError("max_chunk_tokens must be >= 0 (0 = no cap) or None (auto)")
        self.max_chunk_tokens = max_chunk_tokens
        self.clients = ClientCounters(input_weight, output_weight) if client_fairness else None
        # Requests that can no longer meet their SLO go behind those that still can: a waiting
        # prompt past its TTFT (even prefilled alone, now), a decode that missed its TTFT or whose
        # last possible token is already past its line.  Under overload, deadline order would
        # otherwise spend the machine on lost causes first and make everything behind them late.
        self.demote_lost_requests = demote_lost_requests
        if not lost_tpot_factor >= 1:
            raise ValueError("lost_tpot_factor must be >= 1")
        self.lost_tpot_factor = lost_tpot_factor

    def time_budget_s(self, view: IterationView) -> tuple[float, float]:
        """Return ``(budget, floor)`` for this iteration, both in seconds."""
        if not view.decodes:
            return self.max_time_budget_s, 0.0
        min_tpot_s = min(request.tpot_slo_s for request in view.decodes)
        protected = [r for r in view.decodes if not self.is_lost(r, view.now_s)]
        if not protected:
            return self._budget(min_tpot_s, min_tpot_s)
        return self._budget(min(map(_next_deadline, protected)) - view.now_s, min_tpot_s)

    def is_lost(self, request: RequestState, now_s: float) -> bool:
        """Whether a decode can no longer meet its SLO (and ``demote_lost_requests`` is on): it
        missed its TTFT, or even its last possible token (``max_new_tokens``) is past its line."""
        return self.demote_lost_requests and _is_lost(request, now_s)

    def _budget(self, min_slack_s: float, min_tpot_s: float) -> tuple[float, float]:
        floor_s = self.budget_safety * min_tpot_s
        budget_s = max(self.budget_safety * min_slack_s, floor_s)
        return min(budget_s, max(self.max_time_budget_s, floor_s)), floor_s

    def plan(self, view: IterationView) -> Plan:
        now = view.now_s
        decodes = view.decodes
        lost: list[RequestState] = []
        if decodes:
            # One pass computes every deadline; the order, the budget and urgency all reuse it.
            deadlines = []
            lost_ranks = []
            min_tpot_s = math.inf
            demote = self.demote_lost_requests
            for index, request in enumerate(decodes):  # next_deadline_s, inlined (the hot loop)
                due_s = request.arrival_s + request.ttft_slo_s
                first_s = request.first_token_s
                tpot_s = request.tpot_slo_s
                if first_s is not None and first_s < due_s:
                    due_s = first_s
                if demote and _is_lost(request, now):
                    lost_ranks.append(index)
                deadlines.append(due_s + request.generated_tokens * tpot_s)
                if tpot_s < min_tpot_s:
                    min_tpot_s = tpot_s
            if lost_ranks:
                lost_set = set(lost_ranks)
                # A lost decode keeps a slower line of its own: a token within lost_tpot_factor
                # TPOTs of its last one, so it still streams instead of stalling.
                factor = self.lost_tpot_factor
                for index in lost_ranks:
                    request = decodes[index]
                    deadlines[index] = request.last_token_s + factor * request.tpot_slo_s
                lost_ranks.sort(key=deadlines.__getitem__)
                lost = [decodes[i] for i in lost_ranks]
                lost_deadlines = [deadlines[i] for i in lost_ranks]
                order = sorted((i for i in range(len(decodes)) if i not in lost_set),
                               key=deadlines.__getitem__)
            else:
                order = sorted(range(len(decodes)), key=deadlines.__getitem__)
            by_slack = [decodes[i] for i in order]
            # The budget protects the decodes that can still meet their SLO.
            min_slack_s = deadlines[order[0]] - now if order else min_tpot_s
            budget_s, floor_s = self._budget(min_slack_s, min_tpot_s)
        else:
            deadlines, order, by_slack = [], [], []
            budget_s, floor_s = self.max_time_budget_s, 0.0
        # Phase 1: urgent decodes always run (only KV and seats can stop them): those whose next
        # deadline falls before this iteration's end plus the next one's floor.
        urgent_until_s = now + budget_s + floor_s
        first_relaxed = len(by_slack)
        for rank, index in enumerate(order):
            if deadlines[index] >= urgent_until_s and decodes[index].can_skip:
                first_relaxed = rank
                break
        forced = by_slack[:first_relaxed]
        if lost:  # those due on their slower line run too
            lost_due = bisect.bisect_left(lost_deadlines, urgent_until_s)
            forced = forced + lost[:lost_due]
            lost = lost[lost_due:]
        builder = self._with_urgent_decodes(view, budget_s, forced)

        # Phase 2: prefills, continuing chunks first, then new ones.
        self._add_prefills(builder, view)
        worthwhile = self._worthwhile_chunk_tokens(builder, view, now + budget_s + floor_s)
        if worthwhile is not None:
            # The prefill carried less work than its extend overhead: redo phase 2, deferring the
            # prefill (0) or with one chunk worth the overhead.
            self._refund(builder)
            builder = self._with_urgent_decodes(view, budget_s, forced)
            if worthwhile:
                # Stretch the budget to hold that much prefill work, over one prompt or several
                # short ones (relaxed decodes then sit out, as they would for any prefill surge).
                model = builder.model
                stretched_s = (builder.predicted_s + model.mixing_cost_s(builder.plan.urgent_decodes)
                               + model.prefill_cost_s(worthwhile, 0))
                builder.time_budget_s = builder.plan.time_budget_s = stretched_s
                self._add_prefills(builder, view)
                if not builder.mixed:  # nothing could use it (the prefill cap, a minimum chunk)
                    builder.time_budget_s = builder.plan.time_budget_s = budget_s

        # Phase 3: decodes that could wait, most hurried first, while they fit; the lost ones
        # lead (they have no SLO left, but finishing them frees their KV).
        # Once one skippable decode does not fit, the rest sit out, but a decode that cannot be
        # skipped (penalizers, grammar) still runs, whatever comes before it.
        relaxed = lost + by_slack[first_relaxed:] if lost else by_slack[first_relaxed:]
        added = builder.add_decodes(relaxed)
        for request in relaxed[added:]:
            if not request.can_skip:
                builder.add_decode(request, force=True)

        if builder.plan.empty:
            self.ensure_progress(builder, view)
        plan = builder.finish(view)
        if self.clients is not None:
            for request in plan.decodes:
                self.clients.charge_output(request)
        return plan

    def _with_urgent_decodes(self, view: IterationView, budget_s: float,
                             urgent: list[RequestState]) -> BatchBuilder:
        builder = BatchBuilder(view, self.cost_model, time_budget_s=budget_s)
        builder.add_decodes(urgent, force=True)
        builder.plan.urgent_decodes = len(builder.plan.decodes)
        return builder

    def _add_prefills(self, builder: BatchBuilder, view: IterationView) -> None:
        """Grant chunks in order while time, KV and seats last."""
        prefills = view.prefills
        # Partial prefills lead the view; they keep their place so a chunked prompt finishes.
        split = 0
        while split < len(prefills) and prefills[split].prefilled_tokens > 0:
            split += 1
        waiting = prefills[split:]
        if self.clients is not None:
            self.clients.update_backlog(waiting)
            waiting = self.clients.pick(waiting, key=first_token_deadline)
        elif len(waiting) > 1:
            waiting = sorted(waiting, key=first_token_deadline)
            if self.demote_lost_requests:
                waiting = self._late_last(waiting, view.now_s, builder.model)
        for group in (prefills[:split], waiting):
            for request in group:
                granted = builder.add_prefill(request, min_chunk=self.min_chunk_tokens,
                                              max_chunk=self._chunk_cap(builder.model, request))
                if granted and self.clients is not None:
                    self.clients.charge_prefill(request, granted)
                if builder.time_left_s <= 0 or builder.kv_left <= 0 or builder.seats_left <= 0:
                    return

    def _worthwhile_chunk_tokens(self, builder: BatchBuilder, view: IterationView,
                                 next_end_s: float) -> int | None:
        """``None`` when phase 2 stands; otherwise redo it with no prefill (0) or with a budget
        stretched to hold this many prompt tokens.

        Phase 2 stands when the extend path is free (a GPU preset), when nothing waits, or when
        the planned prefill work is at least the extend overhead it brings.  Otherwise the head of
        the prefill order decides: if it can still meet its TTFT after one more iteration, the
        prefill waits; if not, the iteration gets the smallest prefill work that matches the
        overhead.
        """
        model = builder.model
        if not view.decodes or not view.prefills:
            return None
        if builder.mixed and builder.prefill_work_s >= builder.mixing_s:
            return None
        mixing_s = model.mixing_cost_s(builder.plan.urgent_decodes)
        if mixing_s <= 0:
            return None
        if not builder.mixed and (builder.kv_left <= 0 or builder.seats_left <= 0):
            return None  # memory or seats, not time, keep the prompts out
        head = view.prefills[0] if view.prefills[0].prefilled_tokens > 0 else min(
            view.prefills, key=first_token_deadline)
        finish_s = next_end_s + model.prefill_cost_s(head.remaining_prefill_tokens, head.prefilled_tokens)
        if finish_s <= first_token_deadline(head):
            return 0 if builder.mixed else None  # it can wait: decode-only now, slack banks
        return model.max_chunk_tokens(mixing_s, 0) + 1

    @staticmethod
    def _late_last(waiting: list[RequestState], now_s: float, model: CostModel) -> list[RequestState]:
        """``waiting`` (in deadline order) with the prompts that can no longer meet their TTFT
        moved behind the others, keeping each group's order."""
        late = [request for request in waiting
                if now_s + model.prefill_cost_s(request.prompt_tokens, 0) > first_token_deadline(request)]
        if not late or len(late) == len(waiting):
            return waiting
        late_ids = {id(request) for request in late}
        return [request for request in waiting if id(request) not in late_ids] + late

    def _refund(self, builder: BatchBuilder) -> None:
        """The VTC counters were charged for chunks of a plan that is being redone."""
        if self.clients is not None:
            for chunk in builder.plan.prefills:
                self.clients.refund_prefill(chunk.request, chunk.tokens)

    def observe(self, plan: Plan, measured_s: float) -> None:
        super().observe(plan, measured_s)
        if self.fixed_safety is not None or not plan.predicted_s > 0:
            return
        if not isinstance(measured_s, (int, float)) or not 0 < measured_s < math.inf:
            return
        self._ratios[self._observed % ERROR_WINDOW] = measured_s / plan.predicted_s
        self._observed += 1
        if self._observed >= ERROR_MIN_SAMPLES and self._observed % ERROR_REFRESH == 0:
            # Leave room for the model's 90th-percentile under-prediction: an iteration predicted
            # at ``budget`` then ends by ``budget * (1 + q90)`` nine times in ten.
            ratios = self._ratios[: min(self._observed, ERROR_WINDOW)]
            over = max(float(np.percentile(ratios, 90)) - 1.0, 0.0)
            self.budget_safety = min(1.0, max(MIN_SAFETY, 1.0 / (1.0 + over)))

    def _chunk_cap(self, model: CostModel, request: RequestState) -> int:
        if self.max_chunk_tokens is None:
            efficient = model.efficient_chunk_tokens(request.prefilled_tokens)
            # Never below the minimum chunk, so a cap cannot starve a prompt of progress.
            return UNLIMITED if efficient is None else max(efficient, self.min_chunk_tokens)
        return self.max_chunk_tokens or UNLIMITED

    def release(self, request: RequestState) -> None:
        if self.clients is not None:
            self.clients.forget(request)

    def describe(self) -> dict:
        info = super().describe()
        info.update(
            budget_safety=self.budget_safety,
            adaptive_safety=self.fixed_safety is None,
            min_chunk_tokens=self.min_chunk_tokens,
            max_chunk_tokens=self.max_chunk_tokens,
            client_fairness=self.clients is not None,
            demote_lost_requests=self.demote_lost_requests,
            lost_tpot_factor=self.lost_tpot_factor,
        )
        return info


def _is_lost(request: RequestState, now_s: float) -> bool:
    """A decode that missed its TTFT, or whose last possible token is already past its line."""
    first_s = request.first_token_s
    if first_s is None:
        return False
    due_s = request.arrival_s + request.ttft_slo_s
    if first_s > due_s:
        return True
    last = request.max_new_tokens
    return bool(last) and now_s > first_s + (last - 1) * request.tpot_slo_s


def _next_deadline(request: RequestState) -> float:
    # RequestState.next_deadline_s, inlined: this runs for every decode of every iteration.
    due_s = request.arrival_s + request.ttft_slo_s
    first_s = request.first_token_s
    if first_s is not None and first_s < due_s:
        due_s = first_s
    return due_s + request.generated_tokens * request.tpot_slo_s
