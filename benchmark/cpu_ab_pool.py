"""Pool several interleaved rounds of ``cpu_ab.py``: the verdict on a noisy machine.

One round of eight seeds is not enough on this 2-core machine: the same server on the same seed
moves by 20-40 points between rounds (``docs/results-cpu.md``), so a round's median ratio swings
from 0.85x to 1.15x with no change of code.  This pools the runs of two servers over rounds,
pairing each run with the reference server's run of the same round and seed::

    .venv/bin/python benchmark/cpu_ab_pool.py --arrivals bursty --reference stock --server fair \\
        benchmark/results/cpu_user_2026-12-07/ab_bursty12_pool_*/results.json.gz

A round whose server is named otherwise is mapped with ``--alias created=fair`` (every round), or
``PATH#created=fair`` (that round only; the round's own ``fair`` is then left out).  Reported: each
pair's goodput ratio (requests meeting both SLOs per second of the run, as ``--goodput`` in
bench_serving), the median ratio with a bootstrap 90% interval over the pairs, the pairs under 0.9x,
the collapses (a run under 50% where the reference met >= 90%), the requests meeting both SLOs
pooled over every run, and the medians of P99 TTFT and P99 TBT.  The rounds should share the rate,
the SLOs and the code; the script refuses rounds whose rate or SLOs differ and names each round's
code, so a mix is seen.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_ab  # noqa: E402
import cpu_user_bench as bench  # noqa: E402

LOW_RATIO = 0.9


def pairs_of(report: dict, arrivals: str, reference: str, server: str, aliases: dict[str, str]) -> list[dict]:
    """The round's runs of ``server`` beside ``reference`` on the same seed (names mapped by
    ``aliases``); none if the round lacks either."""
    block = report.get("arrivals", {}).get(arrivals)
    if block is None:
        return []
    out = []
    for row in block["runs"]:
        runs = {aliases.get(name, name): run for name, run in row.items() if name != "seed"}
        if reference in runs and server in runs:
            out.append({"seed": row["seed"], "reference": runs[reference], "server": runs[server]})
    return out


def pool(rounds: list[tuple[str, dict]], arrivals: str, reference: str, server: str,
         aliases: dict[str, str], round_aliases: list[dict[str, str]] | None = None) -> dict:
    """Every pair of every round, and the pooled verdict (module docstring).  ``round_aliases[i]``
    maps names of round ``i`` only; a name it maps onto is left out of that round."""
    rows, settings = [], set()
    for index, (label, report) in enumerate(rounds):
        own = (round_aliases or [{}] * len(rounds))[index]
        names = {**aliases, **{taken: f"{taken} (left out)" for taken in own.values()}, **own}
        pairs = pairs_of(report, arrivals, reference, server, names)
        if not pairs:
            continue
        block = report["arrivals"][arrivals]
        settings.add((block["rate_rps"], report["ttft_slo_s"], report["tpot_slo_s"], report["requests"]))
        codes = {names.get(name, name): (entry.get("code") or {}).get("commit")
                 for name, entry in report.get("servers", {}).items()}
        for pair in pairs:
            ref, run = pair["reference"], pair["server"]
            ratio = run["goodput_rps"] / ref["goodput_rps"] if ref["goodput_rps"] > 0 else float("inf")
            rows.append({"round": label, "date_utc": report.get("date_utc"), "seed": pair["seed"],
                         "code": {reference: codes.get(reference), server: codes.get(server)},
                         "reference_attainment": ref["slo_attainment"], "attainment": run["slo_attainment"],
                         "goodput_ratio": ratio,
                         "collapse": bench.is_collapse(run["slo_attainment"], ref["slo_attainment"]),
                         "reference_met": round(ref["slo_attainment"] * ref["requests"]),
                         "met": round(run["slo_attainment"] * run["requests"]), "requests": run["requests"],
                         "reference_ttft_p99_s": ref["ttft_p99_s"], "ttft_p99_s": run["ttft_p99_s"],
                         "reference_itl_p99_s": ref["itl_p99_s"], "itl_p99_s": run["itl_p99_s"]})
    if len(settings) > 1:
        raise ValueError(f"the rounds differ in rate, SLOs or requests a run: {sorted(settings)}")
    if not rows:
        return {"pairs": [], "summary": None}
    ratios = [row["goodput_ratio"] for row in rows]
    low, high = bench.bootstrap_median_interval(ratios)
    summary = {
        "pairs": len(rows), "rounds": len({row["round"] for row in rows}),
        "median_goodput_ratio": statistics.median(ratios), "median_ratio_interval_90": [low, high],
        "pairs_under_0_9": sum(ratio < LOW_RATIO for ratio in ratios),
        "pairs_ahead": sum(ratio > 1.0 for ratio in ratios),
        "collapses": sum(row["collapse"] for row in rows),
        "reference_met": sum(row["reference_met"] for row in rows), "met": sum(row["met"] for row in rows),
        "requests": sum(row["requests"] for row in rows),
        "reference_median_attainment": statistics.median(row["reference_attainment"] for row in rows),
        "median_attainment": statistics.median(row["attainment"] for row in rows),
        "reference_ttft_p99_s": statistics.median(row["reference_ttft_p99_s"] for row in rows),
        "ttft_p99_s": statistics.median(row["ttft_p99_s"] for row in rows),
        "reference_itl_p99_s": statistics.median(row["reference_itl_p99_s"] for row in rows),
        "itl_p99_s": statistics.median(row["itl_p99_s"] for row in rows),
    }
    return {"pairs": rows, "summary": summary}


def render(result: dict, reference: str, server: str, arrivals: str) -> str:
    summary = result["summary"]
    if summary is None:
        return f"no round has both {reference} and {server} under {arrivals} arrivals"
    lines = ["| round | seed | " + f"{reference} | {server} | goodput ratio |", "|---|---|---|---|---|"]
    for row in result["pairs"]:
        lines.append(f"| {row['round']} | {row['seed']} | {100 * row['reference_attainment']:.0f}% |"
                     f" {100 * row['attainment']:.0f}% | {row['goodput_ratio']:.2f} |")
    low, high = summary["median_ratio_interval_90"]
    lines += ["", f"{summary['pairs']} pairs from {summary['rounds']} rounds, {arrivals}: median goodput ratio"
              f" {server} / {reference} **{summary['median_goodput_ratio']:.2f}** (90% bootstrap interval"
              f" {low:.2f}-{high:.2f}); {summary['pairs_ahead']} pairs ahead, {summary['pairs_under_0_9']} under"
              f" {LOW_RATIO}x; collapses {summary['collapses']}; median attainment"
              f" {100 * summary['median_attainment']:.0f}% against {100 * summary['reference_median_attainment']:.0f}%;"
              f" both SLOs met, pooled: {summary['met']} against {summary['reference_met']} of {summary['requests']};"
              f" P99 TTFT {summary['ttft_p99_s']:.2f} s against {summary['reference_ttft_p99_s']:.2f} s,"
              f" P99 TBT {1000 * summary['itl_p99_s']:.0f} ms against {1000 * summary['reference_itl_p99_s']:.0f} ms"
              " (medians over runs)"]
    return "\n".join(lines)


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cpu_ab_pool.py", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", metavar="PATH[#NAME=AS,...]",
                        help="cpu_ab.py's results.json(.gz), one per round, with this round's own aliases")
    parser.add_argument("--arrivals", default="bursty", help="poisson or bursty")
    parser.add_argument("--reference", default="stock", help="the server every ratio is over")
    parser.add_argument("--server", default="fair")
    parser.add_argument("--alias", action="append", default=[], metavar="NAME=AS",
                        help="read a round's server NAME as AS (e.g. created=fair)")
    parser.add_argument("--out", help="write every pair and the summary here (JSON)")
    args = parser.parse_args(argv)
    try:
        args.aliases = dict(alias.split("=", 1) for alias in args.alias)
    except ValueError:
        parser.error("--alias takes NAME=AS")
    args.paths, args.round_aliases = [], []
    for spec in args.results:
        path, _, own = spec.partition("#")
        try:
            args.round_aliases.append(dict(alias.split("=", 1) for alias in own.split(",")) if own else {})
        except ValueError:
            parser.error(f"{spec!r}: a round's aliases are PATH#NAME=AS[,NAME=AS]")
        args.paths.append(path)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        rounds = [(Path(path).parent.name, cpu_ab.read_results(path)) for path in args.paths]
        result = pool(rounds, args.arrivals, args.reference, args.server, args.aliases, args.round_aliases)
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"cpu_ab_pool: {exc}") from None
    print(render(result, args.reference, args.server, args.arrivals))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["summary"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
