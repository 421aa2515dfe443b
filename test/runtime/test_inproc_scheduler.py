"""The real SGLang Scheduler (as FairScheduler), built in this process and stepped by hand.

One scheduler per policy per module (building one takes ~10-20 s on 2 CPU cores).
"""

from __future__ import annotations

import json
import time

import pytest

from sglang_fair.runtime.inproc import build_scheduler, idle_check, make_req, run_until_idle, step
from sglang_fair.runtime.rejection import ADMISSION_STATUS


#: A fixed cost model for these tests: 5 ms per sequence makes a decode that does not fit visible.
COST_MODEL = {
    "name": "test-cpu",
    "fixed_s": 0.02,
    "per_new_token_s": 5e-05,
    "per_context_token_s": 1e-07,
    "per_seq_s": 0.005,
    "per_chunk_sq_s": 0.0,
}


@pytest.fixture(scope="module")
def fair(tmp_path_factory):
    path = tmp_path_factory.mktemp("cost") / "cost.json"
    path.write_text(json.dumps(COST_MODEL))
    # chunk cap far above the time-derived chunk, so the time budget is what binds
    scheduler = build_scheduler(
        "fairbatching", chunked_prefill_size=2048, ttft_slo_s=30.0, tpot_slo_s=0.05, cost_model=str(path)
    )
    scheduler.fair_policy.online.min_samples = 10**9  # keep the test's cost model fixed (no refit)
    return scheduler


def _decoding(scheduler, reqs):
    for req in reqs:
        scheduler._add_request_to_queue(req)
    for _ in range(20):
        step(scheduler)
        if all(len(r.output_ids) >= 2 for r in reqs):
            return
    raise AssertionError("requests did not start decoding")


def _shape_slack(scheduler, urgent, relaxed):
    """Make ``urgent`` due within the floor and ``relaxed`` far ahead of its envelope line."""
    now = time.perf_counter()
    for req, slack_s in ((urgent, 0.02), (relaxed, 100.0)):
        state = scheduler.fair_states[req.rid]
        # The envelope line is anchored at the first token (policy.request): move both.
        anchor_s = now + slack_s - state.generated_tokens * state.tpot_slo_s
        # arrival first: setting first_token_s fixes the planning lines from the arrival
        state.arrival_s = anchor_s - state.ttft_slo_s + 1.0
        state.first_token_s = anchor_s


def _mixed_step_with_prefill(scheduler, prompt_tokens=1500, rid="long"):
    long_req = make_req(rid, prompt_tokens, 4)
    scheduler._add_request_to_queue(long_req)
    return long_req


def test_relaxed_decode_sits_out_while_prefill_waits_urgent_never(fair):
    urgent, relaxed = make_req("urgent", 40, 30), make_req("relaxed", 40, 30)
    _decoding(fair, [urgent, relaxed])
    long_req = _mixed_step_with_prefill(fair)
    _shape_slack(fair, urgent, relaxed)
    skipped_before = fair.fair_skipped_decodes_total
    batch = step(fair)
    assert batch.forward_mode.is_mixed()
    assert long_req in batch.reqs and urgent in batch.reqs
    assert relaxed not in batch.reqs, "a decode with 100 s of slack should sit out for the prefill"
    assert relaxed in fair.running_batch.reqs  # K is the running batch: SGLang still sees it
    assert fair.fair_skipped_decodes_total == skipped_before + 1
    # The urgent decode runs in every later step too, whatever the prefill wants.
    while not long_req.finished() and long_req.output_ids == []:
        _shape_slack(fair, urgent, relaxed)
        batch = step(fair)
        assert urgent in batch.reqs or urgent.finished()
    run_until_idle(fair, [urgent, relaxed, long_req])
    assert [len(r.output_ids) for r in (urgent, relaxed, long_req)] == [30, 30, 4]
    assert not fair.fair_states
    idle_check(fair)


def test_decode_with_penalizer_never_sits_out(fair):
    urgent = make_req("urgent2", 40, 20)
    penalized = make_req("penalized", 40, 20, frequency_penalty=0.5)
    _decoding(fair, [urgent, penalized])
    assert not fair.fair_states["penalized"].can_skip
    long_req = _mixed_step_with_prefill(fair, rid="long2")
    _shape_slack(fair, urgent, penalized)
    batch = step(fair)
    assert batch.forward_mode.is_mixed() and penalized in batch.reqs
    run_until_idle(fair, [urgent, penalized, long_req])
    idle_check(fair)


def test_abort_while_sitting_out_releases_request(fair):
    from sglang.srt.managers.io_struct import AbortReq

    urgent, relaxed = make_req("urgent3", 40, 30), make_req("relaxed3", 40, 30)
    _decoding(fair, [urgent, relaxed])
    long_req = _mixed_step_with_prefill(fair, rid="long3")
    _shape_slack(fair, urgent, relaxed)
    batch = step(fair)
    assert relaxed not in batch.reqs and relaxed in fair.running_batch.reqs
    fair.abort_request(AbortReq(rid="relaxed3"))
    run_until_idle(fair, [urgent, relaxed, long_req])
    assert relaxed.finished() and len(relaxed.output_ids) < 30
    assert "relaxed3" not in fair.fair_states
    assert fair.fair_slo.aborted >= 1
    idle_check(fair)


def test_many_requests_all_finish_with_mixed_lengths(fair):
    reqs = [make_req(f"m{i}", 20 + 97 * i % 700, 3 + i % 9) for i in range(24)]
    for req in reqs:
        fair._add_request_to_queue(req)
    run_until_idle(fair, reqs, max_steps=800)
    assert all(len(r.output_ids) == r.sampling_params.max_new_tokens for r in reqs)
    assert not fair.fair_states
    idle_check(fair)
    state = fair.fair_runtime_state()
    assert state["slo"]["finished"] >= 24
    assert state["cost_model"]["samples"] > 0


def test_bad_slo_finishes_request_with_400(fair):
    req = make_req("bad", 10, 4)
    req.sampling_params.custom_params = {"ttft_slo": -1}
    fair._add_request_to_queue(req)
    assert req.to_finish is not None
    assert req.to_finish.status_code == 400 and "custom_params.ttft_slo" in req.to_finish.message
    run_until_idle(fair, [req])
    idle_check(fair)


def test_custom_params_slos_reach_the_request_state(fair):
    req = make_req("slo", 10, 4)
    req.sampling_params.custom_params = {"ttft_slo": 2.5, "tpot_slo": 0.2}
    fair._add_request_to_queue(req)
    state = fair.fair_states["slo"]
    assert (state.ttft_slo_s, state.tpot_slo_s) == (2.5, 0.2)
    run_until_idle(fair, [req])


def test_admission_control_rejects_hopeless_ttft_with_429(fair):
    fair.fair_config.admission_control = True
    try:
        hopeless = make_req("hopeless", 400, 4)
        hopeless.sampling_params.custom_params = {"ttft_slo": 0.001}
        fair._add_request_to_queue(hopeless)
        fine = make_req("fine", 20, 4)
        fine.sampling_params.custom_params = {"ttft_slo": 30.0}
        fair._add_request_to_queue(fine)
    finally:
        fair.fair_config.admission_control = False
    assert hopeless.to_finish is not None and hopeless.to_finish.status_code == ADMISSION_STATUS == 429  # retried elsewhere by the router
    assert "TTFT" in hopeless.to_finish.message
    assert fine.to_finish is None
    run_until_idle(fair, [hopeless, fine])
    assert len(fine.output_ids) == 4
    assert fair.fair_slo.rejected_admission >= 1
    idle_check(fair)


def test_pab_load_goes_into_the_load_snapshot_for_dp_balancing(fair):
    """``--load-balance-method pab``: the rank's LoadSnapshot carries the PAB load in the field
    SGLang's ``total_tokens`` DP method compares."""
    fair._fair_publish_pab_as_load()
    waiting = make_req("dp-wait", 600, 2)
    fair._add_request_to_queue(waiting)
    snapshot = fair.load_inquirer.get_loads()
    expected = fair.fair_pab_load_tokens()  # moves a little with the clock (slack)
    assert expected > 0 and abs(snapshot.num_total_tokens - expected) <= 0.05 * expected
    run_until_idle(fair, [waiting])
    assert fair.load_inquirer.get_loads().num_total_tokens == 0


@pytest.mark.parametrize("chunk_cap", [None, 128], ids=["time-budget", "capped-chunks"])
def test_the_adder_runs_exactly_the_prefills_the_plan_made(fair, chunk_cap):
    """The plan's shape is what SGLang's adder can run (one prompt cut, the last), so every
    iteration's prompt rows carry exactly the tokens the plan gave them, with decodes beside them;
    also where each chunk is capped below what the time budget allows (several capped prompts
    in one plan used to reach SGLang as one long chunk of the first)."""
    tag = f"{chunk_cap}"
    _decoding(fair, [make_req(f"ad{tag}{i}", 30, 60) for i in range(4)])
    prompts = [make_req(f"ap{tag}{i}", tokens, 4) for i, tokens in enumerate((300, 1400, 90, 700, 1100))]
    plans = []
    plan = fair.fair_policy.plan
    saved_cap, fair.fair_policy.max_chunk_tokens = fair.fair_policy.max_chunk_tokens, chunk_cap

    def recorded(view):
        plans.append(plan(view))
        return plans[-1]

    fair.fair_policy.plan = recorded
    try:
        for req in prompts:
            fair._add_request_to_queue(req)
        compared = 0
        for _ in range(120):
            plans.clear()
            batch = step(fair)
            if batch is None or not batch.forward_mode.is_extend() or not plans or not plans[-1].prefills:
                continue
            decoding = {id(req) for req in (batch.decoding_reqs or ())}
            ran = {req.rid: tokens for req, tokens in zip(batch.reqs, batch.extend_lens) if id(req) not in decoding}
            assert ran == {chunk.request.rid: chunk.tokens for chunk in plans[-1].prefills}
            compared += 1
            if all(len(req.output_ids) >= 1 for req in prompts):
                break
        assert compared >= 2 and all(len(req.output_ids) >= 1 for req in prompts)
    finally:
        fair.fair_policy.plan = plan
        fair.fair_policy.max_chunk_tokens = saved_cap
    run_until_idle(fair, prompts)
