"""The CLI: one-line errors with exit status 2; JSON of the documented shape."""

import json

import numpy as np
import pytest

from sim_helpers import write_azure_trace
from sglang_fair.sim.cli import main


@pytest.fixture
def trace(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(i * 0.5, int(p), int(o)) for i, (p, o) in enumerate(zip(rng.integers(50, 1500, 120),
                                                                   rng.integers(5, 80, 120)))]
    return str(write_azure_trace(tmp_path / "azure.csv", rows))


@pytest.mark.parametrize("args, message", [
    (["--policies", "fairbatching,fifo"], "unknown policy 'fifo'"),
    (["--routers", "random"], "unknown router 'random'"),
    (["--ttft-slo", "0"], "--ttft-slo must be positive"),
    (["--tpot-slo", "nan"], "--tpot-slo must be a finite"),
    (["--cost-model", "no-such-gpu"], "unknown preset or missing file"),
    (["--option", "sarathi.token_budget=0"], "token_budget must be >= 1"),
    (["--option", "sarathi.nope=1"], "has no option"),
    (["--replicas", "0"], "--replicas must be >= 1"),
    (["--noise-correlation", "1"], "--noise-correlation must be in [0, 1)"),
])
def test_bad_input_exits_2_with_one_line(trace, capsys, args, message):
    assert main(["capacity", "--trace", trace, "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_missing_trace_and_argparse_errors(capsys):
    assert main(["run", "--trace", "/nonexistent.csv", "--rate", "1"]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["capacity", "--trace", "x", "--ttft-slo", "abc"])
    assert info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(SystemExit) as info:
        main(["capacity"])  # --trace is required
    assert info.value.code == 2


def test_run_needs_a_rate(trace, capsys):
    assert main(["run", "--trace", trace, "--quiet"]) == 2
    assert "--rate" in capsys.readouterr().err


def test_capacity_json_shape(trace, tmp_path, capsys):
    out = tmp_path / "cap.json"
    plot = tmp_path / "cap.png"
    code = main(["capacity", "--trace", trace, "--policies", "fairbatching,sarathi", "--num-requests", "60",
                 "--tolerance", "0.2", "--quiet", "--jobs", "1", "--json", str(out), "--plot", str(plot),
                 "--option", "sarathi.token_budget=256"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["saturation_rps"] > 0 and report["work_bound"]["rps"] >= report["saturation_rps"]
    assert report["definition"] == "mean" and report["max_ttft_p99_factor"] == 5
    assert [r["policy"] for r in report["results"]] == ["fairbatching", "sarathi"]
    for r in report["results"]:
        assert {"policy", "router", "replicas", "capacity_rps", "ttft_p99_s", "tbt_p99_s", "ttft_ratio_p99",
                "ttft_ratio_max", "ttft_over_bound", "definition", "curve"} <= set(r)
        assert 0 <= r["capacity_rps"] <= report["work_bound"]["rps"]
        assert r["curve"] and all("attainment" in p and "ttft_ratio_p99" in p for p in r["curve"])
        # Within capacity means the tail bound held as well.
        assert r["ttft_ratio_p99"] <= 5
    assert plot.stat().st_size > 1000
    assert "saturation throughput bound" in capsys.readouterr().out


def test_capacity_sweeps_sarathi(trace, tmp_path):
    out = tmp_path / "cap.json"
    assert main(["capacity", "--trace", trace, "--policies", "sarathi", "--num-requests", "40",
                 "--tolerance", "0.3", "--quiet", "--jobs", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())["results"][0]
    assert [s["options"]["token_budget"] for s in result["sweep"]] == [128, 256, 384, 512, 768, 1024, 1536,
                                                                        2048, 3072, 4096]
    assert result["capacity_rps"] == max(s["capacity_rps"] for s in result["sweep"])
    assert result["best_token_budget"] == result["options"]["token_budget"]


def test_run_replay_cluster_json(trace, tmp_path):
    out = tmp_path / "run.json"
    assert main(["run", "--trace", trace, "--replay-timestamps", "--time-scale", "4", "--replicas", "2",
                 "--routers", "pab,least_load", "--policies", "fairbatching", "--quiet", "--admission-control",
                 "--json", str(out), "--plot", str(tmp_path / "cdf.png"), "--clients", "2"]) == 0
    report = json.loads(out.read_text())
    assert [r["router"] for r in report["results"]] == ["pab", "least_load"]
    for r in report["results"]:
        assert r["requests"] == 108 and 0 <= r["attainment"] <= 1
        assert set(r["clients"]) == {"client0", "client1"}


def test_slo_classes_are_reported_each_in_run_and_at_capacity(trace, tmp_path, capsys):
    out = tmp_path / "run.json"
    assert main(["run", "--trace", trace, "--rate", "2", "--policies", "fairbatching", "--quiet",
                 "--slo-classes", "1:0.05:0.5,5:0.2:0.5", "--json", str(out)]) == 0
    (result,) = json.loads(out.read_text())["results"]
    classes = result["slo_classes"]
    assert [(c["ttft_slo_s"], c["tpot_slo_s"]) for c in classes] == [(1.0, 0.05), (5.0, 0.2)]
    assert sum(c["requests"] for c in classes) == result["requests"]
    assert sum(c["attainment"] * c["requests"] for c in classes) == pytest.approx(
        result["attainment"] * result["requests"])
    assert "class TTFT 1 s / TPOT 0.05 s" in capsys.readouterr().out
    cap = tmp_path / "cap.json"
    assert main(["capacity", "--trace", trace, "--policies", "fairbatching", "--num-requests", "60",
                 "--tolerance", "0.3", "--quiet", "--jobs", "1", "--slo-classes", "1:0.05:0.5,5:0.2:0.5",
                 "--json", str(cap)]) == 0
    (entry,) = json.loads(cap.read_text())["results"]
    assert len(entry["at_capacity"]["slo_classes"]) == 2
    assert "class TTFT 5 s / TPOT 0.2 s" in capsys.readouterr().out
