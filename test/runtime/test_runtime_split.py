"""The split runtime in a real scheduler: the plan decides which prefills run, whatever
``--schedule-policy`` SGLang was given; one iteration record; a view that only reads.

SGLang re-sorts its waiting queue in ``SchedulePolicy.calc_priority`` (longest prefix match,
DFS weight, ...) right before its prefill adder admits in queue order: after the runtime put the
plan's prefills first.  ``PlanOrderedSchedulePolicy`` puts the plan back on top.  Each case first
checks that SGLang's own order really differs from the plan here (the guard off), so the test
cannot pass by accident.
"""

from __future__ import annotations

import pytest

from sglang_fair.policy import Plan, PrefillChunk
from sglang_fair.runtime.inproc import build_scheduler, idle_check, make_req, run_until_idle, step
from sglang_fair.runtime.plan import PlanOrderedSchedulePolicy

PREFIX = [5 + (7 * j) % 400 for j in range(96)]  # a prompt the radix cache will hold


@pytest.fixture(scope="module")
def lpm():
    scheduler = build_scheduler("fairbatching", calibrate=False, server_args={"schedule_policy": "lpm"})
    assert isinstance(scheduler.policy, PlanOrderedSchedulePolicy)
    warm = make_req("warm", token_ids=PREFIX, max_new_tokens=1)
    scheduler._add_request_to_queue(warm)
    run_until_idle(scheduler, [warm])
    return scheduler


def _a_alone_first():
    """A stand-in for the policy's plan: the first step prefills the request named ``*-A`` alone,
    whole; later steps everything queued, so the rest finishes."""
    calls = []

    def plan(view) -> Plan:
        chosen = Plan(decodes=list(view.decodes))
        first = not calls
        calls.append(1)
        for state in view.prefills:
            if not first or state.rid.endswith("-A"):
                chosen.prefills.append(PrefillChunk(state, state.remaining_prefill_tokens))
        return chosen

    return plan


def _first_prefill_rows(scheduler, tag: str) -> list[str]:
    """Queue three prompts in the order C (fresh), A (fresh), B (the cached prefix + 16 tokens),
    plan A alone, step once and return the prefill rows SGLang formed (rid suffixes)."""
    reqs = [
        make_req(f"{tag}-C", 40, 2),
        make_req(f"{tag}-A", 40, 2),
        make_req(f"{tag}-B", token_ids=PREFIX + [9 + j for j in range(16)], max_new_tokens=2),
    ]
    for req in reqs:
        scheduler._add_request_to_queue(req)
    batch = step(scheduler)
    rows = [req.rid.split("-")[-1] for req in batch.reqs[: len(batch.reqs) - len(batch.decoding_reqs or [])]]
    run_until_idle(scheduler, reqs)
    return rows


@pytest.mark.parametrize("schedule_policy", ["lpm", "dfs-weight"])
def test_the_plan_not_the_schedule_policy_picks_the_prefills(lpm, monkeypatch, schedule_policy):
    from sglang.srt.managers.schedule_policy import SchedulePolicy

    guard = lpm.policy
    sglang_policy = SchedulePolicy(schedule_policy, lpm.tree_cache, False, False, False)
    monkeypatch.setattr(guard, "_inner", sglang_policy)
    # Control: without the guard SGLang's sort puts the cached-prefix prompt first and the plan
    # loses (this is what the guard is for).
    monkeypatch.setattr(lpm, "policy", sglang_policy)
    monkeypatch.setattr(lpm.fair_policy, "plan", _a_alone_first())
    unguarded = _first_prefill_rows(lpm, f"{schedule_policy}-off")
    assert unguarded[0] == "B", unguarded
    # With the guard: exactly the plan (A alone: its 40 tokens are the whole prefill budget), not
    # SGLang's order (B first) and not arrival order (C first).
    monkeypatch.setattr(lpm, "policy", guard)
    monkeypatch.setattr(lpm.fair_policy, "plan", _a_alone_first())
    assert _first_prefill_rows(lpm, f"{schedule_policy}-on") == ["A"]
    idle_check(lpm)


def test_outside_a_plan_sglang_orders_the_queue(lpm):
    """Stock steps (no plan being applied) keep SGLang's sort and chunk limit untouched."""
    guard = lpm.policy
    assert lpm.fair_iteration is None or lpm.fair_iteration.adder_budget is None
    queue = [make_req("plain-fresh", 40, 1), make_req("plain-cached", token_ids=PREFIX + [11], max_new_tokens=1)]
    guard.calc_priority(queue, lpm.running_batch)
    assert [req.rid for req in queue] == ["plain-cached", "plain-fresh"]


def _slots(state) -> dict:
    names = [name for cls in type(state).__mro__ for name in getattr(cls, "__slots__", ())]
    return {name: getattr(state, name) for name in names if name != "handle"}


def test_one_iteration_record_from_plan_to_processed_result_and_a_view_that_only_reads(lpm):
    from sglang_fair.runtime import records
    from sglang_fair.runtime.plan import IterationRecord
    from sglang_fair.runtime.view import build_view

    running = make_req("rec-running", 24, 6)
    lpm._add_request_to_queue(running)
    for _ in range(10):
        step(lpm)
        if len(running.output_ids) >= 2:
            break
    queued = make_req("rec-queued", 40, 2)
    lpm._add_request_to_queue(queued)
    # The view: built from synced records, it changes nothing (records, queue, running batch).
    decodes, prefills, has_chunked = records.sync_records(lpm, lpm.running_batch)
    assert [s.rid for s in decodes] == ["rec-running"] and [s.rid for s in prefills] == ["rec-queued"]
    before = [_slots(state) for state in decodes + prefills]
    queue = list(lpm.waiting_queue)
    view = build_view(lpm, decodes, prefills, has_chunked, 0.0)
    build_view(lpm, decodes, prefills, has_chunked, 1e9)
    assert [_slots(state) for state in decodes + prefills] == before
    assert lpm.waiting_queue == queue and view.decodes == decodes
    # The iteration record: made with the plan, read by the adder (its budget is set only while
    # SGLang forms the batch), timed by run_batch, dropped once the result is processed.
    step_plan = lpm.get_next_batch_to_run(running_batch=lpm.running_batch, last_batch=lpm.last_batch)
    lpm.running_batch = step_plan.running_batch
    record = lpm.fair_iteration
    assert isinstance(record, IterationRecord) and record.plan is lpm.fair_last_plan
    assert record.adder_budget is None and record.started_s is None
    batch = step_plan.batch_to_run
    assert "rec-queued" in [req.rid for req in batch.reqs]
    result = lpm.run_batch(batch)
    assert record.started_s is not None
    lpm.process_batch_result(batch, result)
    lpm.last_batch = batch
    assert lpm.fair_iteration is None
    for name in ("_fair_adder_budget", "_fair_iteration_plan", "_fair_batch_start_s"):
        assert not hasattr(lpm, name)
    run_until_idle(lpm, [running, queued])
    assert not lpm.fair_states
    idle_check(lpm)


def test_records_of_the_batch_being_processed_survive_a_sweep_whoever_drives_the_loop(lpm):
    """The prompts a batch prefills sit in no queue and no running batch until the next iteration
    merges them: a sweep run while their result is processed keeps their records (and their
    ``max_new_tokens``, which the KV estimate charges) even when the driver, unlike SGLang's own
    loop, never sets ``cur_batch_for_debug``; a record made late still knows ``max_new_tokens``."""
    from sglang_fair.runtime import records
    from sglang_fair.runtime.records import RuntimeRequestState

    for index in range(100):  # stale records (requests SGLang no longer holds): they force a sweep
        lpm.fair_states[f"stale-{index}"] = RuntimeRequestState(f"stale-{index}", 0.0, 8, 1.0, 0.1)
    reqs = [make_req(f"sweep-{index}", 24, 5) for index in range(3)]
    for req in reqs:
        lpm._add_request_to_queue(req)
    made = {req.rid: lpm.fair_states[req.rid] for req in reqs}
    lpm.cur_batch_for_debug = None
    step_plan = lpm.get_next_batch_to_run(running_batch=lpm.running_batch, last_batch=lpm.last_batch)
    lpm.running_batch = step_plan.running_batch
    batch = step_plan.batch_to_run
    assert {req.rid for req in batch.reqs} >= set(made)
    lpm.process_batch_result(batch, lpm.run_batch(batch))
    lpm.last_batch = batch
    assert not any(rid.startswith("stale-") for rid in lpm.fair_states), "no sweep ran"
    for rid, state in made.items():
        assert lpm.fair_states[rid] is state and state.max_new_tokens == 5
    # A record made for a request the intake never saw (here: its record dropped) reads the cap.
    del lpm.fair_states[reqs[0].rid]
    remade = records._record_of(lpm, reqs[0])
    assert remade is not made[reqs[0].rid] and remade.max_new_tokens == 5
    run_until_idle(lpm, reqs)
    assert not lpm.fair_states
    idle_check(lpm)
