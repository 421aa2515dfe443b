"""Pure parts of benchmark/cpu_side_by_side.py (no server): cost-model fit, SLOs, aggregation."""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from sglang_fair.policy.cost_model import FEATURE_NAMES, feature_row

_BENCH = Path(__file__).resolve().parents[2] / "benchmark"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, _BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


sys.path.insert(0, str(_BENCH))
side = _load("cpu_side_by_side")


def _samples(fixed_s, per_new_s, per_ctx_s, noise=0.0, seed=0, prefill_s=0.0, mixed_seq_s=0.0):
    """Calibration rows as ``calibrate`` writes them, timed by a known model."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for n, b in ((32, 1), (128, 1), (256, 1), (512, 1), (64, 16), (256, 16), (128, 8)):
        rows.append(feature_row(n + b, n + 40 * b, b + 1, n * n, has_prefill=True, decode_context=40 * b,
                                decode_context_sq=b * 40 * 40))
        labels.append(f"prefill {n} (+{b})")
    for b, c in ((1, 32), (8, 256), (16, 128), (32, 64)):
        rows.append(feature_row(b + 1, b * (c + 8) + 40, b + 1, 0.0, has_prefill=False,
                                decode_context=b * (c + 8) + 40, decode_context_sq=0))
        labels.append(f"decode {b}x{c}")
    x = np.asarray(rows)
    col = {name: x[:, i] for i, name in enumerate(FEATURE_NAMES)}
    times = (fixed_s + per_new_s * col["new_tokens"] + per_ctx_s * col["sum_context"]
             + prefill_s * col["prefill_iteration"] + mixed_seq_s * col["mixed_seqs"]) * (1 + noise * rng.standard_normal(len(x)))
    return {"features": rows, "times_s": times.tolist(), "labels": labels}


def test_fit_recovers_a_clean_model():
    model = side.fit_calibration(_samples(0.01, 60e-6, 4e-6, prefill_s=0.012, mixed_seq_s=0.0015))
    assert model.fixed_s == pytest.approx(0.01, rel=1e-3)
    assert model.per_new_token_s == pytest.approx(60e-6, rel=1e-3)
    assert model.per_context_token_s == pytest.approx(4e-6, rel=1e-3)
    assert model.per_prefill_iteration_s == pytest.approx(0.012, rel=1e-3)
    assert model.per_mixed_seq_s == pytest.approx(0.0015, rel=1e-3)
    assert model.info["mape"] < 1e-6 and len(model.info["shapes"]) == 11


def test_fit_never_keeps_negative_per_token_terms():
    samples = _samples(0.01, 60e-6, 0.0)
    samples["times_s"][9] *= 0.2  # the big-context decode comes out fast: context term < 0
    samples["times_s"][4] *= 0.5  # a mixed prefill comes out fast: an extend term < 0
    model = side.fit_calibration(samples)
    assert model.per_new_token_s >= 0 and model.per_context_token_s >= 0
    assert model.per_prefill_iteration_s >= 0 and model.per_mixed_seq_s >= 0


def test_slos_and_capacity_follow_the_model():
    import load_client

    model = side.fit_calibration(_samples(0.01, 60e-6, 4e-6, prefill_s=0.012, mixed_seq_s=0.0015))
    specs = [load_client.RequestSpec(i, 0.0, 144, 26, 1.0, 1.0) for i in range(10)]
    ttft_slo_s, tpot_slo_s = side.derive_slos(model, specs)
    # A 256-token chunk mixed with 16 decodes: the extend path's costs are part of that batch.
    mixed_s = model.predict(272, 16 * 157 + 256, 17) + 0.012 + 17 * 0.0015
    assert tpot_slo_s == pytest.approx(mixed_s, abs=1e-3)
    assert ttft_slo_s == pytest.approx(8 * tpot_slo_s, rel=0.05)
    assert 0 < side.estimate_capacity_rps(model, specs) < math.inf


def test_aggregate_reports_median_and_spread():
    runs = {"a": [{k: float(i) for k, *_ in side.METRICS} for i in (1, 5, 3)]}
    table = side.aggregate(runs)
    assert table["a"]["goodput_rps"] == (3.0, 1.0, 5.0)
    markdown = side.render_markdown(table)
    assert markdown.splitlines()[0].startswith("| metric") and "3.000 [1.000..5.000]" in markdown


def test_an_unusable_calibration_is_an_error_not_a_model():
    samples = _samples(0.01, 60e-6, 4e-6)
    samples["times_s"] = [t * (5.0 if i < 4 else 1.0) for i, t in enumerate(samples["times_s"])]
    samples["times_s"][3] = 0.001  # the biggest prefill measured fastest: tokens look free
    with pytest.raises(side.CalibrationError, match="too busy"):
        side.fit_calibration(samples)
