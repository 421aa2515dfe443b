import numpy as np
import pytest

from sim_helpers import write_azure_trace
from sglang_fair.sim import Trace, TraceError, load_trace, make_workload
from sglang_fair.sim.workload import parse_slo_classes


def _trace(n=5000, seed=0):
    rng = np.random.default_rng(seed)
    return Trace(rng.integers(1, 4000, n), rng.integers(1, 500, n), None, "synthetic")


def test_azure_trace_and_replay_scaling(tmp_path):
    path = write_azure_trace(tmp_path / "t.csv", [(0.0, 10, 2), (1.5, 20, 0), (4.0, 30, 5)])
    trace = load_trace(path)
    assert trace.prompt_tokens.tolist() == [10, 20, 30]
    assert trace.output_tokens.tolist() == [2, 1, 5]  # a request produces at least one token
    np.testing.assert_allclose(trace.timestamps_s, [0.0, 1.5, 4.0], atol=1e-6)
    fast = make_workload(trace, replay_timestamps=True, time_scale=2.0)
    np.testing.assert_allclose(fast.arrival_s, [0.0, 0.75, 2.0], atol=1e-6)


def test_sharegpt_lengths(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n74,918,992,0.08\n290,905,1195,0.3\n")
    trace = load_trace(path)
    assert trace.prompt_tokens.tolist() == [74, 290] and trace.timestamps_s is None
    with pytest.raises(ValueError, match="no TIMESTAMP"):
        make_workload(trace, replay_timestamps=True)


@pytest.mark.parametrize("content, match", [
    ("a,b\n1,2\n", "expected columns"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,x,3\n", "bad value on line 2"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n", "no requests"),
    # Read as csv.DictReader reads rows: a blank row is skipped and not counted, a short row is bad.
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n\n2023-11-16 18:15:46.1,5,3\n2023-11-16 18:15:47.1,5\n",
     "bad value on line 3"),
    ("", "expected columns"),
])
def test_trace_errors_are_one_line(tmp_path, content, match):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(TraceError, match=match) as info:
        load_trace(path)
    assert "\n" not in str(info.value)


def test_a_column_named_twice_is_read_from_its_last_occurrence(tmp_path):
    path = tmp_path / "twice.csv"
    path.write_text("ContextTokens,GeneratedTokens,ContextTokens\n1,2,30\n\n4,5,60\n")
    trace = load_trace(path)
    assert trace.prompt_tokens.tolist() == [30, 60] and trace.output_tokens.tolist() == [2, 5]


def test_missing_trace():
    with pytest.raises(TraceError, match="no such file"):
        load_trace("/nonexistent/trace.csv")


def test_poisson_rate_and_determinism():
    trace = _trace()
    a = make_workload(trace, rate_rps=10.0, seed=3)
    b = make_workload(trace, rate_rps=10.0, seed=3)
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    gaps = np.diff(a.arrival_s)
    assert gaps.mean() == pytest.approx(0.1, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.1)
    assert (gaps >= 0).all()


def test_gamma_is_burstier_with_same_mean():
    w = make_workload(_trace(), rate_rps=10.0, arrival="gamma", burstiness_cv=3.0, seed=1)
    gaps = np.diff(w.arrival_s)
    assert gaps.mean() == pytest.approx(0.1, rel=0.15)
    assert gaps.std() / gaps.mean() > 2.0


def test_slo_classes_and_clients():
    classes = parse_slo_classes("1:0.05:0.25,2:0.1:0.75")
    w = make_workload(_trace(), rate_rps=5, slo_classes=classes, clients=3, client_skew=1.0, seed=0)
    assert set(np.unique(w.ttft_slo_s)) == {1.0, 2.0}
    assert (w.ttft_slo_s == 1.0).mean() == pytest.approx(0.25, abs=0.03)
    assert set(np.unique(w.client)) == {0, 1, 2}
    counts = np.bincount(w.client)
    assert counts[0] > counts[1] > counts[2]  # Zipf-like skew
    # Changing SLOs or clients keeps the same arrivals.
    plain = make_workload(_trace(), rate_rps=5, seed=0)
    np.testing.assert_array_equal(plain.arrival_s, w.arrival_s)


@pytest.mark.parametrize("text", ["1", "a:b", "1:0.05:-1", "0:0.05", "1:nan"])
def test_bad_slo_classes(text):
    with pytest.raises(ValueError):
        parse_slo_classes(text)


def test_bad_rates():
    for rate in (None, 0, -1, float("inf")):
        with pytest.raises(ValueError, match="--rate"):
            make_workload(_trace(), rate_rps=rate)
