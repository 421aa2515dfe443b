"""From measured cases to a cost model, with its error per shape class.

kernels/ only measures and reports; the model and the least-squares fit belong to
``sglang_fair.policy.cost_model`` (``fit_cost_model``), the same code the online refit runs.
"""

from __future__ import annotations

import csv
import datetime as _dt
from dataclasses import dataclass

import numpy as np

from sglang_fair.policy.cost_model import (
    FEATURE_NAMES,
    KERNEL_TERMS,
    CostModel,
    feature_row,
    fit_cost_model,
)

from .grid import SHAPE_CLASSES

__all__ = ["CSV_COLUMNS", "ProfileRow", "error_by_class", "fit_rows", "read_csv", "write_csv"]

CSV_COLUMNS = (
    "shape_class", "num_decodes", "sum_decode_context", "max_decode_context", "chunk_tokens",
    "prefix_tokens", "new_tokens", "sum_context", "num_seqs", "sum_chunk_sq",
    "total_ms", "layer_ms", "attention_ms", "plan_ms", "head_ms", "spread", "split",
)


@dataclass
class ProfileRow:
    shape_class: str
    num_decodes: int
    sum_decode_context: int
    max_decode_context: int
    chunk_tokens: int
    prefix_tokens: int
    new_tokens: int
    sum_context: int
    num_seqs: int
    sum_chunk_sq: int
    total_ms: float
    layer_ms: float = 0.0
    attention_ms: float = 0.0
    plan_ms: float = 0.0
    head_ms: float = 0.0
    spread: float = 0.0
    split: str = "grid"  # "grid" rows are fitted, "holdout" rows only checked

    def features(self) -> tuple[float, ...]:
        """The values of ``FEATURE_NAMES``; a profiled shape with a chunk is an extend iteration
        (one chunk per case: its query-key pairs against the prefix are chunk x prefix)."""
        return feature_row(self.new_tokens, self.sum_context, self.num_seqs, self.sum_chunk_sq,
                           self.chunk_tokens > 0, self.chunk_tokens * self.prefix_tokens,
                           decode_context=self.sum_decode_context,
                           # The profile keeps the decode rows' context sum and max, not each row's:
                           # their squares are unknown.  Not a kernel term (no kernel fit uses it).
                           decode_context_sq=0)


def write_csv(path: str, rows: list[ProfileRow]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow([
                f"{value:.6g}" if isinstance(value, float) else value
                for value in (getattr(row, column) for column in CSV_COLUMNS)
            ])


def read_csv(path: str) -> list[ProfileRow]:
    types = ProfileRow.__annotations__
    rows = []
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in CSV_COLUMNS[:11] if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: not a profile CSV (missing column(s) {', '.join(missing)})")
        for line in reader:
            values = {}
            for column in CSV_COLUMNS:
                if column not in line or line[column] in (None, ""):
                    continue
                kind, text = types[column], line[column]
                values[column] = text if kind == "str" else int(float(text)) if kind == "int" else float(text)
            rows.append(ProfileRow(**values))
    return rows


def _matrix(rows: list[ProfileRow]) -> tuple[np.ndarray, np.ndarray]:
    features = np.array([row.features() for row in rows], dtype=float).reshape(-1, len(FEATURE_NAMES))
    times_s = np.array([row.total_ms * 1e-3 for row in rows], dtype=float)
    return features, times_s


def error_by_class(model: CostModel, rows: list[ProfileRow]) -> dict:
    """Mean and 90th-percentile absolute relative error, overall and per shape class."""
    features, times_s = _matrix(rows)
    if not len(rows):
        return {}
    relative = np.abs(features @ model.coefficients() - times_s) / times_s
    classes = np.array([row.shape_class for row in rows])

    def summary(mask: np.ndarray) -> dict:
        return {
            "mape": round(float(relative[mask].mean()), 4),
            "p90_ape": round(float(np.percentile(relative[mask], 90)), 4),
            "max_ape": round(float(relative[mask].max()), 4),
            "samples": int(mask.sum()),
        }

    report = {"all": summary(np.ones(len(rows), dtype=bool))}
    for shape_class in SHAPE_CLASSES:
        mask = classes == shape_class
        if mask.any():
            report[shape_class] = summary(mask)
    return report


def fit_rows(
    rows: list[ProfileRow],
    *,
    name: str,
    terms: tuple[str, ...] = KERNEL_TERMS,
    info: dict | None = None,
) -> CostModel:
    """Fit on the ``grid`` rows; report error on them and, if any, on the ``holdout`` rows."""
    grid = [row for row in rows if row.split != "holdout"]
    holdout = [row for row in rows if row.split == "holdout"]
    if len(grid) < len(terms) + 1:
        raise ValueError(f"need more than {len(terms)} grid rows to fit {len(terms)} terms, have {len(grid)}")
    features, times_s = _matrix(grid)
    model = fit_cost_model(features, times_s, terms=terms, name=name)
    fit_info = dict(model.info)
    model.info = dict(info or {})
    model.info.update({
        "terms": list(terms),
        "samples": fit_info.get("samples", len(grid)),
        "fit_error": error_by_class(model, grid),
        "date": _dt.date.today().isoformat(),
    })
    model.info["mape"] = model.info["fit_error"]["all"]["mape"]
    if holdout:
        model.info["holdout_error"] = error_by_class(model, holdout)
    return model


def format_error_table(report: dict, title: str) -> str:
    lines = [f"{title}:", f"  {'class':<13} {'n':>4} {'MAPE':>7} {'p90':>7} {'max':>7}"]
    for shape_class, stats in report.items():
        lines.append(
            f"  {shape_class:<13} {stats['samples']:>4} {stats['mape'] * 100:6.2f}% "
            f"{stats['p90_ape'] * 100:6.2f}% {stats['max_ape'] * 100:6.2f}%"
        )
    return "\n".join(lines)
