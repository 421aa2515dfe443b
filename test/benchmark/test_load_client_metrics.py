"""Metric math of benchmark/load_client.py (no server): bench_serving's SLO, goodput, TPOT."""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

_PATH = Path(__file__).resolve().parents[2] / "benchmark" / "load_client.py"
_spec = importlib.util.spec_from_file_location("sglang_fair_bench_load_client", _PATH)
load_client = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = load_client  # dataclasses look their module up by name
_spec.loader.exec_module(load_client)


def _result(token_times_s, ttft_slo_s=1.0, tpot_slo_s=0.1, ok=True, latency_s=None):
    spec = load_client.RequestSpec(0, 0.0, 10, len(token_times_s), ttft_slo_s, tpot_slo_s)
    result = load_client.RequestResult(spec, ok=ok, token_times_s=list(token_times_s))
    result.latency_s = token_times_s[-1] if latency_s is None and token_times_s else latency_s
    return result


def test_tpot_is_bench_serving_definition():
    result = _result([0.5, 0.6, 0.8, 0.9], latency_s=1.1)
    assert result.ttft_s == 0.5
    assert result.tpot_s == pytest.approx((1.1 - 0.5) / 3)
    assert math.isnan(_result([0.3]).tpot_s)


def test_slo_needs_both_ttft_and_mean_tpot():
    assert _result([0.9, 0.95, 1.05]).meets_slo()
    assert not _result([1.2, 1.3]).meets_slo()  # TTFT late
    assert not _result([0.1, 0.5]).meets_slo()  # TPOT 0.4 > 0.1
    assert _result([0.1]).meets_slo()  # one token: no TPOT to miss
    assert _result([0.1], latency_s=0.9).meets_slo()  # ... even when the request closes later
    assert not _result([0.1, 0.2], ok=False).meets_slo()
    # Mean TPOT may hide a long gap; the envelope definition does not.
    assert _result([0.1, 0.15, 0.2, 0.25, 0.45]).meets_envelope()  # every token early
    stalled = _result([0.2, 1.5, 1.51, 1.52, 1.53, 1.54, 1.55, 1.56, 1.57, 1.58, 1.59, 1.6, 1.61,
                       1.62, 1.63, 1.64])  # mean TPOT 0.096 <= 0.1, but token 1 was due at 1.1
    assert stalled.meets_slo() and not stalled.meets_envelope()


def test_summarize_goodput_and_attainment():
    results = [_result([0.5, 0.6]), _result([2.0, 2.1]), _result([0.1, 0.2], ok=False)]
    summary = load_client.summarize(results, duration_s=4.0)
    assert summary["requests"] == 3 and summary["completed"] == 2 and summary["failed"] == 1
    assert summary["slo_attainment"] == pytest.approx(1 / 3)
    # The second missed its TTFT only; the third, never completed, missed both.
    assert summary["ttft_attainment"] == pytest.approx(1 / 3)
    assert summary["tpot_attainment"] == pytest.approx(2 / 3)
    rows = load_client.request_rows(results)
    assert [dict(zip(load_client.REQUEST_COLUMNS, row))["ttft_met"] for row in rows] == [True, False, False]
    rows = [dict(zip(load_client.REQUEST_COLUMNS, row)) for row in rows]
    assert [row["tpot_met"] for row in rows] == [True, True, False]  # TPOT met, met, never completed
    assert rows[0]["output_tokens"] == 2 and rows[0]["ttft_s"] == pytest.approx(0.5)
    assert math.isnan(rows[0]["server_ttft_s"])  # no --enable-metrics stamps: unknown, not zero
    assert summary["goodput_rps"] == pytest.approx(0.25)
    assert summary["throughput_rps"] == pytest.approx(0.5)
    assert summary["ttft_p50_s"] == pytest.approx(1.25)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 200), st.floats(0.1, 20.0), st.integers(0, 2**31 - 1))
def test_workload_is_seeded_scaled_and_poisson(num_requests, rate_rps, seed):
    prompts = np.array([100, 2000, 8000, 16])
    outputs = np.array([1, 50, 900, 10])
    kwargs = dict(num_requests=num_requests, rate_rps=rate_rps, seed=seed, length_scale=0.125,
                  ttft_slo_s=1.0, tpot_slo_s=0.1)
    specs = load_client.make_workload(prompts, outputs, **kwargs)
    assert specs == load_client.make_workload(prompts, outputs, **kwargs)
    assert specs[0].arrival_offset_s == 0.0
    offsets = [s.arrival_offset_s for s in specs]
    assert offsets == sorted(offsets)
    for s in specs:
        assert 1 <= s.prompt_tokens <= 1024 and 2 <= s.output_tokens <= 256
    ids = load_client.prompt_ids(specs[0], seed, 1024)
    assert len(ids) == specs[0].prompt_tokens and min(ids) >= load_client.FIRST_PLAIN_TOKEN_ID


def test_only_loopback_urls():
    load_client.check_loopback("http://127.0.0.1:30000")
    with pytest.raises(ValueError):
        load_client.check_loopback("http://example.com:30000")


def test_server_stamps_split_the_ttft_into_its_legs():
    """SGLang's last chunk under --enable-metrics carries its receipt (wall clock) and the time from
    it to the first token; the rest of the client's TTFT is the way back."""
    result = _result([0.100, 0.120])
    result.read_server_stamps({"request_received_ts": 1000.004, "first_token_latency": 0.080}, sent_wall_s=1000.0)
    assert result.to_server_s == pytest.approx(0.004)
    assert result.server_ttft_s == pytest.approx(0.080)
    assert result.back_to_client_s == pytest.approx(0.016)
    unstamped = _result([0.100, 0.120])
    unstamped.read_server_stamps({"completion_tokens": 2}, sent_wall_s=1000.0)
    assert math.isnan(unstamped.server_ttft_s) and math.isnan(unstamped.back_to_client_s)
