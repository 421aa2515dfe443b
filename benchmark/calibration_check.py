"""How good and how costly the start-up calibration is, on this machine.

In process (SGLang's real scheduler, the server's default CPU limits: 16384-token KV pool, 4096-token
chunks): each model shape is calibrated ``--repeats`` times from an empty cache; reported are the
fit and held-out MAPE, the time taken, and the time a second start takes to read the cache.  With
``--servers`` it also starts real servers (``python -m sglang_fair.launch_server --batch-policy
fairbatching``) three ways, ``--fair-no-calibration``, calibrating (empty cache) and from the cache,
and reports each start-up time: the calibration's share of start-up.

    python benchmark/calibration_check.py --models tiny,bench --repeats 3 --servers
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_model  # noqa: E402
from sglang_fair import strict_json

REPO = Path(__file__).resolve().parents[1]
SERVER_LIMITS = dict(max_total_tokens=16384, chunked_prefill_size=4096, max_running_requests=2048)


def _model(name: str, out_dir: Path) -> tuple[dict, list[str]]:
    """(build_scheduler kwargs, server flags) for a model shape."""
    if name == "tiny":
        return {}, []
    if name == "bench":
        path = cpu_model.write_model_dir(out_dir / "bench-model")
        return {"model_path": str(path), "dtype": "bfloat16"}, ["--model-path", str(path), "--load-format", "dummy"]
    raise SystemExit(f"unknown model {name!r} (tiny, bench)")


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def in_process(name: str, kwargs: dict, repeats: int, out_dir: Path) -> list[dict]:
    from sglang_fair.runtime.calibration import startup_calibration
    from sglang_fair.runtime.inproc import build_scheduler

    rows = []
    for repeat in range(repeats):
        cache = out_dir / f"cache-{name}-{repeat}"
        os.environ["SGLANG_FAIR_CALIBRATION_CACHE"] = str(cache)
        load = os.getloadavg()[0]
        scheduler = build_scheduler("fairbatching", **SERVER_LIMITS, **kwargs)
        calibration = scheduler.fair_calibration
        hit = startup_calibration(scheduler)  # what a restart does (a cut-short fit is not cached)
        row = {"model": name, "repeat": repeat, "status": calibration.status, "reason": calibration.reason,
               "fit_mape": calibration.fit_mape, "holdout_mape": calibration.holdout_mape,
               "seconds": round(calibration.seconds, 2), "iterations": calibration.iterations,
               "shapes": len(calibration.table),
               "cache_hit_seconds": round(hit.seconds, 4) if hit.cache_hit else None, "load_1m_before": round(load, 2),
               "load_1m_after": round(os.getloadavg()[0], 2),
               "worst_holdout": max((abs(r["predicted_ms"] / r["measured_ms"] - 1), r["shape"])
                                    for r in calibration.table if r["holdout"]) if calibration.table else None}
        print(json.dumps(row), flush=True)
        rows.append(row)
        del scheduler
    return rows


def _start(args: list[str], env: dict, log: Path) -> dict:
    """Start a server, read its calibration from /fair/state, stop it: {startup_s, calibration}."""
    import requests

    sys.path.insert(0, str(REPO / "test"))
    from conftest import start_server  # the tests' launcher: waits until /health_generate answers

    saved = dict(os.environ)
    os.environ.update(env)
    try:
        handle = start_server(args, log)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        state = requests.get(f"{handle.base_url}/fair/state", timeout=30).json()["dp_ranks"][0]
        calibration = state["runtime"].get("calibration") or {}
        return {"startup_s": round(handle.startup_s, 1),
                "calibration": {k: calibration.get(k) for k in ("status", "reason", "seconds", "cache_hit",
                                                                "fit_mape", "holdout_mape")}}
    finally:
        handle.stop()


def servers(name: str, flags: list[str], out_dir: Path) -> dict:
    cache = out_dir / f"server-cache-{name}"
    base = ["--batch-policy", "fairbatching", *flags]
    env = {"SGLANG_FAIR_CALIBRATION_CACHE": str(cache)}
    result = {"model": name, "load_before": _uptime()}
    result["no_calibration_s"] = _start([*base, "--fair-no-calibration"], env, out_dir / "logs")
    result["calibrating_s"] = _start(base, env, out_dir / "logs")
    result["from_cache_s"] = _start(base, env, out_dir / "logs")
    result["load_after"] = _uptime()
    result["calibration_adds_s"] = result["calibrating_s"]["startup_s"] - result["no_calibration_s"]["startup_s"]
    print(json.dumps(result), flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,bench")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--servers", action="store_true", help="also time real server start-ups")
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="sglang_fair_calibration_check_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "load_start": _uptime(),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "in_process": [], "servers": []}
    for name in args.models.split(","):
        kwargs, flags = _model(name, out_dir)
        report["in_process"] += in_process(name, kwargs, args.repeats, out_dir)
        if args.servers:
            report["servers"].append(servers(name, flags, out_dir))
    report["load_end"] = _uptime()
    lines = [f"Start-up calibration check, {report['date_utc']}; load at start {report['load_start']!r},"
             f" at end {report['load_end']!r}", "",
             "| model | runs | load 1 min | fit MAPE median [min..max] | held-out MAPE median [min..max] | seconds median [min..max] | cut short | restart from the cache, s |",
             "|---|---|---|---|---|---|---|---|"]
    for name in args.models.split(","):
        rows = [r for r in report["in_process"] if r["model"] == name and r["holdout_mape"] is not None]
        if not rows:
            lines.append(f"| {name} | 0 | - | - | - | - | - | - |")
            continue

        def span(key, scale=100.0, fmt="{:.1f}"):
            values = [r[key] * scale for r in rows]
            return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}..{fmt.format(max(values))}]"

        hits = [r["cache_hit_seconds"] for r in rows if r["cache_hit_seconds"] is not None]
        loads = [r["load_1m_before"] for r in rows]
        lines.append(f"| {name} | {len(rows)} | {min(loads):.1f}-{max(loads):.1f} | {span('fit_mape')}% |"
                     f" {span('holdout_mape')}% | {span('seconds', 1.0)} |"
                     f" {sum(bool(r['reason']) for r in rows)} of {len(rows)} |"
                     f" {f'{max(hits):.3f}' if hits else 'not cached'} |")
    for result in report["servers"]:
        parts = []
        for key, label in (("no_calibration_s", "--fair-no-calibration"), ("calibrating_s", "first start"),
                           ("from_cache_s", "restart")):
            start = result[key]
            cal = start["calibration"]
            parts.append(f"{label} {start['startup_s']:.1f} s ({cal.get('status')}"
                         f"{', ' + str(cal.get('reason')) if cal.get('reason') else ''})")
        lines.append(f"\nserver start-up, {result['model']} (load {result['load_before'].split('average:')[-1].strip()}):"
                     f" " + "; ".join(parts))
    text = "\n".join(lines)
    strict_json.write(out_dir / "results.json", report, other=str)
    (out_dir / "results.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
