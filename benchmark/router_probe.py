"""What the real ``sglang-router`` does with a worker's answers, measured on loopback fake workers.

    python benchmark/router_probe.py [--out benchmark/results/router_probe.json]

Fake workers (stdlib HTTP servers in this process) answer the few routes the router calls
(``/health``, ``/get_server_info``, ``/get_model_info``, ``/v1/models``, ``/get_load``) and answer
``POST /generate`` with a status code chosen per worker.  Against them the probe measures:

* ``poll``: how often ``--policy power_of_two`` fetches ``GET /get_load``, with the router's default
  flags and with ``--worker-startup-check-interval 1``;
* ``retry``: for each status code, whether a request that one worker answers with it is retried on
  the other worker (the client sees 200) or handed back to the client;
* ``breaker``: for each code, whether a run of such answers opens the router's circuit breaker on
  that worker (its log says ``closed -> open``; the worker then gets no request until the breaker's
  timeout), with ``--cb-failure-threshold 3`` so a handful of requests show it; whether a success
  between failures resets the count (pattern 429, 429, 200); and what a worker that is gone
  (connection refused) does.

Traffic stays on 127.0.0.1.  The result is written with :mod:`sglang_fair.strict_json`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))

from sglang_fair import strict_json  # noqa: E402

CODES = (400, 404, 408, 429, 500, 502, 503, 504)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeWorker:
    """A worker whose ``/generate`` answers ``status`` (200 by default); records what it gets."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.status = 200
        self.dead = False  # hang up on every request without an answer (a crashed process)
        self.pattern: list[int] | None = None  # answers in turn, instead of ``status``
        self.load_polls: list[float] = []
        self.generate_hits: list[tuple[float, int]] = []
        self.lock = threading.Lock()
        worker = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _json(self, code: int, body, headers=()):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for key, value in headers:
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                path = self.path.split("?")[0]
                if path == "/get_load":
                    with worker.lock:
                        worker.load_polls.append(time.monotonic())
                    self._json(200, [{"dp_rank": 0, "num_tokens": 0, "num_reqs": 0}])
                elif path in ("/health", "/health_generate"):
                    self._json(200, {})
                elif path in ("/get_server_info", "/server_info"):
                    self._json(200, {"dp_size": 1, "model_path": "fake", "tokenizer_path": "fake"})
                elif path in ("/get_model_info", "/model_info"):
                    self._json(200, {"model_path": "fake", "tokenizer_path": "fake", "is_generation": True})
                elif path == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
                else:
                    self._json(404, {"error": "not found"})

            def do_POST(self):
                if worker.dead:  # keep-alive connections outlive the closed socket: drop them too
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                with worker.lock:
                    if worker.pattern:
                        status = worker.pattern[len(worker.generate_hits) % len(worker.pattern)]
                    else:
                        status = worker.status
                    worker.generate_hits.append((time.monotonic(), status))
                if status == 200:
                    self._json(200, {"text": "ok", "meta_info": {"id": "x", "finish_reason": {"type": "length"}}})
                else:
                    self._json(status, {"error": {"message": f"fake {status}", "code": status}},
                               headers=(("retry-after", "1"),) if status == 429 else ())

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self, status: int = 200, pattern: list[int] | None = None) -> None:
        with self.lock:
            self.status = status
            self.pattern = pattern
            self.load_polls.clear()
            self.generate_hits.clear()

    def close(self) -> None:
        self.dead = True
        self.server.shutdown()
        self.server.server_close()


class Router:
    def __init__(self, urls: list[str], extra: list[str], log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1",
             "--port", str(self.port), "--worker-urls", *urls, *extra],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, workers: int = 2, timeout_s: float = 60.0) -> None:
        """Until ``GET /workers`` lists ``workers`` healthy workers: the router answers ``/health``
        before its background registration is done, and a request sent then gets 503."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"router exited: {self.log_path.read_text()[-2000:]}")
            try:
                listed = requests.get(f"{self.url}/workers", timeout=2).json().get("workers", [])
                if sum(1 for w in listed if w.get("is_healthy")) >= workers:
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.3)
        raise RuntimeError("router not ready")

    def stop(self) -> None:
        # Its graceful shutdown waits for idle connections; nothing here needs it.
        for sig, wait_s in ((signal.SIGTERM, 2), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(wait_s)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        self.log.close()


def _intervals(stamps: list[float]) -> list[float]:
    return [round(b - a, 3) for a, b in zip(stamps, stamps[1:])]


def measure_poll(workers, log_dir: Path, extra: list[str], watch_s: float) -> dict:
    for worker in workers:
        worker.reset()
    router = Router([w.url for w in workers], ["--policy", "power_of_two", *extra], log_dir / "poll.log")
    try:
        router.wait_ready()
        time.sleep(watch_s)
    finally:
        router.stop()
    gaps = _intervals(workers[0].load_polls)
    return {
        "flags": ["--policy", "power_of_two", *extra],
        "watched_s": watch_s,
        "polls_seen": len(workers[0].load_polls),
        "intervals_s": gaps,
        "median_interval_s": sorted(gaps)[len(gaps) // 2] if gaps else None,
    }


def _run_case(workers, log_dir: Path, name: str, count: int, threshold: int, *, status: int = 200,
              pattern: list[int] | None = None, close_bad: bool = False) -> dict:
    """Worker 0 misbehaves (``status``, ``pattern`` or shut down), worker 1 answers 200; round
    robin; what the client gets and how many attempts reach each worker."""
    bad, good = workers
    bad.reset(status, pattern)
    good.reset(200)
    router = Router(
        [bad.url, good.url],
        ["--policy", "round_robin", "--cb-failure-threshold", str(threshold),
         "--cb-timeout-duration-secs", "60", "--retry-initial-backoff-ms", "10",
         "--retry-max-backoff-ms", "100", "--health-check-interval-secs", "600"],
        log_dir / f"{name}.log",
    )
    client_codes: list[int] = []
    try:
        router.wait_ready()
        if close_bad:
            bad.close()
        for _ in range(count):
            try:
                response = requests.post(f"{router.url}/generate", json={"text": "x"}, timeout=30)
                client_codes.append(response.status_code)
            except requests.RequestException:
                client_codes.append(-1)
    finally:
        router.stop()
        if close_bad:
            workers[0] = FakeWorker("a")  # a fresh one for any later case
    log = _plain(router.log_path.read_text(errors="replace"))
    hits_bad = len(bad.generate_hits)
    late_bad = sum(1 for _, code in bad.generate_hits[count // 2:])
    return {
        "bad_worker": "gone after registration (refuses, drops open connections)" if close_bad else (pattern or status),
        "client_codes": {str(c): client_codes.count(c) for c in sorted(set(client_codes))},
        "retried_elsewhere": client_codes.count(200) == len(client_codes) and (hits_bad > 0 or close_bad),
        "bad_worker_hits": hits_bad,
        "good_worker_hits": len(good.generate_hits),
        "breaker_opened": "closed -> open" in log,
    }


def _plain(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def measure_codes(workers, log_dir: Path, count: int, threshold: int) -> dict:
    results = {str(code): _run_case(workers, log_dir, f"code-{code}", count, threshold, status=code) for code in CODES}
    # A success between failures: does it reset the breaker's count (consecutive failures)?
    pattern = [429] * (threshold - 1) + [200]
    results["pattern_" + "_".join(map(str, pattern))] = _run_case(
        workers, log_dir, "pattern", count * 2, threshold, pattern=pattern
    )
    results["connection_refused"] = _run_case(workers, log_dir, "refused", count, threshold, close_bad=True)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "benchmark" / "results" / "router_probe.json"))
    parser.add_argument("--poll-watch-s", type=float, default=70.0)
    parser.add_argument("--requests-per-code", type=int, default=16)
    parser.add_argument("--cb-failure-threshold", type=int, default=3)
    parser.add_argument("--log-dir", default=None)
    args = parser.parse_args(argv)
    import sglang_router  # noqa: F401  (the router under test must be installed)
    from importlib.metadata import version

    log_dir = Path(args.log_dir or os.environ.get("TMPDIR", "/tmp")) / f"router_probe_{os.getpid()}"
    log_dir.mkdir(parents=True, exist_ok=True)
    workers = [FakeWorker("a"), FakeWorker("b")]
    started = time.time()
    try:
        codes = measure_codes(workers, log_dir, args.requests_per_code, args.cb_failure_threshold)
        poll_fast = measure_poll(workers, log_dir, ["--worker-startup-check-interval", "1"], 10.0)
        poll_default = measure_poll(workers, log_dir, [], args.poll_watch_s)
    finally:
        for worker in workers:
            worker.close()
    result = {
        "what": "sglang-router behaviour against fake loopback workers (benchmark/router_probe.py)",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": platform.node(),
        "load_average": list(os.getloadavg()),
        "sglang_router_version": version("sglang-router"),
        "cb_failure_threshold": args.cb_failure_threshold,
        "requests_per_code": args.requests_per_code,
        "poll_default": poll_default,
        "poll_startup_check_interval_1": poll_fast,
        "codes": codes,
        "retried_codes": [int(c) for c, r in codes.items() if c.isdigit() and r["retried_elsewhere"]],
        "breaker_codes": [int(c) for c, r in codes.items() if c.isdigit() and r["breaker_opened"]],
        "wall_s": round(time.time() - started, 1),
        "log_dir": str(log_dir),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    strict_json.write(args.out, result)
    print(json.dumps({k: result[k] for k in ("retried_codes", "breaker_codes")}))
    print("poll default median", poll_default["median_interval_s"], "fast", poll_fast["median_interval_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
