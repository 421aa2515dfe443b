"""Iteration-time cost model::

    T = a + b*new_tokens + c*sum_context + d*num_seqs + e*sum_chunk_sq + h*sum_chunk_prefix
          + f*prefill_iteration + g*mixed_seqs + m*mixed_context + q*mixed_context_sq

* ``new_tokens``: tokens computed this iteration (1 per decode, the chunk size per prefill).
* ``sum_context``: KV tokens the sequences attend to (a decode's context, a chunk's prefix+chunk).
* ``num_seqs``: sequences in the batch.
* ``sum_chunk_sq``: sum of squared prefill chunk sizes (the quadratic attention term of a chunk).
* ``sum_chunk_prefix``: sum over prefill chunks of chunk size x cached prefix: the query-key pairs
  a continuing chunk computes against the prompt before it.  Without it, cutting a prompt into
  small chunks would look cheaper than it is (the model would charge the prefix as if it were a
  decode's KV read, once per chunk instead of once per query token).
* ``prefill_iteration``: 1 when the batch holds any prefill chunk.  An engine runs such a batch on
  its extend path, which costs more than a pure decode step regardless of size: no CUDA graph on a
  GPU, the per-sequence attention loop of SGLang's CPU backend.
* ``mixed_seqs``: ``num_seqs`` of a batch with a prefill chunk (0 otherwise): the extra cost of each
  sequence, decode rows included, carried through that extend path.
* ``mixed_context``: the decode rows' summed context in a batch with a prefill chunk (0 otherwise;
  the chunk's own prefix and tokens do not count): on that path a decode row costs more per KV
  token than in a decode-only step (SGLang's CPU backend walks each row's whole KV per sequence).
* ``mixed_context_sq``: the sum over those decode rows of context squared (0 otherwise): the same
  rows' cost grows faster than linearly in their context (SGLang's CPU extend path: about 1.0 / 5.4
  / 10.6 ms a row at 96 / 256 / 384 tokens on the larger calibration model).

The last four are properties of the running engine, not of kernels: a kernel profile cannot see them
(``KERNEL_TERMS`` leaves them out) and the online refit learns them from measured iterations.

The model is fitted offline from a profile (numpy least squares) and refitted online from measured
iteration times, warm-started from the profile so a cold server never schedules blind.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import struct
from dataclasses import asdict, dataclass, field, fields
from itertools import chain
from importlib import resources

import numpy as np

from .. import strict_json
from .limits import UNLIMITED

__all__ = [
    "BatchShape",
    "CostModel",
    "CostModelError",
    "OnlineCostModel",
    "FEATURE_NAMES",
    "KERNEL_TERMS",
    "ONLINE_NONNEGATIVE_TERMS",
    "feature_row",
    "fit_cost_model",
    "fit_physical_cost_model",
    "median_centred",
    "load_cost_model",
    "preset_names",
]

FEATURE_NAMES = ("fixed", "new_tokens", "sum_context", "num_seqs", "sum_chunk_sq", "sum_chunk_prefix",
                 "prefill_iteration", "mixed_seqs", "mixed_context", "mixed_context_sq")
#: The terms a kernel profile (one forward, timed in isolation) can identify.
KERNEL_TERMS = FEATURE_NAMES[:6]


class CostModelError(ValueError):
    """A cost model name or file that cannot be used; the message is one line for the user."""


def feature_row(new_tokens: float, sum_context: float, num_seqs: float, sum_chunk_sq: float,
                has_prefill: bool, sum_chunk_prefix: float = 0.0, *, decode_context: float,
                decode_context_sq: float) -> tuple[float, ...]:
    """One row of ``FEATURE_NAMES`` values for a batch with these totals; ``decode_context`` is the
    part of ``sum_context`` its decode rows attend to and ``decode_context_sq`` the sum of their
    contexts squared (both required: a mixed row without them would silently price its decodes as a
    decode-only step's; both count only with ``has_prefill``)."""
    if not has_prefill:
        return (1.0, new_tokens, sum_context, num_seqs, sum_chunk_sq, sum_chunk_prefix, 0.0, 0, 0, 0)
    return (1.0, new_tokens, sum_context, num_seqs, sum_chunk_sq, sum_chunk_prefix,
            1.0, num_seqs, decode_context, decode_context_sq)


class BatchShape:
    """Running totals of a batch being formed; cheap to update, no allocation per request."""

    __slots__ = ("new_tokens", "sum_context", "decode_context", "decode_context_sq", "num_seqs", "sum_chunk_sq",
                 "sum_chunk_prefix", "num_prefills")

    def __init__(self) -> None:
        self.new_tokens = 0
        self.sum_context = 0
        #: The decode rows' share of ``sum_context`` (what ``mixed_context`` prices in a mixed batch).
        self.decode_context = 0
        #: The decode rows' contexts squared, summed (what ``mixed_context_sq`` prices in a mixed batch).
        self.decode_context_sq = 0
        self.num_seqs = 0
        self.sum_chunk_sq = 0
        self.sum_chunk_prefix = 0
        self.num_prefills = 0

    def add_decode(self, context_tokens: int) -> None:
        self.new_tokens += 1
        self.sum_context += context_tokens
        self.decode_context += context_tokens
        self.decode_context_sq += context_tokens * context_tokens
        self.num_seqs += 1

    def add_prefill(self, chunk_tokens: int, prefix_tokens: int) -> None:
        self.new_tokens += chunk_tokens
        self.sum_context += prefix_tokens + chunk_tokens
        self.num_seqs += 1
        self.sum_chunk_sq += chunk_tokens * chunk_tokens
        self.sum_chunk_prefix += chunk_tokens * prefix_tokens
        self.num_prefills += 1

    def features(self) -> tuple[float, ...]:
        """The values of ``FEATURE_NAMES``, in order."""
        return feature_row(self.new_tokens, self.sum_context, self.num_seqs, self.sum_chunk_sq,
                           self.num_prefills > 0, self.sum_chunk_prefix, decode_context=self.decode_context,
                           decode_context_sq=self.decode_context_sq)

    def __repr__(self) -> str:  # pragma: no cover
        return (
            f"BatchShape(new={self.new_tokens}, ctx={self.sum_context}, decode_ctx={self.decode_context}, "
            f"decode_ctx_sq={self.decode_context_sq}, seqs={self.num_seqs}, "
            f"chunk_sq={self.sum_chunk_sq}, chunk_prefix={self.sum_chunk_prefix}, prefills={self.num_prefills})"
        )


@dataclass
class CostModel:
    """Linear iteration-time model; all coefficients in seconds per unit."""

    fixed_s: float
    per_new_token_s: float
    per_context_token_s: float
    per_seq_s: float = 0.0
    per_chunk_sq_s: float = 0.0
    #: Per query-key pair of a continuing chunk against its cached prefix.
    per_chunk_prefix_s: float = 0.0
    #: Extra time of an iteration that holds a prefill chunk, per sequence of such an iteration,
    #: per context token of its decode rows and per squared context token of each decode row.
    per_prefill_iteration_s: float = 0.0
    per_mixed_seq_s: float = 0.0
    per_mixed_context_s: float = 0.0
    per_mixed_context_sq_s: float = 0.0
    name: str = "custom"
    #: Free-form provenance and fit quality (``mape``, ``samples``, per shape class errors...).
    info: dict = field(default_factory=dict)

    # --- prediction ---------------------------------------------------------------------------
    def coefficients(self) -> np.ndarray:
        return np.array(
            [self.fixed_s, self.per_new_token_s, self.per_context_token_s, self.per_seq_s,
             self.per_chunk_sq_s, self.per_chunk_prefix_s, self.per_prefill_iteration_s, self.per_mixed_seq_s,
             self.per_mixed_context_s, self.per_mixed_context_sq_s]
        )

    def predict(
        self, new_tokens: float, sum_context: float, num_seqs: float = 0.0, sum_chunk_sq: float = 0.0,
        num_prefills: int = 0, sum_chunk_prefix: float = 0.0, decode_context: float = 0.0,
        decode_context_sq: float = 0.0,
    ) -> float:
        """Seconds for a batch with these totals (``decode_context``: its decode rows' share of
        ``sum_context``, ``decode_context_sq``: the sum of their contexts squared; both matter only
        with ``num_prefills > 0``)."""
        time_s = (
            self.fixed_s
            + self.per_new_token_s * new_tokens
            + self.per_context_token_s * sum_context
            + self.per_seq_s * num_seqs
            + self.per_chunk_sq_s * sum_chunk_sq
            + self.per_chunk_prefix_s * sum_chunk_prefix
        )
        if num_prefills > 0:
            time_s += self.per_prefill_iteration_s + self.extend_rows_cost_s(num_seqs, decode_context,
                                                                              decode_context_sq)
        return time_s

    def predict_shape(self, shape: BatchShape) -> float:
        return self.predict(shape.new_tokens, shape.sum_context, shape.num_seqs, shape.sum_chunk_sq,
                            shape.num_prefills, shape.sum_chunk_prefix, shape.decode_context,
                            shape.decode_context_sq)

    def decode_cost_s(self, context_tokens: int) -> float:
        """Marginal time of adding one decode to a batch without prefill (add
        ``extend_rows_cost_s(1, context_tokens, context_tokens**2)`` when the batch has one)."""
        return self.per_new_token_s + self.per_context_token_s * context_tokens + self.per_seq_s

    def decode_rates_s(self, mixed: bool) -> tuple[float, float, float]:
        """``(seconds per decode row, per context token of a decode row, per squared context token
        of a decode row)`` in a batch with (``mixed``) or without a prefill chunk:
        :meth:`decode_cost_s` plus, when mixed, :meth:`extend_rows_cost_s`, as three rates for code
        that adds many decodes at once (a row of context ``c`` costs ``r + (t + q*c)*c``)."""
        per_row_s = self.per_new_token_s + self.per_seq_s
        per_context_s = self.per_context_token_s
        if not mixed:
            return per_row_s, per_context_s, 0.0
        return (per_row_s + self.per_mixed_seq_s, per_context_s + self.per_mixed_context_s,
                self.per_mixed_context_sq_s)

    def extend_rows_cost_s(self, num_rows: int, decode_context_tokens: int, decode_context_sq: int) -> float:
        """What ``num_rows`` rows on the extend path (a batch with a prefill chunk) cost beyond
        their cost in a batch without one, the decode rows among them attending to
        ``decode_context_tokens`` KV tokens in all and ``decode_context_sq`` summing their contexts
        squared (a prefill row's context does not count)."""
        return (self.per_mixed_seq_s * num_rows + self.per_mixed_context_s * decode_context_tokens
                + self.per_mixed_context_sq_s * decode_context_sq)

    def mixing_cost_s(self, num_decodes: int, decode_context_tokens: int, decode_context_sq: int) -> float:
        """What the first prefill chunk adds to a batch of ``num_decodes`` decodes attending to
        ``decode_context_tokens`` KV tokens in all (``decode_context_sq``: their contexts squared,
        summed), besides its own tokens: the extend path's fixed cost and the extra cost of the
        decode rows already in on that path."""
        return self.per_prefill_iteration_s + self.extend_rows_cost_s(num_decodes, decode_context_tokens,
                                                                      decode_context_sq)

    def split_saving_s(self, num_decodes: int, decode_context_tokens: int, decode_context_sq: int) -> float:
        """Time saved by running a prefill and ``num_decodes`` decodes (attending to
        ``decode_context_tokens`` KV tokens in all, ``decode_context_sq`` their contexts squared and
        summed) in two iterations of their own instead of one mixed batch: the decodes' rows on the
        extend path cost :meth:`extend_rows_cost_s`, the extra iteration costs ``fixed_s``.  Positive
        when apart is cheaper (SGLang's CPU backend past a few decodes); never on a model whose
        extend rows cost nothing extra (the GPU presets)."""
        return self.extend_rows_cost_s(num_decodes, decode_context_tokens, decode_context_sq) - self.fixed_s

    def prefill_cost_s(self, chunk_tokens: int, prefix_tokens: int) -> float:
        """Marginal time of adding a prefill chunk to a batch that already holds one (add
        :meth:`mixing_cost_s` for the first)."""
        return (
            (self.per_new_token_s + self.per_context_token_s + self.per_chunk_prefix_s * prefix_tokens)
            * chunk_tokens
            + self.per_context_token_s * prefix_tokens
            + self.per_seq_s
            + self.per_mixed_seq_s
            + self.per_chunk_sq_s * chunk_tokens * chunk_tokens
        )

    def efficient_chunk_tokens(self, prefix_tokens: int = 0, overhead_s: float | None = None) -> int | None:
        """Chunk size that minimises the time per prompt token of a chunk carrying ``overhead_s``
        of fixed cost (default: an iteration of its own, extend path included).

        A chunk of ``x`` tokens after ``p`` prefix tokens costs about
        ``a + (b + c + h p) x + c p + e x^2`` (``a`` the fixed cost it carries, ``e`` the quadratic
        attention term, ``h`` the prefix term); per token that is smallest at
        ``x = sqrt((a + c p) / e)``.  Larger chunks spend more time per token in attention than they
        save in fixed cost.  A chunk joining a batch whose iteration others pay for carries only its
        row's cost (``overhead_s = per_seq_s + per_mixed_seq_s``).  ``None`` when the model has no
        quadratic term (any chunk size is then as efficient).
        """
        if self.per_chunk_sq_s <= 0:
            return None
        if overhead_s is None:
            overhead_s = self.fixed_s + self.per_prefill_iteration_s
        fixed_s = max(overhead_s + self.per_context_token_s * prefix_tokens, 0.0)
        return max(1, int(math.sqrt(fixed_s / self.per_chunk_sq_s)))

    def max_chunk_tokens(self, room_s: float, prefix_tokens: int) -> int:
        """Largest prefill chunk whose marginal time fits in ``room_s`` (0 if none)."""
        if room_s <= 0:
            return 0
        linear = self.per_new_token_s + self.per_context_token_s + self.per_chunk_prefix_s * prefix_tokens
        const = self.per_context_token_s * prefix_tokens + self.per_seq_s + self.per_mixed_seq_s - room_s
        quad = self.per_chunk_sq_s
        if const >= 0:
            return 0
        if quad > 0:
            # quad*x^2 + linear*x + const <= 0  ->  positive root of the quadratic.
            root = (-linear + math.sqrt(linear * linear - 4.0 * quad * const)) / (2.0 * quad)
        elif linear > 0:
            root = -const / linear
        else:  # a degenerate fit: time does not grow with tokens, so tokens are not the limit
            return UNLIMITED
        return max(0, int(root))

    # --- persistence --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "cost model") -> "CostModel":
        if not isinstance(data, dict):
            raise CostModelError(f"{source}: expected a JSON object with cost-model coefficients")
        known = {f.name for f in fields(cls)}
        required = ("fixed_s", "per_new_token_s", "per_context_token_s")
        missing = [name for name in required if name not in data]
        if missing:
            raise CostModelError(f"{source}: missing field(s) {', '.join(missing)}")
        kwargs = {}
        for key, value in data.items():
            if key not in known:
                continue
            if key in ("name", "info"):
                kwargs[key] = value
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise CostModelError(f"{source}: field {key} must be a finite number, got {value!r}")
            kwargs[key] = float(value)
        model = cls(**kwargs)
        if model.per_new_token_s <= 0 and model.per_context_token_s <= 0:
            raise CostModelError(f"{source}: per-token coefficients must not all be <= 0")
        return model

    def save(self, path: str | os.PathLike) -> None:
        strict_json.write(path, self.to_dict(), indent=2, sort_keys=True)

    def describe(self) -> str:
        text = (
            f"{self.name}: T = {self.fixed_s * 1e3:.3f} ms + {self.per_new_token_s * 1e6:.3f} us*new"
            f" + {self.per_context_token_s * 1e9:.3f} ns*ctx + {self.per_seq_s * 1e6:.3f} us*seq"
            f" + {self.per_chunk_sq_s * 1e9:.3f} ns*chunk^2 + {self.per_chunk_prefix_s * 1e9:.3f} ns*chunk*prefix"
        )
        if any(self.coefficients()[FEATURE_NAMES.index("prefill_iteration"):]):
            text += (f" + {self.per_prefill_iteration_s * 1e3:.3f} ms*prefill_iteration"
                     f" + {self.per_mixed_seq_s * 1e6:.3f} us*mixed_seq")
        if self.per_mixed_context_s:
            text += f" + {self.per_mixed_context_s * 1e9:.3f} ns*mixed_ctx"
        if self.per_mixed_context_sq_s:
            text += f" + {self.per_mixed_context_sq_s * 1e9:.3f} ns*mixed_ctx^2"
        return text


def fit_cost_model(
    features: np.ndarray,
    times_s: np.ndarray,
    *,
    terms: tuple[str, ...] = FEATURE_NAMES,
    name: str = "fitted",
    prior: CostModel | None = None,
    prior_weight: float = 0.0,
    trim_sigma: float = 3.5,
) -> CostModel:
    """Least-squares fit of a cost model to ``features`` (one column per ``FEATURE_NAMES``).

    Terms not in ``terms`` are fixed at 0 (or at the prior's value when a prior is given).  With
    ``prior_weight > 0`` the fit is pulled toward ``prior`` (ridge on the difference), which keeps a
    small online sample from flipping signs.  Rows whose residual is further than ``trim_sigma``
    robust standard deviations out are dropped and the fit repeated once.  The fit minimises
    relative error (rows weighted by 1/time) so small decode steps count as much as big prefills.
    """
    features, times_s = _finite_samples(features, times_s)
    base = prior.coefficients() if prior is not None else np.zeros(len(FEATURE_NAMES))
    coef = _fit_coefficients(features, times_s, terms, base, prior_weight if prior is not None else 0.0, trim_sigma)
    return _fitted_model(coef, features, times_s, name, terms)


def _median(values: np.ndarray) -> np.float64:
    """``np.median`` of a 1-d float array, bit for bit (the same order statistics, the same mean of
    the middle two), without its generic-axis machinery: a refit takes over a dozen medians, and
    numpy's costs about three times the partition itself at the online window's size."""
    n = len(values)
    if n == 0:
        return np.median(values)  # (nan, with numpy's warning)
    k = n // 2
    part = np.partition(values, (k - 1, k, -1) if n % 2 == 0 else (k, -1))
    if part[-1] != part[-1]:  # a NaN sorts last; numpy's NaN handling then
        return np.median(values)
    # numpy's mean of the middle starts its sum from +0.0, so a -0.0 median comes out +0.0
    return (0.0 + part[k - 1] + part[k]) / 2 if n % 2 == 0 else 0.0 + part[k]


def _finite_samples(features, times_s) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``features``/``times_s`` with a finite, positive time and finite features."""
    features = np.asarray(features, dtype=float)
    times_s = np.asarray(times_s, dtype=float)
    if features.ndim != 2 or features.shape[1] != len(FEATURE_NAMES):
        raise ValueError(f"features must be n x {len(FEATURE_NAMES)}")
    ok = np.isfinite(times_s) & (times_s > 0) & np.isfinite(features).all(axis=1)
    if not ok.all():  # (a copy of every row costs as much as the test; the online window is clean)
        features, times_s = features[ok], times_s[ok]
    if len(times_s) == 0:
        raise ValueError("no finite, positive samples to fit")
    return features, times_s


def _fit_coefficients(features: np.ndarray, times_s: np.ndarray, terms, base: np.ndarray,
                      prior_weight: float, trim_sigma: float = 3.5) -> np.ndarray:
    """:func:`fit_cost_model`'s coefficients over clean samples (``_finite_samples``), the terms not
    in ``terms`` held at ``base`` (and the ridge pulling toward ``base`` when ``prior_weight > 0``).

    The online refit runs this several times per refit, every few iterations while the model is
    biased: the arithmetic is the straightforward one's, step for step, with the per-call numpy
    overheads (row copies of every sample, a repeated median, ``np.isin``) taken out."""
    unknown = set(terms) - set(FEATURE_NAMES)
    if unknown:
        raise ValueError(f"unknown cost-model terms: {sorted(unknown)}")
    active = [FEATURE_NAMES.index(t) for t in terms]
    is_active = np.zeros(len(FEATURE_NAMES), dtype=bool)
    is_active[active] = True
    held = np.where(is_active, 0.0, base)  # the inactive terms' fixed contribution per feature

    def solve(x_rows: np.ndarray, rows_features: np.ndarray, rows_times_s: np.ndarray) -> np.ndarray:
        y = rows_times_s - rows_features @ held
        weights = 1.0 / rows_times_s
        xw, yw = x_rows * weights[:, None], y * weights
        if prior_weight > 0:
            # Scale each column so the ridge treats terms of different magnitude alike.
            scale = np.sqrt((xw**2).mean(axis=0)) + 1e-30
            reg = np.diag(scale) * math.sqrt(prior_weight * len(y))
            xw = np.vstack([xw, reg])
            yw = np.concatenate([yw, reg @ base[active]])
        coef, *_ = np.linalg.lstsq(xw, yw, rcond=None)
        full = held.copy()
        full[active] = coef
        return full

    x = features[:, active]
    coef = solve(x, features, times_s)
    if len(times_s) > 2 * len(active):
        residual = (features @ coef - times_s) / times_s
        deviation = np.abs(residual - _median(residual))
        mad = _median(deviation) * 1.4826
        if mad > 1e-9:  # below that the residuals are rounding, not outliers
            keep = deviation <= trim_sigma * mad
            # Trim only if the rows kept still determine every term.
            if not keep.all():
                kept = features[keep]
                # (indexed from the kept rows, not from ``x``: the memory layout of a fancy-indexed
                # array depends on the indexing, and the column means below sum in layout order)
                kept_x = kept[:, active]
                if np.linalg.matrix_rank(kept_x) == len(active):
                    coef = solve(kept_x, kept, times_s[keep])
    return coef


def _fitted_model(coef: np.ndarray, features: np.ndarray, times_s: np.ndarray, name: str, terms) -> CostModel:
    predicted = features @ coef
    mape = float(np.mean(np.abs(predicted - times_s) / times_s))
    return CostModel(
        *map(float, coef),
        name=name,
        info={"mape": mape, "samples": int(len(times_s)), "terms": list(terms)},
    )


_EXTEND_TERMS = ("prefill_iteration", "mixed_seqs", "mixed_context", "mixed_context_sq")
#: CostModel's coefficient fields, in FEATURE_NAMES order.
_COEFFICIENT_FIELDS = ("fixed_s", "per_new_token_s", "per_context_token_s", "per_seq_s",
                       "per_chunk_sq_s", "per_chunk_prefix_s", "per_prefill_iteration_s", "per_mixed_seq_s",
                       "per_mixed_context_s", "per_mixed_context_sq_s")


def fit_physical_cost_model(
    features: np.ndarray,
    times_s: np.ndarray,
    *,
    terms: tuple[str, ...] = FEATURE_NAMES,
    name: str = "fitted",
    prior: CostModel | None = None,
    prior_weight: float = 0.0,
    nonnegative: tuple[str, ...] = tuple(t for t in FEATURE_NAMES if t != "new_tokens"),
) -> CostModel:
    """:func:`fit_cost_model`, then drop the ``nonnegative`` terms that came out negative and fit
    again.

    These terms are costs: a negative one is noise trading off against the others (or a term the
    samples barely see) and would make work look free to a scheduler.  Dropped terms are 0 (terms
    left out of ``terms`` keep the prior's value, as in :func:`fit_cost_model`); ``info["dropped"]``
    lists them.  ``new_tokens`` should never
    be among them: the model rests on it, and a caller must check ``per_new_token_s > 0``.
    """
    raw_features = np.asarray(features, dtype=float)
    features, times_s = _finite_samples(raw_features, times_s)
    terms = list(terms)
    dropped = []
    base = prior.coefficients() if prior is not None else np.zeros(len(FEATURE_NAMES))
    prior_weight = prior_weight if prior is not None else 0.0
    while True:
        coefficients = _fit_coefficients(features, times_s, terms, base, prior_weight)
        negative = [term for term in terms if term in nonnegative
                    and coefficients[FEATURE_NAMES.index(term)] < 0]
        if not negative:
            break
        # The most negative (relative to its scale in the data) first; refit after each drop.
        weight = np.abs(raw_features).mean(axis=0)
        worst = min(negative, key=lambda t: coefficients[FEATURE_NAMES.index(t)]
                    * weight[FEATURE_NAMES.index(t)])
        terms.remove(worst)
        dropped.append(worst)
        # A dropped term is 0, also as the ridge's target (terms out of ``terms`` keep ``base``).
        base = base.copy()
        base[FEATURE_NAMES.index(worst)] = 0.0
    fitted = _fitted_model(coefficients, features, times_s, name, terms)
    fitted.info["dropped"] = dropped
    return fitted


def _write_rows(ring: np.ndarray, pending: list, count: int) -> None:
    """Write ``pending``, the feature rows of samples ``count - len(pending)`` .. ``count - 1``, into
    ``ring`` (row ``sample % len(ring)``) and empty it.

    Rows are buffered and written in blocks because one numpy row assignment from a tuple costs
    about a microsecond, as much as the rest of ``observe``; ``struct`` packs the flattened rows
    into doubles a third cheaper again than ``np.fromiter`` over them, itself a third cheaper than
    assigning the list of tuples (the same doubles: each value converted as ``float()`` does)."""
    if not pending:
        return
    values = len(pending) * ring.shape[1]
    rows = np.frombuffer(struct.pack(f"{values}d", *chain.from_iterable(pending)), np.float64)
    rows = rows.reshape(len(pending), ring.shape[1])
    size = len(ring)
    start = (count - len(pending)) % size
    first = min(len(pending), size - start)
    ring[start:start + first] = rows[:first]
    if first < len(pending):
        ring[:len(pending) - first] = rows[first:]
    pending.clear()


class _RecentGate:
    """Outlier gate over the last ``size`` finite samples of one class of batches.

    Keeps each sample's features, time and ``log(measured/predicted)`` under the current model; a
    new sample is an outlier when its log ratio is further than ``max(mads * robust sd,
    min_log)`` from the ring's median.  Every finite sample enters the ring, accepted or not, so a
    real change of regime moves the median and stops being rejected.
    """

    __slots__ = ("_features", "_rows", "_time_ring", "size", "logs", "count", "center", "width", "min_log", "mads",
                 "bias_log", "biased", "_stale")

    #: Fewer samples than this call nothing an outlier.
    MIN_SAMPLES = 16
    UPDATE_EVERY = 8

    def __init__(self, size: int, min_log: float, mads: float, bias_log: float = math.inf) -> None:
        self._features = np.zeros((size, len(FEATURE_NAMES)))
        # The rows as given: they are read only after a refit, so they are converted then (a numpy
        # row assignment per sample would cost as much as the rest of observe).
        self._rows: list[tuple] = [(0.0,) * len(FEATURE_NAMES)] * size
        # Times in a list (a list store costs a fraction of an array("d") one, which parses its
        # value, or of a numpy one); ``times`` reads them as a numpy array.
        self._time_ring = [1.0] * size
        self.size = size
        self.logs = [0.0] * size  # a list: _update reads it as one every few samples
        self.count = 0
        self.center = 0.0
        self.width = math.inf
        self.min_log = min_log
        self.mads = mads
        #: Whether the median is beyond ``bias_log``: kept with the median, which moves every few
        #: samples, where the online model asks on most observations (OnlineCostModel._biased).
        self.bias_log = bias_log
        self.biased = False
        #: Whether the ring's values changed since the medians were taken (a sample equal to the
        #: one it replaces leaves them as they are: an engine timed by the model itself).
        self._stale = False

    def is_outlier(self, features, measured_s: float, log_ratio: float) -> bool:
        outlier = abs(log_ratio - self.center) > self.width  # judged before it moves the ring
        slot = self.count % self.size
        self._rows[slot] = features
        self._time_ring[slot] = measured_s
        if self.count < self.size or self.logs[slot] != log_ratio:
            self._stale = True
        self.logs[slot] = log_ratio
        self.count += 1
        # The median moves slowly: recomputing it every few samples keeps observe() cheap (it runs
        # once per scheduler iteration).
        if (self.count % self.UPDATE_EVERY == 0 or self.count < self.MIN_SAMPLES) and self._stale:
            self._update()
        return outlier

    @property
    def times(self) -> np.ndarray:
        """The ring's times (``sample % size``), as doubles."""
        return np.array(self._time_ring, dtype=np.float64)

    @property
    def features(self) -> np.ndarray:
        """The ring's feature rows (row ``sample % size``)."""
        self._features[:] = self._rows
        return self._features

    def rejudge(self, coefficients: np.ndarray) -> None:
        """The model changed: recompute the ring's log ratios under ``coefficients``."""
        n = min(self.count, self.size)
        if n == 0:
            return
        predicted = self.features[:n] @ coefficients
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log(self.times[:n] / predicted)
        self.logs[:n] = np.where(np.isfinite(logs), logs, 0.0).tolist()
        self._update()

    def _update(self) -> None:
        # Medians of <= gate_window floats in plain Python: several times cheaper than numpy's at
        # this size, and it runs every few iterations.  The deviations are taken in sorted order:
        # a falling run then a rising one, which sorted() merges in one pass.
        self._stale = False
        ordered = sorted(self.logs if self.count >= self.size else self.logs[: self.count])
        center = self.center = _median_of_sorted(ordered)
        self.biased = abs(center) > self.bias_log
        if len(ordered) < self.MIN_SAMPLES:
            self.width = math.inf
            return
        # |x - center| without a call per value: center - x below the center, x - center from it
        # on (the same doubles: a difference only changes sign when its operands swap).
        middle = bisect.bisect_left(ordered, center)
        deviations = [center - x for x in ordered[:middle]]
        deviations += [x - center for x in ordered[middle:]]
        spread = 1.4826 * _median_of_sorted(sorted(deviations))
        self.width = max(self.mads * spread, self.min_log)


def _median_of_sorted(values: list[float]) -> float:
    """``statistics.median`` of values already in order (its very expression: the middle one, or
    the mean of the two middle ones)."""
    n = len(values)
    if n % 2 == 1:
        return values[n // 2]
    i = n // 2
    return (values[i - 1] + values[i]) / 2


#: A model within 2% (in log) of nine in ten recent samples is settled: no refit until it is not.
SETTLED_LOG_ERROR = math.log(1.02)


#: How many of the newest samples set the refitted model's level (see ``median_centred``).
RECENT_LEVEL_SAMPLES = 256


def median_centred(model: CostModel, features: np.ndarray, times: np.ndarray) -> CostModel:
    """``model`` scaled so that it predicts the median of ``times`` (the median of
    ``log(measured/predicted)`` over the samples is 0).

    The fit minimises squared *relative* error, which under noise predicts low: with log-normal
    noise of spread sigma its optimum is the median times ``exp(-1.5 sigma^2)`` (6% low at sigma
    0.2, 13% at 0.3; a loaded CPU server's iterations have sigma 0.3 or more), and every such
    iteration overruns a budget planned on it.  The shape of the fit is kept; only its level moves.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(times / (features @ model.coefficients()))
    logs = logs[np.isfinite(logs)]
    if not len(logs):
        return model
    level = float(_median(logs))
    if level == 0.0:
        return model
    return CostModel(*(model.coefficients() * math.exp(level)), name=model.name,
                     info={**model.info, "median_centred_by": math.exp(level)})


def _within_for_nine_in_ten(values: np.ndarray, reference: np.ndarray, log_error: float) -> bool:
    """Whether nine in ten of ``values`` are within ``log_error`` (in log) of ``reference``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        error = np.abs(np.log(values / reference))
    if not np.all(np.isfinite(error)):
        return False
    k = int(0.9 * (len(error) - 1))
    return float(np.partition(error, k)[k]) <= log_error


#: The terms the online refit keeps >= 0: the extend-path terms, the fixed, context, chunk^2 and
#: chunk x prefix costs (a window with few prefills, or noise, would make mixing, context or a
#: continuing chunk look free: a CPU server once predicted one at -18 ms); the per-sequence term
#: may go negative, as GPU fits of decode batches often have it.
ONLINE_NONNEGATIVE_TERMS = ("fixed", "sum_context", "sum_chunk_sq", "sum_chunk_prefix", *_EXTEND_TERMS)


class OnlineCostModel:
    """A cost model that keeps refitting itself from measured iteration times.

    Starts from ``prior`` (a preset, a profile or the start-up calibration) and, once
    ``min_samples`` good measurements are in, refits over a ring buffer of the last ``window``
    accepted samples: every ``refit_interval`` observations, or every ``fast_refit_every`` while the
    current model is biased against what is measured (the median of ``log(measured/predicted)`` over
    recent samples is beyond ``log(bias_factor)``), so a wrong prior is left behind quickly.
    ``refit_interval`` starts at ``refit_every`` and doubles, up to ``max_refit_every``, after each
    refit that learned nothing (the recent samples were not biased, and the model was settled or the
    new fit moves nine in ten of the window's predictions by under 2%); any other refit resets it.
    The bias trigger backs off the same way (``fast_interval``, from ``fast_refit_every``) while its
    refits change nothing (the window as a whole is settled, or its fit is unusable: in decode-only
    batches ``new_tokens`` equals ``num_seqs`` and the fit may make tokens free), and is back to
    ``fast_refit_every`` as soon as a refit is taken.

    What is rejected (counted in ``rejected``):

    * garbage: a non-number, NaN/inf, a time <= 0 or above ``max_iteration_s``, an empty batch;
    * outliers *among the recent measurements*: a sample whose ``log(measured/predicted)`` is
      further than ``max(outlier_mads`` robust standard deviations, ``log(outlier_factor))`` from
      the median of the last ``gate_window`` samples' of its class (decode-only, or with a prefill
      chunk; all finite samples, accepted or not, so a real change of regime moves the median and
      is let in after about ``gate_window/2`` iterations of that class).
      The gate is relative to the samples themselves, not to the prior: a prior 100x off is just a
      biased model, and its measurements are accepted.

    The prior pulls the fit toward itself as ``prior_samples`` measurements would (a ridge whose
    weight does not grow with the window, so its share fades as evidence accumulates).  It is first
    rescaled to the window's level (times the median of ``measured/predicted``: a prior right in
    shape but 100x off in scale is then right), and its weight is scaled down by how much worse the
    rescaled prior explains the window than the samples' own fit does (``(tolerance / p90 |log
    error|)^2``, capped at 1, the tolerance being the own fit's p90 error or ``log(bias_factor)``,
    whichever is larger): a discredited prior keeps only a tie-breaking weight of
    ``min_prior_samples`` for directions the samples cannot resolve.  Terms the window has no sample of (no prefill seen yet: the
    extend-path terms) keep the rescaled prior's value.

    When two refits running over the whole window still leave the recent samples of a class more
    than ``regime_factor`` off (the engine itself changed), the window is replaced by the gate
    rings' samples (the last ``gate_window`` of each class, the ones the gate rejected included)
    and fitted again (counted in ``regime_changes``).
    """

    def __init__(
        self,
        prior: CostModel,
        *,
        window: int = 1024,
        min_samples: int = 32,
        refit_every: int = 64,
        max_refit_every: int = 512,
        fast_refit_every: int = 16,
        bias_factor: float = 1.25,
        regime_factor: float = 2.0,
        prior_samples: float = 32.0,
        min_prior_samples: float = 1.0,
        gate_window: int = 64,
        outlier_factor: float = 10.0,
        outlier_mads: float = 6.0,
        max_iteration_s: float = 600.0,
        terms: tuple[str, ...] = FEATURE_NAMES,
    ) -> None:
        self.prior = prior
        self.current = prior
        self.window = window
        self.min_samples = min_samples
        self.refit_every = refit_every
        self.max_refit_every = max(max_refit_every, refit_every)
        # Observations between two refits: doubles while refits learn nothing new (up to
        # max_refit_every), back to refit_every as soon as one does.
        self.refit_interval = refit_every
        self.fast_refit_every = fast_refit_every
        # Observations between two bias-triggered refits: doubles while they change nothing.
        self.fast_interval = fast_refit_every
        self.bias_log = math.log(bias_factor)
        self.regime_log = math.log(regime_factor)
        self.prior_samples = prior_samples
        self.min_prior_samples = min_prior_samples
        self.max_iteration_s = max_iteration_s
        self.terms = terms
        self._window_features = np.zeros((window, len(FEATURE_NAMES)))
        self._pending: list[tuple] = []  # feature rows not yet in the window (see _write_rows)
        # Times in a list, stored into per sample (an array("d") store parses its value, a numpy
        # one costs more still); _times reads them as a numpy array (at refits).
        self._time_ring = [0.0] * window
        self._count = 0  # total accepted samples (ring index = count % window)
        self._since_refit = 0
        self._gates = tuple(_RecentGate(gate_window, math.log(outlier_factor), outlier_mads, self.bias_log)
                            for _ in range(2))  # [decode-only, with a prefill chunk]
        self.observed = 0
        self.rejected = 0
        self.rejected_outliers = 0
        self.refits = 0
        self.regime_changes = 0
        self._biased_last_refit = False
        self.prior_weight_used: float | None = None
        self.prior_scale_used: float | None = None

    @property
    def samples(self) -> int:
        return min(self._count, self.window)

    @property
    def _times(self) -> np.ndarray:
        """The window's times (``sample % window``), as doubles."""
        return np.array(self._time_ring, dtype=np.float64)

    def predict_shape(self, shape: BatchShape) -> float:
        return self.current.predict_shape(shape)

    def observe(self, shape: BatchShape, measured_s: float, predicted_s: float | None = None) -> bool:
        """Record one measured iteration; returns whether it was accepted into the fit window.
        ``predicted_s``: the current model's ``predict_shape(shape)``, when the caller has it."""
        if shape.num_seqs == 0:
            self.observed += 1
            self.rejected += 1
            return False
        if predicted_s is None:
            predicted_s = self.current.predict_shape(shape)
        return self._observe(shape.features(), shape.num_prefills > 0, predicted_s, measured_s)

    def observe_row(self, features, measured_s: float, predicted_s: float | None = None) -> bool:
        """:meth:`observe` of an iteration given by its ``FEATURE_NAMES`` values (as
        ``--fair-iteration-log`` writes them) instead of a shape."""
        features = tuple(map(float, features))
        if len(features) != len(FEATURE_NAMES):
            raise ValueError(f"expected {len(FEATURE_NAMES)} feature values, got {len(features)}")
        if features[FEATURE_NAMES.index("num_seqs")] <= 0:
            self.observed += 1
            self.rejected += 1
            return False
        if predicted_s is None:
            predicted_s = float(np.dot(features, self.current.coefficients()))
        return self._observe(features, features[FEATURE_NAMES.index("prefill_iteration")] > 0, predicted_s, measured_s)

    def observe_decode_steps(self, num_seqs: int, sum_context: int, measured_s,
                             predicted_s=None, predicted_by: CostModel | None = None) -> list[float]:
        """:meth:`observe` of decode-only batches of ``num_seqs`` sequences, one after another, the
        k-th attending to ``sum_context + k * num_seqs`` KV tokens and measured at ``measured_s[k]``
        (a simulator's run of decode steps, without a shape object per step).  Returns what the model
        predicted for each step: the model as it stood when that step was observed, before any
        refit the step caused (what a plan made just before it would have predicted).
        ``predicted_s``: each step's prediction by ``predicted_by``, when the caller has them (a
        simulator's engine timing the steps with the model itself): taken while that model is
        still the current one, instead of predicting the same shapes again."""
        predicted = []
        for k, step_s in enumerate(measured_s):
            context = sum_context + k * num_seqs
            if self.current is predicted_by:
                step_predicted_s = predicted_s[k]
            else:
                # The arguments predict_shape passes for that shape (BatchShape.add_decode's totals).
                # (decode-only: the squared decode context counts only with a prefill, so none passed)
                step_predicted_s = self.current.predict(num_seqs, context, num_seqs, 0, 0, 0, context)
            predicted.append(step_predicted_s)
            if num_seqs:
                # (a decode-only row: its mixed_context_sq is 0 whatever the rows' squares)
                self._observe(feature_row(num_seqs, context, num_seqs, 0, False, 0, decode_context=context,
                                          decode_context_sq=0),
                              False, step_predicted_s, step_s)
            else:
                self.observed += 1
                self.rejected += 1
        return predicted

    def _observe(self, features: tuple, extend: bool, predicted: float, measured_s: float) -> bool:
        """:meth:`observe` of a non-empty batch with these ``features`` (with a prefill chunk when
        ``extend``) that the current model predicts at ``predicted`` seconds."""
        self.observed += 1
        if (
            # (a float nearly always: one type test before the two isinstance calls)
            type(measured_s) is not float and (isinstance(measured_s, bool) or not isinstance(measured_s, (int, float)))
            or not 0.0 < measured_s <= self.max_iteration_s  # False for NaN too
        ):
            self.rejected += 1
            return False
        # Decode-only and extend-path batches are gated apart: a model that is wrong about one
        # class only must not make that whole class look like outliers of the other.
        gate = self._gates[extend]
        if predicted > 0 and gate.is_outlier(features, measured_s, math.log(measured_s / predicted)):
            self.rejected += 1
            self.rejected_outliers += 1
            return False
        pending = self._pending
        pending.append(features)
        self._time_ring[self._count % self.window] = measured_s
        self._count += 1
        self._since_refit += 1
        if len(pending) >= self.window:
            _write_rows(self._window_features, pending, self._count)
        if self._count >= self.min_samples and (
            self._since_refit >= self.refit_interval
            or (self._since_refit >= self.fast_interval and self._biased())
        ):
            self.refit()
        return True

    def _biased(self) -> bool:
        """Whether the recent samples of a class say the current model is off by ``bias_factor``."""
        decode, extend = self._gates  # two names, no generator: it runs on most observations
        return decode.biased or extend.biased

    @property
    def _features(self) -> np.ndarray:
        """The window's feature rows (row ``sample % window``)."""
        _write_rows(self._window_features, self._pending, self._count)
        return self._window_features

    def _anchored_prior(self, n: int) -> tuple[CostModel, float, float]:
        """The prior rescaled to the window's level, how far off it still is (the 90th percentile of
        ``|log(measured/predicted)|``; inf if it cannot be said), and the scale factor.

        A prior right in shape but off in scale (another machine, SGLang's host overhead missing
        from a kernel profile) is rescaled by the median of ``measured/predicted``; what it still
        gets wrong after that (its shape error) decides how much it is trusted.  The 90th
        percentile: a prior wrong about one class of batches (a fifth of them, say) must lose its
        weight even if it gets the median batch right.
        """
        predicted = self._features[:n] @ self.prior.coefficients()
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log(self._times[:n] / predicted)
        logs = logs[np.isfinite(logs)]
        if len(logs) < n // 2:  # the prior predicts <= 0 for most samples: nothing to anchor
            return self.prior, math.inf, 1.0
        level = float(_median(logs))
        shape_error = float(np.quantile(np.abs(logs - level), 0.9))
        anchored = self.prior if level == 0 else CostModel(
            *(self.prior.coefficients() * math.exp(level)), name=self.prior.name, info={})
        return anchored, shape_error, math.exp(level)

    def _fit(self, features, times, terms, prior: CostModel, prior_samples: float) -> CostModel:
        return fit_physical_cost_model(
            features, times, terms=terms, name=f"{self.prior.name}+online", prior=prior,
            prior_weight=prior_samples / len(times), nonnegative=ONLINE_NONNEGATIVE_TERMS,
        )

    def refit(self, *, _after_forgetting: bool = False) -> CostModel:
        n = self.samples
        if n < self.min_samples:
            return self.current
        features, times = self._features[:n], self._times[:n]
        # Recent samples off the model: whatever this refit does, the engine is not steady.
        was_biased = self._biased()
        if self._settled(features, times):
            self._since_refit = 0
            self._back_off(not was_biased, taken=False, biased=was_biased)
            return self.current
        # A term with no sample in the window (no prefill seen) cannot be fitted: keep the prior's.
        seen = np.abs(features).max(axis=0) > 0
        terms = tuple(term for term in self.terms if seen[FEATURE_NAMES.index(term)])
        prior, prior_error, prior_scale = self._anchored_prior(n)
        try:
            # What the samples say on their own (the prior only breaks ties) ...
            fitted = self._fit(features, times, terms, prior, self.min_prior_samples)
            prior_samples = self.min_prior_samples
            # ... and how noisy they are around it: a prior that explains them about as well as
            # the fit does (or within bias_factor) keeps its full weight; a worse one loses it.
            with np.errstate(divide="ignore", invalid="ignore"):
                residual = np.abs(np.log(times / (features @ fitted.coefficients())))
            residual = residual[np.isfinite(residual)]
            tolerance = max(self.bias_log, float(np.quantile(residual, 0.9)) if len(residual) else 0.0)
            credibility = 1.0 if prior_error <= tolerance else (tolerance / prior_error) ** 2
            if self.prior_samples * credibility > self.min_prior_samples:
                prior_samples = self.prior_samples * credibility
                fitted = self._fit(features, times, terms, prior, prior_samples)
        except (ValueError, np.linalg.LinAlgError):
            self._since_refit = 0
            self._back_off(True, taken=False, biased=was_biased)
            return self.current
        self._since_refit = 0
        recent = (self._count - 1 - np.arange(min(n, RECENT_LEVEL_SAMPLES))) % self.window
        fitted = median_centred(fitted, features[recent], times[recent])
        # A fit that makes extra tokens free would let batches grow without bound.
        if fitted.per_new_token_s <= 0:  # (and nothing learned: the same window gives the same fit)
            self._back_off(True, taken=False, biased=was_biased)
        else:
            self._back_off(not was_biased and _within_for_nine_in_ten(
                features @ fitted.coefficients(), features @ self.current.coefficients(), SETTLED_LOG_ERROR),
                taken=True, biased=was_biased)
            self.current = fitted
            self.refits += 1
            self.prior_weight_used = prior_samples
            self.prior_scale_used = prior_scale
            coefficients = fitted.coefficients()
            for gate in self._gates:
                gate.rejudge(coefficients)
            # Still far off the recent samples after fitting the whole window, two refits running:
            # the engine changed (a neighbour took the CPU, a clock was throttled) and the window
            # is mostly the old regime.  Keep only the recent samples and fit those.
            biased = any(g.count >= g.MIN_SAMPLES and abs(g.center) > self.regime_log for g in self._gates)
            if biased and self._biased_last_refit and not _after_forgetting:
                self._keep_recent()
                self.regime_changes += 1
                self._biased_last_refit = False
                return self.refit(_after_forgetting=True)
            self._biased_last_refit = biased
        return self.current

    def _back_off(self, learned_nothing: bool, *, taken: bool, biased: bool) -> None:
        """Refits cost milliseconds of scheduler CPU each: while they keep confirming the model,
        space them out; the bias trigger still catches a change at once.  While refits made under
        a bias leave the model as it was (``taken`` false), space those out too: repeating them
        every ``fast_refit_every`` observations changes nothing but the CPU spent."""
        if learned_nothing:
            self.refit_interval = min(2 * self.refit_interval, self.max_refit_every)
        else:
            self.refit_interval = self.refit_every
        if biased and not taken:
            self.fast_interval = min(2 * self.fast_interval, self.max_refit_every)
        else:
            self.fast_interval = self.fast_refit_every

    def _settled(self, features: np.ndarray, times: np.ndarray) -> bool:
        """Whether the current model already predicts nine in ten of the window's samples within
        ``SETTLED_ERROR``: a refit would then learn nothing (it costs milliseconds per call, a
        simulator's whole run when the engine's times are the model's own)."""
        return _within_for_nine_in_ten(times, features @ self.current.coefficients(), SETTLED_LOG_ERROR)

    def _keep_recent(self) -> None:
        """The window becomes the gate rings' samples: every recent finite measurement, those the
        gate rejected included (after a change of regime the first of them looked like outliers)."""
        features = [g.features[: min(g.count, g.size)] for g in self._gates]
        times = [g.times[: min(g.count, g.size)] for g in self._gates]
        features, times = np.concatenate(features), np.concatenate(times)
        self._features[: len(times)] = features  # (empties the pending rows first)
        self._time_ring[: len(times)] = times.tolist()
        self._count = len(times)

    def recent_mape(self) -> float | None:
        n = self.samples
        if n == 0:
            return None
        predicted = self._features[:n] @ self.current.coefficients()
        return float(np.mean(np.abs(predicted - self._times[:n]) / self._times[:n]))

    def snapshot(self) -> dict:
        return {
            "model": self.current.to_dict(),
            "prior": self.prior.name,
            "samples": self.samples,
            "observed": self.observed,
            "rejected": self.rejected,
            "rejected_outliers": self.rejected_outliers,
            "refits": self.refits,
            "regime_changes": self.regime_changes,
            "recent_mape": self.recent_mape(),
            "prior_samples_used": self.prior_weight_used,
            "prior_scale_used": self.prior_scale_used,
        }


# --- presets ------------------------------------------------------------------------------------
def _preset_dir():
    return resources.files("sglang_fair.policy") / "presets"


def preset_names() -> list[str]:
    return sorted(
        entry.name[: -len(".json")]
        for entry in _preset_dir().iterdir()
        if entry.name.endswith(".json")
    )


def load_cost_model(name_or_path: str) -> CostModel:
    """Load a shipped preset by name or a JSON file by path; raise ``CostModelError`` otherwise."""
    if not name_or_path:
        raise CostModelError("--cost-model: empty name")
    candidate = _preset_dir() / f"{name_or_path}.json"
    if candidate.is_file():
        text, source = candidate.read_text(), f"preset {name_or_path}"
    elif os.path.isfile(name_or_path):
        source = name_or_path
        with open(name_or_path) as handle:
            text = handle.read()
    else:
        raise CostModelError(
            f"--cost-model: unknown preset or missing file {name_or_path!r}"
            f" (presets: {', '.join(preset_names())})"
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CostModelError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    model = CostModel.from_dict(data, source=source)
    if model.name == "custom":
        model.name = name_or_path
    return model
