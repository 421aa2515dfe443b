"""Open-loop streaming load client for SGLang's ``/generate`` with bench_serving's SLO definitions.

* Workload: request lengths from the Azure LLM conversation trace (2023), scaled down by a factor
  for a CPU server, random token ids as prompts (``input_ids``, ``ignore_eos``), Poisson arrivals
  from a seeded generator.  Same seed -> same requests at the same offsets, whatever the server.
* Metrics, as ``sglang.bench_serving --goodput`` defines them: TTFT = time to the first streamed
  token; TPOT = (latency - TTFT) / (output tokens - 1); a request meets its SLO when it completed,
  TTFT <= ttft_slo and TPOT <= tpot_slo (a 1-token output has no TPOT); goodput = such requests
  per second of benchmark duration (first send to last completion).  Also the envelope
  definition: token j (0 = first) arrives by ``ttft_slo + j * tpot_slo`` after the send.
* Bounded: every request has a timeout and the whole run a deadline; what is unfinished then is
  cancelled and counted as failed (it meets no SLO).  Loopback addresses only.

    python benchmark/load_client.py --url http://127.0.0.1:30000 --rate 2 --num-requests 60 \
        --ttft-slo 2 --tpot-slo 0.2
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from sglang_fair import strict_json
from sglang_fair.policy.request import MAX_SLO_S, RequestState, meets_envelope

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Token ids for random prompts avoid the tokenizer's special tokens (ids 0..2).
FIRST_PLAIN_TOKEN_ID = 3


def shared_dir() -> Path:
    """``../shared`` beside the repository, unless ``SGLANG_FAIR_SHARED`` says otherwise."""
    return Path(os.environ.get("SGLANG_FAIR_SHARED", REPO_ROOT.parent / "shared"))


def default_trace_path() -> Path:
    return shared_dir() / "traces" / "azure_conv_2023.csv"


#: An SLO that never binds: the largest the server accepts (larger ones get HTTP 400).
NO_SLO_S = MAX_SLO_S


# --- workload -----------------------------------------------------------------------------------
@dataclass
class RequestSpec:
    """One request of a workload; offsets are seconds after the run starts."""

    index: int
    arrival_offset_s: float
    prompt_tokens: int
    output_tokens: int
    ttft_slo_s: float
    tpot_slo_s: float


def load_trace_lengths(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(ContextTokens, GeneratedTokens) columns of an Azure-format trace."""
    prompts, outputs = [], []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            prompts.append(int(row["ContextTokens"]))
            outputs.append(int(row["GeneratedTokens"]))
    if not prompts:
        raise ValueError(f"{path}: no rows")
    return np.asarray(prompts), np.asarray(outputs)


def make_workload(
    prompts: np.ndarray,
    outputs: np.ndarray,
    *,
    num_requests: int,
    rate_rps: float,
    seed: int,
    length_scale: float,
    ttft_slo_s: float,
    tpot_slo_s: float,
    max_prompt_tokens: int = 1024,
    max_output_tokens: int = 256,
    min_output_tokens: int = 2,
    arrival_cv: float = 1.0,
) -> list[RequestSpec]:
    """Sample ``num_requests`` trace rows (seeded), scale their lengths, arrival offsets at
    ``rate_rps``: Poisson (``arrival_cv`` 1), or bursty with gamma inter-arrival gaps of that
    coefficient of variation (shape ``1/cv^2``, same mean gap ``1/rate``)."""
    if rate_rps <= 0 or not math.isfinite(rate_rps):
        raise ValueError("rate_rps must be a positive number")
    if arrival_cv <= 0 or not math.isfinite(arrival_cv):
        raise ValueError("arrival_cv must be a positive number")
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(prompts), size=num_requests, replace=len(prompts) < num_requests)
    if arrival_cv == 1.0:
        gaps_s = rng.exponential(1.0 / rate_rps, size=num_requests)
    else:
        shape = 1.0 / arrival_cv**2
        gaps_s = rng.gamma(shape, 1.0 / (rate_rps * shape), size=num_requests)
    offsets_s = np.cumsum(gaps_s) - gaps_s[0]  # the first request goes at t=0
    specs = []
    for i, (row, offset_s) in enumerate(zip(rows, offsets_s)):
        prompt = int(np.clip(round(prompts[row] * length_scale), 1, max_prompt_tokens))
        output = int(np.clip(round(outputs[row] * length_scale), min_output_tokens, max_output_tokens))
        specs.append(RequestSpec(i, float(offset_s), prompt, output, ttft_slo_s, tpot_slo_s))
    return specs


def prompt_ids(spec: RequestSpec, seed: int, vocab_size: int) -> list[int]:
    """Random prompt token ids, fixed by (seed, request index)."""
    rng = np.random.default_rng([seed, spec.index])
    return rng.integers(FIRST_PLAIN_TOKEN_ID, vocab_size, size=spec.prompt_tokens).tolist()


# --- one request's outcome and the metric math --------------------------------------------------
@dataclass
class RequestResult:
    spec: RequestSpec
    ok: bool = False
    error: str = ""
    #: Seconds after the request was sent at which each output token was seen (streamed chunks
    #: that carry several tokens give them all the chunk's time, as bench_serving sees them).
    token_times_s: list[float] = field(default_factory=list)
    latency_s: float = math.nan
    #: Where the TTFT went, from the server's own stamps (SGLang returns them in the last chunk's
    #: ``meta_info`` when it runs with ``--enable-metrics``; NaN otherwise): seconds from the send
    #: to the HTTP server's receipt, and from that receipt to the HTTP server holding the first
    #: token.  The rest of the client's TTFT is the way back (the stream and this client's loop).
    to_server_s: float = math.nan
    server_ttft_s: float = math.nan

    @property
    def output_tokens(self) -> int:
        return len(self.token_times_s)

    @property
    def ttft_s(self) -> float:
        return self.token_times_s[0] if self.token_times_s else math.nan

    @property
    def back_to_client_s(self) -> float:
        """Seconds from the HTTP server holding the first token to this client reading it."""
        return self.ttft_s - self.to_server_s - self.server_ttft_s

    def read_server_stamps(self, meta_info: dict, sent_wall_s: float) -> None:
        """Keep the server's TTFT stamps of a last chunk's ``meta_info`` (:attr:`to_server_s`)."""
        received = meta_info.get("request_received_ts")
        first_token = meta_info.get("first_token_latency")
        if isinstance(received, (int, float)) and isinstance(first_token, (int, float)):
            self.to_server_s = float(received) - sent_wall_s
            self.server_ttft_s = float(first_token)

    @property
    def tpot_s(self) -> float:
        """bench_serving's TPOT: (latency - TTFT) / (output tokens - 1); NaN for < 2 tokens."""
        if self.output_tokens < 2:
            return math.nan
        return (self.latency_s - self.ttft_s) / (self.output_tokens - 1)

    def inter_token_s(self) -> list[float]:
        times = self.token_times_s
        return [b - a for a, b in zip(times, times[1:])]

    def _judged(self) -> RequestState | None:
        """This outcome as the policy's request record (times from the send), so the verdicts are
        the ones the simulator and the runtime use (policy/request.py); None if it did not complete."""
        if not self.ok or not self.token_times_s:
            return None
        state = RequestState(str(self.spec.index), 0.0, self.spec.prompt_tokens, self.spec.ttft_slo_s,
                             self.spec.tpot_slo_s)
        state.first_token_s = self.ttft_s
        # bench_serving's TPOT, (latency - TTFT) / (tokens - 1); a one-token output has none.
        state.last_token_s = self.latency_s if self.output_tokens > 1 else self.ttft_s
        state.generated_tokens = self.output_tokens
        return state

    def slo_met(self) -> tuple[bool, bool]:
        """``(ttft_met, mean_tpot_met)``; both False if it did not complete."""
        state = self._judged()
        return (False, False) if state is None else state.slo_met()

    def meets_slo(self) -> bool:
        """Completed, TTFT within its SLO and mean TPOT within its SLO (bench_serving --goodput)."""
        return all(self.slo_met())

    def meets_envelope(self) -> bool:
        """Completed and every token j by ``ttft_slo + j * tpot_slo`` after the send."""
        state = self._judged()
        return state is not None and bool(meets_envelope(min(
            state.envelope_slack_s(j, t) for j, t in enumerate(self.token_times_s))))


#: The columns of :func:`request_rows`.
REQUEST_COLUMNS = ("index", "prompt_tokens", "output_tokens", "ttft_s", "tpot_s", "ttft_met", "tpot_met",
                   "to_server_s", "server_ttft_s")


def request_rows(results: list[RequestResult]) -> list[list]:
    """Each request's outcome as a compact row (:data:`REQUEST_COLUMNS`: output tokens and times as
    seen, NaN where none; both verdicts False for one that did not complete), for analyses a summary
    cannot answer (which requests missed which SLO)."""
    rows = []
    for r in results:
        ttft_met, tpot_met = r.slo_met()
        rows.append([r.spec.index, r.spec.prompt_tokens, r.output_tokens, round(r.ttft_s, 6), round(r.tpot_s, 6),
                     bool(ttft_met), bool(tpot_met), round(r.to_server_s, 6), round(r.server_ttft_s, 6)])
    return rows


def _percentile(values: list[float], q: float) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.percentile(values, q)) if values else math.nan


def summarize(results: list[RequestResult], duration_s: float) -> dict:
    """Aggregate metrics of one run; ``duration_s`` is first send to last completion."""
    duration_s = max(duration_s, 1e-9)
    completed = [r for r in results if r.ok]
    verdicts = [r.slo_met() for r in results]
    met = sum(ttft_met and tpot_met for ttft_met, tpot_met in verdicts)
    itl = [gap for r in completed for gap in r.inter_token_s()]
    n = len(results)
    return {
        "requests": n,
        "completed": len(completed),
        "failed": n - len(completed),
        "duration_s": duration_s,
        "slo_attainment": met / n if n else math.nan,
        # Which SLO the misses miss: the share within each on its own.
        "ttft_attainment": sum(ttft_met for ttft_met, _ in verdicts) / n if n else math.nan,
        "tpot_attainment": sum(tpot_met for _, tpot_met in verdicts) / n if n else math.nan,
        "envelope_attainment": sum(r.meets_envelope() for r in results) / n if n else math.nan,
        "goodput_rps": met / duration_s,
        "throughput_rps": len(completed) / duration_s,
        "output_tokens_per_s": sum(r.output_tokens for r in completed) / duration_s,
        "ttft_p50_s": _percentile([r.ttft_s for r in completed], 50),
        "ttft_p99_s": _percentile([r.ttft_s for r in completed], 99),
        "tpot_p50_s": _percentile([r.tpot_s for r in completed], 50),
        "tpot_p99_s": _percentile([r.tpot_s for r in completed], 99),
        "itl_p99_s": _percentile(itl, 99),
    }


# --- the client ---------------------------------------------------------------------------------
def check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"only loopback servers are benchmarked, got {url!r}")


async def send_one(
    session, url: str, spec: RequestSpec, ids: list[int], timeout_s: float, on_token=None
) -> RequestResult:
    """Stream one request; ``on_token(tokens_so_far)`` (optional) is called per streamed chunk."""
    import aiohttp

    result = RequestResult(spec)
    payload = {
        "input_ids": ids,
        "sampling_params": {
            "max_new_tokens": spec.output_tokens,
            "ignore_eos": True,
            "temperature": 0.0,
            "custom_params": {"ttft_slo": spec.ttft_slo_s, "tpot_slo": spec.tpot_slo_s},
        },
        "stream": True,
    }
    start = time.perf_counter()
    sent_wall_s = time.time()  # the server stamps its receipt in wall-clock time
    seen_tokens = 0
    meta_info: dict = {}
    try:
        async with session.post(
            f"{url}/generate", json=payload, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as response:
            if response.status != 200:
                result.error = f"HTTP {response.status}: {(await response.text())[:200]}"
                return result
            async for raw_line in response.content:
                line = raw_line.strip()
                if not line.startswith(b"data:"):
                    continue
                body = line[len(b"data:"):].strip()
                if body == b"[DONE]":
                    break
                now = time.perf_counter() - start
                chunk = json.loads(body)
                if "error" in chunk:
                    result.error = str(chunk["error"])[:200]
                    return result
                meta_info = chunk.get("meta_info") or {}
                total = int(meta_info.get("completion_tokens", seen_tokens + 1))
                result.token_times_s.extend([now] * max(0, total - seen_tokens))
                seen_tokens = max(seen_tokens, total)
                if on_token is not None:
                    on_token(seen_tokens)
        result.latency_s = time.perf_counter() - start
        result.read_server_stamps(meta_info, sent_wall_s)
        result.ok = seen_tokens > 0
        if not result.ok:
            result.error = "no tokens streamed"
    except asyncio.TimeoutError:
        result.error = f"timed out after {timeout_s:.0f} s"
    except asyncio.CancelledError:
        result.error = "cancelled at the run deadline"
    except Exception as exc:  # a dropped connection must not stop the run
        result.error = f"{type(exc).__name__}: {exc}"[:200]
    return result


async def run_workload(
    url: str,
    specs: list[RequestSpec],
    *,
    seed: int,
    vocab_size: int,
    request_timeout_s: float = 300.0,
    drain_timeout_s: float = 120.0,
    progress: bool = True,
    description: str = "requests",
) -> tuple[list[RequestResult], float]:
    """Send ``specs`` open-loop at their offsets; return results (in spec order) and duration_s.

    Stops by itself: ``drain_timeout_s`` after the last arrival everything unfinished is cancelled.
    """
    import aiohttp
    from tqdm.auto import tqdm

    check_loopback(url)
    prompts = [prompt_ids(spec, seed, vocab_size) for spec in specs]
    bar = tqdm(total=len(specs), desc=description, unit="req", disable=not progress, leave=False)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        last_done = [start]

        async def timed(spec: RequestSpec, ids: list[int]) -> RequestResult:
            delay_s = spec.arrival_offset_s - (time.perf_counter() - start)
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            result = await send_one(session, url, spec, ids, request_timeout_s)
            last_done[0] = time.perf_counter()
            bar.update(1)
            return result

        tasks = [asyncio.create_task(timed(s, ids)) for s, ids in zip(specs, prompts)]
        deadline_s = (specs[-1].arrival_offset_s if specs else 0.0) + drain_timeout_s
        done, pending = await asyncio.wait(tasks, timeout=deadline_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    bar.close()
    results = []
    for spec, task in zip(specs, tasks):
        if task.cancelled() or task.exception() is not None:
            results.append(RequestResult(spec, error="cancelled at the run deadline"))
        else:
            results.append(task.result())
    return results, last_done[0] - start


def main() -> None:
    parser = argparse.ArgumentParser(description="Replay a scaled Azure trace against /generate.")
    parser.add_argument("--url", default="http://127.0.0.1:30000")
    parser.add_argument("--trace", default=str(default_trace_path()))
    parser.add_argument("--num-requests", type=int, default=60)
    parser.add_argument("--rate", type=float, required=True, help="Poisson arrival rate, req/s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--length-scale", type=float, default=0.125)
    parser.add_argument("--ttft-slo", type=float, required=True, help="seconds")
    parser.add_argument("--tpot-slo", type=float, required=True, help="seconds")
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    args = parser.parse_args()
    prompts, outputs = load_trace_lengths(args.trace)
    specs = make_workload(
        prompts, outputs, num_requests=args.num_requests, rate_rps=args.rate, seed=args.seed,
        length_scale=args.length_scale, ttft_slo_s=args.ttft_slo, tpot_slo_s=args.tpot_slo,
    )
    results, duration_s = asyncio.run(
        run_workload(args.url, specs, seed=args.seed, vocab_size=args.vocab_size,
                     drain_timeout_s=args.drain_timeout)
    )
    print(strict_json.dumps(summarize(results, duration_s), indent=2))
    errors = sorted({r.error for r in results if r.error})
    if errors:
        print("errors:", "; ".join(errors[:5]))


if __name__ == "__main__":
    main()
