"""The plan decides which prefills run, whatever ``--schedule-policy`` SGLang was given.

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
