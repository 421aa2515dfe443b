"""Replay a server's measured iterations through the online cost model: is its refitting the problem?

    python benchmark/online_model_replay.py LOG [LOG ...] [--model JSON] [--skip 256] [--json OUT]

``LOG`` is what ``launch_server --fair-iteration-log LOG`` wrote (runtime/iteration_log.py): the
online model's prior, then every measured iteration's shape and seconds (``.gz``: gzipped).  Each log is replayed
through

* ``online``: ``OnlineCostModel`` from the log's prior, as the server runs it (prequential: each
  iteration is predicted by the model as it stood before that iteration was observed);
* ``prior``: the prior, never refitted;
* ``hindsight``: one model fitted to the whole log (the online refit's fit and median centring,
  no prior): about the best any model held still could have done, known only afterwards;
* ``model``: the ``--model`` JSON held still (e.g. a live model read from ``GET /fair/state``).

For each it reports how far the predictions were from the measurements (median log ratio, median
|log ratio|, 90th percentile of measured/predicted, the share of iterations 1.25x or more over
their prediction: what FairBatching's adaptive safety floor of 0.8 no longer covers) and how much
the model's predictions for two fixed shapes moved during the run (coefficient of variation; 0 for
a model held still).  A last line says how much the engine itself drifted: the spread of the
median of measured over the hindsight model's prediction, block by block of ``--block``
iterations.  If ``online`` is no worse than ``hindsight`` on the errors, refitting costs nothing;
if the block medians spread as widely as ``online``'s predictions move, the model moves because
the engine does.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

from sglang_fair import strict_json  # noqa: E402
from sglang_fair.policy.cost_model import (  # noqa: E402
    FEATURE_NAMES,
    ONLINE_NONNEGATIVE_TERMS,
    CostModel,
    OnlineCostModel,
    fit_physical_cost_model,
    load_cost_model,
    median_centred,
)
from sglang_fair.runtime.iteration_log import read_last_run  # noqa: E402

#: An iteration this much over its prediction is past what a 0.8 budget safety leaves room for.
OVERRUN_FACTOR = 1.25
#: How often (in iterations) the fixed shapes' predictions are sampled.
SAMPLE_EVERY = 32


class ReplayError(ValueError):
    """A log that cannot be replayed; the message names the file and line."""


def read_log(path: str) -> tuple[CostModel, np.ndarray, np.ndarray]:
    """The prior, the feature rows and the measured seconds of one iteration log (the last run's,
    if the file holds several: the log is appended to by every start)."""
    try:
        run = read_last_run(path)
    except ValueError as exc:
        raise ReplayError(str(exc)) from None
    return log_arrays(path, run)


def log_arrays(path: str, run: tuple[int, dict, list[tuple[int, dict]]]) -> tuple[CostModel, np.ndarray, np.ndarray]:
    """:func:`read_log` of a run already read (``read_last_run(path)``)."""
    header_line, header, entries = run
    if list(header.get("features", [])) != list(FEATURE_NAMES):
        raise ReplayError(f"{path}:{header_line}: features {header.get('features')} are not {list(FEATURE_NAMES)}")
    try:
        prior = CostModel.from_dict(header["prior"], source=f"{path}:{header_line}")
    except (KeyError, TypeError, ValueError) as exc:
        raise ReplayError(f"{path}:{header_line}: not an iteration-log header ({exc})") from None
    rows, times = [], []
    for number, entry in entries:
        try:
            features, measured_s = entry["features"], entry["measured_s"]
        except KeyError as exc:
            raise ReplayError(f"{path}:{number}: not an iteration-log line ({exc})") from None
        if len(features) != len(FEATURE_NAMES):
            raise ReplayError(f"{path}:{number}: {len(features)} features, expected {len(FEATURE_NAMES)}")
        rows.append(features)
        times.append(measured_s)
    if not times:
        raise ReplayError(f"{path}: no iterations after the last header")
    return prior, np.asarray(rows, dtype=float), np.asarray(times, dtype=float)


def reference_rows(features: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Two shapes the run really had: the median-time decode-only iteration and the median-time
    one with a prefill (fewer if the log has no such iteration)."""
    extend = features[:, FEATURE_NAMES.index("prefill_iteration")] > 0
    picked = []
    for rows in (~extend, extend):
        index = np.flatnonzero(rows)
        if len(index):
            order = index[np.argsort(times[index], kind="stable")]
            picked.append(features[order[len(order) // 2]])
    return np.asarray(picked)


def replay(features: np.ndarray, times: np.ndarray, model: CostModel | OnlineCostModel, references: np.ndarray,
           skip: int) -> dict:
    """Prequential errors of ``model`` over the log (an online model observes each iteration after
    predicting it) and the spread of its predictions for ``references``."""
    online = model if isinstance(model, OnlineCostModel) else None
    predicted = np.empty(len(times))
    samples = []
    for k, (row, measured_s) in enumerate(zip(features, times)):
        current = online.current if online is not None else model
        coefficients = current.coefficients()
        predicted[k] = float(row @ coefficients)
        if k >= skip and (k - skip) % SAMPLE_EVERY == 0:
            samples.append(references @ coefficients)
        if online is not None:
            online.observe_row(row, float(measured_s), predicted[k])
    judged = slice(skip, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(times[judged] / predicted[judged])
    logs = logs[np.isfinite(logs)]
    if not len(logs):
        raise ReplayError(f"no iteration after the first {skip} to judge (--skip)")
    spread = np.asarray(samples)
    cv = (spread.std(axis=0) / spread.mean(axis=0)).tolist() if len(spread) else []
    return {
        "iterations_judged": int(len(logs)),
        "median_log_ratio": float(np.median(logs)),
        "median_abs_log_ratio": float(np.median(np.abs(logs))),
        "p90_measured_over_predicted": float(np.exp(np.quantile(logs, 0.9))),
        "share_overrun": float(np.mean(logs >= math.log(OVERRUN_FACTOR))),
        "reference_prediction_cv": cv,
        "refits": online.refits if online is not None else 0,
    }


def engine_drift(features: np.ndarray, times: np.ndarray, model: CostModel, block: int, skip: int) -> dict:
    """Median of log(measured / ``model``'s prediction) per block of ``block`` iterations."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(times / (features @ model.coefficients()))
    medians = [float(np.median(part[np.isfinite(part)])) for start in range(skip, len(logs), block)
               if len(part := logs[start:start + block]) >= block // 2 and np.isfinite(part).any()]
    return {"block": block, "block_median_log_ratios": medians,
            "range": [min(medians), max(medians)] if medians else None}


def hindsight_model(features: np.ndarray, times: np.ndarray) -> CostModel:
    """One model fitted to a whole log: the online refit's fit with no prior (the whole log is the
    evidence), centred on the median."""
    return median_centred(fit_physical_cost_model(features, times, name="hindsight",
                                                  nonnegative=ONLINE_NONNEGATIVE_TERMS), features, times)


def replay_log(path: str, *, held: CostModel | None, skip: int, block: int) -> dict:
    prior, features, times = read_log(path)
    skip = min(skip, len(times) // 2)
    hindsight = hindsight_model(features, times)
    references = reference_rows(features, times)
    variants = {"online": OnlineCostModel(prior), "prior": prior, "hindsight": hindsight}
    if held is not None:
        variants["model"] = held
    return {
        "log": path,
        "iterations": int(len(times)),
        "prior": prior.name,
        "variants": {name: replay(features, times, model, references, skip) for name, model in variants.items()},
        "engine_drift": engine_drift(features, times, hindsight, block, skip),
    }


def print_report(result: dict) -> None:
    print(f"\n{result['log']}: {result['iterations']} iterations, prior {result['prior']}")
    print(f"{'model':<10} {'median log':>10} {'median |log|':>12} {'p90 meas/pred':>13} "
          f"{'>=1.25x':>8} {'prediction CV':>15} {'refits':>7}")
    for name, v in result["variants"].items():
        cv = "/".join(f"{x:.2f}" for x in v["reference_prediction_cv"])
        print(f"{name:<10} {v['median_log_ratio']:>10.3f} {v['median_abs_log_ratio']:>12.3f} "
              f"{v['p90_measured_over_predicted']:>13.2f} {v['share_overrun']:>8.1%} {cv:>15} {v['refits']:>7}")
    drift = result["engine_drift"]
    if drift["range"] is not None:
        low, high = drift["range"]
        print(f"engine drift: per {drift['block']}-iteration block, measured / hindsight model from "
              f"{math.exp(low):.2f}x to {math.exp(high):.2f}x ({len(drift['block_median_log_ratios'])} blocks)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="+", metavar="LOG", help="files written by launch_server --fair-iteration-log")
    parser.add_argument("--model", help="a cost model (preset name or JSON) to replay held still as well")
    parser.add_argument("--skip", type=int, default=256, help="iterations not judged at the start (default: %(default)s)")
    parser.add_argument("--block", type=int, default=512, help="iterations per engine-drift block (default: %(default)s)")
    parser.add_argument("--json", help="write the results as strict JSON to this file")
    args = parser.parse_args(argv)
    if args.skip < 0:
        parser.error("--skip: must be >= 0")
    if args.block < 2:
        parser.error("--block: must be >= 2")
    held = None
    if args.model:
        try:
            held = load_cost_model(args.model)
        except ValueError as exc:
            parser.error(f"--model: {exc}")
    results = []
    for path in args.logs:
        try:
            result = replay_log(path, held=held, skip=args.skip, block=args.block)
        except (OSError, ReplayError) as exc:
            parser.error(str(exc))
        print_report(result)
        results.append(result)
    if args.json:
        strict_json.write(args.json, {"results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
