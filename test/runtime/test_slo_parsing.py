"""SLOs from ``custom_params`` and which requests may sit out (no scheduler needed)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sglang_fair.runtime.load import horizon_tokens, load_entry, load_tokens
from sglang_fair.runtime.slo import can_sit_out, parse_request_slos


def test_defaults_when_absent_or_not_ours():
    assert parse_request_slos(None, 1.0, 0.1) == (1.0, 0.1)
    assert parse_request_slos({"other": 3}, 1.0, 0.1) == (1.0, 0.1)
    assert parse_request_slos({"ttft_slo": 2, "tpot_slo": 0.05}, 1.0, 0.1) == (2.0, 0.05)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"ttft_slo": -1}, "custom_params.ttft_slo"),
        ({"ttft_slo": 0}, "custom_params.ttft_slo"),
        ({"ttft_slo": math.nan}, "custom_params.ttft_slo"),
        ({"tpot_slo": math.inf}, "custom_params.tpot_slo"),
        ({"tpot_slo": "0.1"}, "custom_params.tpot_slo"),
        ({"tpot_slo": [0.1]}, "custom_params.tpot_slo"),
        ({"tpot_slo": None}, "custom_params.tpot_slo"),
        ({"ttft_slo": False}, "custom_params.ttft_slo"),
        ({"ttft_slo": 1e7}, "custom_params.ttft_slo"),
    ],
)
def test_bad_values_name_the_field(params, field):
    with pytest.raises(ValueError) as err:
        parse_request_slos(params, 1.0, 0.1)
    assert field in str(err.value) and "\n" not in str(err.value)


def _req(**sampling):
    params = SimpleNamespace(
        frequency_penalty=0.0, presence_penalty=0.0, repetition_penalty=1.0, min_new_tokens=0, logit_bias=None
    )
    for key, value in sampling.items():
        setattr(params, key, value)
    return SimpleNamespace(
        return_logprob=False, grammar=None, custom_logit_processor=None, beam_group=None,
        return_hidden_states=False, input_embeds=None, sampling_params=params,
    )


@pytest.mark.parametrize(
    "change",
    [
        {"frequency_penalty": 0.5}, {"presence_penalty": 0.1}, {"repetition_penalty": 1.1},
        {"min_new_tokens": 3}, {"logit_bias": {"1": 2.0}},
    ],
)
def test_penalised_requests_never_sit_out(change):
    assert can_sit_out(_req())
    assert not can_sit_out(_req(**change))


def test_logprob_and_grammar_requests_never_sit_out():
    req = _req()
    req.return_logprob = True
    assert not can_sit_out(req)
    req = _req()
    req.grammar = object()
    assert not can_sit_out(req)


MODEL = SimpleNamespace(per_new_token_s=1e-4, per_context_token_s=0.0)


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), st.floats(min_value=0.01, max_value=100))
def test_load_is_a_non_negative_int_falling_with_the_budget(pab_tokens, horizon_s):
    pab = SimpleNamespace(tokens=pab_tokens, horizon_s=horizon_s)
    more = SimpleNamespace(tokens=pab_tokens + 1000, horizon_s=horizon_s)
    load = load_tokens(MODEL, pab)
    assert isinstance(load, int) and load >= 0
    assert load_tokens(MODEL, more) <= load


def test_idle_replica_reports_zero_and_nan_budget_saturates():
    full = horizon_tokens(MODEL, 1.0)
    assert load_tokens(MODEL, SimpleNamespace(tokens=full, horizon_s=1.0)) == 0
    assert load_tokens(MODEL, SimpleNamespace(tokens=math.nan, horizon_s=1.0)) > 0


def test_load_entry_shape():
    entry = load_entry(0, {"runtime": {"running_requests": 2, "waiting_requests": 1, "load_tokens": 7}})
    assert entry["dp_rank"] == 0 and entry["num_tokens"] == 7 and entry["num_reqs"] == 3


@pytest.mark.parametrize("params", [[1, 2], "fast", 3, True])
def test_custom_params_that_is_not_an_object_is_refused(params):
    with pytest.raises(ValueError) as err:
        parse_request_slos(params, 1.0, 0.1)
    assert str(err.value).startswith("custom_params must be a JSON object")
