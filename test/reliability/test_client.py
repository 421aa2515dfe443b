"""The reliability tests' HTTP client (reliability_helpers.post): what it counts as lost, and the one
failure it sends again (a body it could not write: the server never had that request)."""

from __future__ import annotations

import asyncio

import aiohttp

from reliability_helpers import UNSENT_BODY, Tally, post


class _Response:
    def __init__(self, status: int, text: str = "") -> None:
        self.status, self._text, self.headers = status, text, {}

    async def text(self) -> str:
        return self._text

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> bool:
        return False


class _Session:
    """Answers each ``post`` with the next of ``answers``: an exception is raised, a status answered."""

    def __init__(self, answers) -> None:
        self.answers, self.calls = list(answers), 0

    def post(self, url, json=None, timeout=None):
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return _Response(answer)


def _post(answers):
    session = _Session(answers)
    outcome = asyncio.run(post(session, "http://127.0.0.1:1/generate", {}, 0.0, timeout_s=5.0))
    return outcome, session.calls


def test_a_body_that_could_not_be_written_is_sent_once_more_and_counted():
    unsent = aiohttp.ClientOSError(32, f"{UNSENT_BODY} for http://127.0.0.1:1/generate")
    outcome, calls = _post([unsent, 200])
    assert (outcome.status, outcome.resent_unsent, calls) == (200, True, 2)
    # Twice in a row is a lost request (no third try).
    outcome, calls = _post([unsent, unsent, 200])
    assert (outcome.status, outcome.resent_unsent, calls) == (-1, True, 2)
    summary = Tally([outcome]).summary()
    assert (summary["lost"], summary["resent_unsent"]) == (1, 1)


def test_any_other_failure_is_lost_without_a_second_try():
    for failure in (aiohttp.ServerDisconnectedError(), aiohttp.ClientOSError(104, "Connection reset by peer"),
                    asyncio.TimeoutError()):
        outcome, calls = _post([failure, 200])
        assert (outcome.status, outcome.resent_unsent, calls) == (-1, False, 1)
        summary = Tally([outcome]).summary()
        assert (summary["lost"], summary["resent_unsent"]) == (1, 0)
