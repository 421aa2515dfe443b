"""Simulator speed: simulated requests per wall-clock second, for the whole process (interpreter
start, imports, trace, simulation), the way a user runs ``python -m sglang_fair.sim``.

    .venv/bin/python benchmark/sim_speed.py                  # fairbatching + sarathi, 10k requests, 5 runs
    .venv/bin/python benchmark/sim_speed.py --profile --policies fairbatching   # where the time goes

The target (the honest-capacity issue): >= 5,000 requests per second for 10,000 requests of
FairBatching on one replica, a100-llama2-7b, Azure conversation, 4 rps, median of 5 runs, on a quiet
2-core machine.  Each run is a fresh process; the report gives the median, the range and the
machine's load average, because on a shared machine the spread is the measurement's.  Each run's
CPU time (user + system, from ``getrusage``) is given too: on a loaded machine it is what the
process itself cost, where its wall time also counts the waits for a core.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _one(args) -> None:
    """One simulation in this process (what each timed subprocess runs)."""
    sys.path.insert(0, str(REPO / "python"))
    from sglang_fair.policy import build_policy, load_cost_model
    from sglang_fair.sim import load_trace, make_workload, shared_dir, simulate

    trace = load_trace(args.trace or shared_dir() / "traces" / "azure_conv_2023.csv")
    model = load_cost_model(args.cost_model)
    workload = make_workload(trace, num_requests=args.num_requests, rate_rps=args.rate, seed=0)
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
    result = simulate(workload, lambda: build_policy(args.one, model))
    if args.profile:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
    print(f"{result.iterations} {result.wall_s:.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default=None, help="default: ../shared/traces/azure_conv_2023.csv")
    parser.add_argument("--cost-model", default="a100-llama2-7b")
    parser.add_argument("--num-requests", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=4.0)
    parser.add_argument("--policies", default="fairbatching,sarathi")
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per policy; the median is reported")
    parser.add_argument("--profile", action="store_true", help="one in-process run per policy under cProfile")
    parser.add_argument("--one", default=None, metavar="POLICY",
                        help="run one simulation of POLICY in this process and print its iterations and seconds"
                             " (what each timed run executes; e.g. under valgrind)")
    args = parser.parse_args()
    if args.one:
        _one(args)
        return 0
    if args.profile:
        for name in args.policies.split(","):
            args.one = name
            _one(args)
        return 0
    print(f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, {args.num_requests} requests at {args.rate} rps, "
          f"{args.cost_model}")
    print(f"{'policy':<14}{'iterations':>11}{'process_s':>10}{'req/s':>8}{'min..max req/s':>16}{'sim loop s':>11}"
          f"{'cpu_s':>7}{'req/cpu-s':>10}")
    for name in args.policies.split(","):
        runs = []
        for _ in range(max(1, args.repeats)):
            command = [sys.executable, __file__, "--one", name, "--cost-model", args.cost_model,
                       "--num-requests", str(args.num_requests), "--rate", str(args.rate)]
            if args.trace:
                command += ["--trace", args.trace]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()
            wall_s = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            runs.append((wall_s, int(output[0]), float(output[1]), cpu_s))
        runs.sort()
        process_s, iterations, loop_s, _ = runs[len(runs) // 2]
        cpu_s = statistics.median(r[3] for r in runs)
        rates = f"{args.num_requests / runs[-1][0]:.0f}..{args.num_requests / runs[0][0]:.0f}"
        print(f"{name:<14}{iterations:>11}{process_s:>10.2f}{args.num_requests / process_s:>8.0f}{rates:>16}"
              f"{statistics.median(r[2] for r in runs):>11.2f}{cpu_s:>7.2f}{args.num_requests / cpu_s:>10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
