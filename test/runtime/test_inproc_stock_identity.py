"""``--batch-policy sglang`` keeps SGLang's batching bit for bit: FairScheduler and SGLang's own
Scheduler, fed the same requests, run the same batches."""

from __future__ import annotations

from sglang_fair.runtime.inproc import build_scheduler, idle_check, make_req, step


def _trace(scheduler, mixed_chunk: bool):
    reqs = [make_req(f"id{i}", 30 + 53 * i % 400, 2 + i % 7) for i in range(12)]
    trace = []
    for i, req in enumerate(reqs):
        scheduler._add_request_to_queue(req)
        if i % 3 == 2:
            batch = step(scheduler)
            trace.append(_describe(batch))
    for _ in range(300):
        batch = step(scheduler)
        if batch is None and all(r.finished() for r in reqs):
            break
        trace.append(_describe(batch))
    assert all(r.finished() for r in reqs)
    outputs = [list(r.output_ids) for r in reqs]
    idle_check(scheduler)
    return trace, outputs


def _describe(batch):
    if batch is None:
        return None
    return (
        str(batch.forward_mode),
        tuple(r.rid for r in batch.reqs),
        tuple(batch.extend_lens or ()) if batch.forward_mode.is_extend() else (),
    )


def test_sglang_policy_batches_exactly_like_stock():
    kwargs = dict(chunked_prefill_size=128, max_total_tokens=4096, enable_mixed_chunk=True)
    stock_trace, stock_out = _trace(build_scheduler("sglang", stock=True, **kwargs), True)
    fair = build_scheduler("sglang", **kwargs)
    assert not fair.fair_active and fair.is_mixed_chunk
    fair_trace, fair_out = _trace(fair, True)
    assert fair_trace == stock_trace
    assert fair_out == stock_out
    assert not fair.fair_states  # stock keeps no per-request records
    assert fair.fair_calibration is None  # and never calibrates: it starts as fast as stock
