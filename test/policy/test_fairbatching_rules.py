"""FairBatching's prompt order (the most prompts on time, none past its tail deadline) and its
chunking from the cost model and the deadline, checked on hand-made views."""

import pytest

from policy_helpers import A100, CPU_LIKE, CPU_MIXED_CONTEXT, make_request
from sglang_fair.policy import CostModel, FairBatchingPolicy, IterationView
from sglang_fair.policy.base import decode_utilisation

NOW = 100.0
#: A model with a quadratic attention term (efficient chunk ~ 800 tokens), like the GPU presets.
GPU = CostModel(0.0087, 5.4e-05, 2.9e-07, 1.4e-05, 1.2e-08, name="gpu-test")


def _waiting(rid, arrival, prompt, ttft=1.0):
    return make_request(rid, arrival, prompt, ttft, 0.05)


def _order(policy, view):
    return [r.rid for r in policy.order_and_budget(view).prefills]


def test_plan_reads_as_the_paper_steps():
    policy = FairBatchingPolicy(A100)
    for step in ("order_and_budget", "urgent_decodes", "prefills", "relaxed_decodes"):
        assert callable(getattr(policy, step))


def test_when_not_all_can_make_it_the_longest_prompt_gives_up_its_place():
    # Three prompts due within 0.6 s; together they need ~0.75 s, the long one alone ~0.45 s.
    policy = FairBatchingPolicy(A100, chunk_spread=0)
    short_a = _waiting("a", NOW - 0.5, 1500)
    long_b = _waiting("b", NOW - 0.45, 6000)
    short_c = _waiting("c", NOW - 0.4, 1500)
    view = IterationView(NOW, [], [short_a, long_b, short_c])
    order = policy.order_and_budget(view)
    assert [r.rid for r in order.prefills] == ["a", "c", "b"]
    assert order.late_prompts == 1
    # In plain deadline order (the paper's), the long one would have gone second.
    plain = FairBatchingPolicy(A100, demote_lost_requests=False)
    assert _order(plain, view) == ["a", "b", "c"]


def test_a_prompt_past_saving_is_served_by_its_tail_deadline_not_last():
    # late_ttft_factor 4: due by arrival + 4 s; without moving into slack it waits for that
    policy = FairBatchingPolicy(A100, late_into_slack=False)
    hopeless = _waiting("old", NOW - 2.5, 800)  # its 1 s TTFT passed 1.5 s ago
    fresh = [_waiting(f"n{i}", NOW - 0.05 * i, 300) for i in range(3)]  # due in ~1 s
    later = _waiting("late", NOW + 0.0, 300, ttft=3.0)  # due at NOW + 3, after the old one's NOW + 1.5
    view = IterationView(NOW, [], [hopeless, *fresh, later])
    order = _order(policy, view)
    assert order.index("old") > max(order.index(f"n{i}") for i in range(3))  # on-time ones first...
    assert order.index("old") < order.index("late")  # ...but not behind everything that can wait
    # The on-time ones have slack to spare for it (~0.2 s of work against ~1 s left): it goes now.
    assert _order(FairBatchingPolicy(A100), view)[0] == "old"


def test_a_late_prompt_moves_ahead_only_as_far_as_the_slack_allows():
    late = _waiting("old", NOW - 2.5, 800)
    late_cost_s = A100.prefill_cost_s(800, 0)
    # Three fresh prompts due 0.7 s from now that need all but ~0.02 s of it: the late prompt
    # (~0.06 s) would make the last of them miss, so it passes none of them ...
    tight = [_waiting(f"n{i}", NOW - 0.3 + 0.001 * i, 3000) for i in range(3)]
    finish_s = NOW + 3 * A100.prefill_cost_s(3000, 0)
    assert finish_s <= NOW + 0.7 < finish_s + late_cost_s
    assert _order(FairBatchingPolicy(A100), IterationView(NOW, [], [late, *tight])) == ["n0", "n1", "n2", "old"]
    # ... with a longer TTFT on the fresh ones there is room, and it goes first.
    roomy = [_waiting(f"n{i}", NOW - 0.3 + 0.001 * i, 3000, ttft=2.0) for i in range(3)]
    assert _order(FairBatchingPolicy(A100), IterationView(NOW, [], [late, *roomy]))[0] == "old"


def test_a_tail_deadline_at_risk_makes_an_on_time_prompt_give_up_instead():
    # The old prompt's tail deadline is 0.2 s away; serving the two fresh ones first would miss it.
    policy = FairBatchingPolicy(A100, late_ttft_factor=4.0)
    old = _waiting("old", NOW - 3.8, 1500)
    fresh = [_waiting("f0", NOW - 0.3, 1500), _waiting("f1", NOW - 0.2, 1500)]
    order = _order(policy, IterationView(NOW, [], [old, *fresh]))
    assert order[0] == "old"


def test_the_order_assumes_prefills_get_what_decodes_leave():
    decodes = []
    for i in range(64):
        r = make_request(f"d{i}", NOW - 5, 1000, 1.0, 0.05, prefilled=1000, generated=10, first_token_s=NOW - 4.5)
        decodes.append(r)
    share = 1.0 - decode_utilisation(decodes, A100)
    assert 0.05 < share < 0.95
    # A prompt the idle machine makes in time but a busy one does not gives up its TTFT.
    prompt = _waiting("p", NOW - 0.2, 9000)
    other = _waiting("q", NOW - 0.1, 200)
    idle = FairBatchingPolicy(A100).order_and_budget(IterationView(NOW, [], [prompt, other]))
    busy = FairBatchingPolicy(A100).order_and_budget(IterationView(NOW, decodes, [prompt, other]))
    assert idle.late_prompts == 0 and busy.late_prompts >= 1


def test_a_prompt_with_slack_is_spread_over_its_iterations():
    decode = make_request("d", NOW - 10, 500, 1.0, 0.05, prefilled=500, generated=50, first_token_s=NOW - 9)
    prompt = _waiting("p", NOW, 4000, ttft=2.0)  # 2 s of slack, iterations of ~50 ms
    spread = FairBatchingPolicy(GPU, budget_safety=1.0, chunk_spread=0.5)
    alone = FairBatchingPolicy(GPU, budget_safety=1.0)  # the default: no spreading
    efficient = GPU.efficient_chunk_tokens(0)
    with_decodes = IterationView(NOW, [decode], [prompt])
    spread_chunk = spread.plan(with_decodes).prefill_tokens
    assert spread_chunk < alone.plan(with_decodes).prefill_tokens <= efficient
    # Not below the chunk whose row costs more than the attention it saves, nor below the minimum.
    floor = GPU.efficient_chunk_tokens(0, overhead_s=GPU.per_seq_s + GPU.per_mixed_seq_s)
    assert spread_chunk >= max(floor, spread.min_chunk_tokens)
    # Half its slack, in ~50 ms iterations: 20 iterations for 4000 tokens.
    assert spread_chunk == pytest.approx(max(floor, 4000 / (0.5 * 2.0 / 0.05)), abs=1)


@pytest.mark.parametrize("case", ["no decodes", "no slack", "regenerating"])
def test_no_spreading_without_decodes_slack_or_a_first_token_to_come(case):
    decode = make_request("d", NOW - 10, 500, 1.0, 0.05, prefilled=500, generated=50, first_token_s=NOW - 9)
    if case == "no slack":
        prompt = _waiting("p", NOW - 0.99, 4000, ttft=1.0)
    else:
        prompt = _waiting("p", NOW, 4000, ttft=2.0)
    if case == "regenerating":  # retracted: its first token came long ago
        prompt.generated_tokens, prompt.first_token_s = 20, NOW - 1.5
        prompt.record_retraction()
    decodes = [] if case == "no decodes" else [decode]
    policy = FairBatchingPolicy(GPU, budget_safety=1.0, chunk_spread=0.5)
    assert policy._chunk_cap(GPU, prompt, NOW, policy.order_and_budget(IterationView(NOW, decodes, [prompt])).budget_s
                             if decodes else 0.0) == GPU.efficient_chunk_tokens(0)


def test_chunk_options_are_validated():
    with pytest.raises(ValueError, match="chunk_spread"):
        FairBatchingPolicy(A100, chunk_spread=2.0)
    with pytest.raises(ValueError, match="late_ttft_factor"):
        FairBatchingPolicy(A100, late_ttft_factor=0.5)


def _cpu_overload_view(prompt_arrival_s, decode_slack_s=0.05):
    """8 decodes (on time so far) due in ``decode_slack_s`` and three 2000-token prompts (TTFT 1 s)
    on a CPU-like model."""
    first_token_s = NOW + decode_slack_s - 5 * 0.05
    decodes = [make_request(f"d{i}", first_token_s - 0.5, 40, 1.0, 0.05, prefilled=40, generated=5,
                            first_token_s=first_token_s) for i in range(8)]
    prompts = [_waiting(f"p{i}", prompt_arrival_s + 0.001 * i, 2000) for i in range(3)]
    return IterationView(NOW, decodes, prompts)


@pytest.mark.parametrize("decode_slack_s", [0.05, 0.07, 0.1])
def test_once_the_first_prompt_missed_its_ttft_the_extend_path_gets_an_efficient_chunk(decode_slack_s):
    # An overload on a dear extend path: slivers of prefill per iteration only slow the drain,
    # whether the decodes' budget leaves less prefill than the overhead (0.05 s: stretched) or
    # a little more (0.07, 0.1 s: the plan stood with 280-520-token chunks before this rule).
    policy = FairBatchingPolicy(CPU_LIKE, budget_safety=0.9)
    efficient = CPU_LIKE.efficient_chunk_tokens(0)
    late = policy.plan(_cpu_overload_view(NOW - 5.0, decode_slack_s))  # 4 s past their TTFT
    assert late.prefill_tokens >= efficient


def test_a_prompt_that_cannot_wait_brings_the_queue_with_it():
    # Served now it can still make its TTFT, but not after one more decode step: the iteration
    # carries the queue's chunk (the most efficient chunk: 6000 tokens wait), as a late prompt's
    # does. Given only the prefill worth its overhead (the rule before 2026-12-07), the head was
    # saved and the prompts behind it reached the same point one iteration pair at a time.
    policy = FairBatchingPolicy(CPU_LIKE, budget_safety=0.9)
    cannot_wait = policy.plan(_cpu_overload_view(NOW - 0.95))
    assert cannot_wait.step.endswith("head cannot wait")
    assert cannot_wait.prefill_tokens >= CPU_LIKE.efficient_chunk_tokens(0)
    # With time to spare the same queue waits for the decodes to bank slack.
    assert not policy.plan(_cpu_overload_view(NOW - 0.2)).prefills


def _lost(rid, tpot_s):
    request = make_request(rid, NOW - 10.0, 400, 1.0, tpot_s, prefilled=400, generated=3, first_token_s=NOW - 5.0)
    request.last_token_s = NOW - 0.01  # each just streamed a token on its slower line
    return request


def test_when_every_decode_is_lost_and_nothing_waits_none_sits_out():
    # Deep overload, no prompt waiting: 10 lost decodes of a 50 ms class set the budget, 200 of a
    # 200 ms class are not yet due on their slower line. Sitting out would serve nobody (no prefill,
    # no decode still on time): all of them run, however long that takes.
    hurried = [_lost(f"h{i}", 0.05) for i in range(10)]
    relaxed = [_lost(f"r{i}", 0.2) for i in range(200)]
    policy = FairBatchingPolicy(CPU_LIKE, budget_safety=0.9)
    view = IterationView(NOW, [*hurried, *relaxed], [])
    assert all(policy.is_lost(r, NOW) for r in view.decodes)
    plan = policy.plan(view)
    assert plan.urgent_decodes < len(view.decodes)  # the relaxed ones were not forced as due...
    assert len(plan.decodes) == 210 and plan.skipped_decodes == 0  # ...they run: nobody gains
    assert plan.predicted_s > policy.time_budget_s(view)[0]
    # One decode still on time changes that: the others may sit out for its next deadline.
    on_time = make_request("ok", NOW - 0.5, 400, 1.0, 0.05, prefilled=400, generated=3, first_token_s=NOW - 0.45)
    plan = policy.plan(IterationView(NOW, [*hurried, *relaxed, on_time], []))
    assert plan.skipped_decodes > 0 and on_time in plan.decodes


# ---------------------------------------------------------------- prefills apart from decodes
def _decodes_with_slack(count, slack_s, tpot_s=0.1, can_skip=True):
    """``count`` decodes on time, each with ``slack_s`` to its next token's deadline."""
    first_token_s = NOW + slack_s - 3 * tpot_s  # 3 tokens so far: the next is due at first + 3 tpot
    return [make_request(f"d{i}", first_token_s - 0.5, 200, 1.0, tpot_s, prefilled=200, generated=3,
                         first_token_s=first_token_s, can_skip=can_skip) for i in range(count)]


@pytest.mark.parametrize("model, decodes, apart", [(GPU, 64, False), (A100, 200, False),
                                                   (CPU_LIKE, 4, False), (CPU_LIKE, 5, True), (CPU_LIKE, 64, True),
                                                   (CPU_MIXED_CONTEXT, 7, False), (CPU_MIXED_CONTEXT, 8, True)])
def test_prefills_and_decodes_mix_only_where_the_cost_model_says_it_is_cheaper(model, decodes, apart):
    # Mixed, n decodes pay n extend rows; apart, one more iteration's fixed cost (CPU_LIKE: rows of
    # 1.5 ms, iterations of 6.6 ms, so 5 decodes or more run apart; CPU_MIXED_CONTEXT: rows of
    # 0.3 ms + 3 us per token of their 203-token context, 0.909 ms, so 8 or more; a GPU preset never).
    policy = FairBatchingPolicy(model, budget_safety=0.9)
    view = IterationView(NOW, _decodes_with_slack(decodes, 0.2), [_waiting("w", NOW - 0.1, 600)])
    assert policy.keeps_prefills_apart(view) is apart
    assert (model.split_saving_s(decodes, decodes * 203, decodes * 203**2) > 0) is apart
    # The driver's running total, where it keeps one, gives the same answer as the pass over them.
    view.decode_context_tokens = decodes * 203
    assert policy.keeps_prefills_apart(view) is apart
    plan = policy.plan(view)
    if apart:
        assert not (plan.decodes and plan.prefills)


def test_a_prefill_only_iteration_leaves_time_for_the_decode_step_after_it():
    policy = FairBatchingPolicy(CPU_LIKE, budget_safety=0.9)
    decodes = _decodes_with_slack(16, 0.6)
    prompts = [_waiting(f"w{i}", NOW - 0.1, 1000) for i in range(8)]
    plan = policy.plan(IterationView(NOW, decodes, prompts))
    assert not plan.decodes and plan.skipped_decodes == 16 and plan.prefill_tokens > 0
    step_s = CPU_LIKE.predict(16, sum(r.context_tokens for r in decodes), 16)
    assert plan.predicted_s + step_s <= 0.9 * 0.6 + 1e-9  # both end before the first decode is due
    assert plan.predicted_s > 0.8 * (0.9 * 0.6 - step_s)  # and the room is used, not a sliver


def test_a_prefill_only_iteration_waits_for_room_that_dwarfs_its_overhead():
    # Room for a prefill worth its own overhead, but not nine times it and the decode step it
    # delays: decode-only steps (work due anyway) bank the room first; with the room, it runs.
    policy = FairBatchingPolicy(CPU_LIKE, budget_safety=0.9)
    prompts = [_waiting(f"w{i}", NOW - 0.1, 1000) for i in range(8)]
    step_s = CPU_LIKE.predict(16, 16 * 203, 16)
    amortised_s = 9 * (CPU_LIKE.fixed_s + CPU_LIKE.per_prefill_iteration_s + step_s)
    short = policy.plan(IterationView(NOW, _decodes_with_slack(16, (0.5 * amortised_s + step_s) / 0.9), prompts))
    assert len(short.decodes) == 16 and not short.prefills
    roomy = policy.plan(IterationView(NOW, _decodes_with_slack(16, (1.2 * amortised_s + step_s) / 0.9), prompts))
    assert not roomy.decodes and roomy.predicted_s >= amortised_s


def test_a_single_long_prompt_does_not_wait_for_room_its_chunk_cannot_use():
    policy = FairBatchingPolicy(CPU_LIKE, budget_safety=0.9)
    cap = CPU_LIKE.efficient_chunk_tokens(0)
    step_s = CPU_LIKE.predict(16, 16 * 203, 16)
    chunk_s = CPU_LIKE.fixed_s + CPU_LIKE.per_prefill_iteration_s + CPU_LIKE.prefill_cost_s(cap, 0)
    plan = policy.plan(IterationView(NOW, _decodes_with_slack(16, (1.05 * chunk_s + step_s) / 0.9),
                                     [_waiting("w", NOW - 0.1, 20 * cap)]))
    assert not plan.decodes and [c.tokens for c in plan.prefills] == [cap]


def test_with_no_room_for_a_prefill_the_decodes_run_alone_while_the_prompt_can_wait():
    policy = FairBatchingPolicy(CPU_LIKE, budget_safety=0.9)
    plan = policy.plan(IterationView(NOW, _decodes_with_slack(16, 0.02), [_waiting("w", NOW, 400, ttft=2.0)]))
    assert len(plan.decodes) == 16 and not plan.prefills


def test_a_decode_that_cannot_sit_out_keeps_prefills_mixed():
    # A decode with a penalizer or a grammar runs every iteration: a prefill-only one cannot exist.
    policy = FairBatchingPolicy(CPU_LIKE, budget_safety=0.9)
    decodes = _decodes_with_slack(15, 0.3) + _decodes_with_slack(1, 0.3, can_skip=False)
    view = IterationView(NOW, decodes, [_waiting("w", NOW - 0.1, 4000)])
    assert not policy.keeps_prefills_apart(view)
    assert decodes[-1] in policy.plan(view).decodes


def test_a_decode_batch_slower_than_its_line_does_not_starve_the_prompts():
    # 200 decodes whose step alone takes longer than their TPOT leave no room, ever; once the first
    # prompt cannot wait, prefill-only iterations take turns with the decode steps (never overdue
    # decodes first) instead of the prompts waiting until every decode has finished.
    policy = FairBatchingPolicy(CPU_LIKE, budget_safety=0.9)
    decodes = _decodes_with_slack(200, 0.05, tpot_s=0.05)
    step_s = CPU_LIKE.predict(200, sum(r.context_tokens for r in decodes), 200)
    assert step_s > 0.05
    prompt = _waiting("w", NOW - 1.5, 3000)  # past its TTFT: an overload
    plan = policy.plan(IterationView(NOW, decodes, [prompt]))
    assert not plan.decodes and plan.prefill_tokens >= CPU_LIKE.efficient_chunk_tokens(0)
    for request in decodes:  # now every decode is overdue: they go first
        request.first_token_s -= 1.0
    plan = policy.plan(IterationView(NOW, decodes, [prompt]))
    assert len(plan.decodes) == 200 and not plan.prefills


def test_a_half_prefilled_prompt_is_continued_alone_not_mixed():
    # SGLang continues its chunked request in every iteration: with decodes due, that chunk runs
    # before them on its own (quicker for them than their rows on the extend path).
    policy = FairBatchingPolicy(CPU_LIKE, budget_safety=0.9)
    decodes = _decodes_with_slack(16, 0.005)
    partial = make_request("p", NOW - 0.2, 3000, 1.0, 0.05, prefilled=1000)
    plan = policy.plan(IterationView(NOW, decodes, [partial]))
    assert not plan.decodes and [c.request.rid for c in plan.prefills] == ["p"]
