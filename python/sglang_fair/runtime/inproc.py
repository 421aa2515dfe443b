"""SGLang's real Scheduler built in this process, to be stepped by hand.

:func:`build_scheduler` builds a ``FairScheduler`` (or SGLang's own ``Scheduler``) on the tiny
built-in model with SGLang's CPU engine (torch_native attention, no overlap, no CUDA graphs),
preparing the platform first; the stepping itself (:func:`make_req`, :func:`step`,
:func:`run_until_idle`, :func:`idle_check`) is :mod:`sglang_fair.runtime.stepping`, re-exported here
for the callers that build a scheduler too: the in-process runtime tests (``test/runtime/``) and
``benchmark/sched_overhead.py``.  Importing this module has no side effects.  The teardown between
schedulers reaches SGLang's process groups; ``test/runtime/test_upstream_shapes.py`` fails loudly
when the private members used here and in ``stepping`` change.
"""

from __future__ import annotations

import os

from sglang_fair.runtime.stepping import TINY_VOCAB, idle_check, make_req, run_until_idle, step

__all__ = [
    "TINY_VOCAB",
    "build_scheduler",
    "idle_check",
    "make_req",
    "run_until_idle",
    "step",
]


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
