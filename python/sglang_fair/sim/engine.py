"""Event-driven simulation of one serving replica, or of N replicas behind a router.

The simulator owns the requests, the KV pool and the clock, and drives the *same* policy objects the
SGLang runtime uses, through the same contract (``plan`` / ``observe`` / ``release``):

* each iteration it builds an :class:`IterationView` (running decodes; prefills = partially
  prefilled requests first, then the waiting queue in arrival order), asks ``policy.plan(view)``,
  advances the clock by the *engine's* time for the planned batch shape (the "true" cost model,
  optionally times log-normal noise; by default the same model the policy plans with), updates every
  request (``record_prefill`` / ``record_token``), and calls ``policy.observe(plan, measured_s)``.
* Arrivals are precomputed (numpy) and merged with replica iteration ends in time order; a router
  picks the replica when a request arrives.

KV memory (documented simplification, no preemption): a request reserves ``prompt + output`` tokens
when its first prefill chunk is scheduled, so a running request can never run out of KV and the
simulation cannot deadlock.  The view exposes ``free_kv_tokens = unreserved + decode slots + prompt
tokens still owed to admitted partial prefills``: everything the policy may hand out this iteration
is backed by a reservation, so whatever plan the policy returns, the engine can run it.  Waiting
requests are listed in the view only while their reservations fit together (and while running
requests stay within ``max_running_requests``), as SGLang's FCFS adder stops at the first request
that does not fit.  A request that could never fit the whole pool is rejected on arrival.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import numpy as np

from ..policy.base import UNLIMITED, BatchPolicy, IterationView, Plan
from ..policy.cost_model import CostModel
from ..policy.request import RequestState
from .workload import Workload

__all__ = [
    "EngineConfig",
    "ROUTER_NAMES",
    "Replica",
    "SimRequest",
    "SimResult",
    "Simulation",
    "simulate",
]

ROUTER_NAMES = ("round_robin", "least_load", "power_of_two", "pab")

#: Time-between-tokens histogram resolution (1 ms bins up to 60 s).
TBT_BIN_S = 1e-3
TBT_BINS = 60_001
TBT_PER_S = 1.0 / TBT_BIN_S


@dataclass
class EngineConfig:
    """Engine limits, the same for every policy.

    Defaults describe Llama-2-7B fp16 on one 80 GB A100: (80 * 0.9 - 13.5) GB of KV at 0.5 MB per
    token is about 117k tokens; 256 running requests and an 8192-token prefill cap per iteration
    (SGLang's chunked-prefill size on large GPUs).
    """

    kv_capacity_tokens: int = 117_000
    max_running_requests: int = 256
    max_prefill_tokens: int = 8192
    #: Log-normal sigma of multiplicative noise on iteration times (0 = deterministic).
    noise_sigma: float = 0.0
    #: The engine's real timing; ``None`` means the policy's own cost model is exact.
    true_cost_model: CostModel | None = None


class SimRequest(RequestState):
    """A :class:`RequestState` with the simulator's bookkeeping (ground truth and metrics)."""

    __slots__ = ("index", "output_tokens", "reserved_tokens", "worst_slack_s", "max_tbt_s",
                 "finish_s", "replica", "rejected")

    def __init__(self, index: int, arrival_s: float, prompt_tokens: int, output_tokens: int,
                 ttft_slo_s: float, tpot_slo_s: float, client: str) -> None:
        super().__init__(str(index), arrival_s, prompt_tokens, ttft_slo_s, tpot_slo_s,
                         client=client, max_new_tokens=output_tokens)
        self.index = index
        self.output_tokens = output_tokens
        self.reserved_tokens = prompt_tokens + output_tokens
        self.worst_slack_s = math.inf  # min over tokens of (deadline - emit time); < 0: late
        self.max_tbt_s = 0.0
        self.finish_s = math.nan
        self.replica = -1
        self.rejected = False


class Replica:
    """One engine instance: its queue, running set, KV pool and clock."""

    def __init__(self, index: int, policy: BatchPolicy, config: EngineConfig, sim: "Simulation") -> None:
        self.index = index
        self.policy = policy
        self.config = config
        self.sim = sim
        self.true_model = config.true_cost_model or policy.cost_model
        self.running: list[SimRequest] = []  # decoding
        self.partial: list[SimRequest] = []  # admitted, prompt not finished
        self.waiting: list[SimRequest] = []  # not admitted, arrival order
        self.unreserved_tokens = config.kv_capacity_tokens
        self.next_s = math.inf  # when this replica next needs attention (iteration end)
        self.inflight: Plan | None = None
        # Load counters kept incrementally for the routers.
        self.queued_prompt_tokens = 0  # prompt tokens not yet prefilled (waiting + partial)
        self.held_kv_tokens = 0  # KV of running requests (prompt + generated)
        self.iterations = 0
        self.plan_cpu_s = 0.0
        self.busy_s = 0.0
        self.skipped_decodes = 0
        self.urgent_decodes = 0

    # --- load measures ------------------------------------------------------------------------
    @property
    def outstanding_requests(self) -> int:
        return len(self.running) + len(self.partial) + len(self.waiting)

    def load_tokens(self) -> int:
        return self.queued_prompt_tokens + self.held_kv_tokens

    def full_view(self, now_s: float) -> IterationView:
        """Everything queued (for the PAB), not only what fits KV this iteration."""
        return IterationView(now_s, self.running, self.partial + self.waiting,
                             self._free_kv_tokens(), self.config.kv_capacity_tokens,
                             self.config.max_running_requests, self.config.max_prefill_tokens)

    def _free_kv_tokens(self) -> int:
        owed = 0
        for request in self.partial:
            owed += request.prompt_tokens - request.prefilled_tokens
        return self.unreserved_tokens + len(self.running) + owed

    # --- events -------------------------------------------------------------------------------
    def enqueue(self, request: SimRequest, now_s: float) -> None:
        request.replica = self.index
        self.waiting.append(request)
        self.queued_prompt_tokens += request.prompt_tokens
        if self.inflight is None:  # idle: start an iteration right away
            self.next_s = now_s

    def step(self, now_s: float) -> None:
        """Finish the iteration that ends at ``now_s`` (if any) and start the next one."""
        if self.inflight is not None:
            self._complete(self.inflight, now_s)
            self.inflight = None
        running, partial, waiting = self.running, self.partial, self.waiting
        config = self.config
        # List waiting requests while their reservations (and seats) fit together.
        listed = 0
        if waiting:
            room = self.unreserved_tokens
            seats = config.max_running_requests - len(running) - len(partial)
            for request in waiting:
                if seats <= 0 or request.reserved_tokens > room:
                    break
                room -= request.reserved_tokens
                seats -= 1
                listed += 1
        if not running and not partial and listed == 0:
            self.next_s = math.inf
            return
        prefills = partial + waiting[:listed] if listed else partial
        view = IterationView(now_s, running, prefills, self._free_kv_tokens(),
                             config.kv_capacity_tokens, config.max_running_requests,
                             config.max_prefill_tokens)
        started = time.perf_counter()
        plan = self.policy.plan(view)
        self.plan_cpu_s += time.perf_counter() - started
        if plan.empty:
            raise RuntimeError(
                f"policy {self.policy.name!r} returned an empty plan with work pending at t={now_s:.3f}s"
            )
        measured_s = self.true_model.predict_shape(plan.shape)
        if config.noise_sigma > 0:
            measured_s *= self.sim.noise()
        measured_s = max(measured_s, 1e-6)
        self.policy.observe(plan, measured_s)
        self.iterations += 1
        self.busy_s += measured_s
        self.skipped_decodes += plan.skipped_decodes
        self.urgent_decodes += plan.urgent_decodes
        self.inflight = plan
        self.next_s = now_s + measured_s

    def _complete(self, plan: Plan, end_s: float) -> None:
        sim = self.sim
        tbt_hist = sim.tbt_hist
        finished = False
        hist_last = TBT_BINS - 1
        for request in plan.decodes:
            generated = request.generated_tokens
            # Envelope metric (definition b): RequestState.envelope_deadline_s, inlined (hot loop).
            slack = request.arrival_s + request.ttft_slo_s + generated * request.tpot_slo_s - end_s
            if slack < request.worst_slack_s:
                request.worst_slack_s = slack
            gap = end_s - request.last_token_s
            if gap > request.max_tbt_s:
                request.max_tbt_s = gap
            bin_index = int(gap * TBT_PER_S)
            tbt_hist[bin_index if bin_index < hist_last else hist_last] += 1
            # RequestState.record_token, inlined (hot loop): a decode always follows the first token.
            generated += 1
            request.generated_tokens = generated
            request.last_token_s = end_s
            if generated >= request.output_tokens:
                finished = True
        self.held_kv_tokens += len(plan.decodes)
        admitted = False
        prefill_done = False
        for chunk in plan.prefills:
            request = chunk.request
            if request.prefilled_tokens == 0:  # first chunk: admission reserves its KV
                self.unreserved_tokens -= request.reserved_tokens
                admitted = True
                self.partial.append(request)
            self.queued_prompt_tokens -= chunk.tokens
            slack = request.arrival_s + request.ttft_slo_s - end_s
            request.record_prefill(chunk.tokens, end_s)
            if request.generated_tokens:  # prompt complete: the first token came out
                prefill_done = True
                if slack < request.worst_slack_s:
                    request.worst_slack_s = slack
                self.held_kv_tokens += request.prompt_tokens + 1
                sim.first_token(request)
                self.running.append(request)
                if request.generated_tokens >= request.output_tokens:
                    finished = True
        if admitted:
            self.waiting = [r for r in self.waiting if r.prefilled_tokens == 0]
        if prefill_done:
            self.partial = [r for r in self.partial if r.generated_tokens == 0]
        if finished:
            keep = []
            for request in self.running:
                if request.generated_tokens >= request.output_tokens:
                    request.finish_s = end_s
                    self.unreserved_tokens += request.reserved_tokens
                    self.held_kv_tokens -= request.prompt_tokens + request.generated_tokens
                    self.policy.release(request)
                    sim.finished(request)
                else:
                    keep.append(request)
            self.running = keep


@dataclass
class SimResult:
    """Per-request outcomes (numpy columns, workload order) and per-run counters."""

    workload: Workload
    first_token_s: np.ndarray
    finish_s: np.ndarray
    worst_slack_s: np.ndarray
    max_tbt_s: np.ndarray
    rejected: np.ndarray
    replica: np.ndarray
    tbt_hist: np.ndarray
    iterations: int
    plan_cpu_s: float
    busy_s: float
    skipped_decodes: int
    urgent_decodes: int
    wall_s: float
    end_s: float
    warmup_requests: int
    stopped_early: bool = False
    extra: dict = field(default_factory=dict)


class Simulation:
    """N replicas (N = 1 is a single node) fed by one arrival stream through a router."""

    def __init__(
        self,
        workload: Workload,
        policies: list[BatchPolicy],
        *,
        config: EngineConfig | None = None,
        router: str = "round_robin",
        admission_control: bool = False,
        seed: int = 0,
        warmup_fraction: float = 0.1,
        stop_after_misses: int | None = None,
    ) -> None:
        if router not in ROUTER_NAMES:
            raise ValueError(f"unknown router {router!r} (choose from {', '.join(ROUTER_NAMES)})")
        if not policies:
            raise ValueError("need at least one replica")
        self.workload = workload
        self.config = config or EngineConfig()
        self.replicas = [Replica(i, p, self.config, self) for i, p in enumerate(policies)]
        self.router = router
        self.admission_control = admission_control
        self.random = random.Random(seed)
        self._noise = np.random.default_rng([seed, 7])
        self._noise_buffer: list[float] = []
        self.tbt_hist = [0] * TBT_BINS
        self.warmup_requests = int(len(workload) * warmup_fraction)
        self.stop_after_misses = stop_after_misses
        self.misses = 0
        self._rr_next = 0
        self.requests: list[SimRequest] = []

    def noise(self) -> float:
        if not self._noise_buffer:
            sigma = self.config.noise_sigma
            # Mean-one log-normal, drawn in blocks to keep the hot loop allocation-free.
            self._noise_buffer = list(self._noise.lognormal(-0.5 * sigma * sigma, sigma, 4096))
        return self._noise_buffer.pop()

    # --- metric hooks called by replicas ------------------------------------------------------
    def first_token(self, request: SimRequest) -> None:
        if request.index >= self.warmup_requests and request.first_token_s - request.arrival_s > request.ttft_slo_s:
            self.misses += 1  # a late first token is a definite miss (counted once, here)

    def finished(self, request: SimRequest) -> None:
        if request.index < self.warmup_requests or request.generated_tokens < 2:
            return
        ttft_ok, tpot_ok = request.slo_met()
        if ttft_ok and not tpot_ok:
            self.misses += 1

    # --- routing --------------------------------------------------------------------------------
    def route(self, request: SimRequest, now_s: float) -> Replica | None:
        replicas = self.replicas
        if len(replicas) == 1 and not self.admission_control:
            return replicas[0]
        router = self.router
        if router == "round_robin":
            chosen = replicas[self._rr_next % len(replicas)]
            self._rr_next += 1
        elif router == "least_load":
            chosen = min(replicas, key=Replica.load_tokens)
        elif router == "power_of_two":
            if len(replicas) == 1:
                chosen = replicas[0]
            else:
                a, b = self.random.sample(replicas, 2)
                chosen = a if a.load_tokens() <= b.load_tokens() else b
        else:  # pab: the replica with the most prefill admission budget left
            best_tokens = -math.inf
            chosen = replicas[0]
            for replica in replicas:
                tokens = replica.policy.admission_budget(replica.full_view(now_s)).tokens
                if tokens > best_tokens:
                    best_tokens, chosen = tokens, replica
        if self.admission_control and not chosen.policy.admit(request, chosen.full_view(now_s)):
            return None
        return chosen

    # --- main loop ------------------------------------------------------------------------------
    def run(self) -> SimResult:
        started = time.perf_counter()
        w = self.workload
        arrivals = w.arrival_s.tolist()
        prompts = w.prompt_tokens.tolist()
        outputs = w.output_tokens.tolist()
        ttfts = w.ttft_slo_s.tolist()
        tpots = w.tpot_slo_s.tolist()
        clients = w.client.tolist()
        client_names = {c: f"client{c}" for c in set(clients)}
        kv_capacity = self.config.kv_capacity_tokens
        replicas = self.replicas
        single = replicas[0] if len(replicas) == 1 else None
        total = len(arrivals)
        requests = self.requests
        next_index = 0
        stop_after = self.stop_after_misses
        stopped = False
        now_s = 0.0
        while True:
            if single is not None:
                replica = single
                replica_s = single.next_s
            else:
                replica = min(replicas, key=_next_s)
                replica_s = replica.next_s
            arrival_s = arrivals[next_index] if next_index < total else math.inf
            if arrival_s <= replica_s:
                if arrival_s == math.inf:
                    break
                now_s = arrival_s
                i = next_index
                next_index += 1
                request = SimRequest(i, arrival_s, prompts[i], outputs[i], ttfts[i], tpots[i],
                                     client_names[clients[i]])
                requests.append(request)
                target = None if request.reserved_tokens > kv_capacity else self.route(request, now_s)
                if target is None:
                    request.rejected = True
                    if i >= self.warmup_requests:
                        self.misses += 1
                else:
                    target.enqueue(request, now_s)
            else:
                now_s = replica_s
                replica.step(now_s)
            if stop_after is not None and self.misses > stop_after:
                stopped = True
                break
        return self._result(started, now_s, stopped)

    def _result(self, started: float, end_s: float, stopped: bool) -> SimResult:
        w = self.workload
        n = len(w)
        first = np.full(n, np.nan)
        finish = np.full(n, np.nan)
        worst = np.full(n, np.nan)
        max_tbt = np.full(n, np.nan)
        rejected = np.zeros(n, dtype=bool)
        replica = np.full(n, -1, dtype=np.int64)
        for r in self.requests:
            i = r.index
            if r.first_token_s is not None:
                first[i] = r.first_token_s
                worst[i] = r.worst_slack_s
                max_tbt[i] = r.max_tbt_s
            finish[i] = r.finish_s
            rejected[i] = r.rejected
            replica[i] = r.replica
        reps = self.replicas
        return SimResult(
            workload=w,
            first_token_s=first,
            finish_s=finish,
            worst_slack_s=worst,
            max_tbt_s=max_tbt,
            rejected=rejected,
            replica=replica,
            tbt_hist=np.asarray(self.tbt_hist, dtype=np.int64),
            iterations=sum(r.iterations for r in reps),
            plan_cpu_s=sum(r.plan_cpu_s for r in reps),
            busy_s=sum(r.busy_s for r in reps),
            skipped_decodes=sum(r.skipped_decodes for r in reps),
            urgent_decodes=sum(r.urgent_decodes for r in reps),
            wall_s=time.perf_counter() - started,
            end_s=end_s,
            warmup_requests=self.warmup_requests,
            stopped_early=stopped,
        )


def _next_s(replica: Replica) -> float:
    return replica.next_s


def simulate(
    workload: Workload,
    policy_factory,
    *,
    replicas: int = 1,
    config: EngineConfig | None = None,
    router: str = "round_robin",
    admission_control: bool = False,
    seed: int = 0,
    warmup_fraction: float = 0.1,
    stop_after_misses: int | None = None,
) -> SimResult:
    """Run ``workload`` on ``replicas`` fresh policies from ``policy_factory()``."""
    if replicas < 1:
        raise ValueError("--replicas must be >= 1")
    sim = Simulation(
        workload,
        [policy_factory() for _ in range(replicas)],
        config=config,
        router=router,
        admission_control=admission_control,
        seed=seed,
        warmup_fraction=warmup_fraction,
        stop_after_misses=stop_after_misses,
    )
    return sim.run()
