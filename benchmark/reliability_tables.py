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


def _codes(counts: dict) -> str:
    return ", ".join(f"{code}: {count}" for code, count in sorted(counts.items()))


#: Each table's columns, (title, cell of one policy's figures ``r``), beside each other so a header
#: and its rows cannot drift apart.
OVERLOAD_COLUMNS = [
    ("capacity (rps)", lambda r: _num(r["capacity"]["capacity_rps"])),
    ("offered (rps)", lambda r: _num(r["offered_rps"])),
    ("overload (s)", lambda r: _num(r["overload_s"], 0)),
    ("sent", lambda r: r["sent"]),
    ("answered", lambda r: r["answered"]),
    ("rejected", lambda r: r["rejected"]),
    ("lost", lambda r: r["lost"]),
    # (older summaries have no such count: their client never sent a request twice)
    ("sent again, body unwritten", lambda r: r.get("resent_unsent", 0)),
    ("p50 / max latency (s)", lambda r: f"{_num(r.get('latency_p50_s'), 1)} / {_num(r.get('latency_max_s'), 1)}"),
    ("all answered after (s)", lambda r: _num(r["all_answered_after_s"], 1)),
    ("scheduler RSS before -> after (MiB)",
     lambda r: f"{_num(r['scheduler_rss_mb_before'], 1)} -> {_num(r['scheduler_rss_mb_after'], 1)}"),
    ("plain request idle -> after drain (s)", lambda r: f"{_num(r['idle_latency_s'])} -> {_num(r['after_drain_latency_s'])}"),
]
ABORT_COLUMNS = [
    ("sent", lambda r: f"{r['sent']} ({r['streaming_clients']} hang-ups + {r['aborted_waiting']} aborted by id)"),
    ("answers", lambda r: _codes(r["answers"])),
    ("storm (s)", lambda r: _num(r["storm_s"], 1)),
    ("idle after (s)", lambda r: _num(r["idle_after_s"], 1)),
    ("requests / KV tokens after (flushed)", lambda r: f"{r['requests_after']} / {r['kv_tokens_after_flush']}"),
    ("plain request idle -> after (s)", lambda r: f"{_num(r['idle_latency_s'])} -> {_num(r['latency_after_s'])}"),
]
FUZZ_COLUMNS = [("bodies", lambda r: r["bodies"]), ("answers", lambda r: _codes(r["codes"]))]


def _per_policy(by_policy: dict):
    """``(key cells, figures)``: one row per policy."""
    for policy, figures in by_policy.items():
        yield [policy], figures


def _per_route(by_policy: dict):
    """One row per policy and route (the fuzzing's figures are per route)."""
    for policy, routes in by_policy.items():
        for route, figures in routes.items():
            yield [policy, f"`{route}`"], figures


#: Test-name prefix -> (key columns, rows of one test, value columns).
TABLES = {
    "overload": (["policy"], _per_policy, OVERLOAD_COLUMNS),
    "abort_storm": (["policy"], _per_policy, ABORT_COLUMNS),
    "fuzz": (["policy", "route"], _per_route, FUZZ_COLUMNS),
}


def _row(cells) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def render(run: dict) -> str:
    lines = [f"Run: {run.get('date')}, {run.get('machine')}, load average at the end "
             f"{', '.join(_num(v, 1) for v in run.get('load_average_at_end', []))}, "
             f"pytest exit status {run.get('exit_status')}.", ""]
    tests = run.get("tests", {})
    for prefix, (keys, rows_of, columns) in TABLES.items():
        rows = [_row([test, *key_cells, *(cell(figures) for _, cell in columns)])
                for test, by_policy in tests.items() if test.startswith(prefix)
                for key_cells, figures in rows_of(by_policy)]
        if rows:
            titles = ["test", *keys, *(title for title, _ in columns)]
            lines += [_row(titles), "|" + " --- |" * len(titles), *rows, ""]
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
