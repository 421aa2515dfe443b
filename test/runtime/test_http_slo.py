"""Per-request SLOs over HTTP, the project endpoints and metrics, on a real server per policy.

Runs once per policy in ``SGLANG_FAIR_E2E_POLICIES`` (the shared ``server`` fixture).
"""

from __future__ import annotations

import math

import pytest
import requests

pytestmark = pytest.mark.e2e


BAD_SLOS = [
    ({"ttft_slo": -1}, "custom_params.ttft_slo"),
    ({"tpot_slo": "fast"}, "custom_params.tpot_slo"),
    ({"ttft_slo": 1e9}, "custom_params.ttft_slo"),
    ({"tpot_slo": True}, "custom_params.tpot_slo"),
]


def _generate(server, custom_params=None, max_new_tokens=4):
    params = {"max_new_tokens": max_new_tokens, "temperature": 0, "ignore_eos": True}
    if custom_params is not None:
        params["custom_params"] = custom_params
    return requests.post(
        f"{server.base_url}/generate", json={"text": "Hello there", "sampling_params": params}, timeout=120
    )


@pytest.mark.parametrize(("custom_params", "field"), BAD_SLOS)
def test_bad_slo_is_400_naming_the_field_then_server_carries_on(server, custom_params, field):
    response = _generate(server, custom_params)
    if server.policy == "sglang":
        # Stock batching is untouched: custom_params are not ours to judge there.
        assert response.status_code == 200
        return
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]["message"]
    good = _generate(server)
    assert good.status_code == 200 and good.json()["meta_info"]["completion_tokens"] == 4


def test_nan_slo_is_400(server):
    """JSON has no NaN: SGLang's HTTP layer already answers 400 (the scheduler's own NaN check is
    covered in-process by test_slo_parsing)."""
    body = '{"text": "hi", "sampling_params": {"max_new_tokens": 2, "custom_params": {"ttft_slo": NaN}}}'
    response = requests.post(
        f"{server.base_url}/generate", data=body, headers={"content-type": "application/json"}, timeout=120
    )
    assert response.status_code == 400
    assert _generate(server).status_code == 200


def test_openai_custom_params_via_extra_body(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", timeout=120)
    model = client.models.list().data[0].id
    ok = client.completions.create(
        model=model, prompt="Hi", max_tokens=3, extra_body={"custom_params": {"ttft_slo": 5.0, "tpot_slo": 0.5}}
    )
    assert ok.usage.completion_tokens >= 1
    if server.policy == "sglang":
        return
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(
            model=model, prompt="Hi", max_tokens=3, extra_body={"custom_params": {"tpot_slo": -0.1}}
        )
    assert "custom_params.tpot_slo" in str(err.value)


def test_get_load_has_the_router_shape(server):
    _generate(server)
    loads = requests.get(f"{server.base_url}/get_load", timeout=30).json()
    assert isinstance(loads, list) and loads
    for rank, entry in enumerate(loads):
        assert entry["dp_rank"] == rank
        assert isinstance(entry["num_tokens"], int) and entry["num_tokens"] >= 0


def test_fair_state_reports_policy_budget_pab_fit_and_slo_counters(server):
    for _ in range(3):
        assert _generate(server, {"ttft_slo": 5.0, "tpot_slo": 1.0}, max_new_tokens=6).status_code == 200
    states = requests.get(f"{server.base_url}/fair/state", timeout=30).json()["dp_ranks"]
    runtime = states[0]["runtime"]
    assert runtime["batch_policy"] == server.policy
    assert set(runtime["pab"]) >= {"seconds", "tokens", "horizon_s", "decode_utilisation"}
    assert "skipped_decodes_total" in runtime and "slo" in runtime
    if server.policy != "sglang":
        assert runtime["iterations"] > 0
        assert runtime["cost_model"]["samples"] > 0
        assert runtime["slo"]["finished"] >= 3
        mape = runtime["cost_model"]["recent_mape"]
        assert mape is None or math.isfinite(mape)


def test_prometheus_metrics_next_to_sglangs(server):
    _generate(server)
    text = requests.get(f"{server.base_url}/metrics", timeout=30).text
    assert "sglang:num_running_reqs" in text
    if server.policy != "sglang":
        for name in ("sglang:fair_slo_requests", "sglang:fair_measured_iteration_seconds", "sglang:fair_skipped_decodes"):
            assert name in text, name
