"""``sglang-router --policy power_of_two`` in front of two sglang_fair servers reads ``/get_load``.

The router (0.3.2) polls ``GET /get_load`` of every worker every 30 s for power-of-two and logs each
choice with the two loads it compared; a failed or malformed answer shows as a warning in its log
and as a load of -1.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import requests

pytestmark = pytest.mark.e2e

POLICY = os.environ.get("SGLANG_FAIR_ROUTER_TEST_POLICY", "fairbatching")


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)  # the router colours its log


@pytest.fixture
def two_servers(server_launcher, tmp_path):
    pytest.importorskip("sglang_router")
    return server_launcher.many([(["--batch-policy", POLICY], tmp_path / f"s{i}") for i in range(2)])


def test_power_of_two_router_reads_get_load(two_servers, tmp_path, free_port):
    port = free_port()
    log_path = tmp_path / "router.log"
    urls = [handle.base_url for handle in two_servers]
    with open(log_path, "w") as log:
        router = subprocess.Popen(
            [
                sys.executable, "-m", "sglang_router.launch_router",
                "--host", "127.0.0.1", "--port", str(port),
                "--worker-urls", *urls,
                "--policy", "power_of_two",
                "--log-level", "debug",
            ],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{base}/health", timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            assert router.poll() is None, log_path.read_text()[-3000:]
            time.sleep(1)
        # sglang-router 0.3.2 polls every 30 s, and its first poll (at start, before the workers
        # registered) finds none; wait for a poll that reached both servers.
        text = ""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and "Fetched loads from 2 workers" not in text:
            time.sleep(2)
            text = _plain(log_path.read_text(errors="replace"))
        assert "Fetched loads from 2 workers" in text, text[-3000:]
        for i in range(6):
            out = requests.post(
                f"{base}/generate",
                json={"text": f"Request {i}", "sampling_params": {"max_new_tokens": 4, "ignore_eos": True}},
                timeout=120,
            )
            assert out.status_code == 200, out.text
        text = _plain(log_path.read_text(errors="replace"))
        for bad in ("Invalid load response", "Failed to get load", "Failed to parse load response"):
            assert bad not in text, text[-3000:]
        selections = [line for line in text.splitlines() if "Power-of-two selection" in line]
        assert selections, text[-3000:]
        assert not any("=-1" in line for line in selections), selections
        loads = requests.get(f"{base}/get_loads", timeout=30).json()
        values = [worker["load"] for worker in loads["workers"]]
        assert len(values) == 2 and all(value >= 0 for value in values), loads
    finally:
        try:
            os.killpg(router.pid, signal.SIGTERM)
            router.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(router.pid, signal.SIGKILL)
