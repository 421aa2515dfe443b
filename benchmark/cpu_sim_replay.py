"""The CPU A/B, simulated: benchmark/cpu_ab.py's workloads played in the simulator on this machine's
own measured costs, to tell what a policy decides from how the server carries it out.

    .venv/bin/python benchmark/cpu_sim_replay.py --iteration-log /tmp/iter.jsonl --rate 12 --arrivals bursty \\
        --seeds 0-15 --ttft-slo 0.136 --tpot-slo 0.017 [--real RESULTS.json[.gz]] [--out OUT.json]

``--iteration-log`` is what a FairBatching server wrote with ``--fair-iteration-log`` during a
``cpu_ab.py`` round on this machine (plain or ``.gz``; the last start's run).  From it:

* **the engine's costs**: one cost model fitted to every measured iteration (the online refit's
  fit with no prior, centred on the median: ``online_model_replay.hindsight_model``).  The policies
  plan with it, as a server's online model converges to it;
* **the scheduler's own time**: the time between one iteration's end and the next one's start
  while work was pending (gaps over :data:`IDLE_GAP_S` are an idle server), averaged, is added to
  the engine's fixed cost, and what comes on top of that before an iteration with a prefill to its
  per-prefill-iteration cost.  The simulated engine pays it; the policies' model does not know it,
  as the online model does not (it times the forward pass);
* **noise**: log-normal, with the spread of log(measured / fitted) over the iterations under
  :data:`STALL_FACTOR` times their fit (a robust estimate); the stalls above it are counted and
  reported, not simulated.  The machine's slow spells last several iterations: consecutive busy
  iterations' log ratios correlate (lag 1: 0.54-0.65 on this machine), and the simulated noise is an
  AR(1) series with that correlation (``--noise-correlation 0`` draws each iteration's alone).

The workload of each seed is ``cpu_ab.py``'s (``load_client.make_workload``, the same rows, lengths
and arrival times), the engine the default tiny server's (``--kv-capacity-tokens``,
``--max-running-requests``, ``--max-prefill-tokens``), and the servers ``cpu_ab.py``'s default pair:
``stock`` (SGLang's prefill-first loop, 512-token chunks, mixed chunk) and ``fair`` (FairBatching's
defaults); ``--server NAME=POLICY[:KEY=VALUE,...]`` gives others.  Attainment is judged as the
load client judges it (TTFT and mean TPOT, every request, no warm-up left out).  With ``--real``,
a ``cpu_ab.py`` results file of the same rate, arrivals and seeds, each server's real attainment is
printed beside its simulated one: where the simulation of a server matches its real runs and
another's does not, that other server loses in its execution (its runtime, or the machine), not
in its plans.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from dataclasses import dataclass

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import cpu_ab  # noqa: E402
import load_client  # noqa: E402
import online_model_replay  # noqa: E402

from sglang_fair import strict_json  # noqa: E402
from sglang_fair.policy.cost_model import FEATURE_NAMES, CostModel  # noqa: E402
from sglang_fair.policy.registry import POLICY_NAMES, parse_option_value  # noqa: E402
from sglang_fair.runtime.iteration_log import read_last_run  # noqa: E402
from sglang_fair.sim.capacity import Variant, run_probe  # noqa: E402
from sglang_fair.sim.engine import EngineConfig  # noqa: E402
from sglang_fair.sim.workload import Workload  # noqa: E402

#: A gap between iterations longer than this is a server waiting for requests, not its loop.
IDLE_GAP_S = 0.05
#: An iteration this many times over its fit is a stall of the machine (counted, not simulated).
STALL_FACTOR = 5.0
#: cpu_ab.py's default pair, as simulator policies.
DEFAULT_SERVERS = ("stock=sglang:chunked_prefill_size=512,mixed_chunk=true", "fair=fairbatching")
#: The default tiny server's engine (its start-up log: max_total_num_tokens, max_running_requests,
#: max_prefill_tokens on this machine).
TINY_KV_TOKENS, TINY_SEATS, TINY_PREFILL_TOKENS = 16384, 2048, 16384


@dataclass
class MachineCosts:
    """What an iteration log says about the machine: the fitted model and what it leaves out."""

    model: CostModel
    #: The engine's model: ``model`` plus the scheduler's own time between iterations.
    engine: CostModel
    noise_sigma: float
    #: Lag-1 correlation of log(measured / fitted) between consecutive busy iterations.
    noise_correlation: float
    gap_s: float
    prefill_gap_s: float
    iterations: int
    stalls: int


def machine_costs(path: str) -> MachineCosts:
    """Fit the log's iterations, and measure the time between them and the noise around the fit."""
    run = read_last_run(path)
    _, features, times = online_model_replay.log_arrays(path, run)
    model = online_model_replay.hindsight_model(features, times)
    ratios = times / np.maximum(features @ model.coefficients(), 1e-12)
    stall = ratios > STALL_FACTOR
    logs = np.log(ratios[~stall & (ratios > 0)])
    # (the median absolute deviation, scaled to a normal's sigma: robust to what is left of stalls)
    sigma = float(1.4826 * np.median(np.abs(logs - np.median(logs)))) if len(logs) else 0.0
    entries = [entry for _, entry in run[2]]
    prefill = FEATURE_NAMES.index("prefill_iteration")
    gaps, prefill_gaps, consecutive = [], [], []
    for i, (before, entry) in enumerate(zip(entries, entries[1:])):
        gap_s = entry["end_s"] - entry["measured_s"] - before["end_s"]
        if 0 <= gap_s < IDLE_GAP_S:
            (prefill_gaps if entry["features"][prefill] > 0 else gaps).append(gap_s)
            if not (stall[i] or stall[i + 1]) and ratios[i] > 0 and ratios[i + 1] > 0:
                consecutive.append(i)
    correlation = 0.0
    if len(consecutive) > 2:
        pairs = np.log(ratios[np.array(consecutive)[:, None] + np.array([0, 1])])
        with np.errstate(invalid="ignore", divide="ignore"):  # (exact times: no spread, no correlation)
            measured = float(np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1])
        correlation = measured if 0.0 < measured < 1.0 else 0.0
    gap_s = float(np.mean(gaps)) if gaps else 0.0
    prefill_gap_s = max(float(np.mean(prefill_gaps)) - gap_s, 0.0) if prefill_gaps else 0.0
    engine = CostModel.from_dict({**model.to_dict(), "name": f"{model.name}+loop",
                                  "fixed_s": model.fixed_s + gap_s,
                                  "per_prefill_iteration_s": model.per_prefill_iteration_s + prefill_gap_s})
    return MachineCosts(model, engine, sigma, correlation, gap_s, prefill_gap_s, int(len(times)), int(stall.sum()))


def parse_server(spec: str) -> tuple[str, str, dict]:
    """``NAME=POLICY[:KEY=VALUE,...]`` -> (name, policy, options), each option typed by its default
    (``parse_option_value``, as the simulator's and the server's flags read them)."""
    name, sep, rest = spec.partition("=")
    policy, _, opts = rest.partition(":")
    name, policy = name.strip(), policy.strip()
    if not sep or not name or not policy:
        raise ValueError(f"--server {spec!r}: expected NAME=POLICY[:KEY=VALUE,...]")
    if policy not in POLICY_NAMES:
        raise ValueError(f"--server {spec!r}: unknown policy {policy!r} (choose from {', '.join(POLICY_NAMES)})")
    options = {}
    for item in filter(None, opts.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--server {spec!r}: option {item!r} is not KEY=VALUE")
        options[key] = parse_option_value(policy, key, value)
    return name, policy, options


def parse_seeds(text: str) -> list[int]:
    """``0-15`` or ``0,3,5``."""
    seeds = []
    for part in filter(None, text.split(",")):
        low, dash, high = part.partition("-")
        seeds.extend(range(int(low), int(high) + 1) if dash else [int(low)])
    if not seeds:
        raise ValueError("--seeds: none given")
    return seeds


def sim_workload(specs: list[load_client.RequestSpec]) -> Workload:
    """cpu_ab.py's requests as the simulator's rows (each asks for exactly its output, as the load
    client does)."""
    outputs = np.array([spec.output_tokens for spec in specs])
    return Workload(arrival_s=np.array([spec.arrival_offset_s for spec in specs]),
                    prompt_tokens=np.array([spec.prompt_tokens for spec in specs]),
                    output_tokens=outputs,
                    ttft_slo_s=np.array([spec.ttft_slo_s for spec in specs]),
                    tpot_slo_s=np.array([spec.tpot_slo_s for spec in specs]),
                    client=np.zeros(len(specs), dtype=int), max_new_tokens=outputs.copy())


def real_attainment(path: str, arrivals: str) -> dict[str, dict[int, float]]:
    """``cpu_ab.py``'s results: per server, per seed, the attainment it measured."""
    report = cpu_ab.read_results(path)
    block = report.get("arrivals", {}).get(arrivals)
    if block is None:
        raise ValueError(f"--real {path}: no {arrivals!r} runs in it")
    out: dict[str, dict[int, float]] = {}
    for row in block["runs"]:
        for name, run in row.items():
            if name != "seed":
                out.setdefault(name, {})[row["seed"]] = run["slo_attainment"]
    return out


def noise_correlation(costs: MachineCosts, args) -> float:
    """The AR(1) correlation the simulated noise gets: the log's own unless ``--noise-correlation``
    gives one (0: independent draws, as before 2026-12-07 afternoon)."""
    return costs.noise_correlation if args.noise_correlation == "measured" else float(args.noise_correlation)


def simulate_seeds(costs: MachineCosts, servers: list[tuple[str, str, dict]], seeds: list[int], args) -> dict:
    """Each server on each seed's workload: ``{name: {seed: attainment}}``."""
    prompts, outputs = load_client.load_trace_lengths(args.trace)
    config = EngineConfig(kv_capacity_tokens=args.kv_capacity_tokens, max_running_requests=args.max_running_requests,
                          max_prefill_tokens=args.max_prefill_tokens, noise_sigma=costs.noise_sigma,
                          noise_correlation=noise_correlation(costs, args), true_cost_model=costs.engine)
    out: dict[str, dict[int, float]] = {name: {} for name, _, _ in servers}
    for seed in seeds:
        specs = load_client.make_workload(prompts, outputs, num_requests=args.requests, rate_rps=args.rate, seed=seed,
                                          length_scale=args.length_scale, ttft_slo_s=args.ttft_slo,
                                          tpot_slo_s=args.tpot_slo, arrival_cv=cpu_ab.ARRIVAL_CV[args.arrivals])
        workload = sim_workload(specs)
        for name, policy, options in servers:
            summary, _ = run_probe(Variant(policy, options=options), workload, costs.model, config, seed=seed,
                                   warmup_fraction=0.0)
            out[name][seed] = summary["attainment"]
    return out


def render(costs: MachineCosts, simulated: dict, real: dict, args) -> str:
    model = costs.model
    lines = [f"Machine from {args.iteration_log}: {costs.iterations} iterations, {costs.stalls} stalls over"
             f" {STALL_FACTOR:g}x their fit (not simulated); noise sigma {costs.noise_sigma:.2f}, lag-1"
             f" correlation {costs.noise_correlation:.2f} (simulated: {noise_correlation(costs, args):.2f}); between"
             f" iterations {costs.gap_s * 1e3:.2f} ms, {costs.prefill_gap_s * 1e3:.2f} ms more before a prefill;"
             f" fitted fixed {model.fixed_s * 1e3:.2f} ms, per new token {model.per_new_token_s * 1e6:.1f} us,"
             f" per prefill iteration {model.per_prefill_iteration_s * 1e3:.2f} ms",
             "", f"{args.arrivals} at {args.rate:g} req/s, {args.requests} requests, TTFT {args.ttft_slo:g} s,"
             f" TPOT {args.tpot_slo:g} s: attainment per seed (simulated, and real where given)", "",
             "| server | " + " | ".join(f"seed {seed}" for seed in args.seeds) + " | median |",
             "|---|" + "---|" * (len(args.seeds) + 1)]
    for name, per_seed in simulated.items():
        cells = [f"{per_seed[seed]:.0%}" for seed in args.seeds]
        lines.append(f"| {name} (sim) | " + " | ".join(cells) + f" | **{statistics.median(per_seed.values()):.0%}** |")
        if name in real:
            measured = [real[name].get(seed) for seed in args.seeds]
            cells = ["" if value is None else f"{value:.0%}" for value in measured]
            known = [value for value in measured if value is not None]
            median = f"**{statistics.median(known):.0%}**" if known else ""
            lines.append(f"| {name} (real) | " + " | ".join(cells) + f" | {median} |")
    return "\n".join(lines)


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iteration-log", required=True, help="a FairBatching server's --fair-iteration-log")
    parser.add_argument("--rate", type=float, required=True, help="req/s")
    parser.add_argument("--arrivals", default="bursty", choices=sorted(cpu_ab.ARRIVAL_CV))
    parser.add_argument("--seeds", default="0-7", help="0-15 or 0,3,5")
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument("--ttft-slo", type=float, required=True, help="seconds")
    parser.add_argument("--tpot-slo", type=float, required=True, help="seconds")
    parser.add_argument("--length-scale", type=float, default=0.125)
    parser.add_argument("--trace", default=str(load_client.default_trace_path()))
    parser.add_argument("--server", action="append", dest="servers", metavar="NAME=POLICY[:KEY=VALUE,...]")
    parser.add_argument("--kv-capacity-tokens", type=int, default=TINY_KV_TOKENS)
    parser.add_argument("--max-running-requests", type=int, default=TINY_SEATS)
    parser.add_argument("--max-prefill-tokens", type=int, default=TINY_PREFILL_TOKENS)
    parser.add_argument("--noise-correlation", default="measured",
                        help="lag-1 correlation of the simulated noise: 'measured' (the log's) or a number in [0, 1)")
    parser.add_argument("--real", help="cpu_ab.py's results.json(.gz) of the same rate, arrivals and seeds")
    parser.add_argument("--out", help="write the figures here (strict JSON)")
    args = parser.parse_args(argv)
    try:
        args.seeds = parse_seeds(args.seeds)
        args.servers = [parse_server(spec) for spec in (args.servers or DEFAULT_SERVERS)]
    except ValueError as exc:
        parser.error(str(exc))
    if args.noise_correlation != "measured":
        try:
            value = float(args.noise_correlation)
        except ValueError:
            value = math.nan
        if not 0 <= value < 1:
            parser.error(f"--noise-correlation must be 'measured' or a number in [0, 1), got {args.noise_correlation!r}")
    for flag in ("rate", "ttft_slo", "tpot_slo", "length_scale"):
        value = getattr(args, flag)
        if not (value > 0 and math.isfinite(value)):
            parser.error(f"--{flag.replace('_', '-')} must be a positive number, got {value}")
    for flag in ("requests", "kv_capacity_tokens", "max_running_requests", "max_prefill_tokens"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        costs = machine_costs(args.iteration_log)
        real = real_attainment(args.real, args.arrivals) if args.real else {}
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"cpu_sim_replay: {exc}") from None
    simulated = simulate_seeds(costs, args.servers, args.seeds, args)
    print(render(costs, simulated, real, args))
    if args.out:
        strict_json.write(args.out, {
            "iteration_log": args.iteration_log, "rate_rps": args.rate, "arrivals": args.arrivals,
            "requests": args.requests, "ttft_slo_s": args.ttft_slo, "tpot_slo_s": args.tpot_slo,
            "machine": {"model": costs.model.to_dict(), "noise_sigma": costs.noise_sigma,
                        "noise_correlation_measured": costs.noise_correlation,
                        "noise_correlation_simulated": noise_correlation(costs, args), "gap_s": costs.gap_s,
                        "prefill_gap_s": costs.prefill_gap_s, "iterations": costs.iterations, "stalls": costs.stalls},
            "servers": {name: {"policy": policy, "options": options} for name, policy, options in args.servers},
            "simulated": {name: {str(seed): value for seed, value in per_seed.items()}
                          for name, per_seed in simulated.items()},
            "real": {name: {str(seed): value for seed, value in per_seed.items()} for name, per_seed in real.items()},
        }, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
