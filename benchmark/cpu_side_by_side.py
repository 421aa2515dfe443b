"""Side by side on CPU: stock SGLang (mixed chunked prefill, a sweep of chunk sizes) vs sglang_fair.

One command; it

1. writes the benchmark model (``benchmark/cpu_model.py``: dummy-weight Llama, served with
   ``--load-format dummy``) and starts one server per peer on loopback ports: stock SGLang is
   ``python -m sglang_fair.launch_server --batch-policy sglang --enable-mixed-chunk
   --chunked-prefill-size C`` (SGLang's own batching untouched), sglang_fair is the same launcher
   with ``--batch-policy fairbatching``.  Idle servers sleep (``--sleep-on-idle``), so only the
   server under test computes;
2. calibrates: times prefills and decode batches of a few shapes on a stock server and fits the
   iteration-time model with ``sglang_fair.policy.fit_cost_model``; the fit is printed, saved and
   handed to the fair server (``--cost-model FILE``); SLOs and the offered load are derived from
   it unless given;
3. replays the same scaled Azure conversation workload (Poisson arrivals, one seed per round) on
   every peer, interleaved (the order rotates each round), and prints SLO attainment, goodput and
   TTFT/TPOT percentiles side by side, as the median over seeds with the min..max spread;
4. stops every server it started (also on Ctrl-C or an error).

    python benchmark/cpu_side_by_side.py            # default: ~3 min on 2 quiet cores, 24 min busy
    python benchmark/cpu_side_by_side.py --quick    # smoke check: ~2 min quiet, 16 min busy

That is ``--mode calibrated``: the fair server gets the benchmark's hand-calibrated model.  Two more
modes (``benchmark/cpu_user_bench.py``): ``--mode user``, the side by side a user would run
(fairbatching launched with the SLOs only, self-calibrating, against stock's best swept setting, at
the rate where stock meets ~90% of SLOs, Poisson and bursty arrivals, collapses counted), and
``--mode drain`` (a burst at once: drain time, the request after, admission control).
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
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from sglang_fair import strict_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_model  # noqa: E402
import load_client  # noqa: E402
from cpu_servers import (  # noqa: E402
    PYTHON,
    REPO_ROOT,
    Peer,
    free_port,
    measure_saturation_rps,
    stop_server,
    wait_idle,
    wait_ready,
)

#: KV pool per server: room for every request of a run at once at the scaled lengths.
MAX_TOTAL_TOKENS = 32768
#: The fair server's cap on one prefill chunk; below it the cost model and time budget decide.
FAIR_MAX_CHUNK_TOKENS = 1024
#: A per-sequence term is not fitted: on this noisy machine it came out negative (it trades off
#: against the context term), which would make extra decodes look free.  The extend-path terms are
#: (a batch with a prefill runs SGLang's dearer extend path on CPU, for every row in it), except
#: ``mixed_context`` and ``mixed_context_sq``: every probed prefill sits beside keep-alive decodes
#: of one context, so their context moves with ``mixed_seqs`` and the three cannot be told apart.
COST_TERMS = ("fixed", "new_tokens", "sum_context", "prefill_iteration", "mixed_seqs")


# --- servers ------------------------------------------------------------------------------------
def start_server(peer: Peer, model_dir: Path, log_dir: Path) -> None:
    peer.port = free_port()
    peer.log_path = log_dir / f"server-{peer.name}.log"
    cmd = [
        PYTHON, "-m", "sglang_fair.launch_server",
        "--model-path", str(model_dir), "--load-format", "dummy",
        "--host", "127.0.0.1", "--port", str(peer.port),
        "--max-total-tokens", str(MAX_TOTAL_TOKENS), "--skip-server-warmup",
        *peer.args,
    ]
    log = open(peer.log_path, "w")
    log.write(" ".join(cmd) + "\n")
    log.flush()
    # Own process group, so stopping it ends the scheduler and detokenizer processes too.
    peer.process = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True
    )


# --- calibration: measured iteration times -> cost model ----------------------------------------
#: Context of the keep-alive request that keeps the server busy while a shape is probed.
KEEPALIVE_PROMPT_TOKENS = 32


async def _probe(url: str, prompt_tokens: int, output_tokens: int, count: int, seed: int,
                 keepalive_count: int = 1, vocab_size: int = cpu_model.VOCAB_SIZE,
                 max_context_tokens: int = 8192):
    """Send ``count`` identical requests at once while ``keepalive_count`` keep-alive requests are
    decoding: the server is never idle (an idle CPU server sleeps, and waking it would be timed as
    well), and a prefill probed beside many of them is a mixed batch of that many decodes."""
    import aiohttp

    decoding = set()
    started = asyncio.Event()

    def on_token(index: int, tokens: int) -> None:
        if tokens >= 3:
            decoding.add(index)
            if len(decoding) == keepalive_count:
                started.set()

    async with aiohttp.ClientSession() as session:
        # Together they stay well inside the KV pool (SGLang reserves room for their outputs).
        keepalive_tokens = min(4096, max_context_tokens - KEEPALIVE_PROMPT_TOKENS - 8)
        keepalives = [load_client.RequestSpec(10**6 + k, 0.0, KEEPALIVE_PROMPT_TOKENS,
                                              keepalive_tokens // keepalive_count, load_client.NO_SLO_S, load_client.NO_SLO_S)
                      for k in range(keepalive_count)]
        background = asyncio.gather(*[
            load_client.send_one(session, url, spec,
                                 load_client.prompt_ids(spec, seed + k, vocab_size), 120.0,
                                 on_token=lambda n, k=k: on_token(k, n))
            for k, spec in enumerate(keepalives)])
        try:
            await asyncio.wait_for(started.wait(), timeout=60)
            specs = [load_client.RequestSpec(i, 0.0, prompt_tokens, output_tokens, load_client.NO_SLO_S, load_client.NO_SLO_S)
                     for i in range(count)]
            return await asyncio.gather(*[
                load_client.send_one(session, url, spec,
                                     load_client.prompt_ids(spec, seed, vocab_size), 120.0)
                for spec in specs])
        finally:
            background.cancel()
            await asyncio.gather(background, return_exceptions=True)


def calibrate(url: str, *, quick: bool, prefill_sizes: list[int], seed: int = 1234,
              vocab_size: int = cpu_model.VOCAB_SIZE, max_context_tokens: int = 8192) -> dict:
    """Time prefills (TTFT of 1-token requests, beside 1 or more running keep-alive decodes) and
    decode batches (steady token gaps of B requests sent together, beside one); return per-shape
    minima over 3 recorded passes as (features, seconds) rows for ``fit_cost_model``.  Every shape runs once unrecorded first
    (first-call costs must not enter the fit).  A prefill's TTFT also holds the wait for the
    iteration in flight (about half a decode step) and the HTTP round trip."""
    from tqdm.auto import tqdm

    from sglang_fair.policy.cost_model import feature_row

    decode_shapes = [(1, 32), (8, 256), (24, 128)] if quick else [
        (1, 32), (1, 256), (8, 32), (8, 256), (16, 128), (32, 64)]
    # Prefills beside many decodes: what a mixed batch adds per row on the extend path.
    mixed_shapes = [(64, 16)] if quick else [(64, 16), (256, 16), (128, 8)]
    repeats = 3
    output_tokens = 12 if quick else 16
    keepalive_context = KEEPALIVE_PROMPT_TOKENS + 8  # a few tokens into its decode
    jobs = ([("prefill", n, 1) for n in prefill_sizes] + [("prefill", n, b) for n, b in mixed_shapes]
            + [("decode", c, b) for b, c in decode_shapes])
    measured: dict[tuple, list[float]] = {job: [] for job in jobs}
    for attempt in tqdm(range(repeats + 1), desc="calibrating", unit="pass", leave=False):
        for job in jobs:
            kind, tokens, batch = job
            if kind == "prefill":
                (result,) = asyncio.run(_probe(url, tokens, 1, 1, seed + attempt, keepalive_count=batch,
                                               vocab_size=vocab_size, max_context_tokens=max_context_tokens))
                if result.ok and attempt > 0:
                    measured[job].append(result.ttft_s)
                continue
            results = asyncio.run(_probe(url, tokens, output_tokens, batch, seed + attempt,
                                         vocab_size=vocab_size, max_context_tokens=max_context_tokens))
            done = [r for r in results if r.ok]
            if attempt == 0 or len(done) != batch:
                continue
            # Steady decode steps: after every prompt's prefill is done, `batch` decodes per step.
            start = max(r.token_times_s[0] for r in done)
            gaps = np.concatenate([np.diff([t for t in r.token_times_s if t > start]) for r in done])
            gaps = gaps[gaps > 0]
            if len(gaps):
                measured[job].append(float(np.median(gaps)))
    rows, times, labels = [], [], []
    for (kind, tokens, batch), values in measured.items():
        if not values:
            continue
        # Every probed iteration also carries the keep-alive decode(s); a prefill's is a mixed batch.
        if kind == "prefill":
            rows.append(feature_row(tokens + batch, tokens + batch * keepalive_context, batch + 1,
                                    tokens * tokens, True, decode_context=batch * keepalive_context,
                                    decode_context_sq=batch * keepalive_context * keepalive_context))
            labels.append(f"prefill {tokens} (+{batch} decode{'s' if batch > 1 else ''})")
        else:
            mean_context = tokens + output_tokens / 2
            context = batch * mean_context + keepalive_context
            # (decode-only: the squared decode context counts only with a prefill)
            rows.append(feature_row(batch + 1, context, batch + 1, 0, False, decode_context=context,
                                    decode_context_sq=0))
            labels.append(f"decode {batch}x{tokens} (+1)")
        # The fastest pass: on a shared machine the slow ones carry a neighbour's work, not ours.
        times.append(float(np.min(values)))
    return {"features": rows, "times_s": times, "labels": labels,
            "spread_s": [[round(v, 4) for v in values] for values in measured.values() if values]}


class CalibrationError(RuntimeError):
    """Calibration samples that give no usable cost model."""


def fit_calibration(samples: dict) -> "CostModel":  # noqa: F821
    from sglang_fair.policy import fit_physical_cost_model

    features = np.asarray(samples["features"], dtype=float)
    times_s = np.asarray(samples["times_s"], dtype=float)
    # On a busy machine a term can come out negative (noise trading off against the others); a
    # scheduler would read that as free work: such terms are dropped (the runtime's rule, one
    # definition).  The time per new token is what everything rests on: without it the
    # calibration is unusable.
    model = fit_physical_cost_model(features, times_s, terms=COST_TERMS, name="cpu-bench-measured",
                                    nonnegative=tuple(t for t in COST_TERMS if t != "new_tokens"))
    if not model.per_new_token_s > 0 or not model.fixed_s > 0:
        raise CalibrationError(
            f"calibration unusable ({model.describe()}): the machine was probably too busy;"
            " rerun when it is quieter, or pass --cost-model")
    predicted = features @ model.coefficients()
    model.info["shapes"] = [
        {"shape": label, "measured_ms": round(t * 1e3, 2), "predicted_ms": round(p * 1e3, 2)}
        for label, t, p in zip(samples["labels"], times_s, predicted)
    ]
    model.info["source"] = "benchmark/cpu_side_by_side.py calibration (TTFT of 1-token requests, decode TPOT)"
    return model


# --- SLOs and load from the cost model ----------------------------------------------------------
def derive_slos(model, specs: list[load_client.RequestSpec]) -> tuple[float, float]:
    """TPOT SLO: the predicted time of a 256-token prefill chunk mixed with 16 decodes (a batch
    smaller chunks meet and larger ones miss; cf. a GPU's 50 ms for ~500 new tokens). TTFT SLO:
    8x that (on a GPU 1 s is ~20 TPOT SLOs; CPU prompts are scaled down)."""
    mean_context = float(np.mean([s.prompt_tokens + s.output_tokens / 2 for s in specs]))
    tpot_slo_s = model.predict(256 + 16, 16 * mean_context + 256, 17, 256 * 256, num_prefills=1,
                               decode_context=16 * mean_context, decode_context_sq=16 * mean_context**2)
    return round(8 * tpot_slo_s, 2), round(tpot_slo_s, 3)


def estimate_capacity_rps(model, specs: list[load_client.RequestSpec], decode_batch: int = 16) -> float:
    """Saturation estimate: each request's prefill marginal cost plus its share of decode steps of
    ``decode_batch`` requests; an estimate only (the run reports what the server really does)."""
    mean_prompt = float(np.mean([s.prompt_tokens for s in specs]))
    mean_output = float(np.mean([s.output_tokens for s in specs]))
    context = mean_prompt + mean_output / 2
    step_s = model.predict(decode_batch, decode_batch * context, decode_batch)
    per_request_s = model.prefill_cost_s(int(mean_prompt), 0) + mean_output * step_s / decode_batch
    return 1.0 / per_request_s


# --- report -------------------------------------------------------------------------------------
METRICS = [
    ("goodput_rps", "goodput req/s", 1.0, "{:.3f}"),
    ("slo_attainment", "SLO attain %", 100.0, "{:.0f}"),
    ("envelope_attainment", "envelope %", 100.0, "{:.0f}"),
    ("throughput_rps", "done req/s", 1.0, "{:.3f}"),
    ("ttft_p50_s", "TTFT p50 s", 1.0, "{:.2f}"),
    ("ttft_p99_s", "TTFT p99 s", 1.0, "{:.2f}"),
    ("tpot_p50_s", "TPOT p50 ms", 1e3, "{:.0f}"),
    ("tpot_p99_s", "TPOT p99 ms", 1e3, "{:.0f}"),
    ("itl_p99_s", "ITL p99 ms", 1e3, "{:.0f}"),
    ("failed", "failed", 1.0, "{:.0f}"),
]


def aggregate(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per peer and metric: median over seeds, min and max."""
    table = {}
    for peer, summaries in runs.items():
        table[peer] = {}
        for key, *_ in METRICS:
            values = [s[key] for s in summaries if not math.isnan(s[key])]
            table[peer][key] = (
                (statistics.median(values), min(values), max(values)) if values else (math.nan,) * 3
            )
    return table


def render_markdown(table: dict[str, dict]) -> str:
    peers = list(table)
    lines = ["| metric (median [min..max] over seeds) | " + " | ".join(peers) + " |",
             "|---|" + "---|" * len(peers)]
    for key, label, scale, fmt in METRICS:
        cells = []
        for peer in peers:
            med, low, high = (v * scale for v in table[peer][key])
            cells.append(f"{fmt.format(med)} [{fmt.format(low)}..{fmt.format(high)}]")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_table(table: dict[str, dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Table(title="Side by side (median [min..max] over seeds)")
    out.add_column("metric")
    for peer in table:
        out.add_column(peer, justify="right")
    for key, label, scale, fmt in METRICS:
        row = []
        for peer in table:
            med, low, high = (v * scale for v in table[peer][key])
            row.append(f"{fmt.format(med)} [{fmt.format(low)}..{fmt.format(high)}]")
        out.add_row(label, *row)
    Console().print(out)


# --- main ---------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("calibrated", "user", "drain"), default="calibrated",
                        help="calibrated: this benchmark (the fair server gets the hand-calibrated model);"
                             " user, drain: run benchmark/cpu_user_bench.py (its --help lists their flags)")
    parser.add_argument("--quick", action="store_true", help="smoke check: 1 chunk size, 1 seed, few requests")
    parser.add_argument("--chunk-sizes", default=None, help="stock chunk sizes, e.g. 128,256,512")
    parser.add_argument("--seeds", default=None, help="workload seeds, e.g. 0,1,2")
    parser.add_argument("--num-requests", type=int, default=None,
                        help="requests per run (default: offered rate x --run-seconds, 16..120)")
    parser.add_argument("--run-seconds", type=float, default=None,
                        help="arrival window per run when --num-requests is not given (default 75, quick 30)")
    parser.add_argument("--length-scale", type=float, default=0.125,
                        help="factor on the trace's prompt/output lengths (default 1/8)")
    parser.add_argument("--rate", type=float, default=None, help="offered load, req/s (default: from --load-factor)")
    parser.add_argument("--load-factor", type=float, default=0.9,
                        help="offered load as a share of the measured saturation throughput of the"
                             " stock server with the largest chunk size")
    parser.add_argument("--ttft-slo", type=float, default=None, help="seconds (default: from the cost model)")
    parser.add_argument("--tpot-slo", type=float, default=None, help="seconds (default: from the cost model)")
    parser.add_argument("--slo-scale", type=float, default=1.0,
                        help="factor on the SLOs derived from the cost model: an allowance for this"
                             " shared machine's noise (not applied to --ttft-slo/--tpot-slo)")
    parser.add_argument("--cost-model", default=None, help="skip calibration: a cost-model JSON file")
    parser.add_argument("--trace", default=str(load_client.default_trace_path()))
    parser.add_argument("--out-dir", default=None, help="results, server logs (default: a new temp dir)")
    parser.add_argument("--start-timeout", type=float, default=420.0, help="seconds per server start")
    parser.add_argument("--drain-timeout", type=float, default=45.0,
                        help="seconds after the last arrival before unfinished requests are cancelled")
    args = parser.parse_args(argv)
    args.chunk_sizes = [int(c) for c in (args.chunk_sizes or ("256" if args.quick else "128,512")).split(",")]
    args.seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    args.run_seconds = args.run_seconds or (30.0 if args.quick else 75.0)
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    mode = argparse.ArgumentParser(add_help=False)
    mode.add_argument("--mode", choices=("calibrated", "user", "drain"), default="calibrated")
    known, _ = mode.parse_known_args(argv)
    if known.mode != "calibrated":
        import cpu_user_bench

        return cpu_user_bench.main(argv)
    args = parse_args(argv)
    started = datetime.now(timezone.utc)
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="sglang_fair_cpu_bench_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = cpu_model.write_model_dir(out_dir / "model")
    print(f"[bench] output in {out_dir}; model {json.loads((model_dir / 'config.json').read_text())['hidden_size']}"
          f" hidden, dummy weights", flush=True)

    prompts, outputs = load_client.load_trace_lengths(args.trace)
    calibration_peer = Peer(f"sglang-c{max(args.chunk_sizes)}", [])
    stock = [
        Peer(f"sglang-c{c}", ["--batch-policy", "sglang", "--enable-mixed-chunk", "--chunked-prefill-size", str(c)])
        for c in args.chunk_sizes
    ]
    calibration_peer = max(stock, key=lambda p: int(p.name.split("-c")[1]))
    fair = Peer("fairbatching", [])  # flags set once the cost model and SLOs are known
    peers = stock + [fair]
    try:
        for peer in stock:
            start_server(peer, model_dir, out_dir)
        for peer in stock:
            wait_ready(peer, args.start_timeout)
            print(f"[bench] {peer.name} ready at {peer.url}", flush=True)

        # --- cost model -------------------------------------------------------------------
        if args.cost_model:
            from sglang_fair.policy import load_cost_model

            model = load_cost_model(args.cost_model)
        else:
            samples = calibrate(
                calibration_peer.url, quick=args.quick,
                prefill_sizes=[32, 256, 512] if args.quick else [32, 128, 256, 512],
            )
            model = fit_calibration(samples)
            strict_json.write(out_dir / "calibration.json", samples, indent=1)
        cost_model_path = out_dir / "cost_model.json"
        model.save(cost_model_path)
        print(f"[bench] cost model: {model.describe()} (MAPE {model.info.get('mape', float('nan')):.1%})", flush=True)

        probe_specs = load_client.make_workload(
            prompts, outputs, num_requests=2000, rate_rps=1.0, seed=0,
            length_scale=args.length_scale, ttft_slo_s=1.0, tpot_slo_s=1.0)
        ttft_slo_s, tpot_slo_s = derive_slos(model, probe_specs)
        ttft_slo_s = args.ttft_slo or round(args.slo_scale * ttft_slo_s, 2)
        tpot_slo_s = args.tpot_slo or round(args.slo_scale * tpot_slo_s, 3)
        capacity_rps = estimate_capacity_rps(model, probe_specs)
        saturation_rps = math.nan
        if args.rate is None:
            saturation_rps = measure_saturation_rps(
                calibration_peer.url, probe_specs[: 12 if args.quick else 16], seed=777)
        rate_rps = args.rate or round(args.load_factor * saturation_rps, 3)
        # The whole benchmark stays bounded in time on a slow or busy machine: runs are sized by
        # their arrival window rather than by a fixed request count.
        num_requests = args.num_requests or int(np.clip(round(rate_rps * args.run_seconds), 16, 120))
        print(f"[bench] {num_requests} requests per run; SLOs: TTFT {ttft_slo_s} s, TPOT {tpot_slo_s} s; saturation throughput"
              f" {saturation_rps:.3f} req/s (cost-model estimate {capacity_rps:.2f});"
              f" offered {rate_rps} req/s", flush=True)

        fair.args = [
            "--batch-policy", "fairbatching", "--fair-ttft-slo", str(ttft_slo_s),
            "--fair-tpot-slo", str(tpot_slo_s), "--cost-model", str(cost_model_path),
            "--enable-mixed-chunk", "--chunked-prefill-size", str(FAIR_MAX_CHUNK_TOKENS),
        ]
        start_server(fair, model_dir, out_dir)
        wait_ready(fair, args.start_timeout)
        print(f"[bench] {fair.name} ready at {fair.url}", flush=True)

        # Warm-up: a short burst of the workload's shapes on every server (first-call costs).
        for peer in peers:
            warm = load_client.make_workload(
                prompts, outputs, num_requests=6, rate_rps=50.0, seed=999,
                length_scale=args.length_scale, ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s)
            asyncio.run(load_client.run_workload(
                peer.url, warm, seed=999, vocab_size=cpu_model.VOCAB_SIZE, drain_timeout_s=120,
                progress=False))

        # --- measured rounds: every peer on the same workload, order rotated per seed -----------
        runs: dict[str, list[dict]] = {p.name: [] for p in peers}
        per_run = []
        for round_index, seed in enumerate(args.seeds):
            specs = load_client.make_workload(
                prompts, outputs, num_requests=num_requests, rate_rps=rate_rps, seed=seed,
                length_scale=args.length_scale, ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s)
            order = peers[round_index % len(peers):] + peers[: round_index % len(peers)]
            # Interleave stock and fair: fair goes between the stock peers of the round.
            stock_order = [p for p in order if p is not fair]
            order = stock_order[:1] + [fair] + stock_order[1:] if stock_order else [fair]
            for peer in order:
                for other in peers:  # the previous run's cancelled tail must not share the CPU
                    wait_idle(other)
                results, duration_s = asyncio.run(load_client.run_workload(
                    peer.url, specs, seed=seed, vocab_size=cpu_model.VOCAB_SIZE,
                    drain_timeout_s=args.drain_timeout, description=f"seed {seed} {peer.name}"))
                summary = load_client.summarize(results, duration_s)
                summary["errors"] = sorted({r.error for r in results if r.error})[:5]
                runs[peer.name].append(summary)
                per_run.append({"seed": seed, "peer": peer.name, **summary})
                print(f"[bench] seed {seed} {peer.name}: goodput {summary['goodput_rps']:.3f} req/s,"
                      f" attainment {summary['slo_attainment']:.0%}, TTFT p99 {summary['ttft_p99_s']:.2f} s,"
                      f" TPOT p99 {summary['tpot_p99_s'] * 1e3:.0f} ms, failed {summary['failed']}",
                      flush=True)
    finally:
        for peer in peers:
            stop_server(peer)

    table = aggregate(runs)
    print_table(table)
    best_stock = max((p.name for p in stock), key=lambda name: table[name]["goodput_rps"][0])
    fair_goodput = table[fair.name]["goodput_rps"][0]
    stock_goodput = table[best_stock]["goodput_rps"][0]
    def _ratio(fair_rps: float, stock_rps: float) -> float:
        if stock_rps > 0:
            return fair_rps / stock_rps
        return math.inf if fair_rps > 0 else math.nan  # nan: neither met any SLO

    ratio = _ratio(fair_goodput, stock_goodput)
    per_seed = [
        _ratio(f, s)
        for f, s in zip((r["goodput_rps"] for r in runs[fair.name]),
                        (r["goodput_rps"] for r in runs[best_stock]))
    ]
    verdict = (f"fairbatching / best stock ({best_stock}) goodput: {ratio:.2f}x median"
               f" (per seed {', '.join(f'{x:.2f}' for x in per_seed)}); target >= 1.15x")
    print(f"[bench] {verdict}")
    load_1m = os.getloadavg()[0]
    report = {
        "date_utc": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "model": json.loads((model_dir / "config.json").read_text()),
        "cost_model": model.to_dict(),
        "ttft_slo_s": ttft_slo_s, "tpot_slo_s": tpot_slo_s, "rate_rps": rate_rps,
        "capacity_estimate_rps": capacity_rps,
        "saturation_rps": saturation_rps, "load_factor": args.load_factor,
        "slo_scale": args.slo_scale, "length_scale": args.length_scale,
        "num_requests": num_requests, "seeds": args.seeds, "chunk_sizes": args.chunk_sizes,
        "runs": per_run, "table": table, "best_stock": best_stock, "goodput_ratio_median": ratio,
        "goodput_ratio_per_seed": per_seed, "load_average_1m_at_end": load_1m,
        "markdown": render_markdown(table), "verdict": verdict,
    }
    strict_json.write(out_dir / "results.json", report, indent=1)
    (out_dir / "results.md").write_text(render_markdown(table) + "\n\n" + verdict + "\n")
    print(f"[bench] wrote {out_dir / 'results.json'} and results.md (load average at end {load_1m:.1f})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CalibrationError as exc:
        print(f"[bench] error: {exc}", file=sys.stderr)
        sys.exit(2)
