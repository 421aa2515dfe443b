"""--fair-iteration-log: the writer, the launcher's check, and a real scheduler writing it."""

import json
import math

import pytest

from sglang_fair.launch_server import parse_fair_args
from sglang_fair.policy.cost_model import FEATURE_NAMES, BatchShape, CostModel, OnlineCostModel
from sglang_fair.runtime.iteration_log import IterationLog, read_last_run

PRIOR = CostModel(fixed_s=1e-3, per_new_token_s=1e-5, per_context_token_s=1e-7, name="prior")


def _shape(decodes=3, chunk=0):
    shape = BatchShape()
    for _ in range(decodes):
        shape.add_decode(100)
    if chunk:
        shape.add_prefill(chunk, 0)
    return shape


def test_header_then_one_strict_json_line_per_iteration(tmp_path):
    path = tmp_path / "it.jsonl"
    log = IterationLog(str(path), prior=PRIOR, batch_policy="fairbatching")
    log.record(end_s=1.0, measured_s=0.004, predicted_s=0.003, time_budget_s=math.inf, shape=_shape())
    log.record(end_s=2.0, measured_s=0.02, predicted_s=0.01, time_budget_s=0.05, shape=_shape(2, 64))
    log.close()
    header, first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert header["kind"] == "start" and header["features"] == list(FEATURE_NAMES)
    assert CostModel.from_dict(header["prior"]).coefficients().tolist() == PRIOR.coefficients().tolist()
    assert first["time_budget_s"] is None and first["time_budget_s_nonfinite"] == "Infinity"
    assert first["features"] == list(_shape().features()) and second["time_budget_s"] == 0.05
    # What the online model learns from a logged row is what it learns from the shape.
    by_row, by_shape = OnlineCostModel(PRIOR), OnlineCostModel(PRIOR)
    assert by_row.observe_row(second["features"], second["measured_s"]) == by_shape.observe(_shape(2, 64), 0.02)
    assert by_row._features[0].tolist() == by_shape._features[0].tolist()


def test_the_reader_returns_the_last_run_of_an_appended_log(tmp_path):
    path = tmp_path / "it.jsonl"
    for run, steps in enumerate((["mixed", "mixed"], ["apart: prefill, amortised"])):
        log = IterationLog(str(path), prior=PRIOR, batch_policy="fairbatching")  # each start appends
        for step in steps:
            log.record(end_s=float(run), measured_s=0.004, predicted_s=0.003, time_budget_s=0.05,
                       shape=_shape(), step=step)
        log.close()
    header_line, header, entries = read_last_run(str(path))
    assert header_line == 4 and header["kind"] == "start"
    assert [(number, entry["step"]) for number, entry in entries] == [(5, "apart: prefill, amortised")]


@pytest.mark.parametrize("text, message", [
    ('{"measured_s": 0.01}\n', "2: an iteration before the log's header"),
    ('{"kind": "start"}\nnot json\n', "3: not an iteration-log line"),
    ('{"kind": "start"}\n[1, 2]\n', "3: not an iteration-log line"),
    ("", "no header line"),
])
def test_the_reader_names_the_line_it_cannot_read(tmp_path, text, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n" + text)  # a blank first line is skipped, not counted out
    with pytest.raises(ValueError, match=message):
        read_last_run(str(path))


def test_a_failing_write_turns_the_log_off_instead_of_raising(tmp_path, caplog):
    log = IterationLog("/dev/full", prior=PRIOR, batch_policy="fairbatching")  # every write: ENOSPC
    log.record(end_s=1.0, measured_s=0.004, predicted_s=0.003, time_budget_s=0.01, shape=_shape())
    log.record(end_s=2.0, measured_s=0.004, predicted_s=0.003, time_budget_s=0.01, shape=_shape())
    assert not log.open
    assert sum("iteration log off" in r.message for r in caplog.records) == 1


def test_an_empty_batch_row_is_rejected_like_an_empty_shape():
    online = OnlineCostModel(PRIOR)
    assert not online.observe_row(BatchShape().features(), 0.01)
    assert online.rejected == 1
    with pytest.raises(ValueError, match="feature values"):
        online.observe_row([1.0, 2.0], 0.01)


def test_launcher_checks_the_folder(tmp_path, capsys):
    config, _ = parse_fair_args(["--batch-policy", "fairbatching", "--fair-iteration-log", str(tmp_path / "x.jsonl")])
    assert config.iteration_log == str(tmp_path / "x.jsonl")
    for bad in (str(tmp_path / "missing" / "x.jsonl"), str(tmp_path)):
        with pytest.raises(SystemExit) as exit_info:
            parse_fair_args(["--fair-iteration-log", bad])
        assert exit_info.value.code == 2
        assert "--fair-iteration-log" in capsys.readouterr().err


def test_a_real_scheduler_logs_its_iterations(tmp_path):
    from sglang_fair.runtime.inproc import build_scheduler, make_req, run_until_idle

    path = tmp_path / "it.jsonl"
    scheduler = build_scheduler("fairbatching", cost_model="cpu-tiny", calibrate=False, iteration_log=str(path))
    reqs = [make_req(f"r{k}", 60, 5) for k in range(3)]
    for req in reqs:
        scheduler._add_request_to_queue(req)
    run_until_idle(scheduler, reqs)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["kind"] == "start" and lines[0]["prior"]["name"] == scheduler.fair_policy.online.prior.name
    iterations = lines[1:]
    assert len(iterations) == scheduler.fair_iterations >= 5
    assert all(it["measured_s"] > 0 and it["predicted_s"] > 0 and len(it["features"]) == len(FEATURE_NAMES)
               for it in iterations)
    assert sum(it["features"][FEATURE_NAMES.index("new_tokens")] for it in iterations) == 3 * 60 + 3 * 5 - 3
    # The first iteration was planned with all three prompts waiting, none late yet; once they
    # are prefilled the decode-only steps nobody planned say so (no step, no queue).
    first = iterations[0]
    assert first["waiting_prompts"] == 3 and 0 < first["min_prompt_slack_s"] <= scheduler.fair_config.ttft_slo_s
    assert first["step"] in ("mixed", "progress")
    assert iterations[-1]["step"] == "" and iterations[-1]["waiting_prompts"] == 0
    assert iterations[-1]["min_prompt_slack_s"] is None
