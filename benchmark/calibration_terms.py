"""What the ``mixed_context`` and ``mixed_context_sq`` terms do for a start-up calibration: refit
cached calibrations.

Reads calibration cache files (``$SGLANG_FAIR_CALIBRATION_CACHE/calibration-*.json``, or the paths
given), rebuilds each shape's features from its label with the policy's own ``BatchShape`` (mean
contexts: the runtime's ragged contexts average the nominal length, plus about 5 tokens of growth
over a visit; their squares add the spread's variance, ``context^2 / 12`` for contexts uniform
within +-50%), and refits the measured times with the calibration's own fit
(``policy.calibration.fit_calibration``, held-out shapes left out) three times: with every term of
``FEATURE_NAMES`` (the model as it is), without ``mixed_context_sq`` (the decode rows' squared
context in a batch that holds a prefill chunk: the model before that term) and without both it and
``mixed_context`` (the decode rows' context there: the model before either).  Prints fit and
held-out MAPE for each.

    python benchmark/calibration_terms.py ~/.cache/sglang_fair/calibration/calibration-*.json

(docs/results-cpu.md's table of 2026-12-01 came from this script's first version: an NNLS refit,
outside the model, of seven terms with and without the then candidate term.)
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from sglang_fair.policy.calibration import CalibrationShape, fit_calibration  # noqa: E402
from sglang_fair.policy.cost_model import FEATURE_NAMES, BatchShape  # noqa: E402

#: Tokens a decode's context grows by, on average, between its prefill and a timed visit.
GROWTH_TOKENS = 5
#: The fits compared: the model's terms, the same without the tenth, and without the ninth too.
TERM_SETS = {
    "without mixed_context(_sq)": tuple(t for t in FEATURE_NAMES if t not in ("mixed_context", "mixed_context_sq")),
    "without mixed_context_sq": tuple(t for t in FEATURE_NAMES if t != "mixed_context_sq"),
    "model (with mixed_context_sq)": FEATURE_NAMES,
}


def shape_of(label: str, holdout: bool) -> tuple[CalibrationShape, tuple[float, ...]]:
    """The calibration shape a table label names, and its features (``BatchShape`` at mean contexts)."""
    batch = BatchShape()
    if match := re.fullmatch(r"decode (\d+)x(\d+)", label):
        decodes, context = map(int, match.groups())
        shape = CalibrationShape("decode", decodes, context, holdout=holdout)
    elif match := re.fullmatch(r"mixed (\d+)x(\d+) \+ chunk (\d+)", label):
        decodes, context, chunk = map(int, match.groups())
        shape = CalibrationShape("mixed", decodes, context, chunk, holdout=holdout)
    elif match := re.fullmatch(r"prefill chunk (\d+) after (\d+)", label):
        chunk, prefix = map(int, match.groups())
        shape = CalibrationShape("prefill", chunk=chunk, prefix=prefix, holdout=holdout)
    else:
        raise ValueError(f"unknown shape label {label!r}")
    for _ in range(shape.decodes):
        batch.add_decode(shape.context + GROWTH_TOKENS)
    # (the squares of contexts uniform within +-50% of the nominal: the mean's square plus the variance)
    batch.decode_context_sq += shape.decodes * shape.context**2 / 12
    if shape.chunk:
        batch.add_prefill(shape.chunk, shape.prefix)
    return shape, batch.features()


def refit(entry: dict) -> dict:
    samples = {}
    for row in entry["table"]:
        shape, features = shape_of(row["shape"], bool(row["holdout"]))
        samples[shape] = [(features, row["measured_ms"] / 1e3)]
    out = {}
    for name, terms in TERM_SETS.items():
        fit = fit_calibration(samples, terms=terms)
        out[name] = {"fit_mape": fit.fit_mape, "holdout_mape": fit.holdout_mape}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", help="calibration cache files (default: the cache folder's)")
    args = parser.parse_args(argv)
    paths = args.paths or sorted(glob.glob(os.path.join(
        os.environ.get("SGLANG_FAIR_CALIBRATION_CACHE") or os.path.expanduser("~/.cache/sglang_fair/calibration"),
        "calibration-*.json")))
    for path in paths:
        with open(path) as handle:
            entry = json.load(handle)
        result = refit(entry)
        model = entry.get("identity", {}).get("model", {}).get("path", "?")
        print(json.dumps({"file": path, "model": os.path.basename(str(model)), "measured_at": entry.get("measured_at"),
                          "load_average": entry.get("load_average"),
                          **{k: {m: round(v, 3) if v is not None else None for m, v in r.items()}
                             for k, r in result.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
