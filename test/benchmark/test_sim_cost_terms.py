"""benchmark/sim_cost_terms.py: the split of a run's work, whole and over a window of it."""

import dataclasses
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmark"))

import sim_compare  # noqa: E402
import sim_cost_terms  # noqa: E402

SCENARIO = dataclasses.replace(sim_compare.SCENARIOS["llama3-poisson"], num_requests=300)
SCENARIO_PROMPTS = [int(t) for t in sim_compare._engine(SCENARIO)[2].prompt_tokens[: SCENARIO.num_requests]]


@pytest.fixture(scope="module")
def whole_and_halves():
    run = sim_cost_terms.cost_terms(SCENARIO, 0, "sarathi", {"token_budget": 512}, 6.0, (-math.inf, math.inf))
    middle_s = 25.0  # 300 arrivals at 6 rps: the run lasts about 50 s
    first = sim_cost_terms.cost_terms(SCENARIO, 0, "sarathi", {"token_budget": 512}, 6.0, (0.0, middle_s))
    second = sim_cost_terms.cost_terms(SCENARIO, 0, "sarathi", {"token_budget": 512}, 6.0, (middle_s, math.inf))
    return run, first, second


def test_a_window_over_the_whole_run_counts_every_plan(whole_and_halves):
    run, _, _ = whole_and_halves
    window = run["window"]
    assert window["plans"] > 0
    # Every prompt token is prefilled by some plan; decode runs the engine plays alone carry none.
    assert window["prefill_tokens"] >= sum(SCENARIO_PROMPTS)
    assert window["chunk_attention_s"] == pytest.approx(run["chunk_attention_s"])


def test_windows_that_split_the_run_add_up(whole_and_halves):
    run, first, second = whole_and_halves
    for key in ("plans", "prefill_tokens", "decode_tokens"):
        assert first["window"][key] + second["window"][key] == run["window"][key]
    assert first["window"]["planned_s"] + second["window"]["planned_s"] == pytest.approx(run["window"]["planned_s"])
    assert 0 < first["window"]["plans"] < run["window"]["plans"]
    # The run itself is the same whatever the window.
    assert first["attainment"] == second["attainment"] == run["attainment"]


def test_a_bad_window_is_refused(capsys):
    with pytest.raises(SystemExit):
        sim_cost_terms.main(["--window", "500,100", "--seeds", "0", "--schedulers", "sarathi@1"])
    assert "--window" in capsys.readouterr().err



def test_the_misses_of_windows_that_split_the_run_add_up_to_the_runs(whole_and_halves):
    run, first, second = whole_and_halves
    whole = run["window"]["arrivals"]
    assert whole["missed"] == whole["missed_in_run"]
    assert whole["requests"] == first["window"]["arrivals"]["requests"] + second["window"]["arrivals"]["requests"]
    for key in ("missed", "missed_ttft"):
        assert first["window"]["arrivals"][key] + second["window"]["arrivals"][key] == whole[key]
    assert whole["missed_ttft"] <= whole["missed"]
    # attainment is over the measured requests: the whole window's misses are the run's
    assert whole["missed"] == round((1 - run["attainment"]) * whole["requests"])
