"""Prometheus metrics for the FairBatching runtime, next to SGLang's own (``sglang:`` prefix).

Created in the scheduler process only when SGLang runs with ``--enable-metrics``; SGLang's
multiprocess Prometheus setup then exposes them on the HTTP server's ``/metrics`` like its own
scheduler metrics.  Updates are O(1) per iteration and per finished request.
"""

from __future__ import annotations

import math

__all__ = ["FairMetrics"]


class FairMetrics:
    def __init__(self, labels: dict[str, str]) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        names = list(labels)
        self.labels = labels

        def gauge(name: str, doc: str):
            return Gauge(f"sglang:fair_{name}", doc, labelnames=names, multiprocess_mode="mostrecent").labels(**labels)

        def counter(name: str, doc: str):
            return Counter(f"sglang:fair_{name}", doc, labelnames=names).labels(**labels)

        self.time_budget_s = gauge("time_budget_seconds", "FairBatching time budget of the last iteration.")
        self.min_slack_s = gauge("min_slack_seconds", "Smallest slack among running decodes (negative: late).")
        self.pab_s = gauge("pab_seconds", "Prefill admission budget: spare prefill seconds within TTFT SLOs.")
        self.pab_tokens = gauge("pab_tokens", "Prefill admission budget in prompt tokens.")
        self.predicted_s = gauge("predicted_iteration_seconds", "Cost-model prediction for the last iteration.")
        self.measured_s = gauge("measured_iteration_seconds", "Measured time of the last iteration.")
        self.cost_model_mape = gauge("cost_model_mape", "Mean absolute percentage error of the online cost model fit.")
        self.skipped = counter("skipped_decodes", "Decodes that sat out an iteration.")
        self.urgent = counter("urgent_decodes", "Decodes scheduled as urgent.")
        self.finished = counter("slo_requests", "Finished requests judged against their SLOs.")
        self.met_ttft = counter("slo_met_ttft", "Finished requests that met their TTFT SLO.")
        self.met_tpot = counter("slo_met_tpot", "Finished requests that met their mean-TPOT SLO.")
        self.met_both = counter("slo_met_both", "Finished requests that met both SLOs.")
        self.met_envelope = counter("slo_met_envelope", "Finished requests with every token by its deadline.")
        self.slack_hist = Histogram(
            "sglang:fair_decode_slack_seconds",
            "Slack of the most hurried decode per iteration.",
            labelnames=names,
            buckets=(-1.0, -0.1, -0.01, 0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        ).labels(**labels)
        self._iterations = 0

    @classmethod
    def maybe_create(cls, scheduler) -> "FairMetrics | None":
        try:
            from sglang.srt.managers.scheduler import get_observability

            if not get_observability().enable_metrics:
                return None
        except Exception:  # pragma: no cover - older/newer sglang layout
            return None
        collector = getattr(scheduler, "metrics_collector", None)
        labels = dict(getattr(collector, "labels", None) or {})
        try:
            return cls(labels)
        except ValueError:  # already registered in this process (a second scheduler in tests)
            return None

    def observe_iteration(self, scheduler, plan, executed, measured_s: float) -> None:
        self.measured_s.set(measured_s)
        self.predicted_s.set(executed.predicted_s)
        if math.isfinite(plan.time_budget_s):
            self.time_budget_s.set(plan.time_budget_s)
        slack = scheduler.fair_last_min_slack_s
        if slack is not None:
            self.min_slack_s.set(slack)
            self.slack_hist.observe(slack)
        if plan.skipped_decodes:
            self.skipped.inc(plan.skipped_decodes)
        if plan.urgent_decodes:
            self.urgent.inc(plan.urgent_decodes)
        self._iterations += 1
        if self._iterations % 32 == 0:  # PAB and fit error cost O(n); refresh them now and then
            policy = scheduler.fair_policy
            view = scheduler._fair_build_view(scheduler.running_batch, scheduler_now())
            budget = policy.admission_budget(view)
            if math.isfinite(budget.seconds):
                self.pab_s.set(budget.seconds)
                self.pab_tokens.set(budget.tokens)
            if policy.online is not None:
                mape = policy.online.recent_mape()
                if mape is not None:
                    self.cost_model_mape.set(mape)

    def observe_finished(self, state) -> None:
        self.finished.inc()
        if state.first_token_s is None:
            return
        ok_ttft, ok_tpot = state.slo_met()
        if ok_ttft:
            self.met_ttft.inc()
        if ok_tpot:
            self.met_tpot.inc()
        if ok_ttft and ok_tpot:
            self.met_both.inc()
        if state.met_envelope:
            self.met_envelope.inc()


def scheduler_now() -> float:
    import time

    return time.perf_counter()
