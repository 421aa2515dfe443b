"""Where a FairBatching server's iterations go, step by step, from its iteration log.

    python -m sglang_fair.launch_server --batch-policy fairbatching ... --fair-iteration-log /tmp/iter.jsonl
    ... drive it (benchmark/cpu_ab.py --server "fair=... --fair-iteration-log /tmp/iter.jsonl") ...
    .venv/bin/python benchmark/iteration_steps.py /tmp/iter.jsonl --tpot-slo 0.017

For each policy step of the log's last run (``Plan.step``: which rule decided the batch; decode-only
steps nobody planned are ``(decode run)``): how many iterations, their measured time (median, P90,
P99), and how many took longer than the TPOT SLO, a gap every decode in them saw.  A prefill-only
iteration is counted with the step after it (the decodes wait for both): the last column.

When the log holds ``late_tokens`` (decode tokens past the line the policy plans against, which for
a request's last token is a missed mean TPOT), a second table takes each request's first late
token and the iterations that ran since that request's previous token, by their steps: how late,
how long its line had given it, how far those iterations ran over their prediction, and the
scheduler's own time between them (the wait less the iterations' measured time).

A third table counts the stretches of planned decode-only iterations in a row while prompts waited
(``apart: decodes ...``, ``decodes: ...``): how long, how many prompts waited at their end and how far
the first of them was past its TTFT by then.  Long ones are prompts starved by decodes that do not
get back on their line (``docs/results-cpu.md``, "Overdue decodes and late prompts take turns").
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import os
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

from sglang_fair.runtime.iteration_log import read_last_run  # noqa: E402

UNPLANNED = "(decode run)"


def read_log(path: str) -> list[dict]:
    """The iterations of the last run in a ``--fair-iteration-log`` file (plain or gzipped; the
    file is appended to by every start)."""
    return [entry for _, entry in read_last_run(path)[2]]


def steps_table(rows: list[dict], tpot_slo_s: float) -> list[dict]:
    """Per step, most frequent first: count, median / P90 / P99 measured seconds, iterations over
    the TPOT, and (prefill-only steps) those that, with the iteration after them, were over it."""
    times = defaultdict(list)
    pair_over = defaultdict(int)
    for index, row in enumerate(rows):
        step = row.get("step") or UNPLANNED
        times[step].append(row["measured_s"])
        if step.startswith("apart: prefill") and index + 1 < len(rows):
            pair_over[step] += row["measured_s"] + rows[index + 1]["measured_s"] > tpot_slo_s
    table = []
    for step, values in sorted(times.items(), key=lambda item: -len(item[1])):
        measured = np.asarray(values)
        median, p90, p99 = np.percentile(measured, [50, 90, 99])
        table.append({"step": step, "iterations": len(values), "median_s": float(median), "p90_s": float(p90),
                      "p99_s": float(p99), "over_tpot": int((measured > tpot_slo_s).sum()),
                      "with_next_over_tpot": pair_over.get(step)})
    return table


def render(table: list[dict], tpot_slo_s: float) -> str:
    lines = [f"| step | iterations | median ms | P90 ms | P99 ms | over {1000 * tpot_slo_s:g} ms |"
             " prefill-only + next over it |", "|---|---|---|---|---|---|---|"]
    for row in table:
        paired = "" if row["with_next_over_tpot"] is None else str(row["with_next_over_tpot"])
        lines.append(f"| {row['step']} | {row['iterations']} | {1000 * row['median_s']:.1f} | {1000 * row['p90_s']:.1f} |"
                     f" {1000 * row['p99_s']:.1f} | {row['over_tpot']} | {paired} |")
    return "\n".join(lines)


def first_late_table(rows: list[dict]) -> list[dict]:
    """Per sequence of steps behind a request's first late token (its iterations since the
    request's previous token, oldest first), most frequent first: requests, and medians of how
    late, of the time the line gave, of measured over predicted time, and of the time between
    the iterations (scheduler work outside ``measured_s``)."""
    if not any(row.get("late_tokens") for row in rows):
        return []
    ends = [row["end_s"] for row in rows]
    seen = set()
    groups = defaultdict(list)
    for index, row in enumerate(rows):
        for token in row.get("late_tokens") or ():
            if token["rid"] in seen:
                continue
            seen.add(token["rid"])
            start = bisect.bisect_right(ends, row["end_s"] - token["waited_s"] + 1e-9, 0, index)
            window = rows[start:index + 1]
            label = " + ".join(entry.get("step") or UNPLANNED for entry in window)
            measured_s = sum(entry["measured_s"] for entry in window)
            predicted_s = sum(entry["predicted_s"] for entry in window)
            groups[label].append((token["late_s"], token["line_gave_s"],
                                  measured_s / predicted_s if predicted_s > 0 else np.nan,
                                  token["waited_s"] - measured_s))
    table = []
    for label, values in sorted(groups.items(), key=lambda item: -len(item[1])):
        late, gave, over, between = np.nanmedian(np.asarray(values), axis=0)
        table.append({"steps": label, "requests": len(values), "late_s": float(late), "line_gave_s": float(gave),
                      "measured_over_predicted": float(over), "between_s": float(between)})
    return table


def render_first_late(table: list[dict], top: int = 12) -> str:
    lines = ["| iterations since the request's previous token | requests | late ms | line gave ms |"
             " measured / predicted | between iterations ms |", "|---|---|---|---|---|---|"]
    for row in table[:top]:
        lines.append(f"| {row['steps']} | {row['requests']} | {1000 * row['late_s']:.1f} | {1000 * row['line_gave_s']:.1f} |"
                     f" {row['measured_over_predicted']:.2f} | {1000 * row['between_s']:.1f} |")
    rest = sum(row["requests"] for row in table[top:])
    if rest:
        lines.append(f"| (other sequences) | {rest} | | | | |")
    return "\n".join(lines)


#: Stretch lengths (decode-only iterations in a row while prompts waited) the third table bins by.
STRETCH_BINS = ((1, "1"), (4, "2-4"), (9, "5-9"), (10**9, "10 or more"))


def is_decode_only_plan(step: str) -> bool:
    """A decode-only iteration the policy chose while prompts waited (its step names no prefill)."""
    return step.startswith(("apart: decodes", "decodes")) and "prefill" not in step


def starved_stretches(rows: list[dict]) -> list[dict]:
    """Each stretch of planned decode-only iterations in a row: its length, the index of its last
    iteration, the prompts waiting then and the least TTFT slack among them (negative: past the
    TTFT; None if not logged)."""
    stretches = []
    runs = itertools.groupby(enumerate(rows), key=lambda item: is_decode_only_plan(item[1].get("step") or ""))
    for decode_only, run in runs:
        if decode_only:
            run = list(run)
            end, last = run[-1]
            stretches.append({"iterations": len(run), "end": end, "waiting_prompts": last.get("waiting_prompts"),
                              "min_prompt_slack_s": last.get("min_prompt_slack_s")})
    return stretches


def render_stretches(stretches: list[dict]) -> str:
    lines = ["| decode-only iterations in a row | stretches | most prompts waiting at the end |"
             " least TTFT slack at the end, ms |", "|---|---|---|---|"]
    previous = 0  # (the bins are contiguous: each starts after the previous bound)
    for bound, label in STRETCH_BINS:
        group = [s for s in stretches if previous < s["iterations"] <= bound]
        previous = bound
        waiting = [s["waiting_prompts"] for s in group if s["waiting_prompts"] is not None]
        slack = [s["min_prompt_slack_s"] for s in group if s["min_prompt_slack_s"] is not None]
        lines.append(f"| {label} | {len(group)} | {max(waiting) if waiting else ''} |"
                     f" {f'{1000 * min(slack):.0f}' if slack else ''} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", help="a --fair-iteration-log file (.gz accepted)")
    parser.add_argument("--tpot-slo", type=float, required=True, help="seconds: the gap counted as too long")
    args = parser.parse_args(argv)
    if not args.tpot_slo > 0:
        parser.error("--tpot-slo must be positive")
    try:
        rows = read_log(args.log)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    if not rows:
        parser.error(f"{args.log}: no iterations")
    print(f"{len(rows)} iterations")
    print(render(steps_table(rows, args.tpot_slo), args.tpot_slo))
    first_late = first_late_table(rows)
    if first_late:
        print(f"\n{sum(row['requests'] for row in first_late)} requests had a decode token past the line the policy plans"
              " against; their first such token, by the iterations since the request's previous token:")
        print(render_first_late(first_late))
    stretches = starved_stretches(rows)
    if stretches:
        print(f"\nPlanned decode-only iterations while prompts waited, by stretches in a row (longest"
              f" {max(s['iterations'] for s in stretches)}):")
        print(render_stretches(stretches))
    return 0


if __name__ == "__main__":
    sys.exit(main())
