"""Would one more cost-model term explain the start-up calibration better?  Refit cached calibrations.

Reads calibration cache files (``$SGLANG_FAIR_CALIBRATION_CACHE/calibration-*.json``, or the paths
given), rebuilds each shape's features from its label (mean contexts: the runtime's ragged
contexts average the nominal length, plus about 5 tokens of growth over a visit), and refits the
measured times by non-negative least squares on relative error, held-out shapes left out, with the
seven terms of ``FEATURE_NAMES`` and with an eighth candidate, ``mixed_context``: the decode rows'
context in a batch that holds a prefill chunk (SGLang's CPU extend path walks each row's whole KV
per sequence, dearer than its decode path).  Prints fit and held-out MAPE for both.

    python benchmark/calibration_terms.py ~/.cache/sglang_fair/calibration/calibration-*.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re

import numpy as np
from scipy.optimize import nnls

#: Tokens a decode's context grows by, on average, between its prefill and a timed visit.
GROWTH_TOKENS = 5


def features(label: str) -> tuple[list[float], float]:
    """(the seven FEATURE_NAMES values, mixed_context) of a calibration shape label."""
    if match := re.fullmatch(r"decode (\d+)x(\d+)", label):
        decodes, context = map(int, match.groups())
        ctx = decodes * (context + GROWTH_TOKENS)
        return [1, decodes, ctx, decodes, 0, 0, 0], 0.0
    if match := re.fullmatch(r"mixed (\d+)x(\d+) \+ chunk (\d+)", label):
        decodes, context, chunk = map(int, match.groups())
        ctx = decodes * (context + GROWTH_TOKENS)
        return [1, decodes + chunk, ctx + chunk, decodes + 1, chunk * chunk, 1, decodes + 1], float(ctx)
    if match := re.fullmatch(r"prefill chunk (\d+) after (\d+)", label):
        chunk, prefix = map(int, match.groups())
        return [1, chunk, chunk + prefix, 1, chunk * chunk, 1, 1], 0.0
    raise ValueError(f"unknown shape label {label!r}")


def refit(entry: dict) -> dict:
    rows = entry["table"]
    base = np.array([features(r["shape"])[0] for r in rows], dtype=float)
    mixed_context = np.array([features(r["shape"])[1] for r in rows], dtype=float)
    times = np.array([r["measured_ms"] for r in rows]) / 1e3
    held = np.array([r["holdout"] for r in rows], dtype=bool)
    out = {}
    for name, x in (("7 terms", base), ("+ mixed_context", np.column_stack([base, mixed_context]))):
        weights = 1.0 / times
        coef, _ = nnls(x[~held] * weights[~held, None], times[~held] * weights[~held])
        errors = np.abs(x @ coef - times) / times
        out[name] = {"fit_mape": float(errors[~held].mean()), "holdout_mape": float(errors[held].mean())}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", help="calibration cache files (default: the cache folder's)")
    args = parser.parse_args(argv)
    paths = args.paths or sorted(glob.glob(os.path.join(
        os.environ.get("SGLANG_FAIR_CALIBRATION_CACHE") or os.path.expanduser("~/.cache/sglang_fair/calibration"),
        "calibration-*.json")))
    for path in paths:
        entry = json.load(open(path))
        result = refit(entry)
        model = entry.get("identity", {}).get("model", {}).get("path", "?")
        print(json.dumps({"file": path, "model": os.path.basename(str(model)), "measured_at": entry.get("measured_at"),
                          "load_average": entry.get("load_average"),
                          **{k: {m: round(v, 3) for m, v in r.items()} for k, r in result.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
