"""The SGLang 0.5.23 internals the runtime overrides or calls, pinned: an upstream change in their
shape must fail here, loudly, rather than mis-batch in a server."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from sglang_fair import platform

platform.setup(announce_now=False)

REPO = Path(__file__).resolve().parents[2]


def _params(func) -> list[str]:
    return [name for name in inspect.signature(func).parameters if name != "self"]


def test_sglang_version_is_the_one_pinned():
    import importlib.metadata

    import sglang

    from sglang_fair import SGLANG_VERSION, sglang_version_problem

    assert sglang.__version__ == importlib.metadata.version("sglang") == SGLANG_VERSION
    assert sglang_version_problem() is None
    pins = (REPO / "requirements" / "runtime.txt").read_text().splitlines()
    assert f"sglang=={SGLANG_VERSION}" in pins


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("get_new_batch_prefill", ["running_batch"]),
        ("get_prefill_adder_class", []),
        ("_add_request_to_queue", ["req", "is_retracted"]),
        ("run_batch", ["batch"]),
        ("process_batch_result", ["batch", "result"]),
        ("on_idle", []),
        ("_reqs_finishing_inflight", ["batch"]),
        ("get_internal_state", ["recv_req"]),
        ("abort_request", ["recv_req"]),
    ],
)
def test_scheduler_methods_we_override_or_call(method, expected):
    from sglang.srt.managers.scheduler import Scheduler

    assert _params(getattr(Scheduler, method))[: len(expected)] == expected


def test_prefill_adder_leading_parameters():
    from sglang.srt.managers.schedule_policy import PrefillAdder

    from sglang_fair.runtime.adder import EXPECTED_ADDER_PARAMS, adder_signature_matches

    assert adder_signature_matches(PrefillAdder), _params(PrefillAdder.__init__)[: len(EXPECTED_ADDER_PARAMS)]
    source = inspect.getsource(PrefillAdder.__init__)
    assert "self.rem_input_tokens" in source and "self.rem_chunk_tokens" in source


def test_adder_built_positionally_in_the_prefill_path():
    """Our adder swaps the 8th positional argument (mixed decode tokens): SGLang must pass it so."""
    from sglang.srt.managers.scheduler import Scheduler

    source = inspect.getsource(Scheduler._get_new_batch_prefill_raw)
    assert "self.get_prefill_adder_class()(" in source
    assert "running_bs if self.is_mixed_chunk else 0," in source


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("filter_batch", ["reqs_to_exclude", "keep_indices"]),
        ("merge_batch", ["other"]),
        ("mix_with_running", ["running_batch"]),
        ("prepare_for_decode", []),
        ("check_decode_mem", ["selected_indices"]),
    ],
)
def test_schedule_batch_methods_used_by_the_split(method, expected):
    from sglang.srt.managers.schedule_batch import ScheduleBatch

    assert _params(getattr(ScheduleBatch, method)) == expected


def test_penalizer_orchestrator_constructor():
    from sglang.srt.sampling.penaltylib.orchestrator import BatchedPenalizerOrchestrator

    assert _params(BatchedPenalizerOrchestrator.__init__) == ["vocab_size", "batch", "penalizers"]


def test_finish_with_abort_takes_a_status_code():
    from sglang.srt.managers.schedule_batch import Req

    assert _params(Req.set_finish_with_abort)[:2] == ["error_msg", "status_code"]


def test_waiting_queue_sorted_through_the_scheduler_policy_before_the_adder():
    """PlanOrderedSchedulePolicy re-applies the plan's order inside ``self.policy.calc_priority``:
    SGLang must sort there, once, before its adder admits in queue order, and build the policy once."""
    from sglang.srt.managers.schedule_policy import SchedulePolicy
    from sglang.srt.managers.scheduler import Scheduler

    source = inspect.getsource(Scheduler._get_new_batch_prefill_raw)
    assert source.count("self.policy.calc_priority(") == 1
    assert source.index("self.policy.calc_priority(") < source.index("self.get_prefill_adder_class()(")
    assert "self.policy.shortest_prefill_chunk_limit(" in source
    assert "self.policy = SchedulePolicy(" in inspect.getsource(Scheduler.init_schedule_policy)
    assert _params(SchedulePolicy.calc_priority)[:1] == ["waiting_queue"]


def test_the_tokenizers_receipt_time_reaches_the_scheduler_with_the_patch_only():
    """SGLang 0.5.23 drops ``created_time`` when it pickles a request's time stats to the scheduler;
    ``install_created_time_propagation`` sends it on, and the scheduler's stats take it
    (``new_from_obj`` copies the fields both classes have).  Upstream renaming either field, or
    starting to send it itself, fails here."""
    import pickle

    from sglang.srt.observability.req_time_stats import APIServerReqTimeStats, SchedulerReqTimeStats

    from sglang_fair.runtime import http_routes

    sent = APIServerReqTimeStats()
    sent.set_created_time(1234.5)
    if not getattr(APIServerReqTimeStats.__getstate__, "_sglang_fair_created_time", False):
        assert "created_time" not in APIServerReqTimeStats.__getstate__(sent), \
            "SGLang now sends created_time itself: drop the patch"
    http_routes.install_created_time_propagation()
    http_routes.install_created_time_propagation()  # idempotent
    received = pickle.loads(pickle.dumps(sent))
    assert received.created_time == 1234.5
    assert SchedulerReqTimeStats.new_from_obj(received).created_time == 1234.5
    assert hasattr(SchedulerReqTimeStats(), "scheduler_recv_time")
