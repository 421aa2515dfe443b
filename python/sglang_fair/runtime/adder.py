"""The prefill adder override: a plan's prefill tokens become SGLang's chunk budget.

``Scheduler._get_new_batch_prefill_raw`` builds ``self.get_prefill_adder_class()(...)`` each
iteration; returning :func:`plan_prefill_adder`'s class there caps the adder's input-token and
chunk budgets at the tokens the policy planned, and reserves KV for the decode rows that will be
mixed in.  All admission logic (radix-cache matching, KV accounting, chunking) stays SGLang's.
"""

from __future__ import annotations

import inspect

__all__ = ["EXPECTED_ADDER_PARAMS", "plan_prefill_adder"]

#: Leading positional parameters of ``PrefillAdder.__init__`` in sglang 0.5.23 that this module
#: relies on (a test pins them, so an upstream change fails loudly instead of mis-budgeting).
EXPECTED_ADDER_PARAMS = (
    "page_size",
    "tree_cache",
    "token_to_kv_pool_allocator",
    "running_batch",
    "new_token_ratio",
    "rem_input_tokens",
    "rem_chunk_tokens",
    "num_mixed_decode_tokens",
)
_NUM_MIXED_INDEX = EXPECTED_ADDER_PARAMS.index("num_mixed_decode_tokens")

_classes: dict[type, type] = {}


def plan_prefill_adder(base: type, prefill_tokens: int, decode_tokens: int):
    """A constructor for ``base`` whose budgets come from the plan (used like a class)."""
    cls = _classes.get(base)
    if cls is None:
        cls = _classes[base] = _make_class(base)

    def build(*args, **kwargs):
        return cls(*args, fair_prefill_tokens=prefill_tokens, fair_decode_tokens=decode_tokens, **kwargs)

    return build


def _make_class(base: type) -> type:
    class PlanPrefillAdder(base):
        def __init__(self, *args, fair_prefill_tokens: int, fair_decode_tokens: int, **kwargs):
            args = list(args)
            # Reserve KV for the decode rows the plan mixes in (SGLang's mixed-chunk argument).
            if len(args) > _NUM_MIXED_INDEX:
                args[_NUM_MIXED_INDEX] = fair_decode_tokens
            else:
                kwargs["num_mixed_decode_tokens"] = fair_decode_tokens
            super().__init__(*args, **kwargs)
            # The plan's tokens are for prefills only: decodes were already priced by the policy.
            self.rem_input_tokens = min(self.rem_input_tokens + fair_decode_tokens, fair_prefill_tokens)
            if self.rem_chunk_tokens is not None:
                self.rem_chunk_tokens = min(self.rem_chunk_tokens + fair_decode_tokens, fair_prefill_tokens)
            else:
                self.rem_chunk_tokens = fair_prefill_tokens

    PlanPrefillAdder.__name__ = f"Plan{base.__name__}"
    PlanPrefillAdder.__qualname__ = PlanPrefillAdder.__name__
    return PlanPrefillAdder


def adder_signature_matches(base: type) -> bool:
    names = tuple(inspect.signature(base.__init__).parameters)[1 : 1 + len(EXPECTED_ADDER_PARAMS)]
    return names == EXPECTED_ADDER_PARAMS
