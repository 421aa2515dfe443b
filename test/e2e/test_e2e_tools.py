"""SGLang's own tools against our server: ``sglang.bench_serving`` (offline datasets) and
``sglang-router`` in front of it.  Runs once per policy in ``SGLANG_FAIR_E2E_POLICIES``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

pytestmark = pytest.mark.e2e

NUM_PROMPTS = 8


def _bench(server, tmp_path, dataset_args: list[str]) -> dict:
    out_file = tmp_path / "bench.jsonl"
    cmd = [
        sys.executable, "-m", "sglang.bench_serving",
        "--backend", "sglang",
        "--base-url", server.base_url,
        "--num-prompts", str(NUM_PROMPTS),
        "--request-rate", "4",
        "--seed", "1",
        "--disable-tqdm",
        "--goodput", "ttft:60000", "tpot:10000",
        "--output-file", str(out_file),
        *dataset_args,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    result = json.loads(out_file.read_text().splitlines()[-1])
    assert result["completed"] == NUM_PROMPTS, result
    assert result["total_output_tokens"] > 0
    return result


def test_bench_serving_random_ids(server, tmp_path):
    _bench(
        server,
        tmp_path,
        ["--dataset-name", "random-ids", "--random-input-len", "32", "--random-output-len", "8"],
    )


def test_bench_serving_local_sharegpt_file(server, tmp_path):
    # The ShareGPT format, written here: `--dataset-name random` would download ShareGPT.
    conversations = [
        {
            "id": str(i),
            "conversations": [
                {"from": "human", "value": f"Question {i}: what is the capital of country {i}?"},
                {"from": "gpt", "value": " ".join(["The answer is a city."] * (1 + i % 3))},
            ],
        }
        for i in range(2 * NUM_PROMPTS)
    ]
    dataset = tmp_path / "sharegpt_small.json"
    dataset.write_text(json.dumps(conversations))
    _bench(
        server,
        tmp_path,
        ["--dataset-name", "sharegpt", "--dataset-path", str(dataset), "--sharegpt-output-len", "8"],
    )


@pytest.fixture
def router(server, tmp_path, free_port):
    """``sglang_router.launch_router`` in front of the server; yields its base URL."""
    port = free_port()
    log_path = tmp_path / "router.log"
    cmd = [
        sys.executable, "-m", "sglang_router.launch_router",
        "--worker-urls", server.base_url,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--policy", "round_robin",
        "--prometheus-host", "127.0.0.1",
        "--prometheus-port", str(free_port()),  # its default, 29000, may be taken
    ]  # fmt: skip
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:  # ready once it has registered the worker and forwards a request
            assert process.poll() is None, f"router exited; log {log_path}:\n{log_path.read_text()[-3000:]}"
            try:
                probe = requests.post(
                    f"{url}/generate",
                    json={"text": "hi", "sampling_params": {"max_new_tokens": 1}},
                    timeout=30,
                )
                if probe.ok:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, f"router not ready; log {log_path}:\n{log_path.read_text()[-3000:]}"
            time.sleep(1.0)
        yield url
    finally:
        for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(process.pid, sig)
                process.wait(wait_s)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


def test_router_in_front_of_server(router, server):
    out = requests.post(
        f"{router}/generate",
        json={"text": "Hello", "sampling_params": {"max_new_tokens": 5, "ignore_eos": True}},
        timeout=120,
    )
    out.raise_for_status()
    assert out.json()["meta_info"]["completion_tokens"] == 5
    completion = requests.post(
        f"{router}/v1/completions",
        json={"model": "default", "prompt": "Hello", "max_tokens": 4},
        timeout=120,
    )
    completion.raise_for_status()
    assert completion.json()["choices"][0]["text"] is not None
