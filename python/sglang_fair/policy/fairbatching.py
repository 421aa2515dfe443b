"""FairBatching (Lyu et al., arXiv 2510.14392): time-budgeted, three-phase batch formation.

:meth:`FairBatchingPolicy.plan` reads as the paper's steps, each a method of its own:

0. **Order and budget** (:meth:`~FairBatchingPolicy.order_and_budget`).  Every running decode is
   placed on its envelope line (:meth:`RequestState.next_deadline_s`); the iteration's time budget is
   ``safety * max(min_slack, min_tpot)`` over the decodes that can still meet their SLO, so the
   batch may take as long as the most hurried of them can wait, never less than one TPOT.  Waiting
   prompts are ordered to bring the most of them in by their TTFT and none past its tail bound
   (:meth:`~FairBatchingPolicy.prefill_order`).
1. **Urgent decodes** (:meth:`~FairBatchingPolicy.urgent_decodes`): those that would miss their
   next deadline if they sat this iteration out, in deadline order.  They always run.
2. **Prefills** (:meth:`~FairBatchingPolicy.prefills`): continuing chunks, then new prompts in that
   order, each given the largest chunk the cost model says fits the time left (at most its most
   efficient size), so the chunk size falls out of the budget instead of a fixed token count.
2'. **Prefills apart** (:meth:`~FairBatchingPolicy.keeps_prefills_apart`,
   :meth:`~FairBatchingPolicy.separate_iteration`): where the cost model says a decode's row on the
   extend path costs more, summed over the running decodes, than an iteration of their own
   (SGLang's CPU backend past a few decodes; never a GPU preset), steps 2 and 3 give way to a
   prefill-only iteration sized to end, with the decode step after it, by the first decode
   deadline, or else to a decode-only step, which banks the room for one.  When decodes are
   overdue and the first prompt cannot wait either, they take turns (``overdue_take_turns``).
3. **Relaxed decodes** (:meth:`~FairBatchingPolicy.relaxed_decodes`): the rest, most hurried first,
   while they fit.  Those left out banked enough slack to sit out: that compute went to the prefills.
   With no prefill planned and no decode still on time, none sits out (it would serve nobody).

Where measurement and the paper disagree, the measurement decides (``docs/design.md``):

* *Lost requests.*  Deadline order alone serves, under overload, the prompts that can no longer make
  their TTFT first, making everything behind them late too; serving them last instead (the earlier
  "demotion") kept the most requests on time but left a few to wait minutes, which users see as hung
  requests.  The prompt order is therefore Moore-Hodgson's rule (which maximises the jobs done by
  their deadlines: deadline order, and whenever one would be late, the *longest* job so far gives up
  its place), with a second, hard deadline: a prompt that gave up its place, or cannot make its TTFT
  even alone, is still scheduled to have its first token by ``late_ttft_factor`` (4) times its TTFT
  SLO, inside the 5x past which users consider a request hung, and when that is at risk more prompts
  give up their TTFT instead.  A late prompt does not wait for that tail deadline while the on-time
  prompts ahead of it have slack: it moves ahead as far as their slack allows, none of them estimated
  to miss for it (``late_into_slack``; measured: same capacity, P99 TTFT 1.2-1.5 s lower at Sarathi's).
* *Chunks from the cost model.*  A chunk's attention grows with its square, so no chunk is larger
  than the most efficient chunk alone (:meth:`CostModel.efficient_chunk_tokens`).  Spreading a
  prompt over several smaller chunks would cost less attention still, but SGLang runs one chunked
  prompt at a time and cuts only the last prompt of a batch (``BatchBuilder.chunk_open``): a capped
  chunk stops every prompt behind it, and measured that way spreading lost 7-9% of capacity
  (``docs/design.md``).  ``chunk_spread`` (off by default) keeps it for an engine that can hold
  several.  Decodes that missed their TTFT, or whose last possible token is past its line,
  stop pinning the budget and keep a slower line of their own (``lost_tpot_factor``).
* *The extend path's overhead* (CPU engines, no CUDA graph): an iteration's prefill must carry at
  least as much work as the overhead it brings; a sliver of prefill waits while the first prompt in
  line can still wait.  Once it cannot (it would miss its TTFT after one more decode step, or
  already has), the budget stretches to the queue's chunk, the most efficient chunk or all that
  waits: the smallest prefill worth its overhead saved that prompt and left the ones behind it to
  hit the same wall one iteration pair at a time (``_queue_chunk_tokens``).

Prefill Admission Budget and admission control come from :func:`prefill_admission_budget`.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from dataclasses import dataclass, field

from .base import (
    UNLIMITED,
    BatchBuilder,
    BatchPolicy,
    IterationView,
    Plan,
    decode_utilisation,
    first_token_deadline,
)
from .cost_model import CostModel, OnlineCostModel
from .fairness import ClientCounters
from .request import RequestState, any_lost, next_deadlines_s

__all__ = ["FairBatchingPolicy", "IterationOrder"]

#: Adaptive budget safety: the margin before enough iterations were measured, the floor, and the
#: window / refresh period of the measured-over-predicted ratios it is derived from.
COLD_START_SAFETY = 0.9
MIN_SAFETY = 0.8
ERROR_WINDOW = 256
ERROR_MIN_SAMPLES = 32
ERROR_REFRESH = 32
#: Smallest share of the machine the prompt order assumes prefills get (decodes may fill the rest).
MIN_PREFILL_SHARE = 0.05
#: With prefills apart from decodes, the most of an iteration pair (prefill-only, then the decode
#: step it delays) that overheads may take: the prefill carries at least 90% (or all that waits).
PREFILL_OVERHEAD_SHARE = 0.1


@dataclass(slots=True)
class IterationOrder:
    """What step 0 decides: the decodes on their lines, the time budget, and the prompt order."""

    budget_s: float
    floor_s: float
    #: Decodes that can still meet their SLO, by next deadline, and those deadlines.
    protected: list[RequestState] = field(default_factory=list)
    deadlines: list[float] = field(default_factory=list)
    #: Decodes that cannot, by the deadline of their slower line, and those deadlines.
    lost: list[RequestState] = field(default_factory=list)
    lost_deadlines: list[float] = field(default_factory=list)
    #: Partially prefilled prompts (they keep their place), then the waiting ones in serving order.
    prefills: list[RequestState] = field(default_factory=list)
    #: With client fairness: the partial prompts and the waiting ones, re-picked by VTC counter
    #: after every admission (the counters change as chunks are charged).
    partial: list[RequestState] = field(default_factory=list)
    waiting: list[RequestState] = field(default_factory=list)
    #: Waiting prompts that gave up their TTFT to keep the others (or everyone's tail) on time.
    late_prompts: int = 0

    @property
    def urgent_until_s(self) -> float:
        """Offset from now: a decode due before this cannot sit out (this iteration's end plus the
        next one's floor)."""
        return self.budget_s + self.floor_s


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
        late_ttft_factor: float = 4.0,
        chunk_spread: float = 0.0,
        late_into_slack: bool = True,
        overdue_take_turns: bool = True,
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
        # Whether the ring's values changed since the safety was derived from them (a ratio equal
        # to the one it replaces, as when the engine is timed by the model itself, leaves it).
        self._ratios_changed = False
        self.min_chunk_tokens = min_chunk_tokens
        self.max_time_budget_s = max_time_budget_s
        # None: cap each chunk at the cost model's most efficient size (see
        # CostModel.efficient_chunk_tokens); 0: no cap; n > 0: at most n tokens per chunk.
        if max_chunk_tokens is not None and max_chunk_tokens < 0:
            raise ValueError("max_chunk_tokens must be >= 0 (0 = no cap) or None (auto)")
        self.max_chunk_tokens = max_chunk_tokens
        self.clients = ClientCounters(input_weight, output_weight) if client_fairness else None
        # Requests that can no longer meet their SLO are served so as to keep the others on time,
        # within a tail bound (module docstring); False is the paper's plain deadline order.
        self.demote_lost_requests = demote_lost_requests
        if not lost_tpot_factor >= 1:
            raise ValueError("lost_tpot_factor must be >= 1")
        self.lost_tpot_factor = lost_tpot_factor
        if not late_ttft_factor >= 1:
            raise ValueError("late_ttft_factor must be >= 1")
        # A prompt that cannot meet its TTFT is still scheduled to be served within this many TTFT
        # SLOs: one SLO inside the 5x tail past which users consider a request hung, a margin for
        # the completion-time estimate (cost model, share of the machine) it is scheduled on.
        self.late_ttft_factor = late_ttft_factor
        if not 0 <= chunk_spread <= 1:
            raise ValueError("chunk_spread must be in [0, 1] (0: no spreading)")
        # A prompt with slack is prefilled over that share of the iterations its slack allows.
        self.chunk_spread = chunk_spread
        # A late prompt moves ahead into the on-time prompts' slack (:meth:`_late_into_slack`).
        self.late_into_slack = late_into_slack
        # With prefills apart, overdue decodes and a first prompt that cannot wait take turns: one
        # decode-only step, then the prompt's prefill (:meth:`separate_iteration`); False lets the
        # decodes go first until they are back on their line.
        self.overdue_take_turns = overdue_take_turns
        # Whether the last separate iteration was decodes overdue over a prompt that could not wait
        # (a mixed iteration between leaves it: it carries the urgent decodes anyway).
        self._overdue_decodes_went_last = False
        self._chunk_model: CostModel | None = None  # the model _chunk_sizes was computed for
        self._chunk_sizes: dict[int, tuple[int | None, int | None]] = {}

    # ================================================================== the iteration, step by step
    def plan(self, view: IterationView) -> Plan:
        order = self.order_and_budget(view)
        builder = self.urgent_decodes(view, order)
        if self.keeps_prefills_apart(view):
            builder = self.separate_iteration(builder, view, order)
        else:
            builder = self.prefills(builder, view, order)
            self.relaxed_decodes(builder, order, view)
        if builder.plan.empty:
            self.ensure_progress(builder, view)
            builder.plan.step = "progress"
        return builder.finish(view)

    # ------------------------------------------------------------------ 0. order and budget
    def order_and_budget(self, view: IterationView) -> IterationOrder:
        """Decodes on their lines, the time budget they allow, and the order prompts are served in."""
        now_s = view.now_s
        order = IterationOrder(self.max_time_budget_s, 0.0)
        if view.decodes:
            self._order_decodes(view.decodes, now_s, order)
            min_tpot_s = min([request.tpot_slo_s for request in view.decodes])
            order.budget_s, order.floor_s = self._budget(self._min_slack_s(order, now_s), min_tpot_s)
        order.prefills = self.prefill_order(view, order)
        return order

    def time_budget_s(self, view: IterationView) -> tuple[float, float]:
        """``(budget, floor)`` for this iteration, both in seconds."""
        order = IterationOrder(self.max_time_budget_s, 0.0)
        if not view.decodes:
            return order.budget_s, order.floor_s
        self._order_decodes(view.decodes, view.now_s, order)
        min_tpot_s = min(request.tpot_slo_s for request in view.decodes)
        return self._budget(self._min_slack_s(order, view.now_s), min_tpot_s)

    @staticmethod
    def _min_slack_s(order: IterationOrder, now_s: float) -> float:
        """The budget protects the decodes that can still meet their SLO; when none can (deep
        overload), the lost ones on their slower line, so iterations are not cut to one TPOT for
        nobody's sake (their fixed cost is what an overload can least afford)."""
        if order.protected:
            return order.deadlines[0] - now_s
        return order.lost_deadlines[0] - now_s

    def _order_decodes(self, decodes, now_s: float, order: IterationOrder) -> None:
        if self.demote_lost_requests and any_lost(decodes, now_s):
            protected = [request for request in decodes if not request.is_lost(now_s)]
        else:
            protected = decodes
        # By next deadline, ties in view order (a stable sort), each deadline computed once.
        deadlines = next_deadlines_s(protected)
        ranks = sorted(range(len(deadlines)), key=deadlines.__getitem__)
        order.protected = [protected[rank] for rank in ranks]
        order.deadlines = [deadlines[rank] for rank in ranks]
        if len(protected) < len(decodes):
            # A lost decode keeps a slower line of its own: a token within lost_tpot_factor TPOTs
            # of its last one, so it still streams instead of stalling.
            factor = self.lost_tpot_factor
            lost = sorted(((request.last_token_s + factor * request.tpot_slo_s, index, request)
                           for index, request in enumerate(decodes) if request.is_lost(now_s)))
            order.lost = [entry[2] for entry in lost]
            order.lost_deadlines = [entry[0] for entry in lost]

    def is_lost(self, request: RequestState, now_s: float) -> bool:
        """Whether a decode is treated as lost (:meth:`RequestState.is_lost`, when demotion is on)."""
        return self.demote_lost_requests and request.is_lost(now_s)

    def _budget(self, min_slack_s: float, min_tpot_s: float) -> tuple[float, float]:
        floor_s = self.budget_safety * min_tpot_s
        budget_s = max(self.budget_safety * min_slack_s, floor_s)
        return min(budget_s, max(self.max_time_budget_s, floor_s)), floor_s

    def prefill_order(self, view: IterationView, order: IterationOrder) -> list[RequestState]:
        """Partial prefills first (a chunked prompt finishes), then the waiting prompts: by VTC
        counter with client fairness, else by TTFT deadline, keeping the most of them on time
        within the tail bound (:meth:`_most_on_time`)."""
        prefills = view.prefills
        split = 0
        while split < len(prefills) and prefills[split].prefilled_tokens > 0:
            split += 1
        partial, waiting = list(prefills[:split]), prefills[split:]
        if self.clients is not None:
            self.clients.update_backlog(waiting)
            order.partial, order.waiting = partial, list(waiting)
            return partial + self.clients.order(waiting, key=first_token_deadline)
        if len(waiting) < 2:
            return partial + list(waiting)
        if not self.demote_lost_requests:
            return partial + sorted(waiting, key=first_token_deadline)
        return partial + self._most_on_time(partial, waiting, view, order)

    def tail_deadline_s(self, request: RequestState) -> float:
        """When a prompt that gave up its TTFT must still have its first token: ``late_ttft_factor``
        TTFT SLOs after its arrival."""
        return request.arrival_s + self.late_ttft_factor * request.ttft_slo_s

    def _most_on_time(self, partial, waiting, view: IterationView, order: IterationOrder) -> list[RequestState]:
        """Moore-Hodgson with a tail bound: deadline order; whenever a prompt would finish after its
        TTFT deadline, the longest prompt scheduled so far gives up its TTFT and takes a later
        deadline instead, ``arrival + late_ttft_factor * ttft``; whenever one would finish after
        that, the longest one still holding a TTFT deadline gives it up.

        Completion times are estimated from the cost model with prefills served in this order at
        the share of the machine the running decodes leave them (as the PAB assumes).  A prompt
        that cannot make its TTFT even if served next starts on its tail deadline.  O(m log m).
        Then the late prompts move into the on-time prompts' slack (:meth:`_late_into_slack`).
        """
        model = self.cost_model
        share = max(MIN_PREFILL_SHARE, 1.0 - decode_utilisation(view.decodes, model, view.decode_context_tokens))
        now_s = view.now_s
        start_s = now_s + sum(model.prefill_cost_s(r.remaining_prefill_tokens, r.prefilled_tokens)
                              for r in partial) / share  # when the first waiting prompt can start
        finish_s = start_s
        queue: list[tuple[float, int, bool]] = []  # (deadline, index, on its tail deadline)
        costs = []
        late = [False] * len(waiting)  # gave up its TTFT: on its tail deadline
        gave_up = 0
        for index, request in enumerate(waiting):
            cost_s = model.prefill_cost_s(request.remaining_prefill_tokens, 0) / share
            costs.append(cost_s)
            due_s = first_token_deadline(request)
            if now_s + cost_s > due_s:  # cannot make it even alone
                queue.append((self.tail_deadline_s(request), index, True))
                late[index] = True
                gave_up += 1
            else:
                queue.append((due_s, index, False))
        heapq.heapify(queue)
        served: list[int | None] = []
        holding: list[tuple[float, int, int]] = []  # max-heap by cost of prompts on a TTFT deadline
        while queue:
            due_s, index, on_tail = heapq.heappop(queue)
            finish_s += costs[index]
            served.append(index)
            if not on_tail:
                heapq.heappush(holding, (-costs[index], len(served) - 1, index))
            while finish_s > due_s and holding:
                negative_cost_s, slot, longest = heapq.heappop(holding)
                finish_s += negative_cost_s
                served[slot] = None
                heapq.heappush(queue, (self.tail_deadline_s(waiting[longest]), longest, True))
                late[longest] = True
                gave_up += 1
        order.late_prompts = gave_up
        served = [index for index in served if index is not None]
        if gave_up and self.late_into_slack:
            served = self._late_into_slack(served, late, waiting, costs, start_s)
        return [waiting[index] for index in served]

    def _late_into_slack(self, served: list[int], late: list[bool], waiting, costs: list[float],
                         start_s: float) -> list[int]:
        """Each prompt that gave up its TTFT moves ahead of on-time prompts as far as their slack
        allows: none of them is estimated to miss its deadline for it, and the late prompt does
        not wait for its tail deadline while the machine has room.  Late prompts keep their order
        among themselves.  A move across ``k`` prompts costs O(k)."""
        order, slack = list(served), []
        finish_s = start_s
        for index in order:
            finish_s += costs[index]
            due_s = self.tail_deadline_s(waiting[index]) if late[index] else first_token_deadline(waiting[index])
            slack.append(due_s - finish_s)
        for q in range(1, len(order)):
            moved = order[q]
            if not late[moved]:
                continue
            cost_s, p = costs[moved], q
            while p > 0 and not late[order[p - 1]] and slack[p - 1] >= cost_s:
                p -= 1
            if p == q:
                continue
            moved_slack_s = slack[q] + sum(costs[index] for index in order[p:q])
            order[p + 1:q + 1] = order[p:q]
            slack[p + 1:q + 1] = [s - cost_s for s in slack[p:q]]
            order[p], slack[p] = moved, moved_slack_s
        return order

    # ------------------------------------------------------------------ 1. urgent decodes
    def urgent_decodes(self, view: IterationView, order: IterationOrder) -> BatchBuilder:
        """The decodes that cannot sit out, forced in: due before this iteration's end plus the next
        one's floor, or not allowed to sit out (penalizers, grammar) and ranked before the first
        relaxed one; lost decodes due on their slower line too."""
        urgent_until_s = view.now_s + order.urgent_until_s
        protected = order.protected
        # The deadlines are sorted: every decode before the first due at or after urgent_until_s is
        # urgent, and so is each one after it up to the first that may sit out.
        first_relaxed = bisect.bisect_left(order.deadlines, urgent_until_s)
        while first_relaxed < len(protected) and not protected[first_relaxed].can_skip:
            first_relaxed += 1
        forced = protected[:first_relaxed]
        order.protected = order.protected[first_relaxed:]
        if order.lost:
            lost_due = bisect.bisect_left(order.lost_deadlines, urgent_until_s)
            forced = forced + order.lost[:lost_due]
            order.lost = order.lost[lost_due:]
        return self._builder_with(view, order.budget_s, forced)

    def _builder_with(self, view: IterationView, budget_s: float, urgent: list[RequestState]) -> BatchBuilder:
        builder = BatchBuilder(view, self.cost_model, time_budget_s=budget_s)
        builder.add_decodes(urgent, force=True)
        builder.plan.urgent_decodes = len(builder.plan.decodes)
        return builder

    # ------------------------------------------------------------------ 2. prefills
    def prefills(self, builder: BatchBuilder, view: IterationView, order: IterationOrder) -> BatchBuilder:
        """Chunks in ``order.prefills`` while time, KV and seats last; then the extend-overhead rule
        (module docstring): when the prefill planned carries less work than the extend overhead it
        brings, defer it (the next prompt can wait an iteration) or stretch the budget to the
        queue's chunk (:meth:`_queue_chunk_tokens`)."""
        self._grant_chunks(builder, view, order)
        worthwhile = self._worthwhile_chunk_tokens(builder, view, order, view.now_s + order.urgent_until_s)
        if worthwhile is None:
            builder.plan.step = "mixed" if builder.plan.prefills else "decodes"
            return builder
        self._refund(builder)
        urgent = builder.plan.decodes[: builder.plan.urgent_decodes]
        builder = self._builder_with(view, order.budget_s, urgent)
        if not worthwhile:
            builder.plan.step = "decodes: prompts wait"
        else:
            late = view.now_s > first_token_deadline(order.prefills[0])
            builder.plan.step = "mixed: head late" if late else "mixed: head cannot wait"
            # Stretch the budget to hold that much prefill work, over one prompt or several short
            # ones (relaxed decodes then sit out, as they would for any prefill surge).
            model = builder.model
            # (the builder holds the urgent decodes only)
            stretched_s = builder.predicted_s + builder.decode_rows_mixing_s() + model.prefill_cost_s(worthwhile, 0)
            builder.time_budget_s = builder.plan.time_budget_s = stretched_s
            self._grant_chunks(builder, view, order)
            if not builder.mixed:  # nothing could use it (the prefill cap, a minimum chunk, KV)
                builder.time_budget_s = builder.plan.time_budget_s = order.budget_s
                builder.plan.step = "decodes: no prefill fits"
        return builder

    def _grant_chunks(self, builder: BatchBuilder, view: IterationView, order: IterationOrder,
                      spread: bool = True) -> None:
        """Prompts in prefill order, each up to its chunk cap (:meth:`_chunk_cap`), while time, KV
        and seats last; a prompt cut short ends the batch (SGLang runs one chunked prompt,
        :attr:`BatchBuilder.chunk_open`).  ``spread=False`` for a prefill-only iteration, whose
        builder already carries its token total (:meth:`separate_iteration`): there prompts fill it
        whole, in order, and the last one is cut where it ends, as SGLang's adder cuts its chunked
        prompt (each such chunk pays an iteration's overhead of its own, and spreading a prompt only
        multiplies it)."""
        model = builder.model
        now_s = view.now_s
        # Iterations come about once per budget while decodes run; with none, nothing is spread.
        period_s = order.budget_s if spread and view.decodes and math.isfinite(order.budget_s) else 0.0
        prefills = order.prefills
        if self.clients is not None:  # lowest counter first, re-chosen after every charge
            prefills = itertools.chain(order.partial, self.clients.pick(order.waiting, key=first_token_deadline))
        for request in prefills:
            cap = self._chunk_cap(model, request, now_s, period_s) if spread else UNLIMITED
            granted = builder.add_prefill(request, min_chunk=self.min_chunk_tokens, max_chunk=cap)
            if granted and self.clients is not None:
                self.clients.charge_prefill(request, granted)
            if (builder.time_left_s <= 0 or builder.kv_left <= 0 or builder.seats_left <= 0
                    or builder.admission_blocked or builder.chunk_open or builder.prefill_tokens_left <= 0):
                return

    def _worthwhile_chunk_tokens(self, builder: BatchBuilder, view: IterationView, order: IterationOrder,
                                 next_end_s: float) -> int | None:
        """``None`` when phase 2 stands; otherwise redo it with no prefill (0) or with a budget
        stretched to hold this many prompt tokens.

        Phase 2 stands when the extend path is free (a GPU preset), when nothing waits, or when
        memory or seats keep the prompts out.  Otherwise the head of the prefill order decides.
        Past its TTFT already (an overload), it gets at least the queue's chunk
        (:meth:`_queue_chunk_tokens`).  Else the plan stands if its prefill carries at least the
        extend overhead it brings; if not, the prefill waits when the head can still meet its TTFT
        after one more iteration, and otherwise (it cannot wait) gets the queue's chunk too.
        """
        model = builder.model
        if not view.decodes or not order.prefills:
            return None
        # The plan's decodes are the urgent ones so far (relaxed decodes join after this phase).
        mixing_s = builder.decode_rows_mixing_s()
        if mixing_s <= 0:
            return None
        if not builder.mixed and (builder.kv_left <= 0 or builder.seats_left <= 0 or builder.admission_blocked):
            return None  # memory or seats, not time, keep the prompts out
        head = order.prefills[0]
        due_s = first_token_deadline(head)
        worthwhile = model.max_chunk_tokens(mixing_s, 0) + 1
        if view.now_s <= due_s:
            if builder.mixed and builder.prefill_work_s >= builder.mixing_s:
                return None
            finish_s = next_end_s + model.prefill_cost_s(head.remaining_prefill_tokens, head.prefilled_tokens)
            if finish_s <= due_s:
                return 0 if builder.mixed else None  # it can wait: decode-only now, slack banks
        target = max(worthwhile, self._queue_chunk_tokens(model, order))
        return target if builder.plan.prefill_tokens < target else None

    @staticmethod
    def _queue_chunk_tokens(model: CostModel, order: IterationOrder) -> int:
        """Prefill work for an iteration whose first prompt cannot wait any longer (it would miss
        its TTFT after one more decode step, or already has): the most efficient chunk alone, or all
        that waits if less.  The prompts queued behind the head are about to hit the same wall:
        given only the smallest prefill worth its overhead, the head was saved and the rest followed
        one by one, each paying an iteration pair's overhead (a burst of n prompts took n prefill
        iterations and n decode steps where stock takes one mixed 512-token chunk; measured in
        ``docs/results-cpu.md``).  In an overload, slivers also slow the drain for nobody's sake."""
        waiting = sum(request.remaining_prefill_tokens for request in order.prefills)
        efficient = model.efficient_chunk_tokens(order.prefills[0].prefilled_tokens)
        return min(waiting, efficient if efficient is not None else waiting)

    def _refund(self, builder: BatchBuilder) -> None:
        """The VTC counters were charged for chunks of a plan that is being redone."""
        if self.clients is not None:
            for chunk in builder.plan.prefills:
                self.clients.refund_prefill(chunk.request, chunk.tokens)

    def _chunk_cap(self, model: CostModel, request: RequestState, now_s: float, period_s: float) -> int:
        """The largest chunk ``request`` gets this iteration: ``max_chunk_tokens`` when set, else
        the most efficient chunk alone, lowered for a first prompt with slack to its share of the
        iterations until its deadline (module docstring), never below the minimum chunk, so a cap
        cannot starve a prompt of progress."""
        if self.max_chunk_tokens is not None:
            return self.max_chunk_tokens or UNLIMITED
        prefix = request.prefilled_tokens
        efficient, in_batch = self._efficient_chunks(model, prefix)
        if efficient is None:
            return UNLIMITED
        cap = efficient
        slack_s = first_token_deadline(request) - now_s
        if self.chunk_spread > 0 and period_s > 0 and slack_s > period_s and request.generated_tokens == 0:
            iterations = self.chunk_spread * slack_s / period_s
            cap = min(cap, max(in_batch, int(math.ceil(request.remaining_prefill_tokens / iterations))))
        return max(cap, self.min_chunk_tokens)

    def _efficient_chunks(self, model: CostModel, prefix: int) -> tuple[int | None, int | None]:
        """``model``'s most efficient chunk after ``prefix`` tokens, alone and joining a batch
        (:meth:`CostModel.efficient_chunk_tokens`), remembered per model: most prompts start at
        prefix 0, and every plan asks again (a model is never changed in place; a refit is a new
        one, which starts a new memo)."""
        if model is not self._chunk_model:
            self._chunk_model, self._chunk_sizes = model, {}
        sizes = self._chunk_sizes.get(prefix)
        if sizes is None:
            if len(self._chunk_sizes) >= 4096:  # prefixes of chunked prompts: keep it small
                self._chunk_sizes.clear()
            sizes = self._chunk_sizes[prefix] = (
                model.efficient_chunk_tokens(prefix),
                model.efficient_chunk_tokens(prefix, overhead_s=model.per_seq_s + model.per_mixed_seq_s))
        return sizes

    # ------------------------------------------------------------------ 2'. prefills apart
    def keeps_prefills_apart(self, view: IterationView) -> bool:
        """Whether prefills and decodes run in iterations of their own rather than mixed: when the
        cost model says the decodes' rows on the extend path cost more than a separate iteration
        (:meth:`CostModel.split_saving_s`), and every decode may sit out a prefill-only iteration."""
        if not view.decodes or not view.prefills:
            return False
        model = self.cost_model
        # (the squares take a pass over the decodes: only for a model that prices them)
        context_sq = view.decodes_context_sq() if model.per_mixed_context_sq_s else 0
        if model.split_saving_s(len(view.decodes), view.decodes_context_tokens(), context_sq) <= 0:
            return False
        return all(request.can_skip for request in view.decodes)

    def separate_iteration(self, urgent: BatchBuilder, view: IterationView, order: IterationOrder) -> BatchBuilder:
        """A prefill-only iteration when the decodes' deadlines leave room for one and a decode-only
        iteration after it; otherwise the decode-only iteration now (every decode: the step costs
        the same fixed time however many run).  A half-prefilled prompt is always continued
        (SGLang continues its chunked request in every iteration, so there is no decode-only one
        while it lasts): alone, before the decodes, which is quicker for them too than a mixed
        batch that holds their rows on the extend path.

        Room: the time to the first decode deadline (protected or lost line), less the decode-only
        iteration that must follow, at the budget's safety margin.  A prefill-only iteration waits
        for room to hold a prefill nine times the overhead it brings, its own and the decode step's
        (:data:`PREFILL_OVERHEAD_SHARE`; or all that waits, at most the engine's prefill cap), and
        meanwhile decode-only steps, work due anyway, bank it.  When the room is too small but the
        first prompt in line cannot wait (late, or missing its TTFT after a decode-only step) and no
        decode is overdue yet, it gets the amortised prefill anyway, at least the queue's chunk
        (:meth:`_queue_chunk_tokens`): decodes and prompts then take turns, as in stock SGLang's
        prefill-first loop, instead of prompts starving behind a busy decode batch, and the prompts
        queued behind the head go with it instead of reaching the same point one by one.

        When a decode is already overdue the decode-only step goes first, but with
        ``overdue_take_turns`` for one step only: the prompt that cannot wait has the next
        iteration.  On a slow spell of the CPU server a decode step takes about a TPOT, so overdue
        decodes do not get back on their line; measured, they held 14-36 decode-only steps in a row
        while 20-36 prompts passed their TTFT (``docs/results-cpu.md``).
        """
        model = self.cost_model
        now_s = view.now_s
        decode_only = self._builder_with(view, math.inf, list(view.decodes))
        decode_only.plan.urgent_decodes = urgent.plan.urgent_decodes
        due_s = min(order.deadlines[:1] + order.lost_deadlines[:1])
        room_s = min(self.budget_safety * (due_s - now_s) - decode_only.predicted_s, self.max_time_budget_s)
        # What one prefill-only iteration could take: each prompt up to its chunk cap.
        waiting_tokens = sum(min(request.remaining_prefill_tokens, self._chunk_cap(model, request, now_s, 0.0))
                             for request in order.prefills)
        overhead_s = model.fixed_s + model.per_prefill_iteration_s
        head = order.prefills[0]
        due_head_s = first_token_deadline(head)
        # A prefill-only iteration waits for room to hold a prefill that dwarfs the overhead it
        # brings, its own and the decode step it puts after it (or all that waits, if less):
        # meanwhile decode-only steps, work that must be done anyway, bank the room.  Slivers
        # squeezed into every gap paid an iteration each and lost to stock's prefill-first loop.
        amortised_s = (1.0 - PREFILL_OVERHEAD_SHARE) / PREFILL_OVERHEAD_SHARE * (overhead_s + decode_only.predicted_s)
        amortised = min(model.max_chunk_tokens(amortised_s, 0), waiting_tokens, view.max_prefill_tokens)
        worthwhile = min(waiting_tokens, model.max_chunk_tokens(overhead_s, 0) + 1)
        needed = max(worthwhile, amortised)
        if room_s < overhead_s + self._fill_cost_s(model, order.prefills, needed):
            cannot_wait = now_s + decode_only.predicted_s + overhead_s + model.prefill_cost_s(
                head.remaining_prefill_tokens, head.prefilled_tokens) > due_head_s
            overdue_first = due_s <= now_s and not (self.overdue_take_turns and self._overdue_decodes_went_last)
            if head.prefilled_tokens == 0 and (not cannot_wait or overdue_first):
                decode_only.plan.step = "apart: decodes overdue" if cannot_wait else "apart: decodes, prompts wait"
                self._overdue_decodes_went_last = cannot_wait
                return decode_only
            # The first prompt cannot wait: the queue's chunk now (:meth:`_queue_chunk_tokens`), at
            # least the amortised prefill.
            needed = max(needed, self._queue_chunk_tokens(model, order))
            step = "apart: prefill, head late" if now_s > due_head_s else "apart: prefill, head cannot wait"
            room_s = overhead_s + self._fill_cost_s(model, order.prefills, needed)
        else:
            step = "apart: prefill, amortised"
        prefill_only = BatchBuilder(view, model, time_budget_s=room_s)
        prefill_only.plan.step = step
        # The prompts' caps added up, what the room was sized for, filled in order (one cut).
        prefill_only.prefill_tokens_left = min(prefill_only.prefill_tokens_left, waiting_tokens)
        self._grant_chunks(prefill_only, view, order, spread=False)
        self._overdue_decodes_went_last = False
        if prefill_only.mixed:
            return prefill_only
        decode_only.plan.step = "apart: decodes, no memory or seat"
        return decode_only

    @staticmethod
    def _fill_cost_s(model: CostModel, prompts: list[RequestState], tokens: int) -> float:
        """Prefill time of a prefill-only iteration that takes ``tokens`` from ``prompts`` in order,
        each chunk priced from where its prompt stands, as the batch builder then prices it.  A
        part-prefilled prompt's chunk attends to its prefix: a room sized as if it had none held
        too small a chunk, or none (below the minimum chunk), and SGLang's 32-token continuation
        then ran with every decode, iteration after iteration (``docs/results-cpu.md``)."""
        cost_s = 0.0
        for request in prompts:
            if tokens <= 0:
                break
            take = min(tokens, request.remaining_prefill_tokens)
            cost_s += model.prefill_cost_s(take, request.prefilled_tokens)
            tokens -= take
        # (plus a nanosecond: the builder inverts this cost in floating point, max_chunk_tokens,
        # and could round the last token off, leaving it an iteration of its own)
        return cost_s + 1e-9

    # ------------------------------------------------------------------ 3. relaxed decodes
    def relaxed_decodes(self, builder: BatchBuilder, order: IterationOrder, view: IterationView) -> None:
        """Decodes that could wait, most hurried first, while they fit; the lost ones lead (they
        have no SLO left, but finishing them frees their KV).  Once one skippable decode does not
        fit, the rest sit out, but a decode that cannot be skipped still runs."""
        relaxed = order.lost + order.protected if order.lost else order.protected
        shape = builder.plan.shape
        if (view.decode_context_tokens is not None and view.decode_context_sq is not None
                and len(builder.plan.decodes) + len(relaxed) == len(view.decodes)
                and not builder.decode_context_sq_pending):
            # Every decode the plan does not hold yet: their context sums are the view's less the
            # plan's (the driver keeps the view's), so when all certainly fit they take no pass.
            added = builder.add_decodes(relaxed, sum_context=view.decode_context_tokens - shape.decode_context,
                                        sum_context_sq=view.decode_context_sq - shape.decode_context_sq)
        else:
            added = builder.add_decodes(relaxed)
        # Sitting out serves a prefill of this iteration or a protected decode's next deadline;
        # with neither (every decode lost, no prefill planned) it only slows the drain.
        nobody_gains = not builder.plan.prefills and not order.deadlines
        for request in relaxed[added:]:
            if not request.can_skip or nobody_gains:
                builder.add_decode(request, force=True)

    # ================================================================== feedback and state
    def observe(self, plan: Plan, measured_s: float) -> None:
        super().observe(plan, measured_s)
        if self.clients is not None:  # output tokens are charged as the decodes that ran make them
            for request in plan.decodes:
                self.clients.charge_output(request)
        self._track_error(plan.predicted_s, measured_s)

    def observe_decode_steps(self, decodes, sum_context: int, measured_s, predicted_s=None,
                             predicted_by: CostModel | None = None) -> None:
        """:meth:`observe` of each step of a decode run, with the online model taking the whole run
        in one call; the error ring needs only each step's prediction, which that call returns."""
        if self.clients is not None or self.online is None:
            super().observe_decode_steps(decodes, sum_context, measured_s)
            return
        predicted = self.online.observe_decode_steps(len(decodes), sum_context, measured_s, predicted_s,
                                                     predicted_by)
        for predicted_s, step_s in zip(predicted, measured_s):
            self._track_error(predicted_s, step_s)

    def _track_error(self, predicted_s: float, measured_s: float) -> None:
        """One iteration's measured-over-predicted ratio into the ring the adaptive safety reads
        (the ring is the policy's alone, so it may be fed after the online model's observes)."""
        if self.fixed_safety is not None or not predicted_s > 0:
            return
        # (a float nearly always: one type test before the isinstance call)
        if (type(measured_s) is not float and not isinstance(measured_s, (int, float))) or not 0 < measured_s < math.inf:
            return
        slot = self._observed % ERROR_WINDOW
        ratio = measured_s / predicted_s
        if self._observed < ERROR_WINDOW or self._ratios[slot] != ratio:
            self._ratios_changed = True
        self._ratios[slot] = ratio
        self._observed += 1
        if self._observed >= ERROR_MIN_SAMPLES and self._observed % ERROR_REFRESH == 0 and self._ratios_changed:
            self._ratios_changed = False
            # Leave room for the model's 90th-percentile under-prediction: an iteration predicted
            # at ``budget`` then ends by ``budget * (1 + q90)`` nine times in ten.
            ratios = sorted(self._ratios[: min(self._observed, ERROR_WINDOW)])
            over = max(ratios[int(0.9 * (len(ratios) - 1))] - 1.0, 0.0)  # the 90th percentile
            self.budget_safety = min(1.0, max(MIN_SAFETY, 1.0 / (1.0 + over)))

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
            late_ttft_factor=self.late_ttft_factor,
            chunk_spread=self.chunk_spread,
            late_into_slack=self.late_into_slack,
        )
        return info
