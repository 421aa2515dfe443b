"""SGLang's real Scheduler stepped by hand: build one in this process, make requests, run iterations.

One way of driving an in-process scheduler, used by three callers:

* the start-up calibration (:mod:`sglang_fair.runtime.calibration`), which runs inside the server's
  own scheduler process and uses :func:`make_req` and :func:`step`;
* the in-process runtime tests (``test/runtime/``), which also build a scheduler here with
  :func:`build_scheduler` (the tiny built-in Llama on SGLang's CPU engine: torch_native attention,
  no overlap, no CUDA graphs);
* ``benchmark/sched_overhead.py``.

:func:`step` is one iteration of SGLang's ``event_loop_normal`` minus request intake.  Importing this
module has no side effects; :func:`build_scheduler` prepares the platform (CPU engine) first.  It
reaches a few private SGLang members (``_add_request_to_queue`` in the callers, the invariant
checker's ``_check_all_pools``/``_check_req_pool``, the process-group teardown);
``test/runtime/test_upstream_shapes.py`` fails loudly when they change.
"""

from __future__ import annotations

import os
from array import array

__all__ = [
    "TINY_VOCAB",
    "build_scheduler",
    "idle_check",
    "make_req",
    "run_until_idle",
    "step",
]

#: Vocabulary of the tiny built-in model (``sglang_fair.models.tiny_llama.VOCAB``).
TINY_VOCAB = 512


def build_scheduler(
    batch_policy: str = "fairbatching",
    *,
    max_total_tokens: int = 8192,
    chunked_prefill_size: int = 256,
    max_running_requests: int = 64,
    load_format: str = "dummy",
    enable_mixed_chunk: bool = False,
    stock: bool = False,
    model_path: str | None = None,
    dtype: str = "float32",
    server_args: dict | None = None,
    **fair_fields,
):
    """A ``FairScheduler`` for ``batch_policy`` (SGLang's own ``Scheduler`` with ``stock=True``) on
    the tiny built-in model (or ``model_path``); ``server_args`` adds or overrides ``ServerArgs``
    fields, ``fair_fields`` go into its :class:`FairConfig`."""
    from sglang_fair import platform

    platform.setup(announce_now=False)
    # SGLang's idle leak check raises instead of logging a warning.
    os.environ.setdefault("SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_IDLE", "1")

    from sglang.srt.managers import scheduler as stock_scheduler
    from sglang.srt.server_args import PortArgs, ServerArgs

    from sglang_fair.config import FairConfig
    from sglang_fair.models.tiny_llama import build_tiny_llama
    from sglang_fair.runtime.scheduler import FairScheduler

    FairConfig(batch_policy=batch_policy, **fair_fields).to_env()
    fields = dict(
        model_path=model_path or str(build_tiny_llama()),
        load_format=load_format,
        skip_tokenizer_init=True,
        device="cpu",
        dtype=dtype,
        max_total_tokens=max_total_tokens,
        chunked_prefill_size=chunked_prefill_size,
        max_running_requests=max_running_requests,
        disable_cuda_graph=True,
        attention_backend="torch_native",
        disable_overlap_schedule=True,
        enable_mixed_chunk=enable_mixed_chunk,
        mem_fraction_static=0.5,
    )
    server_args = ServerArgs(**{**fields, **(server_args or {})})
    _release_previous_scheduler()
    port_args = PortArgs.init_new(server_args)
    stock_scheduler.publish(
        server_args, role="scheduler", ranks=stock_scheduler.SpawnRanks(world_rank=0, dp_rank=None, gpu_id=0)
    )
    stock_scheduler.configure_scheduler_process(server_args, 0)
    return (stock_scheduler.Scheduler if stock else FairScheduler)(server_args, port_args)


def _release_previous_scheduler() -> None:
    """SGLang builds its process groups once per process; tear down the previous scheduler's so
    several tests (and the benchmark) can each build one here."""
    from sglang.srt.distributed import bootstrap, parallel_state

    if bootstrap._PARALLEL_INITIALISED:
        parallel_state.destroy_model_parallel()
        parallel_state.destroy_distributed_environment()


def make_req(
    rid: str,
    prompt_tokens: int = 40,
    max_new_tokens: int = 8,
    *,
    vocab_size: int = TINY_VOCAB,
    token_ids=None,
    **sampling,
):
    """A ``Req`` as the scheduler receives it, greedy and ignoring EOS (so it runs exactly
    ``max_new_tokens``).  The prompt is ``token_ids`` when given, else ``prompt_tokens`` ids derived
    from ``rid`` (``Req`` wants ``array('q', ids)``)."""
    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.sampling.sampling_params import SamplingParams

    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, ignore_eos=True, **sampling)
    params.normalize(None)
    params.verify(vocab_size)
    if token_ids is None:
        seed = sum(map(ord, rid))
        token_ids = [3 + (seed * 31 + 7 * j) % (vocab_size - 3) for j in range(prompt_tokens)]
    req = Req(rid, "", array("q", token_ids), params, vocab_size=vocab_size)
    req.tokenizer = None
    return req


def step(scheduler):
    """One iteration of ``event_loop_normal`` (minus request intake); returns the batch run."""
    plan = scheduler.get_next_batch_to_run(running_batch=scheduler.running_batch, last_batch=scheduler.last_batch)
    scheduler.running_batch = plan.running_batch
    batch = plan.batch_to_run
    scheduler.cur_batch_for_debug = batch
    if batch:
        result = scheduler.run_batch(batch)
        scheduler.process_batch_result(batch, result)
    else:
        scheduler.on_idle()
    scheduler.last_batch = batch
    return batch


def run_until_idle(scheduler, reqs, max_steps: int = 500):
    for _ in range(max_steps):
        batch = step(scheduler)
        if batch is None and all(r.finished() for r in reqs):
            return
    raise AssertionError(f"not idle after {max_steps} steps: {[r.rid for r in reqs if not r.finished()]}")


def idle_check(scheduler) -> None:
    """SGLang's own idle leak checks (the ones ``on_idle`` runs), made to raise instead of warn."""
    checker = scheduler.invariant_checker
    has_leak, messages = checker._check_all_pools(scheduler.pool_stats_observer.get_pool_stats())
    assert not has_leak, "\n".join(messages)
    checker._check_req_pool()  # raises on a leaked request slot
    warnings = getattr(checker, "count_memory_leak_warnings", 0)
    assert not warnings, f"SGLang counted {warnings} memory-leak warning(s)"
