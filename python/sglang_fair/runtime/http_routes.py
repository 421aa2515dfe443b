"""sglang_fair's HTTP routes, added to SGLang's FastAPI app in the HTTP (tokenizer) process.

* ``GET /get_load``: the load ``sglang-router --policy power_of_two`` polls (PAB-derived, lower is
  better; shape in :mod:`sglang_fair.runtime.load`).
* ``GET /fair/state``: the runtime's full state per data-parallel rank (policy, time budget, min
  slack, PAB, skipped decodes, cost-model fit and its error, SLO attainment counters).

Channel: the state lives in the scheduler process(es).  We ask for it through SGLang's own
tokenizer->scheduler ``get_internal_state`` communicator (the one behind ``/server_info``), whose
answer ``FairScheduler.get_internal_state`` extends with an ``sglang_fair`` entry.  That reuses a
request type SGLang already routes to every DP rank and answers between iterations, so there is no
new IPC, no file to go stale and nothing to change in the tokenizer process; the cost is one
scheduler round trip per poll, fine at sglang-router 0.3.2's interval of about 30 s
(``test/runtime/test_http_router.py``).

:class:`RequestGuard` (an ASGI middleware in front of SGLang's app) on ``/generate``,
``/v1/completions`` and ``/v1/chat/completions``:

* tags every answer with ``x-sglang-fair-replica: host:port`` so a client behind a router sees
  which replica served it;
* answers a body that asks for an absurd number of completions (``n``, which SGLang 0.5.23 expands
  before any check, until the server runs out of memory) or a ``response_format`` that is not an
  object (a 500 in SGLang's request model) with HTTP 400 naming the field, and with
  a batch policy other than ``sglang`` one whose ``custom_params`` or SLO fields are bad
  (:func:`sglang_fair.runtime.slo.check_custom_params`), before the request reaches the tokenizer
  or the scheduler, streaming or not;
* with ``--fair-admission-control``, rejects a request at once (429, the admission rejection's
  reason and ``Retry-After``) while the replica's last Prefill Admission Budget, at most
  :data:`PAB_REFRESH_S` old, is exhausted on every rank and the request asks for no TTFT longer
  than the default (:class:`PabGate`): the scheduler would reject it anyway, and a rejection
  decided there first costs the tokenizer, both IPC hops and a scheduler intake, the work that an
  overloaded front end can least spare (a 10-minute soak at 3x capacity rejected 57,987 requests
  that way).  Otherwise the scheduler's intake decides, as before;
* with ``--fair-admission-control``, gives an admission rejection (:mod:`.rejection`) its
  ``Retry-After`` header, and for a streamed request holds the response head until the first
  event: if that event is the rejection, the client gets a plain 429 instead of a 200 stream that
  carries an error, so that a router can retry it on another replica.

:func:`install_token_id_check` (every policy): a prompt given as token ids outside the model's
vocabulary is a 400 in the tokenizer process; SGLang 0.5.23 passes it on and its scheduler process
dies on the embedding lookup (IndexError), taking the server down; an empty prompt (0 tokens) is
a 400 too, since such a request is never answered (both found by test/reliability's fuzzing).

:func:`install_created_time_propagation` (every policy): the HTTP server's receipt time of each
request reaches the scheduler, where the runtime starts its TTFT (SGLang 0.5.23 drops it on the way).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time

from sglang_fair.runtime.load import load_entry
from sglang_fair.runtime.rejection import (
    ADMISSION_ERR_TYPE,
    ADMISSION_RETRY_AFTER_S,
    ADMISSION_STATUS,
    admission_rejection_message,
    is_admission_rejection,
)
from sglang_fair.runtime.slo import check_custom_params

__all__ = [
    "GUARDED_PATHS",
    "PAB_REFRESH_S",
    "PabGate",
    "RequestGuard",
    "bad_token_id",
    "fair_states",
    "find_body_problem",
    "install_routes",
    "install_token_id_check",
    "install_created_time_propagation",
]

logger = logging.getLogger(__name__)

FAIR_STATE_KEY = "sglang_fair"


async def fair_states() -> list[dict]:
    """The ``sglang_fair`` internal state of every DP rank (empty dicts where a rank has none)."""
    from sglang.srt.entrypoints.http_server import get_global_state

    internal = await get_global_state().tokenizer_manager.get_internal_state()
    return [(state or {}).get(FAIR_STATE_KEY) or {} for state in internal]


def install_routes(app, *, replica: str | None = None, validate: bool = False, admission: bool = False,
                   default_ttft_s: float = 1.0) -> None:
    """Add the routes and the :class:`RequestGuard` to ``app`` (SGLang's ``http_server.app``), before
    it starts; idempotent.  ``default_ttft_s``: the server's TTFT SLO (``--fair-ttft-slo``)."""
    from fastapi.responses import JSONResponse

    existing = {getattr(route, "path", None) for route in app.router.routes}
    install_token_id_check()
    install_created_time_propagation()
    gate = PabGate(default_ttft_s) if admission else None
    if not getattr(app.state, "sglang_fair_guard", False):
        app.add_middleware(RequestGuard, replica=replica, validate=validate, admission=admission, gate=gate)
        app.state.sglang_fair_guard = True
        app.state.sglang_fair_gate = gate

    if "/get_load" not in existing:

        @app.get("/get_load")
        async def get_load():
            try:
                states = await fair_states()
            except Exception as exc:  # the scheduler is gone or not up yet
                logger.warning("sglang_fair: /get_load failed: %s", exc)
                return JSONResponse({"error": f"load unavailable: {exc}"}, status_code=503)
            return [load_entry(rank, state) for rank, state in enumerate(states)]

    if "/fair/state" not in existing:

        @app.get("/fair/state")
        async def fair_state():
            try:
                states = await fair_states()
            except Exception as exc:
                return JSONResponse({"error": f"state unavailable: {exc}"}, status_code=503)
            gate = getattr(app.state, "sglang_fair_gate", None)
            return {"dp_ranks": states, "http_admission": gate.snapshot() if gate is not None else None}


def bad_token_id(input_ids, vocab_size: int) -> str | None:
    """Why ``input_ids`` cannot be embedded by a model of ``vocab_size`` tokens, or None."""
    if input_ids is not None and len(input_ids) == 0:
        # An empty prompt (``"text": ""`` with a tokenizer that adds no BOS) is never answered.
        return "the prompt is empty (0 tokens): give at least one token"
    if not input_ids or not vocab_size:
        return None
    low, high = min(input_ids), max(input_ids)
    if low >= 0 and high < vocab_size:
        return None
    index, value = next((i, t) for i, t in enumerate(input_ids) if not 0 <= t < vocab_size)
    return f"input_ids[{index}] = {value} is not a token id of this model (valid: 0 to {vocab_size - 1})"


def install_token_id_check() -> None:
    """Wrap ``TokenizerManager._validate_one_request`` (SGLang's per-request check, called with the
    prompt's token ids however they were given) with :func:`bad_token_id`; idempotent."""
    from sglang.srt.managers.tokenizer_manager import TokenizerManager

    original = TokenizerManager._validate_one_request
    if getattr(original, "_sglang_fair_checked", False):
        return

    def validate_one_request(self, obj, input_ids):
        problem = bad_token_id(input_ids, getattr(self.model_config, "vocab_size", 0))
        if problem is not None:
            raise ValueError(problem)  # SGLang answers it with HTTP 400
        return original(self, obj, input_ids)

    validate_one_request._sglang_fair_checked = True
    TokenizerManager._validate_one_request = validate_one_request


def install_created_time_propagation() -> None:
    """Send the tokenizer's receipt time of each request on to the scheduler; idempotent.

    SGLang 0.5.23 stamps ``created_time`` (``time.perf_counter()``) when the HTTP server takes a
    request, but its ``APIServerReqTimeStats.__getstate__`` drops it when the request is pickled to
    the scheduler, whose copy then holds 0.  Added to the pickled state, it lands in the
    scheduler's ``SchedulerReqTimeStats.created_time`` (``new_from_obj`` copies the fields both
    have), and the runtime starts each TTFT there (:func:`records.arrival_time_s`) instead of at
    the scheduler's receipt, so the time a request spends before the scheduler counts against its
    TTFT as the client counts it (measured on a loaded 2-core CPU server: a small part of the time
    the scheduler does not see; most is after the first token leaves it, ``docs/results-cpu.md``)."""
    from sglang.srt.observability.req_time_stats import APIServerReqTimeStats

    original = APIServerReqTimeStats.__getstate__
    if getattr(original, "_sglang_fair_created_time", False):
        return

    def getstate(self):
        state = original(self)
        if self.created_time:
            state["created_time"] = self.created_time
        return state

    getstate._sglang_fair_created_time = True
    APIServerReqTimeStats.__getstate__ = getstate


# ---------------------------------------------------------------------------------- request guard
#: Where ``custom_params`` sits in each guarded route's body.
GUARDED_PATHS = {
    "/generate": "sampling_params",
    "/v1/completions": "",
    "/v1/chat/completions": "",
}
REPLICA_HEADER = b"x-sglang-fair-replica"


#: Most completions one request may ask for (``n``).  SGLang expands ``n`` into that many requests
#: in the tokenizer process before anything checks it: ``"n": 2147483648`` exhausts the server's
#: memory and it dies (found by test/reliability's fuzzing).
MAX_PARALLEL_SAMPLES = 1024


def _bad_n(value: object, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PARALLEL_SAMPLES:
        return f"{field} must be an integer from 1 to {MAX_PARALLEL_SAMPLES}, got {value!r}"[:300]
    return None


def _batch_size(data: dict) -> int | None:
    """How many prompts a ``/generate`` batch holds; ``None`` for a single prompt, or prompt fields
    of a shape SGLang does not take (left to SGLang)."""
    text, input_ids = data.get("text"), data.get("input_ids")
    if isinstance(text, list):
        return len(text)
    if text is None and isinstance(input_ids, list) and input_ids and all(isinstance(i, list) for i in input_ids):
        return len(input_ids)
    return None


def _bad_batch_shape(data: dict) -> tuple[str, str] | None:
    """A batch must hold a prompt, and a ``sampling_params`` list must be a batch's, with one object
    per prompt.  SGLang indexes these or reads them as objects before checking them: an empty batch
    or ``"sampling_params": []`` was an IndexError, a list for a single prompt an AttributeError,
    each an HTTP 500 with a traceback under either policy (found by test/reliability's long
    fuzzing)."""
    batch = _batch_size(data)
    if batch == 0:  # SGLang indexes the first prompt of a batch: a 500 for an empty one
        field = "text" if isinstance(data.get("text"), list) else "input_ids"
        return field, f"{field} must not be an empty list"
    params = data.get("sampling_params")
    if not isinstance(params, list):
        return None
    for index, item in enumerate(params):
        if not isinstance(item, dict):
            return f"sampling_params[{index}]", f"sampling_params[{index}] must be a JSON object"
    if batch is None or len(params) != batch:
        prompts = "a single prompt" if batch is None else f"a batch of {batch} prompts"
        return "sampling_params", (f"sampling_params must be an object, or for a batch a list with one "
                                   f"object per prompt; got a list of {len(params)} for {prompts}")
    return None


def _body_object(body: bytes) -> dict | None:
    """The body as a JSON object, or None (not JSON, or not an object: SGLang answers those)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _param_holders(path: str, data: dict) -> list[tuple[str, object]]:
    """``(field prefix, object)`` for each place of the body that holds a prompt's parameters
    (``n``, ``custom_params``...): ``/generate``'s ``sampling_params`` (one per prompt of a batch),
    else the body itself."""
    if GUARDED_PATHS.get(path) != "sampling_params":
        return [("", data)]
    params = data.get("sampling_params")
    if isinstance(params, list):  # a batch: one dict per prompt
        return [(f"sampling_params[{i}].", item) for i, item in enumerate(params)]
    return [("sampling_params.", params)]


def find_body_problem(path: str, body: bytes, *, check_slos: bool = True) -> tuple[str, str] | None:
    """``(field, message)`` of the first bad field in a guarded route's body, else None: ``n`` out of
    range and a ``sampling_params`` list of the wrong shape (always), ``custom_params`` or its SLOs
    (with ``check_slos``).

    A body that is not a JSON object is left to SGLang, which answers it with its own 400.
    """
    data = _body_object(body)
    if data is None:
        return None
    if GUARDED_PATHS.get(path) == "sampling_params":
        problem = _bad_batch_shape(data)
        if problem is not None:
            return problem
    for prefix, holder in _param_holders(path, data):
        if not isinstance(holder, dict):
            continue
        problem = _bad_n(holder.get("n"), f"{prefix}n")
        if problem is not None:
            return f"{prefix}n", problem
        response_format = holder.get("response_format")
        if response_format is not None and not isinstance(response_format, dict):
            # SGLang's request model calls .get() on it: a 500 and a traceback per request.
            return f"{prefix}response_format", f"{prefix}response_format must be a JSON object"
        if not check_slos or "custom_params" not in holder:
            continue
        field = f"{prefix}custom_params"
        try:
            check_custom_params(holder["custom_params"], field)
        except ValueError as exc:
            message = str(exc)
            named = message.split(" ", 1)[0]
            return (named if named.startswith(field) else field), message
    return None


def _error_body(message: str, err_type: str, code: int, param: str | None = None) -> bytes:
    # The shape of OpenAI's errors, which SGLang's /generate answers share ({"error": {"message"}}).
    error = {"message": message, "type": err_type, "param": param, "code": int(code)}
    return json.dumps({"error": error}).encode()


async def _send_json(send, status: int, body: bytes, headers: list) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": int(status),
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _stream_rejection(chunk: bytes) -> str | None:
    """The reason, when the first event of a stream is an admission rejection."""
    for line in chunk.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        try:
            event = json.loads(line[5:])
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        error = event.get("error") if isinstance(event.get("error"), dict) else event
        if is_admission_rejection(error.get("message"), error.get("code")):
            return error["message"]  # /generate and the OpenAI routes' error events
        finish = (event.get("meta_info") or {}).get("finish_reason") if isinstance(event.get("meta_info"), dict) else None
        if isinstance(finish, dict) and is_admission_rejection(finish.get("message"), finish.get("status_code")):
            return finish["message"]
    return None


#: Seconds between the HTTP process's reads of the replica's PAB while requests arrive (one
#: scheduler round trip each, answered between iterations); a reading older than twice this is not
#: acted on.
PAB_REFRESH_S = 0.25


class PabGate:
    """The replica's last Prefill Admission Budget as the HTTP process read it (module docstring).

    Read through the same ``get_internal_state`` channel as ``/fair/state``, at most every
    :data:`PAB_REFRESH_S` and only while requests arrive (the read runs in the background; a
    request never waits for it); exhausted means ``pab.seconds <= 0`` on every data-parallel rank,
    when the scheduler's own check (``BatchPolicy.admit``) fails for any prompt at the default TTFT.
    """

    def __init__(self, default_ttft_s: float) -> None:
        self.default_ttft_s = default_ttft_s
        self.read_s = -math.inf  # time.monotonic() of the last reading
        self.exhausted = False
        self.rejected = 0
        self.readings = 0
        self._reading: asyncio.Task | None = None

    def rejects(self, body: bytes, path: str) -> bool:
        """Whether this request is rejected here (and counted); starts a fresh reading when due."""
        now_s = time.monotonic()
        if now_s - self.read_s >= PAB_REFRESH_S and (self._reading is None or self._reading.done()):
            self._reading = asyncio.ensure_future(self._read())
        if not self.exhausted or now_s - self.read_s > 2 * PAB_REFRESH_S:
            return False
        if _asks_longer_ttft(path, body, self.default_ttft_s):
            return False  # judged against a longer horizon: the scheduler decides
        self.rejected += 1
        return True

    async def _read(self) -> None:
        try:
            states = await fair_states()
        except Exception:  # the scheduler is busy starting or gone: decide nothing here
            self.exhausted = False
            return
        seconds = [((state.get("runtime", state).get("pab") or {}).get("seconds")) for state in states]
        self.exhausted = bool(seconds) and all(isinstance(s, (int, float)) and s <= 0 for s in seconds)
        self.read_s = time.monotonic()
        self.readings += 1

    def snapshot(self) -> dict:
        return {"rejected": self.rejected, "pab_exhausted": self.exhausted, "readings": self.readings,
                "refresh_s": PAB_REFRESH_S}


def _asks_longer_ttft(path: str, body: bytes, default_ttft_s: float) -> bool:
    """Whether any prompt of the body sets a TTFT SLO above the default (``custom_params``)."""
    data = _body_object(body)
    for _, holder in _param_holders(path, data) if data is not None else []:
        custom = holder.get("custom_params") if isinstance(holder, dict) else None
        ttft = custom.get("ttft_slo") if isinstance(custom, dict) else None
        if isinstance(ttft, (int, float)) and ttft > default_ttft_s:
            return True
    return False


class RequestGuard:
    """Pure ASGI middleware (see the module docstring); every other path passes straight through."""

    def __init__(self, app, *, replica: str | None = None, validate: bool = False, admission: bool = False,
                 gate: PabGate | None = None):
        self.app = app
        self.replica_header = [(REPLICA_HEADER, replica.encode())] if replica else []
        self.validate = validate
        self.admission = admission
        self.gate = gate

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or scope.get("method") not in ("POST", "PUT") or scope.get("path") not in GUARDED_PATHS:
            return await self.app(scope, receive, send)
        # Every policy reads the body: the ``n`` check keeps the server alive.
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away while sending
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        problem = find_body_problem(scope["path"], body, check_slos=self.validate)
        if problem is not None:
            field, text = problem
            return await _send_json(send, 400, _error_body(text, "BadRequestError", 400, field), self.replica_header)
        if self.gate is not None and self.gate.rejects(body, scope["path"]):
            reason = admission_rejection_message(self.gate.default_ttft_s)
            retry_after = (b"retry-after", str(ADMISSION_RETRY_AFTER_S).encode())
            return await _send_json(send, ADMISSION_STATUS, _error_body(reason, ADMISSION_ERR_TYPE, ADMISSION_STATUS),
                                    [*self.replica_header, retry_after])
        receive = _replay(body, receive)
        send = _tagged(send, self.replica_header)
        if self.admission:
            send = _RejectionTranslator(send)
        await self.app(scope, receive, send)


def _replay(body: bytes, receive):
    """``receive`` that hands the app the body already read, then the client's later messages
    (SGLang watches for ``http.disconnect`` to abort a request whose client left)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _tagged(send, headers: list):
    if not headers:
        return send

    async def tagged(message):
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *headers]}
        await send(message)

    return tagged


class _RejectionTranslator:
    """Holds the response head until the first body bytes; see the module docstring."""

    def __init__(self, send) -> None:
        self.send = send
        self.start: dict | None = None
        self.decided = False
        self.swallow = False

    async def __call__(self, message):
        if self.swallow:
            return
        if self.decided:
            return await self.send(message)
        if message["type"] == "http.response.start":
            self.start = message
            return
        if message["type"] != "http.response.body" or self.start is None:
            self.decided = True
            return await self.send(message)
        body = message.get("body", b"")
        if not body and message.get("more_body", False):
            return  # an empty first piece says nothing yet
        self.decided = True
        start = self.start
        headers = list(start.get("headers", []))
        retry_after = (b"retry-after", str(ADMISSION_RETRY_AFTER_S).encode())
        if start["status"] == ADMISSION_STATUS:
            start = {**start, "headers": [*headers, retry_after]}
        elif start["status"] == 200 and any(
            k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in headers
        ):
            reason = _stream_rejection(body)
            if reason is not None:
                self.swallow = True  # the rest of the stream is the rejection's "[DONE]"
                return await _send_json(
                    self.send,
                    ADMISSION_STATUS,
                    _error_body(reason, ADMISSION_ERR_TYPE, ADMISSION_STATUS),
                    [retry_after],
                )
        await self.send(start)
        await self.send(message)
