import math

import pytest

from sglang_fair.policy import RequestState, validate_slo

from policy_helpers import make_request


def test_first_token_deadline_is_arrival_plus_ttft():
    r = make_request(arrival=10.0, ttft=2.0, tpot=0.1)
    assert r.next_deadline_s == pytest.approx(12.0)
    assert r.slack_s(11.5) == pytest.approx(0.5)
    assert r.deadline_s(0) == pytest.approx(12.0)


def test_envelope_without_early_first_token():
    r = make_request(arrival=0.0, ttft=1.0, tpot=0.1)
    r.record_prefill(100, end_s=1.0)  # first token exactly on time
    assert r.generated_tokens == 1 and r.first_token_s == 1.0
    assert r.deadline_s(3) == pytest.approx(1.3)
    assert r.next_deadline_s == pytest.approx(1.1)


def test_envelope_anchors_at_early_first_token():
    # First token 0.8 s early: later tokens are paced from it so the mean TPOT SLO holds too.
    r = make_request(arrival=0.0, ttft=1.0, tpot=0.1)
    r.record_prefill(100, end_s=0.2)
    assert r.next_deadline_s == pytest.approx(0.3)
    r.record_token(0.25)
    assert r.slack_s(0.25) == pytest.approx(0.15)


def test_late_first_token_keeps_arrival_envelope():
    r = make_request(arrival=0.0, ttft=1.0, tpot=0.1)
    r.record_prefill(100, end_s=1.5)
    assert r.next_deadline_s == pytest.approx(1.1)  # already late: urgent
    assert r.slack_s(1.5) < 0


def test_slack_is_monotone_as_tokens_arrive_ahead():
    r = make_request(arrival=0.0, ttft=1.0, tpot=0.1)
    r.record_prefill(100, end_s=0.5)
    before = r.slack_s(0.52)
    r.record_token(0.52)  # ran ahead of pace: banks a whole TPOT
    assert r.slack_s(0.52) == pytest.approx(before + 0.1)


def test_chunked_prefill_progress():
    r = make_request(prompt=300)
    r.record_prefill(100, 0.1)
    assert r.is_prefilling and r.remaining_prefill_tokens == 200 and r.generated_tokens == 0
    r.record_prefill(200, 0.2)
    assert not r.is_prefilling and r.generated_tokens == 1 and r.context_tokens == 301


@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, "1", True, None, 1e9])
def test_validate_slo_rejects(value):
    with pytest.raises(ValueError, match="ttft_slo"):
        validate_slo("ttft_slo", value)


def test_validate_slo_accepts_numbers():
    assert validate_slo("x", 1) == 1.0
    assert validate_slo("x", 0.05) == 0.05


def test_judged_envelope_and_slo_verdict():
    request = RequestState("r", 10.0, 100, 1.0, 0.1)
    # The judged envelope line is not anchored at an early first token (docs/design.md, Metrics).
    assert request.envelope_deadline_s(0) == 11.0
    assert abs(request.envelope_deadline_s(3) - 11.3) < 1e-12
    request.record_token(10.5)  # first token 0.5 s after arrival: TTFT met
    assert request.slo_met() == (True, True)  # one token: no TPOT to miss
    request.record_token(10.6)
    request.record_token(10.9)  # mean TPOT (10.9 - 10.5) / 2 = 0.2 s > 0.1 s
    assert request.slo_met() == (True, False)
    late = RequestState("late", 0.0, 100, 1.0, 0.1)
    late.record_token(1.5)
    assert late.slo_met() == (False, True)


def test_the_many_request_forms_match_the_methods_bit_for_bit():
    """next_deadlines_s, envelope_slacks_s, any_lost and the scalar mean_tpot_s are the hot-path forms
    of the methods: the same floats, not just close ones."""
    import random

    import numpy as np

    from sglang_fair.policy.request import any_lost, envelope_slacks_s, mean_tpot_s, next_deadlines_s

    rng = random.Random(5)
    requests = []
    for i in range(200):
        r = RequestState(str(i), rng.uniform(0, 100), rng.randint(1, 4000), rng.choice([0.5, 1.0, 2.0, 5.0]),
                         rng.choice([0.03, 0.05, 0.1, 0.2]), max_new_tokens=rng.choice([None, 50, 900]))
        r.generated_tokens = rng.randint(0, 800)
        if r.generated_tokens:
            r.first_token_s = r.arrival_s + rng.uniform(0, 3 * r.ttft_slo_s)
        requests.append(r)
    now_s = 110.0
    assert next_deadlines_s(requests) == [r.next_deadline_s for r in requests]
    assert envelope_slacks_s(requests, now_s) == [r.envelope_slack_s(r.generated_tokens, now_s) for r in requests]
    for ahead in (1, 7):
        assert envelope_slacks_s(requests, now_s, ahead) == [r.envelope_slack_s(r.generated_tokens + ahead, now_s)
                                                            for r in requests]
    assert any_lost(requests, now_s) == any(r.is_lost(now_s) for r in requests)
    assert any_lost(requests, now_s)
    assert not any_lost([r for r in requests if not r.is_lost(now_s)], now_s)
    assert not any_lost([], now_s)
    for generated in (0, 1, 2, 37, 1000):
        assert mean_tpot_s(1.25, 9.5, generated) == float(mean_tpot_s(1.25, 9.5, np.int64(generated)))


def test_new_token_ratio_decode_steps_is_that_many_decode_steps():
    """A run of decode steps decays SGLang's new-token ratio exactly as one step at a time."""
    from sglang_fair.policy.kv import NewTokenRatio

    for steps in (0, 1, 7, 500, 5000):
        one_by_one, in_one = NewTokenRatio(), NewTokenRatio()
        for _ in range(steps):
            one_by_one.decode_step()
        in_one.decode_steps(steps)
        assert in_one.current == one_by_one.current
