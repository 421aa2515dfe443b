"""benchmark/cpu_ab_pool.py: pooling interleaved rounds (no server)."""

import gzip
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmark"))
import cpu_ab_pool as pool_mod  # noqa: E402


def _run(attainment, requests=100, duration_s=10.0, ttft_p99=0.2, itl_p99=0.03):
    return {"slo_attainment": attainment, "requests": requests, "goodput_rps": attainment * requests / duration_s,
            "ttft_p99_s": ttft_p99, "itl_p99_s": itl_p99}


def _round(rows, names=("stock", "fair"), rate=12.0, ttft=0.136):
    runs = [{"seed": seed, names[0]: _run(a), names[1]: _run(b)} for seed, a, b in rows]
    return {"date_utc": "2026-12-07T15:00:00+00:00", "requests": 100, "ttft_slo_s": ttft, "tpot_slo_s": 0.017,
            "servers": {names[0]: {"code": {"commit": "aaa"}}, names[1]: {"code": {"commit": "bbb"}}},
            "arrivals": {"bursty": {"rate_rps": rate, "runs": runs}}}


def test_pairs_are_made_within_a_round_and_seed_and_pooled_over_rounds():
    rounds = [("r1", _round([(0, 0.80, 0.88), (1, 0.95, 0.40)])),
              ("r2", _round([(0, 0.50, 0.60)], names=("stock", "created")))]
    result = pool_mod.pool(rounds, "bursty", "stock", "fair", {"created": "fair"})
    ratios = [row["goodput_ratio"] for row in result["pairs"]]
    assert ratios == pytest.approx([1.1, 0.40 / 0.95, 1.2])
    summary = result["summary"]
    assert summary["pairs"] == 3 and summary["rounds"] == 2
    assert summary["median_goodput_ratio"] == pytest.approx(1.1)
    low, high = summary["median_ratio_interval_90"]
    assert min(ratios) <= low <= summary["median_goodput_ratio"] <= high <= max(ratios)
    assert summary["pairs_under_0_9"] == 1 and summary["pairs_ahead"] == 2
    assert summary["collapses"] == 1  # 40% where stock met 95%
    assert (summary["met"], summary["reference_met"], summary["requests"]) == (188, 225, 300)
    assert result["pairs"][2]["code"] == {"stock": "aaa", "fair": "bbb"}  # the alias maps the code too
    text = pool_mod.render(result, "stock", "fair", "bursty")
    assert "| r2 | 0 | 50% | 60% | 1.20 |" in text and "**1.10**" in text


def test_rounds_of_other_rates_or_slos_are_refused_and_a_missing_server_is_said():
    with pytest.raises(ValueError, match="differ"):
        pool_mod.pool([("a", _round([(0, 0.8, 0.8)])), ("b", _round([(0, 0.8, 0.8)], rate=16.0))],
                      "bursty", "stock", "fair", {})
    with pytest.raises(ValueError, match="differ"):
        pool_mod.pool([("a", _round([(0, 0.8, 0.8)])), ("b", _round([(0, 0.8, 0.8)], ttft=0.2))],
                      "bursty", "stock", "fair", {})
    empty = pool_mod.pool([("a", _round([(0, 0.8, 0.8)]))], "poisson", "stock", "fair", {})
    assert empty["summary"] is None
    assert "no round has both" in pool_mod.render(empty, "stock", "fair", "poisson")


def test_the_command_reads_gzipped_rounds_and_writes_the_pairs(tmp_path, capsys):
    path = tmp_path / "r1" / "results.json.gz"
    path.parent.mkdir()
    with gzip.open(path, "wt") as handle:
        json.dump(_round([(0, 0.8, 0.9), (1, 0.9, 0.9)]), handle)
    out = tmp_path / "pool.json"
    assert pool_mod.main([str(path), "--out", str(out)]) == 0
    assert "2 pairs from 1 rounds" in capsys.readouterr().out
    assert json.loads(out.read_text())["summary"]["pairs"] == 2
    assert pool_mod.main([str(path), "--arrivals", "poisson"]) == 1
    with pytest.raises(SystemExit):
        pool_mod.main([str(path), "--alias", "nonsense"])


def test_a_rounds_own_alias_replaces_its_server_of_that_name(tmp_path, capsys):
    """A round that ran the change as "created" beside the old "fair": its "created" is the fair of
    the pool, its old "fair" is left out, and other rounds keep their "fair"."""
    three = _round([(0, 0.8, 0.4)])
    three["arrivals"]["bursty"]["runs"][0]["created"] = _run(0.88)
    rounds = [("a", three), ("b", _round([(0, 0.5, 0.6)]))]
    result = pool_mod.pool(rounds, "bursty", "stock", "fair", {}, [{"created": "fair"}, {}])
    assert [row["goodput_ratio"] for row in result["pairs"]] == pytest.approx([1.1, 1.2])
    path = tmp_path / "a" / "results.json"
    path.parent.mkdir()
    path.write_text(json.dumps(three))
    assert pool_mod.main([f"{path}#created=fair"]) == 0
    assert "| a | 0 | 80% | 88% | 1.10 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        pool_mod.main([f"{path}#created"])
