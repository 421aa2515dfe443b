"""The policy's :class:`IterationView` of SGLang's scheduler: the requests' records and the capacity.

:func:`build_view` only reads: the records it is given were brought up to date by
:func:`sglang_fair.runtime.records.sync_records` (the scheduler glue calls the two in a row), and
nothing of the scheduler or of a request changes here, so a view can be built for ``/get_load``,
``/fair/state``, metrics or admission as often as wanted.
"""

from __future__ import annotations

from sglang_fair.policy import IterationView
from sglang_fair.policy.kv import admission_reservation_tokens, running_reservation_tokens
from sglang_fair.policy.limits import UNLIMITED

__all__ = ["build_view"]


def build_view(scheduler, decodes: list, prefills: list, has_chunked: int, now_s: float) -> IterationView:
    """The view of one iteration: ``decodes`` and ``prefills`` (the chunked request first when
    ``has_chunked``) are records, the rest is read off the scheduler's KV pool and limits."""
    free_kv_tokens = scheduler.token_to_kv_pool_allocator.available_size() + scheduler.tree_cache.evictable_size()
    max_requests = scheduler.max_running_requests or UNLIMITED
    max_prefill = scheduler.chunked_prefill_size
    if max_prefill is None or max_prefill <= 0:
        max_prefill = scheduler.max_prefill_tokens
    # SGLang's admission estimate (policy.kv): what the running requests may still generate,
    # at its new-token ratio, and a chunked request's remaining fill, are held back.
    held_back = running_reservation_tokens(decodes, scheduler.new_token_ratio_tracker.current)
    held_back += sum(admission_reservation_tokens(state) for state in prefills[:has_chunked])
    return IterationView(
        now_s=now_s,
        decodes=decodes,
        prefills=prefills,
        free_kv_tokens=int(free_kv_tokens),
        total_kv_tokens=int(scheduler.max_total_num_tokens),
        max_batch_requests=max(int(max_requests), 1),
        max_prefill_tokens=int(max_prefill),
        admission_kv_tokens=free_kv_tokens - held_back,
        admission_seats=int(max_requests) - len(decodes) - has_chunked,
    )
