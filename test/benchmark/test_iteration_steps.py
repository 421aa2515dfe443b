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


def test_first_late_tokens_are_traced_to_the_iterations_since_the_previous_token(tmp_path):
    """Request a's token at 0.040 s was due at 0.034 s: since its previous token (0.017 s) a
    prefill-only iteration and a decode step ran, 18 ms of work predicted at 12 ms, and 5 ms went
    between them.  Its second late token and request b's first are counted apart."""
    late_a = {"rid": "a", "token": 2, "late_s": 0.006, "waited_s": 0.023, "line_gave_s": 0.017, "max_new_tokens": 8}
    late_a2 = {**late_a, "token": 3, "late_s": 0.002}
    late_b = {"rid": "b", "token": 1, "late_s": 0.001, "waited_s": 0.018, "line_gave_s": 0.017, "max_new_tokens": 8}
    lines = [{"kind": "start"},
             {"end_s": 0.017, "measured_s": 0.003, "predicted_s": 0.003, "step": ""},
             {"end_s": 0.032, "measured_s": 0.014, "predicted_s": 0.009, "step": "apart: prefill, amortised"},
             {"end_s": 0.040, "measured_s": 0.004, "predicted_s": 0.003, "step": "", "late_tokens": [late_a]},
             {"end_s": 0.058, "measured_s": 0.016, "predicted_s": 0.010, "step": "mixed",
              "late_tokens": [late_a2, late_b]}]
    path = tmp_path / "late.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    table = iteration_steps.first_late_table(iteration_steps.read_log(str(path)))
    assert [(row["steps"], row["requests"]) for row in table] == [
        ("apart: prefill, amortised + (decode run)", 1), ("mixed", 1)]
    first = table[0]
    assert first["late_s"] == pytest.approx(0.006) and first["line_gave_s"] == pytest.approx(0.017)
    assert first["measured_over_predicted"] == pytest.approx(0.018 / 0.012)
    assert first["between_s"] == pytest.approx(0.005)
    assert table[1]["between_s"] == pytest.approx(0.002)
    text = iteration_steps.render_first_late(table)
    assert "| apart: prefill, amortised + (decode run) | 1 | 6.0 | 17.0 | 1.50 | 5.0 |" in text
    assert iteration_steps.first_late_table(iteration_steps.read_log(_log(tmp_path))) == []


def test_decode_only_stretches_while_prompts_waited_are_counted():
    """Planned decode-only iterations in a row (prompts waiting) are the stretches; a prefill, a
    mixed batch or an unplanned decode step ends one."""
    steps = ["apart: decodes, prompts wait", "apart: decodes overdue", "apart: decodes overdue",
             "apart: prefill, head late", "", "decodes: prompts wait", "mixed"] + ["apart: decodes overdue"] * 12
    rows = [{"measured_s": 0.01, "step": step, "waiting_prompts": i, "min_prompt_slack_s": 0.05 - 0.01 * i}
            for i, step in enumerate(steps)]
    stretches = iteration_steps.starved_stretches(rows)
    assert [s["iterations"] for s in stretches] == [3, 1, 12]
    assert stretches[0]["waiting_prompts"] == 2 and stretches[0]["min_prompt_slack_s"] == pytest.approx(0.03)
    assert stretches[2]["end"] == len(rows) - 1
    text = iteration_steps.render_stretches(stretches)
    assert "| 1 | 1 | 5 | 0 |" in text and "| 2-4 | 1 | 2 | 30 |" in text and "| 10 or more | 1 | 18 | -130 |" in text
    assert "| 5-9 | 0 |  |  |" in text
    assert not iteration_steps.is_decode_only_plan("apart: prefill, head cannot wait")
