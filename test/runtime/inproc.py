"""Build SGLang's real Scheduler (as ``FairScheduler``) in this process and step it by hand.

Used by the in-process runtime tests and ``benchmark/sched_overhead.py``.  The scheduler runs the
tiny built-in Llama on SGLang's CPU engine (torch_native attention), no overlap, no CUDA graphs.
"""

from __future__ import annotations

import os
import time
from array import array

from sglang_fair import platform

platform.setup(announce_now=False)
# SGLang's idle leak check raises instead of logging a warning.
os.environ.setdefault("SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_IDLE", "1")

from sglang_fair.config import FairConfig  # noqa: E402

_VOCAB = 512


def build_scheduler(
    batch_policy: str = "fairbatching",
    *,
    max_total_tokens: int = 8192,
    chunked_prefill_size: int = 256,
    max_running_requests: int = 64,
    load_format: str = "dummy",
    enable_mixed_chunk: bool = False,
    stock: bool = False,
    **fair_fields,
):
    """A ``FairScheduler`` for ``batch_policy`` (SGLang's own ``Scheduler`` with ``stock=True``);
    ``fair_fields`` go into its :class:`FairConfig`."""
    stock_class = stock
    from sglang.srt.managers import scheduler as stock
    from sglang.srt.server_args import PortArgs, ServerArgs

    from sglang_fair.models.tiny_llama import build_tiny_llama
    from sglang_fair.runtime.scheduler import FairScheduler

    FairConfig(batch_policy=batch_policy, **fair_fields).to_env()
    server_args = ServerArgs(
        model_path=str(build_tiny_llama()),
        load_format=load_format,
        skip_tokenizer_init=True,
        device="cpu",
        dtype="float32",
        max_total_tokens=max_total_tokens,
        chunked_prefill_size=chunked_prefill_size,
        max_running_requests=max_running_requests,
        disable_cuda_graph=True,
        attention_backend="torch_native",
        disable_overlap_schedule=True,
        enable_mixed_chunk=enable_mixed_chunk,
        mem_fraction_static=0.5,
    )
    _release_previous_scheduler()
    port_args = PortArgs.init_new(server_args)
    stock.publish(server_args, role="scheduler", ranks=stock.SpawnRanks(world_rank=0, dp_rank=None, gpu_id=0))
    stock.configure_scheduler_process(server_args, 0)
    return (stock.Scheduler if stock_class else FairScheduler)(server_args, port_args)


def _release_previous_scheduler() -> None:
    """SGLang builds its process groups once per process; tear down the previous scheduler's so
    several tests (and the benchmark) can each build one here."""
    from sglang.srt.distributed import bootstrap, parallel_state

    if bootstrap._PARALLEL_INITIALISED:
        parallel_state.destroy_model_parallel()
        parallel_state.destroy_distributed_environment()


def make_req(rid: str, prompt_tokens: int = 40, max_new_tokens: int = 8, **sampling):
    """A ``Req`` as the scheduler receives it (``Req`` wants ``array('q', ids)``)."""
    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.sampling.sampling_params import SamplingParams

    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, ignore_eos=True, **sampling)
    params.normalize(None)
    params.verify(_VOCAB)
    seed = sum(map(ord, rid))
    ids = array("q", [3 + (seed * 31 + 7 * j) % (_VOCAB - 3) for j in range(prompt_tokens)])
    req = Req(rid, "", ids, params, vocab_size=_VOCAB)
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
