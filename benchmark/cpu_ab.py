"""Interleaved A/B of CPU servers on the same seeds: the comparison behind a policy change.

On a noisy 2-core machine one run of a server is one sample, and stock's own attainment on the
same seed moves by 15 points between runs, so a change is judged by several servers started
together and driven seed by seed in turn (server A seed 0, B seed 0, ..., A seed 1, ...), each
run the same workload at a fixed rate::

    .venv/bin/python benchmark/cpu_ab.py --rate 12 --arrivals bursty --seeds 0,1,2,3,4,5,6,7 \\
        --ttft-slo 0.136 --tpot-slo 0.017 \\
        --server "stock=--batch-policy sglang --chunked-prefill-size 512 --enable-mixed-chunk" \\
        --server "fair=--batch-policy fairbatching --fair-ttft-slo {ttft} --fair-tpot-slo {tpot}"

Each ``--server NAME=FLAGS`` is a ``python -m sglang_fair.launch_server`` command line (the model
flags are added; ``{ttft}`` and ``{tpot}`` stand for the SLOs); the default pair is the two above,
stock SGLang and the README's FairBatching command.  A server may run another checkout of the
package with ``NAME@PATH=FLAGS`` (``PATH`` goes first on its ``PYTHONPATH``: a git worktree's
``python/`` folder).  Each server's code is recorded (the checkout's commit, and the files under
its ``python/`` that differ from it: a server without ``@PATH`` runs this checkout's working tree,
uncommitted edits included, which is named and warned about).  ``--server-env NAME:KEY=VALUE`` sets an
environment variable for one server's processes (e.g. ``OMP_WAIT_POLICY=passive``); it is recorded
with the server and written before its command.  Reported per arrival process: each
server's attainment per seed (TTFT and mean TPOT both met), the median, the share that met TTFT and
the share that met TPOT each on its own (which SLO the misses miss), P99 TTFT, P99 TBT (inter-token
gap) and P99 per-request TPOT (medians over seeds), and runs under 50% where the first server met
>= 90% (collapses).  With
``--per-request`` every request's outcome is kept in results.json and the misses are counted by
output length (a mean TPOT over a few gaps is missed by one late gap).  Where a server keeps SLO
counters of its own (``GET /fair/state``: FairBatching; stock batching keeps none), each run's are
kept beside the client's, and the TTFTs met by the scheduler's clock (from its receipt of the
request to its first token) are compared with the client's: the difference is lost outside the
scheduler (tokenizer, detokenizer, HTTP), where the policy cannot see it.  Servers run with SGLang's
``--enable-metrics`` (add it to each server's flags) stamp each request's receipt and first token,
and with ``--per-request`` the TTFT is split into its legs for every server, stock included: send to
the HTTP server's receipt, receipt to first token at the HTTP server, back to the client; the
client's TTFT misses the HTTP server met were lost on the way in or out.  Each server's CPU seconds
are read by process around every run (scheduler, detokenizer, HTTP server and tokenizer): on two
cores they share the machine with each other and with this load client.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_user_bench as bench  # noqa: E402
import load_client  # noqa: E402

ARRIVAL_CV = {"poisson": 1.0, "bursty": 3.0}
DEFAULT_SERVERS = (
    "stock=--batch-policy sglang --chunked-prefill-size 512 --enable-mixed-chunk",
    "fair=--batch-policy fairbatching --fair-ttft-slo {ttft} --fair-tpot-slo {tpot}",
)
REPORTED = ("slo_attainment", "ttft_attainment", "tpot_attainment", "ttft_p99_s", "itl_p99_s", "tpot_p99_s")


def parse_server(spec: str, ttft_slo_s: float, tpot_slo_s: float) -> tuple[str, str | None, list[str]]:
    """``NAME[@PYTHONPATH]=FLAGS`` -> (name, pythonpath or None, flags with the SLOs filled in)."""
    head, sep, flags = spec.partition("=")
    name, _, python_path = head.partition("@")
    if not sep or not name.strip():
        raise ValueError(f"--server {spec!r}: expected NAME=FLAGS or NAME@PYTHONPATH=FLAGS")
    if "/" in name or name.strip() != name:
        raise ValueError(f"--server {spec!r}: the name must be a plain word (it names the log file)")
    filled = flags.replace("{ttft}", repr(ttft_slo_s)).replace("{tpot}", repr(tpot_slo_s))
    return name, python_path or None, shlex.split(filled)


def parse_server_env(specs: list[str], names: list[str]) -> dict[str, dict[str, str]]:
    """``NAME:KEY=VALUE`` items -> {server name: {KEY: VALUE}}, every name one of ``names``."""
    out: dict[str, dict[str, str]] = {}
    for spec in specs:
        name, colon, assignment = spec.partition(":")
        key, equals, value = assignment.partition("=")
        if not colon or not equals or not key:
            raise ValueError(f"--server-env {spec!r}: expected NAME:KEY=VALUE")
        if name not in names:
            raise ValueError(f"--server-env {spec!r}: no server named {name!r} (servers: {', '.join(names)})")
        out.setdefault(name, {})[key] = value
    return out


def read_results(path: str) -> dict:
    """A round's ``results.json`` as this script wrote it (gzipped if the name ends in ``.gz``, as
    the committed rounds are)."""
    with (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8") as handle:
        return json.load(handle)


def summarize(names: list[str], runs: list[dict]) -> dict:
    """Per server: attainment per seed and the medians over seeds of :data:`REPORTED`; collapses
    counted against the first server (a run under 50% on a seed where it met >= 90%)."""
    reference = names[0]
    out = {}
    for name in names:
        median = {}
        for key in REPORTED:
            values = [run[name].get(key, math.nan) for run in runs]
            values = [value for value in values if value == value]  # no NaN
            median[key] = statistics.median(values) if values else float("nan")
        out[name] = {
            "attainment_per_seed": [run[name]["slo_attainment"] for run in runs],
            "median": median,
            "collapses": sum(bench.is_collapse(run[name]["slo_attainment"], run[reference]["slo_attainment"])
                             for run in runs),
        }
    return out


#: Output-length bins of the per-request miss table (upper bound in tokens, label): a mean TPOT over
#: few gaps is missed by one late gap.
OUTPUT_BINS = ((4, "1-4"), (16, "5-16"), (64, "17-64"), (math.inf, "> 64"))


def misses_by_output(names: list[str], runs: list[dict]) -> dict:
    """With ``--per-request``: per server and output-length bin, the requests, those that missed
    their TTFT, and those that met it but missed their TPOT."""
    out = {}
    for name in names:
        bins = {label: {"requests": 0, "ttft_missed": 0, "tpot_missed_only": 0} for _, label in OUTPUT_BINS}
        for run in runs:
            detail = run[name].get("requests_detail")
            if detail is None:
                return {}
            for row in detail["rows"]:
                request = dict(zip(detail["columns"], row))
                counts = bins[next(label for bound, label in OUTPUT_BINS if request["output_tokens"] <= bound)]
                counts["requests"] += 1
                counts["ttft_missed"] += not request["ttft_met"]
                counts["tpot_missed_only"] += request["ttft_met"] and not request["tpot_met"]
        out[name] = bins
    return out


def ttft_path(names: list[str], runs: list[dict], ttft_slo_s: float) -> dict:
    """With ``--per-request`` and servers run with ``--enable-metrics``: per server, over all seeds,
    the median of each leg of the TTFT (send to the HTTP server's receipt; receipt to the HTTP
    server holding the first token; back to the client), and the TTFTs missed by the client's clock
    that the HTTP server met by its own (lost on the way in or out, where no scheduler sees)."""
    out = {}
    for name in names:
        legs: dict[str, list[float]] = {"to_server_s": [], "server_ttft_s": [], "back_to_client_s": []}
        missed = missed_outside = 0
        for run in runs:
            detail = run[name].get("requests_detail")
            if detail is None or "server_ttft_s" not in detail["columns"]:
                break
            for row in detail["rows"]:
                request = dict(zip(detail["columns"], row))
                to_server, in_server, ttft = request["to_server_s"], request["server_ttft_s"], request["ttft_s"]
                if not all(map(math.isfinite, (to_server, in_server, ttft))):
                    continue
                legs["to_server_s"].append(to_server)
                legs["server_ttft_s"].append(in_server)
                legs["back_to_client_s"].append(ttft - to_server - in_server)
                if not request["ttft_met"]:
                    missed += 1
                    missed_outside += in_server <= ttft_slo_s
        if legs["server_ttft_s"]:
            out[name] = {"requests": len(legs["server_ttft_s"]),
                         **{f"{leg}_p50": statistics.median(values) for leg, values in legs.items()},
                         **{f"{leg}_p90": float(np.percentile(values, 90)) for leg, values in legs.items()},
                         "ttft_missed": missed, "ttft_missed_server_met": missed_outside}
    return out


#: The counters of a server's ``/fair/state`` SLO block that a run's are the difference of.
SERVER_COUNTERS = ("finished", "met_ttft", "met_tpot", "met_both")


def server_slo(url: str) -> dict | None:
    """A server's own SLO counters (``GET /fair/state``, summed over its data-parallel ranks), or
    ``None`` when it has no such endpoint or counts nothing (stock batching keeps no records)."""
    import requests

    try:
        return slo_counters(requests.get(f"{url}/fair/state", timeout=10).json())
    except (requests.RequestException, ValueError):
        return None


def slo_counters(state: dict) -> dict | None:
    """The SLO counters of a ``GET /fair/state`` answer, summed over its ranks (each rank's are in
    its ``runtime`` block); ``None`` if it has none."""
    try:
        ranks = [rank.get("runtime", rank) for rank in state["dp_ranks"]]
        return {key: sum(int(rank["slo"][key]) for rank in ranks) for key in SERVER_COUNTERS}
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def server_run_slo(before: dict | None, after: dict | None) -> dict | None:
    """One run's server-side counts: the difference of the counters around it (None if either
    read failed or the server finished nothing, as stock batching, which keeps no records)."""
    if before is None or after is None:
        return None
    run = {key: after[key] - before[key] for key in SERVER_COUNTERS}
    return run if run["finished"] > 0 else None


def server_vs_client(names: list[str], runs: list[dict]) -> dict:
    """Per server with counters of its own, over all seeds: requests it finished, TTFTs met by its
    clock and by the client's, and both SLOs met by each."""
    out = {}
    for name in names:
        rows = [run[name] for run in runs if run[name].get("server_slo")]
        if not rows:
            continue
        out[name] = {
            "runs": len(rows),
            "server_finished": sum(row["server_slo"]["finished"] for row in rows),
            "server_met_ttft": sum(row["server_slo"]["met_ttft"] for row in rows),
            "server_met_both": sum(row["server_slo"]["met_both"] for row in rows),
            "client_requests": sum(row["requests"] for row in rows),
            "client_met_ttft": sum(round(row["ttft_attainment"] * row["requests"]) for row in rows),
            "client_met_both": sum(round(row["slo_attainment"] * row["requests"]) for row in rows),
        }
    return out


def process_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) a server's processes have used so far, summed by process title
    (SGLang names its scheduler and detokenizer processes; the first is the HTTP server and tokenizer)."""
    import psutil

    out: dict[str, float] = {}
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return out
    for process in processes:
        try:
            title = "http+tokenizer" if process.pid == pid else process.name()
            times = process.cpu_times()
        except psutil.Error:
            continue
        out[title] = out.get(title, 0.0) + times.user + times.system
    return out


def run_cpu_seconds(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """One run's CPU seconds by process title: the difference of the readings around it."""
    return {title: round(after[title] - before.get(title, 0.0), 3) for title in after}


def cpu_by_process(names: list[str], runs: list[dict]) -> dict:
    """Per server, the CPU seconds of each of its processes summed over the runs, and the runs' wall
    seconds: on two cores the scheduler's forward (two threads) shares the machine with SGLang's
    tokenizer and detokenizer processes and the load client."""
    out = {}
    for name in names:
        totals: dict[str, float] = {}
        for run in runs:
            for title, seconds in run[name].get("cpu_s", {}).items():
                totals[title] = round(totals.get(title, 0.0) + seconds, 3)
        out[name] = {"wall_s": round(sum(run[name]["duration_s"] for run in runs), 3), "cpu_s": totals}
    return out


def code_identity(python_path: str | None) -> dict:
    """The code a server runs: the commit of the checkout its package comes from (``python_path``'s,
    else this one's) and the files under that ``python/`` folder that differ from it."""
    folder = Path(python_path) if python_path else Path(__file__).resolve().parents[1] / "python"

    def git(*args) -> str:
        try:
            return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                                  timeout=30, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
    commit = git("rev-parse", "--short", "HEAD").strip() or None
    modified = sorted(line[3:] for line in git("status", "--porcelain", "--", ".").splitlines()
                      if line[3:].endswith(".py"))
    return {"commit": commit, "modified": modified}


def render(report: dict) -> str:
    lines = [f"Interleaved A/B ({report['date_utc']}; load at start {report['load_start']['uptime']!r}, at end"
             f" {report['load_end']['uptime']!r}): {report['model']}, {report['requests']} requests a run,"
             f" SLOs TTFT {report['ttft_slo_s']} s, TPOT {report['tpot_slo_s']} s"]
    for name, server in report["servers"].items():
        code = server.get("code") or {}
        changed = f", with uncommitted edits to {', '.join(code['modified'])}" if code.get("modified") else ""
        where = f" (code: {code.get('commit') or 'unknown commit'}{changed})" if code else ""
        lines.append(f"- {name}: `{server['command']}`{where}")
    for arrival, block in report["arrivals"].items():
        lines += ["", f"{arrival} at {block['rate_rps']} req/s, seeds {', '.join(map(str, block['seeds']))}:", "",
                  "| server | attainment per seed | median | TTFT / TPOT met | P99 TTFT s | P99 TBT ms | P99 TPOT ms |"
                  " collapses |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, row in block["summary"].items():
            m = row["median"]
            per_seed = ", ".join(f"{100 * a:.0f}" for a in row["attainment_per_seed"])
            lines.append(f"| {name} | {per_seed}% | **{100 * m['slo_attainment']:.0f}%** |"
                         f" {100 * m['ttft_attainment']:.0f} / {100 * m['tpot_attainment']:.0f}% | {m['ttft_p99_s']:.2f} |"
                         f" {1000 * m['itl_p99_s']:.0f} | {1000 * m['tpot_p99_s']:.0f} | {row['collapses']} |")
        misses = block.get("misses_by_output")
        if misses:
            lines += ["", "Misses by output length (all seeds): requests, TTFT missed, TPOT missed with TTFT met:", "",
                      "| output tokens | " + " | ".join(misses) + " |", "|---|" + "---|" * len(misses)]
            for _, label in OUTPUT_BINS:
                lines.append(f"| {label} | " + " | ".join(
                    f"{c['requests']}, {c['ttft_missed']}, {c['tpot_missed_only']}"
                    for c in (misses[name][label] for name in misses)) + " |")
        verdicts = block.get("server_vs_client")
        if verdicts:
            lines += ["", "The scheduler's own verdicts (its clock: receipt to first token) beside the client's,"
                      " all seeds:", "",
                      "| server | runs | finished | TTFT met: scheduler / client | both met: scheduler / client |",
                      "|---|---|---|---|---|"]
            for name, v in verdicts.items():
                lines.append(f"| {name} | {v['runs']} | {v['server_finished']} | {v['server_met_ttft']} /"
                             f" {v['client_met_ttft']} | {v['server_met_both']} / {v['client_met_both']} |")
        path = block.get("ttft_path")
        if path:
            lines += ["", "Where the TTFT goes (servers run with `--enable-metrics`; medians / P90 over all requests,"
                      " ms): send to the HTTP server's receipt, receipt to the HTTP server holding the first token,"
                      " back to the client; and the TTFTs the client saw missed that the HTTP server met:", "",
                      "| server | to server | in server | back to client | TTFT missed | of them met in server |",
                      "|---|---|---|---|---|---|"]
            for name, leg in path.items():
                lines.append(f"| {name} | " + " | ".join(
                    f"{1000 * leg[key + '_p50']:.1f} / {1000 * leg[key + '_p90']:.1f}"
                    for key in ("to_server_s", "server_ttft_s", "back_to_client_s"))
                    + f" | {leg['ttft_missed']} | {leg['ttft_missed_server_met']} |")
        cpu = block.get("cpu_s")
        if cpu and any(row["cpu_s"] for row in cpu.values()):
            titles = sorted({title for row in cpu.values() for title in row["cpu_s"]})
            lines += ["", "CPU seconds by process, all seeds (the machine has "
                      f"{os.cpu_count()} cores):", "",
                      "| server | wall s | " + " | ".join(titles) + " |", "|---|---|" + "---|" * len(titles)]
            for name, row in cpu.items():
                lines.append(f"| {name} | {row['wall_s']:.1f} | "
                             + " | ".join(f"{row['cpu_s'].get(title, 0.0):.1f}" for title in titles) + " |")
    return "\n".join(lines)


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cpu_ab.py", description=__doc__.splitlines()[0])
    parser.add_argument("--server", action="append", default=None, metavar="NAME[@PYTHONPATH]=FLAGS",
                        help="a server to compare (repeat; the first is the reference for collapses)")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME:KEY=VALUE",
                        help="an environment variable for one server's processes (repeat), e.g. "
                             "fair:OMP_WAIT_POLICY=passive")
    parser.add_argument("--rate", type=float, required=True, help="req/s, the same for every server")
    parser.add_argument("--arrivals", default="poisson,bursty", help="poisson (gamma CV 1), bursty (CV 3)")
    parser.add_argument("--seeds", default="0,1,2,3,4,5,6,7")
    parser.add_argument("--requests", type=int, default=240, help="requests a run")
    parser.add_argument("--ttft-slo", type=float, required=True, help="seconds")
    parser.add_argument("--tpot-slo", type=float, required=True, help="seconds")
    parser.add_argument("--model", default="tiny", help="tiny or bench (cpu_user_bench's shapes)")
    parser.add_argument("--length-scale", type=float, default=0.125, help="factor on the trace's lengths")
    parser.add_argument("--drain-timeout", type=float, default=120.0,
                        help="seconds after the last arrival before unfinished requests are cancelled")
    parser.add_argument("--trace", default=str(load_client.default_trace_path()))
    parser.add_argument("--out-dir", default=None)
    parser.add_argument("--start-timeout", type=float, default=600.0)
    parser.add_argument("--per-request", action="store_true",
                        help="keep every request's outcome in results.json (which requests missed which SLO)")
    args = parser.parse_args(argv)
    args.arrivals = args.arrivals.split(",")
    unknown = [a for a in args.arrivals if a not in ARRIVAL_CV]
    if unknown:
        parser.error(f"--arrivals: unknown {unknown} (poisson, bursty)")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if not args.rate > 0 or args.requests < 1 or not args.ttft_slo > 0 or not args.tpot_slo > 0:
        parser.error("--rate, --requests, --ttft-slo and --tpot-slo must be positive")
    try:
        args.servers = [parse_server(s, args.ttft_slo, args.tpot_slo) for s in (args.server or DEFAULT_SERVERS)]
    except ValueError as exc:
        parser.error(str(exc))
    names = [name for name, _, _ in args.servers]
    if len(set(names)) != len(names):
        parser.error(f"--server names must differ: {names}")
    try:
        args.server_env = parse_server_env(args.server_env, names)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out_dir = bench.output_dir(args.out_dir, "ab")
    prompts, outputs = load_client.load_trace_lengths(args.trace)
    model = bench.model_shape(args.model, out_dir)
    base_env = {**os.environ, "SGLANG_FAIR_CALIBRATION_CACHE": str(out_dir / "calibration-cache")}
    started = []
    report = {"date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join([Path(bench.PYTHON).name, *map(shlex.quote, sys.argv)]),
              "load_start": bench.machine_load(), "model": model.name, "model_description": model.description,
              "requests": args.requests, "ttft_slo_s": args.ttft_slo, "tpot_slo_s": args.tpot_slo,
              "length_scale": args.length_scale, "servers": {}, "arrivals": {}}
    try:
        for name, python_path, flags in args.servers:
            server = bench.Server(name, flags)
            env = {**base_env, **args.server_env.get(name, {})}
            if python_path:
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [python_path, env.get("PYTHONPATH")]))
            bench.launch(server, model, out_dir, env)
            started.append(server)
            code = code_identity(python_path)
            if code["modified"]:
                print(f"[ab] warning: {name} runs uncommitted edits to {', '.join(code['modified'])}", flush=True)
            report["servers"][name] = {"flags": flags, "pythonpath": python_path, "code": code,
                                       "env": args.server_env.get(name, {}),
                                       "command": shlex.join([*(f"{key}={value}" for key, value
                                                                in args.server_env.get(name, {}).items()),
                                                              "python", "-m", "sglang_fair.launch_server", *flags])}
        for server in started:
            bench.wait_ready(server, args.start_timeout)
            report["servers"][server.name]["startup_s"] = server.startup_s
            print(f"[ab] {server.name} ready in {server.startup_s:.1f} s", flush=True)
        workload = dict(prompts=prompts, outputs=outputs, length_scale=args.length_scale,
                        ttft_slo_s=args.ttft_slo, tpot_slo_s=args.tpot_slo)
        bench.warm_up(started, {**workload, "rate_rps": 1.0}, model.vocab_size)
        names = [server.name for server in started]
        runs = {arrival: [] for arrival in args.arrivals}
        for seed in args.seeds:
            for arrival in args.arrivals:
                specs = load_client.make_workload(**workload, num_requests=args.requests, rate_rps=args.rate,
                                                  seed=seed, arrival_cv=ARRIVAL_CV[arrival])
                row = {"seed": seed}
                for server in started:  # interleaved: every server on this seed before the next seed
                    before = server_slo(server.url)
                    cpu_before = process_cpu_seconds(server.process.pid)
                    row[server.name] = bench.run_once(server, specs, seed, model.vocab_size, args.drain_timeout,
                                                      f"{arrival} seed {seed} {server.name}", args.per_request)
                    row[server.name]["server_slo"] = server_run_slo(before, server_slo(server.url))
                    row[server.name]["cpu_s"] = run_cpu_seconds(cpu_before, process_cpu_seconds(server.process.pid))
                runs[arrival].append(row)
                print(f"[ab] {arrival} seed {seed}: " + ", ".join(
                    f"{name} {row[name]['slo_attainment']:.0%}" for name in names), flush=True)
        for arrival, rows in runs.items():
            report["arrivals"][arrival] = {"rate_rps": args.rate, "arrival_cv": ARRIVAL_CV[arrival],
                                           "seeds": args.seeds, "runs": rows, "summary": summarize(names, rows),
                                           "misses_by_output": misses_by_output(names, rows),
                                           "server_vs_client": server_vs_client(names, rows),
                                           "ttft_path": ttft_path(names, rows, args.ttft_slo),
                                           "cpu_s": cpu_by_process(names, rows)}
    finally:
        for server in started:
            bench.stop(server)
    report["load_end"] = bench.machine_load()
    bench.write_results(out_dir, report, render(report), "ab")
    return 0


if __name__ == "__main__":
    sys.exit(main())
