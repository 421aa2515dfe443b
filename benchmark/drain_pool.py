"""Pool the rounds of several drain runs (``cpu_user_bench.py --mode drain``): the verdict on the
1.1x drain line when one run's five rounds cannot give it.

Each run's rounds are interleaved (stock, FairBatching, FairBatching with admission control, the
same burst each round); a round's ratio is FairBatching's drain time over stock's in that round.
On this 2-core machine five rounds span 15-30 points, so one run's 90% interval of the median
ratio usually straddles the line (``undecided``).  This pools the per-round ratios of several runs
of the same burst, model and length scale, and reports the median, its 90% bootstrap interval and
whether that decides the line, with the same functions the drain benchmark uses.  The median is of
the per-round ratios (``median_round_ratio``), the statistic the benchmark's interval is of; a run's
own ``drain_ratio`` is its median drain times' ratio, which can differ (0.99x against 1.05x)::

    .venv/bin/python benchmark/drain_pool.py benchmark/results/cpu_user_2026-12-08/drain_200_*/results.json

Runs of another burst, model or length scale are refused (exit status 2, naming the field).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_user_bench as bench  # noqa: E402

#: What every pooled run must share: the same burst of the same requests on the same model.
SAME_IN_EVERY_RUN = ("burst", "model", "length_scale")


def pool(runs: list[tuple[str, dict]]) -> dict:
    """The per-round ratios of every run, pooled (module docstring); ``ValueError`` naming the
    field when the runs do not share the burst, model and length scale, or one has no rounds."""
    if not runs:
        raise ValueError("no drain runs given")
    first_label, first = runs[0]
    for label, report in runs:
        if report.get("mode") != "drain":
            raise ValueError(f"{label}: mode is {report.get('mode')!r}, not a drain run")
        for field in SAME_IN_EVERY_RUN:
            if report.get(field) != first.get(field):
                raise ValueError(f"{label}: {field} is {report.get(field)!r} where {first_label} has "
                                 f"{first.get(field)!r}; pool runs of the same burst only")
        if not report.get("drain_ratio_per_round"):
            raise ValueError(f"{label}: no drain_ratio_per_round (a run of one round, or of an older benchmark)")
    ratios = [ratio for _, report in runs for ratio in report["drain_ratio_per_round"]]
    interval = bench.bootstrap_median_interval(ratios)
    return {
        **{field: first.get(field) for field in SAME_IN_EVERY_RUN},
        "runs": [{"path": label, "date_utc": report.get("date_utc"),
                  "drain_ratio_per_round": report["drain_ratio_per_round"],
                  "median_round_ratio": statistics.median(report["drain_ratio_per_round"])} for label, report in runs],
        "rounds": len(ratios),
        "median_round_ratio": statistics.median(ratios),
        "drain_ratio_interval": interval,
        "drain_line": bench.DRAIN_RATIO_LINE,
        "drain_line_decided": bench.drain_line_decided(interval),
    }


def render(result: dict) -> str:
    lines = [f"Burst of {result['burst']} on {result['model']} (length scale {result['length_scale']}):"
             " FairBatching's drain time over stock's, per round", ""]
    for run in result["runs"]:
        per_round = ", ".join(f"{x:.2f}" for x in run["drain_ratio_per_round"])
        lines.append(f"- {run['path']} ({run['date_utc']}): {per_round} (median {run['median_round_ratio']:.2f})")
    low, high = result["drain_ratio_interval"]
    lines += ["", f"Pooled, {result['rounds']} rounds: median **{result['median_round_ratio']:.2f}x**, 90% bootstrap"
              f" interval {low:.2f}-{high:.2f}; the {result['drain_line']:g}x line: {result['drain_line_decided']}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="results.json of cpu_user_bench.py --mode drain runs")
    parser.add_argument("--out", help="write the pooled rounds here (JSON)")
    args = parser.parse_args(argv)
    runs = []
    for path in args.results:
        try:
            runs.append((path, json.loads(Path(path).read_text())))
        except (OSError, ValueError) as exc:
            parser.error(f"{path}: {exc}")
    try:
        result = pool(runs)
    except ValueError as exc:
        parser.error(str(exc))
    print(render(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
