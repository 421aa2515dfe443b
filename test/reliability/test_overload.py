"""Overload at 3x the server's capacity (measured by a ramp in the test): nothing lost, memory flat,
normal latency once the backlog has drained.

Short (default run): 15 s of overload per policy.  ``-m slow``: 10 minutes, and a fairbatching
server with ``--fair-admission-control`` (every request answered within the 120 s client timeout:
200, or 429 with a reason).
"""

from __future__ import annotations

import os
import time

import pytest
import requests

from reliability_helpers import (
    CLIENT_TIMEOUT_S,
    capacity_rps,
    generate_body,
    log_problems,
    open_loop,
    plain_latency_s,
    prompt_ids,
    idle_rss_mb,
    scheduler_process,
    wait_idle,
)

pytestmark = pytest.mark.e2e

SHORT_OVERLOAD_S = float(os.environ.get("SGLANG_FAIR_OVERLOAD_S", "15"))
SOAK_OVERLOAD_S = 600.0
WARMUP_OVERLOAD_S = 10.0
OVERLOAD_FACTOR = 3.0
PROMPT_TOKENS, OUTPUT_TOKENS = 200, 16
#: Idle latency of a plain request after the drain, relative to before (plus a little for timer
#: noise on a loaded 2-core box: the plain request takes ~0.1 s).
LATENCY_FACTOR, LATENCY_SLACK_S = 2.0, 0.05
RSS_GROWTH = 0.10


def client_timeout_s(duration_s: float, admission: bool) -> float:
    """How long a client waits for its answer.  With admission control: the issue's 120 s.  Without
    it, overload at OVERLOAD_FACTOR x capacity for ``duration_s`` leaves a backlog that takes about
    (OVERLOAD_FACTOR - 1) x ``duration_s`` to drain, so the last request waits that long by
    construction; "answered eventually" gets twice that on top of the 120 s (still a bound)."""
    if admission:
        return CLIENT_TIMEOUT_S
    return CLIENT_TIMEOUT_S + 2 * (OVERLOAD_FACTOR - 1) * duration_s


def _body(rng, index):
    return generate_body(prompt_ids(rng, PROMPT_TOKENS), OUTPUT_TOKENS)


def run_overload(handle, duration_s: float, summary: dict, key: str, admission: bool) -> dict:
    url = f"{handle.base_url}/generate"
    scheduler = scheduler_process(handle)
    ramp = capacity_rps(url, _body)
    rate = OVERLOAD_FACTOR * ramp["capacity_rps"]
    # Warm-up: one short burst at the overload rate.  The first burst of a server's life grows its
    # native heap by the batch shapes it meets (stock too, +75 MiB on the tiny model, 2026-12-04);
    # the memory bound is on what comes after, as the issue says.
    open_loop(url, rate, WARMUP_OVERLOAD_S, _body, seed=0, timeout_s=client_timeout_s(WARMUP_OVERLOAD_S, admission))
    wait_idle(handle.base_url)
    idle_latency = plain_latency_s(handle.base_url)  # warm, idle: the reference for after the drain
    rss_before = idle_rss_mb(scheduler)
    started = time.monotonic()
    tally = open_loop(url, rate, duration_s, _body, seed=1, timeout_s=client_timeout_s(duration_s, admission))
    answered_all_s = time.monotonic() - started
    load, drain_s = wait_idle(handle.base_url)
    after_latency = plain_latency_s(handle.base_url)
    rss_after = idle_rss_mb(scheduler)
    result = {
        **tally.summary(),
        "capacity": ramp,
        "offered_rps": rate,
        "overload_s": duration_s,
        "all_answered_after_s": answered_all_s,
        "drain_after_answers_s": drain_s,
        "idle_latency_s": idle_latency,
        "after_drain_latency_s": after_latency,
        "scheduler_rss_mb_before": rss_before,
        "scheduler_rss_mb_after": rss_after,
        "idle_load_after": {k: v for k, v in load.items() if k != "raw"},
        "admission_control": admission,
        "client_timeout_s": client_timeout_s(duration_s, admission),
    }
    summary.setdefault(key, {})[handle.policy] = result
    # Nothing lost: every request answered (200, or with admission control a rejection with a reason).
    assert result["lost"] == 0, result
    if not admission:
        assert result["rejected"] == 0, result
    assert result["rejections_without_reason"] == 0, result
    assert load["requests"] == 0 and load["kv_tokens"] == 0, load
    assert rss_after <= rss_before * (1 + RSS_GROWTH), result
    assert after_latency <= LATENCY_FACTOR * idle_latency + LATENCY_SLACK_S, result
    assert not log_problems(handle), log_problems(handle)[:5]
    return result


def test_overload_short(rel_server, reliability_summary):
    run_overload(rel_server, SHORT_OVERLOAD_S, reliability_summary, "overload_short", admission=False)


def soak_timeout_s(duration_s: float, admission: bool) -> float:
    """pytest-timeout for one overload test: start-up and ramp, the overload, the last answer."""
    return 300 + duration_s + client_timeout_s(duration_s, admission)


@pytest.mark.slow
@pytest.mark.timeout(soak_timeout_s(SOAK_OVERLOAD_S, admission=False))
def test_overload_soak(rel_server, reliability_summary):
    run_overload(rel_server, SOAK_OVERLOAD_S, reliability_summary, "overload_soak", admission=False)


@pytest.mark.slow
@pytest.mark.timeout(soak_timeout_s(SOAK_OVERLOAD_S, admission=True))
@pytest.mark.parametrize("duration_s", [60.0, SOAK_OVERLOAD_S], ids=["60s", "10min"])
def test_overload_with_admission_control(server_launcher, reliability_summary, tmp_path, duration_s):
    handle = server_launcher(["--batch-policy", "fairbatching", "--fair-admission-control"], tmp_path)
    handle.policy = "fairbatching+admission"
    result = run_overload(handle, duration_s, reliability_summary, f"overload_admission_{int(duration_s)}s", admission=True)
    assert result["latency_max_s"] is None or result["latency_max_s"] <= 120.0
    # How many of the rejections the HTTP guard gave from the replica's last PAB (the rest: the
    # scheduler's intake); each is counted once, by one of the two.
    result["http_admission"] = requests.get(f"{handle.base_url}/fair/state", timeout=30).json()["http_admission"]
    assert result["http_admission"]["rejected"] <= result["rejected"], result
