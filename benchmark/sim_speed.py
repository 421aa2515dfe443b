"""Simulator speed: simulated requests per wall-clock second (target >= 2,000 for 10,000 requests on
one replica on a 2-core machine).

    .venv/bin/python benchmark/sim_speed.py                       # fairbatching + sarathi, 10k requests
    .venv/bin/python benchmark/sim_speed.py --profile --policies fairbatching   # cProfile top functions

The rate defaults to 3.5 rps, about 75% of the a100-llama2-7b saturation bound on the Azure
conversation trace (a loaded server: ~25 running decodes per iteration).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))

from sglang_fair.policy import build_policy, load_cost_model  # noqa: E402
from sglang_fair.sim import load_trace, make_workload, shared_dir, simulate, summarize  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default=str(shared_dir() / "traces" / "azure_conv_2023.csv"))
    parser.add_argument("--cost-model", default="a100-llama2-7b")
    parser.add_argument("--num-requests", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=3.5)
    parser.add_argument("--policies", default="fairbatching,sarathi")
    parser.add_argument("--repeats", type=int, default=3, help="runs per policy; the median is reported with the spread (the machine is shared)")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    trace = load_trace(args.trace)
    model = load_cost_model(args.cost_model)
    workload = make_workload(trace, num_requests=args.num_requests, rate_rps=args.rate, seed=0)
    print(f"{'policy':<14}{'requests':>9}{'iterations':>11}{'wall_s':>8}{'req/s':>9}{'req/s min..max':>16}"
          f"{'iter/s':>9}{'plan_us/iter':>13}{'cpu_s':>7}")
    for name in args.policies.split(","):
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            simulate(workload, lambda: build_policy(name, model))
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
            continue
        runs = []
        for _ in range(max(1, args.repeats)):
            cpu = time.process_time()
            result = simulate(workload, lambda: build_policy(name, model))
            runs.append((result.wall_s, result, time.process_time() - cpu))
        runs.sort(key=lambda run: run[0])
        _, result, cpu = runs[len(runs) // 2]  # the median run, not the best one
        rates = f"{len(workload) / runs[-1][0]:.0f}..{len(workload) / runs[0][0]:.0f}"
        s = summarize(result)
        print(f"{name:<14}{len(workload):>9}{result.iterations:>11}{result.wall_s:>8.2f}"
              f"{len(workload) / result.wall_s:>9.0f}{rates:>16}{result.iterations / result.wall_s:>9.0f}"
              f"{s['plan_cpu_us_per_iter']:>13.1f}{cpu:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
