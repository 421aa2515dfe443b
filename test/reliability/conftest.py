"""Servers shared by the reliability tests, and the JSON summary they write.

* ``rel_server``: one server per batch policy in ``SGLANG_FAIR_RELIABILITY_POLICIES`` (default
  ``sglang,fairbatching``), session scope, so the overload, abort-storm and fuzzing modules share
  one start-up per policy (pytest runs every test of one policy before starting the next one's
  server, and stops the first then).
* ``reliability_summary``: a dict the tests fill (``summary[test][policy] = {...}``); at the end of
  the session it is written as strict JSON to ``$SGLANG_FAIR_RELIABILITY_OUT`` when that is set
  (docs/reliability.md's figures come from such a run).

Short versions run in the default run; ``-m slow`` runs the long ones (soaks, cluster tests).
"""

from __future__ import annotations

import datetime
import os
import platform

import pytest

from reliability_helpers import reliability_policies
#: The default flags (a user's first launch); they also share the start-up calibration cache with
#: the other test folders' fairbatching servers.
SERVER_FLAGS: list[str] = []


@pytest.fixture(scope="session", params=reliability_policies())
def rel_server(request, session_server_launcher):
    policy = request.param
    handle = session_server_launcher(["--batch-policy", policy, *SERVER_FLAGS], f"rel-{policy}")
    handle.policy = policy
    yield handle
    handle.stop()


_SUMMARY: dict = {}


@pytest.fixture(scope="session")
def reliability_summary():
    return _SUMMARY


def pytest_sessionfinish(session, exitstatus):
    out = os.environ.get("SGLANG_FAIR_RELIABILITY_OUT")
    if not out or not _SUMMARY:
        return
    from sglang_fair import strict_json

    data = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
        "load_average_at_end": list(os.getloadavg()),
        "exit_status": int(exitstatus),
        "tests": _SUMMARY,
    }
    strict_json.write(out, data)
