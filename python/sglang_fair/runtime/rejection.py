"""The one definition of an admission rejection: its status code, type, reason and retry hint.

With ``--fair-admission-control`` a request whose TTFT SLO this replica can no longer meet is
finished at intake (:mod:`sglang_fair.runtime.batching`) instead of queueing.  The client, or the
router in front of it, should try another replica at once.  ``sglang-router`` 0.3.2 retries a
request on another worker when the worker answers 408 or 429 (and gives the client 400, 404, 500,
503 ... as they are), and a 429 does not open its circuit breaker on the worker that sent it
(``benchmark/router_probe.py``, ``benchmark/results/router_probe.json``), so the code is 429 with a
``Retry-After`` header.  The HTTP guard (:mod:`sglang_fair.runtime.http_routes`) adds that header
and turns a streamed rejection into a plain 429 before any byte of the stream is sent.

Plain Python (no sglang import).
"""

from __future__ import annotations

from http import HTTPStatus

__all__ = [
    "ADMISSION_ERR_TYPE",
    "ADMISSION_REASON",
    "ADMISSION_RETRY_AFTER_S",
    "ADMISSION_STATUS",
    "admission_rejection_message",
    "is_admission_rejection",
]

#: What ``sglang-router`` retries on another worker without counting it against this one.
ADMISSION_STATUS = HTTPStatus.TOO_MANY_REQUESTS
ADMISSION_ERR_TYPE = "TooManyRequestsError"
#: The words every admission rejection carries (clients and the HTTP guard recognise it by them).
ADMISSION_REASON = "prefill admission budget exhausted"
#: Seconds a client should wait before retrying *this* replica: about one PAB refresh; another
#: replica may be tried at once.
ADMISSION_RETRY_AFTER_S = 1


def admission_rejection_message(ttft_slo_s: float) -> str:
    return (
        f"Too many requests: this replica cannot meet the request's TTFT SLO of {ttft_slo_s:g} s"
        f" ({ADMISSION_REASON}); retry elsewhere now or here after {ADMISSION_RETRY_AFTER_S} s"
    )


def is_admission_rejection(message: object, status_code: object) -> bool:
    return status_code == ADMISSION_STATUS and isinstance(message, str) and ADMISSION_REASON in message
