"""Abort storm: streaming clients hang up at random points, waiting requests are aborted by id;
afterwards the server is idle with no KV in use and its log has no leak report.

Short (default run): 60 streaming clients + 20 aborted waiting requests per policy.
``-m slow``: 400 + 100.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import aiohttp
import pytest
import requests

from reliability_helpers import (
    CLIENT_TIMEOUT_S,
    client_session,
    generate_body,
    log_problems,
    plain_latency_s,
    prompt_ids,
    server_load,
    wait_idle,
)

pytestmark = pytest.mark.e2e

OUTPUT_TOKENS = 48


async def _hang_up_client(session, url, rng, index, counts):
    """Stream a request, read a random number of events (0: hang up before the first), leave."""
    events_to_read = rng.choice([0, 0, 1, 2, 3, 5, 8, 20])
    body = generate_body(prompt_ids(rng, rng.randint(20, 400)), OUTPUT_TOKENS, stream=True)
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)) as response:
            counts[str(response.status)] = counts.get(str(response.status), 0) + 1
            read = 0
            async for line in response.content:
                if line.startswith(b"data:"):
                    read += 1
                    if read >= events_to_read:
                        break
            # Leaving the context closes the connection mid-stream (or at [DONE] for 20 events).
            response.close()
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        counts[type(exc).__name__] = counts.get(type(exc).__name__, 0) + 1


async def _waiting_then_aborted(session, base_url, rng, counts):
    """A long request that waits behind the storm, aborted by its id through /abort_request."""
    rid = f"rel-abort-{uuid.uuid4().hex}"
    body = generate_body(prompt_ids(rng, 800), OUTPUT_TOKENS, rid=rid)
    task = asyncio.create_task(session.post(f"{base_url}/generate", json=body,
                                            timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)))
    await asyncio.sleep(rng.uniform(0.0, 0.5))
    async with session.post(f"{base_url}/abort_request", json={"rid": rid}) as abort:
        counts[f"abort_{abort.status}"] = counts.get(f"abort_{abort.status}", 0) + 1
    try:
        response = await task
        counts[f"aborted_answer_{response.status}"] = counts.get(f"aborted_answer_{response.status}", 0) + 1
        response.release()
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        counts[type(exc).__name__] = counts.get(type(exc).__name__, 0) + 1


async def _storm(base_url: str, clients: int, aborted: int, seed: int) -> dict:
    rng = random.Random(seed)
    counts: dict[str, int] = {}
    async with client_session() as session:
        jobs = [_hang_up_client(session, f"{base_url}/generate", rng, i, counts) for i in range(clients)]
        jobs += [_waiting_then_aborted(session, base_url, rng, counts) for _ in range(aborted)]
        rng.shuffle(jobs)
        tasks = []
        for job in jobs:  # arrivals spread over about a second
            tasks.append(asyncio.create_task(job))
            await asyncio.sleep(rng.uniform(0, 2.0 / max(len(jobs), 1)))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=CLIENT_TIMEOUT_S + 30)
    return counts


def run_storm(handle, clients: int, aborted: int, summary: dict, key: str) -> dict:
    idle_latency = plain_latency_s(handle.base_url)
    started = time.monotonic()
    counts = asyncio.run(_storm(handle.base_url, clients, aborted, seed=3))
    storm_s = time.monotonic() - started
    load, idle_after_s = wait_idle(handle.base_url)
    # What is still in the pool once idle is the radix cache's (evictable); flushed, a leak remains.
    flushed = requests.post(f"{handle.base_url}/flush_cache", timeout=60)
    after_flush = server_load(handle.base_url)
    latency_after = plain_latency_s(handle.base_url)
    result = {
        "streaming_clients": clients,
        "aborted_waiting": aborted,
        "sent": clients + aborted,
        "answers": counts,
        "storm_s": storm_s,
        "idle_after_s": idle_after_s,
        "requests_after": load["requests"],
        "kv_tokens_after_flush": after_flush["kv_tokens"],
        "flush_status": flushed.status_code,
        "idle_latency_s": idle_latency,
        "latency_after_s": latency_after,
        "log_problems": log_problems(handle)[:5],
    }
    summary.setdefault(key, {})[handle.policy] = result
    assert load["requests"] == 0, result
    assert flushed.status_code == 200 and after_flush["kv_tokens"] == 0, result
    assert not result["log_problems"], result
    assert not any(k.startswith("5") for k in counts), result
    return result


def test_abort_storm_short(rel_server, reliability_summary):
    run_storm(rel_server, 60, 20, reliability_summary, "abort_storm_short")


@pytest.mark.slow
def test_abort_storm_long(rel_server, reliability_summary):
    run_storm(rel_server, 400, 100, reliability_summary, "abort_storm_long")
