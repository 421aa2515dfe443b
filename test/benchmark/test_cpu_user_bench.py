"""Pure parts of benchmark/cpu_user_bench.py (no server): settings swept, collapse counting,
bursty arrivals, the report."""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

_BENCH = Path(__file__).resolve().parents[2] / "benchmark"
sys.path.insert(0, str(_BENCH))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, _BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


user = _load("cpu_user_bench")
import load_client  # noqa: E402


def test_stock_is_swept_with_and_without_mixed_chunk():
    servers = user.stock_settings([256, 1024], "both")
    assert [s.name for s in servers] == ["sglang-c256", "sglang-c256-mixed", "sglang-c1024", "sglang-c1024-mixed"]
    assert all(s.args[:2] == ["--batch-policy", "sglang"] for s in servers)
    assert sum("--enable-mixed-chunk" in s.args for s in servers) == 2
    assert [s.name for s in user.stock_settings([512], "off")] == ["sglang-c512"]


def test_bursty_arrivals_have_the_asked_coefficient_of_variation():
    prompts, outputs = np.array([100, 200]), np.array([10, 20])
    specs = load_client.make_workload(prompts, outputs, num_requests=20000, rate_rps=5.0, seed=1,
                                      length_scale=1.0, ttft_slo_s=1, tpot_slo_s=1, arrival_cv=3.0)
    gaps = np.diff([s.arrival_offset_s for s in specs])
    assert abs(gaps.mean() - 0.2) < 0.02 and abs(gaps.std() / gaps.mean() - 3.0) < 0.3
    poisson = load_client.make_workload(prompts, outputs, num_requests=50, rate_rps=5.0, seed=1,
                                        length_scale=1.0, ttft_slo_s=1, tpot_slo_s=1)
    assert poisson == load_client.make_workload(prompts, outputs, num_requests=50, rate_rps=5.0, seed=1,
                                                length_scale=1.0, ttft_slo_s=1, tpot_slo_s=1, arrival_cv=1.0)


def _summary(attainment, goodput):
    return {"slo_attainment": attainment, "goodput_rps": goodput, "ttft_p99_s": 1.0, "itl_p99_s": 0.1,
            "tpot_p99_s": 0.05, "throughput_rps": goodput}


def test_collapses_are_runs_under_half_where_stock_meets_90_percent():
    runs = []
    for stock, fair in ((0.95, 0.96), (0.92, 0.3), (0.4, 0.2), (0.9, 0.91)):
        row = {"seed": len(runs), "stock": _summary(stock, stock * 10), "fairbatching": _summary(fair, fair * 10)}
        row["goodput_ratio"] = user._ratio(fair * 10, stock * 10)
        row["collapse"] = (fair < user.COLLAPSE_ATTAINMENT and stock >= user.STOCK_OK_ATTAINMENT)
        runs.append(row)
    summary = user.summarize_arrival(3.0, "sglang-c512", [], runs)
    assert summary["collapses"] == 1  # seed 2: both under half, stock did not meet 90%
    assert summary["runs_under_50pct"] == {"stock": 1, "fairbatching": 2}
    assert math.isclose(summary["goodput_ratio_median"], np.median([r["goodput_ratio"] for r in runs]))
    report = {"date_utc": "d", "load_start": {"uptime": "u0"}, "load_end": {"uptime": "u1"},
              "models": [{"model": "tiny", "model_description": "tiny", "ttft_slo_s": 0.5, "tpot_slo_s": 0.06,
                          "slo": {"rule": "r"}, "saturation_rps": 10.0, "saturation_server": "s",
                          "calibration": {"status": "calibrated", "fit_mape": 0.05, "holdout_mape": 0.08,
                                          "seconds": 4.0},
                          "startup_s": {"sglang-c512": 20.0, "fairbatching": 25.0},
                          "arrivals": {"poisson": summary}}]}
    text = user.render_user(report)
    assert "| poisson | 3.00 | sglang-c512 |" in text and "1 of 4" in text and "held-out MAPE 8.0%" in text


def test_slo_rule_is_the_stated_arithmetic_on_what_stock_measured(monkeypatch):
    monkeypatch.setattr(user, "measure_engine", lambda url, vocab, context: {
        "decode_step_s": 0.020, "prefill_s_per_token": 0.0001})
    model = user.ModelShape("tiny", [], 512, "tiny", 4096)
    ttft_s, tpot_s, record = user.slo_rule("http://127.0.0.1:1", model)
    assert tpot_s == pytest.approx(0.020 + 256 * 0.0001)
    assert ttft_s == pytest.approx(8 * tpot_s, rel=1e-3)
    assert "16 decodes" in record["rule"] and record["engine"]["decode_step_s"] == 0.020


def test_a_fixed_rate_skips_the_search_and_picks_stock_at_that_rate(monkeypatch):
    # --rate: no search steps; with one stock setting no run at all, with several one selection run
    # each at that very rate, the most goodput chosen.
    calls = []

    def fake_run_once(server, specs, seed, vocab_size, drain_timeout, label):
        calls.append((server.name, len(specs), seed))
        return {"slo_attainment": 0.9, "goodput_rps": {"sglang-c512": 3.0, "sglang-c2048": 5.0}[server.name]}

    monkeypatch.setattr(user, "run_once", fake_run_once)
    args = type("Args", (), {"rate": 7.5, "run_seconds": 10.0, "min_requests": 16, "max_requests": 240,
                             "drain_timeout": 1.0, "search_steps": 5})()
    workload = dict(prompts=np.array([100, 200]), outputs=np.array([10, 20]), length_scale=1.0,
                    ttft_slo_s=1.0, tpot_slo_s=0.1)
    one = user.stock_settings([512], "off")
    assert user.search_rate(one, workload, 512, 1.0, args, "t") == (7.5, one[0], [])
    assert calls == []
    two = user.stock_settings([512, 2048], "off")
    rate, best, steps = user.search_rate(two, workload, 512, 1.0, args, "t")
    assert (rate, best.name) == (7.5, "sglang-c2048")
    assert calls == [("sglang-c512", 75, 1999), ("sglang-c2048", 75, 1999)]
    assert all(step["rate_rps"] == 7.5 and step["selection"] for step in steps)


def test_drain_rounds_report_the_median_and_count_every_hung_request():
    # One burst is a single noisy sample: the rounds' median drain time is reported with its range,
    # and a request hung in any round makes the acceptance fail.
    def round_(drain_s, hung=0, plain=0.04):
        return {"burst": 60, "prompt_tokens": 9000, "drain_s": drain_s, "last_served_s": drain_s - 0.1,
                "served": 60 - hung, "rejected": 0, "hung": hung, "rejection_reasons": [],
                "hang_reasons": ["timeout"] if hung else [], "plain_request_latency_s": plain,
                "plain_request_ok": plain is not None and plain <= 1.0, "ttft_p99_s": 0.5}
    summary = user.drain_summary([round_(2.4), round_(1.9), round_(2.2, hung=1, plain=None)])
    assert summary["drain_s"] == 2.2 and (summary["drain_s_min"], summary["drain_s_max"]) == (1.9, 2.4)
    assert summary["hung"] == 1 and summary["served"] == 179 and summary["hang_reasons"] == ["timeout"]
    assert summary["plain_request_latency_s"] == pytest.approx(0.04) and not summary["plain_request_ok"]
    assert len(summary["rounds"]) == 3
    report = {"date_utc": "d", "load_start": {"uptime": "u0"}, "load_end": {"uptime": "u1"}, "burst": 60,
              "model": "tiny", "model_description": "tiny", "ttft_slo_s": 0.1, "tpot_slo_s": 0.02,
              "drain_repeats": 3, "runs": {"sglang": summary}, "drain_ratio": 1.05,
              "drain_ratio_per_round": [1.0, 1.1, 1.05], "acceptance": {}}
    text = user.render_drain(report)
    assert "| sglang | 2.2 [1.9-2.4] | 179 | 0 | 1 |" in text and "3 rounds, interleaved" in text
    assert "per round 1.00, 1.10, 1.05" in text
    report.update(drain_ratio_interval=(1.0, 1.1), drain_line_decided="met")
    assert "90% bootstrap interval 1.00-1.10 (the 1.1x line: met)" in user.render_drain(report)
    with pytest.raises(SystemExit):
        user.parse_args(["--mode", "drain", "--drain-repeats", "0"])


def test_the_drain_line_is_decided_only_when_the_interval_is_all_on_one_side():
    # 2026-12-07's 200-request drain, FairBatching over stock round by round: 1.13, 1.05, 1.36,
    # 1.09, 1.06 (median 1.09; the ratio of the median drain times, the acceptance's, was 1.11x):
    # the 1.1x line is inside the interval, so the rounds do not decide it.
    interval = user.bootstrap_median_interval([1.13, 1.05, 1.36, 1.09, 1.06])
    assert interval[0] <= 1.09 <= interval[1]
    assert user.drain_line_decided(interval) == "undecided"
    assert user.drain_line_decided(user.bootstrap_median_interval([1.02, 1.0, 1.04, 1.01, 1.03])) == "met"
    assert user.drain_line_decided(user.bootstrap_median_interval([1.3, 1.25, 1.4, 1.35, 1.2])) == "missed"
    low, high = user.bootstrap_median_interval([1.0] * 5)
    assert low == high == 1.0
