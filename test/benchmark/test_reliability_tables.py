"""benchmark/reliability_tables.py renders a reliability run's JSON as the docs' tables."""

import importlib.util
import json
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("sglang_fair_bench_reliability_tables",
                                               _REPO / "benchmark" / "reliability_tables.py")
tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tables)


def test_every_test_and_policy_of_a_recorded_run_gets_its_row():
    run = json.loads((_REPO / "benchmark" / "results" / "reliability" / "default_run.json").read_text())
    text = tables.render(run)
    overload = run["tests"]["overload_short"]["fairbatching"]
    row = next(line for line in text.splitlines() if line.startswith("| overload_short | fairbatching |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[5:9] == [str(overload[k]) for k in ("sent", "answered", "rejected", "lost")]
    for policy, routes in run["tests"]["fuzz_short"].items():
        for route in routes:
            assert f"| fuzz_short | {policy} | `{route}` |" in text
    assert text.count("| abort_storm_short |") == len(run["tests"]["abort_storm_short"])


def test_an_unknown_test_is_kept_as_json():
    text = tables.render({"date": "d", "machine": "m", "load_average_at_end": [1.0], "exit_status": 0,
                          "tests": {"replica_killed": {"sglang": {"sent": 3}}}})
    assert 'replica_killed: {"sglang": {"sent": 3}}' in text
