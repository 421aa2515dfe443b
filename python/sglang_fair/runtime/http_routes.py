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
"""

from __future__ import annotations

import logging

from sglang_fair.runtime.load import load_entry

__all__ = ["fair_states", "install_routes"]

logger = logging.getLogger(__name__)

FAIR_STATE_KEY = "sglang_fair"


async def fair_states() -> list[dict]:
    """The ``sglang_fair`` internal state of every DP rank (empty dicts where a rank has none)."""
    from sglang.srt.entrypoints.http_server import get_global_state

    internal = await get_global_state().tokenizer_manager.get_internal_state()
    return [(state or {}).get(FAIR_STATE_KEY) or {} for state in internal]


def install_routes(app) -> None:
    """Add the routes to ``app`` (SGLang's ``http_server.app``); idempotent."""
    from fastapi.responses import JSONResponse

    existing = {getattr(route, "path", None) for route in app.router.routes}

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
            return {"dp_ranks": states}
