"""Property tests: every policy's plan respects KV, seats and the prefill cap; FairBatching keeps its
time budget except for forced work and always runs urgent decodes."""

import math

import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy_helpers import A100, CPU_LIKE, CPU_MIXED_CONTEXT, make_request
from sglang_fair.policy import POLICY_NAMES, FairBatchingPolicy, IterationView, make_policy
from sglang_fair.policy.base import first_token_deadline

NOW = 100.0


@st.composite
def views(draw, roomy=False):
    n_dec = draw(st.integers(0, 40))
    decodes = []
    for i in range(n_dec):
        arrival = draw(st.floats(NOW - 60, NOW - 0.01))
        tpot = draw(st.sampled_from([0.02, 0.05, 0.1, 0.2]))
        ttft = draw(st.sampled_from([0.5, 1.0, 2.0]))
        generated = draw(st.integers(1, 400))
        first = arrival + draw(st.floats(0.01, 3.0))
        r = make_request(f"d{i}", arrival, draw(st.integers(1, 6000)), ttft, tpot,
                         prefilled=0, generated=generated, first_token_s=first,
                         can_skip=draw(st.booleans()) or draw(st.booleans()), client=f"c{i % 3}")
        r.prefilled_tokens = r.prompt_tokens
        r.max_new_tokens = draw(st.one_of(st.none(), st.integers(generated, generated + 300)))
        decodes.append(r)
    prefills = []
    for i in range(draw(st.integers(0, 3))):  # partial prefills lead
        prompt = draw(st.integers(2, 9000))
        r = make_request(f"p{i}", draw(st.floats(NOW - 5, NOW)), prompt, 1.0, 0.05,
                         prefilled=draw(st.integers(1, prompt - 1)), client=f"c{i % 2}")
        prefills.append(r)
    waiting = sorted(
        (make_request(f"w{i}", draw(st.floats(NOW - 5, NOW)), draw(st.integers(1, 9000)),
                      draw(st.sampled_from([0.5, 1.0, 2.0])), 0.05, client=f"c{i % 3}")
         for i in range(draw(st.integers(0, 12)))),
        key=lambda r: r.arrival_s,
    )
    prefills += waiting
    if roomy:
        free_kv, seats = 10**7, 10**4
    else:
        free_kv = draw(st.integers(0, 200_000))
        seats = draw(st.integers(1, 300))
    return IterationView(NOW, decodes, prefills, free_kv, 200_000, seats, draw(st.sampled_from([1, 64, 512, 8192])))


def _options(name):
    # FairBatching with spreading on: its capped chunks must still leave one prompt cut at most.
    return {"sarathi": {"token_budget": 512}, "slai": {"token_budget": 256},
            "fairbatching": {"chunk_spread": 0.5}}.get(name, {})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(view=views(), name=st.sampled_from(POLICY_NAMES), model=st.sampled_from([A100, CPU_LIKE, CPU_MIXED_CONTEXT]))
def test_plan_never_overcommits(view, name, model):
    policy = make_policy(name, model, **_options(name))
    plan = policy.plan(view)
    chunk_tokens = [c.tokens for c in plan.prefills]
    assert len(plan.decodes) + sum(chunk_tokens) <= view.free_kv_tokens
    assert len(plan.decodes) + len(plan.prefills) <= view.max_batch_requests
    assert sum(chunk_tokens) <= view.max_prefill_tokens
    decode_ids = {id(r) for r in view.decodes}
    prefill_ids = {id(r) for r in view.prefills}
    assert all(id(r) in decode_ids for r in plan.decodes)
    assert len({id(r) for r in plan.decodes}) == len(plan.decodes)
    assert len({id(c.request) for c in plan.prefills}) == len(plan.prefills)
    for chunk in plan.prefills:
        assert id(chunk.request) in prefill_ids
        assert 1 <= chunk.tokens <= chunk.request.remaining_prefill_tokens
    # What SGLang's adder can run: one chunked prompt, the last of the batch (every other whole).
    assert all(chunk.tokens == chunk.request.remaining_prefill_tokens for chunk in plan.prefills[:-1])
    # Progress: work that fits must not produce an empty plan.
    if view.decodes and view.free_kv_tokens >= 1:
        assert not plan.empty
    assert plan.predicted_s == (model.predict_shape(plan.shape) if not plan.empty else 0.0)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(view=views(), model=st.sampled_from([A100, CPU_LIKE, CPU_MIXED_CONTEXT]))
def test_fairbatching_names_the_step_that_shaped_each_plan(view, model):
    """``Plan.step`` (the iteration log's ``step``) says truthfully what the plan holds."""
    plan = FairBatchingPolicy(model).plan(view)
    if plan.empty:
        return
    step = plan.step
    if step.startswith("apart: prefill"):
        assert plan.prefills and not plan.decodes
    elif step.startswith(("apart: decodes", "decodes")):
        assert plan.decodes and not plan.prefills
    elif step.startswith("mixed"):
        assert plan.prefills
    else:
        assert step == "progress"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(view=views(roomy=True), safety=st.sampled_from([0.8, 0.9, 1.0]),
       model=st.sampled_from([A100, CPU_LIKE, CPU_MIXED_CONTEXT]))
def test_fairbatching_budget_and_urgent_decodes(view, safety, model):
    policy = FairBatchingPolicy(model, budget_safety=safety)
    budget_s, floor_s = policy.time_budget_s(view)
    plan = policy.plan(view)
    planned = {id(r) for r in plan.decodes}
    if policy.keeps_prefills_apart(view):
        # Prefills and decodes apart: never both in one plan; a decode-only step runs them all and
        # never leaves a half-prefilled prompt waiting (the engine continues it in every
        # iteration); a prefill-only one ends, with the decode step after it, by the first decode
        # deadline, or (a prompt that could not wait, or the half-prefilled one) goes first.
        assert not (plan.prefills and plan.decodes)
        if plan.decodes:
            # (these views have KV and seats to spare; an engine prefill cap under the minimum
            # chunk is the one thing that can still hold a half-prefilled prompt back)
            assert view.prefills[0].prefilled_tokens == 0 or view.max_prefill_tokens < policy.min_chunk_tokens
            assert len(plan.decodes) == len(view.decodes)
        else:
            order = policy.order_and_budget(view)
            due_s = min(order.deadlines[:1] + order.lost_deadlines[:1])
            step_s = model.predict(len(view.decodes), sum(r.context_tokens for r in view.decodes), len(view.decodes))
            assert (plan.time_budget_s + step_s <= safety * (due_s - view.now_s) + 1e-9
                    or due_s > view.now_s or view.prefills[0].prefilled_tokens > 0)
            assert plan.predicted_s <= plan.time_budget_s + 1e-9
        return
    # Urgent decodes (would miss their next deadline by sitting out) and unskippable ones always
    # run; a decode that can no longer meet its SLO is urgent only on its slower line.
    for r in view.decodes:
        lost = policy.is_lost(r, view.now_s)
        due_s = r.last_token_s + policy.lost_tpot_factor * r.tpot_slo_s if lost else r.next_deadline_s
        if due_s < view.now_s + budget_s + floor_s or not r.can_skip:
            assert id(r) in planned, "urgent decode left out"
    if not view.decodes:
        return
    # Only forced work (urgent / unskippable decodes, a progress chunk) may exceed the time budget.
    # (A forced decode in a batch with a prefill also pays the extend path's row cost.)
    urgent_until_s = view.now_s + budget_s + floor_s

    def forced(r):
        if policy.is_lost(r, view.now_s):  # due on its slower line
            return r.last_token_s + policy.lost_tpot_factor * r.tpot_slo_s < urgent_until_s or not r.can_skip
        return r.next_deadline_s < urgent_until_s or not r.can_skip

    forced_s = sum(model.decode_cost_s(r.context_tokens)
                   + (model.extend_rows_cost_s(1, r.context_tokens, r.context_tokens**2) if plan.prefills else 0.0)
                   for r in plan.decodes if forced(r))
    if plan.time_budget_s > budget_s:
        # Stretched (dear extend path only) for a first prompt that cannot wait or already missed
        # its TTFT: at most, beyond the urgent decodes, the larger of the prefill work that matches
        # the extend overhead and the queue's chunk (the most efficient chunk, or all that waits).
        assert model.mixing_cost_s(0, 0, 0) > 0 and plan.prefills
        urgent = plan.decodes[: plan.urgent_decodes]  # (added first)
        mixing_s = model.mixing_cost_s(len(urgent), sum(r.context_tokens for r in urgent),
                                       sum(r.context_tokens**2 for r in urgent))
        order = policy.order_and_budget(view)
        waiting = sum(r.remaining_prefill_tokens for r in order.prefills)
        efficient = model.efficient_chunk_tokens(order.prefills[0].prefilled_tokens)
        worthwhile = max(model.max_chunk_tokens(mixing_s, 0) + 1,
                         min(waiting, efficient if efficient is not None else waiting))
        assert plan.time_budget_s <= forced_s + model.fixed_s + mixing_s + model.prefill_cost_s(worthwhile, 0) + 1e-9
    assert plan.predicted_s - forced_s <= plan.time_budget_s + 1e-9


@settings(max_examples=60, deadline=None)
@given(view=views(roomy=True))
def test_budget_floor_is_min_tpot(view):
    policy = FairBatchingPolicy(A100, budget_safety=0.9)
    budget_s, floor_s = policy.time_budget_s(view)
    if view.decodes:
        assert floor_s == 0.9 * min(r.tpot_slo_s for r in view.decodes)
        assert budget_s >= floor_s
    else:
        assert math.isinf(budget_s)


def test_decode_with_banked_slack_sits_out_for_prefill_surge():
    # One decode far ahead of its envelope and a big prompt waiting: the prompt gets the time.
    ahead = make_request("d", NOW - 1, 500, 1.0, 0.05, generated=10, first_token_s=NOW - 0.99)
    ahead.prefilled_tokens = 500
    ahead.generated_tokens = 200  # 200 tokens in 1 s: ~9 s of slack banked
    prompt = make_request("w", NOW, 8000, 1.0, 0.05)
    policy = FairBatchingPolicy(A100)
    view = IterationView(NOW, [ahead], [prompt], 10**6, 10**6, 256, 8192)
    plan = policy.plan(view)
    assert plan.prefills and plan.prefills[0].tokens > 512
    assert plan.urgent_decodes == 0


def test_adaptive_safety_follows_model_error():
    ahead = make_request("d", NOW - 1, 500, 1.0, 0.05, generated=10, first_token_s=NOW - 0.99)
    ahead.prefilled_tokens = 500
    view = IterationView(NOW, [ahead], [make_request("w", NOW, 3000, 1.0, 0.05)], 10**6, 10**6, 256, 8192)
    exact = FairBatchingPolicy(A100)
    assert exact.budget_safety == 0.9  # cold start
    slow = FairBatchingPolicy(A100)
    fixed = FairBatchingPolicy(A100, budget_safety=0.8)
    for _ in range(64):
        for policy, factor in ((exact, 1.0), (slow, 1.25), (fixed, 1.25)):
            plan = policy.plan(view)
            policy.observe(plan, factor * plan.predicted_s)
            policy.observe(plan, math.nan)  # ignored
    assert exact.budget_safety == 1.0
    assert slow.budget_safety == pytest.approx(1 / 1.25)
    assert fixed.budget_safety == 0.8


def _fresh_decodes(count, tpot=0.05):
    """Decodes that just got their first token: one TPOT of slack each."""
    decodes = []
    for i in range(count):
        request = make_request(f"d{i}", NOW - 0.5, 200, 1.0, tpot, generated=1, first_token_s=NOW)
        request.prefilled_tokens = 200
        decodes.append(request)
    return decodes


def test_dear_extend_path_defers_a_small_chunk_until_slack_is_banked():
    policy = FairBatchingPolicy(CPU_LIKE, budget_safety=0.9)
    decodes = _fresh_decodes(16)
    prompt = make_request("w", NOW, 4000, 2.0, 0.05)
    plan = policy.plan(IterationView(NOW, decodes, [prompt], 10**6, 10**6, 256, 8192))
    # 45 ms of budget leave room for a few tokens after the 36 ms extend overhead: not worth it.
    assert not plan.prefills and len(plan.decodes) == 16
    assert plan.predicted_s == CPU_LIKE.predict_shape(plan.shape)
    # Once decode-only steps banked enough slack, the prompt's chunk runs on its own (16 decodes'
    # rows on this extend path cost more than an iteration: prefills run apart).
    for request in decodes:
        request.generated_tokens = 12
    plan = policy.plan(IterationView(NOW + 0.03, decodes, [prompt], 10**6, 10**6, 256, 8192))
    assert plan.prefills and not plan.decodes
    assert plan.prefills[0].tokens == CPU_LIKE.efficient_chunk_tokens(0)


@pytest.mark.parametrize("waited_s, served", [(0.0, False), (0.95, True)])
def test_dear_extend_path_still_serves_a_prompt_near_its_ttft(waited_s, served):
    # 4 fresh decodes leave room for a chunk worth less than its extend overhead: deferred while
    # the prompt can wait, taken when it has 50 ms left of its 1 s TTFT.
    policy = FairBatchingPolicy(CPU_LIKE, budget_safety=0.9)
    prompt = make_request("w", NOW - waited_s, 300, 1.0, 0.05)
    plan = policy.plan(IterationView(NOW, _fresh_decodes(4), [prompt], 10**6, 10**6, 256, 8192))
    assert bool(plan.prefills) is served
    assert len(plan.decodes) == 4


def test_cheap_extend_path_never_defers():
    # The same situation on a model without extend-path cost takes the chunk at once.
    policy = FairBatchingPolicy(A100, budget_safety=0.9)
    prompt = make_request("w", NOW, 4000, 2.0, 0.05)
    plan = policy.plan(IterationView(NOW, _fresh_decodes(16), [prompt], 10**6, 10**6, 256, 8192))
    assert plan.prefills


def test_deferral_refunds_client_counters():
    policy = FairBatchingPolicy(CPU_LIKE, budget_safety=0.9, client_fairness=True)
    prompt = make_request("w", NOW, 4000, 2.0, 0.05, client="alice")
    plan = policy.plan(IterationView(NOW, _fresh_decodes(16), [prompt], 10**6, 10**6, 256, 8192))
    assert not plan.prefills
    assert policy.clients.counters.get("alice", 0.0) == 0.0


def _after_decode_step(decodes, step_s):
    """The view's decodes one decode-only step of ``step_s`` later: each streamed a token at its end."""
    now_s = NOW + step_s
    for request in decodes:
        request.generated_tokens += 1
        request.last_token_s = now_s
    return now_s


def test_dear_extend_path_runs_overdue_decodes_then_a_prompt_that_cannot_wait_alone():
    # 16 decodes a little behind their line and a prompt near its TTFT, on an engine whose extend
    # rows are dear (16 rows cost more than an iteration): no mixed batch.  The decodes run first,
    # alone; then, their next tokens due before a prefill could fit, the prompt, which would miss
    # its TTFT after one more decode step, still gets its prefill-only iteration, the queue's chunk
    # (the most efficient chunk), not a sliver that leaves the rest of it to a later iteration.
    policy = FairBatchingPolicy(CPU_LIKE, budget_safety=0.9)
    decodes = _fresh_decodes(16)
    for request in decodes:
        request.first_token_s = request.last_token_s = NOW - 0.06
    prompt = make_request("w", NOW - 0.93, 3000, 1.0, 0.05)
    first = policy.plan(IterationView(NOW, decodes, [prompt], 10**6, 10**6, 256, 8192))
    assert len(first.decodes) == 16 and not first.prefills
    now_s = _after_decode_step(decodes, first.predicted_s)
    second = policy.plan(IterationView(now_s, decodes, [prompt], 10**6, 10**6, 256, 8192))
    assert not second.decodes and second.skipped_decodes == 16
    (chunk,) = second.prefills
    assert second.step == "apart: prefill, head cannot wait"
    assert chunk.tokens >= CPU_LIKE.efficient_chunk_tokens(0)


@pytest.mark.parametrize("take_turns", [True, False])
def test_overdue_decodes_and_a_late_prompt_take_turns(take_turns):
    # 16 decodes far behind their line (a slow spell of the machine: on the CPU server decode
    # steps then take about a TPOT each and the decodes never catch up) and a prompt already past
    # its TTFT.  Overdue decodes go first, but with overdue_take_turns only for one step: the late
    # prompt's prefill comes next, then the decodes again.  Without it the prompt waits for the
    # decodes to be back on their line: measured, 14-36 decode-only steps in a row while 20-36
    # prompts missed their TTFT (docs/results-cpu.md).
    policy = FairBatchingPolicy(CPU_LIKE, budget_safety=0.9, overdue_take_turns=take_turns)
    decodes = _fresh_decodes(16)
    for request in decodes:
        request.first_token_s = request.last_token_s = NOW - 1.0
    prompt = make_request("w", NOW - 1.5, 3000, 1.0, 0.05)
    first = policy.plan(IterationView(NOW, decodes, [prompt], 10**6, 10**6, 256, 8192))
    assert first.step == "apart: decodes overdue" and len(first.decodes) == 16 and not first.prefills
    now_s = _after_decode_step(decodes, first.predicted_s)
    second = policy.plan(IterationView(now_s, decodes, [prompt], 10**6, 10**6, 256, 8192))
    if not take_turns:
        assert second.step == "apart: decodes overdue" and not second.prefills
        return
    assert second.step == "apart: prefill, head late" and not second.decodes
    (chunk,) = second.prefills
    assert chunk.tokens >= CPU_LIKE.efficient_chunk_tokens(0)
    third = policy.plan(IterationView(now_s + second.predicted_s, decodes, [prompt], 10**6, 10**6, 256, 8192))
    assert third.step == "apart: decodes overdue" and len(third.decodes) == 16  # their turn again


@pytest.mark.parametrize("remaining", [40, 600])
def test_a_part_prefilled_prompt_gets_its_chunk_priced_from_its_prefix(remaining):
    # The second test above with a prompt whose first 3000 tokens are prefilled: its next chunk
    # attends to them (on CPU_LIKE 9 ms more than a chunk with no prefix).  The prefill-only
    # iteration is sized for that; sized as if there were no prefix it held too small a chunk,
    # or none at all (a plan of decodes only, to which SGLang then adds its 32-token
    # continuation, with every decode, iteration after iteration).
    policy = FairBatchingPolicy(CPU_LIKE, budget_safety=0.9)
    decodes = _fresh_decodes(16)
    for request in decodes:
        request.first_token_s = request.last_token_s = NOW - 0.06
    prompt = make_request("long", NOW - 0.93, 3000 + remaining, 1.0, 0.05, prefilled=3000)
    now_s = _after_decode_step(decodes, policy.plan(IterationView(NOW, decodes, [], 10**6, 10**6, 256, 8192)).predicted_s)
    plan = policy.plan(IterationView(now_s, decodes, [prompt], 10**6, 10**6, 256, 8192))
    assert plan.step == "apart: prefill, head cannot wait"
    (chunk,) = plan.prefills
    assert chunk.tokens == min(remaining, CPU_LIKE.efficient_chunk_tokens(3000))


def test_a_prefill_only_iteration_packs_several_short_prompts():
    policy = FairBatchingPolicy(CPU_LIKE, budget_safety=0.9)
    decodes = _fresh_decodes(16)
    for request in decodes:
        request.first_token_s = request.last_token_s = NOW - 0.06
    prompts = [make_request(f"w{i}", NOW - 0.95, 40, 1.0, 0.05) for i in range(8)]
    first = policy.plan(IterationView(NOW, decodes, prompts, 10**6, 10**6, 256, 8192))
    now_s = _after_decode_step(decodes, first.predicted_s)
    plan = policy.plan(IterationView(now_s, decodes, prompts, 10**6, 10**6, 256, 8192))
    assert not plan.decodes
    assert len(plan.prefills) > 1 and all(c.tokens == 40 for c in plan.prefills)
    work_s = sum(CPU_LIKE.prefill_cost_s(c.tokens, 0) for c in plan.prefills)
    assert work_s >= 0.8 * (CPU_LIKE.fixed_s + CPU_LIKE.per_prefill_iteration_s)


@pytest.mark.parametrize("demote", [True, False])
def test_a_prompt_that_lost_its_ttft_goes_behind_one_that_can_still_make_it(demote):
    # Room for one prompt this iteration: deadline order would serve the lost cause (arrived 3 s
    # ago, TTFT 1 s) and make the fresh one (due in 0.2 s, ~0.15 s of work) late too.
    late = make_request("late", NOW - 3.0, 2000, 1.0, 0.05)
    fresh = make_request("fresh", NOW - 0.8, 2000, 1.0, 0.05)
    policy = FairBatchingPolicy(A100, demote_lost_requests=demote)
    view = IterationView(NOW, [], [late, fresh], 10**6, 10**6, 256, max_prefill_tokens=2000)
    plan = policy.plan(view)
    assert [chunk.request.rid for chunk in plan.prefills] == (["fresh"] if demote else ["late"])
    assert policy.describe()["demote_lost_requests"] is demote


@pytest.mark.parametrize("into_slack", [True, False])
def test_late_prompts_keep_their_order_and_are_still_served(into_slack):
    late = [make_request(f"late{i}", NOW - 3.0 + i * 0.1, 100, 1.0, 0.05) for i in range(3)]
    fresh = make_request("fresh", NOW - 0.5, 100, 1.0, 0.05)
    policy = FairBatchingPolicy(A100, late_into_slack=into_slack)
    plan = policy.plan(IterationView(NOW, [], late + [fresh], 10**6, 10**6, 256, 8192))
    # The fresh prompt has time to spare for the late ones (~10 ms of work each against 0.5 s).
    expected = ["late0", "late1", "late2", "fresh"] if into_slack else ["fresh", "late0", "late1", "late2"]
    assert [chunk.request.rid for chunk in plan.prefills] == expected


def test_lost_decodes_do_not_set_the_budget_and_may_sit_out():
    # One decode missed its TTFT long ago and is far behind its line; another is on time with
    # banked slack. The budget follows the one that can still meet its SLO, and the lost one is
    # no longer urgent (it runs when room is left, ahead of other relaxed decodes).
    lost = make_request("lost", NOW - 10, 200, 1.0, 0.05, generated=5, first_token_s=NOW - 8)
    lost.prefilled_tokens = 200
    lost.last_token_s = NOW + 0.005  # streaming on its slower line: not due this iteration
    ahead = make_request("ahead", NOW - 1, 200, 1.0, 0.05, generated=19, first_token_s=NOW - 0.95)
    ahead.prefilled_tokens = 200
    prompt = make_request("w", NOW, 8000, 1.0, 0.05)
    view = IterationView(NOW, [lost, ahead], [prompt], 10**6, 10**6, 256, 8192)
    policy = FairBatchingPolicy(A100, budget_safety=1.0)
    assert policy.is_lost(lost, NOW) and not policy.is_lost(ahead, NOW)
    budget_s, _ = policy.time_budget_s(view)
    assert budget_s == pytest.approx(max(ahead.next_deadline_s - NOW, 0.05))
    plan = policy.plan(view)
    assert plan.urgent_decodes == 1 and plan.decodes[0] is ahead and plan.prefills
    # Once it has waited lost_tpot_factor TPOTs for a token, it is due again and runs.
    lost.last_token_s = NOW - 0.2
    plan = policy.plan(view)
    assert plan.urgent_decodes == 2 and lost in plan.decodes
    keep = FairBatchingPolicy(A100, budget_safety=1.0, demote_lost_requests=False)
    assert keep.time_budget_s(view)[0] == pytest.approx(0.05)  # pinned at the floor by the lost one
    assert keep.plan(view).decodes[0] is lost


def test_a_decode_past_its_last_possible_deadline_is_lost():
    # On time for its TTFT, but 3 s behind with at most 10 tokens left at 50 ms each.
    policy = FairBatchingPolicy(A100)

    def behind(max_new_tokens):
        request = make_request("b", NOW - 4, 100, 1.0, 0.05, generated=5, prefilled=100)
        request.max_new_tokens = max_new_tokens  # a request's cap is known before its first token
        request.first_token_s = NOW - 3.9
        return request

    assert policy.is_lost(behind(15), NOW)
    assert not policy.is_lost(behind(200), NOW)  # may still catch up over a long output
    assert not policy.is_lost(behind(None), NOW)


@st.composite
def waiting_prompts(draw):
    return [make_request(f"w{i}", draw(st.floats(NOW - 6, NOW)), draw(st.integers(50, 9000)),
                         draw(st.sampled_from([0.5, 1.0, 2.0])), 0.05)
            for i in range(draw(st.integers(2, 25)))]


def _estimated_finish_s(order):
    """Each prompt's first-token estimate when served in ``order`` on an idle machine (what the
    prompt order is planned on: no decodes, so prefills get the whole machine)."""
    finish_s, clock_s = {}, NOW
    for request in order:
        clock_s += A100.prefill_cost_s(request.remaining_prefill_tokens, 0)
        finish_s[request.rid] = clock_s
    return finish_s


@given(waiting_prompts())
@settings(max_examples=200, deadline=None)
def test_a_late_prompt_moving_into_slack_costs_no_on_time_prompt_its_ttft(waiting):
    """Against Moore-Hodgson's order as it was: the same prompts, every one estimated on time still
    on time, and no late prompt served later."""
    view = IterationView(NOW, [], waiting)
    before = FairBatchingPolicy(A100, late_into_slack=False).order_and_budget(view).prefills
    after = FairBatchingPolicy(A100).order_and_budget(view).prefills
    assert sorted(r.rid for r in after) == sorted(r.rid for r in before)
    finish_before, finish_after = _estimated_finish_s(before), _estimated_finish_s(after)
    for request in waiting:
        rid = request.rid
        if finish_before[rid] <= first_token_deadline(request):
            assert finish_after[rid] <= first_token_deadline(request) + 1e-9
        else:
            assert finish_after[rid] <= finish_before[rid] + 1e-9


def test_a_prompt_that_cannot_wait_but_is_not_late_brings_the_queue_chunk():
    """The case hypothesis found against the old bound (the queue's chunk only once late): decodes
    that must run pay the extend path, and the half-prefilled first prompt, which would miss its
    TTFT after one more iteration, gets all that waits (563 tokens, under the 964-token efficient
    chunk), not only the prefill worth the extend overhead (343)."""
    decodes = []
    for i in range(17):
        r = make_request(f"d{i}", NOW - 1, 1, 1.0, 0.02, prefilled=0, generated=1, first_token_s=NOW - 0.015,
                         can_skip=i > 0)
        r.prefilled_tokens = 1
        decodes.append(r)
    head = make_request("p0", NOW - 0.95, 564, 1.0, 0.05, prefilled=1)
    view = IterationView(NOW, decodes, [head], 10**7, 200_000, 10**4, 8192)
    policy = FairBatchingPolicy(CPU_LIKE, budget_safety=0.8)
    assert not policy.keeps_prefills_apart(view)  # d0 may not sit out
    plan = policy.plan(view)
    assert plan.step == "mixed: head cannot wait"
    # (the chunk that fits the stretched time may lose a token to rounding)
    assert [chunk.request.rid for chunk in plan.prefills] == ["p0"] and 562 <= plan.prefills[0].tokens <= 563
    decode_s = CPU_LIKE.predict(17, sum(r.context_tokens for r in decodes), 17)
    mixing_s = CPU_LIKE.mixing_cost_s(17, sum(r.context_tokens for r in decodes), sum(r.context_tokens**2 for r in decodes))
    assert plan.time_budget_s == pytest.approx(decode_s + mixing_s + CPU_LIKE.prefill_cost_s(563, 0))
