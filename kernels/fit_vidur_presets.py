"""Regenerate the shipped ``a100-llama2-7b``, ``h100-llama2-7b`` and ``a100-llama3-8b`` presets from
Vidur's profiles.

    python kernels/fit_vidur_presets.py                 # writes python/sglang_fair/policy/presets/
    python kernels/fit_vidur_presets.py --check         # fit and print, write nothing

Source data (``$SGLANG_FAIR_SHARED/calibration``, default ``../shared/calibration`` beside the repo):
operator profiles of Llama-2-7B from microsoft/vidur (MIT, (c) Microsoft), ``data/profiling/compute/``:

* ``vidur_{a100,h100}_llama2_7b_mlp.csv``: per-layer median time (ms) of every linear and elementwise
  operator by token count (1..4096), TP 1, 2, 4, 8.  **Measured** on both GPUs; TP 1 is used.
* ``vidur_a100_llama2_7b_attention_rows.csv``: 29 rows of the A100 attention profile (decode batches
  by KV length; one prefill chunk by chunk size and prefix).  **Measured** on A100 only.
* ``vidur_a100_llama3_8b_mlp.csv``: the same operator profile for Meta-Llama-3-8B on A100 (32 query
  heads, 8 KV heads, hidden 4096, MLP 14336, vocab 128256).  **Measured**; its attention profile is
  not in the data.

What is assumed, and how:

* Attention between and beyond the measured rows: a per-layer model fitted to those rows,
  decode ``a + b*num_decodes + c*sum_kv`` and prefill ``a + b*chunk + c*chunk*prefix + d*chunk^2``.
  A mixed batch's attention is the sum of its prefill and decode parts (as Vidur models it; SGLang
  runs both in one extend kernel, so this slightly overstates small mixed batches).
* H100 attention: not in the data.  Scaled from the A100 model: decode (memory-bound) by the HBM
  bandwidth ratio A100-SXM4-80GB / H100-SXM5-80GB = 2039 / 3352 GB/s; prefill (compute-bound) by the
  measured ratio of the linear layers' time at 4096 tokens (H100 / A100, from the MLP CSVs).
  Fixed per-kernel latency (the fitted intercepts) is kept as on A100.
* Llama-3-8B attention: derived from the Llama-2-7B A100 rows (same query heads and head dim 128).
  Decode attention is bound by reading KV, and grouped-query attention keeps a quarter of the KV
  (8 of 32 heads): its per-KV-token term is scaled by 8 / 32, its intercept and per-sequence term
  kept.  Prefill attention is bound by query-key arithmetic, which GQA does not reduce: kept.
* LM head (hidden x vocab on each sequence's last token): not in the data; the measured merged
  gate/up projection (hidden x 2 MLP) at ``num_seqs`` tokens, scaled by vocab / (2 MLP).
* The KV pool a real server would have (``kv_capacity_tokens`` in each preset): SGLang 0.5.23's
  default ``mem_fraction_static`` for an 80 GB GPU, minus the weights, over the KV bytes per token
  (:func:`kv_pool_tokens`).
* Host-side work (scheduling, sampling, input preparation) is not in the data and not modelled:
  the fixed term is GPU time only; the runtime's online refit picks up host overhead.

The iteration shapes are the profiler's own ``default`` grid (``kernels/grid.py``), limited to
<= 4096 new tokens (the profiles' range), so presets from Vidur data and from ``python -m
sglang_fair.profile`` on a real GPU describe the same shapes and report error the same way.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.optimize

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: load kernels/ by path, never the PyPI `kernels`
    sys.path.insert(0, str(REPO / "python"))
    from sglang_fair.profile import load_kernels

    _grid = load_kernels("grid")
    _fit = load_kernels("fit")
else:
    from . import fit as _fit
    from . import grid as _grid

from sglang_fair.policy.cost_model import FEATURE_NAMES, load_cost_model  # noqa: E402

ATTRIBUTION = "microsoft/vidur, MIT, (c) Microsoft"
#: Per-layer operators of the MLP CSV summed into a layer's non-attention time ("add" runs twice:
#: the residual after attention and after the MLP).
LAYER_OPERATORS = {
    "input_layernorm": 1, "attn_pre_proj": 1, "attn_rope": 1, "attn_post_proj": 1,
    "post_attention_layernorm": 1, "mlp_up_proj": 1, "mlp_act": 1, "mlp_down_proj": 1, "add": 2,
}
A100_HBM_GBPS, H100_HBM_GBPS = 2039.0, 3352.0
MAX_NEW_TOKENS = 4096
MAX_KV_TOKENS = 262144

#: The GPUs of the presets (nominal 80 GB, as nvidia-smi reports them).
GPU_MEMORY_MIB = 81920
#: SGLang 0.5.23's defaults on a GPU of 60-160 GB (server_args' memory hook): chunked prefill of
#: 8192 tokens and decode CUDA graphs up to batch 256.  Its default static memory fraction leaves
#: ``512 + 1.5 * chunked_prefill_size + 128 (TP 1) + 2 * 256 (decode graphs)`` MiB (plus a few MiB
#: per prefill graph size, not counted) for activations, at least 10 GiB.
SGLANG_CHUNKED_PREFILL_TOKENS = 8192
SGLANG_DECODE_GRAPH_MAX_BS = 256


@dataclass(frozen=True)
class ModelSpec:
    """What the fit needs to know of a model beyond its operator profile."""

    hf_name: str
    layers: int
    query_heads: int
    kv_heads: int
    head_dim: int
    mlp_dim: int
    vocab: int
    parameters: int  # for the weights' bytes (fp16 / bf16)

    @property
    def lm_head_over_gate_up(self) -> float:
        return self.vocab / (2 * self.mlp_dim)

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * 2  # K and V, 2 bytes each


LLAMA2_7B = ModelSpec("Llama-2-7b-hf", 32, 32, 32, 128, 11008, 32000, 6_738_415_616)
LLAMA3_8B = ModelSpec("Meta-Llama-3-8B", 32, 32, 8, 128, 14336, 128256, 8_030_261_248)


def engine_limits(model: ModelSpec, gpu_memory_mib: int = GPU_MEMORY_MIB) -> dict:
    """The engine a default SGLang server of ``model`` has on such a GPU (``info["engine"]`` of a
    preset; the simulator's defaults for it)."""
    return {
        "kv_capacity_tokens": kv_pool_tokens(model, gpu_memory_mib),
        "max_running_requests": SGLANG_DECODE_GRAPH_MAX_BS,
        "max_prefill_tokens": SGLANG_CHUNKED_PREFILL_TOKENS,
        "derivation": (
            f"SGLang 0.5.23 defaults on a {gpu_memory_mib} MiB GPU, TP 1: static memory fraction "
            f"{_mem_fraction_static(gpu_memory_mib)}, minus {model.parameters * 2 / 2**30:.2f} GiB of "
            f"16-bit weights, over {model.kv_bytes_per_token // 1024} KiB of KV per token; running "
            f"requests capped at the decode CUDA-graph batch size {SGLANG_DECODE_GRAPH_MAX_BS} (beyond it "
            f"decode runs eager, outside what the cost model describes); chunked prefill "
            f"{SGLANG_CHUNKED_PREFILL_TOKENS} tokens"
        ),
    }


def _mem_fraction_static(gpu_memory_mib: int) -> float:
    reserved_mib = max(512 + 1.5 * SGLANG_CHUNKED_PREFILL_TOKENS + 128 + 2 * SGLANG_DECODE_GRAPH_MAX_BS,
                       10 * 1024)
    return round((gpu_memory_mib - reserved_mib) / gpu_memory_mib, 3)


def kv_pool_tokens(model: ModelSpec, gpu_memory_mib: int = GPU_MEMORY_MIB) -> int:
    """KV tokens SGLang 0.5.23 allocates by default for ``model`` alone on such a GPU (TP 1)."""
    mem_fraction_static = _mem_fraction_static(gpu_memory_mib)
    weights_mib = model.parameters * 2 / 2**20
    kv_mib = mem_fraction_static * gpu_memory_mib - weights_mib
    return int(kv_mib * 2**20 // model.kv_bytes_per_token)


def shared_dir() -> Path:
    return Path(os.environ.get("SGLANG_FAIR_SHARED") or REPO.parent / "shared")


class OperatorProfile:
    """Median ms of each operator by token count (TP 1), interpolated linearly between counts."""

    def __init__(self, path: Path) -> None:
        with open(path, newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if r["num_tensor_parallel_workers"] == "1"]
        by_tokens: dict[int, dict] = {}
        for row in rows:  # duplicated token counts: keep the first (identical profiles)
            by_tokens.setdefault(int(row["num_tokens"]), row)
        self.tokens = np.array(sorted(by_tokens), dtype=float)
        names = list(LAYER_OPERATORS) + ["emb"]
        self.ms = {
            name: np.array([float(by_tokens[int(t)][f"time_stats.{name}.median"]) for t in self.tokens])
            for name in names
        }

    def op_ms(self, name: str, tokens: float) -> float:
        return float(np.interp(tokens, self.tokens, self.ms[name]))

    def layer_linear_ms(self, tokens: float) -> float:
        return sum(count * self.op_ms(name, tokens) for name, count in LAYER_OPERATORS.items())


class AttentionModel:
    """Per-layer attention ms fitted to Vidur's A100 attention rows; ``scale`` maps it to another GPU."""

    def __init__(self, path: Path) -> None:
        decode, prefill = [], []
        with open(path, newline="") as handle:
            lines = [line for line in handle if not line.startswith("#")]
        for row in csv.DictReader(lines):
            batch, chunk, kv, ms = int(row["batch_size"]), int(row["prefill_chunk"]), int(row["kv"]), float(row["ms"])
            (decode if row["kind"] == "decode" else prefill).append((batch, chunk, kv, ms))
        d = np.array(decode, dtype=float)
        p = np.array(prefill, dtype=float)
        self.decode_rows, self.prefill_rows = len(d), len(p)
        # Relative least squares so the 0.01 ms rows count as much as the 1 ms ones.
        self.decode_coef, self.decode_mape = self._fit(np.column_stack([np.ones(len(d)), d[:, 0], d[:, 0] * d[:, 2]]), d[:, 3])
        self.prefill_coef, self.prefill_mape = self._fit(
            np.column_stack([np.ones(len(p)), p[:, 1], p[:, 1] * p[:, 2], p[:, 1] ** 2]), p[:, 3])
        self.decode_scale = self.prefill_scale = self.kv_scale = 1.0

    @staticmethod
    def _fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
        """Relative least squares with every coefficient >= 0.

        The rows cover few chunk sizes, so an unconstrained fit trades a negative per-token term
        for a large intercept and extrapolates badly to small chunks.  Each row is divided by its
        measured time, so the residuals are relative (``scipy.optimize.nnls`` on the scaled rows).
        """
        coef, _ = scipy.optimize.nnls(x / y[:, None], np.ones(len(y)))
        return coef, float(np.mean(np.abs(x @ coef - y) / y))

    def scaled(self, decode_scale: float = 1.0, prefill_scale: float = 1.0,
               kv_scale: float = 1.0) -> "AttentionModel":
        """This model on another GPU (``decode_scale``, ``prefill_scale`` multiply the variable
        terms) or for a model with fewer KV heads (``kv_scale`` multiplies the per-KV-token term)."""
        other = object.__new__(AttentionModel)
        other.__dict__.update(self.__dict__)
        other.decode_scale, other.prefill_scale = decode_scale, prefill_scale
        other.kv_scale = kv_scale
        return other

    def decode_ms(self, contexts: tuple[int, ...]) -> float:
        if not contexts:
            return 0.0
        a, b, c = self.decode_coef
        return a + self.decode_scale * (b * len(contexts) + self.kv_scale * c * sum(contexts))

    def prefill_ms(self, chunk: int, prefix: int) -> float:
        if not chunk:
            return 0.0
        a, b, c, d = self.prefill_coef
        return a + self.prefill_scale * (b * chunk + c * chunk * prefix + d * chunk * chunk)


def iteration_ms(case, ops: OperatorProfile, attention: AttentionModel, model: ModelSpec) -> float:
    shape = case.batch_shape()
    layer = ops.layer_linear_ms(shape.new_tokens) + attention.decode_ms(case.decode_contexts) + \
        attention.prefill_ms(case.chunk_tokens, case.prefix_tokens)
    head = ops.op_ms("emb", shape.new_tokens) + model.lm_head_over_gate_up * ops.op_ms("mlp_up_proj", shape.num_seqs)
    return model.layers * layer + head


def synthesize_rows(ops: OperatorProfile, attention: AttentionModel, model: ModelSpec, cases, split: str):
    rows = []
    for case in cases:
        shape = case.batch_shape()
        rows.append(_fit.ProfileRow(
            shape_class=case.shape_class, num_decodes=case.num_decodes,
            sum_decode_context=sum(case.decode_contexts), max_decode_context=max(case.decode_contexts, default=0),
            chunk_tokens=case.chunk_tokens, prefix_tokens=case.prefix_tokens, new_tokens=shape.new_tokens,
            sum_context=shape.sum_context, num_seqs=shape.num_seqs, sum_chunk_sq=shape.sum_chunk_sq,
            total_ms=iteration_ms(case, ops, attention, model),
            attention_ms=attention.decode_ms(case.decode_contexts) + attention.prefill_ms(case.chunk_tokens, case.prefix_tokens),
            layer_ms=ops.layer_linear_ms(shape.new_tokens), split=split,
        ))
    return rows


def build_presets(calibration: Path, *, date: str | None = None) -> dict:
    """name -> (CostModel, four-term CostModel, rows); nothing written."""
    spec = _grid.GRIDS["default"]
    keep = lambda c: c.batch_shape().new_tokens <= MAX_NEW_TOKENS and c.kv_tokens() <= MAX_KV_TOKENS  # noqa: E731
    cases = [c for c in _grid.build_grid(spec, seed=0) if keep(c)]
    holdout = [c for c in _grid.sample_holdout(spec, 90, seed=1) if keep(c)]
    a100_ops = OperatorProfile(calibration / "vidur_a100_llama2_7b_mlp.csv")
    h100_ops = OperatorProfile(calibration / "vidur_h100_llama2_7b_mlp.csv")
    a100_llama3_ops = OperatorProfile(calibration / "vidur_a100_llama3_8b_mlp.csv")
    a100_attention = AttentionModel(calibration / "vidur_a100_llama2_7b_attention_rows.csv")
    gemm_ratio = h100_ops.layer_linear_ms(4096) / a100_ops.layer_linear_ms(4096)
    bandwidth_ratio = A100_HBM_GBPS / H100_HBM_GBPS
    h100_attention = a100_attention.scaled(decode_scale=bandwidth_ratio, prefill_scale=gemm_ratio)
    gqa_ratio = LLAMA3_8B.kv_heads / LLAMA3_8B.query_heads
    llama3_attention = a100_attention.scaled(kv_scale=gqa_ratio)
    measured_rows = a100_attention.decode_rows + a100_attention.prefill_rows
    attention_fit = (
        f"per-layer attention model fitted to the {a100_attention.decode_rows} decode and "
        f"{a100_attention.prefill_rows} prefill A100 rows: decode MAPE {a100_attention.decode_mape:.1%}, prefill MAPE {a100_attention.prefill_mape:.1%}"
    )

    def common_assumed(model: ModelSpec) -> list[str]:
        return [
            f"LM head: not profiled; merged gate/up projection time at num_seqs tokens scaled by "
            f"{model.vocab}/{2 * model.mlp_dim}",
            "mixed batches: attention = prefill part + decode part (separate kernels, as Vidur models it)",
            "host-side work (scheduling, sampling, input preparation) not modelled: fixed term is GPU time",
        ]

    setups = {
        "a100-llama2-7b": (LLAMA2_7B, a100_ops, a100_attention, {
            "device": "NVIDIA A100 (Vidur's profile), Llama-2-7B, TP 1, fp16",
            "measured": ["linear and elementwise operators by token count (vidur_a100_llama2_7b_mlp.csv)",
                         f"attention: {measured_rows} rows (vidur_a100_llama2_7b_attention_rows.csv)"],
            "assumed": [f"attention between/beyond the {measured_rows} rows: " + attention_fit]
            + common_assumed(LLAMA2_7B),
        }),
        "h100-llama2-7b": (LLAMA2_7B, h100_ops, h100_attention, {
            "device": "NVIDIA H100 (Vidur's profile), Llama-2-7B, TP 1, fp16",
            "measured": ["linear and elementwise operators by token count (vidur_h100_llama2_7b_mlp.csv)"],
            "assumed": [
                f"attention: the A100 model ({attention_fit}) scaled to H100: decode by HBM bandwidth "
                f"ratio {A100_HBM_GBPS:.0f}/{H100_HBM_GBPS:.0f} GB/s = {bandwidth_ratio:.3f}, prefill by the "
                f"measured H100/A100 linear-layer time ratio at 4096 tokens = {gemm_ratio:.3f}; intercepts unscaled",
            ] + common_assumed(LLAMA2_7B),
        }),
        "a100-llama3-8b": (LLAMA3_8B, a100_llama3_ops, llama3_attention, {
            "device": "NVIDIA A100 (Vidur's profile), Meta-Llama-3-8B, TP 1, bf16",
            "measured": ["linear and elementwise operators by token count (vidur_a100_llama3_8b_mlp.csv)"],
            "assumed": [
                f"attention: derived from the Llama-2-7B A100 model ({attention_fit}); same query heads "
                f"and head dim, so prefill attention (query-key arithmetic) is kept; decode attention "
                f"reads KV, of which grouped-query attention keeps {LLAMA3_8B.kv_heads} of "
                f"{LLAMA3_8B.query_heads} heads: per-KV-token term x {gqa_ratio:.2f}, intercept and "
                f"per-sequence term kept",
            ] + common_assumed(LLAMA3_8B),
        }),
    }
    presets = {}
    for name, (model_spec, ops, attention, notes) in setups.items():
        rows = (synthesize_rows(ops, attention, model_spec, cases, "grid")
                + synthesize_rows(ops, attention, model_spec, holdout, "holdout"))
        info = {
            "source": "fitted by kernels/fit_vidur_presets.py from Vidur operator profiles "
                      f"(data/profiling/compute/, {model_spec.hf_name}) over the profiler's default grid "
                      f"(<= {MAX_NEW_TOKENS} new tokens)",
            "attribution": ATTRIBUTION,
            **notes,
            "engine": engine_limits(model_spec),
        }
        model = _fit.fit_rows(rows, name=name, info=info)
        four = _fit.fit_rows(rows, name=name, terms=FEATURE_NAMES[:4], info={})
        model.info["four_term_fit"] = {
            "coefficients_ms": {t: round(v * 1e3, 9) for t, v in zip(FEATURE_NAMES, four.coefficients())},
            "fit_error": four.info["fit_error"],
        }
        if date:
            model.info["date"] = date
        presets[name] = (model, four, rows)
    return presets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calibration", type=Path, default=None, help="folder of the Vidur CSVs")
    parser.add_argument("--out-dir", type=Path, default=REPO / "python/sglang_fair/policy/presets")
    parser.add_argument("--csv-dir", type=Path, default=None, help="also write the synthesized rows here")
    parser.add_argument("--check", action="store_true", help="fit and print only")
    args = parser.parse_args(argv)
    calibration = args.calibration or shared_dir() / "calibration"
    if not (calibration / "vidur_a100_llama3_8b_mlp.csv").is_file():
        print(f"error: Vidur calibration CSVs not found in {calibration} (set SGLANG_FAIR_SHARED)", file=sys.stderr)
        return 2
    for name, (model, four, rows) in build_presets(calibration).items():
        print(f"{name}\n  kernel terms: {model.describe()}\n  four terms: {four.describe()}")
        print(_fit.format_error_table(model.info["fit_error"], "  kernel-term fit error (grid)"))
        print(_fit.format_error_table(model.info["holdout_error"], "  kernel-term error (held-out shapes)"))
        print(_fit.format_error_table(four.info["fit_error"], "  four-term fit error (grid)"))
        if args.csv_dir:
            args.csv_dir.mkdir(parents=True, exist_ok=True)
            _fit.write_csv(str(args.csv_dir / f"{name}.csv"), rows)
        if not args.check:
            path = args.out_dir / f"{name}.json"
            model.save(path)
            load_cost_model(str(path))
            print(f"  wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
