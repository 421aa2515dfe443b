"""The launcher without a server: flags, validation, config hand-over, CPU stand-in, tiny model."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sglang_fair.config import ENV_VAR, FairConfig

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = [sys.executable, "-m", "sglang_fair.launch_server"]


def _run(args, env=None, timeout=120):
    return subprocess.run(
        [*LAUNCHER, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env
    )


def test_help_lists_sglang_and_our_flags():
    done = _run(["--help"])
    assert done.returncode == 0, done.stderr
    for flag in (
        "--batch-policy", "--fair-ttft-slo", "--fair-tpot-slo", "--cost-model",
        "--fair-token-budget", "--fair-admission-control", "--fair-client-fairness",
        "--fair-policy-option",
    ):  # fmt: skip
        assert flag in done.stdout, flag
    for flag in ("--model-path", "--tp-size", "--max-total-tokens", "--schedule-policy", "--port"):
        assert flag in done.stdout, flag


BAD_VALUES = [
    (["--batch-policy", "nope"], "--batch-policy"),
    (["--fair-ttft-slo", "-1"], "--fair-ttft-slo"),
    (["--fair-ttft-slo", "soon"], "--fair-ttft-slo"),
    (["--fair-tpot-slo", "0"], "--fair-tpot-slo"),
    (["--fair-tpot-slo", "inf"], "--fair-tpot-slo"),
    (["--cost-model", "no-such-preset"], "--cost-model"),
    (["--fair-token-budget", "0"], "--fair-token-budget"),
    (["--fair-token-budget", "many"], "--fair-token-budget"),
    (["--fair-policy-option", "nokey"], "--fair-policy-option"),
    (["--fair-policy-option", "no_such_option=1"], "--fair-policy-option"),
    (
        ["--batch-policy", "fairbatching", "--fair-policy-option", "budget_safety=2"],
        "--fair-policy-option",
    ),
    (
        ["--batch-policy", "fairbatching", "--fair-policy-option", "min_chunk_tokens=x"],
        "--fair-policy-option",
    ),
]


@pytest.mark.parametrize("args,flag", BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_bad_value_is_one_line_naming_the_flag(args, flag, capsys):
    from sglang_fair.launch_server import parse_fair_args

    with pytest.raises(SystemExit) as exit_info:
        parse_fair_args(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert flag in err


def test_bad_value_from_the_command_line_exits_before_starting():
    done = _run(["--fair-ttft-slo", "-3", "--tp-size", "1"])
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "python -m sglang_fair.launch_server: error: --fair-ttft-slo must be positive (seconds),"
        " got -3.0"
    ]


def test_another_sglang_release_stops_the_launcher_with_one_line(monkeypatch, capsys):
    import importlib.metadata

    from sglang_fair import SGLANG_VERSION
    from sglang_fair.launch_server import main

    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "0.5.99" if name == "sglang" else real_version(name))
    with pytest.raises(SystemExit) as exit_info:
        main(["--batch-policy", "fairbatching"])
    message = str(exit_info.value.code)
    assert message.count("\n") == 0 and message.startswith("python -m sglang_fair.launch_server: error:")
    assert "sglang 0.5.99 is installed" in message and f"sglang=={SGLANG_VERSION}" in message


def test_our_flags_are_split_from_sglangs():
    from sglang_fair.launch_server import parse_fair_args

    config, rest = parse_fair_args(
        [
            "--model-path", "m", "--batch-policy", "fairbatching", "--fair-ttft-slo", "2",
            "--fair-tpot-slo=0.05", "--tp-size", "1", "--fair-admission-control",
            "--fair-policy-option", "budget_safety=0.8", "--fair-policy-option", "client_fairness=true",
            "--cost-model", "a100-llama2-7b", "--fair-token-budget", "256",
        ]
    )  # fmt: skip
    assert rest == ["--model-path", "m", "--tp-size", "1"]
    assert config == FairConfig(
        batch_policy="fairbatching",
        ttft_slo_s=2.0,
        tpot_slo_s=0.05,
        cost_model="a100-llama2-7b",
        token_budget=256,
        admission_control=True,
        client_fairness=False,
        policy_options={"budget_safety": 0.8, "client_fairness": True},
    )


def test_defaults_added_only_where_not_given():
    from sglang_fair.launch_server import sglang_argv

    argv = sglang_argv(["--model-path", "x", "--device", "cpu", "--disable-cuda-graph"], on_cpu=True)
    assert argv.count("--device") == 1 and "--cuda-graph-backend-decode" not in argv
    assert "--max-total-tokens" in argv and "--model-path" in argv and argv.count("x") == 1
    assert sglang_argv(["--model=x"], on_cpu=False) == ["--model=x"]


def test_config_round_trips_through_the_environment():
    config = FairConfig(batch_policy="vtc", token_budget=64, policy_options={"output_weight": 3.0})
    env: dict = {}
    config.to_env(env)
    assert json.loads(env[ENV_VAR])["batch_policy"] == "vtc"
    assert FairConfig.from_env(env) == config
    assert FairConfig.from_env({}) == FairConfig()
    with pytest.raises(ValueError, match="unknown"):
        FairConfig.from_env({ENV_VAR: json.dumps({"bogus": 1})})


def test_scheduler_entry_point_matches_upstream_signature():
    """Upstream changing run_scheduler_process's parameters must fail here, loudly."""
    from sglang_fair.runtime.process import run_scheduler_process as ours
    from sglang.srt.managers.scheduler import run_scheduler_process as stock

    def shape(fn):
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    assert shape(ours) == shape(stock), (
        "sglang's run_scheduler_process signature changed; update sglang_fair.runtime.process"
    )
    import sglang.srt.entrypoints.http_server as http_server

    assert "run_scheduler_process_func" in inspect.signature(http_server.launch_server).parameters


_PROBE = """
import sys, sglang_fair.platform as p
p.has_cuda = lambda: {cuda}
on_cpu = p.setup()
print(on_cpu, p.standin_installed())
if p.standin_installed():
    import sgl_kernel
    from sgl_kernel import rmsnorm
    try:
        rmsnorm(1, 2)
    except RuntimeError as exc:
        print(type(exc).__name__, exc)
"""


def _clean_env():
    env = dict(os.environ)
    for name in ("SGLANG_FAIR_CPU_PLATFORM", "SGLANG_USE_CPU_ENGINE"):
        env.pop(name, None)
    return env


def test_standin_never_on_a_cuda_machine():
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(cuda=True)],
        capture_output=True, text=True, timeout=120, env=_clean_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]
    assert "stand-in" not in done.stderr


def test_standin_functions_raise_when_called():
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(cuda=False)],
        capture_output=True, text=True, timeout=120, env=_clean_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    if lines[0] == "True False":
        pytest.skip("the real sgl_kernel loads here")
    assert lines[0] == "True True"
    assert lines[1].startswith("SglKernelUnavailable sgl_kernel.rmsnorm was called")
    # one clear line says so
    assert [l for l in done.stderr.splitlines() if "sglang_fair" in l] == [
        "sglang_fair: no CUDA device: CPU engine, using a stand-in for sgl_kernel whose functions"
        " raise if called"
    ]


def test_tiny_model_is_reproducible_and_small(tmp_path):
    from sglang_fair.models.tiny_llama import build_tiny_llama

    first = build_tiny_llama(tmp_path / "a")
    second = build_tiny_llama(tmp_path / "b")
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(names)
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert sum(p.stat().st_size for p in first.iterdir()) < 1_000_000
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(first / "tokenizer.json"))
    text = "The capital of France is Paris."
    assert tokenizer.decode(tokenizer.encode(text).ids) == text
    assert "chat_template" in json.loads((first / "tokenizer_config.json").read_text())
