"""Experiment (not a policy): does FairBatching gain when it stops stretching iterations while
admission is KV-blocked?  See docs/results-sim.md, "A larger KV pool...".

The rule is tried from outside the policy, in a subclass, because it was not adopted.  The
simulator's view lists a waiting request only while its prompt + output reservation fits, so a
policy never *sees* a KV-blocked prompt there; this script therefore hands the policy an oracle
flag from the engine (the first waiting request in FCFS order does not fit), which is an upper
bound on what any view-based detector could do.

    # fixed rates, seeds 0-2, before (off) and after (the rule), Sarathi-512 for reference
    .venv/bin/python benchmark/sim_kv_blocked.py run --modes off,noskip,floor,chunk,decode,sarathi \
        --rates 4.2,4.5 --seeds 0,1,2
    # capacity (same bisection as `sim capacity`: [0, saturation bound], 2% bracket)
    .venv/bin/python benchmark/sim_kv_blocked.py capacity --modes off,chunk --seeds 0,1,2

Modes, applied only on iterations where admission is blocked (``--trigger oracle``, default),
on every iteration (``always``) or while the pool is more than F used (``fracF``, e.g. frac0.9):

* ``off``: FairBatching unchanged.
* ``noskip``: every decode runs (none sits out); the time budget is unchanged.
* ``floor``: every decode runs, and the budget is not stretched past ``safety * TPOT``.
* ``chunk``: every decode runs, and the budget is the decode-only batch plus one chunk of the cost
  model's most efficient size (``sqrt(a/e)`` tokens; ``--chunk-tokens`` overrides it, for the
  sensitivity runs only), so partial prefills keep moving.
* ``decode``: every decode runs and the budget is the decode-only batch (prefills then only move
  when nothing else runs: partial prefills stall while blocked).
* ``sarathi``: Sarathi-Serve with a 512-token budget, for reference.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))

from sglang_fair.policy import load_cost_model, make_policy  # noqa: E402
from sglang_fair.policy.fairbatching import FairBatchingPolicy  # noqa: E402
from sglang_fair.sim import engine as sim_engine  # noqa: E402
from sglang_fair.sim.capacity import saturation_rps  # noqa: E402
from sglang_fair.sim import load_trace, make_workload, shared_dir, simulate, summarize  # noqa: E402

MODES = ("off", "noskip", "floor", "chunk", "decode", "sarathi")


class KvBlockedFairBatching(FairBatchingPolicy):
    """FairBatching that, while admission is KV-blocked, lets no decode sit out and caps the budget."""

    def __init__(self, cost_model, *, mode: str, trigger: str, chunk_tokens: int | None = None,
                 **options) -> None:
        super().__init__(cost_model, **options)
        self.mode = mode
        self.chunk_tokens = chunk_tokens
        self.trigger = trigger
        self.engine_blocked = False  # set by the engine hook below before every plan()
        self._active = False
        self._cap_s = math.inf
        self.blocked_iterations = 0

    def _blocked(self, view) -> bool:
        if self.trigger == "always":
            return True
        if self.trigger.startswith("frac"):
            return view.kv_used_fraction > float(self.trigger[4:])
        return self.engine_blocked

    def plan(self, view):
        self._active = self.mode != "off" and bool(view.decodes) and self._blocked(view)
        self._cap_s = math.inf
        if self._active:
            self.blocked_iterations += 1
            model = self.cost_model
            count = len(view.decodes)
            sum_context = sum(r.prefilled_tokens + r.generated_tokens for r in view.decodes)
            decode_only_s = model.predict(count, sum_context, count)
            if self.mode == "decode":
                self._cap_s = decode_only_s
            elif self.mode == "chunk":
                chunk_tokens = (self.chunk_tokens or model.efficient_chunk_tokens(0)
                                or self.min_chunk_tokens)
                self._cap_s = decode_only_s + model.prefill_cost_s(chunk_tokens, 0)
        return super().plan(view)

    def _budget(self, min_slack_s: float, min_tpot_s: float) -> tuple[float, float]:
        budget_s, floor_s = super()._budget(min_slack_s, min_tpot_s)
        if not self._active:
            return budget_s, floor_s
        if self.mode == "floor":
            budget_s = min(budget_s, floor_s)
        budget_s = min(budget_s, self._cap_s)
        # An infinite floor makes every decode "urgent" in plan(): none sits out.
        return budget_s, math.inf


def _install_oracle() -> None:
    """Tell the policy, before each plan(), whether the FCFS head of the queue is KV-blocked."""
    original = sim_engine.Replica.step

    def step(self, now_s):
        room = self.unreserved_tokens
        seats = self.config.max_running_requests - len(self.running) - len(self.partial)
        blocked = False
        for request in self.waiting:  # the same walk the engine uses to list waiting requests
            if seats <= 0:
                break
            if request.reserved_tokens > room:
                blocked = True
                break
            room -= request.reserved_tokens
            seats -= 1
        self.policy.engine_blocked = blocked
        return original(self, now_s)

    sim_engine.Replica.step = step


def _factory(mode: str, trigger: str, cost_model, ttft_slo_s: float, chunk_tokens: int | None):
    if mode == "sarathi":
        return lambda: make_policy("sarathi", cost_model, token_budget=512, default_ttft_slo_s=ttft_slo_s)
    return lambda: KvBlockedFairBatching(cost_model, mode=mode, trigger=trigger, chunk_tokens=chunk_tokens,
                                         default_ttft_slo_s=ttft_slo_s)


def _probe(args, trace, cost_model, config, mode, rate, seed, target=None):
    workload = make_workload(trace, num_requests=args.num_requests, rate_rps=rate, seed=seed,
                             ttft_slo_s=args.ttft_slo, tpot_slo_s=args.tpot_slo)
    measured = len(workload) - int(len(workload) * 0.1)
    stop = None if target is None else int(math.floor((1.0 - target) * measured))
    result = simulate(workload, _factory(mode, args.trigger, cost_model, args.ttft_slo, args.chunk_tokens), config=config,
                      seed=seed, warmup_fraction=0.1, stop_after_misses=stop)
    return summarize(result)


def _capacity(args, trace, cost_model, config, mode, seed) -> float:
    # The same bisection as sglang_fair.sim.capacity.search_capacity.
    lo, hi = 0.0, args.upper_rps
    if _probe(args, trace, cost_model, config, mode, hi, seed, 0.9)["attainment"] >= 0.9:
        return hi
    while hi - lo > args.tolerance * hi:
        mid = 0.5 * (lo + hi)
        if _probe(args, trace, cost_model, config, mode, mid, seed, 0.9)["attainment"] >= 0.9:
            lo = mid
        else:
            hi = mid
    return lo


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("verb", choices=("run", "capacity"))
    parser.add_argument("--trace", default=str(shared_dir() / "traces" / "azure_conv_2023.csv"))
    parser.add_argument("--cost-model", default="a100-llama2-7b")
    parser.add_argument("--ttft-slo", type=float, default=2.0)
    parser.add_argument("--tpot-slo", type=float, default=0.1)
    parser.add_argument("--kv-capacity-tokens", type=int, default=sim_engine.EngineConfig.kv_capacity_tokens)
    parser.add_argument("--num-requests", type=int, default=2000)
    parser.add_argument("--modes", default="off,chunk,sarathi")
    parser.add_argument("--trigger", default="oracle", help="oracle, always, or fracF (pool used > F)")
    parser.add_argument("--chunk-tokens", type=int, default=None,
                        help="chunk mode: the prefill allowance in tokens (default: the efficient size)")
    parser.add_argument("--rates", default="4.2,4.5")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--upper-rps", type=float, default=None,
                        help="capacity: top of the search (default: the saturation bound, as `sim capacity`)")
    parser.add_argument("--tolerance", type=float, default=0.02)
    args = parser.parse_args()
    modes = args.modes.split(",")
    for mode in modes:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
    seeds = [int(s) for s in args.seeds.split(",")]
    _install_oracle()
    trace = load_trace(args.trace)
    cost_model = load_cost_model(args.cost_model)
    config = sim_engine.EngineConfig(kv_capacity_tokens=args.kv_capacity_tokens)
    if args.verb == "capacity":
        if args.upper_rps is None:
            args.upper_rps = saturation_rps(trace, args.num_requests, cost_model, config)
        for mode in modes:
            caps = [_capacity(args, trace, cost_model, config, mode, seed) for seed in seeds]
            print(f"{mode:8s} capacity rps " + ", ".join(f"{c:.3f}" for c in caps)
                  + f"  mean {np.mean(caps):.3f} sd {np.std(caps, ddof=1) if len(caps) > 1 else 0:.3f}",
                  flush=True)
        return 0
    for rate in (float(r) for r in args.rates.split(",")):
        for mode in modes:
            rows = [_probe(args, trace, cost_model, config, mode, rate, seed) for seed in seeds]
            print(f"{rate:.2f} rps {mode:8s}"
                  + " attainment " + "/".join(f"{r['attainment']:.3f}" for r in rows)
                  + f" (mean {np.mean([r['attainment'] for r in rows]):.3f})"
                  + " ttft_p99_s " + "/".join(f"{r['ttft_p99_s']:.2f}" for r in rows)
                  + " tpot_p50_ms " + "/".join(f"{r['tpot_p50_s'] * 1e3:.1f}" for r in rows), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
