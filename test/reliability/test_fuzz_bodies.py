"""Fuzzing the three generation routes with hypothesis-made bodies: never a 5xx, never a hang, and
the next plain request is served.

Bodies mix plausible fields with wrong types, huge and negative numbers, NaN and infinities (JSON
has none: they are sent as Python's ``NaN``/``Infinity`` spellings, which a strict parser refuses),
deep nesting, prompts past the context length, token ids outside the vocabulary and bad
``custom_params``.  Generation lengths stay small or invalid, so a valid body finishes in seconds.

Short (default run): 20 bodies per route per policy, derandomized (the same bodies every run).
``-m slow``: 200 per route.
"""

from __future__ import annotations

import json
import math

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reliability_helpers import generate_body, log_problems, prompt_ids

pytestmark = pytest.mark.e2e

ROUTES = ("/generate", "/v1/completions", "/v1/chat/completions")
#: A fuzzed request must be answered within this (a hang fails the test).
FUZZ_TIMEOUT_S = 60.0
SHORT_EXAMPLES, LONG_EXAMPLES = 20, 200
CONTEXT_TOKENS = 4096  # the tiny model's context length

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
anything = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
#: Token counts: tiny, zero, negative, huge, or not numbers; never a valid *long* generation.
lengths = st.sampled_from([-1, 0, 1, 2, 8, 2**31, 2**63, 10**30, -(10**9), 1.5, math.nan, math.inf, "8", None, [4]])
wild_numbers = st.sampled_from([-1, 2, 1e308, -1e308, math.nan, math.inf, -math.inf, "1", None, True, [1]])
slo_values = st.sampled_from([0.5, 5.0, 0, -1, 1e12, math.nan, math.inf, "1.0", None, True, [1], {"x": 1}])
custom_params = (
    st.fixed_dictionaries({}, optional={"ttft_slo": slo_values, "tpot_slo": slo_values, "client": anything})
    | st.sampled_from([[1, 2], "fast", 3, None, True, []])
    | anything
)
texts = (
    st.text(max_size=40)
    | st.just("word " * (CONTEXT_TOKENS + 500))  # past the context length
    | anything
)
token_ids = st.lists(st.integers(min_value=-5, max_value=2**40), max_size=6) | st.just(list(range(3, 3 + CONTEXT_TOKENS + 100)))


def mostly(valid, wild):
    """Usually ``valid``, sometimes ``wild``: most bodies then get past the first check, so the
    fuzzing reaches the tokenizer, the scheduler and the stream, not only the JSON parser."""
    return st.one_of(valid, valid, valid, wild)


small_lengths = st.sampled_from([1, 2, 4, 8])
numbers = mostly(st.sampled_from([0, 0.5, 1]), wild_numbers)
sampling = mostly(
    st.fixed_dictionaries(
        {"max_new_tokens": mostly(small_lengths, lengths)},
        optional={
            "temperature": numbers, "top_p": numbers, "top_k": numbers, "min_p": numbers,
            "frequency_penalty": numbers, "repetition_penalty": numbers, "n": mostly(st.sampled_from([1, 2]), lengths),
            "stop": anything, "ignore_eos": st.booleans() | anything,
            "custom_params": mostly(st.just({"ttft_slo": 5.0, "tpot_slo": 1.0}), custom_params),
            "regex": st.sampled_from(["(", "[a-z]{1,3}", "a" * 300]) | anything,
        },
    ),
    anything,
)
plain_text = st.sampled_from(["Hello there", "The capital of France is", "1 2 3"])


def _with_depth(body: dict, depth: int) -> str:
    """``body`` as JSON text with a value nested ``depth`` deep spliced in (json.dumps would recurse)."""
    text = json.dumps(body, allow_nan=True)
    nested = "[" * depth + "]" * depth
    return text[:-1] + (", " if len(body) else "") + f'"nested": {nested}}}'


generate_bodies = st.fixed_dictionaries(
    {"text": mostly(plain_text, texts), "sampling_params": sampling},
    optional={"input_ids": token_ids, "stream": st.booleans() | anything, "rid": anything,
              "return_logprob": st.booleans() | anything, "logprob_start_len": numbers},
)
completion_bodies = st.fixed_dictionaries(
    {"model": mostly(st.just("default"), anything), "prompt": mostly(plain_text, texts | token_ids),
     "max_tokens": mostly(small_lengths, lengths)},
    optional={"temperature": numbers, "n": mostly(st.sampled_from([1, 2]), lengths),
              "stream": st.booleans() | anything, "stop": anything, "logprobs": lengths, "echo": st.booleans(),
              "custom_params": custom_params, "top_p": numbers, "seed": numbers},
)
message = st.fixed_dictionaries({"role": mostly(st.just("user"), st.sampled_from(["system", "assistant", "tool", "x"])
                                                | anything),
                                 "content": mostly(plain_text, texts)})
messages = mostly(st.lists(message, min_size=1, max_size=3), anything)
chat_bodies = st.fixed_dictionaries(
    {"model": mostly(st.just("default"), anything), "messages": messages,
     "max_tokens": mostly(small_lengths, lengths)},
    optional={"max_completion_tokens": lengths, "temperature": numbers, "n": mostly(st.sampled_from([1, 2]), lengths),
              "stream": st.booleans() | anything, "custom_params": custom_params, "tools": anything,
              "response_format": anything, "logprobs": st.booleans() | anything, "top_logprobs": lengths},
)
BODIES = {"/generate": generate_bodies, "/v1/completions": completion_bodies, "/v1/chat/completions": chat_bodies}


def _send(base_url: str, route: str, raw: str) -> int:
    try:
        with requests.post(f"{base_url}{route}", data=raw.encode("utf-8", "surrogatepass"),
                           headers={"content-type": "application/json"}, timeout=FUZZ_TIMEOUT_S, stream=True) as response:
            for _ in response.iter_content(chunk_size=65536):  # a stream must end too
                pass
            return response.status_code
    except requests.Timeout:
        pytest.fail(f"{route}: no complete answer within {FUZZ_TIMEOUT_S:.0f} s for body {raw[:300]!r}")
    except requests.ConnectionError as exc:
        pytest.fail(f"{route}: connection failed ({exc}) for body {raw[:300]!r}: did the server die?")


def _plain_request_served(base_url: str) -> None:
    import random

    response = requests.post(f"{base_url}/generate", json=generate_body(prompt_ids(random.Random(1), 8), 4), timeout=60)
    assert response.status_code == 200, response.text


def fuzz_route(handle, route: str, examples: int, summary: dict, key: str) -> None:
    seen: dict[str, int] = {}

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(body=BODIES[route], depth=st.sampled_from([0, 0, 0, 0, 0, 3, 200, 5000]))
    def one(body, depth):
        raw = _with_depth(body, depth) if depth else json.dumps(body, allow_nan=True)
        status = _send(handle.base_url, route, raw)
        seen[str(status)] = seen.get(str(status), 0) + 1
        assert status < 500, f"{route} answered {status} to {raw[:500]!r}"
        if sum(seen.values()) % 5 == 0:
            _plain_request_served(handle.base_url)

    one()
    _plain_request_served(handle.base_url)
    problems = log_problems(handle)
    summary.setdefault(key, {}).setdefault(handle.policy, {})[route] = {"bodies": sum(seen.values()), "codes": seen}
    assert not problems, problems[:5]


@pytest.mark.parametrize("route", ROUTES)
def test_fuzz_short(rel_server, reliability_summary, route):
    fuzz_route(rel_server, route, SHORT_EXAMPLES, reliability_summary, "fuzz_short")


@pytest.mark.slow
@pytest.mark.parametrize("route", ROUTES)
def test_fuzz_long(rel_server, reliability_summary, route):
    fuzz_route(rel_server, route, LONG_EXAMPLES, reliability_summary, "fuzz_long")
