"""Scheduler CPU time per iteration: stock SGLang batching vs a sglang_fair policy, in process.

Builds SGLang's real Scheduler (as FairScheduler) on the tiny CPU model, fills it with N running
decodes, and steps it by hand.  Each iteration a short request arrives (so the prefill path, where
the policy plans, runs every step) and the forward itself (``run_batch``) is excluded: the number
is the CPU time of ``get_next_batch_to_run`` + ``process_batch_result`` (thread CPU time, so the
other engineers' load on the machine does not count), which is where the policy's planning, the
view, the R/K split and the record keeping happen.

    .venv/bin/python benchmark/sched_overhead.py --running 64 256 --iterations 150 --repeats 3

Prints one JSON line per (policy, running) with median/min/max over repeats of the per-iteration
mean, and the ratio to stock; then the same per batch kind (``decode_*``, ``extend_*``: iterations
counted, median ms, ratio to stock's same kind), because under arrivals stock and a mixing policy
run different batches and only a same-kind ratio measures overhead.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from sglang_fair.runtime.inproc import build_scheduler, make_req

from sglang_fair import strict_json  # noqa: E402


def measure(scheduler, running: int, iterations: int, warmup: int, tag: str, arrivals: int = 1):
    """Mean scheduler CPU seconds per iteration with ``running`` decodes in flight, and per batch
    kind ``{"decode" | "extend": (iterations, mean seconds)}``.

    Per kind because stock prefill-first and a mixing policy run different batches under arrivals
    (the prompt alone vs the prompt beside every decode): only same-kind means compare overhead.
    """
    # Long enough to stay running through the measurement, short enough that SGLang's KV
    # reservation for their remaining tokens does not block the arrivals.
    reqs = [make_req(f"{tag}-run{i}", 16, warmup + iterations + 400) for i in range(running)]
    for req in reqs:
        scheduler._add_request_to_queue(req)
    # admit them all (prefill in chunks) before measuring
    for _ in range(200):
        if len(scheduler.running_batch.reqs) + (len(scheduler.last_batch.reqs) if scheduler.last_batch else 0) >= running and not scheduler.waiting_queue:
            break
        _step(scheduler)
    total_cpu_s = 0.0
    counted = 0
    per_kind: dict[str, list[float]] = {}
    for it in range(warmup + iterations):
        for k in range(arrivals):
            scheduler._add_request_to_queue(make_req(f"{tag}-new{it}-{k}", 24, 2))
        stepped = _step(scheduler)
        if it >= warmup and stepped is not None:
            cpu_s, kind = stepped
            total_cpu_s += cpu_s
            counted += 1
            per_kind.setdefault(kind, []).append(cpu_s)
    # finish: abort the long runners so the next measurement starts clean
    from sglang.srt.managers.io_struct import AbortReq

    scheduler.abort_request(AbortReq(abort_all=True))
    for _ in range(50):
        if _step(scheduler) is None and not scheduler.running_batch.reqs and not scheduler.waiting_queue:
            break
    kinds = {kind: (len(values), sum(values) / len(values)) for kind, values in per_kind.items()}
    return total_cpu_s / max(counted, 1), kinds


def _step(scheduler):
    t0 = time.thread_time()
    plan = scheduler.get_next_batch_to_run(running_batch=scheduler.running_batch, last_batch=scheduler.last_batch)
    scheduler.running_batch = plan.running_batch
    batch = plan.batch_to_run
    scheduler.cur_batch_for_debug = batch  # as event_loop_normal sets it
    t1 = time.thread_time()
    if batch:
        result = scheduler.run_batch(batch)
        t2 = time.thread_time()
        scheduler.process_batch_result(batch, result)
        t3 = time.thread_time()
    else:
        t2 = t3 = time.thread_time()
        scheduler.on_idle()
    scheduler.last_batch = batch
    if batch is None:
        return None
    # a mixed batch runs in extend mode: it counts as extend, like a prefill-only one
    return (t1 - t0) + (t3 - t2), "decode" if batch.forward_mode.is_decode() else "extend"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--policies",
        nargs="+",
        default=["sglang", "sglang-mixed", "fairbatching"],
        help="sglang-mixed = stock with --enable-mixed-chunk (SGLang's own decode+prefill batches)",
    )
    parser.add_argument("--arrivals", type=int, default=1, help="new short requests per iteration")
    parser.add_argument("--running", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    max_running = max(args.running) + 64
    results: dict[tuple[str, int], list[float]] = {}
    kind_results: dict[tuple[str, int, str], list[tuple[int, float]]] = {}
    # Rounds interleave the policies (alternating their order, a fresh scheduler each), so the
    # host's drift over minutes (it reaches 1.4x on the project's VM) falls on every policy alike.
    for repeat in range(args.repeats):
        order = args.policies if repeat % 2 == 0 else list(reversed(args.policies))
        for name in order:
            policy = "sglang" if name == "sglang-mixed" else name
            scheduler = build_scheduler(
                policy,
                max_total_tokens=max_running * 1200,
                chunked_prefill_size=2048,
                max_running_requests=max_running,
                enable_mixed_chunk=name == "sglang-mixed",
                ttft_slo_s=5.0,
                tpot_slo_s=0.5,
            )
            for running in args.running:
                mean_s, kinds = measure(
                    scheduler, running, args.iterations, args.warmup, f"{name}-{running}-{repeat}", args.arrivals
                )
                results.setdefault((name, running), []).append(mean_s)
                for kind, count_and_mean in kinds.items():
                    kind_results.setdefault((name, running, kind), []).append(count_and_mean)
                print(f"# {name} running={running} repeat={repeat}: {mean_s * 1e3:.3f} ms/iter", file=sys.stderr)
            del scheduler
    for (name, running), values in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        row = {
            "policy": name,
            "running": running,
            "arrivals_per_iteration": args.arrivals,
            "median_ms": round(statistics.median(values) * 1e3, 4),
            "min_ms": round(min(values) * 1e3, 4),
            "max_ms": round(max(values) * 1e3, 4),
            "repeats": len(values),
            "iterations": args.iterations,
        }
        for base in ("sglang", "sglang-mixed"):
            stock = results.get((base, running))
            if stock and name != base:
                row[f"ratio_to_{base}"] = round(statistics.median(values) / statistics.median(stock), 3)
        for kind in ("decode", "extend"):
            measured = kind_results.get((name, running, kind))
            if not measured:
                continue
            row[f"{kind}_iterations"] = sum(count for count, _ in measured)
            row[f"{kind}_median_ms"] = round(statistics.median(mean for _, mean in measured) * 1e3, 4)
            stock = kind_results.get(("sglang", running, kind))
            if stock and name != "sglang":
                stock_ms = statistics.median(mean for _, mean in stock) * 1e3
                row[f"{kind}_ratio_to_sglang"] = round(row[f"{kind}_median_ms"] / stock_ms, 3)
        print(strict_json.dumps(row, indent=None))

if __name__ == "__main__":
    main()
