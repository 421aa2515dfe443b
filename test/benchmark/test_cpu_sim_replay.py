"""benchmark/cpu_sim_replay.py on an iteration log written from a known machine."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmark"))
import cpu_sim_replay  # noqa: E402

from sglang_fair.policy.cost_model import FEATURE_NAMES, CostModel  # noqa: E402

#: The machine the log is written from: every iteration takes exactly this model's time.
MACHINE = CostModel(fixed_s=0.002, per_new_token_s=2e-5, per_context_token_s=6e-7, per_seq_s=1e-4,
                    per_prefill_iteration_s=0.002, name="machine")
GAP_S, PREFILL_GAP_S = 0.0008, 0.0020  # the scheduler's time before a decode step / before a prefill


def _features(new_tokens: int, context: int, seqs: int, prefill: bool) -> list[float]:
    row = dict.fromkeys(FEATURE_NAMES, 0.0)
    row.update(fixed=1.0, new_tokens=new_tokens, sum_context=context, num_seqs=seqs,
               prefill_iteration=1.0 if prefill else 0.0)
    return [row[name] for name in FEATURE_NAMES]


def _log(tmp_path, stall_every=0, noise_correlation=None):
    """Decode steps of 1-8 requests and prefill-only iterations of 16-512 tokens, each timed by
    MACHINE, with GAP_S / PREFILL_GAP_S before them and an idle second now and then."""
    rng = np.random.default_rng(0)
    lines = [{"kind": "start", "batch_policy": "fairbatching", "features": list(FEATURE_NAMES),
              "prior": MACHINE.to_dict()}]
    end_s = 100.0
    level = 0.0  # AR(1) log noise, when asked for: slow spells that last
    for i in range(400 if noise_correlation is None else 4000):
        prefill = i % 4 == 0
        if prefill:
            tokens = int(rng.integers(16, 512))
            features = _features(tokens, tokens, 1, True)
        else:
            seqs = int(rng.integers(1, 9))
            features = _features(seqs, seqs * int(rng.integers(20, 400)), seqs, False)
        measured_s = float(np.dot(features, MACHINE.coefficients()))
        if noise_correlation is not None:
            level = noise_correlation * level + rng.normal(0.0, 0.3 * np.sqrt(1 - noise_correlation ** 2))
            measured_s *= float(np.exp(level))
        if stall_every and i % stall_every == stall_every - 1:
            measured_s *= 20
        end_s += (PREFILL_GAP_S if prefill else GAP_S) + measured_s + (1.0 if i % 50 == 49 else 0.0)
        lines.append({"end_s": end_s, "measured_s": measured_s, "predicted_s": measured_s, "features": features,
                      "step": "apart: prefill, amortised" if prefill else ""})
    path = tmp_path / "iter.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return str(path)


def test_the_machine_is_fitted_and_the_loop_time_measured_apart_from_idle_time(tmp_path):
    costs = cpu_sim_replay.machine_costs(_log(tmp_path, stall_every=40))
    assert costs.iterations == 400 and costs.stalls == 10
    assert costs.model.fixed_s == pytest.approx(MACHINE.fixed_s, rel=0.05)
    assert costs.model.per_new_token_s == pytest.approx(MACHINE.per_new_token_s, rel=0.05)
    # the idle seconds are left out; what comes before a prefill is counted on top of the rest
    assert costs.gap_s == pytest.approx(GAP_S, rel=1e-6)
    assert costs.prefill_gap_s == pytest.approx(PREFILL_GAP_S - GAP_S, rel=1e-6)
    assert costs.engine.fixed_s == pytest.approx(costs.model.fixed_s + GAP_S)
    assert costs.engine.per_prefill_iteration_s == pytest.approx(costs.model.per_prefill_iteration_s
                                                                 + PREFILL_GAP_S - GAP_S)
    assert costs.noise_sigma < 0.01  # exact times: no noise once the stalls are set apart
    assert costs.noise_correlation == 0.0


@pytest.mark.parametrize("correlation", [0.0, 0.6])
def test_the_noise_and_its_lag_one_correlation_are_measured(tmp_path, correlation):
    """Slow spells that last several iterations are measured (consecutive busy iterations only),
    and the simulated noise gets that correlation unless told otherwise."""
    costs = cpu_sim_replay.machine_costs(_log(tmp_path, noise_correlation=correlation))
    assert costs.noise_sigma == pytest.approx(0.3, rel=0.15)
    assert costs.noise_correlation == pytest.approx(correlation, abs=0.08)
    argv = ["--iteration-log", "x", "--rate", "12", "--ttft-slo", "0.1", "--tpot-slo", "0.02"]
    assert cpu_sim_replay.noise_correlation(costs, cpu_sim_replay.parse_args(argv)) == costs.noise_correlation
    assert cpu_sim_replay.noise_correlation(costs, cpu_sim_replay.parse_args(argv + ["--noise-correlation", "0"])) == 0
    for bad in ("1", "-0.1", "lots"):
        with pytest.raises(SystemExit):
            cpu_sim_replay.parse_args(argv + ["--noise-correlation", bad])


def test_servers_and_seeds_parse_and_bad_ones_are_refused():
    assert cpu_sim_replay.parse_server("stock=sglang:chunked_prefill_size=512,mixed_chunk=true") == (
        "stock", "sglang", {"chunked_prefill_size": 512, "mixed_chunk": True})
    assert cpu_sim_replay.parse_server("fair=fairbatching") == ("fair", "fairbatching", {})
    assert cpu_sim_replay.parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    for bad in ("stock", "=sglang", "x=sglang:budget", "x=fifo", "x=sglang:no_such_option=1",
                "x=sglang:mixed_chunk=maybe"):
        with pytest.raises(ValueError):
            cpu_sim_replay.parse_server(bad)
    with pytest.raises(SystemExit):
        cpu_sim_replay.parse_args(["--iteration-log", "x", "--rate", "0", "--ttft-slo", "0.1", "--tpot-slo", "0.02"])


def test_the_default_pair_is_simulated_seed_by_seed_beside_the_real_runs(tmp_path, capsys):
    """A light load on the known machine: both servers meet nearly every SLO; the real attainments
    of a cpu_ab.py results file are printed beside the simulated ones."""
    real = {"arrivals": {"bursty": {"runs": [{"seed": 0, "stock": {"slo_attainment": 0.5}},
                                             {"seed": 1, "stock": {"slo_attainment": 0.75}}]}}}
    real_path = tmp_path / "results.json"
    real_path.write_text(json.dumps(real))
    out = tmp_path / "out.json"
    assert cpu_sim_replay.main(["--iteration-log", _log(tmp_path), "--rate", "2", "--arrivals", "bursty",
                                "--seeds", "0,1", "--requests", "30", "--ttft-slo", "0.5", "--tpot-slo", "0.05",
                                "--real", str(real_path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| stock (sim) |" in text and "| fair (sim) |" in text
    assert "| stock (real) | 50% | 75% | **62%** |" in text
    report = json.loads(out.read_text())
    for name in ("stock", "fair"):
        assert set(report["simulated"][name]) == {"0", "1"}
        assert all(value >= 0.9 for value in report["simulated"][name].values())
    assert report["real"] == {"stock": {"0": 0.5, "1": 0.75}}


def test_real_results_without_the_arrivals_are_refused(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"arrivals": {"poisson": {"runs": []}}}))
    with pytest.raises(ValueError, match="bursty"):
        cpu_sim_replay.real_attainment(str(path), "bursty")
