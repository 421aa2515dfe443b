"""Workloads for the simulator: request lengths, arrival times, SLO classes and clients.

A :class:`Workload` is a set of numpy columns, one row per request, sorted by arrival.  It is built
from a trace (Azure LLM inference format ``TIMESTAMP,ContextTokens,GeneratedTokens`` or the
ShareGPT length files) with either the trace's own timestamps (scaled) or synthetic Poisson / gamma
(bursty) arrivals at a chosen rate.  Arrivals are drawn with numpy up front, never per event.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from ..policy.request import validate_slo

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "SloClass",
    "Trace",
    "TraceError",
    "Workload",
    "load_trace",
    "make_workload",
    "parse_slo_classes",
    "shared_dir",
]


class TraceError(ValueError):
    """A trace that cannot be read; the message is one line for the user."""


def shared_dir() -> Path:
    """``../shared`` beside the repository (override with ``SGLANG_FAIR_SHARED``)."""
    env = os.environ.get("SGLANG_FAIR_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3].parent / "shared"


@dataclass
class Trace:
    """Lengths (and timestamps when the trace has them) of a request trace."""

    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    timestamps_s: np.ndarray | None  # seconds since the first request, or None
    source: str

    def __len__(self) -> int:
        return len(self.prompt_tokens)


def _parse_timestamp(text: str) -> float:
    text = text.strip().replace(" ", "T")
    # Azure traces carry 7 fractional digits; datetime takes at most 6.
    if "." in text:
        head, frac = text.split(".", 1)
        text = f"{head}.{frac[:6]}"
    return datetime.fromisoformat(text).timestamp()


def load_trace(path: str | os.PathLike, *, limit: int | None = None) -> Trace:
    """Read an Azure-format or ShareGPT-length CSV; raise :class:`TraceError` with one line."""
    path = str(path)
    if not os.path.isfile(path):
        raise TraceError(f"--trace: no such file {path!r}")
    prompts: list[int] = []
    outputs: list[int] = []
    stamps: list[float] = []
    try:
        with open(path, newline="") as handle:
            # csv.reader, reading each row as csv.DictReader would (its cost was a dict per row):
            # blank rows skipped (and not counted in the line number), a column named twice read
            # from its last occurrence, a short row a bad value.
            reader = csv.reader(handle)
            header = next(reader, None) or []
            fields = set(header)
            if {"ContextTokens", "GeneratedTokens"} <= fields:
                prompt_key, output_key = "ContextTokens", "GeneratedTokens"
            elif {"num_prefill_tokens", "num_decode_tokens"} <= fields:
                prompt_key, output_key = "num_prefill_tokens", "num_decode_tokens"
            else:
                raise TraceError(
                    f"--trace {path}: expected columns TIMESTAMP,ContextTokens,GeneratedTokens"
                    " (Azure) or num_prefill_tokens,num_decode_tokens (ShareGPT lengths)"
                )
            column = {name: index for index, name in enumerate(header)}  # the last one of a name
            prompt_at, output_at = column[prompt_key], column[output_key]
            has_time = "TIMESTAMP" in fields
            time_at = column.get("TIMESTAMP", -1)
            rows = (row for row in reader if row != [])
            for line, row in enumerate(rows, start=2):
                if limit is not None and len(prompts) >= limit:
                    break
                try:
                    prompt = int(float(row[prompt_at]))
                    output = int(float(row[output_at]))
                    if has_time:
                        stamps.append(_parse_timestamp(row[time_at]))
                except (TypeError, ValueError, IndexError):
                    raise TraceError(f"--trace {path}: bad value on line {line}") from None
                # A request needs at least one prompt token and produces at least one token.
                prompts.append(max(1, prompt))
                outputs.append(max(1, output))
    except UnicodeDecodeError:
        raise TraceError(f"--trace {path}: not a text CSV file") from None
    if not prompts:
        raise TraceError(f"--trace {path}: no requests")
    timestamps = None
    if has_time:
        timestamps = np.asarray(stamps, dtype=float)
        timestamps -= timestamps.min()
    return Trace(np.asarray(prompts, np.int64), np.asarray(outputs, np.int64), timestamps, path)


@dataclass(frozen=True)
class SloClass:
    """An SLO class: ``share`` of the requests get ``(ttft_slo_s, tpot_slo_s)``."""

    ttft_slo_s: float
    tpot_slo_s: float
    share: float = 1.0


def parse_slo_classes(text: str) -> list[SloClass]:
    """Parse ``"TTFT:TPOT:SHARE,..."`` (seconds), e.g. ``"1:0.05:0.3,2:0.1:0.7"``."""
    classes = []
    for part in text.split(","):
        fields = part.strip().split(":")
        if len(fields) not in (2, 3):
            raise ValueError(f"--slo-classes: expected TTFT:TPOT[:SHARE], got {part!r}")
        try:
            values = [float(f) for f in fields]
        except ValueError:
            raise ValueError(f"--slo-classes: not numbers in {part!r}") from None
        ttft = validate_slo("--slo-classes TTFT", values[0])
        tpot = validate_slo("--slo-classes TPOT", values[1])
        share = values[2] if len(values) == 3 else 1.0
        if not share > 0 or math.isinf(share):
            raise ValueError(f"--slo-classes: share must be positive, got {part!r}")
        classes.append(SloClass(ttft, tpot, share))
    return classes


#: ``max_new_tokens`` a client sends when the workload does not say: a typical client cap.
DEFAULT_MAX_NEW_TOKENS = 2048


@dataclass
class Workload:
    """One row per request, sorted by arrival time.

    ``output_tokens`` is the true length (the request ends there, as at EOS); ``max_new_tokens`` is
    what the client asked for, all that a server (and so every policy) knows.  ``None`` means the
    client asked for exactly the true length (``--max-new-tokens trace``).
    """

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    ttft_slo_s: np.ndarray
    tpot_slo_s: np.ndarray
    client: np.ndarray  # int client ids
    max_new_tokens: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens is None:
            self.max_new_tokens = self.output_tokens.copy()
        # A request never outlives its cap.
        self.output_tokens = np.minimum(self.output_tokens, self.max_new_tokens)

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) > 1 else 0.0


def make_workload(
    trace: Trace,
    *,
    num_requests: int | None = None,
    rate_rps: float | None = None,
    arrival: str = "poisson",
    burstiness_cv: float = 2.0,
    replay_timestamps: bool = False,
    time_scale: float = 1.0,
    slo_classes: list[SloClass] | None = None,
    ttft_slo_s: float = 2.0,
    tpot_slo_s: float = 0.1,
    clients: int = 1,
    client_skew: float = 0.0,
    max_new_tokens: int | str = DEFAULT_MAX_NEW_TOKENS,
    seed: int = 0,
) -> Workload:
    """Take the first ``num_requests`` rows of ``trace`` and give them arrival times and SLOs.

    * ``replay_timestamps``: the trace's own arrival times divided by ``time_scale`` (2.0 plays the
      trace twice as fast).
    * otherwise ``arrival="poisson"`` (exponential gaps at ``rate_rps``) or ``"gamma"`` (gamma gaps
      with the same mean and coefficient of variation ``burstiness_cv``: > 1 is burstier).
    * SLO classes are assigned at random by share; clients at random, uniformly or Zipf-like with
      exponent ``client_skew``.
    * ``max_new_tokens``: the cap every request is sent with (an int), or ``"trace"`` for each
      request's true output length.
    """
    count = len(trace) if num_requests is None else min(num_requests, len(trace))
    if count <= 0:
        raise ValueError("--num-requests must be positive")
    rng = np.random.default_rng(seed)
    prompts = trace.prompt_tokens[:count].copy()
    outputs = trace.output_tokens[:count].copy()
    if replay_timestamps:
        if trace.timestamps_s is None:
            raise ValueError(f"--replay-timestamps: trace {trace.source} has no TIMESTAMP column")
        if not time_scale > 0:
            raise ValueError("--time-scale must be positive")
        arrivals = trace.timestamps_s[:count] / time_scale
    else:
        if rate_rps is None or not rate_rps > 0 or math.isinf(rate_rps):
            raise ValueError("--rate must be a positive number of requests per second")
        if arrival == "poisson":
            gaps = rng.exponential(1.0 / rate_rps, count)
        elif arrival == "gamma":
            if not burstiness_cv > 0:
                raise ValueError("--burstiness must be positive")
            shape = 1.0 / (burstiness_cv * burstiness_cv)
            gaps = rng.gamma(shape, 1.0 / (rate_rps * shape), count)
        else:
            raise ValueError(f"--arrival: unknown process {arrival!r} (poisson, gamma)")
        gaps[0] = 0.0
        arrivals = np.cumsum(gaps)
    order = np.argsort(arrivals, kind="stable")
    arrivals, prompts, outputs = arrivals[order], prompts[order], outputs[order]

    # SLOs and clients come from a separate stream so that changing them keeps the same arrivals.
    rng_meta = np.random.default_rng([seed, 1])
    if slo_classes:
        shares = np.array([c.share for c in slo_classes], dtype=float)
        picks = rng_meta.choice(len(slo_classes), size=count, p=shares / shares.sum())
        ttft = np.array([c.ttft_slo_s for c in slo_classes])[picks]
        tpot = np.array([c.tpot_slo_s for c in slo_classes])[picks]
    else:
        ttft = np.full(count, float(ttft_slo_s))
        tpot = np.full(count, float(tpot_slo_s))
    if clients < 1:
        raise ValueError("--clients must be >= 1")
    weights = 1.0 / np.arange(1, clients + 1) ** client_skew
    client = rng_meta.choice(clients, size=count, p=weights / weights.sum())
    if max_new_tokens == "trace":
        caps = outputs.copy()
    elif isinstance(max_new_tokens, (int, np.integer)) and not isinstance(max_new_tokens, bool) and max_new_tokens >= 1:
        caps = np.full(count, int(max_new_tokens), dtype=np.int64)
    else:
        raise ValueError(f"--max-new-tokens: a positive number of tokens or 'trace', got {max_new_tokens!r}")
    return Workload(arrivals.astype(float), prompts, outputs, ttft, tpot, client.astype(np.int64), caps)
