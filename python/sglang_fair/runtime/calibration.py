"""Start-up self-calibration: time real iterations of the served model, fit the cost model from
them, and hand it to the online model as its prior.

Runs in the scheduler process once the model is loaded, before the server reports ready
(``FairBatchingMixin._fair_setup`` calls :func:`startup_calibration`), for every batch policy but
``sglang`` (stock batching starts exactly as before).  What is timed is the server's own path: the
scheduler is stepped by hand (:func:`sglang_fair.runtime.stepping.step`) with synthetic greedy
requests, the runtime's own view / plan / R-K split apply a scripted plan (:class:`_ScriptedPolicy`,
which stands in for the batch policy meanwhile), SGLang forms and runs each batch, and the
runtime's own timing (``run_batch`` .. ``process_batch_result``) and executed-shape accounting
(:func:`sglang_fair.runtime.plan.finish_iteration`) produce each sample, exactly as the online refit will see them.

The grid (:func:`sglang_fair.policy.calibration.calibration_grid`): decode-only batches at a few
batch sizes and context lengths, the same decodes with a prefill chunk mixed in, and prefill
chunks of a few sizes after a few prefixes (a chunked prompt's second chunk), each visited once
untimed and then ``REPEATS`` times, medians fitted.  Outputs are encoded as usual and then dropped
(nothing reaches the detokenizer); SGLang's per-batch log lines are muted meanwhile; afterwards the
KV cache is flushed and every record the runtime keeps is reset, so serving starts from a clean
scheduler.

The result is cached on disk (``$SGLANG_FAIR_CALIBRATION_CACHE``, default
``~/.cache/sglang_fair/calibration``) under a key of the model (path and config.json hash), the
device, the dtype, the engine flags that change iteration time, the versions and the grid, so a
restart reads it instead of timing again.  ``--cost-model`` skips all of this (the given model is
the prior), and so does ``--fair-no-calibration`` (the shipped preset is).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import platform as host_platform
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sglang_fair.policy.base import BatchPolicy, Plan, PrefillChunk
from sglang_fair.policy.calibration import (
    CalibrationError,
    CalibrationShape,
    GridLimits,
    cache_key,
    calibration_grid,
    fit_calibration,
    group_output_tokens,
    load_cached,
    save_cached,
)
from sglang_fair.policy.cost_model import CostModel, load_cost_model
from sglang_fair.runtime import stepping

logger = logging.getLogger(__name__)

__all__ = ["CACHE_ENV", "Calibration", "REPEATS", "default_cache_dir", "startup_calibration"]

#: Environment variable naming the calibration cache folder.
CACHE_ENV = "SGLANG_FAIR_CALIBRATION_CACHE"
#: Timed visits per shape (after one untimed warm-up visit).
REPEATS = 5
#: Calibration requests' ids start with this (an abort by this prefix catches all of them).
RID_PREFIX = "sglang-fair-calibration-"
#: Upper bound on scheduler steps for one phase to settle (a bug guard, never reached normally).
_SETTLE_STEPS = 400
#: Wall-clock budget of the timing: past it no new visit starts, and what was timed is fitted (a
#: machine so loaded that the grid takes longer would not give a trustworthy fit anyway).  On a
#: quiet 2-core CPU the tiny model's grid takes a few seconds.  ``$SGLANG_FAIR_CALIBRATION_BUDGET``
#: (seconds) overrides it; the tests raise it, so a loaded CI box still caches what it timed.
TIME_BUDGET_S = 60.0
BUDGET_ENV = "SGLANG_FAIR_CALIBRATION_BUDGET"


def time_budget_s() -> float:
    text = os.environ.get(BUDGET_ENV)
    try:
        return float(text) if text else TIME_BUDGET_S
    except ValueError:
        logger.warning("sglang_fair: %s=%r is not a number of seconds; using %.0f", BUDGET_ENV, text,
                       TIME_BUDGET_S)
        return TIME_BUDGET_S


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sglang_fair" / "calibration")


@dataclass
class Calibration:
    """What the start-up calibration did; ``model`` is the prior it gives (None: it gives none)."""

    status: str  # "calibrated", "cached", "off", "skipped" or "failed"
    reason: str = ""
    model: CostModel | None = None
    fit_mape: float | None = None
    holdout_mape: float | None = None
    #: Seconds this start spent on it (a cache hit: reading the file) and what timing took.
    seconds: float = 0.0
    timing_seconds: float | None = None
    iterations: int = 0
    cache_hit: bool = False
    cache_path: str | None = None
    key: str | None = None
    table: list[dict] = field(default_factory=list)
    measured_at: str | None = None

    def snapshot(self) -> dict:
        """What ``GET /fair/state`` shows under ``runtime.calibration``."""
        return {
            "status": self.status,
            "reason": self.reason,
            "model": self.model.to_dict() if self.model is not None else None,
            "fit_mape": self.fit_mape,
            "holdout_mape": self.holdout_mape,
            "seconds": round(self.seconds, 3),
            "timing_seconds": None if self.timing_seconds is None else round(self.timing_seconds, 3),
            "iterations": self.iterations,
            "cache_hit": self.cache_hit,
            "cache_path": self.cache_path,
            "key": self.key,
            "measured_at": self.measured_at,
            "shapes": self.table,
        }

    def log_line(self) -> str:
        if self.model is None:
            return f"sglang_fair: start-up calibration {self.status}: {self.reason}"
        holdout = "n/a" if self.holdout_mape is None else f"{self.holdout_mape:.1%}"
        where = (f"cache hit {self.cache_path} (timed {self.measured_at})" if self.cache_hit
                 else f"cache miss, saved to {self.cache_path}" if self.cache_path
                 else f"cache miss, not saved ({self.reason or 'no cache folder'})")
        return (
            f"sglang_fair: calibrated cost model in {self.seconds:.1f} s ({self.iterations} iterations"
            f" timed, {len(self.table)} shapes): fit MAPE {self.fit_mape:.1%}, held-out MAPE"
            f" {holdout}; {where}; {self.model.describe()}"
        )


def startup_calibration(scheduler) -> Calibration:
    """Calibrate ``scheduler`` (a ``FairScheduler`` whose policy is not ``sglang``) or say why not.

    Never raises for a calibration that cannot be done or fails: the server then starts on the
    shipped preset, and the returned :class:`Calibration` (logged, on ``/fair/state``) says why.
    """
    config = scheduler.fair_config
    if not config.calibrate:
        return Calibration("off", "--fair-no-calibration")
    if config.cost_model:
        return Calibration("off", f"--cost-model {config.cost_model} given")
    reason = _unsupported(scheduler)
    if reason:
        return Calibration("skipped", reason)
    started = time.perf_counter()
    device_class = "cpu" if _on_cpu(scheduler) else "gpu"
    limits = _limits(scheduler)
    grid = calibration_grid(device_class, limits, visits=(REPEATS + 1) // 2 + 1)
    identity = _identity(scheduler, grid)
    key = cache_key(identity)
    cache_dir = default_cache_dir()
    cached = load_cached(cache_dir, key)
    if cached is not None:
        return Calibration(
            "cached", "", cached["model"], cached.get("fit_mape"), cached.get("holdout_mape"),
            seconds=time.perf_counter() - started, timing_seconds=cached.get("timing_seconds"),
            iterations=int(cached.get("iterations", 0)), cache_hit=True, cache_path=cached["path"],
            key=key, table=cached.get("table", []), measured_at=cached.get("measured_at"),
        )
    try:
        samples, iterations, cut_short = _time_grid(scheduler, grid)
        fit = fit_calibration(samples, name=f"calibrated:{Path(str(identity['model']['path'])).name}")
    except CalibrationError as exc:
        return Calibration("failed", str(exc), seconds=time.perf_counter() - started, key=key)
    timing_seconds = time.perf_counter() - started
    measured_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    fit.model.info.update(source="sglang_fair start-up calibration", measured_at=measured_at,
                          device=identity["device"], timing_seconds=round(timing_seconds, 2))
    entry = {"model": fit.model, "fit_mape": fit.fit_mape, "holdout_mape": fit.holdout_mape,
             "timing_seconds": timing_seconds, "iterations": iterations, "table": fit.table,
             "measured_at": measured_at, "identity": identity, "load_average": _load_average()}
    path = None
    if not cut_short:  # a calibration cut short by a busy machine is used once, not kept
        try:
            path = save_cached(cache_dir, key, entry)
        except OSError as exc:
            logger.warning("sglang_fair: could not cache the calibration in %s: %s", cache_dir, exc)
    return Calibration(
        "calibrated", f"cut short at the {time_budget_s():.0f} s budget" if cut_short else "",
        fit.model, fit.fit_mape, fit.holdout_mape,
        seconds=time.perf_counter() - started, timing_seconds=timing_seconds, iterations=iterations,
        cache_hit=False, cache_path=path, key=key, table=fit.table, measured_at=measured_at,
    )


# --- what can be calibrated, and the cache identity -------------------------------------------------
def _on_cpu(scheduler) -> bool:
    return str(getattr(scheduler, "device", "cpu")).startswith("cpu")


def _unsupported(scheduler) -> str:
    """Why this scheduler cannot be calibrated in place ('' if it can)."""
    args = scheduler.server_args
    if not scheduler.fair_can_split:
        return "needs the plain scheduling loop (no overlap schedule, no speculative decoding)"
    if getattr(args, "tp_size", 1) != 1 or getattr(args, "pp_size", 1) != 1:
        # Every rank would have to run the same calibration batches in lock step.
        return "tensor/pipeline parallel servers are not calibrated yet (pass --cost-model)"
    if getattr(args, "enable_dp_attention", False) or scheduler.disaggregation_mode.name != "NULL":
        return "data-parallel attention and disaggregated serving are not calibrated"
    if not scheduler.is_generation:
        return "not a generation model"
    if getattr(scheduler.output_streamer, "rust_server", None) is not None:
        return "the Rust egress server is on"
    return ""


def _limits(scheduler) -> GridLimits:
    max_chunk = scheduler.chunked_prefill_size
    if max_chunk is None or max_chunk <= 0:
        max_chunk = scheduler.max_prefill_tokens
    return GridLimits(
        kv_tokens=int(scheduler.max_total_num_tokens),
        max_running_requests=int(scheduler.max_running_requests or 1 << 20),
        max_chunk_tokens=int(min(max_chunk, scheduler.max_prefill_tokens)),
        context_tokens=int(scheduler.model_config.context_len),
    )


#: Engine flags that change how long an iteration takes (or what a calibration can time).
_TIMING_FLAGS = (
    "attention_backend", "prefill_attention_backend", "decode_attention_backend", "sampling_backend",
    "page_size", "kv_cache_dtype", "quantization", "tp_size", "pp_size", "disable_cuda_graph",
    "cuda_graph_max_bs", "cuda_graph_backend_decode", "cuda_graph_backend_prefill",
    "enable_torch_compile", "torch_compile_max_bs", "disable_radix_cache", "enable_dp_attention",
    "speculative_algorithm", "enable_deterministic_inference", "triton_attention_num_kv_splits",
)


def _identity(scheduler, grid: list[CalibrationShape]) -> dict:
    import sglang
    import torch

    args = scheduler.server_args
    model_path = str(args.model_path)
    config_hash = None
    config_file = Path(model_path) / "config.json"
    if config_file.is_file():
        config_hash = hashlib.sha256(config_file.read_bytes()).hexdigest()[:16]
        model_path = str(Path(model_path).resolve())
    return {
        "model": {"path": model_path, "config_sha256": config_hash,
                  "revision": getattr(args, "revision", None)},
        "device": _device_identity(scheduler),
        "dtype": str(scheduler.model_config.dtype),
        "engine": {name: getattr(args, name, None) for name in _TIMING_FLAGS},
        "versions": {"sglang": sglang.__version__, "torch": torch.__version__},
        "grid": [(s.kind, s.decodes, s.context, s.chunk, s.prefix, s.holdout) for s in grid],
        "repeats": REPEATS,
    }


def _device_identity(scheduler) -> dict:
    import torch

    if not _on_cpu(scheduler) and torch.cuda.is_available():
        index = torch.cuda.current_device()
        return {"type": "cuda", "name": torch.cuda.get_device_name(index),
                "capability": list(torch.cuda.get_device_capability(index))}
    name = host_platform.processor() or host_platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"type": "cpu", "name": name, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# --- timing ----------------------------------------------------------------------------------------
class _ScriptedPolicy(BatchPolicy):
    """Stands in for the batch policy while the calibration runs: plans exactly what the driver
    asks for, and keeps what the runtime measures for the shape being timed."""

    name = "calibration"
    skips_decodes = True

    def __init__(self, cost_model: CostModel) -> None:
        super().__init__(cost_model)
        self.prefill_tokens = 0  # prefill tokens this iteration, over the queue in order
        self.run_decodes = True  # False: the running decodes sit out
        self.shape: CalibrationShape | None = None  # what this step times (None: untimed)
        self.samples: dict[CalibrationShape, list] = {}
        self.mismatched = 0

    def plan(self, view) -> Plan:
        plan = Plan()
        left = self.prefill_tokens
        for request in view.prefills:
            if left <= 0:
                break
            tokens = min(left, request.remaining_prefill_tokens)
            plan.prefills.append(PrefillChunk(request, tokens))
            plan.shape.add_prefill(tokens, request.prefilled_tokens)
            left -= tokens
        if self.run_decodes:
            for request in view.decodes:
                plan.decodes.append(request)
                plan.shape.add_decode(request.context_tokens)
        return plan

    def observe(self, plan: Plan, measured_s: float) -> None:
        shape = self.shape
        if shape is None:
            return
        self.shape = None  # one sample per timed step
        executed = plan.shape
        if not _executed_as_planned(shape, executed):
            self.mismatched += 1
            return
        self.samples.setdefault(shape, []).append((executed.features(), measured_s))


def _executed_as_planned(shape: CalibrationShape, executed) -> bool:
    if shape.kind == "decode":
        return executed.num_prefills == 0 and executed.num_seqs == shape.decodes
    if shape.kind == "mixed":
        return (executed.num_prefills == 1 and executed.num_seqs == shape.decodes + 1
                and executed.new_tokens == shape.decodes + shape.chunk)
    return (executed.num_prefills == 1 and executed.num_seqs == 1
            and executed.new_tokens == shape.chunk
            and executed.sum_context == shape.chunk + shape.prefix)


class _Driver:
    """Feeds the scheduler synthetic requests and steps it, one calibration phase at a time."""

    def __init__(self, scheduler, policy: _ScriptedPolicy, seed: int = 0) -> None:
        self.budget_s = time_budget_s()
        self.deadline_s = time.perf_counter() + self.budget_s
        self.out_of_time = False
        self.scheduler = scheduler
        self.policy = policy
        self.rng = random.Random(seed)
        self.vocab = int(scheduler.model_config.vocab_size)
        self.count = 0
        self.steps = 0
        self.max_chunk = _limits(scheduler).max_chunk_tokens

    def request(self, prompt_tokens: int, max_new_tokens: int):
        """A greedy request whose first token no other request since the last flush has, so the
        radix cache never matches a prefix of it."""
        first = 3 + self.count % (self.vocab - 3)
        ids = [first] + [self.rng.randrange(3, self.vocab) for _ in range(prompt_tokens - 1)]
        req = stepping.make_req(f"{RID_PREFIX}{self.count}", max_new_tokens=max_new_tokens,
                       vocab_size=self.vocab, token_ids=ids)
        self.count += 1
        self.scheduler.fair_enqueue_untracked(req)
        return req

    def step(self, shape: CalibrationShape | None = None):
        self.policy.shape = shape
        batch = stepping.step(self.scheduler)
        self.policy.shape = None
        self.steps += 1
        return batch

    def idle(self) -> bool:
        s = self.scheduler
        return (not s.waiting_queue and s.chunked_req is None and s.running_batch.is_empty()
                and (s.last_batch is None or s.last_batch.is_empty()))

    def settle(self) -> None:
        """Step until the scheduler is idle, then flush the KV cache."""
        for _ in range(_SETTLE_STEPS):
            if self.step() is None and self.idle():
                break
        else:
            raise CalibrationError("calibration requests did not finish")
        if not self.scheduler.flush_cache(empty_cache=False):
            raise CalibrationError("could not flush the KV cache after calibrating")
        self.count = 0

    # -- the schedule
    def run(self, grid: list[CalibrationShape]) -> None:
        """Time every shape of ``grid`` ``REPEATS`` times, after untimed warm-up visits.

        Decode groups run one at a time (a group's requests stay resident while its decode and
        mixed shapes are visited), in two passes, the second in reverse order, each pass starting
        with an untimed visit; the prefill-only visits are spread over all of the groups' visits
        (the group's decodes sitting out meanwhile).  A burst of load from another process then
        lands on a few samples of many shapes rather than on every sample of one.
        """
        groups: dict[tuple[int, int], list[CalibrationShape]] = {}
        for shape in grid:
            if shape.kind in ("decode", "mixed"):
                groups.setdefault((shape.decodes, shape.context), []).append(shape)
        for shapes in groups.values():
            shapes.sort(key=lambda s: s.kind != "decode")
        prefills = [s for s in grid if s.kind == "prefill"]
        pending = []  # (shape, timed) prefill visits in the order they will run
        for visit in range(REPEATS + 1):
            order = list(prefills)
            self.rng.shuffle(order)
            pending += [(shape, visit > 0) for shape in order]
        first_pass = (REPEATS + 1) // 2  # timed visits in the first pass (3 of 5)
        passes = [(list(groups.values()), first_pass), (list(groups.values())[::-1], REPEATS - first_pass)]
        slots = sum(len(order) * (timed + 1) for order, timed in passes)
        per_slot = -(-len(pending) // slots) if slots else 0
        for order, timed in passes:
            for shapes in order:
                if not self.in_time():
                    break
                self.decode_group(shapes, timed, pending, per_slot)
        self.policy.run_decodes = True
        for shape, timed in pending:  # no decode group (a tiny KV pool): on their own
            if not self.in_time():
                break
            self.prefill(shape, timed)
        self.settle()

    def in_time(self) -> bool:
        if time.perf_counter() > self.deadline_s:
            self.out_of_time = True
        return not self.out_of_time

    def prefill(self, shape: CalibrationShape, timed: bool) -> None:
        """One prefill-only visit: a fresh prompt of ``prefix + chunk`` tokens; the prefix runs as
        the prompt's first chunk(s) untimed, then the chunk (its last) is timed and the request
        finishes with its one output token.  Running decodes sit out."""
        policy = self.policy
        policy.run_decodes = False
        self.request(shape.prefix + shape.chunk, 1)
        left = shape.prefix
        while left > 0:
            policy.prefill_tokens = min(left, self.max_chunk)
            self.step()
            left -= policy.prefill_tokens
        policy.prefill_tokens = shape.chunk
        self.step(shape if timed else None)

    def decode_group(self, shapes: list[CalibrationShape], timed_visits: int, pending: list,
                     per_slot: int) -> None:
        """One decode group: its decodes (contexts spread +-50% around the nominal, as real batches
        are ragged) are prefilled untimed with nothing decoding; then one untimed and
        ``timed_visits`` timed visits each run, in a fresh order, a decode step, each mixed chunk
        and ``per_slot`` of the ``pending`` prefill visits.  Each decode generates one token per
        decode or mixed step, so all of them finish at the last."""
        group = shapes[0]
        policy = self.policy
        visits = timed_visits + 1
        output_tokens = group_output_tokens(len(shapes), visits)
        reqs = [self.request(self.rng.randint(max(1, group.context // 2), group.context * 3 // 2),
                             output_tokens) for _ in range(group.decodes)]
        policy.run_decodes = False  # everything prefilled before any decode runs
        policy.prefill_tokens = self.max_chunk
        for _ in range(_SETTLE_STEPS):
            if all(len(req.output_ids) >= 1 for req in reqs):
                break
            self.step()
        else:
            raise CalibrationError("calibration prompts were not prefilled")
        for visit in range(visits):
            if not self.in_time():
                break  # settle() runs the decodes out, untimed
            items = [(shape, visit > 0) for shape in shapes] + pending[:per_slot]
            del pending[:per_slot]
            self.rng.shuffle(items)
            for shape, timed in items:
                if shape.kind == "prefill":
                    self.prefill(shape, timed)
                    continue
                policy.run_decodes = True
                if shape.kind == "mixed":
                    self.request(shape.chunk, 1)
                    policy.prefill_tokens = shape.chunk
                self.step(shape if timed else None)
        self.settle()


def _time_grid(scheduler, grid: list[CalibrationShape]):
    """Run the grid on ``scheduler``; returns ``(samples per shape, iterations timed)``."""
    from sglang.srt.managers.io_struct import AbortReq

    policy = _ScriptedPolicy(load_cost_model("cpu-tiny"))  # the model only prices plans nobody reads
    driver = _Driver(scheduler, policy)
    saved_policy = getattr(scheduler, "fair_policy", None)
    scheduler.fair_policy = policy
    try:
        with _outputs_dropped(scheduler), _sglang_logs_muted():
            try:
                driver.run(grid)
            except BaseException:
                # Leave a clean scheduler whatever happened: abort what is left, drain, flush.
                scheduler.abort_request(AbortReq(rid=RID_PREFIX))
                driver.settle()
                raise
    finally:
        scheduler.fair_policy = saved_policy
        scheduler.new_token_ratio_tracker.reset()
    timed = sum(len(v) for v in policy.samples.values())
    if driver.out_of_time:
        logger.warning("sglang_fair: calibration stopped at its %.0f s budget (is the machine busy?);"
                       " fitting the %d iterations timed so far", driver.budget_s, timed)
    if policy.mismatched:
        logger.info("sglang_fair: calibration dropped %d steps that did not run as planned", policy.mismatched)
    return policy.samples, timed, driver.out_of_time


class _DroppingSocket:
    """Stands in for the detokenizer socket: outputs are serialized as usual (that is part of an
    iteration's cost) and then dropped (no client asked for them)."""

    @staticmethod
    def send(data, flags: int = 0, **kwargs) -> None:
        return None

    @staticmethod
    def send_pyobj(obj, flags: int = 0, protocol: int = pickle.HIGHEST_PROTOCOL, **kwargs) -> None:
        pickle.dumps(obj, protocol)


@contextlib.contextmanager
def _outputs_dropped(scheduler):
    # One SenderWrapper serves the output streamer and SGLang's abort path.
    sender = scheduler.output_streamer.send_to_detokenizer
    saved = sender.socket
    if saved is not None:
        sender.socket = _DroppingSocket()
    try:
        yield
    finally:
        sender.socket = saved


@contextlib.contextmanager
def _sglang_logs_muted():
    """SGLang logs every prefill batch; a hundred calibration batches would bury the start-up log."""
    sglang_logger = logging.getLogger("sglang")
    saved = sglang_logger.level
    sglang_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        sglang_logger.setLevel(saved)
