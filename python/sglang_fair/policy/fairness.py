"""VTC-style per-client virtual token counters (Sheng et al., OSDI'24), shared by the ``vtc`` peer and
FairBatching's optional client fairness.

Each client has a counter of service received: ``w_in`` per prompt token when a request is first
scheduled and ``w_out`` per output token.  When a client becomes backlogged its counter is lifted to
the minimum over the already-backlogged clients, so idle time is not banked as credit.  New work is
taken from the backlogged client with the lowest counter.
"""

from __future__ import annotations

import heapq
from typing import Iterable, Iterator, Sequence

from .request import RequestState

__all__ = ["ClientCounters"]


class ClientCounters:
    def __init__(self, input_weight: float = 1.0, output_weight: float = 2.0) -> None:
        self.input_weight = input_weight
        self.output_weight = output_weight
        self.counters: dict[str, float] = {}
        self._backlogged: set[str] = set()
        self._charged_input: set[str] = set()  # rids whose prompt has been charged

    def update_backlog(self, waiting: Iterable[RequestState]) -> None:
        """Lift counters of clients that just became backlogged."""
        now_backlogged = {request.client for request in waiting}
        newly = now_backlogged - self._backlogged
        if newly:
            still = self._backlogged & now_backlogged
            floor = min((self.counters.get(c, 0.0) for c in still), default=None)
            if floor is None:  # nobody was backlogged: lift to the minimum over known clients
                floor = min(self.counters.values(), default=0.0)
            for client in newly:
                self.counters[client] = max(self.counters.get(client, 0.0), floor)
        self._backlogged = now_backlogged

    def order(self, waiting: Sequence[RequestState], key=None) -> list[RequestState]:
        """Waiting requests, lowest-counter client first; ``key`` orders within a client."""
        counters = self.counters
        if key is None:
            return sorted(waiting, key=lambda r: counters.get(r.client, 0.0))
        return sorted(waiting, key=lambda r: (counters.get(r.client, 0.0), key(r)))

    def pick(self, waiting: Sequence[RequestState], key=None) -> Iterator[RequestState]:
        """Yield waiting requests one at a time from the client whose counter is lowest *now*.

        Unlike :meth:`order`, the choice is re-made after every request, so charges the caller makes
        between steps (``charge_prefill``) count: a batch that admits many prompts at once still
        alternates between clients instead of taking them all from the client that was lowest when
        the batch started.  ``key`` orders requests within a client.  O(n log n).
        """
        groups: dict[str, list[RequestState]] = {}
        for request in waiting:
            groups.setdefault(request.client, []).append(request)
        if key is not None:
            for group in groups.values():
                group.sort(key=key)
        counters = self.counters
        heap = [(counters.get(client, 0.0), rank, client) for rank, client in enumerate(groups)]
        heapq.heapify(heap)
        taken = dict.fromkeys(groups, 0)
        while heap:
            _, rank, client = heapq.heappop(heap)
            group = groups[client]
            index = taken[client]
            yield group[index]
            taken[client] = index + 1
            if index + 1 < len(group):
                heapq.heappush(heap, (counters.get(client, 0.0), rank, client))

    def charge_prefill(self, request: RequestState, tokens: int) -> None:
        # Charge the whole prompt once, when the request is first scheduled (as VTC does).
        if request.rid not in self._charged_input:
            self._charged_input.add(request.rid)
            self.counters[request.client] = (
                self.counters.get(request.client, 0.0) + self.input_weight * request.prompt_tokens
            )
        if tokens >= request.remaining_prefill_tokens:  # completes the prompt: first output token
            self.charge_output(request)

    def refund_prefill(self, request: RequestState, tokens: int) -> None:
        """Undo :meth:`charge_prefill` for a chunk that was planned and then withdrawn."""
        refund = 0.0
        if request.prefilled_tokens == 0 and request.rid in self._charged_input:
            self._charged_input.discard(request.rid)  # charged by this plan: its first chunk
            refund += self.input_weight * request.prompt_tokens
        if tokens >= request.remaining_prefill_tokens:
            refund += self.output_weight
        self.counters[request.client] = self.counters.get(request.client, 0.0) - refund

    def charge_output(self, request: RequestState, tokens: int = 1) -> None:
        self.counters[request.client] = self.counters.get(request.client, 0.0) + self.output_weight * tokens

    def forget(self, request: RequestState) -> None:
        self._charged_input.discard(request.rid)
