"""Helpers shared by the policy tests (imported by module name; the test dirs are not packages)."""

from sglang_fair.policy import CostModel, RequestState

A100 = CostModel(0.00597, 7.55e-05, 3.0e-07, -2.7e-05, 0.0, name="a100-test")
#: An engine whose extend path is dear (like SGLang's CPU backend): a batch with a prefill chunk
#: costs 12 ms more, plus 1.5 ms per sequence in it.
CPU_LIKE = CostModel(0.0066, 9.5e-05, 3.1e-06, 0.0, 2e-08, per_prefill_iteration_s=0.012,
                     per_mixed_seq_s=0.0015, name="cpu-like-test")
#: CPU_LIKE whose decode rows in a batch with a prefill also pay per context token (``mixed_context``,
#: as SGLang's CPU backend measured: ~0.4 ms a row at 96 tokens of context, ~1.2 ms at 256-384).
CPU_MIXED_CONTEXT = CostModel(0.0066, 9.5e-05, 3.1e-06, 0.0, 2e-08, per_prefill_iteration_s=0.012,
                              per_mixed_seq_s=0.0003, per_mixed_context_s=3e-06, name="cpu-mixed-context-test")
#: CPU_LIKE whose decode rows in a batch with a prefill cost superlinearly in their context
#: (``mixed_context_sq``, as on the larger calibration model: ~1 ms a row at 96 tokens, ~11 at 384):
#: here 0.3 ms + 1 us per token + 10 ns per token squared (0.49 ms at 96 tokens, 2.16 ms at 384).
CPU_MIXED_CONTEXT_SQ = CostModel(0.0066, 9.5e-05, 3.1e-06, 0.0, 2e-08, per_prefill_iteration_s=0.012,
                                 per_mixed_seq_s=0.0003, per_mixed_context_s=1e-06, per_mixed_context_sq_s=1e-08,
                                 name="cpu-mixed-context-sq-test")


def make_request(rid="r", arrival=0.0, prompt=100, ttft=1.0, tpot=0.05, prefilled=0, generated=0,
                 client="c0", can_skip=True, first_token_s=None) -> RequestState:
    request = RequestState(str(rid), arrival, prompt, ttft, tpot, client=client, can_skip=can_skip,
                           prefilled_tokens=prefilled, generated_tokens=generated)
    if generated > 0:
        request.first_token_s = arrival + ttft if first_token_s is None else first_token_s
        request.last_token_s = request.first_token_s
    return request
