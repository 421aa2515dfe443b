"""The one definition of an admission rejection: its status code, type, reason and retry hint.

With ``--fair-admission-control`` a request whose TTFT SLO this replica can no longer meet is
finished at intake (:mod:`sglang_fair.runtime.batching`) instead of queueing.  The client, or the
router in front of it, should try another replica at once.  What ``sglang-router`` 0.3.2 does
(measured by ``benchmark/router_probe.py``, ``benchmark/results/router_probe.json``): it retries a
request on another worker when the worker answers 408, 429, 500, 502, 503 or 504 (400 and 404 go
back to the client); and every non-2xx answer, 429 included, counts against the worker's circuit
breaker, which opens after ``--cb-failure-threshold`` (default 10) *consecutive* failures, a success
resetting the count.  Of the retried codes 429 is the one that says "busy, not broken" (503 reads
as an outage to clients and proxies), so the code is 429 with a ``Retry-After`` header.  A replica
that rejects ten in a row is still taken out by the breaker for ``--cb-timeout-duration-secs``:
keep rejections rare with ``--policy power_of_two`` and a 1 s ``/get_load`` poll
(``--worker-startup-check-interval 1``), or set ``--disable-circuit-breaker`` and let the health
checks find dead replicas (docs/reliability.md).  The HTTP guard
(:mod:`sglang_fair.runtime.http_routes`) adds the header and turns a streamed rejection into a
plain 429 before any byte of the stream is sent.

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

#: Retried on another worker by ``sglang-router``; "too many requests", not "broken".
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
