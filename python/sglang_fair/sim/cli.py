"""``python -m sglang_fair.sim {capacity,run}``: capacity search and single runs from the shell.

Errors in the input (unknown policy, router or cost model, missing trace, bad SLO) end the program
with exit status 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed

from .. import strict_json
from ..policy.cost_model import CostModelError, load_cost_model
from ..policy.registry import POLICY_NAMES, make_policy, parse_option_value
from ..policy.request import validate_slo
from .capacity import Variant, default_variants, run_probe, saturation_rps, search_capacity, work_bound
from .engine import ROUTER_NAMES, EngineConfig
from .metrics import DEFINITIONS, Criteria
from .workload import DEFAULT_MAX_NEW_TOKENS, TraceError, load_trace, make_workload, parse_slo_classes

PROG = "python -m sglang_fair.sim"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints the whole usage otherwise)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def _add_common(parser: argparse.ArgumentParser, *, num_requests_default: int) -> None:
    parser.add_argument("--trace", required=True, help="CSV: Azure (TIMESTAMP,ContextTokens,GeneratedTokens) or ShareGPT lengths")
    parser.add_argument("--cost-model", default="a100-llama2-7b", help="preset name or JSON file (the policies' model)")
    parser.add_argument("--true-cost-model", default=None, help="the engine's real timing if it differs (preset or JSON)")
    parser.add_argument("--noise", type=float, default=0.0, help="log-normal sigma of iteration-time noise (0 = none)")
    parser.add_argument("--noise-correlation", type=float, default=0.0,
                        help="lag-1 correlation of that noise between consecutive iterations (AR(1); 0 = independent)")
    parser.add_argument("--ttft-slo", type=float, default=2.0, help="seconds")
    parser.add_argument("--tpot-slo", type=float, default=0.1, help="seconds")
    parser.add_argument("--slo-classes", default=None, help="TTFT:TPOT:SHARE,... overriding --ttft-slo/--tpot-slo per request")
    parser.add_argument("--policies", default="fairbatching,sarathi,sglang", help=f"comma list of {', '.join(POLICY_NAMES)}")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--routers", default="round_robin", help=f"comma list of {', '.join(ROUTER_NAMES)}")
    parser.add_argument("--admission-control", action="store_true", help="reject requests no replica has PAB for")
    parser.add_argument("--load-poll-s", type=float, default=0.0, metavar="SECONDS",
                        help="the router reads replica loads as of its last poll this often (sglang-router "
                             "0.3.2: 30, or --worker-startup-check-interval); 0: always fresh")
    parser.add_argument("--router-retries", type=int, default=0, metavar="N",
                        help="with --admission-control: other replicas a rejected request is tried on")
    parser.add_argument("--option", action="append", default=[], metavar="POLICY.KEY=VALUE",
                        help="policy option, e.g. sarathi.token_budget=1024 (repeatable)")
    parser.add_argument("--num-requests", type=int, default=num_requests_default, help="first N trace rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arrival", choices=("poisson", "gamma"), default="poisson")
    parser.add_argument("--burstiness", type=float, default=2.0, help="gamma arrivals: coefficient of variation")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--client-skew", type=float, default=0.0, help="Zipf exponent of client shares")
    parser.add_argument("--max-new-tokens", default=str(DEFAULT_MAX_NEW_TOKENS), metavar="N|trace",
                        help="max_new_tokens every request is sent with (all a server knows of its length;"
                             " requests still end at their true length), or 'trace' for each request's own length")
    parser.add_argument("--kv-capacity-tokens", type=int, default=None,
                        help="KV pool (default: the cost-model preset's default-server pool, else "
                             f"{EngineConfig.kv_capacity_tokens})")
    parser.add_argument("--max-running-requests", type=int, default=None,
                        help=f"default: the preset's, else {EngineConfig.max_running_requests}")
    parser.add_argument("--max-prefill-tokens", type=int, default=None,
                        help=f"default: the preset's, else {EngineConfig.max_prefill_tokens}")
    parser.add_argument("--definition", choices=DEFINITIONS, default="mean",
                        help="SLO attainment judged by mean TPOT (default) or by the envelope (every token by its deadline)")
    parser.add_argument("--max-ttft-p99-factor", type=float, default=Criteria.max_ttft_p99_factor, metavar="F",
                        help="within capacity only while the P99 of TTFT / TTFT-SLO is <= F (0: no tail bound)")
    parser.add_argument("--json", default=None, help="write results as JSON here")
    parser.add_argument("--plot", default=None, help="write a PNG here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Simulate FairBatching and its peers on a cost-model engine.")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser, metavar="{capacity,run}")
    cap = verbs.add_parser("capacity", help="binary-search each policy's capacity (>= target attainment)")
    _add_common(cap, num_requests_default=2000)
    cap.add_argument("--target", type=float, default=0.9, help="attainment that defines capacity")
    cap.add_argument("--tolerance", type=float, default=0.01, help="relative width of the final rate bracket")
    cap.add_argument("--no-sweep", action="store_true", help="do not sweep peers' token budgets / SGLang settings")
    cap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="parallel searches")
    run = verbs.add_parser("run", help="simulate one arrival rate (or the trace's own timestamps)")
    _add_common(run, num_requests_default=2000)
    run.add_argument("--rate", type=float, default=None, help="Poisson/gamma arrival rate, requests/s")
    run.add_argument("--replay-timestamps", action="store_true", help="use the trace's arrival times")
    run.add_argument("--time-scale", type=float, default=1.0, help="with --replay-timestamps: speed-up factor")
    return parser


def _parse_options(items: list[str], policies: list[str]) -> dict[str, dict]:
    options: dict[str, dict] = {p: {} for p in policies}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise UsageError(f"--option: expected POLICY.KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        policy, name = key.split(".", 1)
        if policy not in POLICY_NAMES:
            raise UsageError(f"--option: unknown policy {policy!r} (choose from {', '.join(POLICY_NAMES)})")
        try:
            value = parse_option_value(policy, name, raw)
        except ValueError as exc:
            raise UsageError(f"--option: {exc}") from None
        options.setdefault(policy, {})[name] = value
    return options


def _names(text: str, known: tuple[str, ...], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError(f"--{what}s: empty list")
    for name in names:
        if name not in known:
            raise UsageError(f"unknown {what} {name!r} (choose from {', '.join(known)})")
    return names


def _prepare(args):
    policies = _names(args.policies, POLICY_NAMES, "policy")
    routers = _names(args.routers, ROUTER_NAMES, "router")
    try:
        ttft = validate_slo("--ttft-slo", args.ttft_slo)
        tpot = validate_slo("--tpot-slo", args.tpot_slo)
        slo_classes = parse_slo_classes(args.slo_classes) if args.slo_classes else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for flag, value in (("--replicas", args.replicas), ("--num-requests", args.num_requests),
                        ("--kv-capacity-tokens", args.kv_capacity_tokens),
                        ("--max-running-requests", args.max_running_requests),
                        ("--max-prefill-tokens", args.max_prefill_tokens), ("--clients", args.clients)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    max_new_tokens = _max_new_tokens(args.max_new_tokens)
    try:
        criteria = Criteria(getattr(args, "target", 0.9), args.definition, args.max_ttft_p99_factor)
    except ValueError as exc:
        raise UsageError(f"--{str(exc).replace('_', '-')}") from None
    if not (args.noise >= 0 and math.isfinite(args.noise)):
        raise UsageError(f"--noise must be >= 0, got {args.noise}")
    if not 0 <= args.noise_correlation < 1:
        raise UsageError(f"--noise-correlation must be in [0, 1), got {args.noise_correlation}")
    if not (args.load_poll_s >= 0 and math.isfinite(args.load_poll_s)):
        raise UsageError(f"--load-poll-s must be >= 0, got {args.load_poll_s}")
    if args.router_retries < 0:
        raise UsageError(f"--router-retries must be >= 0, got {args.router_retries}")
    try:
        cost_model = load_cost_model(args.cost_model)
        true_model = load_cost_model(args.true_cost_model) if args.true_cost_model else None
    except CostModelError as exc:
        raise UsageError(str(exc).replace("--cost-model", "--true-cost-model") if args.true_cost_model
                         and args.true_cost_model in str(exc) else str(exc)) from None
    options = _parse_options(args.option, policies)
    for policy in policies:
        try:
            make_policy(policy, cost_model, **options.get(policy, {}))
        except (ValueError, TypeError) as exc:
            raise UsageError(f"--option: {exc}") from None
    try:
        trace = load_trace(args.trace)
    except TraceError as exc:
        raise UsageError(str(exc)) from None
    config = EngineConfig.for_cost_model(
        true_model or cost_model, kv_capacity_tokens=args.kv_capacity_tokens,
        max_running_requests=args.max_running_requests, max_prefill_tokens=args.max_prefill_tokens,
        noise_sigma=args.noise, noise_correlation=args.noise_correlation, true_cost_model=true_model)
    workload_options = dict(arrival=args.arrival, burstiness_cv=args.burstiness, clients=args.clients,
                            client_skew=args.client_skew, slo_classes=slo_classes, max_new_tokens=max_new_tokens)
    return policies, routers, ttft, tpot, cost_model, options, trace, config, workload_options, criteria


def _max_new_tokens(text: str):
    if text.strip().lower() == "trace":
        return "trace"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"--max-new-tokens: a positive number of tokens or 'trace', got {text!r}")
    return value


def _progress(total: int, quiet: bool, desc: str):
    if quiet:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="search", file=sys.stderr, dynamic_ncols=True)


def _search_task(payload):
    variant, trace, cost_model, config, kwargs = payload
    return search_capacity(variant, trace, cost_model, config, **kwargs)


def cmd_capacity(args) -> int:
    if not 0 < args.target <= 1:
        raise UsageError(f"--target must be in (0, 1], got {args.target}")
    if not 0 < args.tolerance < 1:
        raise UsageError(f"--tolerance must be in (0, 1), got {args.tolerance}")
    policies, routers, ttft, tpot, cost_model, options, trace, config, wl_opts, criteria = _prepare(args)
    engine_model = config.true_cost_model or cost_model
    saturation = saturation_rps(trace, args.num_requests, engine_model, config, args.replicas,
                                wl_opts["max_new_tokens"])
    bound = work_bound(trace, args.num_requests, engine_model, config, args.replicas)
    variants: list[Variant] = []
    for router in routers:
        for policy in policies:
            variants += default_variants(policy, router, args.replicas, options.get(policy, {}),
                                         sweep=not args.no_sweep, admission_control=args.admission_control,
                                         load_poll_s=args.load_poll_s, retries=args.router_retries)
    kwargs = dict(ttft_slo_s=ttft, tpot_slo_s=tpot, num_requests=args.num_requests, seed=args.seed,
                  upper_rps=bound["rps"], criteria=criteria, tolerance=args.tolerance,
                  workload_options=wl_opts)
    payloads = [(v, trace, cost_model, config, kwargs) for v in variants]
    bar = _progress(len(payloads), args.quiet, "capacity")
    done: dict[int, dict] = {}  # variant index -> its search, so results keep the variants' order
    if args.jobs > 1 and len(payloads) > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = {pool.submit(_search_task, p): i for i, p in enumerate(payloads)}
            for future in as_completed(futures):
                done[futures[future]] = future.result()
                if bar is not None:
                    bar.set_postfix_str(f"{variants[futures[future]].label}: "
                                        f"{done[futures[future]]['capacity_rps']:.2f} rps")
                    bar.update(1)
    else:
        for i, payload in enumerate(payloads):
            done[i] = _search_task(payload)
            if bar is not None:
                bar.set_postfix_str(f"{payload[0].label}: {done[i]['capacity_rps']:.2f} rps")
                bar.update(1)
    if bar is not None:
        bar.close()
    searches = [done[i] for i in range(len(payloads))]
    results = []
    for router in routers:
        for policy in policies:
            group = [s for s in searches if s["policy"] == policy and s["router"] == router]
            best = max(group, key=lambda s: s["capacity_rps"])
            entry = dict(best)
            if len(group) > 1:
                entry["sweep"] = [{"options": s["options"], "capacity_rps": s["capacity_rps"],
                                   "ttft_p99_s": s["ttft_p99_s"], "tbt_p99_s": s["tbt_p99_s"]} for s in group]
                if "token_budget" in best["options"]:
                    entry["best_token_budget"] = best["options"]["token_budget"]
            entry["share_of_saturation"] = best["capacity_rps"] / saturation if saturation > 0 else math.nan
            entry["share_of_work_bound"] = best["capacity_rps"] / bound["rps"]
            results.append(entry)
    report = {
        "definition": criteria.definition,
        "max_ttft_p99_factor": criteria.max_ttft_p99_factor,
        "target": criteria.target,
        "saturation_rps": saturation,
        "work_bound": bound,
        "results": results,
        "settings": _settings(args, ttft, tpot, cost_model, config, criteria),
    }
    _print_capacity(report)
    if args.json:
        strict_json.write(args.json, report, indent=2)
    if args.plot:
        from .plots import plot_attainment_curves

        plot_attainment_curves(report, args.plot)
    return 0


def cmd_run(args) -> int:
    policies, routers, ttft, tpot, cost_model, options, trace, config, wl_opts, criteria = _prepare(args)
    if args.replay_timestamps:
        if args.rate is not None:
            raise UsageError("--rate and --replay-timestamps exclude each other")
        if not args.time_scale > 0:
            raise UsageError(f"--time-scale must be positive, got {args.time_scale}")
    elif args.rate is None or not (args.rate > 0 and math.isfinite(args.rate)):
        raise UsageError("run needs --rate RPS (> 0) or --replay-timestamps")
    try:
        workload = make_workload(trace, num_requests=args.num_requests, rate_rps=args.rate, seed=args.seed,
                                 ttft_slo_s=ttft, tpot_slo_s=tpot, replay_timestamps=args.replay_timestamps,
                                 time_scale=args.time_scale, **wl_opts)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    results = []
    ttft_samples = {}
    variants = [Variant(p, r, args.replicas, options.get(p, {}), args.admission_control, args.load_poll_s,
                        args.router_retries)
                for r in routers for p in policies]
    bar = _progress(len(variants), args.quiet, "run")
    for variant in variants:
        summary, result = run_probe(variant, workload, cost_model, config, seed=args.seed)
        results.append({"policy": variant.policy, "router": variant.router, "replicas": variant.replicas,
                        "options": variant.options, "admission_control": variant.admission_control,
                        "within_criteria": criteria.met(summary), **summary})
        start = result.warmup_requests
        ttft_samples[variant.label] = (result.first_token_s[start:] - workload.arrival_s[start:]).tolist()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    report = {"rate_rps": args.rate, "definition": criteria.definition,
              "max_ttft_p99_factor": criteria.max_ttft_p99_factor, "results": results,
              "settings": _settings(args, ttft, tpot, cost_model, config, criteria)}
    _print_run(report)
    if args.json:
        strict_json.write(args.json, report, indent=2)
    if args.plot:
        from .plots import plot_ttft_cdf

        plot_ttft_cdf(ttft_samples, args.plot, title=f"TTFT CDF at {args.rate or 'trace'} rps")
    return 0


def _settings(args, ttft, tpot, cost_model, config, criteria) -> dict:
    return {
        "trace": args.trace, "cost_model": cost_model.name, "true_cost_model":
        config.true_cost_model.name if config.true_cost_model else None, "noise_sigma": config.noise_sigma,
        "noise_correlation": config.noise_correlation,
        "ttft_slo_s": ttft, "tpot_slo_s": tpot, "slo_classes": args.slo_classes, "num_requests": args.num_requests,
        "seed": args.seed, "arrival": args.arrival, "burstiness": args.burstiness,
        "max_new_tokens": args.max_new_tokens, "kv_capacity_tokens": config.kv_capacity_tokens,
        "max_running_requests": config.max_running_requests, "max_prefill_tokens": config.max_prefill_tokens,
        "warmup_fraction": 0.1, "definition": criteria.definition, "target": criteria.target,
        "max_ttft_p99_factor": criteria.max_ttft_p99_factor,
    }


def _fmt(value, spec=".3f"):
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _print_capacity(report: dict) -> None:
    bound = report["work_bound"]
    tail = (f"P99 TTFT/SLO <= {report['max_ttft_p99_factor']:g}" if report["max_ttft_p99_factor"] > 0
            else "no tail bound")
    print(f"capacity: >= {report['target']:.0%} meet the SLOs ({report['definition']} definition), {tail}")
    print(f"saturation throughput bound: {report['saturation_rps']:.3f} rps; work bound {bound['rps']:.3f} rps"
          f" ({bound['binding_limit']}-limited iterations)")
    print(f"{'policy':<14}{'router':<12}{'n':>3} {'capacity_rps':>12} {'sat':>5} {'work':>5} {'ttft_p99_s':>10} "
          f"{'tbt_p99_s':>9} {'ttft/slo_p99':>12} {'max':>7} {'over':>5}  options")
    for r in report["results"]:
        opts = ",".join(f"{k}={v}" for k, v in sorted(r["options"].items()))
        print(f"{r['policy']:<14}{r['router']:<12}{r['replicas']:>3} {r['capacity_rps']:>12.3f} "
              f"{r['share_of_saturation']:>5.2f} {r['share_of_work_bound']:>5.2f} {_fmt(r['ttft_p99_s']):>10} "
              f"{_fmt(r['tbt_p99_s']):>9} {_fmt(r['ttft_ratio_p99'], '.2f'):>12} {_fmt(r['ttft_ratio_max'], '.1f'):>7} "
              f"{_fmt(r['ttft_over_bound'], 'd'):>5}  {opts}")
        _print_slo_classes((r.get("at_capacity") or {}).get("slo_classes", []))


def _print_run(report: dict) -> None:
    print(f"{'policy':<14}{'router':<14}{'attain':>7} {'envelope':>8} {'goodput':>8} {'ttft_p50':>8} "
          f"{'ttft_p99':>8} {'ttft/slo':>8} {'tpot_p50':>8} {'tpot_p99':>8} {'tbt_p99':>8} {'rej':>5} {'retr':>5} "
          f"{'ok':>3}")
    for r in report["results"]:
        print(f"{r['policy']:<14}{r['router']:<14}{r['attainment']:>7.3f} {r['envelope_attainment']:>8.3f} "
              f"{r['goodput_rps']:>8.3f} {_fmt(r['ttft_p50_s']):>8} {_fmt(r['ttft_p99_s']):>8} "
              f"{_fmt(r['ttft_ratio_p99'], '.2f'):>8} {_fmt(r['tpot_p50_s'], '.4f'):>8} "
              f"{_fmt(r['tpot_p99_s'], '.4f'):>8} {_fmt(r['tbt_p99_s']):>8} {r['rejected']:>5} "
              f"{r['retractions']:>5} {'yes' if r['within_criteria'] else 'no':>3}")
        _print_slo_classes(r.get("slo_classes", []))


def _print_slo_classes(classes: list[dict]) -> None:
    """One line per SLO class under a result row (none with a single SLO)."""
    for c in classes:
        print(f"  class TTFT {c['ttft_slo_s']:g} s / TPOT {c['tpot_slo_s']:g} s: {c['requests']} requests, "
              f"attainment {c['attainment']:.3f} (TTFT {c['ttft_attainment']:.3f}, TPOT {c['tpot_attainment']:.3f}),"
              f" TTFT/SLO p99 {_fmt(c['ttft_ratio_p99'], '.2f')}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return cmd_capacity(args) if args.verb == "capacity" else cmd_run(args)
    except UsageError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 2
