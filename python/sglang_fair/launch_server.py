"""Launch an SGLang server whose scheduler is sglang_fair's ``FairScheduler``.

    python -m sglang_fair.launch_server [SGLang flags...] [sglang_fair flags...]

Every ``python -m sglang.launch_server`` flag works unchanged; sglang_fair adds its own (see
``--help``).  With no ``--model-path`` it serves the tiny built-in Llama
(:mod:`sglang_fair.models.tiny_llama`).  Where there is no CUDA device it runs SGLang's CPU engine
and adds the CPU flags the user did not give (:func:`sglang_fair.platform.cpu_server_defaults`).

SGLang spawns its scheduler in a fresh interpreter, so the launcher publishes our settings in the
environment (:class:`sglang_fair.config.FairConfig`) and hands SGLang
:func:`sglang_fair.runtime.process.run_scheduler_process` to start that process with.
"""

from __future__ import annotations

import argparse
import os
import sys

# Before anything imports SGLang: also runs in every process SGLang spawns, which re-import this
# module as their ``__mp_main__``.
from sglang_fair import platform, sglang_version_problem

ON_CPU = platform.setup(announce_now=False)  # announced once the flags are valid

from sglang_fair.config import FairConfig  # noqa: E402

PROG = "python -m sglang_fair.launch_server"

__all__ = ["build_parser", "main", "parse_fair_args", "sglang_argv"]


class _OneLineParser(argparse.ArgumentParser):
    """Errors are one line on stderr (naming the flag, as argparse's messages do), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_fair_args(parser: argparse.ArgumentParser) -> None:
    from sglang_fair.policy import POLICY_NAMES

    defaults = FairConfig()
    group = parser.add_argument_group("sglang_fair (batch formation with SLOs)")
    group.add_argument(
        "--batch-policy",
        choices=POLICY_NAMES,
        default=defaults.batch_policy,
        help="how each iteration's batch is formed; 'sglang' keeps SGLang's own (default: %(default)s)",
    )
    group.add_argument(
        "--fair-ttft-slo",
        type=float,
        default=defaults.ttft_slo_s,
        metavar="SECONDS",
        help="default time-to-first-token SLO of a request (default: %(default)s)",
    )
    group.add_argument(
        "--fair-tpot-slo",
        type=float,
        default=defaults.tpot_slo_s,
        metavar="SECONDS",
        help="default time-per-output-token SLO of a request (default: %(default)s)",
    )
    group.add_argument(
        "--cost-model",
        default=defaults.cost_model,
        metavar="PRESET_OR_FILE",
        help="iteration-time model: a preset name or a JSON file (default: chosen by the runtime)",
    )
    group.add_argument(
        "--fair-token-budget",
        type=int,
        default=defaults.token_budget,
        metavar="TOKENS",
        help="tokens per iteration for sarathi, slai and vtc (default: %(default)s)",
    )
    group.add_argument(
        "--fair-admission-control",
        action="store_true",
        help="admit requests only within the policy's admission budget",
    )
    group.add_argument(
        "--fair-client-fairness",
        action="store_true",
        help="share capacity fairly between clients",
    )
    group.add_argument(
        "--fair-no-calibration",
        dest="fair_calibrate",
        action="store_false",
        help="do not time the served model at start-up to fit the cost model (without --cost-model"
        " the online refit then starts from a shipped preset)",
    )
    group.add_argument(
        "--fair-iteration-log",
        default=defaults.iteration_log,
        metavar="FILE",
        help="append every measured iteration (shape, predicted and measured seconds) to FILE as JSON"
        " lines, for benchmark/online_model_replay.py (FILE.<dp rank> with data parallelism)",
    )
    group.add_argument(
        "--fair-policy-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a keyword option of the batch policy (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The full parser, sglang_fair's flags and SGLang's: what ``--help`` shows."""
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    _add_fair_args(parser)
    ServerArgs.add_cli_args(parser)
    for action in parser._actions:
        if "--model-path" in action.option_strings:
            action.required = False  # ours has a default
            action.help = (action.help or "") + " (sglang_fair default: the built-in tiny Llama)"
    return parser


def _fair_parser() -> _OneLineParser:
    parser = _OneLineParser(prog=PROG, add_help=False, allow_abbrev=False)
    _add_fair_args(parser)
    return parser


def _policy_options(policy: str, items: list[str]) -> dict:
    from sglang_fair.policy.registry import parse_option_value

    options = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        options[key] = parse_option_value(policy, key, text)
    return options


def parse_fair_args(argv: list[str]) -> tuple[FairConfig, list[str]]:
    """Split ``argv`` into our validated settings and the flags left for SGLang.

    A bad value ends the process with status 2 and one line on stderr naming the flag.
    """
    from sglang_fair.policy import CostModelError, load_cost_model, make_policy, preset_names
    from sglang_fair.policy import validate_slo

    parser = _fair_parser()
    args, rest = parser.parse_known_args(argv)

    def fail(flag: str, message: str):
        parser.error(message if message.startswith(flag) else f"{flag}: {message}")

    try:
        ttft = validate_slo("--fair-ttft-slo", args.fair_ttft_slo)
        tpot = validate_slo("--fair-tpot-slo", args.fair_tpot_slo)
    except ValueError as exc:
        parser.error(str(exc))
    if args.fair_token_budget < 1:
        fail("--fair-token-budget", f"must be a positive number of tokens, got {args.fair_token_budget}")
    try:
        cost_model = load_cost_model(args.cost_model or preset_names()[0])
    except CostModelError as exc:
        fail("--cost-model", str(exc))
    if args.fair_iteration_log is not None:
        folder = os.path.dirname(os.path.abspath(args.fair_iteration_log))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            fail("--fair-iteration-log", f"{folder} is not a writable folder")
        if os.path.isdir(args.fair_iteration_log):
            fail("--fair-iteration-log", f"{args.fair_iteration_log} is a folder, not a file")
    try:
        options = _policy_options(args.batch_policy, args.fair_policy_option)
        make_policy(args.batch_policy, cost_model, **options)  # the policy checks the values
    except (ValueError, TypeError) as exc:
        fail("--fair-policy-option", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    config = FairConfig(
        batch_policy=args.batch_policy,
        ttft_slo_s=ttft,
        tpot_slo_s=tpot,
        cost_model=args.cost_model,
        token_budget=args.fair_token_budget,
        admission_control=args.fair_admission_control,
        client_fairness=args.fair_client_fairness,
        calibrate=args.fair_calibrate,
        iteration_log=args.fair_iteration_log,
        policy_options=options,
    )
    return config, rest


def _given(argv: list[str], *flags: str) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for arg in argv for flag in flags)


def sglang_argv(rest: list[str], on_cpu: bool) -> list[str]:
    """SGLang's flags, plus the default model and (on CPU) the CPU flags where the user gave none."""
    argv = list(rest)
    if not _given(argv, "--model-path", "--model", "--config"):
        from sglang_fair.models.tiny_llama import default_model_path

        argv += ["--model-path", default_model_path()]
    if on_cpu:
        for settled_by, extra in platform.cpu_server_defaults():
            if not _given(argv, *settled_by):
                argv += extra
    return argv


def _dp_pab(argv: list[str]) -> list[str]:
    """``--load-balance-method pab`` (data parallel): SGLang's ``total_tokens`` method fed with the
    PAB-derived load each FairScheduler rank publishes (sglang_fair.runtime.batching)."""
    out = []
    for index, arg in enumerate(argv):
        if arg == "--load-balance-method=pab" or (
            arg == "pab" and index > 0 and argv[index - 1] == "--load-balance-method"
        ):
            os.environ["SGLANG_FAIR_DP_PAB"] = "1"
            out.append("--load-balance-method=total_tokens" if arg.startswith("--") else "total_tokens")
        else:
            out.append(arg)
    return out


def _serve(server_args) -> None:
    from sglang.srt.arg_groups.overrides import resolving_view
    from sglang.srt.entrypoints.http_server import app, launch_server

    from sglang_fair.runtime.http_routes import install_routes
    from sglang_fair.runtime.process import run_scheduler_process

    server_args.resolve_once()
    cfg = resolving_view(server_args)
    if cfg.encoder_only or cfg.smg_grpc_mode or cfg.grpc_mode or cfg.use_ray:
        sys.exit(
            f"{PROG}: error: only the HTTP server is supported"
            " (not --encoder-only, --grpc-mode, --smg-grpc-mode or --use-ray)"
        )
    config = FairConfig.from_env()
    fair_active = config.batch_policy != "sglang"
    install_routes(  # /get_load (PAB for sglang-router), /fair/state and the request guard
        app,
        replica=f"{server_args.host}:{server_args.port}",
        validate=fair_active,  # stock batching ignores SLOs: its custom_params are not ours to judge
        admission=fair_active and config.admission_control,
        default_ttft_s=config.ttft_slo_s,
    )
    launch_server(server_args, run_scheduler_process_func=run_scheduler_process)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    problem = sglang_version_problem()  # the runtime patches one SGLang release's internals
    if problem:
        sys.exit(f"{PROG}: error: {problem}")
    if "-h" in argv or "--help" in argv:
        build_parser().parse_args(["--help"])
    config, rest = parse_fair_args(argv)
    platform.announce()
    config.to_env()

    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import prepare_server_args
    from sglang.srt.utils import kill_process_tree

    load_plugins()
    sglang_args = _dp_pab(sglang_argv(rest, ON_CPU))
    if config.batch_policy != "sglang" and not _given(sglang_args, "--disable-overlap-schedule"):
        # The policies time each iteration and split the running batch between steps; both need
        # the plain (non-overlap) loop.  See docs/runtime.md.
        sglang_args.append("--disable-overlap-schedule")
    server_args = prepare_server_args(sglang_args)
    try:
        _serve(server_args)
    finally:
        kill_process_tree(os.getpid(), include_parent=False)


if __name__ == "__main__":
    main()
