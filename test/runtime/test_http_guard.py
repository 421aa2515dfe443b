"""The HTTP request guard without a server: body checks and the rejection translation (ASGI)."""

from __future__ import annotations

import asyncio
import json

import pytest

from sglang_fair.runtime.http_routes import RequestGuard, find_body_problem
from sglang_fair.runtime.rejection import ADMISSION_STATUS, admission_rejection_message
from sglang_fair.runtime.slo import check_custom_params


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/generate", {"text": "x", "sampling_params": {"custom_params": [1, 2]}}, "sampling_params.custom_params"),
        ("/generate", {"text": "x", "sampling_params": {"custom_params": "fast"}}, "sampling_params.custom_params"),
        ("/generate", {"text": "x", "sampling_params": {"custom_params": {"ttft_slo": "1"}}},
         "sampling_params.custom_params.ttft_slo"),
        ("/generate", {"text": ["a", "b"], "sampling_params": [{}, {"custom_params": {"tpot_slo": -1}}]},
         "sampling_params[1].custom_params.tpot_slo"),
        ("/v1/completions", {"prompt": "x", "custom_params": [1, 2]}, "custom_params"),
        ("/v1/chat/completions", {"messages": [], "custom_params": {"ttft_slo": 1e12}}, "custom_params.ttft_slo"),
        ("/v1/completions", {"prompt": "x", "custom_params": {"tpot_slo": None}}, "custom_params.tpot_slo"),
    ],
)
def test_bad_custom_params_are_named(path, body, field):
    found = find_body_problem(path, json.dumps(body).encode())
    assert found is not None and found[0] == field and field in found[1]


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[1, 2]", b'{"text": "x"}', b'{"text": "x", "sampling_params": {"custom_params": {"client": "a"}}}',
     b'{"text": "x", "sampling_params": {"custom_params": null}}', b'{"sampling_params": 3}'],
)
def test_good_or_not_ours_bodies_pass(raw):
    assert find_body_problem("/generate", raw) is None


def test_nan_slo_is_named():
    found = find_body_problem("/v1/completions", b'{"prompt": "x", "custom_params": {"ttft_slo": NaN}}')
    assert found and found[0] == "custom_params.ttft_slo"


def test_check_custom_params_returns_our_keys_only():
    assert check_custom_params({"ttft_slo": 2, "other": [1]}) == {"ttft_slo": 2.0}
    assert check_custom_params(None) == {}


def _run(app, path="/generate", body=b"{}", **guard):
    """Drive ``RequestGuard(app)`` with one request; return the messages it sent."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": []}
    asyncio.run(RequestGuard(app, **guard)(scope, receive, send))
    return sent


def _stream_app(first_event: dict):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: " + json.dumps(first_event).encode() + b"\n\n",
                    "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    return app


def test_streamed_rejection_becomes_a_plain_429_with_retry_after():
    reason = admission_rejection_message(1.0)
    event = {"meta_info": {"finish_reason": {"type": "abort", "message": reason, "status_code": 429}}}
    sent = _run(_stream_app(event), admission=True, replica="127.0.0.1:1")
    start, body = sent[0], sent[1]
    assert start["status"] == ADMISSION_STATUS and len(sent) == 2
    headers = dict(start["headers"])
    assert headers[b"retry-after"] == b"1" and headers[b"x-sglang-fair-replica"] == b"127.0.0.1:1"
    assert json.loads(body["body"])["error"]["message"] == reason


def test_openai_stream_error_event_is_translated_too():
    reason = admission_rejection_message(0.5)
    sent = _run(_stream_app({"error": {"message": reason, "code": 429}}), path="/v1/completions", admission=True)
    assert sent[0]["status"] == 429


def test_ordinary_stream_passes_untouched():
    event = {"text": "hi", "meta_info": {"finish_reason": None}}
    sent = _run(_stream_app(event), admission=True)
    assert [m.get("status") for m in sent] == [200, None, None]
    assert sent[-1]["body"] == b"data: [DONE]\n\n"


def test_validation_answers_400_before_the_app():
    called = []

    async def app(scope, receive, send):
        called.append(True)

    body = json.dumps({"text": "x", "sampling_params": {"custom_params": [1, 2]}}).encode()
    sent = _run(app, body=body, validate=True)
    assert not called and sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"]["param"] == "sampling_params.custom_params"


def test_validation_replays_the_body_to_the_app():
    seen = []

    async def app(scope, receive, send):
        seen.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}", "more_body": False})

    _run(app, body=b'{"text": "x"}', validate=True)
    assert seen[0]["body"] == b'{"text": "x"}'


def test_bad_token_id_names_the_first_one():
    from sglang_fair.runtime.http_routes import bad_token_id

    assert bad_token_id([1, 2, 3], 512) is None and bad_token_id(None, 512) is None
    assert bad_token_id([], 512).startswith("the prompt is empty")
    assert bad_token_id([1, 999999999], 512).startswith("input_ids[1] = 999999999")
    assert bad_token_id([-1], 512).startswith("input_ids[0] = -1")



@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/completions", {"prompt": "x", "n": 2147483648}, "n"),
        ("/v1/chat/completions", {"messages": [], "n": 0}, "n"),
        ("/generate", {"text": "x", "sampling_params": {"n": 10**9}}, "sampling_params.n"),
        ("/generate", {"text": "x", "sampling_params": {"n": "2"}}, "sampling_params.n"),
        ("/v1/chat/completions", {"messages": [], "response_format": 1.5}, "response_format"),
        ("/v1/completions", {"prompt": "x", "response_format": [1]}, "response_format"),
    ],
)
def test_absurd_n_is_refused_under_every_policy(path, body, field):
    found = find_body_problem(path, json.dumps(body).encode(), check_slos=False)
    assert found is not None and found[0] == field


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": "Hello there", "sampling_params": []}, "sampling_params"),  # was a 500 (IndexError)
        ({"text": "x", "sampling_params": [{}]}, "sampling_params"),  # a list for a single prompt
        ({"text": ["a", "b"], "sampling_params": [{}]}, "sampling_params"),  # one short
        ({"text": ["a", "b"], "sampling_params": [{}, 3]}, "sampling_params[1]"),
        ({"input_ids": [[1, 2], [3]], "sampling_params": [{}, {}, {}]}, "sampling_params"),
        ({"text": [], "sampling_params": []}, "text"),  # an empty batch: a 500 too
        ({"text": []}, "text"),
    ],
)
def test_a_sampling_params_list_of_the_wrong_shape_is_refused_under_every_policy(body, field):
    found = find_body_problem("/generate", json.dumps(body).encode(), check_slos=False)
    assert found is not None and found[0] == field, found


@pytest.mark.parametrize(
    "body",
    [{"text": ["a", "b"], "sampling_params": [{}, {"max_new_tokens": 2}]},
     {"input_ids": [[1, 2], [3]], "sampling_params": [{}, {}]},
     {"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 2}},
     {"text": ["a", "b"], "sampling_params": {"max_new_tokens": 2}}],
)
def test_a_batch_with_one_sampling_params_object_per_prompt_passes(body):
    assert find_body_problem("/generate", json.dumps(body).encode(), check_slos=False) is None


# ---------------------------------------------------------------- early rejection from the PAB
def _never_called(scope, receive, send):
    raise AssertionError("the request reached the app")


def _served(scope, receive, send):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}", "more_body": False})

    return app(scope, receive, send)


def _gate(exhausted: bool, age_s: float = 0.0):
    import time

    from sglang_fair.runtime.http_routes import PabGate

    gate = PabGate(default_ttft_s=1.0)
    gate.exhausted = exhausted
    gate.read_s = time.monotonic() - age_s
    return gate


def test_an_exhausted_pab_rejects_in_the_guard_with_the_reason_and_retry_after():
    gate = _gate(exhausted=True)
    sent = _run(_never_called, body=b'{"text": "hi"}', admission=True, gate=gate, replica="127.0.0.1:1")
    start, body = sent
    assert start["status"] == ADMISSION_STATUS
    headers = dict(start["headers"])
    assert headers[b"retry-after"] == b"1" and headers[b"x-sglang-fair-replica"] == b"127.0.0.1:1"
    assert json.loads(body["body"])["error"]["message"] == admission_rejection_message(1.0)
    assert gate.rejected == 1 and gate.snapshot()["rejected"] == 1


@pytest.mark.parametrize("gate, path, body", [
    (lambda: _gate(exhausted=False), "/generate", b'{"text": "hi"}'),  # budget left
    (lambda: _gate(exhausted=True, age_s=5.0), "/generate", b'{"text": "hi"}'),  # reading too old
    (lambda: _gate(exhausted=True), "/generate",  # a longer TTFT: the scheduler judges it
     b'{"text": "hi", "sampling_params": {"custom_params": {"ttft_slo": 5}}}'),
    (lambda: _gate(exhausted=True), "/v1/completions", b'{"prompt": "hi", "custom_params": {"ttft_slo": 2.5}}'),
])
def test_the_guard_leaves_the_decision_to_the_scheduler_unless_sure(gate, path, body):
    gate = gate()
    sent = _run(_served, path=path, body=body, admission=True, gate=gate)
    assert sent[0]["status"] == 200 and gate.rejected == 0


@pytest.mark.parametrize("seconds, exhausted", [([0.0], True), ([-0.5, -0.1], True), ([-0.5, 0.2], False),
                                                 ([None], False), ([], False)])
def test_the_gate_reads_exhaustion_on_every_rank(monkeypatch, seconds, exhausted):
    from sglang_fair.runtime import http_routes

    async def states():
        return [{"runtime": {"pab": {"seconds": s}}} for s in seconds]

    monkeypatch.setattr(http_routes, "fair_states", states)
    gate = http_routes.PabGate(1.0)
    asyncio.run(gate._read())
    assert gate.exhausted is exhausted and gate.readings == 1


def test_a_failed_reading_decides_nothing(monkeypatch):
    from sglang_fair.runtime import http_routes

    async def down():
        raise RuntimeError("scheduler gone")

    monkeypatch.setattr(http_routes, "fair_states", down)
    gate = _gate(exhausted=True)
    asyncio.run(gate._read())
    assert not gate.exhausted
