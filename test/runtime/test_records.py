"""The runtime's per-token envelope bookkeeping (``runtime/records.py``), without a scheduler.

``note_executed_batch`` judges a decode token only once the iteration's end passes the record's
``on_time_until_s`` (a shortcut that keeps the hot path to one comparison per request): these tests
check it counts exactly the tokens the envelope rule (``meets_envelope`` of ``envelope_slack_s``,
token by token) calls late, whatever the emission times.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sglang_fair.policy.cost_model import FEATURE_NAMES
from sglang_fair.policy.request import meets_envelope
from sglang_fair.runtime import records
from sglang_fair.runtime.records import RuntimeRequestState, late_decode_tokens, note_executed_batch


class _Mode:
    def __init__(self, extend: bool) -> None:
        self.extend = extend

    def is_extend(self) -> bool:
        return self.extend


def _batch(reqs, *, prefill_rows: int, extend_lens=()):
    return SimpleNamespace(
        reqs=reqs,
        decoding_reqs=reqs[prefill_rows:] if prefill_rows else None,
        forward_mode=_Mode(prefill_rows > 0),
        prefix_lens=[0] * prefill_rows,
        extend_lens=list(extend_lens),
    )


@settings(max_examples=200, deadline=None)
@given(
    ttft_slo_s=st.floats(0.05, 3.0),
    tpot_slo_s=st.floats(0.01, 0.5),
    gaps_s=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40),
)
def test_late_tokens_are_exactly_the_tokens_past_their_envelope_line(ttft_slo_s, tpot_slo_s, gaps_s):
    prompt = 12
    state = RuntimeRequestState("r", 0.0, prompt, ttft_slo_s, tpot_slo_s, max_new_tokens=len(gaps_s))
    req = SimpleNamespace(rid="r", output_ids=[], origin_input_ids=[1] * prompt, finished_reason=None)
    states = {"r": state}
    emitted_s = 0.0
    expected_late = 0
    for index, gap_s in enumerate(gaps_s):
        emitted_s += gap_s
        req.output_ids.append(7)
        if index == 0:  # the prefill that emits the first token
            batch = _batch([req], prefill_rows=1, extend_lens=[prompt])
        else:
            batch = _batch([req], prefill_rows=0)
        shape, _ = note_executed_batch(states, batch, emitted_s)
        expected_late += not meets_envelope(state.envelope_slack_s(index, emitted_s))
        assert state.generated_tokens == index + 1 and state.last_token_s == emitted_s
        assert shape.new_tokens == (prompt if index == 0 else 1)
    assert state.late_tokens == expected_late
    assert state.met_envelope == (expected_late == 0)
    assert state.first_token_s == gaps_s[0]


def test_a_decode_shape_counts_every_row_and_its_context():
    states = {}
    reqs = []
    for index in range(3):
        states[f"r{index}"] = RuntimeRequestState(f"r{index}", 0.0, 10, 1.0, 0.1, max_new_tokens=9)
        states[f"r{index}"].record_token(0.5)
        reqs.append(SimpleNamespace(rid=f"r{index}", output_ids=[1, 2], origin_input_ids=[0] * 10,
                                    finished_reason=None))
    untracked = SimpleNamespace(rid="other", output_ids=[1] * 4, origin_input_ids=[0] * 5, finished_reason="x")
    shape, finished = note_executed_batch(states, _batch(reqs + [untracked], prefill_rows=0), 0.6)
    assert (shape.new_tokens, shape.num_seqs, shape.sum_context) == (4, 4, 3 * 12 + 9)
    assert finished == [] and all(state.generated_tokens == 2 for state in states.values())


def test_a_mixed_shape_keeps_its_decode_rows_context_apart_from_the_chunks():
    """An extend batch holding a prefill chunk and decodes: its decode rows' context is what the
    ``mixed_context`` term prices, their contexts squared what ``mixed_context_sq`` prices (the
    chunk's prompt and prefix are not)."""
    prompt = SimpleNamespace(rid="p", output_ids=[], origin_input_ids=[0] * 40, finished_reason=None)
    decodes = [SimpleNamespace(rid=f"d{i}", output_ids=[1] * (i + 1), origin_input_ids=[0] * 10,
                               finished_reason=None) for i in range(3)]
    batch = _batch([prompt, *decodes], prefill_rows=1, extend_lens=[32])
    batch.prefix_lens = [8]
    shape, _ = note_executed_batch({}, batch, 0.5)
    assert (shape.num_prefills, shape.num_seqs, shape.new_tokens) == (1, 4, 35)
    assert shape.decode_context == 11 + 12 + 13
    assert shape.sum_context == 8 + 32 + shape.decode_context
    assert shape.decode_context_sq == 11 * 11 + 12 * 12 + 13 * 13
    features = dict(zip(FEATURE_NAMES, shape.features()))
    assert features["mixed_context"] == shape.decode_context
    assert features["mixed_context_sq"] == shape.decode_context_sq


def test_late_decode_tokens_are_those_past_the_planning_line_of_requests_still_on_time():
    """``--fair-iteration-log``'s late tokens: past the line anchored at the first token (for the
    last token, a missed mean TPOT), not the looser envelope; a request that missed its TTFT is
    settled and left out, and so is a prompt's chunk."""
    def record(rid, first_token_s):
        state = RuntimeRequestState(rid, 0.0, 10, 1.0, 0.1, max_new_tokens=8)
        state.record_token(first_token_s)
        return state, SimpleNamespace(rid=rid, output_ids=[1, 2], origin_input_ids=[0] * 10, finished_reason=None)

    on_time, on_time_req = record("on-time", 0.2)  # its second token is due by 0.3
    late, late_req = record("late", 0.1)  # due by 0.2
    lost, lost_req = record("lost", 1.5)  # missed its TTFT (1 s): settled
    prompt = SimpleNamespace(rid="p", output_ids=[1], origin_input_ids=[0] * 40, finished_reason=None)
    states = {state.rid: state for state in (on_time, late, lost)}
    batch = _batch([prompt, on_time_req, late_req, lost_req], prefill_rows=1, extend_lens=[40])
    tokens = late_decode_tokens(states, batch, 0.25)
    assert [token["rid"] for token in tokens] == ["late"]
    token = tokens[0]
    assert token["token"] == 1 and token["max_new_tokens"] == 8
    assert (token["late_s"], token["waited_s"], token["line_gave_s"]) == pytest.approx((0.05, 0.15, 0.1))
    # The envelope (arrival + TTFT + j * TPOT) would have called it on time.
    assert meets_envelope(late.envelope_slack_s(1, 0.25))
    assert late_decode_tokens(states, _batch([on_time_req, late_req], prefill_rows=0), 0.15) == []


@pytest.mark.parametrize("created_s, expected_s", [
    (99.9, 99.9),     # the HTTP server's receipt, 0.1 s before the scheduler's: the TTFT starts there
    (0.0, 100.0),     # not sent (SGLang without the patch, a calibration request): the scheduler's
    (100.5, 100.0),   # after the scheduler's receipt: another host's clock, not believed
    (10.0, 100.0),    # 90 s before it: the same
])
def test_a_request_arrives_at_the_http_servers_receipt_when_the_scheduler_has_it(created_s, expected_s):
    req = SimpleNamespace(time_stats=SimpleNamespace(created_time=created_s, scheduler_recv_time=100.0))
    assert records.arrival_time_s(req) == expected_s
