"""The side by side a user would run, and the overload drain check, on CPU.

Both launch every server exactly as a user would: ``python -m sglang_fair.launch_server`` with the
model flags, ``--batch-policy sglang`` plus the chunk flags being swept for stock SGLang, and for
FairBatching only ``--batch-policy fairbatching --fair-ttft-slo X --fair-tpot-slo Y`` (the README's
command: no ``--cost-model``, so it calibrates itself at start-up; its calibration, read from
``/fair/state``, is in the results).  Run through ``benchmark/cpu_side_by_side.py``:

    python benchmark/cpu_side_by_side.py --mode user            # tiny default model and the larger shape
    python benchmark/cpu_side_by_side.py --mode user --models bench --seeds 0,1,2,3,4
    python benchmark/cpu_side_by_side.py --mode drain --burst 200

**SLO rule** (both modes): measured on a stock server (the largest chunk swept, mixed chunk on) over
HTTP, the fastest of 3 passes: the steady step of 16 decodes running together, and the prefill time
per token of one long prompt alone.  TPOT SLO = that step + 256 tokens at that prefill speed (about
one iteration mixing a 256-token chunk into 16 decodes: a batch smaller chunks meet and larger ones
miss); TTFT SLO = 8x the TPOT SLO (``slo_rule``).

**User mode**, per model shape and per arrival process (Poisson; bursty: gamma gaps with CV 3):

1. the offered rate is searched for where stock's best setting meets about 90% of SLOs
   (``--target-attainment``): at each step every stock setting (first step and the final check) or
   the best one runs a short selection workload; the rate moves up or down (bisection once
   bracketed) until the best setting's attainment is within ``--attainment-tolerance``;
2. stock's best setting at that rate (chunk size and mixed chunk on/off, swept) is the reference;
3. seeds are interleaved (stock seed 0, fair seed 0, stock seed 1, ...), after an unmeasured warm-up
   burst on every server;
4. reported per seed and as the median: goodput ratio (fair / best stock), SLO attainment, P99 TTFT,
   P99 TBT (inter-token gap), and collapses: a run under 50% attainment where stock meets >= 90% on
   the same seed.  Also each server's start-up time, the machine load (``uptime``) and the date.

**Drain mode**: a burst of ``--burst`` requests sent at once to each server in turn (stock, fair,
fair with ``--fair-admission-control``), ``--drain-repeats`` rounds interleaved (one burst is a
single noisy sample on this machine); the time T until every request is answered (200 or an
error with a reason) and none left hanging, then one plain request sent once the burst has
drained, whose latency must be under 1 s.  Acceptance: fair's median T <= 1.1x stock's; with
admission control every burst request answered (served or rejected with a reason), none hung.
Beside it, a 90% bootstrap interval of the median of the per-round ratios says whether the rounds
decide the 1.1x line at all (``met``, ``missed`` or ``undecided``): with five rounds on this
machine it usually spans 15-30 points.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_model  # noqa: E402
import cpu_servers as servers  # noqa: E402
import load_client  # noqa: E402
from sglang_fair import strict_json

PYTHON = sys.executable
COLLAPSE_ATTAINMENT = 0.5
STOCK_OK_ATTAINMENT = 0.9
PLAIN_REQUEST_LIMIT_S = 1.0
#: The drain acceptance line: FairBatching drains a burst within this many times stock's time.
DRAIN_RATIO_LINE = 1.1


def is_collapse(attainment: float, stock_attainment: float) -> bool:
    """A collapse: a run under half its SLOs met on a seed where stock met >= 90% (issue 11's count)."""
    return attainment < COLLAPSE_ATTAINMENT and stock_attainment >= STOCK_OK_ATTAINMENT


#: Resamples of the percentile bootstrap of a median (paired ratios of A/B rounds, drain rounds).
BOOTSTRAP_SAMPLES = 10_000


def bootstrap_median_interval(values: list[float], seed: int = 0) -> tuple[float, float]:
    """A 90% percentile-bootstrap interval of the median of ``values``."""
    rng = np.random.default_rng(seed)
    samples = rng.choice(np.asarray(values), size=(BOOTSTRAP_SAMPLES, len(values)), replace=True)
    medians = np.median(samples, axis=1)
    return float(np.percentile(medians, 5)), float(np.percentile(medians, 95))


# --- model shapes ---------------------------------------------------------------------------------
@dataclass
class ModelShape:
    name: str
    args: list[str]  # the model flags a user passes
    vocab_size: int
    description: str
    max_context_tokens: int = 8192


def model_shape(name: str, out_dir: Path) -> ModelShape:
    if name == "tiny":
        from sglang_fair.models import tiny_llama

        return ModelShape("tiny", [], tiny_llama.VOCAB,
                          f"built-in tiny Llama (hidden {tiny_llama.HIDDEN}, {tiny_llama.LAYERS} layers, fp32)",
                          tiny_llama.MAX_POSITIONS)
    if name == "bench":
        model_dir = cpu_model.write_model_dir(out_dir / "bench-model")
        dims = cpu_model.DEFAULT_SHAPE
        return ModelShape("bench", ["--model-path", str(model_dir), "--load-format", "dummy"],
                          cpu_model.VOCAB_SIZE,
                          f"dummy-weight Llama (hidden {dims['hidden_size']}, {dims['num_hidden_layers']}"
                          f" layers, GQA {dims['num_attention_heads']}/{dims['num_key_value_heads']}, bf16)")
    raise SystemExit(f"unknown model shape {name!r} (tiny, bench)")


# --- servers --------------------------------------------------------------------------------------
@dataclass
class Server(servers.Peer):
    """A launched server (cpu_servers' ``Peer``) and its start-up timing."""

    startup_s: float | None = None
    started_at: float = 0.0


def launch(server: Server, model: ModelShape, log_dir: Path, env: dict) -> None:
    server.port = servers.free_port()
    server.log_path = log_dir / f"server-{model.name}-{server.name}.log"
    cmd = [PYTHON, "-m", "sglang_fair.launch_server", *model.args,
           "--host", "127.0.0.1", "--port", str(server.port), *server.args]
    log = open(server.log_path, "w")
    log.write(" ".join(cmd) + "\n")
    log.flush()
    server.started_at = time.monotonic()
    server.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=servers.REPO_ROOT,
                                      start_new_session=True, env=env)


def wait_ready(server: Server, timeout_s: float) -> None:
    servers.wait_ready(server, timeout_s)
    server.startup_s = time.monotonic() - server.started_at


def stop(server: Server) -> None:
    servers.stop_server(server)


def fair_state(server: Server) -> dict:
    import requests

    try:
        return requests.get(f"{server.url}/fair/state", timeout=30).json()["dp_ranks"][0]
    except Exception as exc:  # report what we can
        return {"error": str(exc)}


def warm_up(servers: list[Server], workload_args: dict, vocab_size: int) -> None:
    for server in servers:
        warm = load_client.make_workload(**{**workload_args, "num_requests": 8, "rate_rps": 50.0, "seed": 999})
        asyncio.run(load_client.run_workload(server.url, warm, seed=999, vocab_size=vocab_size,
                                             drain_timeout_s=120, progress=False))


def machine_load() -> dict:
    try:
        uptime = subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        uptime = ""
    return {"uptime": uptime, "loadavg": [round(x, 2) for x in os.getloadavg()]}


# --- SLO rule -------------------------------------------------------------------------------------
#: The rule's batch: a prefill chunk of this many tokens mixed with this many decodes.
SLO_CHUNK_TOKENS = 256
SLO_DECODES = 16
TTFT_PER_TPOT = 8


def measure_engine(url: str, vocab_size: int, max_context_tokens: int, passes: int = 3) -> dict:
    """What the SLO rule rests on, measured on a stock server over HTTP (fastest of ``passes``):
    the steady decode step of ``SLO_DECODES`` requests decoding together, and the prefill time per
    token of one long prompt on its own (its TTFT over its length)."""
    prompt = min(1024, max_context_tokens // 2)
    decode_steps, prefill_per_token = [], []
    for attempt in range(passes):
        specs = [load_client.RequestSpec(i, 0.0, 128, 40, load_client.NO_SLO_S, load_client.NO_SLO_S) for i in range(SLO_DECODES)]
        results, _ = asyncio.run(load_client.run_workload(url, specs, seed=500 + attempt, vocab_size=vocab_size,
                                                          drain_timeout_s=300, progress=False))
        done = [r for r in results if r.ok and r.output_tokens > 2]
        if len(done) == SLO_DECODES:
            start = max(r.token_times_s[0] for r in done)  # every prompt prefilled: steady decoding
            gaps = [g for r in done for g in np.diff([t for t in r.token_times_s if t > start]) if g > 0]
            if gaps:
                decode_steps.append(float(np.median(gaps)))
        (one,), _ = asyncio.run(load_client.run_workload(
            url, [load_client.RequestSpec(0, 0.0, prompt, 1, load_client.NO_SLO_S, load_client.NO_SLO_S)], seed=600 + attempt,
            vocab_size=vocab_size, drain_timeout_s=300, progress=False))
        if one.ok:
            prefill_per_token.append(one.ttft_s / prompt)
    if not decode_steps or not prefill_per_token:
        raise RuntimeError("could not measure the engine for the SLO rule (every probe failed)")
    return {"decode_step_s": min(decode_steps), "prefill_s_per_token": min(prefill_per_token),
            "decodes": SLO_DECODES, "prefill_prompt_tokens": prompt, "passes": passes}


def chosen_slos(args, stock_url: str, model) -> tuple[float, float, dict]:
    """The SLOs of a run: ``--ttft-slo``/``--tpot-slo`` when both are given, else the SLO rule
    measured on the stock server at ``stock_url``."""
    if args.ttft_slo and args.tpot_slo:
        return args.ttft_slo, args.tpot_slo, {"rule": "given on the command line"}
    return slo_rule(stock_url, model)


def slo_rule(url: str, model: ModelShape) -> tuple[float, float, dict]:
    """SLOs from what a stock server measures: (ttft_s, tpot_s, record).

    TPOT SLO = the measured step of 16 decodes plus 256 tokens at the measured prefill speed (about
    the time of one iteration that mixes a 256-token chunk into 16 decodes, a batch smaller chunks
    meet and larger ones miss); TTFT SLO = 8x that.
    """
    engine = measure_engine(url, model.vocab_size, model.max_context_tokens)
    tpot_slo_s = engine["decode_step_s"] + SLO_CHUNK_TOKENS * engine["prefill_s_per_token"]
    rule = (f"TPOT SLO = measured step of {SLO_DECODES} decodes + {SLO_CHUNK_TOKENS} tokens at the measured"
            f" prefill speed; TTFT SLO = {TTFT_PER_TPOT}x that (measured on stock over HTTP, fastest of 3)")
    return round(TTFT_PER_TPOT * tpot_slo_s, 3), round(tpot_slo_s, 4), {"rule": rule, "engine": engine}


# --- one run --------------------------------------------------------------------------------------
def run_once(server: Server, specs, seed: int, vocab_size: int, drain_timeout_s: float, label: str,
             per_request: bool = False) -> dict:
    """One run's summary; ``per_request`` adds every request's row (``load_client.request_rows``)."""
    servers.wait_idle(server)
    results, duration_s = asyncio.run(load_client.run_workload(
        server.url, specs, seed=seed, vocab_size=vocab_size, drain_timeout_s=drain_timeout_s,
        description=label, progress=False))
    summary = load_client.summarize(results, duration_s)
    summary["errors"] = sorted({r.error for r in results if r.error})[:5]
    if per_request:
        summary["requests_detail"] = {"columns": list(load_client.REQUEST_COLUMNS),
                                      "rows": load_client.request_rows(results)}
    servers.wait_idle(server)
    return summary


def _ratio(fair: float, stock: float) -> float:
    if stock > 0:
        return fair / stock
    return math.inf if fair > 0 else math.nan


# --- user mode ------------------------------------------------------------------------------------
def stock_settings(chunk_sizes: list[int], mixed: str) -> list[Server]:
    mixed_options = {"both": (False, True), "on": (True,), "off": (False,)}[mixed]
    servers = []
    for chunk in chunk_sizes:
        for on in mixed_options:
            args = ["--batch-policy", "sglang", "--chunked-prefill-size", str(chunk)]
            if on:
                args.append("--enable-mixed-chunk")
            servers.append(Server(f"sglang-c{chunk}{'-mixed' if on else ''}", args))
    return servers


def search_rate(stock: list[Server], workload_args: dict, vocab_size: int, start_rps: float, args,
                label: str) -> tuple[float, Server, list[dict]]:
    """The rate at which stock's best setting meets about ``args.target_attainment`` of SLOs
    (``args.rate``, when given, instead: no search, the best setting chosen at that rate)."""
    steps = []
    if args.rate is not None:
        best = stock[0] if len(stock) == 1 else _best_at(stock, args.rate, workload_args, vocab_size, args,
                                                         label, steps)
        return args.rate, best, steps
    measured: list[tuple[float, float]] = []  # (rate, best stock attainment) per step
    rate = start_rps
    low = high = None
    best = None
    candidates = stock
    for step in range(args.search_steps):
        specs = load_client.make_workload(**{**workload_args, "rate_rps": rate, "seed": 1000 + step,
                                             "num_requests": _num_requests(rate, args)})
        attained = {}
        for server in candidates:
            summary = run_once(server, specs, 1000 + step, vocab_size, args.drain_timeout,
                               f"{label} search {rate:.2f} req/s {server.name}")
            attained[server.name] = summary["slo_attainment"]
            steps.append({"rate_rps": rate, "server": server.name, "attainment": summary["slo_attainment"],
                          "goodput_rps": summary["goodput_rps"]})
        best = max(candidates, key=lambda s: attained[s.name])
        attainment = attained[best.name]
        measured.append((rate, attainment))
        print(f"[user] {label}: {rate:.3f} req/s -> best stock {best.name} meets {attainment:.0%}", flush=True)
        if abs(attainment - args.target_attainment) <= args.attainment_tolerance:
            break
        if attainment > args.target_attainment:
            low = rate
            rate = rate * 1.3 if high is None else math.sqrt(low * high)
        else:
            high = rate
            rate = rate / 1.3 if low is None else math.sqrt(low * high)
        candidates = [best]  # later steps move the rate on the best setting only
    else:
        # Out of steps: the measured rate closest to the target, one that met it if any did.
        met = [m for m in measured if m[1] >= args.target_attainment]
        rate = min(met or measured, key=lambda m: abs(m[1] - args.target_attainment))[0]
    if len(stock) > 1 and candidates != stock:
        # The best setting can depend on the rate: choose it again at the final rate.
        best = _best_at(stock, rate, workload_args, vocab_size, args, label, steps)
    return rate, best, steps


def _best_at(stock: list[Server], rate: float, workload_args: dict, vocab_size: int, args, label: str,
             steps: list[dict]) -> Server:
    """The stock setting with the most goodput in one run at ``rate`` (a seed no measured run uses)."""
    specs = load_client.make_workload(**{**workload_args, "rate_rps": rate, "seed": 1999,
                                         "num_requests": _num_requests(rate, args)})
    goodput = {}
    for server in stock:
        summary = run_once(server, specs, 1999, vocab_size, args.drain_timeout, f"{label} select {server.name}")
        goodput[server.name] = summary["goodput_rps"]
        steps.append({"rate_rps": rate, "server": server.name, "attainment": summary["slo_attainment"],
                      "goodput_rps": summary["goodput_rps"], "selection": True})
    return max(stock, key=lambda s: goodput[s.name])


def _num_requests(rate: float, args) -> int:
    return int(np.clip(round(rate * args.run_seconds), args.min_requests, args.max_requests))


def user_mode_for_model(model: ModelShape, args, out_dir: Path, prompts, outputs) -> dict:
    stock = stock_settings(args.chunk_sizes, args.mixed)
    env = {**os.environ, "SGLANG_FAIR_CALIBRATION_CACHE": str(out_dir / "calibration-cache")}
    started = []
    try:
        for server in stock:
            launch(server, model, out_dir, env)
            started.append(server)
        for server in stock:
            wait_ready(server, args.start_timeout)
            print(f"[user] {model.name}: {server.name} ready in {server.startup_s:.1f} s", flush=True)
        largest = max((s for s in stock if "--enable-mixed-chunk" in s.args), default=stock[-1],
                      key=lambda s: int(s.args[s.args.index("--chunked-prefill-size") + 1]))
        probe_args = dict(prompts=prompts, outputs=outputs, num_requests=2000, rate_rps=1.0, seed=0,
                          length_scale=args.length_scale, ttft_slo_s=1.0, tpot_slo_s=1.0)
        ttft_slo_s, tpot_slo_s, slo = chosen_slos(args, largest.url, model)
        print(f"[user] {model.name}: SLOs TTFT {ttft_slo_s} s, TPOT {tpot_slo_s} s ({slo['rule']})", flush=True)
        # The README's command, nothing else.
        fair = Server("fairbatching", ["--batch-policy", "fairbatching", "--fair-ttft-slo", str(ttft_slo_s),
                                       "--fair-tpot-slo", str(tpot_slo_s)])
        launch(fair, model, out_dir, env)
        started.append(fair)
        wait_ready(fair, args.start_timeout)
        calibration = fair_state(fair).get("runtime", {}).get("calibration")
        print(f"[user] {model.name}: fairbatching ready in {fair.startup_s:.1f} s; calibration"
              f" {json.dumps({k: calibration.get(k) for k in ('status', 'fit_mape', 'holdout_mape', 'seconds')}) if calibration else None}",
              flush=True)
        workload_args = dict(prompts=prompts, outputs=outputs, length_scale=args.length_scale,
                             ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s)
        warm_up(stock + [fair], {**workload_args, "rate_rps": 1.0}, model.vocab_size)
        saturation_rps = servers.measure_saturation_rps(
            largest.url, load_client.make_workload(**probe_args)[:16], seed=777, vocab_size=model.vocab_size)
        print(f"[user] {model.name}: saturation {saturation_rps:.3f} req/s ({largest.name})", flush=True)
        arrivals = {}
        for arrival, cv in (("poisson", 1.0), ("bursty-gamma-cv3", 3.0)):
            if arrival.split("-")[0] not in args.arrivals:
                continue
            label = f"{model.name} {arrival}"
            arrival_args = {**workload_args, "arrival_cv": cv}
            rate, best, search = search_rate(stock, arrival_args, model.vocab_size,
                                             args.start_load * saturation_rps, args, label)
            print(f"[user] {label}: rate {rate:.3f} req/s, best stock {best.name}", flush=True)
            runs = []
            for seed in args.seeds:
                specs = load_client.make_workload(**{**arrival_args, "rate_rps": rate, "seed": seed,
                                                     "num_requests": _num_requests(rate, args)})
                row = {"seed": seed}
                for server in (best, fair):  # interleaved: stock seed s, fair seed s, stock seed s+1...
                    row[server.name if server is fair else "stock"] = run_once(
                        server, specs, seed, model.vocab_size, args.drain_timeout, f"{label} seed {seed} {server.name}")
                row["goodput_ratio"] = _ratio(row["fairbatching"]["goodput_rps"], row["stock"]["goodput_rps"])
                row["collapse"] = is_collapse(row["fairbatching"]["slo_attainment"], row["stock"]["slo_attainment"])
                runs.append(row)
                print(f"[user] {label} seed {seed}: goodput fair/stock {row['goodput_ratio']:.2f}"
                      f" (attainment {row['fairbatching']['slo_attainment']:.0%} vs {row['stock']['slo_attainment']:.0%})",
                      flush=True)
            arrivals[arrival] = summarize_arrival(rate, best.name, search, runs)
        return {
            "model": model.name, "model_description": model.description,
            "ttft_slo_s": ttft_slo_s, "tpot_slo_s": tpot_slo_s, "slo": slo,
            "saturation_rps": saturation_rps, "saturation_server": largest.name,
            "calibration": calibration,
            "startup_s": {s.name: s.startup_s for s in stock + [fair]},
            "arrivals": arrivals,
        }
    finally:
        for server in started:
            stop(server)


def summarize_arrival(rate: float, best: str, search: list, runs: list[dict]) -> dict:
    def values(peer, key):
        return [r[peer][key] for r in runs if not math.isnan(r[peer][key])]

    def med(peer, key):
        v = values(peer, key)
        return statistics.median(v) if v else math.nan

    ratios = [r["goodput_ratio"] for r in runs]
    finite = [x for x in ratios if math.isfinite(x)]
    return {
        "rate_rps": rate, "best_stock": best, "search": search, "runs": runs,
        "goodput_ratio_median": statistics.median(finite) if finite else math.nan,
        "goodput_ratio_per_seed": ratios,
        "collapses": sum(r["collapse"] for r in runs),
        "runs_under_50pct": {"stock": sum(r["stock"]["slo_attainment"] < COLLAPSE_ATTAINMENT for r in runs),
                             "fairbatching": sum(r["fairbatching"]["slo_attainment"] < COLLAPSE_ATTAINMENT
                                                 for r in runs)},
        "median": {peer: {key: med(peer, key) for key in ("slo_attainment", "goodput_rps", "ttft_p99_s",
                                                           "itl_p99_s", "tpot_p99_s", "throughput_rps")}
                   for peer in ("stock", "fairbatching")},
    }


def render_user(report: dict) -> str:
    lines = [f"Side by side a user would run ({report['date_utc']}; load at start"
             f" {report['load_start']['uptime']!r}, at end {report['load_end']['uptime']!r})", ""]
    for result in report["models"]:
        cal = result.get("calibration") or {}
        lines += [f"### {result['model']}: {result['model_description']}", "",
                  f"SLOs TTFT {result['ttft_slo_s']} s, TPOT {result['tpot_slo_s']} s ({result['slo']['rule']});"
                  f" saturation {result['saturation_rps']:.2f} req/s on {result['saturation_server']}.",
                  f"Fair server's start-up calibration: {cal.get('status')}, fit MAPE {_pct(cal.get('fit_mape'))},"
                  f" held-out MAPE {_pct(cal.get('holdout_mape'))}, {cal.get('seconds', math.nan):.1f} s."
                  f" Start-up: " + ", ".join(f"{k} {v:.0f} s" for k, v in result["startup_s"].items() if v) + ".", ""]
        lines += ["| arrivals | rate req/s | best stock | goodput ratio median [per seed] | collapses |"
                  " attainment stock / fair | P99 TTFT s stock / fair | P99 TBT ms stock / fair |",
                  "|---|---|---|---|---|---|---|---|"]
        for arrival, a in result["arrivals"].items():
            s, f = a["median"]["stock"], a["median"]["fairbatching"]
            per_seed = ", ".join(f"{x:.2f}" for x in a["goodput_ratio_per_seed"])
            lines.append(
                f"| {arrival} | {a['rate_rps']:.2f} | {a['best_stock']} | {a['goodput_ratio_median']:.2f} [{per_seed}]"
                f" | {a['collapses']} of {len(a['runs'])} | {s['slo_attainment']:.0%} / {f['slo_attainment']:.0%}"
                f" | {s['ttft_p99_s']:.2f} / {f['ttft_p99_s']:.2f} | {s['itl_p99_s'] * 1e3:.0f} / {f['itl_p99_s'] * 1e3:.0f} |")
        lines.append("")
    return "\n".join(lines)


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def user_mode(args, out_dir: Path) -> dict:
    prompts, outputs = load_client.load_trace_lengths(args.trace)
    report = {"mode": "user", "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join([Path(PYTHON).name, *sys.argv]), "load_start": machine_load(),
              "seeds": args.seeds, "chunk_sizes": args.chunk_sizes, "mixed": args.mixed,
              "run_seconds": args.run_seconds, "length_scale": args.length_scale, "models": []}
    for name in args.models:
        model = model_shape(name, out_dir)
        report["models"].append(user_mode_for_model(model, args, out_dir, prompts, outputs))
    report["load_end"] = machine_load()
    return report


# --- drain mode -----------------------------------------------------------------------------------
def drain_once(server: Server, specs, seed: int, vocab_size: int, timeout_s: float) -> dict:
    servers.wait_idle(server, timeout_s=120)
    started = time.perf_counter()
    results, _ = asyncio.run(load_client.run_workload(
        server.url, specs, seed=seed, vocab_size=vocab_size, request_timeout_s=timeout_s,
        drain_timeout_s=timeout_s, description=f"burst {server.name}", progress=False))
    drain_s = time.perf_counter() - started
    served = [r for r in results if r.ok]
    rejected = [r for r in results if not r.ok and r.error.startswith("HTTP ")]
    hung = [r for r in results if not r.ok and not r.error.startswith("HTTP ")]
    answered_s = max((r.spec.arrival_offset_s + (r.latency_s if r.ok else 0.0) for r in served), default=0.0)
    # A plain request once the burst has drained.
    servers.wait_idle(server, timeout_s=timeout_s)
    plain = load_client.RequestSpec(10**6, 0.0, 16, 8, load_client.NO_SLO_S, load_client.NO_SLO_S)
    plain_results, _ = asyncio.run(load_client.run_workload(
        server.url, [plain], seed=seed + 1, vocab_size=vocab_size, request_timeout_s=60,
        drain_timeout_s=60, progress=False))
    plain_result = plain_results[0]
    return {
        "burst": len(specs), "prompt_tokens": sum(s.prompt_tokens for s in specs),
        "drain_s": drain_s, "last_served_s": answered_s,
        "served": len(served), "rejected": len(rejected), "hung": len(hung),
        "rejection_reasons": sorted({r.error[:160] for r in rejected})[:3],
        "hang_reasons": sorted({r.error[:160] for r in hung})[:3],
        "plain_request_latency_s": plain_result.latency_s if plain_result.ok else None,
        "plain_request_ok": plain_result.ok and plain_result.latency_s <= PLAIN_REQUEST_LIMIT_S,
        "ttft_p99_s": load_client.summarize(results, drain_s)["ttft_p99_s"],
    }


def drain_mode(args, out_dir: Path) -> dict:
    prompts, outputs = load_client.load_trace_lengths(args.trace)
    model = model_shape(args.models[0], out_dir)
    env = {**os.environ, "SGLANG_FAIR_CALIBRATION_CACHE": str(out_dir / "calibration-cache")}
    stock = Server("sglang", ["--batch-policy", "sglang", *args.stock_args])
    started = [stock]
    report = {"mode": "drain", "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join([Path(PYTHON).name, *sys.argv]), "load_start": machine_load(),
              "model": model.name, "model_description": model.description, "burst": args.burst,
              "length_scale": args.length_scale}
    try:
        launch(stock, model, out_dir, env)
        wait_ready(stock, args.start_timeout)
        probe_args = dict(prompts=prompts, outputs=outputs, num_requests=2000, rate_rps=1.0, seed=0,
                          length_scale=args.length_scale, ttft_slo_s=1.0, tpot_slo_s=1.0)
        ttft_slo_s, tpot_slo_s, slo = chosen_slos(args, stock.url, model)
        fair_args = ["--batch-policy", "fairbatching", "--fair-ttft-slo", str(ttft_slo_s),
                     "--fair-tpot-slo", str(tpot_slo_s)]
        fair = Server("fairbatching", fair_args)
        fair_ac = Server("fairbatching-admission", [*fair_args, "--fair-admission-control"])
        for server in (fair, fair_ac):
            launch(server, model, out_dir, env)
            started.append(server)
            wait_ready(server, args.start_timeout)
        warm_up(started, dict(prompts=prompts, outputs=outputs, length_scale=args.length_scale,
                              ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s, rate_rps=1.0), model.vocab_size)
        specs = [load_client.RequestSpec(s.index, 0.0, s.prompt_tokens, s.output_tokens, ttft_slo_s, tpot_slo_s)
                 for s in load_client.make_workload(**{**probe_args, "num_requests": args.burst, "seed": args.burst_seed,
                                                       "ttft_slo_s": ttft_slo_s, "tpot_slo_s": tpot_slo_s})]
        repeats = {server.name: [] for server in started}
        for round_index in range(args.drain_repeats):  # interleaved: stock, fair, fair-ac, stock, ...
            for server in started:
                r = drain_once(server, specs, args.burst_seed, model.vocab_size, args.drain_limit)
                repeats[server.name].append(r)
                print(f"[drain] round {round_index + 1}/{args.drain_repeats} {server.name}: {r['served']} served,"
                      f" {r['rejected']} rejected, {r['hung']} hung, drained in {r['drain_s']:.1f} s;"
                      f" plain request after: {r['plain_request_latency_s']}", flush=True)
        runs = {name: drain_summary(rounds) for name, rounds in repeats.items()}
        report.update(
            ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s, slo=slo, runs=runs, drain_repeats=args.drain_repeats,
            calibration=fair_state(fair).get("runtime", {}).get("calibration"),
            drain_ratio=runs["fairbatching"]["drain_s"] / runs["sglang"]["drain_s"],
            drain_ratio_per_round=[f["drain_s"] / s["drain_s"]
                                   for f, s in zip(repeats["fairbatching"], repeats["sglang"])],
            acceptance={
                "fair_drains_within_1.1x": runs["fairbatching"]["drain_s"] <= DRAIN_RATIO_LINE * runs["sglang"]["drain_s"]
                and runs["fairbatching"]["hung"] == 0,
                "plain_request_within_1s": all(r["plain_request_ok"] for r in runs.values()),
                "admission_control_answers_all": runs["fairbatching-admission"]["hung"] == 0,
            },
            startup_s={s.name: s.startup_s for s in started},
        )
        report["drain_ratio_interval"] = bootstrap_median_interval(report["drain_ratio_per_round"])
        report["drain_line_decided"] = drain_line_decided(report["drain_ratio_interval"])
    finally:
        for server in started:
            stop(server)
    report["load_end"] = machine_load()
    return report


def drain_summary(rounds: list[dict]) -> dict:
    """One server's drain rounds: the median round's figures (drain time, P99 TTFT, plain request),
    counts summed over rounds (a request hung in any round counts), the range of drain times, and
    every round kept under ``rounds``."""
    def median(key):
        values = [r[key] for r in rounds if r[key] is not None]
        return statistics.median(values) if values else None
    drain_times = [r["drain_s"] for r in rounds]
    return {
        "burst": rounds[0]["burst"], "prompt_tokens": rounds[0]["prompt_tokens"],
        "drain_s": median("drain_s"), "drain_s_min": min(drain_times), "drain_s_max": max(drain_times),
        "last_served_s": median("last_served_s"), "ttft_p99_s": median("ttft_p99_s"),
        "plain_request_latency_s": median("plain_request_latency_s"),
        "plain_request_ok": all(r["plain_request_ok"] for r in rounds),
        "served": sum(r["served"] for r in rounds), "rejected": sum(r["rejected"] for r in rounds),
        "hung": sum(r["hung"] for r in rounds),
        "rejection_reasons": sorted({reason for r in rounds for reason in r["rejection_reasons"]})[:3],
        "hang_reasons": sorted({reason for r in rounds for reason in r["hang_reasons"]})[:3],
        "rounds": rounds,
    }


def drain_line_decided(interval: tuple[float, float]) -> str:
    """Whether the rounds decide the drain line: ``"met"`` when the whole 90% interval of the median
    ratio is within it, ``"missed"`` when it is all past it, else ``"undecided"`` (the line is
    inside the machine's noise; more rounds may tell)."""
    low, high = interval
    if high <= DRAIN_RATIO_LINE:
        return "met"
    return "missed" if low > DRAIN_RATIO_LINE else "undecided"


def render_drain(report: dict) -> str:
    lines = [f"Drain ({report['date_utc']}; load at start {report['load_start']['uptime']!r}, at end"
             f" {report['load_end']['uptime']!r}): {report['burst']} requests at once,"
             f" {report['model']} ({report['model_description']}); SLOs TTFT {report.get('ttft_slo_s')} s,"
             f" TPOT {report.get('tpot_slo_s')} s; {report.get('drain_repeats', 1)} rounds, interleaved"
             " (medians; served, rejected and hung summed over the rounds)", "",
             "| server | drained in s, median [range] | served | rejected | hung | P99 TTFT s | plain request after, s |",
             "|---|---|---|---|---|---|---|"]
    for name, r in report.get("runs", {}).items():
        plain = r["plain_request_latency_s"]
        spread = f" [{r['drain_s_min']:.1f}-{r['drain_s_max']:.1f}]" if "drain_s_min" in r else ""
        lines.append(f"| {name} | {r['drain_s']:.1f}{spread} | {r['served']} | {r['rejected']} | {r['hung']} |"
                     f" {r['ttft_p99_s']:.1f} | {'-' if plain is None else f'{plain:.2f}'} |")
    if "drain_ratio" in report:
        per_round = ", ".join(f"{x:.2f}" for x in report.get("drain_ratio_per_round", []))
        interval = report.get("drain_ratio_interval")
        spread = (f", 90% bootstrap interval {interval[0]:.2f}-{interval[1]:.2f}"
                  f" (the {DRAIN_RATIO_LINE:g}x line: {report['drain_line_decided']})" if interval else "")
        lines += ["", f"fair / stock drain time {report['drain_ratio']:.2f}x (median)" + spread
                      + (f", per round {per_round}" if per_round else "") + f"; acceptance {report['acceptance']}"]
    return "\n".join(lines)


# --- entry point ----------------------------------------------------------------------------------
def output_dir(given: str | None, label: str) -> Path:
    """The run's folder (``--out-dir``, else a fresh temporary one), created and announced."""
    out_dir = Path(given or tempfile.mkdtemp(prefix=f"sglang_fair_{label}_bench_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"[{label}] output in {out_dir}", flush=True)
    return out_dir


def write_results(out_dir: Path, report: dict, text: str, label: str) -> None:
    """``results.json`` (the whole report) and ``results.md`` (its table), and the table printed."""
    strict_json.write(out_dir / "results.json", report, other=str)
    (out_dir / "results.md").write_text(text + "\n")
    print(text)
    print(f"[{label}] wrote {out_dir / 'results.json'} and results.md")


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cpu_user_bench.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("user", "drain"), required=True)
    parser.add_argument("--quick", action="store_true", help="shakedown: short runs, 2 seeds, fewer settings")
    parser.add_argument("--models", default=None, help="tiny,bench (drain: the first one)")
    parser.add_argument("--seeds", default=None, help="measured seeds, e.g. 0,1,2,3,4")
    parser.add_argument("--arrivals", default="poisson,bursty", help="poisson,bursty")
    parser.add_argument("--chunk-sizes", default=None, help="stock chunk sizes swept, e.g. 128,512,2048")
    parser.add_argument("--mixed", choices=("both", "on", "off"), default="both",
                        help="stock with and/or without --enable-mixed-chunk (default both)")
    parser.add_argument("--run-seconds", type=float, default=None, help="arrival window per run (default 60, quick 20)")
    parser.add_argument("--min-requests", type=int, default=16)
    parser.add_argument("--max-requests", type=int, default=240)
    parser.add_argument("--length-scale", type=float, default=0.125, help="factor on the trace's lengths")
    parser.add_argument("--target-attainment", type=float, default=0.9)
    parser.add_argument("--attainment-tolerance", type=float, default=0.04)
    parser.add_argument("--search-steps", type=int, default=None, help="rate search steps (default 5, quick 2)")
    parser.add_argument("--start-load", type=float, default=0.8, help="first rate searched, x saturation")
    parser.add_argument("--rate", type=float, default=None,
                        help="user mode: measure at this rate (req/s) instead of searching for one")
    parser.add_argument("--ttft-slo", type=float, default=None, help="seconds (default: the SLO rule)")
    parser.add_argument("--tpot-slo", type=float, default=None, help="seconds (default: the SLO rule)")
    parser.add_argument("--drain-timeout", type=float, default=45.0,
                        help="user mode: seconds after the last arrival before unfinished requests are cancelled")
    parser.add_argument("--burst", type=int, default=200, help="drain mode: requests sent at once")
    parser.add_argument("--burst-seed", type=int, default=7)
    parser.add_argument("--drain-repeats", type=int, default=3,
                        help="drain mode: interleaved rounds of the burst on every server (medians reported)")
    parser.add_argument("--drain-limit", type=float, default=600.0,
                        help="drain mode: seconds a burst request may take before it counts as hung")
    parser.add_argument("--stock-args", default="", help="drain mode: stock's flags, e.g. '--enable-mixed-chunk'")
    parser.add_argument("--trace", default=str(load_client.default_trace_path()))
    parser.add_argument("--out-dir", default=None)
    parser.add_argument("--start-timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    if args.drain_repeats < 1:
        parser.error("--drain-repeats must be at least 1")
    default_models = "tiny" if args.mode == "drain" else "tiny,bench"
    args.models = (args.models or default_models).split(",")
    args.seeds = [int(s) for s in (args.seeds or ("0,1" if args.quick else "0,1,2,3,4")).split(",")]
    args.arrivals = args.arrivals.split(",")
    args.chunk_sizes = [int(c) for c in (args.chunk_sizes or ("256,1024" if args.quick else "128,512,2048")).split(",")]
    args.run_seconds = args.run_seconds or (20.0 if args.quick else 60.0)
    args.search_steps = args.search_steps or (2 if args.quick else 5)
    args.stock_args = args.stock_args.split()
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out_dir = output_dir(args.out_dir, args.mode)
    if args.mode == "user":
        report = user_mode(args, out_dir)
        text = render_user(report)
    else:
        report = drain_mode(args, out_dir)
        text = render_drain(report)
    write_results(out_dir, report, text, args.mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
