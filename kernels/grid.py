"""The batch shapes to time: what the scheduler forms (decodes, a prefill chunk with its prefix, both).

A case is one iteration's batch: decodes, each attending to its own context, plus at most one prefill
chunk of ``chunk_tokens`` new tokens on top of ``prefix_tokens`` already cached (a continuing chunked
prefill has a prefix, a new prompt has none).  One chunk per batch is what chunked prefill forms; the
cost model's features add up over chunks, so the fit does not depend on that choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sglang_fair.policy.cost_model import BatchShape

__all__ = ["BatchCase", "GridSpec", "GRIDS", "build_grid", "sample_holdout", "SHAPE_CLASSES"]

SHAPE_CLASSES = ("decode-only", "mixed", "prefill-only")


@dataclass(frozen=True)
class BatchCase:
    decode_contexts: tuple[int, ...] = ()
    chunk_tokens: int = 0
    prefix_tokens: int = 0

    @property
    def shape_class(self) -> str:
        if not self.chunk_tokens:
            return "decode-only"
        return "mixed" if self.decode_contexts else "prefill-only"

    @property
    def num_decodes(self) -> int:
        return len(self.decode_contexts)

    def batch_shape(self) -> BatchShape:
        # The policy's own accounting, so profile features and scheduler features cannot drift apart.
        shape = BatchShape()
        for context_tokens in self.decode_contexts:
            shape.add_decode(context_tokens)
        if self.chunk_tokens:
            shape.add_prefill(self.chunk_tokens, self.prefix_tokens)
        return shape

    def kv_tokens(self) -> int:
        """KV slots the case occupies (decodes' contexts plus the chunk's prefix and new tokens)."""
        return sum(self.decode_contexts) + self.prefix_tokens + self.chunk_tokens


@dataclass(frozen=True)
class GridSpec:
    decode_counts: tuple[int, ...]
    decode_context_tokens: tuple[int, ...]
    chunk_tokens: tuple[int, ...]
    prefix_tokens: tuple[int, ...]
    mixed_decode_counts: tuple[int, ...]
    mixed_context_tokens: tuple[int, ...]
    mixed_chunk_tokens: tuple[int, ...]
    mixed_prefix_tokens: tuple[int, ...]
    #: Decode contexts in a case spread uniformly by +-this fraction around the nominal length:
    #: real batches are ragged, and a ragged batch times differently from a uniform one.
    context_jitter: float = 0.5
    #: Cases above this many new tokens are dropped (SGLang's chunked-prefill size caps them).
    max_new_tokens: int = 8192


GRIDS: dict[str, GridSpec] = {
    # A GPU serving a 7B-class model: up to 256 decodes, 8k contexts, chunks up to 4096 tokens.
    "default": GridSpec(
        decode_counts=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        decode_context_tokens=(128, 512, 1024, 2048, 4096),
        chunk_tokens=(32, 64, 128, 256, 512, 1024, 2048, 4096),
        prefix_tokens=(0, 512, 1024, 2048, 4096),
        mixed_decode_counts=(4, 16, 64, 128),
        mixed_context_tokens=(512, 2048),
        mixed_chunk_tokens=(64, 256, 512, 1024, 2048),
        mixed_prefix_tokens=(0, 1024, 2048),
        max_new_tokens=4096 + 256,
    ),
    # The CPU path: the same three classes at shapes a 2-core machine times in seconds.
    "tiny": GridSpec(
        decode_counts=(1, 4, 16, 32),
        decode_context_tokens=(64, 256),
        chunk_tokens=(16, 64, 128, 256),
        prefix_tokens=(0, 128),
        mixed_decode_counts=(4, 16),
        mixed_context_tokens=(128,),
        mixed_chunk_tokens=(32, 128),
        mixed_prefix_tokens=(0, 128),
        max_new_tokens=512,
    ),
}


def _ragged_contexts(rng: np.random.Generator, count: int, nominal: int, jitter: float) -> tuple[int, ...]:
    low, high = max(1, int(nominal * (1 - jitter))), max(1, int(nominal * (1 + jitter)))
    return tuple(int(c) for c in rng.integers(low, high + 1, size=count))


def build_grid(spec: GridSpec, *, seed: int = 0) -> list[BatchCase]:
    """All cases of ``spec``: decode-only, then prefill-only, then mixed; deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    cases: list[BatchCase] = []
    for count in spec.decode_counts:
        for nominal in spec.decode_context_tokens:
            cases.append(BatchCase(_ragged_contexts(rng, count, nominal, spec.context_jitter)))
    for chunk in spec.chunk_tokens:
        for prefix in spec.prefix_tokens:
            cases.append(BatchCase((), chunk, prefix))
    for chunk in spec.mixed_chunk_tokens:
        for prefix in spec.mixed_prefix_tokens:
            for count in spec.mixed_decode_counts:
                for nominal in spec.mixed_context_tokens:
                    contexts = _ragged_contexts(rng, count, nominal, spec.context_jitter)
                    cases.append(BatchCase(contexts, chunk, prefix))
    return [case for case in cases if case.batch_shape().new_tokens <= spec.max_new_tokens]


def sample_holdout(spec: GridSpec, count: int, *, seed: int = 1) -> list[BatchCase]:
    """Random cases inside the grid's ranges but off its points, to check the fit generalises."""
    rng = np.random.default_rng(seed)

    def log_uniform(low: int, high: int) -> int:
        return int(round(float(np.exp(rng.uniform(np.log(low), np.log(high))))))

    max_decodes, max_context = max(spec.decode_counts), max(spec.decode_context_tokens)
    min_context = min(spec.decode_context_tokens)
    min_chunk, max_chunk = min(spec.chunk_tokens), max(spec.chunk_tokens)
    max_prefix = max(spec.prefix_tokens)
    cases: list[BatchCase] = []
    while len(cases) < count:
        shape_class = SHAPE_CLASSES[len(cases) % len(SHAPE_CLASSES)]
        contexts: tuple[int, ...] = ()
        chunk = prefix = 0
        if shape_class != "prefill-only":
            decodes = log_uniform(1, max_decodes if shape_class == "decode-only" else max(spec.mixed_decode_counts))
            contexts = _ragged_contexts(rng, decodes, log_uniform(min_context, max_context), spec.context_jitter)
        if shape_class != "decode-only":
            chunk = log_uniform(min_chunk, max_chunk)
            prefix = int(rng.integers(0, max_prefix + 1)) if rng.random() < 0.7 else 0
        case = BatchCase(contexts, chunk, prefix)
        if case.batch_shape().new_tokens <= spec.max_new_tokens:
            cases.append(case)
    return cases
