"""The start-up calibration in a real server: one log line, shown on /fair/state, cached across
restarts, skipped for --cost-model and --fair-no-calibration."""

from __future__ import annotations

import sys

import pytest
import requests

pytestmark = pytest.mark.e2e


def _fair_state(handle) -> dict:
    return requests.get(f"{handle.base_url}/fair/state", timeout=30).json()["dp_ranks"][0]


def _generate(handle) -> None:
    response = requests.post(f"{handle.base_url}/generate", timeout=60,
                             json={"text": "Hello", "sampling_params": {"max_new_tokens": 4}})
    assert response.status_code == 200, response.text


def test_first_start_calibrates_and_a_restart_reads_the_cache(server_launcher, tmp_path, monkeypatch):
    # A cache of its own, so the first start really times the model.
    monkeypatch.setenv("SGLANG_FAIR_CALIBRATION_CACHE", str(tmp_path / "cache"))
    first = server_launcher(["--batch-policy", "fairbatching"])
    lines = [line for line in first.log_text().splitlines() if "sglang_fair: calibrated cost model in" in line]
    assert len(lines) == 1 and "held-out MAPE" in lines[0] and "cache miss, saved to" in lines[0], lines
    state = _fair_state(first)
    assert state["calibrate"] is True
    calibration = state["runtime"]["calibration"]
    assert calibration["status"] == "calibrated" and not calibration["cache_hit"]
    assert calibration["fit_mape"] >= 0 and calibration["holdout_mape"] >= 0
    assert calibration["seconds"] > 0 and calibration["iterations"] > 0 and calibration["shapes"]
    assert calibration["cache_path"].startswith(str(tmp_path / "cache"))
    assert state["runtime"]["cost_model"]["prior"] == calibration["model"]["name"]
    _generate(first)
    first.stop()

    second = server_launcher(["--batch-policy", "fairbatching"])
    assert "cache hit" in second.log_text()
    again = _fair_state(second)["runtime"]["calibration"]
    assert again["status"] == "cached" and again["cache_hit"] and again["seconds"] < 1.0
    assert again["model"] == calibration["model"] and again["holdout_mape"] == calibration["holdout_mape"]
    _generate(second)
    print(f"start-up: {first.startup_s:.1f} s calibrating ({calibration['seconds']:.1f} s of it),"
          f" {second.startup_s:.1f} s from the cache", file=sys.stderr)


@pytest.mark.parametrize(
    "flags,reason",
    [(["--cost-model", "cpu-tiny"], "--cost-model"), (["--fair-no-calibration"], "--fair-no-calibration")],
    ids=["cost-model", "no-calibration"],
)
def test_cost_model_and_the_off_flag_skip_it(server_launcher, flags, reason):
    handle = server_launcher(["--batch-policy", "fairbatching", *flags])
    assert "sglang_fair: calibrated cost model" not in handle.log_text()
    assert f"start-up calibration off: {reason}" in handle.log_text()
    state = _fair_state(handle)
    calibration = state["runtime"]["calibration"]
    assert calibration["status"] == "off" and reason in calibration["reason"] and calibration["model"] is None
    assert state["runtime"]["cost_model"]["prior"] == "cpu-tiny"
    assert state["calibrate"] is (reason != "--fair-no-calibration")
    _generate(handle)


def test_the_off_flag_parses():
    from sglang_fair.launch_server import build_parser, parse_fair_args

    assert parse_fair_args(["--fair-no-calibration"])[0].calibrate is False
    assert parse_fair_args([])[0].calibrate is True
    assert "--fair-no-calibration" in build_parser().format_help()
