import math

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sim_helpers import A100, CPU_LIKE, small_workload
from sglang_fair.policy import POLICY_NAMES, CostModel, make_policy
from sglang_fair.policy.kv import admission_reservation_tokens
from sglang_fair.sim import ROUTER_NAMES, EngineConfig, Simulation, simulate, summarize
from sglang_fair.sim.engine import CHARGING_ROUTERS


class CheckedPolicy:
    """Wraps a policy and checks, every iteration, that the engine never holds more KV than it has."""

    def __init__(self, inner, capacity):
        self.inner, self.capacity, self.iterations = inner, capacity, 0
        self.name = inner.name

    def __getattr__(self, item):
        return getattr(self.inner, item)

    def plan(self, view):
        held = sum(r.context_tokens for r in view.decodes) + sum(r.prefilled_tokens for r in view.prefills)
        assert held <= self.capacity
        assert view.free_kv_tokens >= len(view.decodes)
        # One chunked prompt at a time, as SGLang's scheduler holds (``chunked_req``).
        assert sum(1 for r in view.prefills if r.prefilled_tokens > 0) <= 1
        # The engine's running total of the decodes' context is their sum (policies read it instead).
        assert view.decode_context_tokens in (None, sum(r.context_tokens for r in view.decodes))
        assert view.decode_context_sq in (None, sum(r.context_tokens**2 for r in view.decodes))
        plan = self.inner.plan(view)
        assert len(plan.decodes) + plan.prefill_tokens <= view.free_kv_tokens
        # Admissions stay within SGLang's reservation estimate, as its prefill adder would allow.
        admitted = [chunk.request for chunk in plan.prefills if chunk.request.prefilled_tokens == 0]
        reserved = sum(admission_reservation_tokens(request) for request in admitted)
        assert not admitted or reserved < view.admission_kv_tokens
        self.iterations += 1
        return plan


def test_single_request_timing_is_the_cost_model():
    w = small_workload([100], [3], [0.5])
    result = simulate(w, lambda: make_policy("sarathi", A100, token_budget=512), warmup_fraction=0)
    prefill_s = A100.predict(100, 100, 1, 100 * 100)
    assert result.first_token_s[0] == pytest.approx(0.5 + prefill_s)
    decode_s = A100.predict(1, 101, 1) + A100.predict(1, 102, 1)
    assert result.finish_s[0] == pytest.approx(0.5 + prefill_s + decode_s)
    summary = summarize(result)
    assert summary["ttft_p50_s"] == pytest.approx(prefill_s)
    assert summary["tpot_p50_s"] == pytest.approx(decode_s / 2)
    assert summary["attainment"] == 1.0 and summary["envelope_attainment"] == 1.0


def test_metrics_definitions():
    # Tight TPOT: the single request meets TTFT but not mean TPOT, and misses the envelope.
    w = small_workload([100], [3], [0.0], ttft=1.0, tpot=0.001)
    s = summarize(simulate(w, lambda: make_policy("sarathi", A100), warmup_fraction=0))
    assert s["ttft_attainment"] == 1.0 and s["tpot_attainment"] == 0.0
    # The early first token banks slack, so the arrival-anchored envelope (b) is still met.
    assert s["attainment"] == 0.0 and s["envelope_attainment"] == 1.0


def test_attainment_is_split_by_slo_class_with_the_same_verdicts():
    # Two requests at once: the strict one (TTFT 10 ms) cannot have its first token in time, the
    # relaxed one meets both SLOs.  One SLO pair gives no split (the totals say it).
    w = small_workload([100, 100], [3, 3], [0.0, 0.0])
    w.ttft_slo_s[:] = [0.01, 5.0]
    w.tpot_slo_s[:] = [0.05, 0.2]
    s = summarize(simulate(w, lambda: make_policy("sarathi", A100), warmup_fraction=0))
    strict, relaxed = s["slo_classes"]
    assert (strict["ttft_slo_s"], strict["tpot_slo_s"], strict["requests"]) == (0.01, 0.05, 1)
    assert strict["attainment"] == 0.0 and strict["ttft_attainment"] == 0.0 and strict["ttft_ratio_p99"] > 1
    assert (relaxed["ttft_slo_s"], relaxed["requests"], relaxed["attainment"]) == (5.0, 1, 1.0)
    assert s["attainment"] == pytest.approx((strict["attainment"] + relaxed["attainment"]) / 2)
    one = summarize(simulate(small_workload([100, 100], [3, 3], [0.0, 0.0]), lambda: make_policy("sarathi", A100),
                             warmup_fraction=0))
    assert one["slo_classes"] == []


def test_an_arrival_window_counts_the_misses_of_the_requests_that_arrived_in_it():
    # The strict request (TTFT 10 ms) arrives at 0 and misses; the relaxed one arrives at 1 s and meets both.
    w = small_workload([100, 100], [3, 3], [0.0, 1.0])
    w.ttft_slo_s[:] = [0.01, 5.0]
    w.tpot_slo_s[:] = [0.05, 0.2]
    result = simulate(w, lambda: make_policy("sarathi", A100), warmup_fraction=0)
    whole = summarize(result, arrival_window_s=(0.0, 2.0))
    assert whole["arrival_window"]["slo_classes"] == whole["slo_classes"]
    assert (whole["arrival_window"]["requests"], whole["arrival_window"]["missed"]) == (2, 1)
    early = summarize(result, arrival_window_s=(0.0, 0.5))["arrival_window"]
    late = summarize(result, arrival_window_s=(0.5, 2.0))["arrival_window"]
    assert (early["requests"], early["missed"], early["missed_ttft"], early["missed_in_run"]) == (1, 1, 1, 1)
    assert (late["requests"], late["missed"], late["missed_in_run"]) == (1, 0, 1)
    assert early["slo_classes"] == [] and "arrival_window" not in summarize(result)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(POLICY_NAMES),
    n=st.integers(1, 25),
    seed=st.integers(0, 10_000),
    kv=st.sampled_from([3000, 20_000, 200_000]),
    seats=st.sampled_from([2, 256]),
    model=st.sampled_from([A100, CPU_LIKE]),
)
# A partly prefilled prompt whose next chunk was too dear for the budget once let a new prompt
# start beside it (two chunked prompts, which SGLang cannot hold); CI's hypothesis found it.
@example(name="fairbatching", n=7, seed=2, kv=20_000, seats=256, model=A100)
def test_every_request_finishes_and_kv_holds(name, n, seed, kv, seats, model):
    rng = np.random.default_rng(seed)
    prompts = rng.integers(1, 2500, n)
    outputs = rng.integers(1, 60, n)
    arrivals = np.sort(rng.uniform(0, 2.0, n))
    w = small_workload(prompts, outputs, arrivals, ttft=float(rng.choice([0.2, 1.0])),
                       tpot=float(rng.choice([0.01, 0.05])))
    config = EngineConfig(kv_capacity_tokens=kv, max_running_requests=seats, max_prefill_tokens=1024)
    config.true_cost_model = model
    result = simulate(w, lambda: CheckedPolicy(make_policy(name, model), kv), config=config, warmup_fraction=0)
    fits = prompts + 2 <= kv  # as SGLang, a longer cap is clipped to the pool; only a prompt that cannot fit is refused
    assert np.isfinite(result.finish_s[fits]).all(), "a request starved"
    assert result.rejected[~fits].all() and not result.rejected[fits].any()
    assert (result.finish_s[fits] >= result.first_token_s[fits]).all()
    expected = np.minimum(outputs, np.maximum(kv - prompts - 2, 1))
    np.testing.assert_array_equal(result.generated_tokens[fits], expected[fits])


def test_spreading_prompts_still_leaves_one_chunked_prompt_at_a_time():
    """With ``chunk_spread`` on, FairBatching caps a prompt's chunk below what the budget allows;
    the engine, like SGLang's adder, then runs nothing behind it that iteration."""
    rng = np.random.default_rng(3)
    n = 40
    w = small_workload(rng.integers(500, 3000, n), rng.integers(5, 60, n), np.sort(rng.uniform(0, 1.0, n)),
                       ttft=2.0, tpot=0.05)
    checked = []

    def factory():
        checked.append(CheckedPolicy(make_policy("fairbatching", A100, chunk_spread=0.5), 200_000))
        return checked[-1]

    result = simulate(w, factory, config=EngineConfig(kv_capacity_tokens=200_000), warmup_fraction=0)
    assert np.isfinite(result.finish_s).all() and checked[0].iterations > 0


@pytest.mark.parametrize("router", ROUTER_NAMES)
def test_routers_spread_and_finish(router):
    rng = np.random.default_rng(1)
    n = 120
    w = small_workload(rng.integers(50, 2000, n), rng.integers(5, 80, n), np.sort(rng.uniform(0, 10, n)))
    result = simulate(w, lambda: make_policy("fairbatching", A100), replicas=3, router=router, seed=2)
    assert np.isfinite(result.finish_s).all()
    counts = np.bincount(result.replica, minlength=3)
    assert (counts > 10).all(), counts


def test_pab_admission_control_rejects_under_overload():
    rng = np.random.default_rng(0)
    n = 300
    w = small_workload(rng.integers(1000, 4000, n), rng.integers(5, 50, n), np.sort(rng.uniform(0, 3, n)))
    result = simulate(w, lambda: make_policy("fairbatching", A100), replicas=2, router="pab",
                      admission_control=True)
    s = summarize(result)
    assert 0 < s["rejected"] < n
    admitted = ~result.rejected
    assert np.isfinite(result.finish_s[admitted]).all()
    # Requests that were admitted mostly make their TTFT: rejecting is what keeps them on time.
    ttft = result.first_token_s[admitted] - w.arrival_s[admitted]
    assert (ttft <= 1.0).mean() > 0.8


def test_noise_and_true_cost_model():
    w = small_workload([500] * 20, [20] * 20, np.linspace(0, 1, 20))
    slower = CostModel(*(A100.coefficients() * 2), name="slow")
    base = simulate(w, lambda: make_policy("sarathi", A100))
    slow = simulate(w, lambda: make_policy("sarathi", A100), config=EngineConfig(true_cost_model=slower))
    # The policy plans with its own model, the clock follows the engine's: the first prefill (alone) takes 2x.
    assert slow.first_token_s[0] == pytest.approx(2 * base.first_token_s[0])
    assert slow.busy_s > 1.5 * base.busy_s
    noisy = [simulate(w, lambda: make_policy("fairbatching", A100), config=EngineConfig(noise_sigma=0.2), seed=5)
             for _ in range(2)]
    np.testing.assert_array_equal(noisy[0].finish_s, noisy[1].finish_s)  # deterministic per seed
    assert noisy[0].busy_s != base.busy_s


@pytest.mark.parametrize("correlation", [0.0, 0.6])
def test_correlated_noise_keeps_its_spread_and_mean_and_carries_its_slow_spells(correlation):
    """AR(1) noise in log space: the same spread and a mean of one, consecutive iterations
    correlated as asked (a CPU server's slow spells), across the blocks it is drawn in."""
    w = small_workload([100], [5], np.zeros(1))
    config = EngineConfig(noise_sigma=0.4, noise_correlation=correlation)
    replica = Simulation(w, [make_policy("fairbatching", A100)], config=config, seed=3).replicas[0]
    draws = np.array([replica.noise() for _ in range(3 * 4096)])
    logs = np.log(draws)
    assert np.std(logs) == pytest.approx(0.4, rel=0.1)
    assert np.mean(draws) == pytest.approx(1.0, abs=0.05)
    assert np.corrcoef(logs[:-1], logs[1:])[0, 1] == pytest.approx(correlation, abs=0.05)
    if correlation:
        # The series goes on across the blocks it is drawn in: a near-random walk does not jump there.
        walk = Simulation(w, [make_policy("fairbatching", A100)], seed=3,
                          config=EngineConfig(noise_sigma=0.4, noise_correlation=0.999)).replicas[0]
        walk_logs = np.log([walk.noise() for _ in range(2 * 4096)])
        steps = np.abs(np.diff(walk_logs))
        assert steps[4095] < 5 * np.std(np.diff(walk_logs)) < abs(walk_logs[4095])


def test_independent_noise_is_the_stream_it_always_was():
    """noise_correlation=0 draws exactly the log-normal blocks of before (figures reproduce)."""
    w = small_workload([100], [5], np.zeros(1))
    replica = Simulation(w, [make_policy("fairbatching", A100)], config=EngineConfig(noise_sigma=0.2),
                         seed=5).replicas[0]
    expected = np.random.default_rng([5, 7, 0]).lognormal(-0.5 * 0.04, 0.2, 4096)[::-1]
    np.testing.assert_array_equal([replica.noise() for _ in range(10)], expected[:10])


def test_empty_plan_with_work_is_an_error():
    class Lazy:
        name = "lazy"
        cost_model = A100

        def plan(self, view):
            from sglang_fair.policy import Plan

            return Plan()

    w = small_workload([10], [2], [0.0])
    with pytest.raises(RuntimeError, match="empty plan"):
        Simulation(w, [Lazy()]).run()


def test_early_stop_counts_misses():
    rng = np.random.default_rng(0)
    n = 400
    w = small_workload(rng.integers(2000, 4000, n), rng.integers(50, 100, n), np.sort(rng.uniform(0, 5, n)),
                       ttft=0.5)
    full = summarize(simulate(w, lambda: make_policy("sarathi", A100)))
    stopped = summarize(simulate(w, lambda: make_policy("sarathi", A100), stop_after_misses=20))
    assert full["attainment"] < 0.9 and stopped["stopped_early"]
    assert stopped["attainment"] < 0.9


def test_scheduler_cpu_time_is_reported():
    w = small_workload([300] * 30, [30] * 30, np.linspace(0, 1, 30))
    s = summarize(simulate(w, lambda: make_policy("fairbatching", A100)))
    assert s["iterations"] > 30 and 0 < s["plan_cpu_us_per_iter"] < 10_000
    assert math.isfinite(s["tbt_p99_s"])


@pytest.mark.parametrize("policy", ["fairbatching", "sarathi", "vtc"])
@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_decode_runs_play_the_same_iterations_as_one_step_at_a_time(policy, noise, monkeypatch):
    """The engine plays a run of decode steps in one go; every outcome must be what stepping one
    iteration at a time gives (times, tokens, envelope, gaps, the policy's online model)."""
    from sglang_fair.policy import build_policy
    from sglang_fair.sim.engine import Replica

    rng = np.random.default_rng(4)
    n = 150
    w = small_workload(rng.integers(20, 1500, n), rng.integers(1, 120, n), np.sort(rng.uniform(0, 20, n)),
                       clients=rng.integers(0, 2, n))
    config = EngineConfig(kv_capacity_tokens=60_000, noise_sigma=noise)
    options = {"client_fairness": True} if policy == "fairbatching" else {}
    results, policies = [], []
    for runs in (False, True):
        monkeypatch.setattr(Replica, "decode_runs", runs)
        policies.append(build_policy(policy, A100, options=options))
        results.append(simulate(w, lambda: policies[-1], config=config, replicas=1, seed=3))
    step, run = results
    for field_name in ("first_token_s", "finish_s", "worst_slack_s", "max_tbt_s"):
        np.testing.assert_allclose(getattr(run, field_name), getattr(step, field_name), rtol=1e-9, atol=1e-9)
    assert run.iterations == step.iterations and run.busy_s == pytest.approx(step.busy_s)
    assert summarize(run)["tbt_p99_s"] == pytest.approx(summarize(step)["tbt_p99_s"])
    assert int(run.tbt_counts.sum()) == int(step.tbt_counts.sum()) and len(run.tbt_gaps_s) < len(step.tbt_gaps_s)
    np.testing.assert_allclose(policies[1].cost_model.coefficients(), policies[0].cost_model.coefficients(),
                               rtol=1e-6, atol=1e-15)
    if policy == "vtc":
        assert policies[1].clients.counters == pytest.approx(policies[0].clients.counters)


class PlanLog:
    """Wraps a policy and records every decision it makes (what it planned, and when)."""

    def __init__(self, inner):
        self.inner, self.decisions = inner, []
        self.name = inner.name

    def __getattr__(self, item):
        return getattr(self.inner, item)

    def plan(self, view):
        plan = self.inner.plan(view)
        self.decisions.append((view.now_s, tuple(r.rid for r in plan.decodes),
                               tuple((c.request.rid, c.tokens) for c in plan.prefills)))
        return plan


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(POLICY_NAMES), seed=st.integers(0, 10_000), kv=st.sampled_from([6000, 40_000]))
def test_no_decision_reads_the_true_output_length(name, seed, kv):
    """Two workloads alike but for the true output lengths (same max_new_tokens): every decision is
    the same until the first request finishes in either, the only way a server learns a length."""
    rng = np.random.default_rng(seed)
    n = 30
    prompts, arrivals = rng.integers(50, 1500, n), np.sort(rng.uniform(0, 1.5, n))
    caps = np.full(n, 400)
    first, second = rng.integers(150, 400, n), rng.integers(150, 400, n)
    logs, results = [], []
    for outputs in (first, second):
        w = small_workload(prompts, outputs, arrivals)
        w.max_new_tokens = caps.copy()
        logs.append(PlanLog(make_policy(name, A100)))
        results.append(simulate(w, lambda: logs[-1], config=EngineConfig(kv_capacity_tokens=kv), warmup_fraction=0))
    first_finish_s = min(np.nanmin(result.finish_s) for result in results)
    before = [[d for d in log.decisions if d[0] < first_finish_s] for log in logs]
    assert before[0] == before[1] and before[0]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(POLICY_NAMES), seed=st.integers(0, 10_000))
def test_retraction_loses_no_request(name, seed):
    """Long outputs on a small pool: the admission estimate (running requests charged the decaying
    new-token ratio of what they may still generate) lets in more than fits, decodes outgrow the
    pool and are retracted; every request still finishes with all of its tokens."""
    rng = np.random.default_rng(seed)
    n = 70
    outputs = rng.integers(400, 900, n)
    w = small_workload(rng.integers(50, 400, n), outputs, np.sort(rng.uniform(0, 2.0, n)))
    result = simulate(w, lambda: make_policy(name, A100), config=EngineConfig(kv_capacity_tokens=10_000),
                      warmup_fraction=0)
    assert result.retractions > 0
    assert np.isfinite(result.finish_s).all() and not result.rejected.any()
    np.testing.assert_array_equal(result.generated_tokens, outputs)


def test_a_router_polling_loads_routes_on_stale_ones():
    """Between two polls a load-aware router sees the loads of the last poll: with one poll for the
    whole run it sends every request to the replica that was least loaded at the start."""
    rng = np.random.default_rng(2)
    n = 60
    w = small_workload(rng.integers(200, 2000, n), rng.integers(5, 60, n), np.sort(rng.uniform(0, 5, n)))
    fresh = simulate(w, lambda: make_policy("fairbatching", A100), replicas=3, router="least_load")
    stale = simulate(w, lambda: make_policy("fairbatching", A100), replicas=3, router="least_load",
                     load_poll_s=1000.0)
    assert len(set(fresh.replica.tolist())) == 3
    assert set(stale.replica.tolist()) == {0}


@pytest.mark.parametrize("router", CHARGING_ROUTERS)
def test_a_charging_router_spreads_what_it_sends_between_polls(router):
    """With one poll for the whole run, a router that charges each prompt it sends to the replica
    it sent it to (as SGLang's data-parallel controller does) still spreads the work: every replica
    gets about a third of the prompt tokens, where an uncharged stale router sends everything to one."""
    rng = np.random.default_rng(2)
    n = 60
    prompts = rng.integers(200, 2000, n)
    w = small_workload(prompts, rng.integers(5, 60, n), np.sort(rng.uniform(0, 5, n)))
    stale = simulate(w, lambda: make_policy("fairbatching", A100), replicas=3, router=router, load_poll_s=1000.0)
    assert np.isfinite(stale.finish_s).all()
    tokens = np.bincount(stale.replica, weights=prompts, minlength=3)
    assert tokens.min() > 0.25 * prompts.sum(), tokens


def test_a_rejected_request_is_retried_on_another_replica():
    """Round robin sends every long prompt to replica 0 and the short ones to the others: each
    side runs out of PAB in its own way, and a rejection retried on another replica is served."""
    rng = np.random.default_rng(0)
    n = 300
    prompts = np.where(np.arange(n) % 3 == 0, rng.integers(3000, 4000, n), rng.integers(100, 400, n))
    w = small_workload(prompts, rng.integers(5, 50, n), np.sort(rng.uniform(0, 3, n)))
    runs = {retries: simulate(w, lambda: make_policy("fairbatching", A100), replicas=3, router="round_robin",
                              admission_control=True, retries=retries) for retries in (0, 2)}
    assert 0 < runs[2].rejected.sum() < runs[0].rejected.sum()
    served_on = {k: np.bincount(run.replica[~run.rejected], minlength=3) for k, run in runs.items()}
    assert np.ptp(served_on[2]) < np.ptp(served_on[0])  # the replicas' work evens out
    assert np.isfinite(runs[2].finish_s[~runs[2].rejected]).all()


@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_a_runs_last_step_played_with_the_run_is_the_step_played_alone(noise):
    """The step an arrival comes during, or the one that finishes a request, played with its decode
    run (one replica), gives every result bit for bit as when it is planned and completed on its own
    (a wrapped policy, whose type does not say how it plans decode steps, never has it folded)."""
    from sglang_fair.policy import build_policy

    class Wrapped:
        def __init__(self, inner):
            self.inner, self.name = inner, inner.name

        def __getattr__(self, item):
            return getattr(self.inner, item)

    rng = np.random.default_rng(9)
    n = 300
    w = small_workload(rng.integers(20, 1500, n), rng.integers(1, 200, n), np.sort(rng.uniform(0, 30, n)))
    config = EngineConfig(kv_capacity_tokens=60_000, noise_sigma=noise)
    folded = simulate(w, lambda: build_policy("fairbatching", A100), config=config, seed=3)
    alone = simulate(w, lambda: Wrapped(build_policy("fairbatching", A100)), config=config, seed=3)
    for name in ("first_token_s", "finish_s", "worst_slack_s", "max_tbt_s", "generated_tokens", "tbt_gaps_s",
                 "tbt_counts"):
        exact = np.asarray(getattr(folded, name), dtype=float), np.asarray(getattr(alone, name), dtype=float)
        assert np.array_equal(*exact, equal_nan=True), name
    assert (folded.iterations, folded.busy_s, folded.end_s) == (alone.iterations, alone.busy_s, alone.end_s)


def test_gaps_packed_in_blocks_keep_their_order(monkeypatch):
    """The gaps between tokens are buffered and packed every GAP_BLOCK: any block size gives the
    same array, in the same order."""
    from sglang_fair.sim import engine

    rng = np.random.default_rng(2)
    n = 120
    w = small_workload(rng.integers(20, 900, n), rng.integers(1, 150, n), np.sort(rng.uniform(0, 10, n)))
    results = []
    for block in (engine.GAP_BLOCK, 7):
        monkeypatch.setattr(engine, "GAP_BLOCK", block)
        results.append(simulate(w, lambda: make_policy("fairbatching", A100)))
    assert len(results[0].tbt_gaps_s) > 100
    assert np.array_equal(results[0].tbt_gaps_s, results[1].tbt_gaps_s)
    assert np.array_equal(results[0].tbt_counts, results[1].tbt_counts)
