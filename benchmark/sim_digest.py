"""Digests of simulated runs, to check that a change to the simulator or the policies (a speed-up,
a refactoring) leaves every result bit for bit as it was.

    .venv/bin/python benchmark/sim_digest.py --out /tmp/before.json
    ... change the code ...
    .venv/bin/python benchmark/sim_digest.py --compare /tmp/before.json

Each case simulates one workload (every peer and FairBatching, both A100 presets near their
capacity, two seeds, bursty arrivals, SLO classes, engine noise, an early-stopping probe and a
4-replica cluster behind the PAB router with admission control) and hashes every per-request
outcome (first token, finish, tokens, worst envelope slack, longest gap, rejection, replica), every
time between tokens, the run's counters and each policy's final cost model.  ``exact`` hashes the
float64 bytes; ``rounded`` the values rounded to 1e-9 (what a pinned test may compare across
machines).  Wall-clock fields (``wall_s``, ``plan_cpu_s``) are left out: they are not results.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))

from sglang_fair.policy import CostModel, load_cost_model  # noqa: E402
from sglang_fair.policy.registry import build_policy  # noqa: E402
from sglang_fair.sim.engine import EngineConfig, simulate  # noqa: E402
from sglang_fair.sim.metrics import Criteria  # noqa: E402
from sglang_fair.sim.workload import load_trace, make_workload, parse_slo_classes, shared_dir  # noqa: E402

#: policy name, options (Sarathi at the budget its sweep favours on these presets).
POLICIES = (("fairbatching", {}), ("sarathi", {"token_budget": 1024}), ("sglang", {}), ("slai", {}),
            ("vtc", {}))
#: cost model, a rate near its single-replica capacity (requests per second).
PRESETS = (("a100-llama3-8b", 7.0), ("a100-llama2-7b", 4.3))


def cases(num_requests: int) -> list[dict]:
    out = []
    for model, rate in PRESETS:
        for policy, options in POLICIES:
            for seed in (0, 1):
                out.append(dict(model=model, rate=rate, policy=policy, options=options, seed=seed))
    base = dict(model="a100-llama3-8b", rate=7.0, seed=0)
    for policy in ("fairbatching", "sarathi"):
        options = {"token_budget": 1024} if policy == "sarathi" else {}
        out.append(dict(base, policy=policy, options=options, arrival="gamma"))
        out.append(dict(base, policy=policy, options=options, slo_classes="1:0.05:0.5,5:0.2:0.5"))
        out.append(dict(base, policy=policy, options=options, noise_sigma=0.15))
        out.append(dict(base, policy=policy, options=options, rate=9.0, early_stop=True))
        # The engine slower than the model planned with: the online model refits, and re-anchors.
        out.append(dict(base, policy=policy, options=options, true_scale=1.6, noise_sigma=0.05))
    out.append(dict(base, policy="vtc", options={}, clients=4, client_skew=1.0))
    out.append(dict(base, policy="fairbatching", options={"client_fairness": True}, clients=4, client_skew=1.0))
    out.append(dict(base, policy="fairbatching", options={}, rate=26.0, replicas=4, router="pab",
                    admission_control=True, load_poll_s=1.0, retries=3, arrival="gamma"))
    out.append(dict(base, policy="fairbatching", options={}, rate=26.0, replicas=4, router="least_load",
                    load_poll_s=1.0))
    for case in out:
        case["num_requests"] = num_requests
    return out


def _label(case: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in case.items() if k != "num_requests")


def run_case(case: dict, trace) -> dict:
    """The digests of one case (see the module docstring)."""
    model = load_cost_model(case["model"])
    config = EngineConfig.for_cost_model(model)
    if case.get("noise_sigma"):
        config.noise_sigma = case["noise_sigma"]
    if case.get("true_scale"):
        config.true_cost_model = CostModel(*(model.coefficients() * case["true_scale"]), name="true")
    workload = make_workload(
        trace, num_requests=case["num_requests"], rate_rps=case["rate"], seed=case["seed"],
        arrival=case.get("arrival", "poisson"), burstiness_cv=3.0,
        slo_classes=parse_slo_classes(case["slo_classes"]) if case.get("slo_classes") else None,
        clients=case.get("clients", 1), client_skew=case.get("client_skew", 0.0))
    settings = {"default_ttft_slo_s": float(np.median(workload.ttft_slo_s))}
    policies = []

    def factory():
        policies.append(build_policy(case["policy"], model, settings=settings, options=case["options"]))
        return policies[-1]

    stop = (None, None)
    criteria = Criteria()
    if case.get("early_stop"):
        stop = criteria.stop_after(len(workload) - int(len(workload) * 0.1))
    result = simulate(
        workload, factory, replicas=case.get("replicas", 1), config=config,
        router=case.get("router", "round_robin"), admission_control=case.get("admission_control", False),
        load_poll_s=case.get("load_poll_s", 0.0), retries=case.get("retries", 0), seed=case["seed"],
        stop_after_misses=stop[0], stop_after_tail_misses=stop[1], max_ttft_factor=criteria.max_ttft_p99_factor)
    floats = [result.first_token_s, result.finish_s, result.worst_slack_s, result.max_tbt_s, result.tbt_gaps_s,
              np.array([result.busy_s, result.end_s])]
    floats += [np.asarray(p.online.current.coefficients() if p.online else p.cost_model.coefficients())
               for p in policies]
    ints = [result.generated_tokens, result.rejected.astype(np.int64), result.replica, result.tbt_counts,
            np.array([result.iterations, result.skipped_decodes, result.urgent_decodes, result.retractions,
                      int(result.stopped_early)], dtype=np.int64)]
    ints += [np.array([p.online.refits, p.online.rejected, p.online.regime_changes], dtype=np.int64)
             for p in policies if p.online]
    exact, rounded = hashlib.sha256(), hashlib.sha256()
    for values in floats:
        values = np.ascontiguousarray(values, dtype=np.float64)
        exact.update(values.tobytes())
        rounded.update(np.round(values, 9).tobytes())
    for values in ints:
        values = np.ascontiguousarray(values, dtype=np.int64)
        exact.update(values.tobytes())
        rounded.update(values.tobytes())
    return {"exact": exact.hexdigest()[:24], "rounded": rounded.hexdigest()[:24],
            "iterations": result.iterations, "end_s": result.end_s,
            "refits": sum(p.online.refits for p in policies if p.online),
            "regime_changes": sum(p.online.regime_changes for p in policies if p.online)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-requests", type=int, default=2000)
    parser.add_argument("--out", default=None, help="write the digests here (JSON)")
    parser.add_argument("--compare", default=None, help="compare with digests written earlier; exit 1 on a difference")
    parser.add_argument("--only", default=None, help="only cases whose label contains this")
    args = parser.parse_args()
    trace = load_trace(shared_dir() / "traces" / "azure_conv_2023.csv")
    reference = json.loads(Path(args.compare).read_text()) if args.compare else None
    digests = {}
    differ = 0
    for case in cases(args.num_requests):
        label = _label(case)
        if args.only and args.only not in label:
            continue
        digests[label] = run_case(case, trace)
        verdict = ""
        if reference is not None:
            same = reference.get(label, {}).get("exact") == digests[label]["exact"]
            differ += not same
            verdict = "same" if same else "DIFFERS"
        d = digests[label]
        print(f"{d['exact']} {d['iterations']:>7} {d['refits']:>4} {d['regime_changes']:>2} {verdict:<8}{label}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    if reference is not None:
        print(f"{differ} of {len(digests)} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
