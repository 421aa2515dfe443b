"""FairBatching inside SGLang's scheduler: view in, plan out, measured time back.

:class:`FairBatchingMixin` sits in front of ``sglang.srt.managers.scheduler.Scheduler`` in
``FairScheduler``'s bases and is the glue between SGLang's loop and the modules that do the work
(docs/runtime.md has the table).  With ``--batch-policy sglang`` every override hands straight to
SGLang (stock batching, bit for bit).  With any other policy, once per iteration:

1. ``get_new_batch_prefill`` (called by SGLang after the last batch merged back into the running
   batch) syncs the request records (:mod:`.records`), builds an :class:`IterationView`
   (:mod:`.view`) and asks the policy for a :class:`Plan`; the plan goes into this iteration's
   :class:`~sglang_fair.runtime.plan.IterationRecord` (``fair_iteration``).
2. The plan's prefill tokens become the prefill adder's token and chunk budgets
   (``get_prefill_adder_class`` returns :class:`PlanPrefillAdder`), and the planned prefills come
   first in the waiting queue, in plan order, after SGLang's own sort
   (:class:`~sglang_fair.runtime.plan.PlanOrderedSchedulePolicy`).  SGLang's own adder then does
   the KV, radix-cache and request-count accounting as usual.
3. If a prefill batch was formed, the running batch is split into *R* (the planned decodes plus
   every decode that may not sit out) and *K* (sits out): :func:`~sglang_fair.runtime.plan.mix_decodes`.
4. ``run_batch`` .. ``process_batch_result`` is timed; the executed batch's shape and the measured
   seconds go to ``policy.observe`` (online cost-model refit) and the records are updated
   (:func:`~sglang_fair.runtime.plan.finish_iteration`); the iteration record is dropped.

Decode-only iterations (``update_running_batch``) run every decode: with no prefill waiting, a
decode that sits out frees compute for nobody, and SGLang's decode step cost is mostly fixed.
"""

from __future__ import annotations

import logging
import math
import os
import time

from sglang_fair.config import FairConfig
from sglang_fair.policy import IterationView, Plan, min_first_token_slack_s
from sglang_fair.runtime import plan as plan_step
from sglang_fair.runtime import records, state as state_report
from sglang_fair.runtime.heap import IdleHeapTrimmer
from sglang_fair.runtime.plan import MIN_CONTINUE_CHUNK_TOKENS, IterationRecord, PlanOrderedSchedulePolicy
from sglang_fair.runtime.policy_setup import CPU_PRIOR_PRESET, GPU_PRIOR_PRESET, build_policy
from sglang_fair.runtime.records import RuntimeRequestState, SloCounters
from sglang_fair.runtime.rejection import ADMISSION_ERR_TYPE, ADMISSION_STATUS, admission_rejection_message
from sglang_fair.runtime.slo import can_sit_out, parse_request_slos
from sglang_fair.runtime.view import build_view

logger = logging.getLogger(__name__)

# The names other modules, tests and benchmarks import from here (defined in the modules above).
__all__ = [
    "CPU_PRIOR_PRESET",
    "GPU_PRIOR_PRESET",
    "MIN_CONTINUE_CHUNK_TOKENS",
    "FairBatchingMixin",
    "RuntimeRequestState",
    "SloCounters",
    "build_policy",
]

#: Set (to "1") by the launcher for ``--load-balance-method pab``.
DP_PAB_ENV = "SGLANG_FAIR_DP_PAB"


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
        self.fair_heap = IdleHeapTrimmer()  # every policy: RSS flat across bursts (runtime/heap.py)
        self._fair_reset_records()
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
            # A non-FCFS --schedule-policy re-sorts the waiting queue after the plan ordered it:
            # the plan's order goes back on top (plan.PlanOrderedSchedulePolicy).
            if not isinstance(self.policy, PlanOrderedSchedulePolicy):
                self.policy = PlanOrderedSchedulePolicy(self.policy, self)
        self.fair_calibration = None
        self.fair_metrics = None  # created below; the calibration's iterations are not metrics
        self.fair_iteration_log = None  # (nor are they logged)
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
        if self.fair_active:
            from sglang_fair.runtime.iteration_log import open_iteration_log

            online = self.fair_policy.online
            self.fair_iteration_log = open_iteration_log(
                config.iteration_log, batch_policy=config.batch_policy,
                prior=online.prior if online is not None else self.fair_policy.cost_model)
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
        self.fair_iteration: IterationRecord | None = None  # this iteration, plan to measurement
        self.fair_iterations = 0
        self.fair_skipped_decodes_total = 0
        self.fair_last_plan: Plan | None = None
        self.fair_last_budget_s = math.inf
        self.fair_last_min_slack_s: float | None = None
        self.fair_last_measured_s: float | None = None

    # ------------------------------------------------------------------ request intake
    def _add_request_to_queue(self, req, is_retracted: bool = False):
        if self.fair_active and not is_retracted and req.to_finish is None:
            self._fair_admit(req)
        return super()._add_request_to_queue(req, is_retracted)

    def fair_enqueue_untracked(self, req) -> None:
        """SGLang's own intake, past the runtime's: no SLO parsing or admission control (the start-up
        calibration's requests; the runtime tracks them with default SLOs, as any request it did not
        see arrive)."""
        super()._add_request_to_queue(req)

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
        arrival_s = records.arrival_time_s(req)
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

    # ------------------------------------------------------------------ view
    def _fair_build_view(self, running_batch, now_s: float) -> IterationView:
        """Sync the records of what SGLang holds, then build the (read-only) view over them."""
        decodes, prefills, has_chunked = records.sync_records(self, running_batch)
        return build_view(self, decodes, prefills, has_chunked, now_s)

    # ------------------------------------------------------------------ plan -> batch
    def get_prefill_adder_class(self):
        base = super().get_prefill_adder_class()
        record = self.fair_iteration
        if record is None or record.adder_budget is None:
            return base
        from sglang_fair.runtime.adder import plan_prefill_adder

        prefill_tokens, decode_tokens = record.adder_budget
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
        record = self.fair_iteration = IterationRecord(plan=plan)
        if self.fair_iteration_log is not None:
            record.waiting_prompts = len(view.prefills)
            record.min_prompt_slack_s = min_first_token_slack_s(view.prefills, now_s)
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

        # The adder and SGLang's queue sort (PlanOrderedSchedulePolicy) read the plan from here.
        record.adder_budget = (prefill_tokens, len(plan.decodes))
        try:
            result = super().get_new_batch_prefill(running_batch)
        finally:
            record.adder_budget = None
        new_batch, running_batch = result.batch_to_run, result.running_batch
        if new_batch is None or running_batch.is_empty():
            return result
        running_batch = plan_step.mix_decodes(self, new_batch, running_batch, plan)
        return NextBatchPlan(batch_to_run=new_batch, running_batch=running_batch)

    # ------------------------------------------------------------------ measure -> observe
    def run_batch(self, batch, *args, **kwargs):
        # Timed only in the plain loop: under overlap, run_batch returns before the forward ends
        # and the result processed next belongs to the previous batch (the launcher turns overlap
        # off for our policies; a user who forces it on keeps stock-like mixing, no refit).
        if self.fair_active and not self.enable_overlap:
            if self.fair_iteration is None:
                self.fair_iteration = IterationRecord()  # a step nobody planned (decode-only)
            self.fair_iteration.started_s = time.perf_counter()
        return super().run_batch(batch, *args, **kwargs)

    def process_batch_result(self, batch, result, *args, **kwargs):
        output = super().process_batch_result(batch, result, *args, **kwargs)
        self.fair_heap.on_work()
        record = self.fair_iteration
        if self.fair_active and record is not None and record.started_s is not None:
            end_s = time.perf_counter()
            self.fair_iteration = None
            self._fair_after_batch(batch, record, end_s - record.started_s, end_s)
        return output

    def _fair_after_batch(self, batch, record: IterationRecord, measured_s: float, end_s: float) -> None:
        plan_step.finish_iteration(self, batch, record, measured_s, end_s)

    def on_idle(self):
        if self.fair_active and self.fair_states:
            records.sweep(self)
        output = super().on_idle()
        self.fair_heap.on_idle(self.is_fully_idle())
        return output

    # ------------------------------------------------------------------ data parallel
    def _fair_publish_pab_as_load(self) -> None:
        """``--load-balance-method pab``: the launcher runs SGLang's ``total_tokens`` method and we
        put the PAB-derived load (lower is better) in the ``num_total_tokens`` field of this rank's
        load snapshot, the number that method compares; the DP controller itself is unchanged.
        (``/v1/loads`` then shows the same number.)"""
        # SGLang's load inquirer is a frozen slots dataclass: wrap it rather than patch it.
        self.load_inquirer = state_report.PabLoadInquirer(self.load_inquirer, self)

    def fair_pab_load_tokens(self) -> int:
        return state_report.pab_load_tokens(self)

    # ------------------------------------------------------------------ state
    def fair_runtime_state(self) -> dict:
        """Everything ``GET /fair/state`` shows (:func:`sglang_fair.runtime.state.runtime_state`)."""
        return state_report.runtime_state(self)
