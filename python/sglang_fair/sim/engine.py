"""Event-driven simulation of one serving replica, or of N replicas behind a router.

The simulator owns the requests, the KV pool and the clock, and drives the *same* policy objects the
SGLang runtime uses, through the same contract (``plan`` / ``observe`` / ``release``):

* each iteration it builds an :class:`IterationView` (running decodes; prefills = admitted partial
  prefills first, then the whole waiting queue in arrival order), asks ``policy.plan(view)``,
  advances the clock by the *engine's* time for the planned batch shape (the "true" cost model,
  optionally times log-normal noise; by default the same model the policy plans with), updates every
  request (``record_prefill`` / ``record_token``), and calls ``policy.observe(plan, measured_s)``.
  When nothing waits to be prefilled the iteration runs every decode without asking the policy, as
  SGLang's decode step does in the runtime.
* Arrivals are precomputed (numpy) and merged with replica iteration ends in time order; a router
  picks the replica when a request arrives.

The engine knows no more than a server.  A request carries the ``max_new_tokens`` its client sent
and ends at its true length (as at EOS); nothing the policy sees holds the true length.  KV is a
physical pool: a prefill chunk takes its tokens, every decode step one, a finished request frees its
own.  A waiting request is admitted in the *policy's* order, and only while SGLang's reservation
estimate fits (:mod:`sglang_fair.policy.kv`: the remaining fill plus ``max_new_tokens`` for a new
request, the decaying new-token ratio for running ones); ``BatchBuilder`` applies that rule, and the
engine checks the plan against it.  When decodes outgrow the pool anyway, running requests are
retracted in SGLang's order (fewest generated tokens first), their KV freed, and re-queued to prefill
their prompt and outputs again.  A request too long for the whole pool is rejected on arrival.
"""

from __future__ import annotations

import math
import random
import struct
import time
from array import array
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np

from ..policy.base import UNLIMITED, BatchPolicy, IterationView, Plan
from ..policy.cost_model import CostModel
from ..policy.kv import (
    CLIP_MAX_NEW_TOKENS,
    NewTokenRatio,
    admission_reservation_tokens,
    retraction_order,
    running_reservation_tokens,
)
from ..policy.request import RequestState, envelope_slacks_s, meets_envelope, meets_ttft
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

ROUTER_NAMES = ("round_robin", "least_load", "power_of_two", "total_tokens", "pab")
#: Routers that, between two polls, charge each request they send to the replica they sent it to, as
#: SGLang's data-parallel controller does (``DPBudget.dispatch`` adds the prompt's tokens to the rank's
#: last reported load until the next snapshot): without it, every request of a poll period herds
#: onto the replica that looked best at the poll.  sglang-router's load-aware policies do not.
CHARGING_ROUTERS = ("total_tokens", "pab")
#: Gaps between tokens kept as Python floats before they are packed (Simulation.flush_gaps).
GAP_BLOCK = 1 << 16
#: In-flight markers of a decode step already played with its run (Replica._decode_run):
#: completing it does nothing, or (the second) only releases the requests it finished.
_PLAYED = Plan()
_PLAYED_FINISHING = Plan()


@dataclass
class EngineConfig:
    """Engine limits, the same for every policy.

    Defaults describe Llama-2-7B fp16 on one 80 GB A100 under SGLang's default memory fraction (the
    ``a100-llama2-7b`` preset's ``info["engine"]``; :meth:`for_cost_model` reads any preset's): 256
    running requests (the decode CUDA-graph batch size) and an 8192-token prefill cap per iteration
    (SGLang's chunked-prefill size on large GPUs).
    """

    kv_capacity_tokens: int = 111_265
    max_running_requests: int = 256
    max_prefill_tokens: int = 8192
    #: Log-normal sigma of multiplicative noise on iteration times (0 = deterministic).
    noise_sigma: float = 0.0
    #: Correlation of the log noise between consecutive iterations of a replica (AR(1), 0 =
    #: independent).  A CPU server's slow spells last several iterations (lag-1 correlation 0.54-0.65
    #: measured, ``docs/results-cpu.md``): independent noise lets a plan at the margin recover on
    #: the next draw where the machine would stay slow.
    noise_correlation: float = 0.0
    #: The engine's real timing; ``None`` means the policy's own cost model is exact.
    true_cost_model: CostModel | None = None

    @classmethod
    def for_cost_model(cls, model: CostModel, **overrides) -> "EngineConfig":
        """The engine a preset describes (``info["engine"]``), with ``overrides`` that are not None."""
        engine = (model.info or {}).get("engine") or {}
        values = {name: engine[name] for name in ("kv_capacity_tokens", "max_running_requests",
                                                   "max_prefill_tokens") if name in engine}
        values.update({name: value for name, value in overrides.items() if value is not None})
        return cls(**values)


class SimRequest(RequestState):
    """A :class:`RequestState` with the simulator's bookkeeping (ground truth and metrics).

    ``output_tokens`` (the true length) is the engine's alone: no policy reads it.
    """

    __slots__ = ("index", "output_tokens", "worst_slack_s", "max_tbt_s", "finish_s", "replica",
                 "rejected", "retractions")

    def __init__(self, index: int, arrival_s: float, prompt_tokens: int, output_tokens: int,
                 max_new_tokens: int, ttft_slo_s: float, tpot_slo_s: float, client: str) -> None:
        super().__init__(str(index), arrival_s, prompt_tokens, ttft_slo_s, tpot_slo_s,
                         client=client, max_new_tokens=max_new_tokens)
        self.index = index
        self.output_tokens = output_tokens
        self.worst_slack_s = math.inf  # min over tokens of the judged envelope slack; < 0: late
        self.max_tbt_s = 0.0
        self.finish_s = math.nan
        self.replica = -1
        self.rejected = False
        self.retractions = 0

    @property
    def held_kv_tokens(self) -> int:
        """KV slots a decoding request holds: its prompt and every output token but the newest."""
        return self.prompt_tokens + self.generated_tokens - 1


class Replica:
    """One engine instance: its queue, running set, KV pool and clock."""

    #: Play runs of decode steps in one go (False: one step at a time; a test compares the two).
    decode_runs = True
    #: Play a run's last step, the one an arrival comes during, with the run (set by Simulation.run
    #: where nothing reads the replica meanwhile; see _decode_run).
    fold_last_step = False

    def __init__(self, index: int, policy: BatchPolicy, config: EngineConfig, sim: "Simulation") -> None:
        self.index = index
        self.policy = policy
        self.config = config
        self.sim = sim
        self.true_model = config.true_cost_model or policy.cost_model
        self.running: list[SimRequest] = []  # decoding
        self.partial: list[SimRequest] = []  # admitted, fill not finished
        self.waiting: list[SimRequest] = []  # not admitted (new or retracted), arrival order
        self.free_kv_tokens = config.kv_capacity_tokens
        self.new_token_ratio = NewTokenRatio()
        self.next_s = math.inf  # when this replica next needs attention (iteration end)
        self.inflight: Plan | None = None
        # Kept incrementally: prompt tokens not yet prefilled (waiting + partial), for the routers;
        # the running requests' max_new_tokens and generated tokens, for their KV reservation.
        self.queued_prompt_tokens = 0
        self._running_context = 0  # sum of the running requests' context_tokens
        self._running_context_sq = 0  # and of their squares
        self._running_max_new = 0
        self._running_generated = 0
        self._running_clipped = 0  # running requests whose cap exceeds SGLang's clip
        self.iterations = 0
        self.plan_cpu_s = 0.0
        self.busy_s = 0.0
        self.skipped_decodes = 0
        self.urgent_decodes = 0
        self.retractions = 0
        # Each replica draws its own noise, so how replicas interleave does not change it.
        self._noise = np.random.default_rng([sim.seed, 7, index])
        self._noise_buffer: list[float] = []
        self._noise_log = 0.0  # the last log deviation drawn (AR(1) noise carries it on)

    def noise(self) -> float:
        """A mean-one log-normal factor on an iteration's time, drawn in blocks; with
        ``noise_correlation`` an AR(1) series in log space of the same spread."""
        if not self._noise_buffer:
            sigma, rho = self.config.noise_sigma, self.config.noise_correlation
            if rho <= 0:
                self._noise_buffer = list(self._noise.lognormal(-0.5 * sigma * sigma, sigma, 4096))
            else:
                shocks = self._noise.normal(0.0, sigma * math.sqrt(1.0 - rho * rho), 4096)
                logs = np.empty(4096)
                level = self._noise_log
                for i, shock in enumerate(shocks.tolist()):
                    level = rho * level + shock
                    logs[i] = level
                self._noise_log = level
                # (popped from the end: reversed, so the series plays in the order it was drawn)
                self._noise_buffer = np.exp(logs[::-1] - 0.5 * sigma * sigma).tolist()
        return self._noise_buffer.pop()

    # --- load measures ------------------------------------------------------------------------
    @property
    def outstanding_requests(self) -> int:
        return len(self.running) + len(self.partial) + len(self.waiting)

    def load_tokens(self) -> int:
        """Prompt tokens still to prefill plus the KV already held."""
        return self.queued_prompt_tokens + self.config.kv_capacity_tokens - self.free_kv_tokens

    def full_view(self, now_s: float) -> IterationView:
        """Everything queued (for the PAB and admission control)."""
        return self._view(now_s, self.partial + self.waiting)

    def _view(self, now_s: float, prefills: list[SimRequest]) -> IterationView:
        config = self.config
        return IterationView(  # every field by position (the cheapest call; once per iteration)
            now_s, self.running, prefills, self.free_kv_tokens, config.kv_capacity_tokens,
            config.max_running_requests, config.max_prefill_tokens, self._admission_kv_tokens(),
            config.max_running_requests - len(self.running) - len(self.partial), self._running_context,
            self._running_context_sq,
        )

    def _admission_kv_tokens(self) -> float:
        """SGLang's admission headroom: free KV less what running and partial requests may still need."""
        ratio = self.new_token_ratio.current
        if self._running_clipped:
            held_back = running_reservation_tokens(self.running, ratio)
        else:  # the same sum, kept incrementally (no running cap exceeds the clip)
            held_back = ratio * (self._running_max_new - self._running_generated)
        for request in self.partial:
            held_back += admission_reservation_tokens(request)
        return self.free_kv_tokens - held_back

    # --- events -------------------------------------------------------------------------------
    def enqueue(self, request: SimRequest, now_s: float) -> None:
        request.replica = self.index
        self.waiting.append(request)
        self.queued_prompt_tokens += request.fill_tokens
        if self.inflight is None:  # idle: start an iteration right away
            self.next_s = now_s

    def step(self, now_s: float, horizon_s: float = math.inf) -> None:
        """Finish the iteration that ends at ``now_s`` (if any) and start the next one.

        ``horizon_s`` is when something from outside may next reach this replica (an arrival): a
        run of decode steps that ends before it, with nobody finishing, is played in one go
        (:meth:`_decode_run`), the same iterations as one at a time."""
        if self.inflight is not None:
            self._complete(self.inflight, now_s)
            self.inflight = None
        running = self.running
        if len(running) > self.free_kv_tokens:
            self._retract()
        if not self.partial and not self.waiting:
            if not running:
                self.next_s = math.inf
                return
            now_s = self._decode_run(now_s, horizon_s)
            if now_s is None:  # the run's last step is in flight, already played (_decode_run)
                return
            started = time.perf_counter()
            plan = self.policy.plan_decode_step(self._decode_view(now_s))
        else:
            started = time.perf_counter()
            plan = self.policy.plan(self._view(now_s, self.partial + self.waiting))
            if plan.empty and self._unblock():
                plan = self.policy.plan(self._view(now_s, self.partial + self.waiting))
        self.plan_cpu_s += time.perf_counter() - started
        if plan.empty:
            raise RuntimeError(
                f"policy {self.policy.name!r} returned an empty plan with work pending at t={now_s:.3f}s"
            )
        if plan.decodes:
            self.new_token_ratio.decode_step()
        # The engine's time: the plan's own prediction when the engine's model made it.
        true_model = self.true_model
        measured_s = plan.predicted_s if plan.predicted_by is true_model else true_model.predict_shape(plan.shape)
        if self.config.noise_sigma > 0:
            measured_s *= self.noise()
        if measured_s < 1e-6:  # (max(measured_s, 1e-6) without a call)
            measured_s = 1e-6
        self.policy.observe(plan, measured_s)
        self.iterations += 1
        self.busy_s += measured_s
        self.skipped_decodes += plan.skipped_decodes
        self.urgent_decodes += plan.urgent_decodes
        self.inflight = plan
        self.next_s = now_s + measured_s

    def _decode_run(self, now_s: float, horizon_s: float) -> float | None:
        """Play decode steps back to back from ``now_s`` while each ends before ``horizon_s``, no
        request reaches its length and KV lasts; return when the last one ended.

        Every running request decodes in each of them, so they differ only in the context that
        grows by one token per request per step: the engine's times, the policy's ``observe`` and
        every metric come out as they would one step at a time (the test suite checks it), without
        a pass over the requests per step.

        With :attr:`fold_last_step`, the step that runs past ``horizon_s`` (the decode step
        ``plan_decode_step`` would start next, every request in it) is played too, as is the step
        after a run that stops because a request reaches its length, and left in flight until it
        ends (the requests it finishes are released then): return None.  Only where nothing reads
        this replica until then (one replica, no admission control, no early stop): an arrival
        then only joins the queue."""
        running = self.running
        count = len(running)
        if not self.decode_runs:
            return now_s
        steps_left = min([r.output_tokens - r.generated_tokens for r in running]) - 1
        steps_left = min(steps_left, self.free_kv_tokens // count - 1)
        if steps_left < 2:
            return now_s
        config = self.config
        predict = self.true_model.predict
        noise = self.noise if config.noise_sigma > 0 else None
        context = self._running_context
        ends: list[float] = []
        measured: list[float] = []
        predicted: list[float] = []  # the model's time for each step, before noise
        end_s = now_s
        busy_s = 0.0
        last_s = None  # the folded last step's time (see fold_last_step)
        # The engine's times do not depend on the policy (its own model, its own noise stream), so
        # the run is timed first and the policy observes the steps after, in one call, in order.
        while len(ends) < steps_left:
            # The arguments predict_shape passes for the decode step's shape (BatchShape.add_decode),
            # but the decode rows' squared context: without a prefill it counts for nothing.
            predicted_s = measured_s = predict(count, context, count, 0, 0, 0, context)
            if noise is not None:
                measured_noise = noise()
                measured_s *= measured_noise
            if measured_s < 1e-6:  # (max(measured_s, 1e-6) without a call: this runs per step)
                measured_s = 1e-6
            if end_s + measured_s >= horizon_s:
                if (ends and self.fold_last_step and count <= config.max_running_requests
                        and count <= self.free_kv_tokens - count * len(ends)):
                    # the step plan_decode_step would start next: played too
                    last_s, last_predicted_s = measured_s, predicted_s
                elif noise is not None:  # keep the stream in step with one-at-a-time play
                    self._noise_buffer.append(measured_noise)
                break
            end_s += measured_s
            busy_s += measured_s
            ends.append(end_s)
            measured.append(measured_s)
            predicted.append(predicted_s)
            context += count
        steps = len(ends)
        if not steps:
            return now_s
        if (steps == steps_left and self.fold_last_step and count <= config.max_running_requests
                and count <= self.free_kv_tokens - count * steps):
            # The run stopped because the next step reaches a request's length (or the pool's
            # end): that step, timed as step() would time it, is played with the run too.
            last_predicted_s = last_s = predict(count, context, count, 0, 0, 0, context)
            if noise is not None:
                last_s *= noise()
            last_s = max(last_s, 1e-6)
        if last_s is not None:
            measured.append(last_s)
            predicted.append(last_predicted_s)
            last_end_s = end_s + last_s
        # (the model's own times: the policy need not predict the same steps again)
        self.policy.observe_decode_steps(running, self._running_context, measured, predicted, self.true_model)
        self.new_token_ratio.decode_steps(len(measured))
        sim = self.sim
        # The gaps every request shares (steps 2..K), and each one's own first gap.
        shared_gaps = [later - earlier for earlier, later in zip(ends, ends[1:])]
        longest_shared_s = max(shared_gaps, default=0.0)
        first_end_s = ends[0]
        # Envelope slack of token (generated + k - 1), out at ends[k-1]: envelope_slack_s(generated, 0)
        # + (k - 1) * tpot - ends[k-1]; the minimum over k depends on the request only by its TPOT.
        lowest_by_tpot: dict[float, float] = {}
        record_gap = sim.tbt_gaps_s.append
        if last_s is None:
            # Nothing folded: no last token to judge, no last gap, tokens up to the run's end.
            last_slacks, last_gap_s, last_tokens, last_token_s = repeat(math.inf), -math.inf, steps, end_s
        else:
            # The folded step as _complete would end it: its token's envelope slack (the token
            # `steps` after each one's next, out at last_end_s) and its gap, one for all.
            last_slacks = envelope_slacks_s(running, last_end_s, steps)
            last_gap_s, last_tokens, last_token_s = last_end_s - end_s, steps + 1, last_end_s
        finishing = False
        for request, slack_at_zero, last_slack in zip(running, envelope_slacks_s(running, 0.0), last_slacks):
            tpot_s = request.tpot_slo_s
            lowest = lowest_by_tpot.get(tpot_s)
            if lowest is None:
                lowest = lowest_by_tpot[tpot_s] = min(tpot_s * k - end for k, end in enumerate(ends))
            slack = slack_at_zero + lowest
            if slack < request.worst_slack_s:
                request.worst_slack_s = slack
            if last_slack < request.worst_slack_s:
                request.worst_slack_s = last_slack
            gap = first_end_s - request.last_token_s
            record_gap(gap)
            if gap > request.max_tbt_s:
                request.max_tbt_s = gap
            if longest_shared_s > request.max_tbt_s:
                request.max_tbt_s = longest_shared_s
            if last_gap_s > request.max_tbt_s:
                request.max_tbt_s = last_gap_s
            generated = request.generated_tokens + last_tokens
            request.generated_tokens = generated
            request.last_token_s = last_token_s
            if generated >= request.output_tokens:
                finishing = True
        sim.record_shared_gaps(shared_gaps, count)
        # Each context c became c + steps: the squares gained 2 c steps + steps^2 each.
        self._running_context_sq += 2 * steps * self._running_context + count * steps * steps
        self._running_context = context
        self._running_generated += count * steps
        self.free_kv_tokens -= count * steps
        self.iterations += steps
        self.busy_s += busy_s
        if last_s is None:
            return end_s
        # The folded step's bookkeeping, in the order step() and _complete() keep it: its gaps go
        # after the run's (nothing else records one before it ends: one replica).
        sim.tbt_gaps_s.extend([last_gap_s] * count)
        self._running_context_sq += 2 * self._running_context + count
        self._running_context += count
        self._running_generated += count
        self.free_kv_tokens -= count
        self.iterations += 1
        self.busy_s += last_s
        self.inflight = _PLAYED_FINISHING if finishing else _PLAYED
        self.next_s = last_end_s
        return None

    def _decode_view(self, now_s: float) -> IterationView:
        config = self.config
        return IterationView(now_s, self.running, (), self.free_kv_tokens, config.kv_capacity_tokens,
                             config.max_running_requests, config.max_prefill_tokens,
                             decode_context_tokens=self._running_context)

    # --- KV pressure --------------------------------------------------------------------------
    def _retract(self) -> None:
        """Free KV for the next decode step as SGLang does: retract running requests (fewest
        generated tokens first) until the rest fit.  SGLang keeps the last one (and aborts it if
        even it cannot fit); here that can only happen while partial prefills hold the pool, and the
        last one is retracted as well, so that nothing is lost."""
        victims = retraction_order(self.running)
        retracted = []
        while victims and len(self.running) - len(retracted) > self.free_kv_tokens and (
            len(victims) > 1 or self.partial
        ):
            retracted.append(victims.pop(0))
            self._release_kv(retracted[-1])
        if retracted:
            gone = {id(request) for request in retracted}
            self.running = [request for request in self.running if id(request) not in gone]
            self.new_token_ratio.after_retraction(self.running)

    def _release_kv(self, request: SimRequest) -> None:
        """Drop a running request's KV and put it back in the queue to prefill again."""
        self.free_kv_tokens += request.held_kv_tokens
        self._leave_running(request)
        request.record_retraction()
        request.retractions += 1
        self.retractions += 1
        self.waiting.append(request)
        self.queued_prompt_tokens += request.fill_tokens

    def _unblock(self) -> bool:
        """Partial prefills hold the pool and nothing can run: drop the least advanced one's KV."""
        if self.running or not self.partial or self.free_kv_tokens > 0:
            return False
        request = min(self.partial, key=lambda r: r.prefilled_tokens)
        self.partial.remove(request)
        self.free_kv_tokens += request.prefilled_tokens
        self.queued_prompt_tokens += request.prefilled_tokens
        request.prefilled_tokens = 0
        request.retractions += 1
        self.retractions += 1
        self.waiting.append(request)
        return True

    def _join_running(self, request: SimRequest) -> None:
        self.running.append(request)
        context = request.prefilled_tokens + request.generated_tokens
        self._running_context += context
        self._running_context_sq += context * context
        self._running_max_new += request.max_new_tokens
        self._running_generated += request.generated_tokens
        if request.max_new_tokens > CLIP_MAX_NEW_TOKENS:
            self._running_clipped += 1

    def _leave_running(self, request: SimRequest) -> None:
        context = request.prefilled_tokens + request.generated_tokens
        self._running_context -= context
        self._running_context_sq -= context * context
        self._running_max_new -= request.max_new_tokens
        self._running_generated -= request.generated_tokens
        if request.max_new_tokens > CLIP_MAX_NEW_TOKENS:
            self._running_clipped -= 1

    # --- iteration end ------------------------------------------------------------------------
    def _complete(self, plan: Plan, end_s: float) -> None:
        if plan is _PLAYED_FINISHING:  # played with its run: only the release is left
            self._release_finished(end_s)
            return
        sim = self.sim
        record_gap = sim.tbt_gaps_s.append
        finished = False
        decodes = plan.decodes
        # Each decode's token is out at end_s: its envelope slack and its gap, for all at once.
        gaps = [end_s - request.last_token_s for request in decodes]
        sim.tbt_gaps_s.extend(gaps)
        for request, slack, gap in zip(decodes, envelope_slacks_s(decodes, end_s), gaps):
            if slack < request.worst_slack_s:
                request.worst_slack_s = slack
            if gap > request.max_tbt_s:
                request.max_tbt_s = gap
            # RequestState.record_token without its first-token branch: a decode follows the first.
            generated = request.generated_tokens + 1
            request.generated_tokens = generated
            request.last_token_s = end_s
            if generated >= request.output_tokens:
                finished = True
        self.free_kv_tokens -= len(decodes)
        self._running_generated += len(decodes)
        # Each decode's context c became c + 1 (the plan's shape sums the c): squares gain 2c + 1.
        self._running_context_sq += 2 * plan.shape.decode_context + len(decodes)
        self._running_context += len(decodes)
        admitted = False
        filled = False
        for chunk in plan.prefills:
            request = chunk.request
            if request.prefilled_tokens == 0:  # first chunk: the request is admitted
                admitted = True
                self.partial.append(request)
            self.free_kv_tokens -= chunk.tokens
            self.queued_prompt_tokens -= chunk.tokens
            generated = request.generated_tokens
            previous_s = request.last_token_s
            request.record_prefill(chunk.tokens, end_s)
            if request.generated_tokens > generated:  # the fill is in KV: a token came out
                filled = True
                slack = request.envelope_slack_s(generated, end_s)
                if slack < request.worst_slack_s:
                    request.worst_slack_s = slack
                if generated == 0:
                    sim.first_token(request)
                else:  # prefilled again after a retraction: the stall is a gap between tokens
                    gap = end_s - previous_s
                    request.max_tbt_s = max(request.max_tbt_s, gap)
                    record_gap(gap)
                self._join_running(request)
                if request.generated_tokens >= request.output_tokens:
                    finished = True
        if admitted:
            self.waiting = [r for r in self.waiting if r.prefilled_tokens == 0]
        if filled:
            self.partial = [r for r in self.partial if r.is_prefilling]
        if finished:
            self._release_finished(end_s)

    def _release_finished(self, end_s: float) -> None:
        """The running requests that reached their length at ``end_s`` finish: KV freed, released."""
        sim = self.sim
        keep = []
        for request in self.running:
            if request.generated_tokens >= request.output_tokens:
                request.finish_s = end_s
                self.free_kv_tokens += request.held_kv_tokens
                self._leave_running(request)
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
    generated_tokens: np.ndarray
    worst_slack_s: np.ndarray
    max_tbt_s: np.ndarray
    rejected: np.ndarray
    replica: np.ndarray
    #: Every time between tokens of the run (seconds), and how many tokens came after each gap.
    tbt_gaps_s: np.ndarray
    tbt_counts: np.ndarray
    iterations: int
    plan_cpu_s: float
    busy_s: float
    skipped_decodes: int
    urgent_decodes: int
    retractions: int
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
        stop_after_tail_misses: int | None = None,
        definition: str = "mean",
        max_ttft_factor: float = 0.0,
        load_poll_s: float = 0.0,
        retries: int = 0,
    ) -> None:
        if router not in ROUTER_NAMES:
            raise ValueError(f"unknown router {router!r} (choose from {', '.join(ROUTER_NAMES)})")
        if not policies:
            raise ValueError("need at least one replica")
        self.workload = workload
        self.config = config or EngineConfig()
        self.seed = seed
        self.replicas = [Replica(i, p, self.config, self) for i, p in enumerate(policies)]
        self.router = router
        self.admission_control = admission_control
        # The router as a real one runs: it reads replica loads (least_load, power_of_two,
        # total_tokens, pab) from a snapshot refreshed every ``load_poll_s`` (sglang-router polls
        # /get_load: every 30 s by default, every --worker-startup-check-interval seconds when set),
        # charged with what it sent since where it keeps count (CHARGING_ROUTERS), and a request a
        # replica rejects (admission control) is tried on up to ``retries`` other replicas.
        if not (load_poll_s >= 0 and math.isfinite(load_poll_s)):
            raise ValueError(f"load_poll_s must be >= 0, got {load_poll_s}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.load_poll_s = load_poll_s
        self.retries = retries
        self._snapshot_until_s = -math.inf
        self._snapshot: dict[int, float] = {}
        self.retried = 0
        self.random = random.Random(seed)
        # Every gap between tokens, in order: the latest in a list (appending a float to an
        # array("d") parses it, several times the cost of a list append), packed into an array
        # every GAP_BLOCK of them (flush_gaps), so memory stays 8 bytes a gap.
        self.tbt_gaps_s: list[float] = []
        self._packed_gaps_s = array("d")
        # Gaps between tokens shared by several requests (decode runs): value, how many (lists: a
        # few per run, converted once at the end).
        self.tbt_shared_gaps_s: list[float] = []
        self.tbt_shared_counts: list[int] = []
        self.warmup_requests = int(len(workload) * warmup_fraction)
        # Early stop (capacity probes): misses of the judged definition, and first tokens later than
        # ``max_ttft_factor`` x their SLO (the tail bound), counted as they become certain.
        self.stop_after_misses = stop_after_misses
        self.stop_after_tail_misses = stop_after_tail_misses
        self.envelope_definition = definition == "envelope"
        self.max_ttft_factor = max_ttft_factor
        self.misses = 0
        self.tail_misses = 0
        self._rr_next = 0
        self.requests: list[SimRequest] = []

    def flush_gaps(self) -> None:
        """Pack the gaps recorded since the last flush into the array (struct packs a list of
        floats several times faster than array("d").extend parses one)."""
        gaps = self.tbt_gaps_s
        if gaps:
            self._packed_gaps_s.frombytes(struct.pack(f"{len(gaps)}d", *gaps))
            gaps.clear()  # the same list: replicas may hold its append

    def record_shared_gaps(self, gaps: list[float], count: int) -> None:
        self.tbt_shared_gaps_s.extend(gaps)
        self.tbt_shared_counts.extend([count] * len(gaps))

    # --- metric hooks called by replicas ------------------------------------------------------
    def first_token(self, request: SimRequest) -> None:
        if request.index < self.warmup_requests:
            return
        ttft_s = request.first_token_s - request.arrival_s
        if not meets_ttft(ttft_s, request.ttft_slo_s):
            self.misses += 1  # a late first token is a definite miss (counted once, here)
        if self.max_ttft_factor and ttft_s > self.max_ttft_factor * request.ttft_slo_s:
            self.tail_misses += 1

    def finished(self, request: SimRequest) -> None:
        if request.index < self.warmup_requests:
            return
        ttft_ok, tpot_ok = request.slo_met()
        if ttft_ok and not (meets_envelope(request.worst_slack_s) if self.envelope_definition else tpot_ok):
            self.misses += 1

    def reject(self, request: SimRequest) -> None:
        request.rejected = True
        if request.index >= self.warmup_requests:
            self.misses += 1
            self.tail_misses += 1

    def should_stop(self) -> bool:
        return (self.stop_after_misses is not None and self.misses > self.stop_after_misses) or (
            self.stop_after_tail_misses is not None and self.tail_misses > self.stop_after_tail_misses)

    # --- routing --------------------------------------------------------------------------------
    def route(self, request: SimRequest, now_s: float) -> Replica | None:
        """The replica ``request`` goes to, or None when every replica tried rejected it."""
        replicas = self.replicas
        if len(replicas) == 1 and not self.admission_control:
            return replicas[0]
        candidates = list(replicas)
        for _ in range(min(self.retries, len(replicas) - 1) + 1):
            chosen = self._pick(candidates, now_s)
            if not self.admission_control or chosen.policy.admit(request, chosen.full_view(now_s)):
                if self.router in CHARGING_ROUTERS and chosen.index in self._snapshot:
                    # (either load grows with the prompt: outstanding tokens, or the PAB negated)
                    self._snapshot[chosen.index] += request.prompt_tokens
                return chosen
            candidates.remove(chosen)  # rejected with a reason: the router tries another
            self.retried += 1
        return None

    def _pick(self, candidates: list[Replica], now_s: float) -> Replica:
        router = self.router
        if router == "round_robin":
            while True:  # the next replica in turn that is still a candidate
                chosen = self.replicas[self._rr_next % len(self.replicas)]
                self._rr_next += 1
                if chosen in candidates:
                    return chosen
        if len(candidates) == 1:
            return candidates[0]
        loads = self._loads(now_s)
        if router == "power_of_two":
            a, b = self.random.sample(candidates, 2)
            return a if loads[a.index] <= loads[b.index] else b
        # least_load, total_tokens, pab: the lowest load (for pab, the most budget left)
        return min(candidates, key=lambda r: loads[r.index])

    def _loads(self, now_s: float) -> dict[int, float]:
        """Each replica's load as the router sees it (lower is better): outstanding tokens, or for
        ``pab`` the prefill admission budget, negated; fresh, or as of the last poll (plus the
        prompts a charging router sent since)."""
        if self.load_poll_s > 0 and now_s < self._snapshot_until_s:
            return self._snapshot
        if self.router == "pab":
            loads = {r.index: -r.policy.admission_budget(r.full_view(now_s)).tokens for r in self.replicas}
        else:
            loads = {r.index: r.load_tokens() for r in self.replicas}
        if self.load_poll_s > 0:
            self._snapshot = loads
            self._snapshot_until_s = (math.floor(now_s / self.load_poll_s) + 1) * self.load_poll_s
        return loads

    # --- main loop ------------------------------------------------------------------------------
    def run(self) -> SimResult:
        started = time.perf_counter()
        w = self.workload
        arrivals = w.arrival_s.tolist()
        prompts = w.prompt_tokens.tolist()
        outputs = w.output_tokens.tolist()
        caps = w.max_new_tokens.tolist()
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
        early_stop = self.stop_after_misses is not None or self.stop_after_tail_misses is not None
        # A run's last decode step may be played with the run where nothing reads the replica until
        # it ends (no other replica's router, no admission control, no stop before it ends) and
        # the policy plans decode steps as BatchPolicy does.
        fold = single is not None and not self.admission_control and not early_stop
        for replica in replicas:
            replica.fold_last_step = fold and (
                getattr(type(replica.policy), "plan_decode_step", None) is BatchPolicy.plan_decode_step)
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
                # As SGLang does, a cap the pool could never hold is clipped to it (a prompt that
                # does not fit at all is rejected); the request ends at its true length or its cap.
                cap = min(caps[i], kv_capacity - prompts[i] - 2)
                request = SimRequest(i, arrival_s, prompts[i], min(outputs[i], max(cap, 1)), cap,
                                     ttfts[i], tpots[i], client_names[clients[i]])
                requests.append(request)
                target = None if cap < 1 else self.route(request, now_s)
                if target is None:
                    self.reject(request)
                else:
                    target.enqueue(request, now_s)
            else:
                now_s = replica_s
                replica.step(now_s, arrival_s)
                if len(self.tbt_gaps_s) >= GAP_BLOCK:
                    self.flush_gaps()
            if early_stop and self.should_stop():
                stopped = True
                break
        return self._result(started, now_s, stopped)

    def _result(self, started: float, end_s: float, stopped: bool) -> SimResult:
        self.flush_gaps()
        w = self.workload
        n = len(w)
        first = np.full(n, np.nan)
        finish = np.full(n, np.nan)
        generated = np.zeros(n, dtype=np.int64)
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
            generated[i] = r.generated_tokens
            rejected[i] = r.rejected
            replica[i] = r.replica
        reps = self.replicas
        return SimResult(
            workload=w,
            first_token_s=first,
            finish_s=finish,
            generated_tokens=generated,
            worst_slack_s=worst,
            max_tbt_s=max_tbt,
            rejected=rejected,
            replica=replica,
            tbt_gaps_s=np.concatenate([np.frombuffer(self._packed_gaps_s, dtype=float) if self._packed_gaps_s else np.zeros(0),
                                       np.array(self.tbt_shared_gaps_s, dtype=float)]),
            tbt_counts=np.concatenate([np.ones(len(self._packed_gaps_s), dtype=np.int64),
                                       np.array(self.tbt_shared_counts, dtype=np.int64)]),
            iterations=sum(r.iterations for r in reps),
            plan_cpu_s=sum(r.plan_cpu_s for r in reps),
            busy_s=sum(r.busy_s for r in reps),
            skipped_decodes=sum(r.skipped_decodes for r in reps),
            urgent_decodes=sum(r.urgent_decodes for r in reps),
            retractions=sum(r.retractions for r in reps),
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
    stop_after_tail_misses: int | None = None,
    definition: str = "mean",
    max_ttft_factor: float = 0.0,
    load_poll_s: float = 0.0,
    retries: int = 0,
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
        stop_after_tail_misses=stop_after_tail_misses,
        definition=definition,
        max_ttft_factor=max_ttft_factor,
        load_poll_s=load_poll_s,
        retries=retries,
    )
    return sim.run()
