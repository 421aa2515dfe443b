"""Clients and probes shared by the reliability tests (plain functions; import, do not copy).

Every request has a client timeout and every loop a bound in count and time; traffic goes to
loopback only.  Results are plain dicts so tests can put them in the JSON summary
(``SGLANG_FAIR_RELIABILITY_OUT``, see conftest.py).
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import statistics
import time
from dataclasses import dataclass, field

import aiohttp
import psutil
import requests

from sglang_fair.runtime.rejection import ADMISSION_REASON

DEFAULT_POLICIES = "sglang,fairbatching"


def reliability_policies() -> list[str]:
    """``SGLANG_FAIR_RELIABILITY_POLICIES`` (comma-separated), default both: stock and ours."""
    text = os.environ.get("SGLANG_FAIR_RELIABILITY_POLICIES") or DEFAULT_POLICIES
    return [name.strip() for name in text.split(",") if name.strip()]


#: Every request must be answered within this (the issue's overload rule).
CLIENT_TIMEOUT_S = 120.0
#: Seconds an idle pooled connection is kept.  SGLang's uvicorn closes one after 5 s idle
#: (``SGLANG_TIMEOUT_KEEP_ALIVE``); aiohttp keeps them 15 s by default, so a request now and then
#: went out on a connection the server was closing at that moment (reset, "Can not write request
#: body", ServerDisconnectedError: the 11 lost of run 3's soak).  A client drops them first.
CLIENT_KEEPALIVE_S = 2.0
#: Upper bound of :func:`max_client_connections`.
MAX_CLIENT_CONNECTIONS = 8192


def max_client_connections() -> int:
    """The most connections a test client holds open at once; requests beyond wait in its pool, as
    behind any real client or gateway.  The 10-minute soak at 3x without admission control queues
    44,000-65,000 requests: with a connection each, client and server both ran out of file
    descriptors (20,000 per process on the test machine; 2026-12-06, docs/reliability.md) and
    "Too many open files" lost two thirds of them.  A quarter of this process's descriptor limit
    (the server, started from it, has the same), at most 8,192."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CLIENT_CONNECTIONS
    return max(64, min(MAX_CLIENT_CONNECTIONS, soft // 4))


def client_session() -> aiohttp.ClientSession:
    """The tests' HTTP client: a pool of at most ``max_client_connections()``, idle connections
    dropped before the server drops them."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max_client_connections(),
                                                                keepalive_timeout=CLIENT_KEEPALIVE_S))
#: Token ids for prompts: clear of the tiny model's special tokens (0..2) and inside its vocabulary.
FIRST_TOKEN_ID, LAST_TOKEN_ID = 3, 500


def prompt_ids(rng: random.Random, length: int) -> list[int]:
    return [rng.randint(FIRST_TOKEN_ID, LAST_TOKEN_ID) for _ in range(length)]


def generate_body(ids: list[int], max_new_tokens: int, stream: bool = False, **extra) -> dict:
    params = {"max_new_tokens": max_new_tokens, "ignore_eos": True, "temperature": 0}
    return {"input_ids": ids, "sampling_params": params, "stream": stream, **extra}


@dataclass
class Outcome:
    status: int  # HTTP status; -1: no answer within the client timeout or connection failed
    latency_s: float
    sent_at_s: float
    reason: str = ""  # the rejection's reason (body), when not 200
    replica: str = ""  # x-sglang-fair-replica of the answer
    #: Sent again because its body could not be written on a pooled connection (:func:`post`).
    resent_unsent: bool = False


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)

    def summary(self) -> dict:
        codes: dict[str, int] = {}
        for outcome in self.outcomes:
            codes[str(outcome.status)] = codes.get(str(outcome.status), 0) + 1
        answered = [o for o in self.outcomes if o.status == 200]
        # A rejection is an answer only with our reason; a router's own 503 ("no available
        # workers") or a timeout is a request lost.
        rejected, lost = [], []
        for outcome in self.outcomes:
            if outcome.status == 200:
                continue
            is_rejection = outcome.status in (429, 503) and ADMISSION_REASON in outcome.reason
            (rejected if is_rejection else lost).append(outcome)
        latencies = sorted(o.latency_s for o in answered)
        return {
            "sent": len(self.outcomes),
            "answered": len(answered),
            "rejected": len(rejected),
            "lost": len(lost),
            "codes": codes,
            "rejections_without_reason": 0,  # by definition above; kept for the figures' shape
            "lost_reasons": sorted({f"{o.status}: {o.reason[:160]}" for o in lost})[:5],
            "resent_unsent": sum(1 for o in self.outcomes if o.resent_unsent),
            "latency_p50_s": latencies[len(latencies) // 2] if latencies else None,
            "latency_max_s": latencies[-1] if latencies else None,
        }


#: What aiohttp says when a request's body could not be written: the connection (a pooled one the
#: server was closing) failed before the server had the request, so the server cannot have served it.
UNSENT_BODY = "Can not write request body"


def _unsent(exc: BaseException) -> bool:
    return isinstance(exc, aiohttp.ClientOSError) and UNSENT_BODY in str(exc)


async def post(session: aiohttp.ClientSession, url: str, body: dict, started_s: float,
               timeout_s: float = CLIENT_TIMEOUT_S) -> Outcome:
    """One request, answered or not within ``timeout_s`` (from the first try).  A request whose body
    could not be written is sent once more (the failed connection is gone) and marked ``resent_unsent``:
    the keep-alive race of a pooled client (the server closes an idle connection while the client
    reuses it: stock's 158 lost in the 10-minute soak of 2026-12-06, docs/reliability.md), which a
    real client retries too; any other failure is a lost request."""
    sent = time.monotonic()
    for resent in (False, True):
        left_s = timeout_s - (time.monotonic() - sent)
        try:
            async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=max(left_s, 1e-3))) as response:
                text = await response.text()
                reason = "" if response.status == 200 else text[:300]
                return Outcome(response.status, time.monotonic() - sent, sent - started_s, reason,
                               response.headers.get("x-sglang-fair-replica", ""), resent)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            if resent or not _unsent(exc):
                return Outcome(-1, time.monotonic() - sent, sent - started_s, f"{type(exc).__name__}: {exc}",
                               resent_unsent=resent)


async def _open_loop(url: str, rate_rps: float, duration_s: float, make_body, seed: int, timeout_s: float) -> Tally:
    rng = random.Random(seed)
    started = time.monotonic()
    tasks = []
    async with client_session() as session:
        next_at = 0.0
        index = 0
        while next_at < duration_s:
            delay = started + next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(post(session, url, make_body(rng, index), started, timeout_s)))
            index += 1
            next_at += rng.expovariate(rate_rps)
        outcomes = await asyncio.gather(*tasks)
    return Tally(list(outcomes))


def open_loop(url: str, rate_rps: float, duration_s: float, make_body, seed: int = 0,
              timeout_s: float = CLIENT_TIMEOUT_S) -> Tally:
    """Poisson arrivals at ``rate_rps`` for ``duration_s``; waits for every answer (each bounded by
    ``timeout_s``, :data:`CLIENT_TIMEOUT_S` unless told)."""
    return asyncio.run(_open_loop(url, rate_rps, duration_s, make_body, seed, timeout_s))


async def _closed_loop(url: str, concurrency: int, duration_s: float, make_body, seed: int) -> tuple[int, float]:
    rng = random.Random(seed)
    started = time.monotonic()
    done = 0

    async def worker(session, index):
        nonlocal done
        while time.monotonic() - started < duration_s:
            outcome = await post(session, url, make_body(rng, index), started)
            if outcome.status == 200:
                done += 1

    async with client_session() as session:
        await asyncio.gather(*(worker(session, i) for i in range(concurrency)))
    return done, time.monotonic() - started


def capacity_rps(url: str, make_body, concurrencies=(2, 8), step_s: float = 6.0) -> dict:
    """A short ramp of closed-loop clients; capacity = the best completed requests per second."""
    steps = []
    for concurrency in concurrencies:
        done, wall = asyncio.run(_closed_loop(url, concurrency, step_s, make_body, concurrency))
        steps.append({"concurrency": concurrency, "done": done, "wall_s": round(wall, 2), "rps": done / wall})
    return {"steps": steps, "capacity_rps": max(step["rps"] for step in steps)}


def plain_latency_s(base_url: str, repeats: int = 3) -> float:
    """Median latency of a short plain /generate request (8 tokens)."""
    rng = random.Random(7)
    times = []
    for _ in range(repeats):
        sent = time.monotonic()
        response = requests.post(f"{base_url}/generate", json=generate_body(prompt_ids(rng, 16), 8), timeout=CLIENT_TIMEOUT_S)
        response.raise_for_status()
        times.append(time.monotonic() - sent)
    return statistics.median(times)


def scheduler_process(handle) -> psutil.Process:
    """The server's scheduler process (SGLang titles it ``sglang::scheduler...``)."""
    for child in psutil.Process(handle.process.pid).children(recursive=True):
        try:
            text = " ".join([child.name(), *child.cmdline()])
        except psutil.Error:
            continue
        if "scheduler" in text:
            return child
    raise AssertionError("no scheduler process among the server's children")


def rss_mb(process: psutil.Process) -> float:
    return process.memory_info().rss / 2**20


def idle_rss_mb(process: psutil.Process) -> float:
    """RSS once the server has sat idle past ``TRIM_AFTER_IDLE_S``, when the runtime has handed the
    C heap's free pages back (``sglang_fair.runtime.heap``): memory in use, not fragmentation."""
    from sglang_fair.runtime.heap import TRIM_AFTER_IDLE_S

    time.sleep(3 * TRIM_AFTER_IDLE_S + 0.5)
    return rss_mb(process)


def server_load(base_url: str) -> dict:
    """Running + waiting requests and KV tokens in use, from SGLang's ``/v1/loads``."""
    data = requests.get(f"{base_url}/v1/loads", timeout=30).json()
    ranks = data.get("loads") if isinstance(data, dict) else data
    ranks = ranks or []
    return {
        "requests": sum(int(r.get("num_running_reqs", 0)) + int(r.get("num_waiting_reqs", 0)) for r in ranks),
        "kv_tokens": sum(int(r.get("num_used_tokens", 0)) for r in ranks),
        "token_usage": max((float(r.get("token_usage", 0.0)) for r in ranks), default=0.0),
        "raw": ranks,
    }


def wait_idle(base_url: str, timeout_s: float = 120.0) -> tuple[dict, float]:
    """Until no request runs or waits and no KV token is in use; ``(load, seconds waited)``."""
    started = time.monotonic()
    load = server_load(base_url)
    while time.monotonic() - started < timeout_s:
        load = server_load(base_url)
        if load["requests"] == 0 and load["kv_tokens"] == 0:
            break
        time.sleep(0.5)
    return load, time.monotonic() - started


LEAK_MARKERS = ("memory leak", "leak detected", "Scheduler hit an exception", "Traceback (most recent call last)")


def log_problems(handle) -> list[str]:
    return [line for line in handle.log_text().splitlines() if any(m.lower() in line.lower() for m in LEAK_MARKERS)]
