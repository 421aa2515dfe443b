"""Markdown tables of a reliability run's figures (the JSON ``SGLANG_FAIR_RELIABILITY_OUT`` names).

    SGLANG_FAIR_RELIABILITY_OUT=out.json .venv/bin/python -m pytest -m slow test/reliability
    .venv/bin/python benchmark/reliability_tables.py out.json

Prints the run's date, machine and load, then one table per kind of test found (overload, abort
storm, fuzzing): what docs/reliability.md shows.  The cluster tests' figures are printed as JSON
lines (their shapes differ run to run).
"""

from __future__ import annotations

import argparse
import json


def _num(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def overload_rows(test: str, by_policy: dict) -> list[str]:
    rows = []
    for policy, r in by_policy.items():
        latency = f"{_num(r.get('latency_p50_s'), 1)} / {_num(r.get('latency_max_s'), 1)}"
        rows.append(
            f"| {test} | {policy} | {_num(r['capacity']['capacity_rps'])} | {_num(r['offered_rps'])} "
            f"| {_num(r['overload_s'], 0)} | {r['sent']} | {r['answered']} | {r['rejected']} | {r['lost']} "
            f"| {latency} | {_num(r['all_answered_after_s'], 1)} "
            f"| {_num(r['scheduler_rss_mb_before'], 1)} -> {_num(r['scheduler_rss_mb_after'], 1)} "
            f"| {_num(r['idle_latency_s'])} -> {_num(r['after_drain_latency_s'])} |"
        )
    return rows


def abort_rows(test: str, by_policy: dict) -> list[str]:
    rows = []
    for policy, r in by_policy.items():
        answers = ", ".join(f"{code}: {count}" for code, count in sorted(r["answers"].items()))
        rows.append(
            f"| {test} | {policy} | {r['sent']} ({r['streaming_clients']} hang-ups + {r['aborted_waiting']} aborted by id) "
            f"| {answers} | {_num(r['storm_s'], 1)} | {_num(r['idle_after_s'], 1)} "
            f"| {r['requests_after']} / {r['kv_tokens_after_flush']} "
            f"| {_num(r['idle_latency_s'])} -> {_num(r['latency_after_s'])} |"
        )
    return rows


def fuzz_rows(test: str, by_policy: dict) -> list[str]:
    rows = []
    for policy, routes in by_policy.items():
        for route, r in routes.items():
            codes = ", ".join(f"{code}: {count}" for code, count in sorted(r["codes"].items()))
            rows.append(f"| {test} | {policy} | `{route}` | {r['bodies']} | {codes} |")
    return rows


TABLES = {
    "overload": (
        "| test | policy | capacity (rps) | offered (rps) | overload (s) | sent | answered | rejected | lost "
        "| p50 / max latency (s) | all answered after (s) | scheduler RSS before -> after (MiB) "
        "| plain request idle -> after drain (s) |",
        overload_rows,
    ),
    "abort_storm": (
        "| test | policy | sent | answers | storm (s) | idle after (s) | requests / KV tokens after (flushed) "
        "| plain request idle -> after (s) |",
        abort_rows,
    ),
    "fuzz": ("| test | policy | route | bodies | answers |", fuzz_rows),
}


def render(run: dict) -> str:
    lines = [f"Run: {run.get('date')}, {run.get('machine')}, load average at the end "
             f"{', '.join(_num(v, 1) for v in run.get('load_average_at_end', []))}, "
             f"pytest exit status {run.get('exit_status')}.", ""]
    tests = run.get("tests", {})
    for prefix, (header, make_rows) in TABLES.items():
        rows = [row for test, by_policy in tests.items() if test.startswith(prefix)
                for row in make_rows(test, by_policy)]
        if rows:
            columns = header.count("|") - 1
            lines += [header, "|" + " --- |" * columns, *rows, ""]
    for test, figures in tests.items():
        if not any(test.startswith(prefix) for prefix in TABLES):
            lines.append(f"{test}: {json.dumps(figures)}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="JSON files written through SGLANG_FAIR_RELIABILITY_OUT")
    args = parser.parse_args()
    for path in args.runs:
        with open(path) as handle:
            print(render(json.load(handle)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
