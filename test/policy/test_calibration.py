"""The start-up calibration's plain parts: the grid, the fit from timings, the cache."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from policy_helpers import CPU_LIKE, CPU_MIXED_CONTEXT, CPU_MIXED_CONTEXT_SQ
from sglang_fair.policy import CostModel
from sglang_fair.policy.calibration import (
    CALIBRATION_VERSION,
    CalibrationError,
    CalibrationShape,
    GridLimits,
    cache_key,
    calibration_grid,
    fit_calibration,
    group_output_tokens,
    load_cached,
    save_cached,
)
from sglang_fair.policy.cost_model import FEATURE_NAMES, BatchShape

SERVER = GridLimits(kv_tokens=16384, max_running_requests=256, max_chunk_tokens=8192, context_tokens=4096)


def _executed_features(shape: CalibrationShape, rng) -> tuple:
    """What the runtime would record for one timed visit of ``shape`` (ragged decode contexts)."""
    batch = BatchShape()
    for _ in range(shape.decodes):
        batch.add_decode(int(rng.integers(max(1, shape.context // 2), shape.context * 3 // 2 + 1)))
    if shape.chunk:
        batch.add_prefill(shape.chunk, shape.prefix)
    return batch.features()


def _timed(grid, model: CostModel, rng, *, noise=0.03, stall_every=4, repeats=5):
    """Timings as a shared machine gives them: a little noise, and now and then a repeat that a
    neighbour slowed down 2-20x (only ever slower)."""
    samples = {}
    for shape in grid:
        rows = []
        for repeat in range(repeats):
            features = _executed_features(shape, rng)
            time_s = float(np.dot(features, model.coefficients())) * math.exp(noise * abs(rng.standard_normal()))
            if repeat % stall_every == 1:
                time_s *= float(rng.uniform(2, 20))
            rows.append((features, time_s))
        samples[shape] = rows
    return samples


def test_grid_covers_every_class_and_holds_some_out():
    grid = calibration_grid("cpu", SERVER, visits=4)
    kinds = {shape.kind for shape in grid}
    assert kinds == {"decode", "mixed", "prefill"}
    for kind in kinds:
        shapes = [s for s in grid if s.kind == kind]
        assert any(s.holdout for s in shapes) and not all(s.holdout for s in shapes), kind
    assert any(s.prefix for s in grid if s.kind == "prefill")
    # The fitted shapes alone determine every term.
    rng = np.random.default_rng(0)
    features = np.array([_executed_features(s, rng) for s in grid if not s.holdout])
    assert np.linalg.matrix_rank(features) == len(FEATURE_NAMES)
    gpu = np.array([_executed_features(s, rng) for s in calibration_grid("gpu", SERVER, visits=4) if not s.holdout])
    assert np.linalg.matrix_rank(gpu) == len(FEATURE_NAMES)


def test_grid_fits_the_engine_limits():
    small = GridLimits(kv_tokens=2048, max_running_requests=8, max_chunk_tokens=128, context_tokens=1024)
    grid = calibration_grid("cpu", small, visits=4)
    output_tokens = group_output_tokens(3, 4)
    for shape in grid:
        assert shape.chunk <= small.max_chunk_tokens
        assert shape.decodes < small.max_running_requests
        assert shape.decodes * (1.5 * shape.context + output_tokens + 1) <= 0.5 * small.kv_tokens + 1e-9
        assert 1.5 * shape.context + output_tokens < small.context_tokens
        assert shape.chunk + shape.prefix < small.context_tokens
    assert len(calibration_grid("gpu", SERVER, visits=4)) > 0


@pytest.mark.parametrize("engine", [CPU_LIKE, CPU_MIXED_CONTEXT, CPU_MIXED_CONTEXT_SQ], ids=lambda m: m.name)
def test_fit_recovers_the_engine_from_noisy_timings(engine):
    rng = np.random.default_rng(1)
    grid = calibration_grid("cpu", SERVER, visits=4)
    fit = fit_calibration(_timed(grid, engine, rng), name="t")
    assert fit.fit_mape < 0.05 and fit.holdout_mape is not None and fit.holdout_mape < 0.05
    for shape in (CalibrationShape("mixed", 12, 200, 300), CalibrationShape("prefill", chunk=700, prefix=100),
                  CalibrationShape("decode", 40, 500)):
        features = _executed_features(shape, rng)
        assert float(np.dot(features, fit.model.coefficients())) == pytest.approx(
            float(np.dot(features, engine.coefficients())), rel=0.08)
    # the extend-path terms, which no kernel profile sees, come out of the engine's own timings
    # (the mixed shapes' decode groups sit at several contexts, which tells the per-row terms apart)
    assert fit.model.per_prefill_iteration_s == pytest.approx(engine.per_prefill_iteration_s, rel=0.25)
    if not engine.per_mixed_context_sq_s:
        assert fit.model.per_mixed_seq_s == pytest.approx(engine.per_mixed_seq_s, rel=0.25)
        assert fit.model.per_mixed_context_s == pytest.approx(engine.per_mixed_context_s, rel=0.25, abs=1e-7)
        assert fit.model.per_mixed_context_sq_s < 1e-9  # (none in the engine: at most a little noise)
    else:
        # Three per-row terms from the grid's decode contexts (96, 256, 384 with more than one
        # decode): the rank is full, but under these stalls the split among them is not sharp
        # (seed 1: 0.07 ms + 4.4 us/token + 0.34 ns/token^2 for 0.3 ms + 1 us + 10 ns); a row's cost
        # at the grid's contexts is.
        assert fit.model.per_mixed_context_sq_s > 0
        for context in (96, 256, 384):
            assert fit.model.extend_rows_cost_s(1, context, context**2) == pytest.approx(
                engine.extend_rows_cost_s(1, context, context**2), rel=0.3)
    assert {row["shape"] for row in fit.table} == {s.label for s in grid}
    assert sum(row["holdout"] for row in fit.table) == sum(s.holdout for s in grid)
    assert fit.model.info["holdout_mape"] == fit.holdout_mape


def test_fit_never_keeps_a_negative_cost():
    """Noise that makes extend-path batches look cheaper than decodes must not make mixing free."""
    engine = CostModel(0.004, 2e-5, 1e-6, 1e-4, 0.0, name="no-extend-cost")
    rng = np.random.default_rng(2)
    grid = calibration_grid("cpu", SERVER, visits=4)
    samples = _timed(grid, engine, rng, noise=0.0, stall_every=10)
    for shape, rows in samples.items():
        if shape.chunk:
            samples[shape] = [(f, t * 0.97) for f, t in rows]
    fit = fit_calibration(samples)
    assert all(c >= 0 for c in fit.model.coefficients())
    assert fit.model.info["dropped"]


def test_unusable_timings_raise():
    grid = calibration_grid("cpu", SERVER, visits=4)
    with pytest.raises(CalibrationError):
        fit_calibration({})
    with pytest.raises(CalibrationError):
        fit_calibration({grid[0]: [((1.0,) * 7, 0.01)]})
    # time that falls as batches grow: nothing is a cost
    shrinking = {s: [(f, math.exp(-(f[1] + f[2]) / 1000.0)) for f in [_executed_features(s, np.random.default_rng(3))]]
                 for s in grid}
    with pytest.raises(CalibrationError):
        fit_calibration(shrinking)


IDENTITY = {
    "model": {"path": "/m/tiny", "config_sha256": "abc", "revision": None},
    "device": {"type": "cpu", "name": "Some CPU", "cores": 2, "torch_threads": 2},
    "dtype": "torch.float32",
    "engine": {"attention_backend": "torch_native", "page_size": 1, "tp_size": 1},
    "versions": {"sglang": "0.5.23", "torch": "2.14.1"},
    "grid": [["decode", 1, 64, 0, 0, False]],
}


def test_cache_key_is_stable_and_tells_engines_apart():
    key = cache_key(IDENTITY)
    reordered = json.loads(json.dumps(IDENTITY))
    reordered["engine"] = dict(reversed(list(reordered["engine"].items())))
    assert cache_key(reordered) == key and len(key) == 24
    for path, value in [
        (("model", "config_sha256"), "def"),  # another model shape
        (("model", "path"), "/m/other"),
        (("device", "name"), "Another CPU"),
        (("device", "torch_threads"), 1),
        (("engine", "attention_backend"), "flashinfer"),
        (("engine", "tp_size"), 2),
        (("versions", "sglang"), "0.5.24"),
    ]:
        changed = json.loads(json.dumps(IDENTITY))
        changed[path[0]][path[1]] = value
        assert cache_key(changed) != key, path
    changed = dict(IDENTITY, dtype="torch.bfloat16")
    assert cache_key(changed) != key


def test_cache_round_trip_and_bad_entries(tmp_path):
    key = cache_key(IDENTITY)
    assert load_cached(tmp_path, key) is None
    model = CostModel(0.002, 1e-5, 1e-7, 1e-4, 0.0, per_prefill_iteration_s=0.003, name="calibrated:tiny")
    path = save_cached(tmp_path / "sub", key, {"model": model, "fit_mape": 0.04, "holdout_mape": 0.06,
                                               "table": [{"shape": "decode 1x64"}]})
    entry = load_cached(tmp_path / "sub", key)
    assert entry["path"] == path and entry["holdout_mape"] == 0.06
    assert entry["model"].coefficients().tolist() == model.coefficients().tolist()
    assert [p.name for p in (tmp_path / "sub").iterdir()] == [f"calibration-{key}.json"]  # no temp file left
    # another key, a corrupt file, an old version: all read as "not cached"
    assert load_cached(tmp_path / "sub", cache_key({**IDENTITY, "dtype": "x"})) is None
    text = json.loads((tmp_path / "sub" / f"calibration-{key}.json").read_text())
    (tmp_path / "sub" / f"calibration-{key}.json").write_text(json.dumps({**text, "calibration_version": CALIBRATION_VERSION + 1}))
    assert load_cached(tmp_path / "sub", key) is None
    (tmp_path / "sub" / f"calibration-{key}.json").write_text("{not json")
    assert load_cached(tmp_path / "sub", key) is None
    (tmp_path / "sub" / f"calibration-{key}.json").write_text(json.dumps({**text, "model": {"fixed_s": "x"}}))
    assert load_cached(tmp_path / "sub", key) is None


def test_a_fit_whose_extend_context_takes_every_token_cost_is_refitted_without_it(monkeypatch):
    """On a noisy grid the decode rows' context (nearly proportional to their count within a group)
    can absorb the whole per-token cost; the calibration then fits without ``mixed_context`` and
    ``mixed_context_sq`` instead of failing the start-up."""
    from sglang_fair.policy import calibration

    real_fit = calibration.fit_physical_cost_model
    seen_terms = []

    def fit_that_zeroes_tokens_with_the_term(features, times_s, *, terms, **kwargs):
        seen_terms.append(terms)
        model = real_fit(features, times_s, terms=terms, **kwargs)
        if "mixed_context" in terms:
            model.per_new_token_s = model.per_context_token_s = 0.0
        return model

    monkeypatch.setattr(calibration, "fit_physical_cost_model", fit_that_zeroes_tokens_with_the_term)
    grid = calibration_grid("cpu", SERVER, visits=4)
    fit = fit_calibration(_timed(grid, CPU_MIXED_CONTEXT_SQ, np.random.default_rng(4)), name="t")
    assert [("mixed_context" in terms) for terms in seen_terms] == [True, False]
    assert [("mixed_context_sq" in terms) for terms in seen_terms] == [True, False]
    assert fit.model.per_new_token_s + fit.model.per_context_token_s > 0
    assert fit.model.per_mixed_context_s == 0.0 and fit.model.per_mixed_context_sq_s == 0.0


def test_a_small_engines_grid_too_small_for_every_term_is_fitted_without_the_squared_one():
    """4 seats, 32-token chunks and a 500-token context (one mixed chunk size, no long decode
    group): fewer fitted shapes than terms; the calibration leaves ``mixed_context_sq`` out rather
    than failing the start-up."""
    small = GridLimits(kv_tokens=2048, max_running_requests=4, max_chunk_tokens=32, context_tokens=500)
    grid = calibration_grid("cpu", small, visits=4)
    assert sum(not s.holdout for s in grid) < len(FEATURE_NAMES)
    fit = fit_calibration(_timed(grid, CPU_MIXED_CONTEXT, np.random.default_rng(5)), name="t")
    assert "mixed_context_sq" not in fit.model.info["terms"] and fit.model.per_mixed_context_sq_s == 0.0
