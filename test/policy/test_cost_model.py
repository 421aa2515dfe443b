import json
import math

import numpy as np
import pytest

from sglang_fair.policy import (
    BatchShape,
    CostModel,
    CostModelError,
    OnlineCostModel,
    fit_cost_model,
    load_cost_model,
    preset_names,
)
from sglang_fair.policy.cost_model import FEATURE_NAMES, ONLINE_NONNEGATIVE_TERMS, feature_row


def _samples(model: CostModel, n: int, rng, noise=0.0):
    new = rng.integers(1, 4096, n)
    ctx = new + rng.integers(0, 100_000, n)
    seqs = rng.integers(1, 200, n)
    features = np.array([feature_row(n, c, s, 0, False, decode_context=c, decode_context_sq=0)
                         for n, c, s in zip(new, ctx, seqs)], dtype=float)
    times = features @ model.coefficients()
    return features, times * (1 + noise * rng.standard_normal(n))


def test_fit_recovers_coefficients(model):
    rng = np.random.default_rng(0)
    features, times = _samples(model, 400, rng)
    fitted = fit_cost_model(features, times, terms=("fixed", "new_tokens", "sum_context", "num_seqs"))
    assert fitted.info["mape"] < 1e-6
    np.testing.assert_allclose(fitted.coefficients()[:3], model.coefficients()[:3], rtol=1e-4)


def test_fit_ignores_nan_and_trims_outliers(model):
    rng = np.random.default_rng(1)
    features, times = _samples(model, 300, rng, noise=0.01)
    times[:5] = np.nan
    times[5:15] *= 30  # wild outliers
    fitted = fit_cost_model(features, times, terms=("fixed", "new_tokens", "sum_context", "num_seqs"))
    assert fitted.per_new_token_s == pytest.approx(model.per_new_token_s, rel=0.05)


def test_fit_rejects_empty():
    with pytest.raises(ValueError):
        fit_cost_model(np.zeros((3, len(FEATURE_NAMES))), np.array([np.nan, -1, 0]))


def test_save_load_roundtrip(tmp_path, model):
    path = tmp_path / "m.json"
    model.save(path)
    loaded = load_cost_model(str(path))
    np.testing.assert_allclose(loaded.coefficients(), model.coefficients())
    assert loaded.name == model.name


def test_presets_load():
    assert "a100-llama2-7b" in preset_names()
    m = load_cost_model("a100-llama2-7b")
    assert m.predict(1, 1000, 1) > m.fixed_s > 0


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"fixed_s": 0.01}', "missing field"),
        ('{"fixed_s": 0.01, "per_new_token_s": "x", "per_context_token_s": 0}', "finite number"),
        ('{"fixed_s": 0.01, "per_new_token_s": 0, "per_context_token_s": 0}', "must not all be"),
    ],
)
def test_load_errors_are_one_line(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(CostModelError, match=match) as info:
        load_cost_model(str(path))
    assert "\n" not in str(info.value)


def test_unknown_preset_lists_presets():
    with pytest.raises(CostModelError, match="a100-llama2-7b") as info:
        load_cost_model("no-such-model")
    assert "\n" not in str(info.value)
    with pytest.raises(CostModelError):
        load_cost_model("")


def _shape(new, ctx, seqs):
    s = BatchShape()
    s.new_tokens, s.sum_context, s.num_seqs = new, ctx, seqs
    return s


def test_online_cold_start_uses_prior(model):
    online = OnlineCostModel(model, min_samples=32, refit_every=8)
    assert online.current is model
    for _ in range(10):
        online.observe(_shape(100, 1000, 4), 0.02)
    assert online.current is model and online.refits == 0


def test_online_refit_tracks_a_slower_engine(model):
    slower = CostModel(*(model.coefficients()[:4] * 1.5), name="slow")
    online = OnlineCostModel(model, min_samples=32, refit_every=32)
    rng = np.random.default_rng(2)
    for _ in range(256):
        shape = _shape(int(rng.integers(1, 2048)), int(rng.integers(1000, 90_000)), int(rng.integers(1, 100)))
        online.observe(shape, slower.predict_shape(shape))
    shape = _shape(1024, 50_000, 32)
    assert online.refits > 0
    assert online.predict_shape(shape) == pytest.approx(slower.predict_shape(shape), rel=0.05)


def test_online_refits_space_out_while_they_learn_nothing_and_a_change_resets_them(model):
    """Refits cost scheduler CPU: on a steady (noisy) engine they double their spacing up to
    ``max_refit_every``; an engine that changes is still caught by the bias trigger, and the refit
    that learns the change puts the spacing back to ``refit_every``."""
    online = OnlineCostModel(model, min_samples=32, refit_every=32, max_refit_every=256)
    rng = np.random.default_rng(5)

    def run(engine: CostModel, count: int) -> None:
        for _ in range(count):
            shape = _shape(int(rng.integers(1, 2048)), int(rng.integers(1000, 90_000)), int(rng.integers(1, 100)))
            online.observe(shape, engine.predict_shape(shape) * (1 + 0.03 * rng.standard_normal()))

    run(model, 1500)
    assert online.refit_interval == 256
    steady_refits = online.refits
    slower = CostModel(*(model.coefficients()[:4] * 2.0), name="slower")
    run(slower, 48)  # fewer observations than the spaced-out interval: only the bias trigger refits
    assert online.refits > steady_refits and online.refit_interval == 32
    run(slower, 152)
    shape = _shape(1024, 50_000, 32)
    assert online.predict_shape(shape) == pytest.approx(slower.predict_shape(shape), rel=0.1)


def test_bias_triggered_refits_space_out_while_no_fit_can_be_taken(model, monkeypatch):
    """A window whose fit is unusable (in decode-only batches ``new_tokens`` equals ``num_seqs``,
    and the fit may make tokens free) leaves the bias in place: the bias trigger then doubles its
    spacing instead of refitting every ``fast_refit_every`` observations; the first fit that is
    taken puts it back."""
    online = OnlineCostModel(model, min_samples=32, refit_every=64, max_refit_every=512, fast_refit_every=16)
    real_fit = online._fit
    fits = []
    usable = False

    def fit(*args, **kwargs):
        fitted = real_fit(*args, **kwargs)
        fits.append(online.observed)
        if not usable:
            fitted.per_new_token_s = -1e-6  # what the collinear decode-only window gives
        return fitted

    monkeypatch.setattr(online, "_fit", fit)
    rng = np.random.default_rng(7)

    def run(count: int) -> None:
        for _ in range(count):
            seqs = int(rng.integers(1, 200))
            shape = _shape(seqs, seqs * int(rng.integers(200, 2000)), seqs)
            online.observe(shape, 3.0 * model.predict_shape(shape))  # 3x off: always biased

    run(600)
    attempts = len(set(fits))  # (a refit may fit twice: with and without the prior's weight)
    assert online.refits == 0 and attempts <= 8  # every 16 observations would be ~35
    assert online.fast_interval > online.fast_refit_every
    usable = True
    run(online.fast_interval + 1)
    assert online.refits >= 1 and online.fast_interval == online.fast_refit_every
    shape = _shape(64, 64 * 1000, 64)
    assert online.predict_shape(shape) == pytest.approx(3.0 * model.predict_shape(shape), rel=0.1)


def test_online_rejects_nan_negative_and_wild(model):
    online = OnlineCostModel(model, min_samples=4, refit_every=4)
    shape = _shape(100, 1000, 4)
    for bad in (math.nan, math.inf, -1.0, 0.0, 1e6, "x", None):
        assert not online.observe(shape, bad)
    assert not online.observe(BatchShape(), 0.01)  # empty batch
    assert online.rejected == 8 and online.samples == 0
    before = online.current
    for _ in range(8):
        online.observe(shape, model.predict_shape(shape))
    # A degenerate sample set (one shape) must not produce a model with free tokens.
    assert online.current.per_new_token_s > 0 or online.current is before


def test_max_chunk_tokens_fits_room(model):
    for room in (0.001, 0.01, 0.1, 1.0):
        for prefix in (0, 1000, 50_000):
            chunk = model.max_chunk_tokens(room, prefix)
            if chunk:
                assert model.prefill_cost_s(chunk, prefix) <= room + 1e-12
                assert model.prefill_cost_s(chunk + 1, prefix) > room - 1e-12
    assert model.max_chunk_tokens(-1, 0) == 0
    quad = CostModel(0.005, 5e-5, 3e-7, 0, 1.4e-11)
    chunk = quad.max_chunk_tokens(0.2, 100)
    assert quad.prefill_cost_s(chunk, 100) <= 0.2 < quad.prefill_cost_s(chunk + 1, 100)


def _mixed_shapes(rng, n, *, context_levels=False):
    """Decode-only batches and batches with one prefill chunk among the decodes.  Each decode's
    context is drawn alone, or (``context_levels``) within +-50% of a level drawn per batch: then a
    batch's summed decode context does not follow its number of decodes, and ``mixed_context`` can
    be told apart from ``mixed_seqs``."""
    shapes = []
    for _ in range(n):
        shape = BatchShape()
        level = int(rng.integers(16, 2000))
        for _ in range(int(rng.integers(1, 40))):
            shape.add_decode(int(level * rng.uniform(0.5, 1.5)) if context_levels else int(rng.integers(16, 2000)))
        if rng.random() < 0.5:
            shape.add_prefill(int(rng.integers(1, 1024)), int(rng.integers(0, 512)))
        shapes.append(shape)
    return shapes


def test_extend_terms_predict_and_fit():
    from policy_helpers import CPU_LIKE

    decode_only, mixed = BatchShape(), BatchShape()
    for shape in (decode_only, mixed):
        for context in (100, 200):
            shape.add_decode(context)
    mixed.add_prefill(64, 0)
    extend = FEATURE_NAMES.index("prefill_iteration")
    assert decode_only.features()[extend:] == (0.0, 0, 0, 0) and mixed.features()[extend:] == (1.0, 3, 300, 100**2 + 200**2)
    # A batch with a prefill pays the extend path once plus per sequence; a decode-only one does not.
    without = CostModel(*CPU_LIKE.coefficients()[:extend])
    assert CPU_LIKE.predict_shape(decode_only) == pytest.approx(without.predict_shape(decode_only))
    assert CPU_LIKE.predict_shape(mixed) == pytest.approx(without.predict_shape(mixed) + 0.012 + 3 * 0.0015)
    assert CPU_LIKE.predict_shape(mixed) == pytest.approx(float(np.dot(mixed.features(), CPU_LIKE.coefficients())))
    rng = np.random.default_rng(3)
    shapes = _mixed_shapes(rng, 300)
    features = np.array([s.features() for s in shapes], dtype=float)
    times = np.array([CPU_LIKE.predict_shape(s) for s in shapes])
    fitted = fit_cost_model(features, times, terms=("fixed", "new_tokens", "sum_context", "num_seqs",
                                                     "sum_chunk_sq", "prefill_iteration", "mixed_seqs"))
    np.testing.assert_allclose(fitted.coefficients(), CPU_LIKE.coefficients(), rtol=1e-3, atol=1e-12)
    assert "prefill_iteration" in fitted.describe()


def test_mixed_context_prices_the_decode_rows_context_in_a_batch_with_a_prefill():
    from policy_helpers import CPU_LIKE, CPU_MIXED_CONTEXT

    decode_only, mixed, prefill_only = BatchShape(), BatchShape(), BatchShape()
    for shape in (decode_only, mixed):
        for context in (100, 250):
            shape.add_decode(context)
    for shape in (mixed, prefill_only):
        shape.add_prefill(64, 512)  # the chunk's own prefix and tokens are not decode context
    assert (decode_only.decode_context, mixed.decode_context, prefill_only.decode_context) == (350, 350, 0)
    column = FEATURE_NAMES.index("mixed_context")
    assert (decode_only.features()[column], mixed.features()[column], prefill_only.features()[column]) == (0, 350, 0)
    without = CostModel(*CPU_MIXED_CONTEXT.coefficients()[:-2])  # the same model, the term at 0
    assert CPU_MIXED_CONTEXT.predict_shape(decode_only) == without.predict_shape(decode_only)
    assert CPU_MIXED_CONTEXT.predict_shape(prefill_only) == without.predict_shape(prefill_only)
    assert CPU_MIXED_CONTEXT.predict_shape(mixed) == pytest.approx(without.predict_shape(mixed) + 350 * 3e-6)
    assert CPU_MIXED_CONTEXT.predict_shape(mixed) == pytest.approx(
        float(np.dot(mixed.features(), CPU_MIXED_CONTEXT.coefficients())))
    assert "mixed_ctx" in CPU_MIXED_CONTEXT.describe() and "mixed_ctx" not in CPU_LIKE.describe()
    # The extend path's cost for decode rows: the first chunk's mixing cost, and what running them
    # apart saves (an iteration's fixed cost against their rows' extend cost).
    sq = 100**2 + 250**2  # (no squared-context term in this model: it prices nothing)
    assert CPU_MIXED_CONTEXT.extend_rows_cost_s(2, 350, sq) == pytest.approx(2 * 0.0003 + 350 * 3e-6)
    assert CPU_MIXED_CONTEXT.mixing_cost_s(2, 350, sq) == pytest.approx(0.012 + 2 * 0.0003 + 350 * 3e-6)
    assert CPU_LIKE.mixing_cost_s(2, 350, sq) == pytest.approx(0.012 + 2 * 0.0015)  # no context term
    assert CPU_MIXED_CONTEXT.split_saving_s(2, 350, sq) == pytest.approx(2 * 0.0003 + 350 * 3e-6 - 0.0066)
    assert (CPU_MIXED_CONTEXT.split_saving_s(8, 8 * 100, 8 * 100**2) < 0
            < CPU_MIXED_CONTEXT.split_saving_s(8, 8 * 400, 8 * 400**2))
    # The batched rates are decode_cost_s plus, in a batch with a prefill, the row's extend cost.
    for is_mixed in (False, True):
        per_row_s, per_context_s, per_context_sq_s = CPU_MIXED_CONTEXT.decode_rates_s(is_mixed)
        expected = CPU_MIXED_CONTEXT.decode_cost_s(250) + (
            CPU_MIXED_CONTEXT.extend_rows_cost_s(1, 250, 250**2) if is_mixed else 0)
        assert per_row_s + (per_context_s + per_context_sq_s * 250) * 250 == pytest.approx(expected)


def test_mixed_context_sq_prices_the_decode_rows_squared_context_in_a_batch_with_a_prefill():
    from policy_helpers import CPU_MIXED_CONTEXT_SQ as model

    decode_only, mixed = BatchShape(), BatchShape()
    for shape in (decode_only, mixed):
        for context in (100, 250):
            shape.add_decode(context)
    mixed.add_prefill(64, 512)  # the chunk's own prefix and tokens are not decode context
    sq = 100**2 + 250**2
    assert (decode_only.decode_context_sq, mixed.decode_context_sq) == (sq, sq)
    column = FEATURE_NAMES.index("mixed_context_sq")
    assert FEATURE_NAMES[column - 1] == "mixed_context" and column == len(FEATURE_NAMES) - 1
    assert (decode_only.features()[column], mixed.features()[column]) == (0, sq)
    without = CostModel(*model.coefficients()[:-1])  # the same model, the term at 0
    assert model.predict_shape(decode_only) == without.predict_shape(decode_only)
    assert model.predict_shape(mixed) == pytest.approx(without.predict_shape(mixed) + 1e-8 * sq)
    assert model.predict_shape(mixed) == pytest.approx(float(np.dot(mixed.features(), model.coefficients())))
    # predict's keyword, and the extend rows' cost in each of its forms
    assert model.predict(66, 350 + 576, 3, 64 * 64, 1, 64 * 512, decode_context=350,
                         decode_context_sq=sq) == model.predict_shape(mixed)
    rows_s = 2 * 0.0003 + 350 * 1e-6 + sq * 1e-8
    assert model.extend_rows_cost_s(2, 350, sq) == pytest.approx(rows_s)
    assert model.mixing_cost_s(2, 350, sq) == pytest.approx(0.012 + rows_s)
    assert model.split_saving_s(2, 350, sq) == pytest.approx(rows_s - 0.0066)
    per_row_s, per_context_s, per_context_sq_s = model.decode_rates_s(True)
    assert per_row_s + (per_context_s + per_context_sq_s * 250) * 250 == pytest.approx(
        model.decode_cost_s(250) + model.extend_rows_cost_s(1, 250, 250**2))
    assert model.decode_rates_s(False)[2] == 0.0
    assert "mixed_ctx^2" in model.describe() and "mixed_ctx^2" not in without.describe()
    assert CostModel.from_dict(model.to_dict()) == model


@pytest.mark.parametrize("field", ["per_mixed_context_s", "per_mixed_context_sq_s"])
def test_a_model_saved_without_mixed_context_loads_with_it_at_zero(tmp_path, field):
    from policy_helpers import CPU_LIKE

    data = CPU_LIKE.to_dict()
    del data[field]
    if field == "per_mixed_context_s":  # (a file older than both terms)
        del data["per_mixed_context_sq_s"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    loaded = load_cost_model(str(path))
    assert getattr(loaded, field) == 0.0 and loaded.per_mixed_context_sq_s == 0.0
    np.testing.assert_array_equal(loaded.coefficients(), CPU_LIKE.coefficients())
    for name in preset_names():  # the shipped (GPU) presets predate the terms
        assert getattr(load_cost_model(name), field) == 0.0


def test_online_refit_learns_the_extend_path_cost(model):
    """A prior without extend-path terms (a kernel profile) on an engine that has them."""
    from policy_helpers import CPU_LIKE

    prior = CostModel(*CPU_LIKE.coefficients()[:5], name="kernel-profile")
    online = OnlineCostModel(prior, min_samples=32, refit_every=32)
    rng = np.random.default_rng(4)
    for shape in _mixed_shapes(rng, 256):
        online.observe(shape, CPU_LIKE.predict_shape(shape) * (1 + 0.02 * rng.standard_normal()))
    assert online.refits > 0
    fitted = online.current
    assert fitted.per_prefill_iteration_s == pytest.approx(0.012, rel=0.2)
    # Every batch's decodes average ~1000 tokens of context here, so a decode row's extend cost is
    # identified only at that context, split between the per-row and per-context-token terms.
    assert fitted.extend_rows_cost_s(1, 1008, 1008**2) == pytest.approx(0.0015, rel=0.2)


def _refit_from_a_kernel_prior(engine: CostModel) -> CostModel:
    """The online model after 512 batches timed by ``engine`` (2% noise) at many context levels,
    from a prior without the extend terms (a kernel profile's)."""
    prior = CostModel(*engine.coefficients()[:5], name="kernel-profile")
    online = OnlineCostModel(prior, min_samples=32, refit_every=32)
    rng = np.random.default_rng(4)
    for shape in _mixed_shapes(rng, 512, context_levels=True):
        online.observe(shape, engine.predict_shape(shape) * (1 + 0.02 * rng.standard_normal()))
    assert online.refits > 0
    return online.current


def test_online_refit_learns_the_mixed_context_cost():
    """An engine whose decode rows cost more per context token in a batch with a prefill (SGLang's
    CPU backend), seen through batches at many context levels, from a prior without the term."""
    from policy_helpers import CPU_MIXED_CONTEXT

    fitted = _refit_from_a_kernel_prior(CPU_MIXED_CONTEXT)
    # The refit's squared-context term is free too (this engine has none): under the 2% noise it
    # takes a little of the linear one's cost (fitted 2.4e-6 + 3.2e-10 per token squared here), so
    # the linear term is recovered less sharply than the context cost as a whole.
    assert fitted.per_mixed_context_s == pytest.approx(3e-6, rel=0.3)
    assert fitted.per_mixed_context_sq_s * 1000 < 0.25 * 3e-6  # (a small share at 1000 tokens)
    assert fitted.per_prefill_iteration_s == pytest.approx(0.012, rel=0.2)
    # What a decode row adds on the extend path, at short and long context (the small per-row term
    # alone is less sharply identified than these).
    for context in (96, 384, 1000, 2000):
        assert fitted.extend_rows_cost_s(1, context, context**2) == pytest.approx(
            CPU_MIXED_CONTEXT.extend_rows_cost_s(1, context, context**2), rel=0.2)


def test_online_refit_learns_the_mixed_context_sq_cost():
    """An engine whose decode rows in a batch with a prefill cost superlinearly in their context
    (SGLang's CPU extend path on a larger model), seen through batches at many context levels,
    from a prior without the extend terms."""
    from policy_helpers import CPU_MIXED_CONTEXT_SQ

    fitted = _refit_from_a_kernel_prior(CPU_MIXED_CONTEXT_SQ)
    assert fitted.per_mixed_context_sq_s == pytest.approx(1e-8, rel=0.15)
    assert fitted.per_prefill_iteration_s == pytest.approx(0.012, rel=0.2)
    for context in (96, 384, 1000, 2000):
        assert fitted.extend_rows_cost_s(1, context, context**2) == pytest.approx(
            CPU_MIXED_CONTEXT_SQ.extend_rows_cost_s(1, context, context**2), rel=0.1)
    assert "mixed_ctx^2" in fitted.describe()


def test_online_refit_keeps_the_priors_mixed_context_until_a_mixed_batch_is_seen(model):
    """A window of decode-only batches cannot see the term: it stays the (rescaled) prior's."""
    from policy_helpers import CPU_MIXED_CONTEXT

    online = OnlineCostModel(CPU_MIXED_CONTEXT, min_samples=32, refit_every=32)
    rng = np.random.default_rng(6)
    for shape in _mixed_shapes(rng, 256):
        if not shape.num_prefills:
            online.observe(shape, 1.3 * CPU_MIXED_CONTEXT.predict_shape(shape))
    assert online.refits > 0
    assert online.current.per_mixed_context_s == pytest.approx(1.3 * 3e-6, rel=1e-6)


def test_online_refit_never_keeps_a_negative_extend_cost(model):
    # Prefill batches measured *faster* than decode-only ones (noise): the terms stay at the prior's 0.
    online = OnlineCostModel(model, min_samples=32, refit_every=32)
    rng = np.random.default_rng(5)
    for shape in _mixed_shapes(rng, 128):
        time_s = model.predict_shape(shape) - (0.002 if shape.num_prefills else 0.0)
        online.observe(shape, time_s)
    assert online.refits > 0
    assert online.current.per_prefill_iteration_s >= 0 and online.current.per_mixed_seq_s >= 0
    assert online.current.per_mixed_context_s >= 0


def test_online_refit_never_makes_a_chunk_against_its_prefix_cheaper():
    """A CPU server's log (2026-12-06) had a refit price the chunk x prefix term below 0, and a
    40-token chunk after a 470-token prefix predicted at -18 ms: work that looks free."""
    engine = CostModel(fixed_s=2e-3, per_new_token_s=2e-5, per_context_token_s=1e-6, per_seq_s=2e-4,
                       per_chunk_sq_s=1e-8, per_prefill_iteration_s=1e-3, name="engine")
    online = OnlineCostModel(engine, min_samples=32, refit_every=32)
    rng = np.random.default_rng(9)
    for shape in _mixed_shapes(rng, 256):
        # Continuing chunks measured faster the longer their prefix (noise that a fit would take).
        time_s = engine.predict_shape(shape) * (1.0 - min(0.5, shape.sum_chunk_prefix * 2e-7))
        online.observe(shape, time_s)
    assert online.refits > 0
    assert online.current.per_chunk_prefix_s >= 0
    assert "sum_chunk_prefix" in ONLINE_NONNEGATIVE_TERMS


def test_builder_charges_the_first_chunk_the_mixing_cost():
    from policy_helpers import CPU_LIKE, make_request
    from sglang_fair.policy import BatchBuilder, IterationView

    decodes = [make_request(f"d{i}", 0.0, 100, generated=5) for i in range(10)]
    for request in decodes:
        request.prefilled_tokens = 100
    prompt = make_request("w", 0.0, 4000)
    view = IterationView(1.0, decodes, [prompt])
    decode_s = sum(CPU_LIKE.decode_cost_s(r.context_tokens) for r in decodes)
    # Room for the decodes and the mixing cost but not for a useful chunk: no chunk.
    builder = BatchBuilder(view, CPU_LIKE, time_budget_s=CPU_LIKE.fixed_s + decode_s + 0.012 + 0.015)
    builder.add_decodes(decodes)
    assert builder.add_prefill(prompt, min_chunk=32) == 0 and not builder.mixed
    # With room, the chunk pays the extend path for all 11 sequences, and a decode added after it
    # pays the per-sequence cost too.
    builder = BatchBuilder(view, CPU_LIKE, time_budget_s=0.2)
    builder.add_decodes(decodes[:9])
    granted = builder.add_prefill(prompt, min_chunk=32, max_chunk=256)
    assert granted == 256 and builder.mixed
    assert builder.add_decodes(decodes[9:]) == 1
    assert builder.predicted_s == pytest.approx(CPU_LIKE.predict_shape(builder.plan.shape))
    assert builder.predicted_s <= 0.2


@pytest.mark.parametrize("model_name", ["CPU_MIXED_CONTEXT", "CPU_MIXED_CONTEXT_SQ"])
@pytest.mark.parametrize("decodes_first", [True, False])
def test_builder_prices_decode_rows_context_in_a_mixed_batch_as_predict_shape_does(decodes_first, model_name):
    """Each way a decode joins a batch with a prefill (one at a time, in a run, all at once), and a
    prefill joining decodes (the mixing cost), charges ``per_mixed_context_s`` for the decode rows'
    context and ``per_mixed_context_sq_s`` for their squares: the builder's running time is the
    model's prediction for the shape it built."""
    import policy_helpers
    from policy_helpers import make_request
    from sglang_fair.policy import BatchBuilder, IterationView

    model = getattr(policy_helpers, model_name)
    decodes = []
    for i in range(9):
        request = make_request(f"d{i}", 0.0, 100 + 50 * i, generated=5)
        request.prefilled_tokens = request.prompt_tokens
        decodes.append(request)
    prompt = make_request("w", 0.0, 4000)
    view = IterationView(1.0, decodes, [prompt])
    builder = BatchBuilder(view, model)
    before_s = None
    if decodes_first:
        builder.add_decodes(decodes[:3])
        builder.add_all_decodes(decodes[3:6], sum(r.context_tokens for r in decodes[3:6]))
        before_s = builder.predicted_s
    assert builder.add_prefill(prompt, max_chunk=128) == 128
    if decodes_first:
        context = sum(r.context_tokens for r in decodes[:6])
        context_sq = sum(r.context_tokens**2 for r in decodes[:6])
        assert builder.plan.shape.decode_context_sq == context_sq
        assert builder.mixing_s == pytest.approx(model.mixing_cost_s(6, context, context_sq))
        assert builder.predicted_s - before_s == pytest.approx(
            0.012 + 6 * 0.0003 + model.per_mixed_context_s * context + model.per_mixed_context_sq_s * context_sq
            + model.prefill_cost_s(128, 0))
    else:
        builder.add_decodes(decodes[:3])
        builder.add_all_decodes(decodes[3:6], sum(r.context_tokens for r in decodes[3:6]))
    before_s = builder.predicted_s
    assert builder.add_decode(decodes[6], force=True)
    context = decodes[6].context_tokens
    assert builder.predicted_s - before_s == pytest.approx(
        model.decode_cost_s(context) + 0.0003 + model.per_mixed_context_s * context
        + model.per_mixed_context_sq_s * context**2)
    builder.add_decodes(decodes[7:])
    shape = builder.plan.shape
    assert shape.decode_context == sum(r.context_tokens for r in decodes) and shape.num_prefills == 1
    assert shape.decode_context_sq == sum(r.context_tokens**2 for r in decodes)
    assert builder.predicted_s == pytest.approx(model.predict_shape(shape))
    assert builder.finish(view).predicted_s == model.predict_shape(shape)


def test_a_decode_run_observed_in_one_call_is_each_step_observed_in_turn(model):
    """``observe_decode_steps`` (the simulator's decode runs) is the per-step ``observe`` of each
    step's plan, bit for bit: the online model's state, its refits mid-run (a slower, noisy engine
    makes some), and FairBatching's error ring and safety."""
    from sglang_fair.policy import BatchPolicy, build_policy

    slower = CostModel(*(model.coefficients() * 1.6), name="slower")
    rng = np.random.default_rng(7)
    runs = []
    for _ in range(400):
        count, context = int(rng.integers(1, 120)), int(rng.integers(100, 90_000))
        steps = int(rng.integers(1, 12))
        measured = [slower.predict(count, context + k * count, count) * float(rng.lognormal(0, 0.05))
                    for k in range(steps)]
        if rng.uniform() < 0.02:
            measured[0] = float("nan")  # garbage is rejected alike
        runs.append((count, context, measured))
    one_call, stepwise = build_policy("fairbatching", model), build_policy("fairbatching", model)
    for count, context, measured in runs:
        decodes = [object()] * count  # only their number matters to the model
        one_call.observe_decode_steps(decodes, context, measured)
        BatchPolicy.observe_decode_steps(stepwise, decodes, context, measured)  # plan by plan
    fast, slow = one_call.online, stepwise.online
    assert fast.refits > 0 and fast.rejected > 0
    assert fast.snapshot() == slow.snapshot()
    assert (fast._count, fast._since_refit, fast.refit_interval) == (slow._count, slow._since_refit, slow.refit_interval)
    assert np.array_equal(fast._features, slow._features) and np.array_equal(fast._times, slow._times)
    assert one_call._ratios == stepwise._ratios and one_call.budget_safety == stepwise.budget_safety


def test_a_decode_run_observed_with_the_engine_predictions_is_the_same(model):
    """``observe_decode_steps`` given the steps' predictions by the model that made them (the
    simulator's engine timing with the policy's own model) ends as it does predicting them itself,
    refits mid-run included (after one, the hints are another model's and are not used)."""
    from sglang_fair.policy import build_policy

    rng = np.random.default_rng(11)
    hinted, plain = build_policy("fairbatching", model), build_policy("fairbatching", model)
    for _ in range(400):
        count, context = int(rng.integers(1, 120)), int(rng.integers(100, 90_000))
        predicted = [model.predict(count, context + k * count, count, 0, 0, 0, context + k * count)
                     for k in range(int(rng.integers(1, 12)))]
        measured = [p * 1.6 * float(rng.lognormal(0, 0.05)) for p in predicted]
        decodes = [object()] * count
        hinted.observe_decode_steps(decodes, context, measured, predicted, model)
        plain.observe_decode_steps(decodes, context, measured)
    assert hinted.online.refits > 0
    assert hinted.online.snapshot() == plain.online.snapshot()
    assert hinted._ratios == plain._ratios and hinted.budget_safety == plain.budget_safety


def test_the_outlier_gate_center_and_width_are_statistics_medians():
    """The gate's medians (taken from sorted copies) are ``statistics.median``'s, bit for bit."""
    import random

    from sglang_fair.policy.cost_model import _RecentGate

    rng = random.Random(3)
    gate = _RecentGate(64, math.log(10.0), 6.0)
    for sample in range(300):
        log_ratio = rng.gauss(0.0, 0.1) if sample % 17 else rng.uniform(-3, 3)
        gate.is_outlier((1.0,) * len(FEATURE_NAMES), 0.01, log_ratio)
        gate._update()
        _assert_gate_is_statistics_median(gate, 64)


def _assert_gate_is_statistics_median(gate, window: int) -> None:
    """The gate's center and width are those ``statistics.median`` gives over its last ``window``."""
    import statistics

    logs = gate.logs[: min(gate.count, window)]
    center = statistics.median(logs)
    assert gate.center == center
    if len(logs) >= gate.MIN_SAMPLES:
        spread = 1.4826 * statistics.median([abs(x - center) for x in logs])
        assert gate.width == max(gate.mads * spread, gate.min_log)


def test_a_plan_says_which_model_predicted_it_and_observe_reuses_only_that(model):
    """BatchBuilder.finish records the model behind ``predicted_s``; observe reuses the prediction
    only while that model is the online model's current one (the engine likewise for its own)."""
    from sglang_fair.policy import IterationView, RequestState, build_policy

    policy = build_policy("fairbatching", model)
    decodes = []
    for i in range(6):
        request = RequestState(str(i), 0.0, 300 + i, 1.0, 0.05, max_new_tokens=100)
        request.prefilled_tokens = request.fill_tokens
        request.first_token_s = 0.5
        request.generated_tokens = 3
        decodes.append(request)
    plan = policy.plan(IterationView(1.0, decodes, [RequestState("p", 0.9, 700, 1.0, 0.05, max_new_tokens=50)]))
    assert plan.predicted_by is policy.cost_model
    assert plan.predicted_s == policy.cost_model.predict_shape(plan.shape)
    stale = OnlineCostModel(model)
    stale.current = CostModel(*(model.coefficients() * 2), name="other")  # a refit came in between
    fresh = OnlineCostModel(model)
    fresh.current = stale.current
    stale.observe(plan.shape, 0.05, plan.predicted_s if plan.predicted_by is stale.current else None)
    fresh.observe(plan.shape, 0.05)
    assert stale.snapshot() == fresh.snapshot() and stale._gates[1].logs == fresh._gates[1].logs


def test_the_outlier_gate_skips_medians_only_where_its_values_are_unchanged():
    """The gate takes its medians again only when a sample differs from the one it replaces (or
    the ring is still filling): at every update point they are still ``statistics.median``'s."""
    import random

    from sglang_fair.policy.cost_model import _RecentGate

    rng = random.Random(8)
    gate = _RecentGate(64, math.log(10.0), 6.0)
    period = [rng.gauss(0.0, 0.1) for _ in range(64)]
    for sample in range(1000):
        # Mostly the value the ring holds in that slot (a model timing itself), now and then not.
        log_ratio = period[sample % 64] if rng.random() < 0.9 else rng.gauss(0.0, 0.2)
        period[sample % 64] = log_ratio
        gate.is_outlier((1.0,) * len(FEATURE_NAMES), 0.01, log_ratio)
        if gate.count % gate.UPDATE_EVERY == 0 or gate.count < gate.MIN_SAMPLES:
            _assert_gate_is_statistics_median(gate, 64)


def _random_decodes(rng) -> list:
    """Up to 40 running decodes with random prompts (1-4000 tokens) and outputs so far (1-500)."""
    from sglang_fair.policy import RequestState

    requests = []
    for i in range(rng.randint(0, 40)):
        request = RequestState(str(i), 0.0, rng.randint(1, 4000), 1.0, 0.05)
        request.prefilled_tokens = request.fill_tokens
        request.generated_tokens = rng.randint(1, 500)
        requests.append(request)
    return requests


def test_add_decodes_adds_what_add_decode_one_at_a_time_would(model):
    """The batched hot path and the one-request rule stop at the same request: time, KV, seats."""
    import random

    from sglang_fair.policy import BatchBuilder, IterationView

    rng = random.Random(4)
    for case in range(300):
        requests = _random_decodes(rng)
        view = IterationView(0.0, requests, [], free_kv_tokens=rng.choice([0, 5, 30, 10**6]),
                             max_batch_requests=rng.choice([0, 3, 25, 256]))
        budget_s = rng.choice([math.inf, 0.0, 0.005, 0.012, 0.03])
        batched, single = (BatchBuilder(view, model, time_budget_s=budget_s) for _ in range(2))
        added = batched.add_decodes(requests)
        for request in requests:
            if not single.add_decode(request):
                break
        assert added == len(single.plan.decodes) and batched.plan.decodes == single.plan.decodes
        assert (batched.kv_left, batched.seats_left, batched.plan.shape.sum_context) == (
            single.kv_left, single.seats_left, single.plan.shape.sum_context)


def test_add_decodes_given_the_sums_adds_what_the_pass_adds(model):
    """With the requests' context sums given, ``add_decodes`` skips its pass only where all of them
    certainly fit: the same requests and shape as without them, on budgets around the edge, with a
    prefill in the plan and on a model that prices the squared contexts (a negative per-row rate
    too)."""
    import random

    from sglang_fair.policy import BatchBuilder, IterationView, RequestState

    cpu_like = CostModel(0.01, 2e-5, 3e-7, -4e-5, 1e-8, 1e-9, 0.004, 1e-4, 2e-6, 3e-9, name="cpu-like")
    rng = random.Random(5)
    skipped = 0
    for case in range(600):
        cost_model = model if case % 2 else cpu_like
        requests = _random_decodes(rng)
        view = IterationView(0.0, requests, [], free_kv_tokens=rng.choice([5, 30, 10**6]),
                             max_batch_requests=rng.choice([3, 25, 256]))
        contexts = [r.context_tokens for r in requests]
        builders = [BatchBuilder(view, cost_model, time_budget_s=math.inf) for _ in range(2)]
        if rng.random() < 0.5:
            prompt = RequestState("p", 0.0, 300, 1.0, 0.05)
            for builder in builders:
                builder.add_prefill(prompt)
        # Around the exact cost of all of them: fits, fits barely, does not.
        rates = cost_model.decode_rates_s(builders[0].mixed)
        total_s = sum(rates[0] + (rates[1] + rates[2] * c) * c for c in contexts)
        factor = rng.choice([0.5, 1.0, 1.0 + 1e-12, 1.001, 2.0])
        for builder in builders:
            builder.time_budget_s = builder.predicted_s + total_s * factor
        plain, given = builders
        added = plain.add_decodes(requests)
        assert given.add_decodes(requests, sum_context=sum(contexts),
                                 sum_context_sq=sum(c * c for c in contexts)) == added
        skipped += added == len(requests)
        assert given.plan.decodes == plain.plan.decodes
        for name in ("new_tokens", "sum_context", "decode_context", "decode_context_sq", "num_seqs"):
            assert getattr(given.plan.shape, name) == getattr(plain.plan.shape, name)
        assert (given.kv_left, given.seats_left, given.tokens_left) == (plain.kv_left, plain.seats_left,
                                                                       plain.tokens_left)
        assert given.predicted_s == pytest.approx(plain.predicted_s, rel=1e-12)
    assert skipped > 100


def test_a_chunked_prompt_refused_its_chunk_leaves_no_room_for_another_prompt(model):
    """SGLang serves its chunked request before any other prompt: when the partly prefilled prompt
    gets no chunk (its prefix makes even a minimum chunk too dear), a fresh prompt must not start
    beside it, or two prompts would be left partly prefilled."""
    from policy_helpers import make_request
    from sglang_fair.policy import BatchBuilder, IterationView

    chunked = make_request("chunked", 0.0, 6000)
    chunked.prefilled_tokens = 5000
    fresh = make_request("fresh", 0.5, 400)
    view = IterationView(1.0, [], [chunked, fresh])
    room_s = model.fixed_s + model.prefill_cost_s(40, 0)  # ~40 fresh tokens, fewer after the prefix
    assert model.max_chunk_tokens(room_s - model.fixed_s, 5000) < 32 <= model.max_chunk_tokens(room_s - model.fixed_s, 0)
    builder = BatchBuilder(view, model, time_budget_s=room_s)
    builder.predicted_s = model.fixed_s
    assert builder.add_prefill(chunked, min_chunk=32) == 0
    assert builder.add_prefill(fresh, min_chunk=32) == 0 and not builder.plan.prefills


@pytest.mark.parametrize("sigma", [0.2, 0.4])
def test_online_refit_predicts_the_median_iteration_under_log_normal_noise(model, sigma):
    """The relative-error fit alone predicts exp(-1.5 sigma^2) of the median (13% low at 0.3):
    the refit takes the fit's shape and the newest samples' median level, within a quarter of
    that bias (the level comes from 256 samples: its standard error is ~0.08 sigma)."""
    rng = np.random.default_rng(7)
    online = OnlineCostModel(model, min_samples=32, refit_every=64)
    shapes = _mixed_shapes(rng, 3000)
    for shape in shapes:
        online.observe(shape, model.predict_shape(shape) * math.exp(rng.normal(0.0, sigma)))
    assert online.refits > 0
    logs = [math.log(model.predict_shape(s) / online.predict_shape(s)) for s in shapes[-500:]]
    assert abs(float(np.median(logs))) < 0.25 * 1.5 * sigma**2
    assert online.current.info["median_centred_by"] > 1.0  # the fit alone was below the median


def test_median_centring_keeps_the_fits_shape():
    from sglang_fair.policy.cost_model import median_centred

    truth = CostModel(fixed_s=1e-3, per_new_token_s=2e-5, per_context_token_s=1e-7, name="t")
    rng = np.random.default_rng(3)
    features, times = _samples(truth, 400, rng)
    centred = median_centred(truth, features, times * 1.3)
    assert centred.coefficients() == pytest.approx(truth.coefficients() * 1.3, rel=1e-12)
    assert median_centred(truth, features, times) is truth  # already centred: unchanged
