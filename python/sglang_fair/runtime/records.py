"""Per-request records kept beside SGLang's ``Req`` objects, and the SLO counters they feed.

A :class:`RuntimeRequestState` is created when a request enters the queue (the scheduler's intake),
kept in ``scheduler.fair_states`` (keyed by rid) while SGLang holds the request, updated where its
events happen (:func:`note_executed_batch` after each iteration: prefill progress and every emitted
token, judged against the envelope line; :func:`sync_records` before a view is built: progress that
SGLang changed without an iteration of ours, such as a retraction) and released when the request
finishes or disappears (:func:`release`, :func:`sweep`).  The verdicts are the policy's own
(:mod:`sglang_fair.policy.request`), so the simulator and the runtime judge a request alike.
"""

from __future__ import annotations

import math
import time

from sglang_fair.policy.cost_model import BatchShape
from sglang_fair.policy.request import RequestState, meets_envelope
from sglang_fair.runtime.slo import can_sit_out

__all__ = [
    "RuntimeRequestState",
    "SloCounters",
    "is_abort",
    "late_decode_tokens",
    "note_executed_batch",
    "release",
    "sweep",
    "sync_records",
]


class RuntimeRequestState(RequestState):
    """RequestState plus the runtime's envelope bookkeeping (late tokens, SLO verdict)."""

    __slots__ = ("late_tokens", "on_time_until_s")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.late_tokens = 0  # tokens that came out after their judged envelope line
        # Every later token that comes out by this time meets its envelope line (the lines only
        # rise with the token index), so the per-iteration hot path judges a token only past it.
        self.on_time_until_s = -math.inf

    def judge_token(self, token_index: int, emitted_s: float) -> None:
        """Judge token ``token_index`` out at ``emitted_s`` against the envelope (``meets_envelope``)."""
        if not meets_envelope(self.envelope_slack_s(token_index, emitted_s)):
            self.late_tokens += 1
        self.on_time_until_s = self.envelope_deadline_s(token_index + 1)

    def note_tokens(self, generated_tokens: int, end_s: float) -> None:
        """Sync ``generated_tokens`` from SGLang and stamp the new tokens with ``end_s``."""
        while self.generated_tokens < generated_tokens:
            self.judge_token(self.generated_tokens, end_s)
            self.record_token(end_s)

    @property
    def met_envelope(self) -> bool:
        """The envelope verdict: every token by its judged line (``meets_envelope`` per token)."""
        return self.late_tokens == 0


class SloCounters:
    """Finished-request SLO attainment (mean-TPOT definition and envelope definition)."""

    def __init__(self) -> None:
        self.finished = 0
        self.aborted = 0
        self.rejected_bad_slo = 0
        self.rejected_admission = 0
        self.met_ttft = 0
        self.met_tpot = 0
        self.met_both = 0
        self.met_envelope = 0

    def record(self, state: RuntimeRequestState) -> None:
        if state.first_token_s is None:
            return
        self.finished += 1
        ok_ttft, ok_tpot = state.slo_met()
        self.met_ttft += ok_ttft
        self.met_tpot += ok_tpot
        self.met_both += ok_ttft and ok_tpot
        self.met_envelope += state.met_envelope

    def snapshot(self) -> dict:
        done = self.finished
        return {
            "finished": done,
            "aborted": self.aborted,
            "rejected_bad_slo": self.rejected_bad_slo,
            "rejected_admission": self.rejected_admission,
            "met_ttft": self.met_ttft,
            "met_tpot": self.met_tpot,
            "met_both": self.met_both,
            "met_envelope": self.met_envelope,
            "attainment": (self.met_both / done) if done else None,
            "envelope_attainment": (self.met_envelope / done) if done else None,
        }


def is_abort(req) -> bool:
    reason = req.finished_reason
    return reason is not None and type(reason).__name__ == "FINISH_ABORT"


#: A tokenizer receipt older than this, at the scheduler's receipt, is not believed: a tokenizer on
#: another host keeps another monotonic clock.
MAX_TOKENIZER_LEAD_S = 60.0


def arrival_time_s(req) -> float:
    """When ``req`` arrived, on the ``time.perf_counter()`` clock its deadlines are kept on: the
    HTTP server's receipt (``created_time``, which SGLang 0.5.23 only passes on to the scheduler
    with :func:`http_routes.install_created_time_propagation`), so the time a request spends in
    the tokenizer counts against its TTFT as the client counts it; else the scheduler's receipt,
    else now."""
    stats = req.time_stats
    received_s = stats.scheduler_recv_time or time.perf_counter()
    created_s = getattr(stats, "created_time", 0.0) or 0.0
    if 0.0 < received_s - created_s <= MAX_TOKENIZER_LEAD_S:
        return created_s
    return received_s


def _record_of(scheduler, req) -> RuntimeRequestState:
    """The record of ``req``; one is made for a request the intake never saw (a retraction re-queue
    of one we did not track, a session continuation, the calibration's requests): tracked from now
    with the default SLOs.  With stock batching records are transient (only a view for the PAB)."""
    states = scheduler.fair_states
    state = states.get(req.rid)
    if state is not None and state.handle is req:
        return state
    config = scheduler.fair_config
    arrival_s = arrival_time_s(req)
    # Its max_new_tokens all the same: without it the KV estimate charges the 4096-token clip.
    max_new_tokens = req.sampling_params.max_new_tokens
    if not scheduler.fair_active:
        return RuntimeRequestState(req.rid, arrival_s, len(req.origin_input_ids), config.ttft_slo_s,
                                   config.tpot_slo_s, max_new_tokens=max_new_tokens,
                                   generated_tokens=len(req.output_ids))
    state = RuntimeRequestState(req.rid, arrival_s, len(req.origin_input_ids), config.ttft_slo_s,
                                config.tpot_slo_s, max_new_tokens=max_new_tokens, can_skip=can_sit_out(req),
                                handle=req)
    states[req.rid] = state
    return state


def sync_records(scheduler, running_batch) -> tuple[list, list, int]:
    """Bring the records of every request SGLang holds up to date; return ``(decodes, prefills,
    has_chunked)`` in view order (the chunked request first among the prefills).

    The one place where progress SGLang changed outside our iterations is written back: a running
    request is fully prefilled; a queued one has nothing in KV, and after a retraction must prefill
    its prompt and its outputs so far again.  Called right before a view is built
    (:func:`sglang_fair.runtime.view.build_view` only reads).
    """
    states = scheduler.fair_states
    decodes = []
    for req in running_batch.reqs:
        if req.finished():
            continue
        state = states.get(req.rid)
        if state is None or state.handle is not req:  # inlined fast path: once per request per step
            state = _record_of(scheduler, req)
        state.prefilled_tokens = state.fill_tokens = state.prompt_tokens
        generated = len(req.output_ids)
        if generated > state.generated_tokens:
            state.generated_tokens = generated
        decodes.append(state)
    prefills = []
    chunked = scheduler.chunked_req
    has_chunked = 0
    if chunked is not None and not chunked.finished():
        has_chunked = 1
        state = _record_of(scheduler, chunked)
        # Progress (cached prefix included) was recorded after the last chunk ran; the first
        # chunk may have been cut by KV, so it may still read 0: make it count as partial.
        state.prefilled_tokens = min(max(state.prefilled_tokens, 1), state.prompt_tokens - 1)
        prefills.append(state)
    for req in scheduler.waiting_queue:
        if req.finished():
            continue
        state = states.get(req.rid)
        if state is None or state.handle is not req:
            state = _record_of(scheduler, req)
        state.prefilled_tokens = 0  # queued (or retracted): nothing of it is in the KV cache
        # A retracted request prefills its prompt and the outputs so far again.
        state.fill_tokens = state.prompt_tokens + len(req.output_ids)
        prefills.append(state)
    return decodes, prefills, has_chunked


def note_executed_batch(states: dict, batch, end_s: float) -> tuple[BatchShape, list]:
    """After ``batch`` ran: its executed shape, and the records' progress (prefill chunks, tokens
    stamped with ``end_s``); returns ``(shape, [(state, req) finished])``.

    Runs every iteration over every request in the batch: kept lean (plain attribute work; a
    decode token is judged only once ``end_s`` passes the record's ``on_time_until_s``) so it stays
    a small share of SGLang's own per-iteration CPU time (``benchmark/sched_overhead.py``).
    """
    shape = BatchShape()
    reqs = batch.reqs
    num_prefill_rows = len(reqs) - len(_decode_rows(batch))
    finished = []
    if num_prefill_rows:
        _note_prefill_rows(states, batch, reqs[:num_prefill_rows], shape, end_s, finished)
        reqs = reqs[num_prefill_rows:]
    sum_context = 0
    sum_context_sq = 0
    get = states.get
    for req in reqs:
        generated = len(req.output_ids)
        context = len(req.origin_input_ids) + generated
        sum_context += context
        sum_context_sq += context * context
        state = get(req.rid)
        if state is None:
            continue
        if generated != state.generated_tokens:
            if generated == state.generated_tokens + 1 and state.last_token_s is not None:
                # one more decode token (the common case: no loop, no first-token line fixing)
                if end_s > state.on_time_until_s:
                    state.judge_token(generated - 1, end_s)
                state.generated_tokens = generated
                state.last_token_s = end_s
            else:
                state.note_tokens(generated, end_s)
        if req.finished_reason is not None:
            finished.append((state, req))
    decode_rows = len(reqs)
    shape.new_tokens += decode_rows
    shape.num_seqs += decode_rows
    shape.sum_context += sum_context
    shape.decode_context += sum_context  # (a mixed batch's decode rows: the mixed_context term)
    shape.decode_context_sq += sum_context_sq  # (and the mixed_context_sq term)
    return shape, finished


def _decode_rows(batch) -> list:
    """The decode rows of an executed batch: all of a decode batch; those SGLang mixed into an
    extend batch (after its prefill rows)."""
    return (batch.decoding_reqs or []) if batch.forward_mode.is_extend() else batch.reqs


def late_decode_tokens(states: dict, batch, end_s: float) -> list[dict]:
    """Decode tokens of ``batch`` that come out at ``end_s`` past the line the policy plans
    against (:attr:`RequestState.next_deadline_s`, anchored at the first token): for the last
    token of a request that met its TTFT, that is exactly a missed mean TPOT.  Requests already
    lost are left out (their verdict is settled).  Call before :func:`note_executed_batch` (it
    reads each record as the iteration found it).  Only ``--fair-iteration-log`` asks: each entry
    says how long the request had waited since its last token and how much time its line had
    given it then, so a reader can find the iterations that made the token late.
    """
    late = []
    for req in _decode_rows(batch):
        state = states.get(req.rid)
        if state is None or state.last_token_s is None or len(req.output_ids) != state.generated_tokens + 1:
            continue
        due_s = state.next_deadline_s
        if end_s > due_s and not state.is_lost(state.last_token_s):
            late.append({"rid": req.rid, "token": state.generated_tokens, "late_s": end_s - due_s,
                         "waited_s": end_s - state.last_token_s, "line_gave_s": due_s - state.last_token_s,
                         "max_new_tokens": state.max_new_tokens})
    return late


def _note_prefill_rows(states: dict, batch, rows: list, shape: BatchShape, end_s: float, finished: list) -> None:
    """The prefill rows of an extend batch: chunk shapes, prefill progress, a first token."""
    prefix_lens = batch.prefix_lens or []
    extend_lens = batch.extend_lens or []
    for index, req in enumerate(rows):
        state = states.get(req.rid)
        if index < len(extend_lens):
            prefix = prefix_lens[index] if index < len(prefix_lens) else 0
            shape.add_prefill(extend_lens[index], prefix)
            if state is not None:
                state.prefilled_tokens = min(prefix + extend_lens[index], state.prompt_tokens)
        if state is None:
            continue
        generated = len(req.output_ids)
        if generated != state.generated_tokens:
            state.note_tokens(generated, end_s)
        if req.finished_reason is not None:
            finished.append((state, req))


def release(scheduler, state: RuntimeRequestState, *, aborted: bool) -> None:
    """A request is done (finished, aborted or gone): count it and forget it."""
    if scheduler.fair_states.pop(state.rid, None) is None:
        return
    if aborted:
        scheduler.fair_slo.aborted += 1
    else:
        scheduler.fair_slo.record(state)
        if scheduler.fair_metrics is not None:
            scheduler.fair_metrics.observe_finished(state)
    scheduler.fair_policy.release(state)
    state.handle = None


def sweep(scheduler, processing=None) -> None:
    """Drop records of requests SGLang no longer holds (aborted while queued, etc.).

    ``processing`` is the batch whose result is being processed: its new prefills are in no queue
    or running batch until the next iteration merges them, whoever drives the loop."""
    live = {id(req) for req in scheduler.waiting_queue}
    live.update(id(req) for req in scheduler.running_batch.reqs)
    for batch in (scheduler.last_batch, scheduler.cur_batch_for_debug, processing):
        if batch is not None:
            live.update(id(req) for req in batch.reqs)
    if scheduler.chunked_req is not None:
        live.add(id(scheduler.chunked_req))
    for state in list(scheduler.fair_states.values()):
        req = state.handle
        if req is None or id(req) not in live:
            release(scheduler, state, aborted=not (req is not None and req.finished() and not is_abort(req)))
