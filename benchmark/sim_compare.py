"""The simulated comparison of FairBatching with its peers (docs/results-sim.md), as the honest
capacity definition judges it.

For every scenario and seed, every scheduler's tail-bounded capacity is binary-searched with
``sglang_fair.sim.capacity.search_capacity`` (the code behind ``python -m sglang_fair.sim capacity``):
>= 90% of the measured requests meet TTFT and mean TPOT, and the P99 of TTFT / TTFT-SLO is <= 5.
The peers are tuned as their users would: Sarathi, SLAI and VTC over token budgets 128 .. 4096,
stock SGLang over chunk sizes 512 .. 8192 with mixed chunk off and on; the best setting per seed is
reported.  FairBatching runs with its defaults.  Then, per seed, FairBatching and the best Sarathi
are run at Sarathi's capacity to compare their TTFT tails, and the report lists each setting's
saturation throughput and work bound (the physical limit) beside the capacities.

    .venv/bin/python benchmark/sim_compare.py --scenarios llama3-poisson --seeds 0,1,2
    .venv/bin/python benchmark/sim_compare.py --list                  # the scenarios
    .venv/bin/python benchmark/sim_compare.py --report-only          # tables from the saved searches

Every finished search is appended to ``--store`` (JSON lines) and reused by later runs with the
same settings, so a long run can be stopped and resumed; ``--out`` gets the summary (strict JSON)
and ``--markdown`` the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))

from sglang_fair import strict_json  # noqa: E402
from sglang_fair.policy import load_cost_model  # noqa: E402
from sglang_fair.sim.capacity import (  # noqa: E402
    Variant,
    default_variants,
    heaviest_stretch,
    run_probe,
    saturation_rps,
    search_capacity,
    work_bound,
)
from sglang_fair.sim.engine import EngineConfig  # noqa: E402
from sglang_fair.sim.metrics import Criteria  # noqa: E402
from sglang_fair.sim.workload import load_trace, make_workload, parse_slo_classes, shared_dir  # noqa: E402

ALL_POLICIES = ("sglang", "sarathi", "slai", "vtc", "fairbatching")
#: Requests in the stretch whose work bound is reported beside the whole trace's (per replica): at
#: the capacities here about 150 s of arrivals, long against the 10 s tail bound.
STRETCH_REQUESTS = 1000
#: The cluster comparison: FairBatching routed by PAB with admission control (rejections retried
#: elsewhere), FairBatching by least load, and the peers as their users route them.
_CLUSTER_MEMBERS = (("fairbatching", "pab", True), ("fairbatching", "least_load", False),
                    ("sarathi", "round_robin", False), ("sglang", "round_robin", False))

_RR_MEMBERS = (("fairbatching", "round_robin", False), ("fairbatching", "round_robin", True))

#: FairBatching routed without admission control by its PAB, and by outstanding tokens charged with
#: each prompt sent between polls (SGLang's own data-parallel controller, ``--load-balance-method
#: total_tokens``), the charging the PAB router does too: which signal routes best, apart from the
#: rejections admission control adds.
_ROUTER_MEMBERS = (("fairbatching", "pab", False), ("fairbatching", "total_tokens", False))


@dataclass(frozen=True)
class Scenario:
    """One setting of the comparison: engine, workload and SLOs."""

    cost_model: str
    trace: str = "azure_conv_2023.csv"
    ttft_slo_s: float = 2.0
    tpot_slo_s: float = 0.1
    slo_classes: str | None = None
    arrival: str = "poisson"
    burstiness: float = 3.0
    num_requests: int = 8000
    policies: tuple[str, ...] = ALL_POLICIES
    note: str = ""
    #: A cluster: replicas behind a router as sglang-router runs one (loads as of its last poll,
    #: rejections retried on the other replicas); members are (policy, router, admission control).
    replicas: int = 1
    members: tuple[tuple[str, str, bool], ...] = ()
    load_poll_s: float = 0.0

    def variants(self) -> list[Variant]:
        members = self.members or tuple((policy, "round_robin", False) for policy in self.policies)
        out = []
        for policy, router, admission_control in members:
            out += default_variants(policy, router, self.replicas, {}, sweep=True,
                                    admission_control=admission_control,
                                    load_poll_s=self.load_poll_s if router != "round_robin" else 0.0,
                                    retries=self.replicas - 1 if admission_control else 0)
        return out

    def workload_options(self) -> dict:
        return {"arrival": self.arrival, "burstiness_cv": self.burstiness,
                "slo_classes": parse_slo_classes(self.slo_classes) if self.slo_classes else None}


SCENARIOS = {
    # The acceptance settings of the honest-capacity issue.
    "llama3-poisson": Scenario("a100-llama3-8b", note="GQA, 425k-token pool: compute-bound"),
    "llama3-gamma3": Scenario("a100-llama3-8b", arrival="gamma", note="bursty arrivals, CV 3"),
    "llama3-classes": Scenario("a100-llama3-8b", slo_classes="1:0.05:0.5,5:0.2:0.5",
                               note="half strict (1 s / 50 ms), half relaxed (5 s / 200 ms)"),
    "llama2-poisson": Scenario("a100-llama2-7b", note="MHA, 111k-token pool: KV-bound"),
    # Other traces, presets and SLOs, so that no rule is tuned to the settings above.
    "llama3-sharegpt": Scenario("a100-llama3-8b", trace="sharegpt_8k_lengths.csv", policies=("sarathi", "fairbatching"),
                                note="ShareGPT lengths (longer prompts and outputs)"),
    "llama3-1s": Scenario("a100-llama3-8b", ttft_slo_s=1.0, tpot_slo_s=0.05, policies=("sarathi", "fairbatching"),
                          note="tight SLOs"),
    "h100-llama2-poisson": Scenario("h100-llama2-7b", policies=("sarathi", "fairbatching"),
                                    note="another GPU, KV-bound"),
    "llama2-gamma3": Scenario("a100-llama2-7b", arrival="gamma", policies=("sarathi", "fairbatching"),
                              note="bursty, KV-bound"),
    # Four replicas behind a router that polls loads every 30 s (sglang-router 0.3.2's default).
    "cluster4-poisson": Scenario("a100-llama3-8b", replicas=4, load_poll_s=30.0, members=_CLUSTER_MEMBERS,
                                 note="4 replicas, loads 30 s stale"),
    "cluster4-gamma3": Scenario("a100-llama3-8b", arrival="gamma", replicas=4, load_poll_s=30.0,
                                members=_CLUSTER_MEMBERS, note="4 replicas, bursty, loads 30 s stale"),
    # FairBatching behind the router users already run (round robin: no load to be stale), with
    # and without admission control; the peers' round-robin rows are the scenarios above.
    "cluster4-gamma3-rr": Scenario("a100-llama3-8b", arrival="gamma", replicas=4, members=_RR_MEMBERS,
                                   note="4 replicas, bursty, FairBatching round robin"),
    "cluster4-poisson-rr": Scenario("a100-llama3-8b", replicas=4, members=_RR_MEMBERS,
                                    note="4 replicas, FairBatching round robin"),
    "cluster4-gamma3-poll1s": Scenario("a100-llama3-8b", arrival="gamma", replicas=4, load_poll_s=1.0,
                                       members=_CLUSTER_MEMBERS,
                                       note="4 replicas, bursty, loads 1 s stale (--worker-startup-check-interval 1)"),
    "cluster4-gamma3-routers": Scenario("a100-llama3-8b", arrival="gamma", replicas=4, load_poll_s=30.0,
                                        members=_ROUTER_MEMBERS, note="4 replicas, bursty, loads 30 s stale"),
    "cluster4-gamma3-routers-poll1s": Scenario("a100-llama3-8b", arrival="gamma", replicas=4, load_poll_s=1.0,
                                               members=_ROUTER_MEMBERS, note="4 replicas, bursty, loads 1 s stale"),
    "cluster4-poisson-routers": Scenario("a100-llama3-8b", replicas=4, load_poll_s=30.0, members=_ROUTER_MEMBERS,
                                         note="4 replicas, loads 30 s stale"),
}


#: The scenarios as defined, before ``--policies`` narrows them: a search's key names the scenario
#: with its full member list, so a run over a subset of the policies stores its searches where the
#: full report looks them up (which members run does not change any one search).
_DEFINED = dict(SCENARIOS)


def _key(name: str, scenario: Scenario, seed: int, variant: Variant, tolerance: float) -> str:
    defined = _DEFINED.get(name, scenario)
    scenario = dataclasses.replace(scenario, policies=defined.policies, members=defined.members)
    text = json.dumps([name, asdict(scenario), seed, variant.policy, variant.router, variant.replicas,
                       sorted(variant.options.items()), variant.admission_control, variant.load_poll_s,
                       variant.retries, tolerance], default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _engine(scenario: Scenario):
    model = load_cost_model(scenario.cost_model)
    return model, EngineConfig.for_cost_model(model), load_trace(shared_dir() / "traces" / scenario.trace)


def _search(payload):
    key, name, scenario, seed, variant, tolerance = payload
    model, config, trace = _engine(scenario)
    bound = work_bound(trace, scenario.num_requests, model, config, scenario.replicas)
    started = time.time()
    out = search_capacity(variant, trace, model, config, ttft_slo_s=scenario.ttft_slo_s,
                          tpot_slo_s=scenario.tpot_slo_s, num_requests=scenario.num_requests, seed=seed,
                          upper_rps=bound["rps"], criteria=Criteria(), tolerance=tolerance,
                          workload_options=scenario.workload_options())
    out.pop("curve", None)
    return key, {"scenario": name, "seed": seed, "search_s": time.time() - started, **out}


def _probe(payload):
    scenario, seed, variant, rate = payload
    model, config, trace = _engine(scenario)
    workload = make_workload(trace, num_requests=scenario.num_requests, rate_rps=rate, seed=seed,
                             ttft_slo_s=scenario.ttft_slo_s, tpot_slo_s=scenario.tpot_slo_s,
                             **scenario.workload_options())
    summary, _ = run_probe(variant, workload, model, config, seed=seed)
    keep = ("attainment", "ttft_p50_s", "ttft_p99_s", "ttft_ratio_p99", "tbt_p99_s", "tpot_p99_s")
    return {key: summary[key] for key in keep}


def _load_store(path: Path) -> dict:
    store = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                store[entry["key"]] = entry["result"]
    return store


def _run(payloads, jobs: int, store: dict, store_path: Path) -> None:
    todo = [p for p in payloads if p[0] not in store]
    if not todo:
        return
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc="searches", unit="search", file=sys.stderr, dynamic_ncols=True)
    with ProcessPoolExecutor(max_workers=jobs) as pool, open(store_path, "a") as handle:
        futures = [pool.submit(_search, p) for p in todo]
        for future in as_completed(futures):
            key, result = future.result()
            store[key] = result
            handle.write(json.dumps({"key": key, "result": strict_json.to_json_types(result)}) + "\n")
            handle.flush()
            bar.set_postfix_str(f"{result['scenario']} s{result['seed']} {result['policy']} "
                                f"{result['capacity_rps']:.2f}")
            bar.update(1)
    bar.close()


def _best(results: list[dict]) -> dict:
    return max(results, key=lambda r: r["capacity_rps"])


def _setting(result: dict) -> str:
    options = result["options"]
    if "token_budget" in options:
        return str(options["token_budget"])
    if "chunked_prefill_size" in options:
        return f"{options['chunked_prefill_size']}{'+mixed' if options.get('mixed_chunk') else ''}"
    return "defaults"


def _member(variant: Variant) -> str:
    """A scheduler of the comparison: the policy, and on a cluster its router (+ac: admission control)."""
    if variant.replicas == 1:
        return variant.policy
    return f"{variant.policy}+{variant.router}" + ("+ac" if variant.admission_control else "")


def _members(scenario: Scenario) -> dict[str, list[Variant]]:
    members: dict[str, list[Variant]] = {}
    for variant in scenario.variants():
        members.setdefault(_member(variant), []).append(variant)
    return members


def _lead_and_peer(members: dict) -> tuple[str | None, str | None]:
    """FairBatching's member and Sarathi's, the pair the ratio is taken on."""
    lead = next((m for m in members if m.startswith("fairbatching")), None)
    peer = next((m for m in members if m.startswith("sarathi")), None)
    return lead, peer


def summarize(scenarios: list[str], seeds: list[int], store: dict, tolerance: float, jobs: int) -> dict:
    summary = {}
    tail_payloads = []
    for name in scenarios:
        scenario = SCENARIOS[name]
        model, config, trace = _engine(scenario)
        bound = work_bound(trace, scenario.num_requests, model, config, scenario.replicas)
        saturation = saturation_rps(trace, scenario.num_requests, model, config, scenario.replicas)
        stretch = heaviest_stretch(trace, scenario.num_requests, model, config, STRETCH_REQUESTS * scenario.replicas,
                                   scenario.replicas)
        members = _members(scenario)
        lead, peer = _lead_and_peer(members)
        entry = {"scenario": asdict(scenario), "work_bound": bound, "heaviest_stretch": stretch,
                 "saturation_rps": saturation,
                 "engine": asdict(config) | {"true_cost_model": None}, "members": list(members),
                 "lead": lead, "peer": peer, "seeds": {}}
        for seed in seeds:
            per_member, best_variant = {}, {}
            for member, variants in members.items():
                found = [(store[_key(name, scenario, seed, v, tolerance)], v) for v in variants
                         if _key(name, scenario, seed, v, tolerance) in store]
                if not found:
                    continue
                best, variant = max(found, key=lambda pair: pair[0]["capacity_rps"])
                best_variant[member] = variant
                per_member[member] = {
                    "capacity_rps": best["capacity_rps"], "setting": _setting(best),
                    **{k: best[k] for k in ("ttft_p50_s", "ttft_p99_s", "tbt_p99_s", "tpot_p99_s",
                                            "ttft_ratio_p99", "ttft_ratio_max", "ttft_over_bound")},
                    "sweep": {_setting(r): r["capacity_rps"] for r, _ in found},
                }
            entry["seeds"][seed] = per_member
            if lead in per_member and peer in per_member:
                rate = per_member[peer]["capacity_rps"]
                for member in (lead, peer):
                    tail_payloads.append((name, seed, member, (scenario, seed, best_variant[member], rate)))
        summary[name] = entry
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        outcomes = list(pool.map(_probe, [p[3] for p in tail_payloads]))
    for (name, seed, member, payload), outcome in zip(tail_payloads, outcomes):
        at = summary[name]["seeds"][seed].setdefault("at_sarathi_capacity", {"rate_rps": payload[3]})
        at[member] = outcome
    for name, entry in summary.items():
        lead, peer = entry["lead"], entry["peer"]
        ratios = {}
        for seed, per_member in entry["seeds"].items():
            if lead in per_member and peer in per_member and per_member[peer]["capacity_rps"] > 0:
                ratios[seed] = per_member[lead]["capacity_rps"] / per_member[peer]["capacity_rps"]
        entry["fairbatching_over_sarathi"] = ratios
        entry["fairbatching_over_sarathi_median"] = statistics.median(ratios.values()) if ratios else math.nan
        peer_caps = [p[peer]["capacity_rps"] for p in entry["seeds"].values() if peer in p]
        if peer_caps:
            entry["sarathi_share_of_work_bound"] = statistics.median(peer_caps) / entry["work_bound"]["rps"]
            entry["headroom_over_sarathi"] = entry["work_bound"]["rps"] / statistics.median(peer_caps)
            entry["stretch_headroom_over_sarathi"] = entry["heaviest_stretch"]["rps"] / statistics.median(peer_caps)
    return summary


def markdown(summary: dict) -> str:
    names = {"sglang": "SGLang stock", "sarathi": "Sarathi-Serve", "slai": "SLAI", "vtc": "VTC",
             "fairbatching": "FairBatching"}

    def title(member: str) -> str:
        policy, _, rest = member.partition("+")
        return names[policy] + (f" + {rest.replace('+ac', ' + admission control')}" if rest else "")
    lines = []
    for name, entry in summary.items():
        scenario = entry["scenario"]
        slo = scenario["slo_classes"] or f"{scenario['ttft_slo_s']:g} s / {scenario['tpot_slo_s']:g} s"
        bound = entry["work_bound"]
        replicas = f"{scenario['replicas']} replicas, " if scenario["replicas"] > 1 else ""
        lines.append(f"### {name}: {replicas}{scenario['cost_model']}, {scenario['trace']}, {slo}, {scenario['arrival']}"
                     f"{' CV ' + format(scenario['burstiness'], 'g') if scenario['arrival'] == 'gamma' else ''},"
                     f" {scenario['num_requests']} requests")
        lines.append("")
        stretch = entry["heaviest_stretch"]
        if "headroom_over_sarathi" in entry:
            sarathi = (f"; best Sarathi reaches {entry['sarathi_share_of_work_bound']:.2f} of the work bound "
                       f"(headroom {entry['headroom_over_sarathi']:.2f}x)")
            stretch_sarathi = f" ({entry['stretch_headroom_over_sarathi']:.2f}x Sarathi)"
        else:  # no Sarathi member in this scenario
            sarathi = stretch_sarathi = ""
        lines.append(f"{scenario['note']}. KV pool {entry['engine']['kv_capacity_tokens']:,} tokens; work bound "
                     f"{bound['rps']:.3f} rps ({bound['binding_limit']}-limited iterations), saturation "
                     f"{entry['saturation_rps']:.3f} rps{sarathi}. Its heaviest stretch of "
                     f"{stretch['rows']:,} consecutive requests (from row {stretch['first_row']:,}) can be served "
                     f"at {stretch['rps']:.3f} rps at best{stretch_sarathi}.")
        lines.append("")
        seeds = sorted(entry["seeds"])
        lines.append("| scheduler | " + " | ".join(f"seed {s}: rps (setting) P99 TTFT / P99 TBT" for s in seeds)
                     + " | median |")
        lines.append("|---|" + "---|" * (len(seeds) + 1))
        for member in entry["members"]:
            cells, caps = [], []
            for seed in seeds:
                result = entry["seeds"][seed].get(member)
                if result is None:
                    cells.append("-")
                    continue
                caps.append(result["capacity_rps"])
                cells.append(f"{result['capacity_rps']:.3f} ({result['setting']}) "
                             f"{result['ttft_p99_s']:.2f} s / {result['tbt_p99_s']:.3f} s")
            median = f"{statistics.median(caps):.3f}" if caps else "-"
            lines.append(f"| {title(member)} | " + " | ".join(cells) + f" | {median} |")
        ratios = entry["fairbatching_over_sarathi"]
        if ratios:
            lines.append("")
            lines.append(f"{title(entry['lead'])} / {title(entry['peer'])}: " + ", ".join(f"{ratios[s]:.3f}" for s in sorted(ratios))
                         + f" (median **{entry['fairbatching_over_sarathi_median']:.3f}**).")
        tails = [(s, entry["seeds"][s]["at_sarathi_capacity"]) for s in seeds if "at_sarathi_capacity" in entry["seeds"][s]]
        if tails:
            lead, peer = entry["lead"], entry["peer"]
            lines.append("At best Sarathi's capacity, P99 TTFT (attainment): " + "; ".join(
                f"seed {s} at {t['rate_rps']:.3f} rps: FairBatching {t[lead]['ttft_p99_s']:.2f} s "
                f"({t[lead]['attainment']:.3f}), Sarathi {t[peer]['ttft_p99_s']:.2f} s "
                f"({t[peer]['attainment']:.3f})" for s, t in tails) + ".")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="llama3-poisson,llama3-gamma3,llama3-classes,llama2-poisson")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--store", default=str(REPO / "benchmark" / "results" / "sim_compare_searches.jsonl"))
    parser.add_argument("--out", default=str(REPO / "benchmark" / "results" / "sim_compare.json"))
    parser.add_argument("--markdown", default=str(REPO / "benchmark" / "results" / "sim_compare.md"))
    parser.add_argument("--num-requests", type=int, default=None, help="override every scenario's (a quick look)")
    parser.add_argument("--policies", default=None, help="override every scenario's, e.g. sarathi,fairbatching")
    parser.add_argument("--report-only", action="store_true", help="no new searches: tables from --store")
    parser.add_argument("--list", action="store_true", help="print the scenarios and exit")
    args = parser.parse_args()
    if args.list:
        for name, scenario in SCENARIOS.items():
            print(f"{name:<22} {scenario}")
        return 0
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)} (see --list)")
    seeds = [int(s) for s in args.seeds.split(",")]
    overrides = {}
    if args.num_requests:
        overrides["num_requests"] = args.num_requests
    if args.policies:
        overrides["policies"] = tuple(p for p in args.policies.split(",") if p)
        overrides["members"] = ()
    if overrides:
        for name in scenarios:
            SCENARIOS[name] = dataclasses.replace(SCENARIOS[name], **overrides)
    store_path = Path(args.store)
    store = _load_store(store_path)
    payloads = []
    for name in scenarios:
        scenario = SCENARIOS[name]
        for seed in seeds:
            for variant in scenario.variants():
                payloads.append((_key(name, scenario, seed, variant, args.tolerance), name, scenario, seed,
                                 variant, args.tolerance))
    started = time.time()
    if not args.report_only:
        _run(payloads, args.jobs, store, store_path)
    summary = summarize(scenarios, seeds, store, args.tolerance, args.jobs)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_average": os.getloadavg(),
              "wall_s": time.time() - started, "definition": "mean", "max_ttft_p99_factor": Criteria().max_ttft_p99_factor,
              "tolerance": args.tolerance, "scenarios": summary}
    strict_json.write(args.out, report)
    text = markdown(summary)
    Path(args.markdown).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
