"""benchmark/online_model_replay.py on synthetic iteration logs whose truth is known."""

import gzip
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from sglang_fair.policy.cost_model import FEATURE_NAMES, BatchShape, CostModel
from sglang_fair.runtime.iteration_log import IterationLog

_BENCH = Path(__file__).resolve().parents[2] / "benchmark"
_spec = importlib.util.spec_from_file_location("online_model_replay", _BENCH / "online_model_replay.py")
replay = importlib.util.module_from_spec(_spec)
sys.modules["online_model_replay"] = replay
_spec.loader.exec_module(replay)

TRUE = CostModel(fixed_s=2e-3, per_new_token_s=2e-5, per_context_token_s=1e-6, per_seq_s=2e-4,
                 per_chunk_sq_s=1e-8, per_prefill_iteration_s=1e-3, name="truth")


def _shapes(rng, n):
    """Decode-only iterations, and one in four with a prefill chunk."""
    for k in range(n):
        shape = BatchShape()
        for _ in range(int(rng.integers(1, 24))):
            shape.add_decode(int(rng.integers(20, 600)))
        if k % 4 == 0:
            shape.add_prefill(int(rng.integers(16, 512)), int(rng.integers(0, 256)))
        yield shape


def _write_log(path, prior, *, n=1500, sigma=0.2, slowdown=lambda k: 1.0, seed=0):
    """A log as the server writes it: ``TRUE`` times ``slowdown(k)``, log-normal noise ``sigma``."""
    rng = np.random.default_rng(seed)
    log = IterationLog(str(path), prior=prior, batch_policy="fairbatching")
    for k, shape in enumerate(_shapes(rng, n)):
        measured_s = TRUE.predict_shape(shape) * slowdown(k) * math.exp(rng.normal(0.0, sigma))
        log.record(end_s=float(k), measured_s=measured_s, predicted_s=prior.predict_shape(shape),
                   time_budget_s=math.inf, shape=shape)
    log.close()
    return path


def _variants(path, **kwargs):
    return replay.replay_log(str(path), held=kwargs.pop("held", None), skip=kwargs.pop("skip", 256),
                             block=kwargs.pop("block", 256))["variants"]


def test_a_prior_three_times_too_fast_is_seen_and_the_online_model_learns_the_truth(tmp_path):
    prior = CostModel(*(TRUE.coefficients() / 3), name="fast-prior")
    v = _variants(_write_log(tmp_path / "log.jsonl", prior))
    assert v["prior"]["median_log_ratio"] == pytest.approx(math.log(3), abs=0.05)
    assert v["prior"]["share_overrun"] > 0.95
    # Noise sigma 0.2: the median |log error| of a right model is 0.2 * 0.674.
    for name in ("online", "hindsight"):
        assert abs(v[name]["median_log_ratio"]) < 0.05, name
        assert v[name]["median_abs_log_ratio"] == pytest.approx(0.2 * 0.674, abs=0.03), name
    assert v["online"]["refits"] > 0 and v["hindsight"]["refits"] == 0
    assert v["hindsight"]["reference_prediction_cv"] == pytest.approx([0.0, 0.0], abs=1e-12)


def test_a_drifting_engine_shows_in_the_blocks_and_the_online_model_follows(tmp_path):
    # The engine is 1x for the first half, 1.6x for the second (a neighbour took the CPU).
    path = _write_log(tmp_path / "log.jsonl", TRUE, n=3000, slowdown=lambda k: 1.0 if k < 1500 else 1.6)
    result = replay.replay_log(str(path), held=None, skip=256, block=500)
    low, high = result["engine_drift"]["range"]
    assert math.exp(high - low) == pytest.approx(1.6, rel=0.1)
    v = result["variants"]
    # One model held still is wrong by ~sqrt(1.6) half the time; the online one follows the change.
    assert v["online"]["median_abs_log_ratio"] < v["hindsight"]["median_abs_log_ratio"]
    assert v["online"]["reference_prediction_cv"][0] > 0.1


def test_held_model_and_json_report(tmp_path):
    path = _write_log(tmp_path / "log.jsonl", TRUE, n=600)
    held = tmp_path / "held.json"
    held.write_text(json.dumps({**TRUE.to_dict(), "per_seq_s": 4e-4, "name": "held"}))
    out = tmp_path / "out.json"
    assert replay.main([str(path), "--model", str(held), "--skip", "100", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    (result,) = data["results"]
    assert set(result["variants"]) == {"online", "prior", "hindsight", "model"}
    assert result["variants"]["model"]["median_log_ratio"] < -0.1  # twice the per-sequence cost
    assert result["iterations"] == 600


def test_the_last_run_of_an_appended_log_is_replayed_gzipped_too(tmp_path):
    path = tmp_path / "log.jsonl"
    _write_log(path, TRUE, n=50, seed=1)
    _write_log(path, TRUE, n=80, seed=2)  # a restart appends a new header
    prior, features, times = replay.read_log(str(path))
    assert len(times) == 80 and features.shape == (80, len(FEATURE_NAMES))
    zipped = tmp_path / "log.jsonl.gz"
    zipped.write_bytes(gzip.compress(path.read_bytes()))
    assert replay.read_log(str(zipped))[2].tolist() == times.tolist()


@pytest.mark.parametrize("text, message", [
    ("", "no header line"),
    ('{"measured_s": 0.01, "features": [1,1,1,1,0,0,0,0,0,0]}\n', "before the log's header"),
    ("not json\n", "not an iteration-log line"),
])
def test_bad_logs_are_refused_with_the_line(tmp_path, capsys, text, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        replay.main([str(path)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_header_with_other_features_is_refused(tmp_path, capsys):
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps({"kind": "start", "features": ["fixed"], "prior": TRUE.to_dict()}) + "\n")
    with pytest.raises(SystemExit):
        replay.main([str(path)])
    assert "are not" in capsys.readouterr().err
