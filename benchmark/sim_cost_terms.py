"""Where a simulated run's machine time goes, term by term of the cost model, per scheduler.

At saturation every scheduler computes the same tokens; what separates them is the work a schedule
adds on top: the fixed cost of each iteration (``a`` x iterations) and the attention of chunked
prompts (``e`` x sum of squared chunks, ``h`` x chunk x prefix).  This runs each scheduler at a
given arrival rate (default: its tail-bounded capacity from the comparison's store) and splits the
busy time into those terms and the per-token rest, with iterations per second and how many of them
carried a prefill, so a capacity gap can be read off the terms (docs/results-sim.md).

    .venv/bin/python benchmark/sim_cost_terms.py --scenario llama3-poisson --seeds 0,1,2
    .venv/bin/python benchmark/sim_cost_terms.py --scenario llama3-poisson --seeds 1 \\
        --schedulers fairbatching@6.99,sarathi:token_budget=1024@6.99

``--window START,END`` (simulated seconds) adds the same split over the plans made in that stretch
of the run only, with the prompt and decode tokens they carried: a trace whose load changes along
the run (Azure conv's prompts are longest from about 250 s to 550 s) is decided by its overload,
and this shows whether a scheduler did more work there or only served it in another order, and
how many of the run's misses arrived in that stretch (per SLO class when there are several).
"""

from __future__ import annotations

import argparse
import math
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))
sys.path.insert(0, str(REPO / "benchmark"))

import sim_compare  # noqa: E402
from sglang_fair import strict_json  # noqa: E402
from sglang_fair.policy.registry import build_policy  # noqa: E402
from sglang_fair.sim.engine import simulate  # noqa: E402
from sglang_fair.sim.metrics import summarize  # noqa: E402
from sglang_fair.sim.workload import make_workload  # noqa: E402


class _PlanTotals:
    """Sums the shapes of every plan a policy makes (decode runs the engine plays in one go carry
    no chunk, so chunk terms are complete; the fixed cost is counted from the iteration total)."""

    def __init__(self, window_s: tuple[float, float] = (-math.inf, math.inf)) -> None:
        #: Only plans made at a simulated time in ``[start, end)`` are counted.
        self.window_s = window_s
        self.plans = 0
        self.prefill_plans = 0
        self.prefill_plan_seqs = 0
        self.prefill_plan_decode_context = 0  # the decode rows' context in those plans
        self.prefill_plan_decode_context_sq = 0  # and their contexts squared
        self.sum_chunk_sq = 0
        self.sum_chunk_prefix = 0
        self.prefill_tokens = 0
        self.decode_tokens = 0
        self.planned_s = 0.0

    def wrap(self, policy):
        plan = policy.plan
        start_s, end_s = self.window_s

        def counted(view):
            out = plan(view)
            if not start_s <= view.now_s < end_s:
                return out
            shape = out.shape
            self.plans += 1
            self.decode_tokens += len(out.decodes)
            self.prefill_tokens += out.prefill_tokens
            self.planned_s += out.predicted_s
            if shape.num_prefills:
                self.prefill_plans += 1
                self.prefill_plan_seqs += shape.num_seqs
                self.prefill_plan_decode_context += shape.decode_context
                self.prefill_plan_decode_context_sq += shape.decode_context_sq
            self.sum_chunk_sq += shape.sum_chunk_sq
            self.sum_chunk_prefix += shape.sum_chunk_prefix
            return out

        policy.plan = counted
        return policy


def cost_terms(scenario: sim_compare.Scenario, seed: int, policy: str, options: dict, rate_rps: float,
               window_s: tuple[float, float] | None = None) -> dict:
    """One run of ``policy`` at ``rate_rps`` on ``scenario``: its metrics and its busy time by term
    (and, with ``window_s``, the same over the plans made in that stretch of simulated time)."""
    model, config, trace = sim_compare._engine(scenario)
    workload = make_workload(trace, num_requests=scenario.num_requests, rate_rps=rate_rps, seed=seed,
                             ttft_slo_s=scenario.ttft_slo_s, tpot_slo_s=scenario.tpot_slo_s,
                             **scenario.workload_options())
    totals = _PlanTotals()
    windowed = _PlanTotals(window_s) if window_s else None
    settings = {"default_ttft_slo_s": scenario.ttft_slo_s}
    def make():
        built = totals.wrap(build_policy(policy, model, settings=settings, options=options))
        return windowed.wrap(built) if windowed else built

    result = simulate(workload, make, config=config, seed=seed)
    summary = summarize(result, max_ttft_p99_factor=5.0, arrival_window_s=window_s)
    fixed_s = model.fixed_s * result.iterations
    attention_s = model.per_chunk_sq_s * totals.sum_chunk_sq + model.per_chunk_prefix_s * totals.sum_chunk_prefix
    extend_s = (model.per_prefill_iteration_s * totals.prefill_plans
                + model.extend_rows_cost_s(totals.prefill_plan_seqs, totals.prefill_plan_decode_context,
                                           totals.prefill_plan_decode_context_sq))
    busy_s = result.busy_s
    window = None
    if windowed:
        window = {
            "start_s": window_s[0], "end_s": window_s[1], "plans": windowed.plans,
            "prefill_tokens": windowed.prefill_tokens, "decode_tokens": windowed.decode_tokens,
            "planned_s": windowed.planned_s, "fixed_s": model.fixed_s * windowed.plans,
            "chunk_attention_s": model.per_chunk_sq_s * windowed.sum_chunk_sq
            + model.per_chunk_prefix_s * windowed.sum_chunk_prefix,
            "arrivals": summary["arrival_window"],
        }
    return {
        "policy": policy, "options": options, "rate_rps": rate_rps, "seed": seed,
        "attainment": summary["attainment"], "ttft_p99_s": summary["ttft_p99_s"], "tbt_p99_s": summary["tbt_p99_s"],
        "iterations": result.iterations, "iterations_per_s": result.iterations / result.end_s,
        "plans_with_prefill": totals.prefill_plans,
        "busy_s": busy_s, "fixed_s": fixed_s, "chunk_attention_s": attention_s, "extend_path_s": extend_s,
        "per_token_s": busy_s - fixed_s - attention_s - extend_s,
        "window": window,
    }


def _capacities(store: Path, name: str, seed: int) -> dict[str, tuple[dict, float]]:
    """The best setting and capacity of each policy in the comparison's store for ``name``/``seed``."""
    by_policy: dict[str, list[dict]] = {}
    for result in sim_compare._load_store(store).values():
        if result.get("scenario") == name and result.get("seed") == seed and result.get("replicas", 1) == 1:
            by_policy.setdefault(result["policy"], []).append(result)
    return {policy: (best["options"], best["capacity_rps"])
            for policy, best in ((p, sim_compare._best(r)) for p, r in by_policy.items())}


def _parse_scheduler(text: str) -> tuple[str, dict, float]:
    """``policy[:key=value,...]@rate``."""
    spec, _, rate = text.partition("@")
    policy, _, opts = spec.partition(":")
    options = {}
    for item in filter(None, opts.split(",")):
        key, _, value = item.partition("=")
        options[key] = json.loads(value)  # numbers and booleans, as JSON writes them
    return policy, options, float(rate)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="llama3-poisson", help="a scenario of benchmark/sim_compare.py")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--schedulers", default="fairbatching,sarathi",
                        help="policies at their stored capacity, or policy[:key=value,...]@rate each")
    parser.add_argument("--store", default=str(REPO / "benchmark" / "results" / "sim_compare_searches.jsonl"))
    parser.add_argument("--out", default=None, help="write the rows here (strict JSON)")
    parser.add_argument("--window", default=None, metavar="START,END",
                        help="also split the plans made between these simulated seconds")
    args = parser.parse_args(argv)
    window_s = None
    if args.window:
        try:
            start_s, end_s = (float(x) for x in args.window.split(","))
        except ValueError:
            parser.error("--window: give START,END in simulated seconds, e.g. 300,550")
        if not start_s < end_s:
            parser.error("--window: START must be before END")
        window_s = (start_s, end_s)
    scenario = sim_compare.SCENARIOS[args.scenario]
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        stored = _capacities(Path(args.store), args.scenario, seed)
        for item in args.schedulers.split(","):
            if "@" in item:
                policy, options, rate = _parse_scheduler(item)
            elif item in stored:
                (options, rate), policy = stored[item], item
            else:
                parser.error(f"no stored capacity for {item!r} on {args.scenario} seed {seed}: give policy@rate")
            row = cost_terms(scenario, seed, policy, options, rate, window_s)
            rows.append(row)
            busy = row["busy_s"]
            print(f"seed {seed} {policy} {options or ''} at {rate:.3f} rps: attainment {row['attainment']:.3f}, "
                  f"{row['iterations_per_s']:.1f} iterations/s; busy {busy:.0f} s = fixed {row['fixed_s']:.0f} "
                  f"({row['fixed_s'] / busy:.1%}) + chunk attention {row['chunk_attention_s']:.0f} "
                  f"({row['chunk_attention_s'] / busy:.1%}) + extend path {row['extend_path_s']:.0f} + per token "
                  f"{row['per_token_s']:.0f} ({row['per_token_s'] / busy:.1%})", flush=True)
            if row["window"]:
                w = row["window"]
                print(f"  {w['start_s']:g}-{w['end_s']:g} s: {w['plans']} plans, {w['planned_s']:.0f} s planned "
                      f"({1000 * w['planned_s'] / max(w['plans'], 1):.0f} ms each), {w['prefill_tokens']:,} prompt "
                      f"and {w['decode_tokens']:,} decode tokens, fixed {w['fixed_s']:.1f} s, chunk attention "
                      f"{w['chunk_attention_s']:.1f} s", flush=True)
                a = w["arrivals"]
                print(f"  arriving then: {a['requests']} requests, {a['missed']} missed ({a['missed_ttft']} on TTFT) "
                      f"of the run's {a['missed_in_run']} misses", flush=True)
                for c in a["slo_classes"]:
                    print(f"    {c['ttft_slo_s']:g} s / {c['tpot_slo_s'] * 1000:g} ms: {c['requests']} requests, "
                          f"both met {c['attainment']:.1%}, TTFT {c['ttft_attainment']:.1%}, "
                          f"TPOT {c['tpot_attainment']:.1%}", flush=True)
    if args.out:
        strict_json.write(args.out, {"scenario": args.scenario, "rows": rows}, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
