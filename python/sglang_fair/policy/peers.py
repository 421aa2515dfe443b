"""The peers FairBatching is compared with, behind the same ``plan(view) -> Plan`` interface.

* ``sglang``: SGLang's stock prefill-first loop.  When prompts wait, the iteration is a prefill batch
  of up to ``chunked_prefill_size`` tokens and decodes stall; with ``mixed_chunk`` the running decodes
  ride along and their count is taken out of the chunk budget (close to, not equal to, stall-free).
* ``sarathi``: Sarathi-Serve stall-free batching: every decode, then continuing chunks, then new
  prefills FIFO, under a fixed token budget.
* ``slai``: SLAI: decodes past their last schedulable time first, then paused prefills FIFO, then new
  prefills shortest-prompt-first, then the other decodes, under a token budget.
* ``vtc``: Virtual Token Counter client fairness on top of stall-free batching: new prefills are taken
  from the backlogged client with the least service.
"""

from __future__ import annotations

from .base import UNLIMITED, BatchBuilder, BatchPolicy, IterationView, Plan
from .cost_model import CostModel, OnlineCostModel
from .fairness import ClientCounters
from .request import RequestState

__all__ = ["SarathiPolicy", "SglangPolicy", "SlaiPolicy", "VtcPolicy"]


def _split_partial(prefills):
    """Index where partially prefilled requests (which lead the view) end."""
    split = 0
    while split < len(prefills) and prefills[split].prefilled_tokens > 0:
        split += 1
    return split


def _fill_prefills(builder: BatchBuilder, requests) -> None:
    for request in requests:
        builder.add_prefill(request)
        if builder.tokens_left <= 0 or builder.kv_left <= 0 or builder.seats_left <= 0:
            return


class SglangPolicy(BatchPolicy):
    name = "sglang"

    def __init__(
        self,
        cost_model: CostModel | OnlineCostModel,
        *,
        chunked_prefill_size: int = 2048,
        mixed_chunk: bool = False,
        default_ttft_slo_s: float = 1.0,
    ) -> None:
        super().__init__(cost_model, default_ttft_slo_s=default_ttft_slo_s)
        if chunked_prefill_size < 1:
            raise ValueError("chunked_prefill_size must be >= 1")
        self.chunked_prefill_size = chunked_prefill_size
        self.mixed_chunk = mixed_chunk

    def plan(self, view: IterationView) -> Plan:
        if view.prefills:
            budget = self.chunked_prefill_size
            if self.mixed_chunk:
                budget = max(budget - len(view.decodes), 1)
            builder = BatchBuilder(view, self.cost_model, token_budget=budget)
            _fill_prefills(builder, view.prefills)
            if builder.plan.prefills:
                if self.mixed_chunk:
                    builder.tokens_left = UNLIMITED  # decodes were already counted in the budget
                    builder.add_decodes(view.decodes, force=True)
                return builder.finish(view)
        builder = BatchBuilder(view, self.cost_model)
        builder.add_decodes(view.decodes, force=True)
        return builder.finish(view)

    def describe(self) -> dict:
        info = super().describe()
        info.update(chunked_prefill_size=self.chunked_prefill_size, mixed_chunk=self.mixed_chunk)
        return info


class SarathiPolicy(BatchPolicy):
    name = "sarathi"

    def __init__(
        self,
        cost_model: CostModel | OnlineCostModel,
        *,
        token_budget: int = 512,
        default_ttft_slo_s: float = 1.0,
    ) -> None:
        super().__init__(cost_model, default_ttft_slo_s=default_ttft_slo_s)
        if token_budget < 1:
            raise ValueError("token_budget must be >= 1")
        self.token_budget = token_budget

    def plan(self, view: IterationView) -> Plan:
        builder = BatchBuilder(view, self.cost_model, token_budget=self.token_budget)
        builder.add_decodes(view.decodes, force=True)  # stall-free: every decode, whatever the budget
        _fill_prefills(builder, view.prefills)
        return builder.finish(view)

    def describe(self) -> dict:
        info = super().describe()
        info["token_budget"] = self.token_budget
        return info


class SlaiPolicy(BatchPolicy):
    name = "slai"

    def __init__(
        self,
        cost_model: CostModel | OnlineCostModel,
        *,
        token_budget: int = 512,
        offset: float = 5.0,
        full_kv_offset: float = 10.0,
        full_kv_fraction: float = 0.96,
        default_ttft_slo_s: float = 1.0,
    ) -> None:
        super().__init__(cost_model, default_ttft_slo_s=default_ttft_slo_s)
        self.token_budget = token_budget
        self.offset = offset
        self.full_kv_offset = full_kv_offset
        self.full_kv_fraction = full_kv_fraction
        self.mean_batch_s = 0.0
        self._batches = 0

    def observe(self, plan: Plan, measured_s: float) -> None:
        super().observe(plan, measured_s)
        if measured_s > 0 and not plan.empty:
            self._batches += 1
            # Running mean over a sliding horizon of about 100 batches.
            weight = max(1.0 / self._batches, 0.01)
            self.mean_batch_s += weight * (measured_s - self.mean_batch_s)

    def plan(self, view: IterationView) -> Plan:
        now = view.now_s
        offset = self.full_kv_offset if view.kv_used_fraction > self.full_kv_fraction else self.offset
        lead_s = offset * self.mean_batch_s
        builder = BatchBuilder(view, self.cost_model, token_budget=self.token_budget)
        relaxed: list[RequestState] = []
        for request in view.decodes:
            # Last schedulable time: its previous token's time plus its TBT, minus a safety lead.
            last_s = request.last_token_s if request.last_token_s is not None else now
            if now >= last_s + request.tpot_slo_s - lead_s or not request.can_skip:
                builder.add_decode(request, force=True)
            else:
                relaxed.append(request)
        builder.plan.urgent_decodes = len(builder.plan.decodes)
        split = _split_partial(view.prefills)
        _fill_prefills(builder, view.prefills[:split])
        _fill_prefills(builder, sorted(view.prefills[split:], key=_prompt_tokens))
        builder.add_decodes(relaxed)
        if builder.plan.empty:
            self.ensure_progress(builder, view)
        return builder.finish(view)

    def describe(self) -> dict:
        info = super().describe()
        info.update(token_budget=self.token_budget, offset=self.offset, mean_batch_s=self.mean_batch_s)
        return info


class VtcPolicy(BatchPolicy):
    name = "vtc"

    def __init__(
        self,
        cost_model: CostModel | OnlineCostModel,
        *,
        token_budget: int = 512,
        input_weight: float = 1.0,
        output_weight: float = 2.0,
        default_ttft_slo_s: float = 1.0,
    ) -> None:
        super().__init__(cost_model, default_ttft_slo_s=default_ttft_slo_s)
        self.token_budget = token_budget
        self.clients = ClientCounters(input_weight, output_weight)

    def plan(self, view: IterationView) -> Plan:
        builder = BatchBuilder(view, self.cost_model, token_budget=self.token_budget)
        for request in view.decodes:
            builder.add_decode(request, force=True)
        split = _split_partial(view.prefills)
        waiting = view.prefills[split:]
        self.clients.update_backlog(waiting)
        for group in (view.prefills[:split], self.clients.pick(waiting)):
            for request in group:
                granted = builder.add_prefill(request)
                if granted:
                    self.clients.charge_prefill(request, granted)
                if builder.tokens_left <= 0 or builder.kv_left <= 0 or builder.seats_left <= 0:
                    break
        return builder.finish(view)

    def observe(self, plan: Plan, measured_s: float) -> None:
        super().observe(plan, measured_s)
        # Output tokens are charged as they are generated: by the decodes that ran, whether the
        # driver asked for this plan or ran a plain decode step.
        for request in plan.decodes:
            self.clients.charge_output(request)

    def release(self, request: RequestState) -> None:
        self.clients.forget(request)

    def describe(self) -> dict:
        info = super().describe()
        info.update(token_budget=self.token_budget, counters=dict(self.clients.counters))
        return info


def _prompt_tokens(request: RequestState) -> int:
    return request.prompt_tokens
