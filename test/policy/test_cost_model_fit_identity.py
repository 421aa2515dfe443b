"""The cost-model fit's lean arithmetic (``_fit_coefficients``, ``_median``) against the
straightforward form it replaced, bit for bit: the online refit runs it every few iterations and
the policy's decisions must not move by an ulp because the fit got cheaper."""

import math
from dataclasses import replace

import numpy as np
import pytest

from sglang_fair.policy import CostModel, fit_cost_model, fit_physical_cost_model
from sglang_fair.policy.cost_model import _COEFFICIENT_FIELDS, FEATURE_NAMES, _median, feature_row


def _reference_fit(features, times_s, *, terms=FEATURE_NAMES, name="fitted", prior=None, prior_weight=0.0,
                   trim_sigma=3.5):
    """``fit_cost_model`` as first written (2026-12-04)."""
    features = np.asarray(features, dtype=float)
    times_s = np.asarray(times_s, dtype=float)
    ok = np.isfinite(times_s) & (times_s > 0) & np.isfinite(features).all(axis=1)
    features, times_s = features[ok], times_s[ok]
    active = [FEATURE_NAMES.index(t) for t in terms]
    base = prior.coefficients() if prior is not None else np.zeros(len(FEATURE_NAMES))
    is_active = np.isin(range(len(FEATURE_NAMES)), active)

    def solve(rows):
        x = features[rows][:, active]
        y = times_s[rows] - features[rows] @ np.where(is_active, 0.0, base)
        weights = 1.0 / times_s[rows]
        xw, yw = x * weights[:, None], y * weights
        if prior is not None and prior_weight > 0:
            scale = np.sqrt((xw**2).mean(axis=0)) + 1e-30
            reg = np.diag(scale) * math.sqrt(prior_weight * len(y))
            xw = np.vstack([xw, reg])
            yw = np.concatenate([yw, reg @ base[active]])
        coef, *_ = np.linalg.lstsq(xw, yw, rcond=None)
        full = np.where(is_active, 0.0, base)
        full[active] = coef
        return full

    rows = np.arange(len(times_s))
    coef = solve(rows)
    if len(rows) > 2 * len(active):
        residual = (features @ coef - times_s) / times_s
        mad = np.median(np.abs(residual - np.median(residual))) * 1.4826
        if mad > 1e-9:
            keep = np.abs(residual - np.median(residual)) <= trim_sigma * mad
            if not keep.all() and np.linalg.matrix_rank(features[keep][:, active]) == len(active):
                coef = solve(np.nonzero(keep)[0])
    mape = float(np.mean(np.abs(features @ coef - times_s) / times_s))
    return CostModel(*map(float, coef), name=name, info={"mape": mape, "samples": int(len(times_s)),
                                                         "terms": list(terms)})


def _reference_physical(features, times_s, *, terms=FEATURE_NAMES, name="fitted", prior=None, prior_weight=0.0,
                        nonnegative=tuple(t for t in FEATURE_NAMES if t != "new_tokens")):
    """``fit_physical_cost_model`` as first written (2026-12-04)."""
    terms = list(terms)
    dropped = []
    while True:
        base = prior
        if dropped:
            base = replace(prior or CostModel(0.0, 0.0, 0.0),
                           **{_COEFFICIENT_FIELDS[FEATURE_NAMES.index(t)]: 0.0 for t in dropped})
        fitted = _reference_fit(features, times_s, terms=tuple(terms), name=name, prior=base,
                                prior_weight=prior_weight if prior is not None else 0.0)
        coefficients = fitted.coefficients()
        negative = [t for t in terms if t in nonnegative and coefficients[FEATURE_NAMES.index(t)] < 0]
        if not negative:
            break
        weight = np.abs(np.asarray(features, dtype=float)).mean(axis=0)
        worst = min(negative, key=lambda t: coefficients[FEATURE_NAMES.index(t)] * weight[FEATURE_NAMES.index(t)])
        terms.remove(worst)
        dropped.append(worst)
    fitted.info["dropped"] = dropped
    return fitted


def _window(rng, n, *, decode_share=0.8, noise=0.3, outliers=0, bad_rows=0):
    """Online-window-like samples: decode steps (new tokens = seqs, collinear) and mixed prefills."""
    rows = []
    for _ in range(n):
        seqs = int(rng.integers(1, 300))
        if rng.random() < decode_share:
            context = seqs * int(rng.integers(16, 2000))
            rows.append(feature_row(seqs, context, seqs, 0, False, decode_context=context, decode_context_sq=0))
        else:
            chunk, prefix = int(rng.integers(16, 2048)), int(rng.integers(0, 4096))
            rows.append(feature_row(chunk + seqs, chunk + prefix + seqs * 500, seqs + 1, chunk * chunk, True,
                                    chunk * prefix, decode_context=seqs * 500, decode_context_sq=seqs * 500**2))
    features = np.array(rows, dtype=float)
    true = np.array([2e-3, 3e-6, 1e-9, 2e-6, 6e-9, 1e-8, 1e-3, 5e-4, 2e-9, 1e-12])
    times = features @ true * np.exp(noise * rng.standard_normal(n))
    times[rng.choice(n, outliers, replace=False)] *= 20
    if bad_rows:
        times[rng.choice(n, bad_rows, replace=False)] = np.nan
    return features, times


def _same(a: CostModel, b: CostModel) -> bool:
    return a.coefficients().tobytes() == b.coefficients().tobytes() and a.info == b.info and a.name == b.name


@pytest.mark.parametrize("seed", range(12))
def test_physical_fit_is_bit_for_bit_the_reference(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.choice([40, 319, 1024]))
    features, times = _window(rng, n, decode_share=float(rng.choice([0.6, 0.95, 1.0])),
                              noise=float(rng.choice([0.02, 0.3, 1.0])), outliers=n // 20, bad_rows=seed % 3)
    prior = CostModel(2.2e-3, 2.6e-6, 1.1e-9, 0.0, 6.2e-9, 1.2e-8, 1.3e-3, 5e-4, 1.8e-9, name="p")
    seen = np.abs(np.nan_to_num(features)).max(axis=0) > 0
    terms = tuple(t for t in FEATURE_NAMES if seen[FEATURE_NAMES.index(t)])
    for prior_arg, weight in ((None, 0.0), (prior, 1.0 / n), (prior, 32.0 / n)):
        kwargs = dict(terms=terms, name="x+online", prior=prior_arg, prior_weight=weight)
        assert _same(fit_physical_cost_model(features, times, **kwargs), _reference_physical(features, times, **kwargs))
        assert _same(fit_cost_model(features, times, **kwargs), _reference_fit(features, times, **kwargs))


@pytest.mark.parametrize("n", [1, 2, 3, 64, 319, 1024])
def test_median_is_numpys(n):
    rng = np.random.default_rng(n)
    for values in (rng.standard_normal(n), np.round(rng.standard_normal(n), 1), np.zeros(n) * -1.0, -np.zeros(n),
                   np.where(rng.random(n) < 0.5, -0.0, 0.0),
                   np.abs(rng.standard_normal(n))):
        assert np.float64(_median(values)).tobytes() == np.float64(np.median(values)).tobytes()
    with_nan = rng.standard_normal(n)
    with_nan[0] = np.nan
    assert np.isnan(_median(with_nan))
