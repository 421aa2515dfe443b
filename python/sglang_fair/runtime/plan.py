"""Applying a :class:`Plan` to SGLang's scheduler, and measuring the iteration that ran it.

One :class:`IterationRecord` per iteration carries everything between the steps of SGLang's loop
that belong to it: made when the plan is made (``get_new_batch_prefill``), read by the prefill adder
(``get_prefill_adder_class``), by the waiting-queue ordering (:class:`PlanOrderedSchedulePolicy`)
and by the measurement (``run_batch`` .. ``process_batch_result``), and dropped when the iteration's
result has been processed.  The scheduler holds it in one attribute, ``fair_iteration``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from sglang_fair.policy import Plan
from sglang_fair.runtime.records import is_abort, late_decode_tokens, note_executed_batch, release, sweep

__all__ = [
    "MIN_CONTINUE_CHUNK_TOKENS",
    "IterationRecord",
    "PlanOrderedSchedulePolicy",
    "finish_iteration",
    "mix_decodes",
    "order_waiting_queue",
]

#: Smallest chunk given to a chunked request the plan left out: SGLang always continues a chunked
#: prefill once started, and a stalled chunk keeps its KV pinned.
MIN_CONTINUE_CHUNK_TOKENS = 32


@dataclass(slots=True)
class IterationRecord:
    """What one iteration carries from its plan to its measurement."""

    #: The policy's plan; None for an iteration nobody planned (a decode-only step).
    plan: Plan | None = None
    #: ``(prefill_tokens, mixed_decode_rows)`` for the prefill adder while the plan is applied
    #: (None outside ``get_new_batch_prefill``: an adder built then is SGLang's own).
    adder_budget: tuple[int, int] | None = None
    #: ``time.perf_counter()`` when ``run_batch`` started (None: not timed, e.g. overlap on).
    started_s: float | None = None
    #: The queue the plan was made for: prompts waiting (or part-prefilled) and the least TTFT
    #: slack among them in seconds (None: none waited), for ``--fair-iteration-log``.
    waiting_prompts: int = 0
    min_prompt_slack_s: float | None = None


def order_waiting_queue(waiting_queue: list, plan: Plan) -> None:
    """Put the planned new prefills first, in plan order (the adder admits queue order)."""
    if not plan.prefills or len(waiting_queue) < 2:
        return
    rank = {}
    for index, chunk in enumerate(plan.prefills):
        rank[id(chunk.request.handle)] = index
    last = len(rank)
    # Stable sort: unplanned requests keep SGLang's order behind the planned ones.
    waiting_queue.sort(key=lambda req: rank.get(id(req), last))


class PlanOrderedSchedulePolicy:
    """SGLang's ``SchedulePolicy`` with the plan's order on top.

    SGLang sorts the waiting queue in ``calc_priority`` (``--schedule-policy`` lpm, dfs-weight,
    lof, random, priority scheduling...) right before its adder admits in queue order, and
    ``shortest-prefill-first`` also caps the chunked request's chunk.  While a plan is applied the
    plan decides both: SGLang's sort still runs (its prefix matching feeds the radix cache and the
    load snapshot), then the planned prefills are put back first in plan order, and the chunk limit
    is the plan's.  Outside a plan everything is SGLang's.
    """

    def __init__(self, inner, scheduler) -> None:
        self._inner = inner
        self._scheduler = scheduler

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def _applying(self) -> Plan | None:
        record = self._scheduler.fair_iteration
        if record is None or record.adder_budget is None:
            return None
        return record.plan

    def calc_priority(self, waiting_queue, *args, **kwargs):
        result = self._inner.calc_priority(waiting_queue, *args, **kwargs)
        plan = self._applying()
        if plan is not None:
            order_waiting_queue(waiting_queue, plan)
        return result

    def shortest_prefill_chunk_limit(self, *args, **kwargs):
        if self._applying() is not None:
            return None  # the plan's prefill tokens already are the chunk budget
        return self._inner.shortest_prefill_chunk_limit(*args, **kwargs)


class _NoPenalties:
    """Stand-in orchestrator while the sitting-out half is cut: its rows carry no penalizer state."""

    is_required = False

    @staticmethod
    def filter(keep_indices) -> None:
        return None


def mix_decodes(scheduler, new_batch, running_batch, plan: Plan):
    """Mix the decodes that run now into ``new_batch``; return what sits out as the running batch."""
    from sglang.srt.managers.schedule_batch import ScheduleBatch

    if (
        new_batch.return_logprob
        or running_batch.return_logprob
        or new_batch.input_embeds is not None
        or any(req.beam_group is not None for req in running_batch.reqs)
    ):
        return running_batch  # SGLang cannot mix these: prefill-only step, as stock does
    finishing = scheduler._reqs_finishing_inflight(running_batch)
    if finishing:
        running_batch.filter_batch(reqs_to_exclude=finishing)
        running_batch.batch_is_full = False
        if running_batch.is_empty():
            return running_batch
    planned = {id(state.handle) for state in plan.decodes}
    run_indices = []
    sit_indices = []
    # The plan is the truth: a policy that left a decode out (FairBatching's relaxed decodes,
    # SLAI's non-critical ones past the token budget) gets it left out, when the loop allows.
    skip_allowed = scheduler.fair_can_split
    states = scheduler.fair_states
    for index, req in enumerate(running_batch.reqs):
        state = states.get(req.rid)
        if not skip_allowed or id(req) in planned or state is None or not state.can_skip:
            run_indices.append(index)
        else:
            sit_indices.append(index)
    if not run_indices:
        _note_skipped(scheduler, running_batch.reqs)
        return running_batch
    if not running_batch.check_decode_mem(selected_indices=run_indices if sit_indices else None):
        return running_batch  # no KV room for the decode rows: they run next decode step
    if sit_indices:
        sitting = _split_off(running_batch, sit_indices)
        running_batch.filter_batch(keep_indices=run_indices)
        _note_skipped(scheduler, sitting.reqs)
    else:
        sitting = ScheduleBatch(reqs=[], batch_is_full=running_batch.batch_is_full)
    running_batch.prepare_for_decode()
    new_batch.mix_with_running(running_batch)
    new_batch.decoding_reqs = running_batch.reqs
    return sitting


def _split_off(running_batch, indices):
    """A new batch holding rows ``indices`` of ``running_batch``, sharing no mutable state.

    ``filter_batch`` re-indexes tensors into new ones but filters the sampling info's penalizer
    orchestrator in place, so the copy gets its own ``SamplingBatchInfo`` (shallow copy, whose
    filter also only re-indexes) and a fresh orchestrator: rows that sit out never carry
    penalizers (``can_sit_out``).
    """
    from sglang.srt.sampling import penaltylib

    original_info = running_batch.sampling_info
    sitting = copy.copy(running_batch)
    info = copy.copy(original_info)
    info.penalizer_orchestrator = _NoPenalties()
    sitting.sampling_info = info
    sitting.filter_batch(keep_indices=list(indices))
    info.penalizer_orchestrator = penaltylib.BatchedPenalizerOrchestrator(
        vocab_size=info.vocab_size,
        batch=sitting,
        penalizers=set(original_info.penalizer_orchestrator.penalizers)
        or {
            penaltylib.BatchedFrequencyPenalizer,
            penaltylib.BatchedMinNewTokensPenalizer,
            penaltylib.BatchedPresencePenalizer,
            penaltylib.BatchedRepetitionPenalizer,
        },
    )
    sitting.decoding_reqs = None
    return sitting


def _note_skipped(scheduler, reqs) -> None:
    scheduler.fair_skipped_decodes_total += len(reqs)
    states = scheduler.fair_states
    for req in reqs:
        state = states.get(req.rid)
        if state is not None:
            state.skipped_iterations += 1


def finish_iteration(scheduler, batch, record: IterationRecord, measured_s: float, end_s: float) -> None:
    """The iteration's result was processed: records progress, finished requests are released,
    the executed shape and its measured seconds go to the policy (online refit) and the metrics."""
    states = scheduler.fair_states
    log = scheduler.fair_iteration_log
    late_tokens = late_decode_tokens(states, batch, end_s) if log is not None else None
    shape, finished = note_executed_batch(states, batch, end_s)
    for state, req in finished:
        release(scheduler, state, aborted=is_abort(req))
    executed = Plan(shape=shape)
    plan = record.plan or executed
    executed.time_budget_s = plan.time_budget_s
    policy = scheduler.fair_policy
    executed.predicted_s = policy.cost_model.predict_shape(shape)
    policy.observe(executed, measured_s)
    scheduler.fair_last_measured_s = measured_s
    scheduler.fair_iterations += 1
    if scheduler.fair_metrics is not None:
        scheduler.fair_metrics.observe_iteration(scheduler, plan, executed, measured_s)
    if log is not None:
        log.record(end_s=end_s, measured_s=measured_s, predicted_s=executed.predicted_s,
                   time_budget_s=plan.time_budget_s, shape=shape, step=plan.step,
                   waiting_prompts=record.waiting_prompts, min_prompt_slack_s=record.min_prompt_slack_s,
                   late_tokens=late_tokens)
    if len(states) > 2 * (len(scheduler.waiting_queue) + len(scheduler.running_batch.reqs)) + 64:
        sweep(scheduler, batch)
