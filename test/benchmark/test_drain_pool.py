"""benchmark/drain_pool.py: several drain runs' rounds pooled into one verdict on the 1.1x line."""

import json
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmark"))
import cpu_user_bench  # noqa: E402
import drain_pool  # noqa: E402


def _run(tmp_path, name, ratios, burst=200, **fields):
    report = {"mode": "drain", "burst": burst, "model": "tiny", "length_scale": 0.25,
              "date_utc": "2026-12-08T00:00:00+00:00", "drain_ratio_per_round": ratios, **fields}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(report))
    return str(path)


def test_rounds_of_several_runs_are_pooled_with_the_benchmarks_own_verdict(tmp_path, capsys):
    # Each run alone straddles the line; pooled, the median's interval is all below it.
    first = [1.00, 0.93, 1.12, 0.89, 0.95]
    second = [1.11, 1.04, 0.92, 1.53, 0.94]
    third = [0.87, 1.05, 0.95, 1.03, 0.97]
    paths = [_run(tmp_path, name, ratios) for name, ratios in (("a", first), ("b", second), ("c", third))]
    for ratios in (first, second):
        assert cpu_user_bench.drain_line_decided(cpu_user_bench.bootstrap_median_interval(ratios)) == "undecided"
    out = tmp_path / "pooled.json"
    assert drain_pool.main([*paths, "--out", str(out)]) == 0
    pooled = json.loads(out.read_text())
    assert pooled["rounds"] == 15
    assert pooled["median_round_ratio"] == pytest.approx(statistics.median(first + second + third))
    low, high = pooled["drain_ratio_interval"]
    assert low <= pooled["median_round_ratio"] <= high < cpu_user_bench.DRAIN_RATIO_LINE
    assert pooled["drain_line_decided"] == "met"
    assert [run["median_round_ratio"] for run in pooled["runs"]] == [statistics.median(r) for r in (first, second, third)]
    assert "Pooled, 15 rounds" in capsys.readouterr().out


def test_a_run_of_another_burst_or_without_rounds_is_refused_naming_the_field(tmp_path, capsys):
    ok = _run(tmp_path, "ok", [1.0, 1.0])
    for bad, field in ((_run(tmp_path, "burst60", [1.0], burst=60), "burst"),
                       (_run(tmp_path, "scaled", [1.0], length_scale=1.0), "length_scale"),
                       (_run(tmp_path, "no_rounds", []), "drain_ratio_per_round"),
                       (_run(tmp_path, "user", [1.0], mode="user"), "mode")):
        with pytest.raises(SystemExit) as exit_info:
            drain_pool.main([ok, bad])
        assert exit_info.value.code == 2
        assert field in capsys.readouterr().err
