"""VTC keeps backlogged clients' service within its bound (Sheng et al., OSDI'24)."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim_helpers import A100, small_workload
from sglang_fair.policy import make_policy
from sglang_fair.sim import simulate


class Recorder:
    """Records the counter gap whenever both clients have requests waiting."""

    def __init__(self, inner):
        self.inner, self.gaps = inner, []
        self.name = inner.name

    def __getattr__(self, item):
        return getattr(self.inner, item)

    def plan(self, view):
        # Counters as they stand when both clients have requests waiting (before this batch's
        # charges: a batch may drain one client's queue, ending the backlogged interval).
        waiting = {r.client for r in view.prefills if r.prefilled_tokens == 0}
        if waiting >= {"client0", "client1"} and self.inner.clients.counters:
            counters = self.inner.clients.counters
            self.gaps.append(abs(counters.get("client0", 0.0) - counters.get("client1", 0.0)))
        return self.inner.plan(view)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 1000), heavy_share=st.sampled_from([0.5, 0.8]), policy=st.sampled_from(["vtc", "fairbatching"]))
def test_backlogged_clients_service_gap_is_bounded(seed, heavy_share, policy):
    rng = np.random.default_rng(seed)
    n = 160
    prompts = rng.integers(16, 600, n)
    outputs = rng.integers(1, 40, n)
    clients = (rng.uniform(size=n) > heavy_share).astype(int)  # client0 sends most requests
    w = small_workload(prompts, outputs, np.zeros(n), ttft=5.0, tpot=0.5, clients=clients)
    options = {"client_fairness": True} if policy == "fairbatching" else {}
    recorders = []

    def factory():
        recorders.append(Recorder(make_policy(policy, A100, **options)))
        return recorders[-1]

    simulate(w, factory, warmup_fraction=0)
    gaps = recorders[0].gaps
    assert gaps, "clients were never backlogged together"
    # Bound: 2 * U, U = the largest charge one request can bring (prompt + its output tokens).
    bound = 2 * (1.0 * prompts.max() + 2.0 * outputs.max())
    assert max(gaps) <= bound, (max(gaps), bound)
