"""benchmark/iteration_steps.py on a small hand-written iteration log."""

import gzip
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmark"))
import iteration_steps  # noqa: E402


def _log(tmp_path, compressed=False):
    lines = [{"kind": "start", "policy": "fairbatching"},
             {"measured_s": 0.004, "step": ""},
             {"measured_s": 0.012, "step": "apart: prefill, amortised"},
             {"measured_s": 0.006, "step": ""},  # the decodes waited 18 ms
             {"measured_s": 0.008, "step": "apart: prefill, amortised"},
             {"measured_s": 0.005, "step": "mixed"},  # 13 ms
             {"measured_s": 0.030, "step": "mixed"}]
    text = "\n".join(json.dumps(line) for line in lines) + "\n"
    path = tmp_path / ("iter.jsonl.gz" if compressed else "iter.jsonl")
    if compressed:
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return str(path)


@pytest.mark.parametrize("compressed", [False, True])
def test_steps_are_counted_timed_and_checked_against_the_tpot(tmp_path, compressed):
    rows = iteration_steps.read_log(_log(tmp_path, compressed))
    assert len(rows) == 6  # the header left out
    table = {row["step"]: row for row in iteration_steps.steps_table(rows, 0.017)}
    assert table["(decode run)"]["iterations"] == 2 and table["(decode run)"]["over_tpot"] == 0
    assert table["mixed"]["over_tpot"] == 1 and table["mixed"]["with_next_over_tpot"] is None
    prefill = table["apart: prefill, amortised"]
    assert prefill["iterations"] == 2 and prefill["over_tpot"] == 0 and prefill["with_next_over_tpot"] == 1
    assert prefill["median_s"] == pytest.approx(0.010)
    text = iteration_steps.render(list(table.values()), 0.017)
    assert "| apart: prefill, amortised | 2 | 10.0 |" in text and "over 17 ms" in text


def test_an_empty_log_and_a_bad_tpot_are_refused(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"kind": "start"}) + "\n")
    with pytest.raises(SystemExit):
        iteration_steps.main([str(empty), "--tpot-slo", "0.017"])
    with pytest.raises(SystemExit):
        iteration_steps.main([_log(tmp_path), "--tpot-slo", "0"])
