"""``--fair-iteration-log FILE``: every measured iteration of a policy server as one JSON line.

What the online cost model was given, so that its behaviour can be replayed offline
(``benchmark/online_model_replay.py``): the first line is a header (``"kind": "start"``, the
online model's prior, the policy, wall-clock time), each later line one iteration:

* ``end_s``: scheduler clock (``time.perf_counter``) when its result was processed;
* ``measured_s``: ``run_batch`` to ``process_batch_result``, what the online model is fed;
* ``predicted_s``: the current model's prediction for the executed shape;
* ``time_budget_s``: the plan's time budget (``null`` with ``time_budget_s_nonfinite`` when none);
* ``features``: the shape's ``FEATURE_NAMES`` values (``policy.cost_model.feature_row``).
* ``step``: which step of the policy decided the batch (``Plan.step``; ``""`` for a decode-only
  step nobody planned);
* ``waiting_prompts`` and ``min_prompt_slack_s``: the prompts waiting (or part-prefilled) when it
  was planned, and the least time any of them had left to its TTFT deadline (negative: late;
  ``null`` when none waited);
* ``late_tokens`` (only when there were any): the decode tokens this iteration emitted past the
  line the policy plans against (``records.late_decode_tokens``): request id, token index,
  ``late_s``, ``waited_s`` since the request's previous token, ``line_gave_s`` (the time its line
  allowed then), ``max_new_tokens``.  ``benchmark/iteration_steps.py`` finds the iterations behind
  each request's first late token from them.

The file is opened for appending and written line by line (a crash loses at most the line being
written).  A write that fails (disk full) logs one warning and turns the log off: a debugging aid
must never stop the server.  Only the first tensor-parallel rank writes; with data parallelism
each rank writes ``FILE.<dp rank>``.
"""

from __future__ import annotations

import gzip
import json
import logging
import time

from sglang_fair import strict_json
from sglang_fair.policy.cost_model import FEATURE_NAMES, BatchShape, CostModel

logger = logging.getLogger(__name__)

__all__ = ["IterationLog", "open_iteration_log", "read_last_run"]


class IterationLog:
    """One scheduler's iteration log (see the module docstring)."""

    def __init__(self, path: str, *, prior: CostModel, batch_policy: str) -> None:
        self.path = path
        self._file = open(path, "a", buffering=1, encoding="utf-8")  # line-buffered
        self._write({"kind": "start", "batch_policy": batch_policy, "wall_time": time.time(),
                     "features": list(FEATURE_NAMES), "prior": prior.to_dict()})

    @property
    def open(self) -> bool:
        return self._file is not None

    def record(self, *, end_s: float, measured_s: float, predicted_s: float, time_budget_s: float,
               shape: BatchShape, step: str = "", waiting_prompts: int = 0,
               min_prompt_slack_s: float | None = None, late_tokens: list[dict] | None = None) -> None:
        entry = {"end_s": end_s, "measured_s": measured_s, "predicted_s": predicted_s,
                 "time_budget_s": time_budget_s, "features": list(shape.features()), "step": step,
                 "waiting_prompts": waiting_prompts, "min_prompt_slack_s": min_prompt_slack_s}
        if late_tokens:
            entry["late_tokens"] = late_tokens
        self._write(entry)

    def _write(self, entry: dict) -> None:
        if self._file is None:
            return
        try:
            self._file.write(strict_json.dumps(entry, indent=None) + "\n")
        except (OSError, ValueError) as exc:  # ValueError: the file was closed under us
            logger.warning("--fair-iteration-log %s: %s; iteration log off", self.path, exc)
            self.close()

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None


def open_iteration_log(path: str | None, *, prior: CostModel, batch_policy: str) -> IterationLog | None:
    """This scheduler process's log for ``--fair-iteration-log path`` (None: not asked, or not
    this rank's to write, or the file cannot be opened, which is logged)."""
    if path is None:
        return None
    from sglang.srt.runtime_context import get_parallel

    parallel = get_parallel()
    try:  # (SGLang's scheduler reads these the same way; unpublished ranks raise)
        tp_rank, num_dp_ranks, dp_rank = parallel.tp_rank, parallel.num_dp_ranks, parallel.dp_rank
    except (AttributeError, RuntimeError, ValueError):
        tp_rank, num_dp_ranks, dp_rank = 0, 1, None
    if tp_rank:
        return None
    if num_dp_ranks > 1:
        path = f"{path}.{dp_rank or 0}"
    try:
        return IterationLog(path, prior=prior, batch_policy=batch_policy)
    except OSError as exc:
        logger.warning("--fair-iteration-log %s: %s; iteration log off", path, exc)
        return None


def read_last_run(path: str) -> tuple[int, dict, list[tuple[int, dict]]]:
    """The last run of a log (plain, or gzipped when the name ends in ``.gz``): the file is appended
    to by every start.  Returns its header's line number, the header, and each iteration's line
    number and entry.  ``ValueError`` names the file and line of a line that is not a JSON object
    and of an iteration before any header, and the file when it has no header."""
    header_line, header, entries = 0, None, []
    with (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not an iteration-log line ({exc})") from None
            if not isinstance(entry, dict):
                raise ValueError(f"{path}:{number}: not an iteration-log line (not an object)")
            if entry.get("kind") == "start":
                header_line, header, entries = number, entry, []
            elif header is None:
                raise ValueError(f"{path}:{number}: an iteration before the log's header (no prior)")
            else:
                entries.append((number, entry))
    if header is None:
        raise ValueError(f"{path}: no header line: not written by --fair-iteration-log")
    return header_line, header, entries
