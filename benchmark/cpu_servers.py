"""The CPU benchmarks' servers: a launched server (``Peer``), waiting for it, stopping it, and the
engine's saturation throughput.  Shared by ``cpu_side_by_side.py`` and ``cpu_user_bench.py``."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_model  # noqa: E402
import load_client  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Peer:
    name: str
    args: list[str]
    port: int = 0
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def wait_ready(peer: Peer, timeout_s: float) -> None:
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if peer.process.poll() is not None:
            raise RuntimeError(f"server {peer.name} exited ({peer.process.returncode}); see {peer.log_path}")
        try:
            response = requests.post(
                f"{peer.url}/generate",
                json={"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 2, "ignore_eos": True}},
                timeout=30,
            )
            if response.status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(2.0)
    raise RuntimeError(f"server {peer.name} not ready after {timeout_s:.0f} s; see {peer.log_path}")


def wait_idle(peer: Peer, timeout_s: float = 60.0) -> None:
    """Until the server reports no running or waiting request (cancelled streams abort theirs)."""
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            loads = requests.get(f"{peer.url}/v1/loads", timeout=5).json()["loads"]
            if all(load["num_running_reqs"] + load["num_waiting_reqs"] == 0 for load in loads):
                return
        except (requests.RequestException, KeyError, ValueError):
            return  # no load endpoint: nothing to wait for
        time.sleep(1.0)


def stop_server(peer: Peer) -> None:
    if peer.process is None or peer.process.poll() is not None:
        return
    try:
        os.killpg(peer.process.pid, signal.SIGTERM)
        peer.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(peer.process.pid, signal.SIGKILL)
        peer.process.wait(timeout=10)
    except ProcessLookupError:
        pass


def measure_saturation_rps(url: str, specs: list[load_client.RequestSpec], seed: int,
                           vocab_size: int = cpu_model.VOCAB_SIZE) -> float:
    """Completed requests per second when ``specs`` all arrive at once (the engine's upper bound
    at this workload's lengths, ignoring SLOs)."""
    burst = [load_client.RequestSpec(s.index, 0.0, s.prompt_tokens, s.output_tokens, load_client.NO_SLO_S, load_client.NO_SLO_S) for s in specs]
    results, duration_s = asyncio.run(load_client.run_workload(
        url, burst, seed=seed, vocab_size=vocab_size, drain_timeout_s=300,
        description="saturation burst"))
    return load_client.summarize(results, duration_s)["throughput_rps"]
