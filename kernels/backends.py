"""Timing one iteration of a model shape on a batch case: dense layers in torch, attention per device.

The work of an iteration is ``plan + num_layers * layer + head``:

* ``plan``: per-iteration attention metadata (index tensors; FlashInfer's ``plan()`` on the GPU), done
  once per forward pass and shared by all layers, as SGLang does.  Timed on the host clock.
* ``layer``: RMSNorm, QKV projection, rotary embedding, KV-cache write, attention, output projection,
  residual, RMSNorm, gate/up projection, SiLU-and-mul, down projection, residual.  One layer is timed
  and multiplied by the layer count (weights of one 7B layer are far larger than any GPU cache, so
  reusing them does not flatter the time).
* ``head``: final norm and the LM head on each sequence's last token, then greedy sampling.

Tensor-parallel communication is not timed: with ``tp_degree > 1`` this is one rank's compute.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

from .grid import BatchCase
from .model_shape import ModelShape

__all__ = ["BackendError", "CaseTiming", "CpuBackend", "CudaBackend", "PagedLayout", "make_backend", "paged_layout"]

GPU_UNAVAILABLE = "FlashInfer/CUDA not available, use --device cpu"


class BackendError(RuntimeError):
    """The requested device cannot run the profiler; one line for the user."""


@dataclass
class CaseTiming:
    total_s: float  # median iteration time: plan + layers * layer + head
    attention_s: float  # median attention time of one layer (included in total)
    layer_s: float  # median time of one whole layer
    plan_s: float
    head_s: float
    spread: float  # (p90 - p10) / median of the per-repeat layer times: how noisy this case was


def _median_and_spread(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    median = statistics.median(ordered)
    if len(ordered) < 3 or median <= 0:
        return median, 0.0
    low = ordered[int(0.1 * (len(ordered) - 1))]
    high = ordered[int(math.ceil(0.9 * (len(ordered) - 1)))]
    return median, (high - low) / median


class _DenseLayer:
    """Weights and dense work of one decoder layer (one TP rank), on any torch device."""

    def __init__(self, torch, shape: ModelShape, device: str, dtype) -> None:
        self.torch = torch
        self.shape = shape
        head_dim = shape.head_dim
        q_width = shape.heads_per_rank * head_dim
        kv_width = shape.kv_heads_per_rank * head_dim
        self.q_width, self.kv_width = q_width, kv_width
        gen = torch.Generator(device="cpu").manual_seed(0)

        def weight(rows: int, cols: int):
            return (torch.randn(rows, cols, generator=gen) * 0.02).to(device=device, dtype=dtype)

        hidden = shape.hidden_size
        self.w_qkv = weight(hidden, q_width + 2 * kv_width)
        self.w_o = weight(q_width, hidden)
        self.w_gate_up = weight(hidden, 2 * shape.intermediate_per_rank)
        self.w_down = weight(shape.intermediate_per_rank, hidden)
        self.norm_1 = torch.ones(hidden, device=device, dtype=dtype)
        self.norm_2 = torch.ones(hidden, device=device, dtype=dtype)
        self.norm_f = torch.ones(hidden, device=device, dtype=dtype)
        self.w_lm_head = weight(hidden, max(1, shape.vocab_size // shape.tp_degree))
        max_positions = 1 << 16
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        self.cos = angles.cos().to(device=device, dtype=dtype)
        self.sin = angles.sin().to(device=device, dtype=dtype)

    def rms_norm(self, x, weight):
        torch = self.torch
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(variance + 1e-6)).to(x.dtype) * weight

    def rotary(self, x, positions):
        cos = self.cos[positions].unsqueeze(1)
        sin = self.sin[positions].unsqueeze(1)
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return self.torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    def forward(self, hidden, positions, attention):
        """One layer; ``attention(q, k, v)`` writes the KV cache and returns [tokens, heads, dim]."""
        shape = self.shape
        tokens = hidden.shape[0]
        x = self.rms_norm(hidden, self.norm_1)
        qkv = x @ self.w_qkv
        q = qkv[:, : self.q_width].view(tokens, shape.heads_per_rank, shape.head_dim)
        k = qkv[:, self.q_width : self.q_width + self.kv_width].view(tokens, shape.kv_heads_per_rank, shape.head_dim)
        v = qkv[:, self.q_width + self.kv_width :].view(tokens, shape.kv_heads_per_rank, shape.head_dim)
        q, k = self.rotary(q, positions), self.rotary(k, positions)
        out = attention(q, k, v.contiguous())
        hidden = hidden + out.reshape(tokens, self.q_width) @ self.w_o
        x = self.rms_norm(hidden, self.norm_2)
        gate, up = (x @ self.w_gate_up).chunk(2, dim=-1)
        return hidden + (self.torch.nn.functional.silu(gate) * up) @ self.w_down

    def head(self, hidden, last_token_rows):
        x = self.rms_norm(hidden[last_token_rows], self.norm_f)
        return (x @ self.w_lm_head).argmax(dim=-1)


def _sequence_layout(case: BatchCase) -> list[tuple[int, int]]:
    """(prefix_tokens, new_tokens) per sequence: the chunk first, then each decode."""
    layout = [(case.prefix_tokens, case.chunk_tokens)] if case.chunk_tokens else []
    layout += [(context - 1, 1) for context in case.decode_contexts]
    return layout


@dataclass
class PagedLayout:
    """FlashInfer's index arrays for a case on a paged KV pool (sequences' pages contiguous).

    ``page_*``: every sequence's whole KV (prefix and new tokens), for the decode wrapper.
    ``prefix_*``: only the cached prefix, for the paged pass of an extend (zero pages when none).
    ``qo_indptr``: new tokens per sequence (the ragged pass attends new tokens to each other).
    FlashInfer's KV length of a sequence is ``(pages - 1) * page_size + last_page_len``.
    """

    page_indptr: list[int]
    page_indices: list[int]
    last_page_len: list[int]
    prefix_indptr: list[int]
    prefix_indices: list[int]
    prefix_last_page_len: list[int]
    qo_indptr: list[int]
    new_slots: list[int]  # flat KV slot of each new token, where its K and V are written
    positions: list[int]
    last_rows: list[int]  # row of each sequence's last new token (the LM head's input)


def paged_layout(case: BatchCase, page_size: int) -> PagedLayout:
    layout = PagedLayout([0], [], [], [0], [], [], [0], [], [], [])
    next_page = 0
    for prefix, new in _sequence_layout(case):
        total = prefix + new
        pages = -(-total // page_size)
        seq_pages = list(range(next_page, next_page + pages))
        next_page += pages
        layout.page_indices += seq_pages
        layout.page_indptr.append(len(layout.page_indices))
        layout.last_page_len.append(total - (pages - 1) * page_size)
        prefix_pages = -(-prefix // page_size)
        layout.prefix_indices += seq_pages[:prefix_pages]
        layout.prefix_indptr.append(len(layout.prefix_indices))
        layout.prefix_last_page_len.append(prefix - (prefix_pages - 1) * page_size if prefix_pages else page_size)
        layout.new_slots += [seq_pages[0] * page_size + p for p in range(prefix, total)]
        layout.positions += range(prefix, total)
        layout.qo_indptr.append(layout.qo_indptr[-1] + new)
        layout.last_rows.append(layout.qo_indptr[-1] - 1)
    return layout


class _Backend:
    device_name = "?"

    def __init__(self, shape: ModelShape, max_kv_tokens: int) -> None:
        self.shape = shape
        self.max_kv_tokens = max_kv_tokens

    def sample_case(self, case: BatchCase) -> tuple[float, float, float, float]:
        """One timed run of ``case``: (plan_s, layer_s, attention_s, head_s)."""
        if case.kv_tokens() > self.max_kv_tokens:
            raise ValueError(f"case needs {case.kv_tokens()} KV tokens, pool has {self.max_kv_tokens}")
        plan_s, batch = self._prepare(case)
        return (plan_s, *self._run(batch))

    def summarize(self, samples: list[tuple[float, float, float, float]]) -> CaseTiming:
        layer_s, spread = _median_and_spread([s[1] for s in samples])
        plan_s = statistics.median(s[0] for s in samples)
        head_s = statistics.median(s[3] for s in samples)
        return CaseTiming(
            total_s=plan_s + self.shape.num_layers * layer_s + head_s,
            attention_s=statistics.median(s[2] for s in samples),
            layer_s=layer_s,
            plan_s=plan_s,
            head_s=head_s,
            spread=spread,
        )

    def time_case(self, case: BatchCase, *, warmup: int, repeats: int) -> CaseTiming:
        for _ in range(warmup):
            self.sample_case(case)
        return self.summarize([self.sample_case(case) for _ in range(repeats)])

    def time_cases(self, cases: list[BatchCase], *, warmup: int, repeats: int, seed: int = 0,
                   progress=None) -> list[CaseTiming]:
        """Time all cases in interleaved rounds, each round in a fresh random order.

        A burst of interference (another process on a shared CPU, GPU clocks settling) then lands
        on a few samples of many cases instead of all samples of one, and the medians absorb it.
        """
        import random

        order = list(range(len(cases)))
        rng = random.Random(seed)
        samples: list[list] = [[] for _ in cases]
        for round_index in range(warmup + repeats):
            rng.shuffle(order)
            for index in order:
                sample = self.sample_case(cases[index])
                if round_index >= warmup:
                    samples[index].append(sample)
            if progress:
                progress(round_index + 1, warmup + repeats)
        return [self.summarize(case_samples) for case_samples in samples]

    def describe(self) -> str:
        return self.device_name


class CpuBackend(_Backend):
    """torch on the CPU, attention through ``scaled_dot_product_attention`` per sequence (as SGLang's
    torch_native backend loops over sequences).  For CI and for the CPU runtime's prior."""

    def __init__(self, shape: ModelShape, max_kv_tokens: int, *, threads: int | None = None) -> None:
        super().__init__(shape, max_kv_tokens)
        import platform

        import torch

        self.torch = torch
        if threads:
            torch.set_num_threads(threads)
        # Single-threaded, the calling thread does all the work, so its CPU time is the iteration's
        # time on an idle core, and preemption by other processes on a shared box does not count.
        # With more threads, wall time is the only honest clock.
        self.clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
        self.clock_name = "thread CPU time" if self.clock is time.thread_time else "wall clock"
        self.dtype = getattr(torch, shape.dtype)
        self.layer = _DenseLayer(torch, shape, "cpu", self.dtype)
        kv_shape = (max_kv_tokens, shape.kv_heads_per_rank, shape.head_dim)
        self.k_cache = torch.zeros(kv_shape, dtype=self.dtype)
        self.v_cache = torch.zeros(kv_shape, dtype=self.dtype)
        self.device_name = (
            f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"{self.clock_name}, torch {torch.__version__})"
        )

    def _prepare(self, case: BatchCase):
        torch = self.torch
        start = self.clock()
        sequences, positions, new_slots, last_rows = [], [], [], []
        next_slot = row = 0
        for prefix, new in _sequence_layout(case):
            slots = torch.arange(next_slot, next_slot + prefix + new)
            next_slot += prefix + new
            mask = None
            if new > 1:  # causal over the chunk, full view of the prefix
                mask = torch.ones(new, prefix + new, dtype=torch.bool).tril(diagonal=prefix)
            sequences.append((row, new, slots, mask))
            positions.append(torch.arange(prefix, prefix + new))
            new_slots.append(slots[prefix:])
            row += new
            last_rows.append(row - 1)
        index_tensors = (sequences, torch.cat(positions), torch.cat(new_slots), torch.tensor(last_rows))
        plan_s = self.clock() - start
        hidden = torch.randn(row, self.shape.hidden_size, dtype=self.dtype) * 0.1  # input, not timed
        return plan_s, (*index_tensors, hidden)

    def attend(self, batch, q, k, v):
        """Write the new tokens' K/V into the cache and attend every sequence to its KV."""
        sequences, _, new_slots, _, _ = batch
        sdpa = self.torch.nn.functional.scaled_dot_product_attention
        self.k_cache[new_slots] = k
        self.v_cache[new_slots] = v
        out = self.torch.empty_like(q)
        for row, new, slots, mask in sequences:
            q_seq = q[row : row + new].transpose(0, 1)  # heads, tokens, dim
            k_seq = self.k_cache[slots].transpose(0, 1)
            v_seq = self.v_cache[slots].transpose(0, 1)
            out[row : row + new] = sdpa(q_seq, k_seq, v_seq, attn_mask=mask, enable_gqa=True).transpose(0, 1)
        return out

    def _run(self, batch):
        torch = self.torch
        _, positions, _, last_rows, hidden = batch
        attention_time = [0.0]

        def attention(q, k, v):
            start = self.clock()
            out = self.attend(batch, q, k, v)
            attention_time[0] += self.clock() - start
            return out

        with torch.inference_mode():
            start = self.clock()
            hidden = self.layer.forward(hidden, positions, attention)
            layer_s = self.clock() - start
            start = self.clock()
            self.layer.head(hidden, last_rows)
            head_s = self.clock() - start
        return layer_s, attention_time[0], head_s


class CudaBackend(_Backend):
    """torch on the GPU, attention through FlashInfer on a paged KV cache, as SGLang's FlashInfer
    backend runs it: decode-only batches through ``BatchDecodeWithPagedKVCacheWrapper``; batches with
    a prefill chunk (mixed or prefill-only) as an extend: a ragged causal pass over the new tokens,
    a paged pass over each sequence's cached prefix, and ``merge_state`` of the two (the ragged pass
    alone when no sequence has a prefix).  Timed with CUDA events."""

    def __init__(self, shape: ModelShape, max_kv_tokens: int, *, page_size: int = 1,
                 decode_tensor_cores: bool | None = None) -> None:
        super().__init__(shape, max_kv_tokens)
        try:
            import torch

            if not torch.cuda.is_available():  # checked first: importing flashinfer takes seconds
                raise BackendError(GPU_UNAVAILABLE)
            import flashinfer
            from flashinfer.cascade import merge_state
        except BackendError:
            raise
        except Exception as exc:  # ImportError, or a CUDA library that fails to load
            detail = str(exc).splitlines()[0] if str(exc) else ""
            raise BackendError(f"{GPU_UNAVAILABLE} ({type(exc).__name__}: {detail})") from None

        self.torch, self.flashinfer, self.merge_state = torch, flashinfer, merge_state
        self.dtype = getattr(torch, shape.dtype)
        if self.dtype == torch.float32:
            raise BackendError("FlashInfer needs float16 or bfloat16; pass --dtype bfloat16")
        self.page_size = page_size
        device = "cuda"
        self.layer = _DenseLayer(torch, shape, device, self.dtype)
        pages = -(-max_kv_tokens // page_size) + 1024  # slack for rounding up per sequence
        kv_shape = (pages, page_size, shape.kv_heads_per_rank, shape.head_dim)
        self.k_cache = torch.zeros(kv_shape, dtype=self.dtype, device=device)
        self.v_cache = torch.zeros(kv_shape, dtype=self.dtype, device=device)
        workspace = torch.zeros(256 << 20, dtype=torch.uint8, device=device)
        group = shape.heads_per_rank // shape.kv_heads_per_rank
        if decode_tensor_cores is None:  # SGLang's rule for 16-bit KV: tensor cores from GQA group 4
            decode_tensor_cores = group >= 4
        self.decode_wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            workspace, "NHD", use_tensor_cores=decode_tensor_cores)
        self.paged_wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD")
        self.ragged_wrapper = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(workspace, "NHD")
        self.sm_scale = 1.0 / math.sqrt(shape.head_dim)
        self.device_name = (
            f"{torch.cuda.get_device_name()} (torch {torch.__version__}, flashinfer {flashinfer.__version__},"
            f" page size {page_size})"
        )

    def _prepare(self, case: BatchCase):
        """Plan the case: (plan seconds, batch) where batch feeds ``attend`` and ``_run``."""
        torch = self.torch
        int32 = dict(dtype=torch.int32)
        torch.cuda.synchronize()
        start = time.perf_counter()
        layout = paged_layout(case, self.page_size)
        page_indptr, page_indices, last_page = layout.page_indptr, layout.page_indices, layout.last_page_len
        prefix_indptr, prefix_indices = layout.prefix_indptr, layout.prefix_indices
        prefix_last_page, qo_indptr = layout.prefix_last_page_len, layout.qo_indptr
        new_slots, positions, last_rows = layout.new_slots, layout.positions, layout.last_rows
        cuda = lambda values, **kw: torch.tensor(values, device="cuda", **kw)  # noqa: E731
        shape, dtype = self.shape, self.dtype
        common = dict(num_qo_heads=shape.heads_per_rank, num_kv_heads=shape.kv_heads_per_rank)
        decode_only = not case.chunk_tokens
        has_prefix = layout.prefix_indptr[-1] > 0
        if decode_only:
            self.decode_wrapper.plan(
                cuda(page_indptr, **int32), cuda(page_indices, **int32), cuda(last_page, **int32),
                shape.heads_per_rank, shape.kv_heads_per_rank, shape.head_dim, self.page_size,
                q_data_type=dtype, kv_data_type=dtype, sm_scale=self.sm_scale)
        else:
            qo = cuda(qo_indptr, **int32)
            self.ragged_wrapper.plan(qo, qo, head_dim_qk=shape.head_dim, causal=True,
                                     q_data_type=dtype, kv_data_type=dtype, sm_scale=self.sm_scale, **common)
            if has_prefix:
                self.paged_wrapper.plan(
                    qo, cuda(prefix_indptr, **int32), cuda(prefix_indices, **int32),
                    cuda(prefix_last_page, **int32), head_dim_qk=shape.head_dim, page_size=self.page_size,
                    causal=False, q_data_type=dtype, kv_data_type=dtype, sm_scale=self.sm_scale, **common)
        index_tensors = (
            cuda(positions, dtype=torch.long),
            cuda(new_slots, dtype=torch.long),
            cuda(last_rows, dtype=torch.long),
        )
        torch.cuda.synchronize()
        plan_s = time.perf_counter() - start
        hidden = torch.randn(qo_indptr[-1], shape.hidden_size, device="cuda", dtype=dtype) * 0.1  # not timed
        return plan_s, (decode_only, has_prefix, *index_tensors, hidden)

    def attend(self, batch, q, k, v):
        """Write the new tokens' K/V into the paged cache and run the iteration's attention."""
        decode_only, has_prefix, _, new_slots, _, _ = batch
        k_flat = self.k_cache.view(-1, *self.k_cache.shape[2:])
        v_flat = self.v_cache.view(-1, *self.v_cache.shape[2:])
        k_flat[new_slots] = k
        v_flat[new_slots] = v
        if decode_only:
            return self.decode_wrapper.run(q, (self.k_cache, self.v_cache))
        out, lse = self.ragged_wrapper.run(q, k, v, return_lse=True)
        if has_prefix:
            out_prefix, lse_prefix = self.paged_wrapper.run(q, (self.k_cache, self.v_cache), return_lse=True)
            out, _ = self.merge_state(out, lse, out_prefix, lse_prefix)
        return out

    def _run(self, batch):
        torch = self.torch
        _, _, positions, _, last_rows, hidden = batch
        events = [torch.cuda.Event(enable_timing=True) for _ in range(6)]

        def attention(q, k, v):
            events[1].record()
            out = self.attend(batch, q, k, v)
            events[2].record()
            return out

        with torch.inference_mode():
            events[0].record()
            hidden = self.layer.forward(hidden, positions, attention)
            events[3].record()
            events[4].record()
            self.layer.head(hidden, last_rows)
            events[5].record()
        events[5].synchronize()
        ms = 1e-3
        return (events[0].elapsed_time(events[3]) * ms, events[1].elapsed_time(events[2]) * ms,
                events[4].elapsed_time(events[5]) * ms)


def make_backend(device: str, shape: ModelShape, max_kv_tokens: int, **options) -> _Backend:
    if device == "cpu":
        return CpuBackend(shape, max_kv_tokens, threads=options.get("threads"))
    if device == "cuda":
        return CudaBackend(shape, max_kv_tokens, page_size=options.get("page_size", 1),
                           decode_tensor_cores=options.get("decode_tensor_cores"))
    raise BackendError(f"--device must be cuda or cpu, got {device!r}")
