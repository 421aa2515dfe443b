"""Reproduce the simulated comparison of FairBatching with its peers (docs/results-sim.md).

For each scenario and seed it binary-searches every scheduler's capacity (>= 90% of requests meet
TTFT and mean-TPOT SLOs; peers' knobs swept, best reported), then, per seed, runs FairBatching and the
best Sarathi at Sarathi's capacity to compare tail TTFT, and finally draws attainment-vs-rate curves
(a fixed rate grid, seed 0) and TTFT CDFs (PNG, matplotlib Agg).

    .venv/bin/python benchmark/sim_compare.py --seeds 0,1,2            # everything (~15 min, 2 cores)
    .venv/bin/python benchmark/sim_compare.py --scenarios single-2s --seeds 0 --quick

Results: benchmark/results/sim_compare.json, plots: benchmark/plots/sim_*.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))

from sglang_fair import strict_json  # noqa: E402
from sglang_fair.policy import load_cost_model  # noqa: E402
from sglang_fair.sim.capacity import (  # noqa: E402
    Variant,
    default_variants,
    run_probe,
    saturation_rps,
    search_capacity,
)
from sglang_fair.sim.engine import EngineConfig  # noqa: E402
from sglang_fair.sim.plots import plot_attainment_curves, plot_ttft_cdf  # noqa: E402
from sglang_fair.sim.workload import load_trace, make_workload, shared_dir  # noqa: E402

#: name -> (replicas, ttft_slo_s, tpot_slo_s, [(policy, router, admission_control)])
SCENARIOS = {
    "single-2s": (1, 2.0, 0.1, [("fairbatching", "round_robin", False), ("sarathi", "round_robin", False),
                                ("sglang", "round_robin", False)]),
    "single-1s": (1, 1.0, 0.05, [("fairbatching", "round_robin", False), ("sarathi", "round_robin", False),
                                 ("sglang", "round_robin", False)]),
    "cluster4-2s": (4, 2.0, 0.1, [("fairbatching", "pab", False), ("fairbatching", "least_load", False),
                                  ("fairbatching", "round_robin", False), ("sarathi", "round_robin", False),
                                  ("fairbatching", "pab", True)]),
}


def _search(payload):
    scenario, seed, variant, trace_path, model_name, num_requests, upper, ttft, tpot, tolerance, kv = payload
    trace = load_trace(trace_path)
    model = load_cost_model(model_name)
    out = search_capacity(variant, trace, model, EngineConfig(kv_capacity_tokens=kv), ttft_slo_s=ttft, tpot_slo_s=tpot,
                          num_requests=num_requests, seed=seed, upper_rps=upper, tolerance=tolerance)
    return scenario, seed, out


def _probe(payload):
    variant, trace_path, model_name, num_requests, rate, seed, ttft, tpot, kv = payload
    trace = load_trace(trace_path)
    model = load_cost_model(model_name)
    workload = make_workload(trace, num_requests=num_requests, rate_rps=rate, seed=seed,
                             ttft_slo_s=ttft, tpot_slo_s=tpot)
    summary, result = run_probe(variant, workload, model, EngineConfig(kv_capacity_tokens=kv), seed=seed)
    start = result.warmup_requests
    ttft_values = (result.first_token_s[start:] - workload.arrival_s[start:]).tolist()
    return summary, ttft_values


def _label(entry):
    opts = ",".join(f"{k}={v}" for k, v in sorted(entry["options"].items()))
    ac = "+ac" if entry.get("admission_control") else ""
    return f"{entry['policy']}{ac}/{entry['router']}" + (f"[{opts}]" if opts else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default=str(shared_dir() / "traces" / "azure_conv_2023.csv"))
    parser.add_argument("--cost-model", default="a100-llama2-7b")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--num-requests", type=int, default=2000, help="per replica")
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument("--kv-capacity-tokens", type=int, default=EngineConfig.kv_capacity_tokens,
                        help="KV pool per replica (default: Llama-2-7B on an 80 GB A100)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--quick", action="store_true", help="no fixed-grid curves")
    parser.add_argument("--cluster-budgets", default="",
                        help="restrict the Sarathi sweep in cluster scenarios, e.g. 256,512,1024 (default: full sweep)")
    parser.add_argument("--grid-points", type=int, default=11, help="rates on the curve grid (0.5..1.0 x saturation)")
    parser.add_argument("--out", default=str(REPO / "benchmark" / "results" / "sim_compare.json"))
    parser.add_argument("--plots", default=str(REPO / "benchmark" / "plots"))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    scenarios = [s for s in args.scenarios.split(",") if s]
    trace = load_trace(args.trace)
    model = load_cost_model(args.cost_model)
    kv = args.kv_capacity_tokens
    suffix = "" if kv == EngineConfig.kv_capacity_tokens else f"_kv{kv // 1000}k"  # plot names
    started = time.time()

    saturation = {}
    payloads = []
    for name in scenarios:
        replicas, ttft, tpot, members = SCENARIOS[name]
        n = args.num_requests * replicas
        saturation[name] = saturation_rps(trace, n, model, EngineConfig(kv_capacity_tokens=kv), replicas)
        for seed in seeds:
            for policy, router, ac in members:
                variants = default_variants(policy, router, replicas, {}, sweep=True, admission_control=ac)
                if replicas > 1 and args.cluster_budgets and policy == "sarathi":
                    keep = {int(b) for b in args.cluster_budgets.split(",")}
                    variants = [v for v in variants if v.options.get("token_budget") in keep]
                for variant in variants:
                    payloads.append((name, seed, variant, args.trace, args.cost_model, n, saturation[name],
                                     ttft, tpot, args.tolerance, kv))
    print(f"{len(payloads)} capacity searches on {args.jobs} processes", file=sys.stderr)
    searches = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(_search, p) for p in payloads]
        for done, future in enumerate(as_completed(futures), 1):
            searches.append(future.result())
            name, seed, out = searches[-1]
            print(f"[{done}/{len(futures)} {time.time() - started:.0f}s] {name} seed {seed} "
                  f"{_label(out)}: {out['capacity_rps']:.3f} rps", file=sys.stderr)

    report = {"date": "2026-11-22", "trace": os.path.basename(args.trace), "cost_model": args.cost_model,
              "seeds": seeds, "num_requests_per_replica": args.num_requests, "tolerance": args.tolerance,
              "kv_capacity_tokens": kv,
              "scenarios": {}}
    for name in scenarios:
        replicas, ttft, tpot, members = SCENARIOS[name]
        entry = {"replicas": replicas, "ttft_slo_s": ttft, "tpot_slo_s": tpot,
                 "saturation_rps": saturation[name], "schedulers": {}}
        for policy, router, ac in members:
            key = f"{policy}{'+ac' if ac else ''}/{router}"
            per_seed = []
            for seed in seeds:
                group = [o for (s, sd, o) in searches if s == name and sd == seed and o["policy"] == policy
                         and o["router"] == router and o["admission_control"] == ac]
                best = max(group, key=lambda o: o["capacity_rps"])
                per_seed.append({"seed": seed, "capacity_rps": best["capacity_rps"], "options": best["options"],
                                 "ttft_p99_s": best["ttft_p99_s"], "tpot_p99_s": best["tpot_p99_s"],
                                 "sweep": {json.dumps(o["options"], sort_keys=True): o["capacity_rps"] for o in group},
                                 "curve": best["curve"]})
            caps = np.array([p["capacity_rps"] for p in per_seed])
            entry["schedulers"][key] = {"per_seed": per_seed, "capacity_mean_rps": float(caps.mean()),
                                        "capacity_std_rps": float(caps.std(ddof=1)) if len(caps) > 1 else 0.0,
                                        "capacity_min_rps": float(caps.min()), "capacity_max_rps": float(caps.max())}
        report["scenarios"][name] = entry

    # Tail TTFT at Sarathi's capacity (per seed): FairBatching vs the best Sarathi budget.
    probe_payloads = []
    for name in scenarios:
        replicas, ttft, tpot, members = SCENARIOS[name]
        scheds = report["scenarios"][name]["schedulers"]
        if replicas != 1 or "sarathi/round_robin" not in scheds or "fairbatching/round_robin" not in scheds:
            continue
        for i, seed in enumerate(seeds):
            sar = scheds["sarathi/round_robin"]["per_seed"][i]
            for policy, options in (("sarathi", sar["options"]), ("fairbatching", {})):
                probe_payloads.append(((name, seed, policy), (Variant(policy, "round_robin", 1, options),
                                       args.trace, args.cost_model, args.num_requests, sar["capacity_rps"], seed,
                                       ttft, tpot, kv)))
    cdfs: dict = {}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(_probe, p): key for key, p in probe_payloads}
        for future in as_completed(futures):
            name, seed, policy = futures[future]
            summary, ttft_values = future.result()
            at = report["scenarios"][name].setdefault("at_sarathi_capacity", {}).setdefault(str(seed), {})
            at[policy] = {k: summary[k] for k in ("offered_rps", "attainment", "ttft_attainment", "tpot_attainment",
                                                  "envelope_attainment", "ttft_p50_s", "ttft_p99_s", "tpot_p99_s",
                                                  "tbt_p99_s")}
            if seed == seeds[0]:
                cdfs.setdefault(name, {})[policy] = ttft_values
    for name, samples in cdfs.items():
        ttft = SCENARIOS[name][1]
        plot_ttft_cdf(samples, os.path.join(args.plots, f"sim_ttft_cdf_{name}{suffix}.png"), slo_s=ttft,
                      title=f"TTFT CDF at Sarathi's capacity ({name}, seed {seeds[0]})")

    # Attainment vs rate on a fixed grid (seed 0, best variant of each scheduler).
    if not args.quick:
        grid_payloads = []
        for name in scenarios:
            replicas, ttft, tpot, members = SCENARIOS[name]
            sat = saturation[name]
            for key, sched in report["scenarios"][name]["schedulers"].items():
                best = sched["per_seed"][0]
                policy, router = key.split("/")
                ac = policy.endswith("+ac")
                variant = Variant(policy.replace("+ac", ""), router, replicas, best["options"], ac)
                for frac in np.linspace(0.5, 1.0, args.grid_points):
                    grid_payloads.append(((name, key, float(frac * sat)), (variant, args.trace, args.cost_model,
                                          args.num_requests * replicas, float(frac * sat), seeds[0], ttft, tpot,
                                          kv)))
        curves: dict = {}
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = {pool.submit(_probe, p): key for key, p in grid_payloads}
            for future in as_completed(futures):
                name, key, rate = futures[future]
                summary, _ = future.result()
                curves.setdefault(name, {}).setdefault(key, []).append(
                    {"rate_rps": rate, "attainment": summary["attainment"], "ttft_p99_s": summary["ttft_p99_s"],
                     "tpot_attainment": summary["tpot_attainment"]})
        for name, by_key in curves.items():
            results = []
            for key, points in by_key.items():
                sched = report["scenarios"][name]["schedulers"][key]
                policy, router = key.split("/")
                results.append({"policy": policy, "router": router, "replicas": SCENARIOS[name][0],
                                "options": sched["per_seed"][0]["options"],
                                "capacity_rps": sched["per_seed"][0]["capacity_rps"],
                                "curve": sorted(points, key=lambda p: p["rate_rps"])})
                sched["grid_curve_seed0"] = sorted(points, key=lambda p: p["rate_rps"])
            plot_attainment_curves({"saturation_rps": saturation[name], "results": results},
                                   os.path.join(args.plots, f"sim_attainment_{name}{suffix}.png"),
                                   title=f"SLO attainment vs rate ({name}, seed {seeds[0]})")
    report["wall_s"] = time.time() - started
    strict_json.write(args.out, report, indent=1)
    _print_tables(report)
    return 0


def _print_tables(report):
    for name, entry in report["scenarios"].items():
        print(f"\n## {name}: {entry['replicas']} replica(s), TTFT {entry['ttft_slo_s']} s / TPOT {entry['tpot_slo_s']} s,"
              f" saturation {entry['saturation_rps']:.3f} rps")
        print("| scheduler | capacity rps (mean ± sd) | min-max | per seed (best setting) |")
        print("|---|---|---|---|")
        for key, s in entry["schedulers"].items():
            seeds = "; ".join(f"{p['capacity_rps']:.2f} ({','.join(f'{k}={v}' for k, v in sorted(p['options'].items())) or 'default'})"
                              for p in s["per_seed"])
            print(f"| {key} | {s['capacity_mean_rps']:.3f} ± {s['capacity_std_rps']:.3f} | "
                  f"{s['capacity_min_rps']:.2f}-{s['capacity_max_rps']:.2f} | {seeds} |")
        if "at_sarathi_capacity" in entry:
            print("\n| seed | policy | rate | attainment | TTFT att. | TPOT att. | TTFT p50 | TTFT p99 | TPOT p99 |")
            print("|---|---|---|---|---|---|---|---|---|")
            for seed, by_policy in sorted(entry["at_sarathi_capacity"].items()):
                for policy, m in sorted(by_policy.items()):
                    print(f"| {seed} | {policy} | {m['offered_rps']:.2f} | {m['attainment']:.3f} | {m['ttft_attainment']:.3f} | "
                          f"{m['tpot_attainment']:.3f} | {m['ttft_p50_s']:.2f} | {m['ttft_p99_s']:.2f} | {m['tpot_p99_s']:.3f} |")


if __name__ == "__main__":
    sys.exit(main())
