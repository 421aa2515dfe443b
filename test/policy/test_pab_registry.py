import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_helpers import A100, make_request
from sglang_fair.policy import (
    POLICY_NAMES,
    FairBatchingPolicy,
    IterationView,
    SarathiPolicy,
    make_policy,
    policy_options,
    prefill_admission_budget,
)

NOW = 50.0


def _decode(i, ctx=1000, tpot=0.05):
    r = make_request(f"d{i}", NOW - 1, ctx, 1.0, tpot, generated=5, first_token_s=NOW - 0.9)
    r.prefilled_tokens = ctx
    return r


def _view(n_decodes, prompts):
    waiting = [make_request(f"w{i}", NOW - 0.01 * i, p, 1.0, 0.05) for i, p in enumerate(prompts)]
    return IterationView(NOW, [_decode(i) for i in range(n_decodes)], waiting)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 60), prompts=st.lists(st.integers(1, 8000), max_size=10), extra=st.integers(1, 8000))
def test_pab_monotone_in_load(n, prompts, extra):
    base = prefill_admission_budget(_view(n, prompts), A100, 1.0)
    more_prefill = prefill_admission_budget(_view(n, prompts + [extra]), A100, 1.0)
    more_decode = prefill_admission_budget(_view(n + 1, prompts), A100, 1.0)
    assert more_prefill.seconds <= base.seconds + 1e-12
    assert more_decode.seconds <= base.seconds + 1e-12
    assert more_prefill.tokens <= base.tokens + 1e-9
    assert 0.0 <= base.decode_utilisation <= 1.0


def test_pab_empty_replica_has_full_horizon():
    budget = prefill_admission_budget(IterationView(NOW, [], []), A100, 2.0)
    assert budget.seconds == pytest.approx(2.0)
    assert budget.tokens > 10_000


def test_admission_control_admits_then_refuses():
    policy = FairBatchingPolicy(A100)
    newcomer = make_request("new", NOW, 2000, 1.0, 0.05)
    assert policy.admit(newcomer, _view(0, []))
    assert not policy.admit(newcomer, _view(40, [8000] * 20))


def test_registry_names_and_options():
    assert set(POLICY_NAMES) == {"fairbatching", "sarathi", "sglang", "slai", "vtc"}
    for name in POLICY_NAMES:
        policy = make_policy(name, A100)
        assert policy.name == name
        assert "policy" in policy.describe()
    assert policy_options("sarathi")["token_budget"] == 512
    assert isinstance(make_policy("sarathi", A100, token_budget=64), SarathiPolicy)


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown batch policy"):
        make_policy("fifo", A100)
    with pytest.raises(ValueError, match="does not take"):
        make_policy("sarathi", A100, chunk=3)
    with pytest.raises(ValueError):
        make_policy("sarathi", A100, token_budget=0)
    with pytest.raises(ValueError):
        make_policy("fairbatching", A100, budget_safety=0)


def test_observe_feeds_online_model():
    from sglang_fair.policy import OnlineCostModel

    online = OnlineCostModel(A100, min_samples=4, refit_every=4)
    policy = make_policy("fairbatching", online)
    view = _view(8, [3000])
    for _ in range(8):
        plan = policy.plan(view)
        policy.observe(plan, math.nan)  # a broken timer must not break the policy
        policy.observe(plan, A100.predict_shape(plan.shape))
    assert online.rejected == 8 and online.samples == 8


def test_option_text_is_typed_by_its_default():
    from sglang_fair.policy.registry import parse_option_value

    assert parse_option_value("sarathi", "token_budget", "256") == 256
    assert parse_option_value("fairbatching", "client_fairness", "yes") is True
    # Options whose default is None ("adaptive"/"auto") read a JSON number or null.
    assert parse_option_value("fairbatching", "budget_safety", "0.8") == 0.8
    assert parse_option_value("fairbatching", "budget_safety", "auto") is None
    with pytest.raises(ValueError, match="has no option"):
        parse_option_value("sarathi", "nope", "1")
    with pytest.raises(ValueError, match="token_budget takes a number"):
        parse_option_value("sarathi", "token_budget", "many")


def test_a_relaxed_decode_takes_the_machine_only_as_often_as_its_tpot_asks():
    """With one TPOT the utilisation is a decode step's time over the TPOT.  With SLO classes a
    decode whose TPOT is four times the tightest needs a step only every fourth time: it takes a
    quarter of the row time a tight one takes, and the steps' fixed cost is paid every tight TPOT."""
    from sglang_fair.policy.base import decode_utilisation

    tight = [_decode(i, ctx=800, tpot=0.05) for i in range(10)]
    relaxed = [_decode(10 + i, ctx=800, tpot=0.2) for i in range(10)]
    row_s = A100.decode_cost_s(_decode(0, ctx=800).context_tokens)
    assert decode_utilisation(tight, A100) == pytest.approx(
        A100.predict(10, sum(r.context_tokens for r in tight), 10) / 0.05)
    mixed = decode_utilisation(tight + relaxed, A100)
    assert mixed == pytest.approx((A100.fixed_s + 10 * row_s) / 0.05 + 10 * row_s / 0.2)
    everyone_tight = decode_utilisation(tight + [_decode(10 + i, ctx=800) for i in range(10)], A100)
    assert decode_utilisation(tight, A100) < mixed < everyone_tight
    # The prompts get the rest: more PAB beside relaxed decodes than beside as many tight ones.
    waiting = [make_request("w", NOW, 2000, 1.0, 0.05)]
    assert (prefill_admission_budget(IterationView(NOW, tight + relaxed, waiting), A100, 1.0).tokens
            > prefill_admission_budget(IterationView(NOW, tight + [_decode(10 + i, ctx=800) for i in range(10)],
                                                     waiting), A100, 1.0).tokens)
