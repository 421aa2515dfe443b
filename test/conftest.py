"""Fixtures for every test folder: a real sglang_fair server, started and torn down by the tests.

``start_server(extra_args, log_dir)`` starts ``python -m sglang_fair.launch_server`` on a free port
(the built-in tiny model unless ``--model-path`` is among the arguments), waits until it answers,
and returns a :class:`ServerHandle`; ``handle.stop()`` ends its whole process group.  The server's
output goes to a file under ``log_dir`` (pytest keeps its tmp folders), and a failing test shows
that path and the log's tail.

Fixtures: ``server`` (session scope, one server per batch policy listed in the environment variable
``SGLANG_FAIR_E2E_POLICIES``, default ``sglang,fairbatching``, so every test that uses it runs
against each; started with :data:`SHARED_SERVER_ARGS`), and
``server_launcher`` (a function scope ``start_server`` that stops what it started) and
``session_server_launcher`` (the same for servers shared by a whole session, e.g. test/reliability's).

Test folders are not packages, so do not ``import conftest`` (pytest imports several files of that
name); use the fixtures.

Every server a test session starts shares one start-up calibration cache (a session temp folder in
``SGLANG_FAIR_CALIBRATION_CACHE``, unless that is already set), so only the first fairbatching server
of a given configuration times the model; the others read the result.  The calibration's time budget
is raised to 600 s (``SGLANG_FAIR_CALIBRATION_BUDGET``) so a loaded machine finishes it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
DEFAULT_E2E_POLICIES = "sglang,fairbatching"
START_TIMEOUT_S = float(os.environ.get("SGLANG_FAIR_E2E_START_TIMEOUT", "600"))


_SESSION_CALIBRATION_CACHE: str | None = None


def pytest_configure(config):
    global _SESSION_CALIBRATION_CACHE
    if not os.environ.get("SGLANG_FAIR_CALIBRATION_CACHE"):
        import tempfile

        _SESSION_CALIBRATION_CACHE = tempfile.mkdtemp(prefix="sglang_fair_calibration_")
        os.environ["SGLANG_FAIR_CALIBRATION_CACHE"] = _SESSION_CALIBRATION_CACHE
    # A loaded CI box may need more than the 60 s a server allows itself; the tests want the
    # calibration finished (and cached), not cut short.
    os.environ.setdefault("SGLANG_FAIR_CALIBRATION_BUDGET", "600")


def pytest_unconfigure(config):
    if _SESSION_CALIBRATION_CACHE is not None:
        import shutil

        shutil.rmtree(_SESSION_CALIBRATION_CACHE, ignore_errors=True)


class ServerStartError(RuntimeError):
    pass


class PortTakenError(ServerStartError):
    """The port picked by :func:`free_port` was taken before the server bound it (another process
    of the session, e.g. an in-process scheduler's ZMQ socket, got it in between): uvicorn logs the
    bind error but the server process stays up, and the port answers no HTTP."""


#: What uvicorn logs when its port is taken.
BIND_ERROR = "error while attempting to bind"
#: Start-up attempts on a fresh port each when the port was taken.
PORT_ATTEMPTS = 3


@dataclass
class ServerHandle:
    base_url: str
    process: subprocess.Popen
    log_path: Path
    args: list[str] = field(default_factory=list)
    startup_s: float | None = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """End the server and every process it started (they share its process group)."""
        if self.process.poll() is None:
            _signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.process, signal.SIGKILL)  # stragglers (scheduler, detokenizer)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # started with start_new_session: pgid == pid
    except ProcessLookupError:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(name="free_port")
def free_port_fixture():
    """A function returning a free loopback port (for routers and other helpers a test starts)."""
    return free_port


def wait_until_ready(handle: ServerHandle, timeout: float = START_TIMEOUT_S) -> None:
    """Until the server reports its model and has generated a token (``/health_generate``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if handle.process.poll() is not None:
            raise ServerStartError(
                f"server exited with status {handle.process.returncode} before it was ready;"
                f" log {handle.log_path}:\n{handle.log_tail()}"
            )
        if BIND_ERROR in handle.log_text():
            raise PortTakenError(f"port of {handle.base_url} was taken; log {handle.log_path}")
        try:
            if (
                requests.get(f"{handle.base_url}/model_info", timeout=5).ok
                and requests.get(f"{handle.base_url}/health_generate", timeout=30).ok
            ):
                return
        except requests.RequestException:
            pass
        time.sleep(1.0)
    handle.stop()
    raise ServerStartError(
        f"server not ready after {timeout:.0f} s; log {handle.log_path}:\n{handle.log_tail()}"
    )


def start_server(extra_args=(), log_dir: str | os.PathLike | None = None) -> ServerHandle:
    """Start ``python -m sglang_fair.launch_server *extra_args`` on a free port; wait until ready
    (on another port if the one picked was taken meanwhile, up to :data:`PORT_ATTEMPTS` times)."""
    for attempt in range(PORT_ATTEMPTS):
        try:
            return _start_server_once(extra_args, log_dir)
        except PortTakenError as exc:
            print(f"{exc}; retrying on another port", file=sys.stderr)
            if attempt == PORT_ATTEMPTS - 1:
                raise


def _start_server_once(extra_args, log_dir) -> ServerHandle:
    log_dir = Path(log_dir) if log_dir is not None else Path(os.environ.get("TMPDIR", "/tmp"))
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = ["--host", "127.0.0.1", "--port", str(port), *map(str, extra_args)]
    log_path = log_dir / f"server-{port}.log"
    # A server decides its platform itself, as it would for a user (this process may have decided
    # already, e.g. by importing the launcher, and would otherwise pass the decision on).
    inherited = ("SGLANG_FAIR_CPU_PLATFORM", "SGLANG_FAIR_CONFIG")
    env = {k: v for k, v in os.environ.items() if k not in inherited}
    started = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sglang_fair.launch_server", *args],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    handle = ServerHandle(f"http://127.0.0.1:{port}", process, log_path, args)
    print(f"server log: {log_path}", file=sys.stderr)
    try:
        wait_until_ready(handle)
    except BaseException:
        handle.stop()
        raise
    handle.startup_s = time.monotonic() - started
    print(f"server ready in {handle.startup_s:.1f} s: {handle.base_url}", file=sys.stderr)
    return handle


def e2e_policies() -> list[str]:
    text = os.environ.get("SGLANG_FAIR_E2E_POLICIES") or DEFAULT_E2E_POLICIES
    return [name.strip() for name in text.split(",") if name.strip()]


#: Flags of the shared ``server``: the defaults plus Prometheus metrics (test_http_slo reads them).
SHARED_SERVER_ARGS = ["--enable-metrics"]


@pytest.fixture(scope="session", params=e2e_policies())
def server(request, tmp_path_factory):
    """A server (default tiny model) per batch policy, shared by every module that asks for one:
    pytest runs all their tests of one policy before the next policy's server starts, so a session
    costs one start-up per policy instead of one per module and policy."""
    policy = request.param
    log_dir = tmp_path_factory.mktemp(f"server-{policy}")
    extra = ["--batch-policy", policy, *SHARED_SERVER_ARGS]
    handle = start_server(extra, log_dir)
    handle.policy = policy
    yield handle
    handle.stop()


def start_in_parallel(launch, configs) -> list[ServerHandle]:
    """``[launch(*config) for config in configs]``, the start-ups at once (each is mostly waiting for
    its model and calibration); the first failure is raised once all have ended."""
    handles: list = [None] * len(configs)
    errors: list = []

    def one(index):
        try:
            handles[index] = launch(*configs[index])
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(configs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return handles


@pytest.fixture
def server_launcher(tmp_path):
    """``start_server`` whose servers are stopped when the test ends; ``server_launcher.many(
    [(extra_args, log_dir), ...])`` starts several at once."""
    started: list[ServerHandle] = []

    def launch(extra_args=(), log_dir=None) -> ServerHandle:
        handle = start_server(extra_args, log_dir or tmp_path)
        started.append(handle)
        return handle

    launch.many = lambda configs: start_in_parallel(launch, configs)
    yield launch
    for handle in started:
        handle.stop()


@pytest.fixture(scope="session")
def session_server_launcher(tmp_path_factory):
    """``start_server(extra_args, name)`` for servers shared across modules; a server may be stopped
    earlier by its user (``handle.stop()``), the rest are stopped when the session ends."""
    started: list[ServerHandle] = []

    def launch(extra_args=(), name: str = "server") -> ServerHandle:
        handle = start_server(extra_args, tmp_path_factory.mktemp(name))
        started.append(handle)
        return handle

    yield launch
    for handle in started:
        handle.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test that used a server shows where that server's log is, and its tail."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, ServerHandle):
            report.sections.append(
                (f"server log {value.log_path}", value.log_tail(120))
            )
