"""SGLang's real Scheduler stepped by hand: requests as it receives them, one iteration at a time.

Used by the start-up calibration (:mod:`sglang_fair.runtime.calibration`, inside the server's own
scheduler process) and, through :mod:`sglang_fair.runtime.inproc`, by the in-process tests and
benchmarks.  :func:`step` is one iteration of SGLang's ``event_loop_normal`` minus request intake.
It imports nothing of sglang_fair, so anything may use it.  It reaches a few private SGLang members
(the invariant checker's ``_check_all_pools``/``_check_req_pool``);
``test/runtime/test_upstream_shapes.py`` fails loudly when they change.
"""

from __future__ import annotations

from array import array

__all__ = ["TINY_VOCAB", "idle_check", "make_req", "run_until_idle", "step"]

#: Vocabulary of the tiny built-in model (``sglang_fair.models.tiny_llama.VOCAB``).
TINY_VOCAB = 512


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
