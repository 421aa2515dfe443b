"""FairBatching inside SGLang's scheduler: view in, plan out, measured time back.

:class:`FairBatchingMixin` sits in front of ``sglang.srt.managers.scheduler.Scheduler`` in
``FairScheduler``'s bases.  With ``--batch-policy sglang`` every override hands straight to SGLang
(stock batching, bit for bit).  With any other policy, once per iteration:

1. ``get_new_batch_prefill`` (called by SGLang after the last batch merged back into the running
   batch) builds an :class:`IterationView` from the running batch, the chunked request and the
   waiting queue, and asks the policy for a :class:`Plan`.
2. The plan's prefill tokens become the prefill adder's token and chunk budgets
   (``get_prefill_adder_class`` returns :class:`PlanPrefillAdder`), and the planned prefills are
   moved to the front of the waiting queue in plan order.  SGLang's own adder then does the KV,
   radix-cache and request-count accounting as usual.
3. If a prefill batch was formed, the running batch is split into *R* (the planned decodes plus
   every decode that may not sit out) and *K* (sits out).  R is prepared for decode and mixed into
   the prefill batch (``ForwardMode.MIXED``); K is returned as the running batch.  Next iteration
   SGLang's standard "last batch was an extend" path merges the mixed batch back into K, so no
   request is ever held anywhere SGLang does not already look (abort, idle checks, load counts).
4. ``run_batch`` .. ``process_batch_result`` is timed; the executed batch's shape and the measured
   seconds go to ``policy.observe`` (online cost-model refit) and per-request records are updated.

Decode-only iterations (``update_running_batch``) run every decode: with no prefill waiting, a
decode that sits out frees compute for nobody, and SGLang's decode step cost is mostly fixed.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time

from sglang_fair import strict_json
from sglang_fair.config import FairConfig
from sglang_fair.policy import IterationView, Plan, RequestState, load_cost_model
from sglang_fair.policy.kv import admission_reservation_tokens, running_reservation_tokens
from sglang_fair.policy import build_policy as policy_builder
from sglang_fair.policy.cost_model import BatchShape, CostModel, CostModelError
from sglang_fair.policy.limits import UNLIMITED
from sglang_fair.runtime.load import horizon_tokens, load_tokens
from sglang_fair.runtime.rejection import ADMISSION_ERR_TYPE, ADMISSION_STATUS, admission_rejection_message
from sglang_fair.runtime.slo import can_sit_out, parse_request_slos

logger = logging.getLogger(__name__)

__all__ = ["CPU_PRIOR_PRESET", "FairBatchingMixin", "RuntimeRequestState", "SloCounters", "build_policy"]

#: Warm start for the online cost model when neither ``--cost-model`` nor the start-up calibration
#: gives one (calibration off or impossible): the tiny model profiled by kernels/ on a CPU, a 7B
#: preset on a GPU; the online refit takes over from measured iterations.
CPU_PRIOR_PRESET = "cpu-tiny"
GPU_PRIOR_PRESET = "a100-llama2-7b"
#: Set (to "1") by the launcher for ``--load-balance-method pab``.
DP_PAB_ENV = "SGLANG_FAIR_DP_PAB"

#: Smallest chunk given to a chunked request the plan left out: SGLang always continues a chunked
#: prefill once started, and a stalled chunk keeps its KV pinned.
MIN_CONTINUE_CHUNK_TOKENS = 32


class RuntimeRequestState(RequestState):
    """RequestState plus the runtime's envelope bookkeeping (late tokens, SLO verdict)."""

    __slots__ = ("late_tokens",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.late_tokens = 0  # tokens past the judged envelope line (envelope_deadline_s)

    def note_tokens(self, generated_tokens: int, end_s: float) -> None:
        """Sync ``generated_tokens`` from SGLang and stamp the new tokens with ``end_s``."""
        while self.generated_tokens < generated_tokens:
            if end_s > self.envelope_deadline_s(self.generated_tokens):
                self.late_tokens += 1
            self.record_token(end_s)


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
        self.met_envelope += state.late_tokens == 0

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


def _coerce_option(value):
    """``--fair-policy-option K=V`` values may arrive as strings; read numbers and booleans."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def build_policy(
    config: FairConfig,
    *,
    chunked_prefill_size: int | None = None,
    on_cpu: bool = True,
    prior: CostModel | None = None,
):
    """Policy object for ``config`` with an online cost model, or raise ``ValueError``/``CostModelError``.

    The online model's prior is ``--cost-model`` when given, else ``prior`` (the start-up
    calibration, :mod:`sglang_fair.runtime.calibration`), else a shipped preset.  Its outlier gate
    judges samples against recent samples, not against the prior, so any of them is left behind
    once measurements disagree with it (``OnlineCostModel``).
    """
    name = config.batch_policy
    if config.cost_model:
        prior = load_cost_model(config.cost_model)
    elif prior is None:
        prior = load_cost_model(CPU_PRIOR_PRESET if on_cpu else GPU_PRIOR_PRESET)
    settings = {
        "default_ttft_slo_s": config.ttft_slo_s,
        "token_budget": config.token_budget,
        "client_fairness": config.client_fairness,
        "chunked_prefill_size": chunked_prefill_size,
    }
    options = {key: _coerce_option(value) for key, value in (config.policy_options or {}).items()}
    return policy_builder(name, prior, settings=settings, options=options)


class _NoPenalties:
    """Stand-in orchestrator while the sitting-out half is cut: its rows carry no penalizer state."""

    is_required = False

    @staticmethod
    def filter(keep_indices) -> None:
        return None


class _PabLoadInquirer:
    """Delegates to SGLang's load inquirer; ``get_loads`` reports the PAB load as total tokens."""

    def __init__(self, inner, scheduler) -> None:
        self._inner = inner
        self._scheduler = scheduler

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def get_loads(self, *args, **kwargs):
        import msgspec

        load = self._inner.get_loads(*args, **kwargs)
        try:
            return msgspec.structs.replace(load, num_total_tokens=self._scheduler.fair_pab_load_tokens())
        except Exception as exc:  # never let the load report take the scheduler down
            logger.warning("sglang_fair: PAB load failed, reporting stock load: %s", exc)
            return load


class FairBatchingMixin:
    """Scheduler overrides that apply a ``sglang_fair`` policy; see the module docstring."""

    # ------------------------------------------------------------------ setup
    def __init__(self, *args, **kwargs) -> None:
        if not hasattr(self, "fair_config"):
            self.fair_config = FairConfig.from_env()
        super().__init__(*args, **kwargs)
        self._fair_setup()

    def _fair_setup(self) -> None:
        config = self.fair_config
        self.fair_active = config.batch_policy != "sglang"
        self._fair_reset_records()
        self._fair_adder_budget: tuple[int, int] | None = None
        self._fair_batch_start_s: float | None = None
        self._fair_iteration_plan: Plan | None = None
        self._fair_state_dump_s = 0.0
        on_cpu = str(getattr(self, "device", "cpu")).startswith("cpu")
        # Skipping needs a plain (non-overlap, non-speculative) loop: the overlap loop resolves a
        # batch's result one step late and speculative rows carry draft state a split would tear.
        self.fair_can_split = (
            self.fair_active and not self.enable_overlap and self.spec_algorithm.is_none()
        )
        if self.fair_active:
            # We mix decodes into prefill batches ourselves (with the R/K split), so SGLang's own
            # mixed-chunk path, which would take every decode, stays off.
            self.is_mixed_chunk = False
        self.fair_calibration = None
        self.fair_metrics = None  # created below; the calibration's iterations are not metrics
        if self.fair_active:
            # Times real iterations through this scheduler (runtime/calibration.py), then leaves
            # it clean; its model is the online model's prior unless --cost-model is given.
            from sglang_fair.runtime.calibration import startup_calibration

            self.fair_calibration = startup_calibration(self)
            self._fair_reset_records()
            log = logger.warning if self.fair_calibration.status == "failed" else logger.info
            log("%s", self.fair_calibration.log_line())
        self.fair_policy = build_policy(
            config, chunked_prefill_size=self.chunked_prefill_size, on_cpu=on_cpu,
            prior=self.fair_calibration.model if self.fair_calibration is not None else None,
        )
        if os.environ.get(DP_PAB_ENV) == "1":
            self._fair_publish_pab_as_load()
        from sglang_fair.runtime.metrics import FairMetrics

        self.fair_metrics = FairMetrics.maybe_create(self)
        logger.info(
            "sglang_fair: batch policy = %s; cost model %s; decode skipping %s",
            config.batch_policy,
            self.fair_policy.cost_model.describe(),
            "on" if self.fair_can_split else "off",
        )

    def _fair_reset_records(self) -> None:
        """Per-request records and counters, empty (at start, and after the calibration's requests)."""
        self.fair_states: dict[str, RuntimeRequestState] = {}
        self.fair_slo = SloCounters()
        self.fair_iterations = 0
        self.fair_skipped_decodes_total = 0
        self.fair_last_plan: Plan | None = None
        self.fair_last_budget_s = math.inf
        self.fair_last_min_slack_s: float | None = None
        self.fair_last_pab = None
        self.fair_last_measured_s: float | None = None

    # ------------------------------------------------------------------ request intake
    def _add_request_to_queue(self, req, is_retracted: bool = False):
        if self.fair_active and not is_retracted and req.to_finish is None:
            self._fair_admit(req)
        return super()._add_request_to_queue(req, is_retracted)

    def _fair_admit(self, req) -> None:
        """Attach a RequestState; bad SLOs and (optionally) hopeless TTFTs finish the request now."""
        config = self.fair_config
        params = req.sampling_params
        try:
            ttft_s, tpot_s = parse_request_slos(
                getattr(params, "custom_params", None), config.ttft_slo_s, config.tpot_slo_s
            )
        except ValueError as exc:
            self.fair_slo.rejected_bad_slo += 1
            req.set_finish_with_abort(f"Invalid request: {exc}")  # HTTP 400
            return
        arrival_s = req.time_stats.scheduler_recv_time or time.perf_counter()
        client = "default"
        custom = getattr(params, "custom_params", None)
        if isinstance(custom, dict) and isinstance(custom.get("client"), str):
            client = custom["client"]
        state = RuntimeRequestState(
            req.rid,
            arrival_s,
            len(req.origin_input_ids),
            ttft_s,
            tpot_s,
            client=client,
            max_new_tokens=params.max_new_tokens,
            can_skip=can_sit_out(req),
            handle=req,
        )
        if config.admission_control:
            view = self._fair_build_view(self.running_batch, time.perf_counter())
            if not self.fair_policy.admit(state, view):
                self.fair_slo.rejected_admission += 1
                req.set_finish_with_abort(
                    admission_rejection_message(ttft_s), status_code=ADMISSION_STATUS, err_type=ADMISSION_ERR_TYPE
                )
                return
        self.fair_states[req.rid] = state

    def _fair_state_of(self, req) -> RuntimeRequestState:
        state = self.fair_states.get(req.rid)
        if state is None or state.handle is not req:
            if not self.fair_active:
                # Stock batching keeps no records; a view (for the PAB on /get_load) is transient.
                return RuntimeRequestState(
                    req.rid,
                    req.time_stats.scheduler_recv_time or time.perf_counter(),
                    len(req.origin_input_ids),
                    self.fair_config.ttft_slo_s,
                    self.fair_config.tpot_slo_s,
                    generated_tokens=len(req.output_ids),
                )
            # A request that reached the scheduler some other way (retraction re-queue of one we
            # never saw, a session continuation): track it from now with the default SLOs.
            state = RuntimeRequestState(
                req.rid,
                req.time_stats.scheduler_recv_time or time.perf_counter(),
                len(req.origin_input_ids),
                self.fair_config.ttft_slo_s,
                self.fair_config.tpot_slo_s,
                can_skip=can_sit_out(req),
                handle=req,
            )
            self.fair_states[req.rid] = state
        return state

    # ------------------------------------------------------------------ view
    def _fair_build_view(self, running_batch, now_s: float) -> IterationView:
        decodes = []
        for req in running_batch.reqs:
            if req.finished():
                continue
            state = self._fair_state_of(req)
            state.prefilled_tokens = state.fill_tokens = state.prompt_tokens
            state.generated_tokens = max(state.generated_tokens, len(req.output_ids))
            decodes.append(state)
        prefills = []
        chunked = self.chunked_req
        has_chunked = 0
        if chunked is not None and not chunked.finished():
            has_chunked = 1
            state = self._fair_state_of(chunked)
            # Progress (cached prefix included) was recorded after the last chunk ran; the first
            # chunk may have been cut by KV, so it may still read 0: make it count as partial.
            state.prefilled_tokens = min(max(state.prefilled_tokens, 1), state.prompt_tokens - 1)
            prefills.append(state)
        for req in self.waiting_queue:
            if req.finished():
                continue
            state = self._fair_state_of(req)
            state.prefilled_tokens = 0  # queued (or retracted): nothing of it is in the KV cache
            # A retracted request prefills its prompt and the outputs so far again.
            state.fill_tokens = state.prompt_tokens + len(req.output_ids)
            prefills.append(state)
        allocator = self.token_to_kv_pool_allocator
        free_kv_tokens = allocator.available_size() + self.tree_cache.evictable_size()
        max_requests = self.max_running_requests or UNLIMITED
        max_prefill = self.chunked_prefill_size
        if max_prefill is None or max_prefill <= 0:
            max_prefill = self.max_prefill_tokens
        # SGLang's admission estimate (policy.kv): what the running requests may still generate,
        # at its new-token ratio, and a chunked request's remaining fill, are held back.
        held_back = running_reservation_tokens(decodes, self.new_token_ratio_tracker.current)
        held_back += sum(admission_reservation_tokens(state) for state in prefills[:has_chunked])
        return IterationView(
            now_s=now_s,
            decodes=decodes,
            prefills=prefills,
            free_kv_tokens=int(free_kv_tokens),
            total_kv_tokens=int(self.max_total_num_tokens),
            max_batch_requests=max(int(max_requests), 1),
            max_prefill_tokens=int(max_prefill),
            admission_kv_tokens=free_kv_tokens - held_back,
            admission_seats=int(max_requests) - len(decodes) - has_chunked,
        )

    # ------------------------------------------------------------------ plan -> batch
    def get_prefill_adder_class(self):
        base = super().get_prefill_adder_class()
        if self._fair_adder_budget is None:
            return base
        from sglang_fair.runtime.adder import plan_prefill_adder

        prefill_tokens, decode_tokens = self._fair_adder_budget
        return plan_prefill_adder(base, prefill_tokens, decode_tokens)

    def get_new_batch_prefill(self, running_batch):
        if not self.fair_active or (
            self.chunked_req is None and (not self.waiting_queue or running_batch.batch_is_full)
        ):
            # Nothing can be prefilled (SGLang would return at once too): a decode-only step.
            return super().get_new_batch_prefill(running_batch)
        from sglang.srt.managers.schedule_batch import NextBatchPlan

        now_s = time.perf_counter()
        view = self._fair_build_view(running_batch, now_s)
        plan = self.fair_policy.plan(view)
        self._fair_iteration_plan = plan
        self.fair_last_plan = plan
        self.fair_last_budget_s = plan.time_budget_s
        self.fair_last_min_slack_s = (
            min(state.slack_s(now_s) for state in view.decodes) if view.decodes else None
        )
        prefill_tokens = plan.prefill_tokens
        if self.chunked_req is not None:
            # SGLang continues a started chunked prefill unconditionally; keep that promise.
            prefill_tokens = max(prefill_tokens, MIN_CONTINUE_CHUNK_TOKENS)
        if prefill_tokens <= 0:
            return NextBatchPlan(batch_to_run=None, running_batch=running_batch)

        self._fair_order_waiting_queue(plan)
        self._fair_adder_budget = (prefill_tokens, len(plan.decodes))
        try:
            result = super().get_new_batch_prefill(running_batch)
        finally:
            self._fair_adder_budget = None
        new_batch, running_batch = result.batch_to_run, result.running_batch
        if new_batch is None or running_batch.is_empty():
            return result
        running_batch = self._fair_mix_decodes(new_batch, running_batch, plan)
        return NextBatchPlan(batch_to_run=new_batch, running_batch=running_batch)

    def _fair_order_waiting_queue(self, plan: Plan) -> None:
        """Put the planned new prefills first, in plan order (the adder admits queue order)."""
        if not plan.prefills or len(self.waiting_queue) < 2:
            return
        rank = {}
        for index, chunk in enumerate(plan.prefills):
            rank[id(chunk.request.handle)] = index
        if not rank:
            return
        last = len(rank)
        # Stable sort: unplanned requests keep SGLang's order behind the planned ones.
        self.waiting_queue.sort(key=lambda req: rank.get(id(req), last))

    def _fair_mix_decodes(self, new_batch, running_batch, plan: Plan):
        """Mix the decodes that run now into ``new_batch``; return what sits out as the running batch."""
        from sglang.srt.managers.schedule_batch import ScheduleBatch

        if (
            new_batch.return_logprob
            or running_batch.return_logprob
            or new_batch.input_embeds is not None
            or any(req.beam_group is not None for req in running_batch.reqs)
        ):
            return running_batch  # SGLang cannot mix these: prefill-only step, as stock does
        finishing = self._reqs_finishing_inflight(running_batch)
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
        skip_allowed = self.fair_can_split
        for index, req in enumerate(running_batch.reqs):
            state = self.fair_states.get(req.rid)
            if (
                not skip_allowed
                or id(req) in planned
                or state is None
                or not state.can_skip
            ):
                run_indices.append(index)
            else:
                sit_indices.append(index)
        if not run_indices:
            self._fair_note_skipped(running_batch.reqs)
            return running_batch
        if not running_batch.check_decode_mem(selected_indices=run_indices if sit_indices else None):
            return running_batch  # no KV room for the decode rows: they run next decode step
        if sit_indices:
            sitting = self._fair_split_off(running_batch, sit_indices)
            running_batch.filter_batch(keep_indices=run_indices)
            self._fair_note_skipped(sitting.reqs)
        else:
            sitting = ScheduleBatch(reqs=[], batch_is_full=running_batch.batch_is_full)
        running_batch.prepare_for_decode()
        new_batch.mix_with_running(running_batch)
        new_batch.decoding_reqs = running_batch.reqs
        return sitting

    def _fair_split_off(self, running_batch, indices):
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

    def _fair_note_skipped(self, reqs) -> None:
        self.fair_skipped_decodes_total += len(reqs)
        for req in reqs:
            state = self.fair_states.get(req.rid)
            if state is not None:
                state.skipped_iterations += 1

    # ------------------------------------------------------------------ measure -> observe
    def run_batch(self, batch, *args, **kwargs):
        # Timed only in the plain loop: under overlap, run_batch returns before the forward ends
        # and the result processed next belongs to the previous batch (the launcher turns overlap
        # off for our policies; a user who forces it on keeps stock-like mixing, no refit).
        if self.fair_active and not self.enable_overlap:
            self._fair_batch_start_s = time.perf_counter()
        return super().run_batch(batch, *args, **kwargs)

    def process_batch_result(self, batch, result, *args, **kwargs):
        output = super().process_batch_result(batch, result, *args, **kwargs)
        if self.fair_active and self._fair_batch_start_s is not None:
            end_s = time.perf_counter()
            measured_s = end_s - self._fair_batch_start_s
            self._fair_batch_start_s = None
            self._fair_after_batch(batch, measured_s, end_s)
        return output

    def _fair_after_batch(self, batch, measured_s: float, end_s: float) -> None:
        # Runs every iteration over every request in the batch: kept lean (plain attribute work,
        # no per-request method calls on the decode path) so it stays a small share of SGLang's
        # own per-iteration CPU time (benchmark/sched_overhead.py).
        shape = BatchShape()
        executed = Plan(shape=shape)
        reqs = batch.reqs
        decoding = batch.decoding_reqs or []
        num_prefill_rows = len(reqs) - len(decoding) if batch.forward_mode.is_extend() else 0
        prefix_lens = batch.prefix_lens or []
        extend_lens = batch.extend_lens or []
        states = self.fair_states
        finished = []
        sum_context = 0
        for index, req in enumerate(reqs):
            state = states.get(req.rid)
            generated = len(req.output_ids)
            if index < num_prefill_rows and index < len(extend_lens):
                prefix = prefix_lens[index] if index < len(prefix_lens) else 0
                shape.add_prefill(extend_lens[index], prefix)
                if state is not None:
                    state.prefilled_tokens = min(prefix + extend_lens[index], state.prompt_tokens)
            else:
                sum_context += len(req.origin_input_ids) + generated
            if state is None:
                continue
            if generated != state.generated_tokens:
                if generated == state.generated_tokens + 1 and state.first_token_s is not None:
                    # one more decode token, checked against the judged envelope line
                    # (RequestState.envelope_deadline_s, inlined: the per-decode hot path)
                    if end_s > state.arrival_s + state.ttft_slo_s + (generated - 1) * state.tpot_slo_s:
                        state.late_tokens += 1
                    state.generated_tokens = generated
                    state.last_token_s = end_s
                else:
                    state.note_tokens(generated, end_s)
            if req.finished_reason is not None:
                finished.append((state, req))
        decode_rows = len(reqs) - num_prefill_rows
        shape.new_tokens += decode_rows
        shape.num_seqs += decode_rows
        shape.sum_context += sum_context
        for state, req in finished:
            self._fair_release(state, aborted=_is_abort(req))
        plan = self._fair_iteration_plan or executed
        executed.time_budget_s = plan.time_budget_s
        executed.predicted_s = self.fair_policy.cost_model.predict_shape(shape)
        self.fair_policy.observe(executed, measured_s)
        self._fair_iteration_plan = None
        self.fair_last_measured_s = measured_s
        self.fair_iterations += 1
        if self.fair_metrics is not None:
            self.fair_metrics.observe_iteration(self, plan, executed, measured_s)
        if len(states) > 2 * (len(self.waiting_queue) + len(self.running_batch.reqs)) + 64:
            self._fair_sweep()

    def _fair_release(self, state: RuntimeRequestState, *, aborted: bool) -> None:
        if self.fair_states.pop(state.rid, None) is None:
            return
        if aborted:
            self.fair_slo.aborted += 1
        else:
            self.fair_slo.record(state)
            if self.fair_metrics is not None:
                self.fair_metrics.observe_finished(state)
        self.fair_policy.release(state)
        state.handle = None

    def _fair_sweep(self) -> None:
        """Drop records of requests SGLang no longer holds (aborted while queued, etc.)."""
        live = {id(req) for req in self.waiting_queue}
        live.update(id(req) for req in self.running_batch.reqs)
        for batch in (self.last_batch, self.cur_batch_for_debug):
            if batch is not None:
                live.update(id(req) for req in batch.reqs)
        if self.chunked_req is not None:
            live.add(id(self.chunked_req))
        for state in list(self.fair_states.values()):
            req = state.handle
            if req is None or id(req) not in live:
                self._fair_release(state, aborted=not (req is not None and req.finished() and not _is_abort(req)))

    def on_idle(self):
        if self.fair_active and self.fair_states:
            self._fair_sweep()
        return super().on_idle()

    # ------------------------------------------------------------------ data parallel
    def _fair_publish_pab_as_load(self) -> None:
        """``--load-balance-method pab``: the launcher runs SGLang's ``total_tokens`` method and we
        put the PAB-derived load (lower is better) in the ``num_total_tokens`` field of this rank's
        load snapshot, the number that method compares; the DP controller itself is unchanged.
        (``/v1/loads`` then shows the same number.)"""
        # SGLang's load inquirer is a frozen slots dataclass: wrap it rather than patch it.
        self.load_inquirer = _PabLoadInquirer(self.load_inquirer, self)

    def fair_pab_load_tokens(self) -> int:
        view = self._fair_build_view(self.running_batch, time.perf_counter())
        policy = self.fair_policy
        return load_tokens(policy.cost_model, policy.admission_budget(view))

    # ------------------------------------------------------------------ state
    def fair_runtime_state(self) -> dict:
        """Everything ``GET /fair/state`` shows: plain JSON types, non-finite numbers as null with
        a ``*_nonfinite`` sibling (:mod:`sglang_fair.strict_json`), odd values as text."""
        policy = self.fair_policy
        now_s = time.perf_counter()
        state = {
            "batch_policy": self.fair_config.batch_policy,
            "active": self.fair_active,
            "decode_skipping": bool(self.fair_can_split),
            "policy": policy.describe(),
            "iterations": self.fair_iterations,
            "running_requests": len(self.running_batch.reqs),
            "waiting_requests": len(self.waiting_queue),
            "skipped_decodes_total": self.fair_skipped_decodes_total,
            "slo": self.fair_slo.snapshot(),
        }
        view = self._fair_build_view(self.running_batch, now_s)
        pab = policy.admission_budget(view)
        state["pab"] = {
            "seconds": pab.seconds,
            "tokens": pab.tokens,
            "horizon_s": pab.horizon_s,
            "horizon_tokens": horizon_tokens(policy.cost_model, pab.horizon_s),
            "decode_utilisation": pab.decode_utilisation,
        }
        state["load_tokens"] = load_tokens(policy.cost_model, pab)
        if not self.fair_active:
            return strict_json.to_json_types(state, other=str)
        plan = self.fair_last_plan
        state.update(
            time_budget_s=self.fair_last_budget_s,
            min_slack_s=self.fair_last_min_slack_s,
            last_iteration_s=self.fair_last_measured_s,
            last_plan=None
            if plan is None
            else {
                "decodes": len(plan.decodes),
                "urgent_decodes": plan.urgent_decodes,
                "skipped_decodes": plan.skipped_decodes,
                "prefill_tokens": plan.prefill_tokens,
                "predicted_s": plan.predicted_s,
            },
            cost_model=policy.online.snapshot() if policy.online is not None else policy.cost_model.to_dict(),
            calibration=self.fair_calibration.snapshot() if self.fair_calibration else None,
        )
        return strict_json.to_json_types(state, other=str)


def _is_abort(req) -> bool:
    reason = req.finished_reason
    return reason is not None and type(reason).__name__ == "FINISH_ABORT"
