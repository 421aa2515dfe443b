"""The start-up calibration's plain parts: which batch shapes to time, how to reduce and fit the
timings, and the on-disk cache (numpy only; the runtime drives SGLang in
:mod:`sglang_fair.runtime.calibration`).

A calibration times real iterations of the served model, in three classes:

* ``decode``: ``decodes`` running requests of about ``context`` tokens each, nothing else;
* ``mixed``: the same decodes plus one prefill chunk of ``chunk`` new tokens (no prefix);
* ``prefill``: one chunk of ``chunk`` new tokens after ``prefix`` tokens already in the KV cache
  (the same prompt's earlier chunks, as a chunked prefill runs), no decodes.

Each shape is timed ``repeats`` times (after one untimed warm-up visit); its time is the fastest
repeat: other processes on the machine (and the host's own hiccups) only ever add time to an
iteration, so the fastest is the best estimate of what the shape itself costs; the spread of the
repeats is kept beside it.
Some shapes are held out of the fit and only predicted, which gives the honest error
(``holdout_mape``).  The fit is :func:`fit_physical_cost_model` over every term the grid
identifies, the extend-path ones (``prefill_iteration``, ``mixed_seqs``, ``mixed_context``,
``mixed_context_sq``) included: they are properties of the running engine, which only timing the
engine itself can measure (``mixed_context`` and ``mixed_context_sq`` apart from ``mixed_seqs``
and each other because the mixed shapes come at several decode contexts).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cost_model import FEATURE_NAMES, CostModel, CostModelError, fit_physical_cost_model

__all__ = [
    "CALIBRATION_VERSION",
    "CalibrationError",
    "CalibrationFit",
    "CalibrationShape",
    "GridLimits",
    "cache_key",
    "calibration_grid",
    "fit_calibration",
    "group_output_tokens",
    "load_cached",
    "save_cached",
]

#: Bump when what is timed, or how it is fitted, changes: cached calibrations then stop matching.
#: 2: the ninth term, ``mixed_context`` (a version-1 model would load with it at 0).
#: 3: the tenth term, ``mixed_context_sq`` (a version-2 model would load with it at 0).
CALIBRATION_VERSION = 3

#: The extend rows' context terms: a fit that gives them the whole per-token cost is redone without.
_EXTEND_CONTEXT_TERMS = ("mixed_context", "mixed_context_sq")


class CalibrationError(RuntimeError):
    """Timings that give no usable cost model (the message is one line for the log)."""


@dataclass(frozen=True)
class CalibrationShape:
    kind: str  # "decode", "mixed" or "prefill"
    decodes: int = 0
    context: int = 0
    chunk: int = 0
    prefix: int = 0
    holdout: bool = False

    @property
    def label(self) -> str:
        if self.kind == "decode":
            return f"decode {self.decodes}x{self.context}"
        if self.kind == "mixed":
            return f"mixed {self.decodes}x{self.context} + chunk {self.chunk}"
        return f"prefill chunk {self.chunk} after {self.prefix}"


@dataclass(frozen=True)
class GridLimits:
    """What the served engine allows; shapes beyond it are shrunk or dropped."""

    kv_tokens: int  # the KV pool
    max_running_requests: int
    max_chunk_tokens: int  # SGLang's chunked prefill size (and max prefill tokens)
    context_tokens: int  # the model's context length


#: Per device class: decode groups (decodes, context), the chunks mixed into each group, prefill
#: chunks and their prefixes, and which shapes are held out.  CPU sizes keep the whole calibration
#: within seconds on a 2-core machine; GPU sizes span what a 7B-class server runs.
_GRIDS = {
    "cpu": {
        "decode_groups": [(1, 64), (8, 384), (24, 96), (32, 256), (32, 128)],
        "mixed_chunks": [32, 256],
        "prefill_chunks": [32, 128, 512, 1024],
        "prefixes": [0, 384],
        "holdout": {("decode", 24, 96), ("mixed", 8, 384, 32), ("mixed", 32, 256, 256),
                    ("prefill", 128, 384), ("prefill", 512, 0)},
    },
    "gpu": {
        "decode_groups": [(1, 256), (16, 2048), (64, 512), (128, 1024)],
        "mixed_chunks": [64, 1024],
        "prefill_chunks": [128, 512, 2048, 4096],
        "prefixes": [0, 2048],
        "holdout": {("decode", 64, 512), ("mixed", 16, 2048, 64), ("mixed", 128, 1024, 1024),
                    ("prefill", 512, 2048), ("prefill", 2048, 0)},
    },
}

#: Share of the KV pool one decode group may take (the rest is headroom for SGLang's reservations).
_GROUP_KV_SHARE = 0.5


def group_output_tokens(shapes_in_group: int, visits: int) -> int:
    """Tokens each decode of a group generates: one at its prefill, then one per step of every
    visit (a decode step and each mixed chunk), so that all of them finish at the group's last step."""
    return 1 + visits * shapes_in_group


def calibration_grid(device_class: str, limits: GridLimits, *, visits: int) -> list[CalibrationShape]:
    """The shapes to time on ``device_class`` ("cpu" or "gpu") within ``limits``, a decode group's
    shapes visited at most ``visits`` times in a row (the KV pool must hold the group's decodes as
    their contexts grow that long).

    A decode group that does not fit is shrunk (fewer decodes), then dropped; chunks above the chunk
    limit are dropped.
    """
    spec = _GRIDS[device_class]
    holdout = spec["holdout"]
    output_tokens = group_output_tokens(1 + len(spec["mixed_chunks"]), visits)
    max_chunk = limits.max_chunk_tokens
    shapes: list[CalibrationShape] = []
    for decodes, context in spec["decode_groups"]:
        # contexts are spread +-50% around the nominal length (see the runtime), so 1.5x is the max
        if 1.5 * context + output_tokens + 1 > limits.context_tokens:
            continue
        per_request = int(1.5 * context) + output_tokens + 1
        fit = min(decodes, limits.max_running_requests - 1,
                  int(_GROUP_KV_SHARE * limits.kv_tokens) // per_request)
        if fit < 1:
            continue
        shapes.append(CalibrationShape("decode", fit, context,
                                       holdout=("decode", decodes, context) in holdout))
        for chunk in spec["mixed_chunks"]:
            if chunk <= max_chunk:
                shapes.append(CalibrationShape("mixed", fit, context, chunk,
                                               holdout=("mixed", decodes, context, chunk) in holdout))
    for chunk in spec["prefill_chunks"]:
        for prefix in spec["prefixes"]:
            if chunk > max_chunk or chunk + prefix + 1 > limits.context_tokens:
                continue
            if chunk + prefix > _GROUP_KV_SHARE * limits.kv_tokens:
                continue
            shapes.append(CalibrationShape("prefill", chunk=chunk, prefix=prefix,
                                           holdout=("prefill", chunk, prefix) in holdout))
    return shapes


@dataclass
class CalibrationFit:
    model: CostModel
    fit_mape: float
    holdout_mape: float | None
    #: One row per shape: label, held out or not, measured (fastest repeat) and predicted ms, and
    #: the spread (median repeat / fastest - 1).
    table: list[dict] = field(default_factory=list)


def fit_calibration(
    samples: dict[CalibrationShape, list[tuple[tuple[float, ...], float]]],
    *,
    name: str = "calibrated",
    terms: tuple[str, ...] = FEATURE_NAMES,
) -> CalibrationFit:
    """Fit a cost model to timed shapes: ``samples[shape]`` lists ``(features, seconds)`` of its
    timed repeats.  A shape's time is the fastest of its repeats (see the module docstring), its
    features their mean (a decode's context grows by a token per repeat).  Held-out shapes are predicted, not fitted.
    Raises :class:`CalibrationError` when the fit is unusable."""
    rows, times, held, labels, spreads = [], [], [], [], []
    for shape, timed in samples.items():
        values = np.array([t for _, t in timed if isinstance(t, (int, float)) and math.isfinite(t) and t > 0])
        if len(values) == 0:
            continue
        fastest = float(values.min())
        rows.append(np.mean([f for f, _ in timed], axis=0))
        times.append(fastest)
        held.append(shape.holdout)
        labels.append(shape.label)
        # how much slower the median repeat was than the fastest (0: a quiet machine)
        spreads.append(float(np.median(values) / fastest - 1.0))
    if not rows:
        raise CalibrationError("calibration timed no iteration")
    features = np.asarray(rows, dtype=float)
    times_s = np.asarray(times, dtype=float)
    held = np.asarray(held, dtype=bool)
    train = ~held
    if train.sum() < len(terms) and "mixed_context_sq" in terms:
        # A small engine's grid (few seats, small chunks: one mixed chunk size) may time fewer
        # shapes than there are terms: the squared term, the last added, is left out first.
        terms = tuple(t for t in terms if t != "mixed_context_sq")
    if train.sum() < len(terms):
        raise CalibrationError(f"calibration has {int(train.sum())} fitted shapes for {len(terms)} terms")
    model = _fit_with_token_cost(features[train], times_s[train], terms, name)
    predicted = features @ model.coefficients()
    errors = np.abs(predicted - times_s) / times_s
    fit_mape = float(errors[train].mean())
    holdout_mape = float(errors[held].mean()) if held.any() else None
    table = [
        {"shape": label, "holdout": bool(h), "measured_ms": round(float(t) * 1e3, 3),
         "predicted_ms": round(float(p) * 1e3, 3), "spread": round(s, 3)}
        for label, h, t, p, s in zip(labels, held, times_s, predicted, spreads)
    ]
    model.info.update(fit_mape=fit_mape, holdout_mape=holdout_mape, shapes=len(labels),
                      holdout_shapes=int(held.sum()))
    return CalibrationFit(model, fit_mape, holdout_mape, table)


def _fit_with_token_cost(features: np.ndarray, times_s: np.ndarray, terms: tuple[str, ...], name: str) -> CostModel:
    """Every term is a cost, the per-token one too (on a tiny model the context term can carry all
    of a chunk's cost); what must not be free is a token: per new plus per context.  On a noisy
    grid the extend rows' context terms can take the whole per-token cost (the decode rows' context
    is nearly proportional to their count within a group): then it is fitted without them."""
    attempts = [terms]
    if any(t in _EXTEND_CONTEXT_TERMS for t in terms):
        attempts.append(tuple(t for t in terms if t not in _EXTEND_CONTEXT_TERMS))
    for attempt in attempts:
        try:
            model = fit_physical_cost_model(features, times_s, terms=attempt, name=name, nonnegative=FEATURE_NAMES)
        except (ValueError, np.linalg.LinAlgError) as exc:
            raise CalibrationError(f"calibration fit failed: {exc}") from None
        if model.per_new_token_s + model.per_context_token_s > 0:
            return model
    raise CalibrationError(f"calibration gave no per-token cost ({model.describe()})")


# --- cache ----------------------------------------------------------------------------------------
def cache_key(identity: dict) -> str:
    """A stable hex digest of ``identity`` (model, device, dtype, engine flags, versions, grid): two
    servers with the same key time the same iterations the same way."""
    text = json.dumps({"calibration_version": CALIBRATION_VERSION, **identity}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _entry_path(cache_dir: str | os.PathLike, key: str) -> Path:
    return Path(cache_dir) / f"calibration-{key}.json"


def load_cached(cache_dir: str | os.PathLike, key: str) -> dict | None:
    """The cached calibration for ``key`` (a dict with ``model`` as a :class:`CostModel`), or None
    when there is none or it cannot be read (then the caller calibrates and overwrites it)."""
    path = _entry_path(cache_dir, key)
    try:
        data = json.loads(path.read_text())
        if data.get("key") != key or data.get("calibration_version") != CALIBRATION_VERSION:
            return None
        data["model"] = CostModel.from_dict(data["model"], source=str(path))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, CostModelError):
        return None
    data["path"] = str(path)
    return data


def save_cached(cache_dir: str | os.PathLike, key: str, entry: dict) -> str:
    """Write ``entry`` (``model`` a :class:`CostModel`) for ``key``, atomically (concurrent servers
    never read half a file); returns the path."""
    path = _entry_path(cache_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**entry, "key": key, "calibration_version": CALIBRATION_VERSION,
            "model": entry["model"].to_dict()}
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".calibration-", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(data, out, indent=1, sort_keys=True, default=str)
            out.write("\n")
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    return str(path)
