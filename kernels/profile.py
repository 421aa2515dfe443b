"""Profile one deployment's iteration time over the batch shapes the scheduler forms, and fit a preset.

    python -m sglang_fair.profile --model llama2-7b --device cuda --out-dir profiles/
    python -m sglang_fair.profile --model /path/to/config.json --tp 2 --name h100-mymodel-tp2
    python -m sglang_fair.profile --device cpu --model tiny --grid tiny     # CPU path (CI)
    python -m sglang_fair.profile --refit profiles/h100-mymodel.csv        # refit without measuring

Writes ``NAME.csv`` (one row per batch shape: features and median times) and ``NAME.json`` (a cost
model ``--cost-model NAME.json`` loads, with fit error per shape class in ``info``).  Copy the JSON
to ``python/sglang_fair/policy/presets/`` to ship it as a named preset.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from sglang_fair.policy.cost_model import FEATURE_NAMES, KERNEL_TERMS, CostModelError, load_cost_model

from .backends import BackendError, make_backend
from .fit import ProfileRow, fit_rows, format_error_table, read_csv, write_csv
from .grid import GRIDS, BatchCase, build_grid, sample_holdout
from .model_shape import ModelShapeError, load_model_shape

__all__ = ["main", "build_parser", "profile_cases"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sglang_fair.profile",
        description="Time one transformer iteration over a grid of batch shapes (decodes, prefill "
        "chunk with prefix, mixed) and fit the FairBatching cost model to it.",
    )
    parser.add_argument("--model", default=None,
                        help="named shape (llama2-7b, llama2-13b, llama3-8b, mistral-7b, qwen2.5-7b, "
                        "tiny) or a Hugging Face config.json (or its folder); default llama2-7b on cuda, "
                        "tiny on cpu")
    parser.add_argument("--tp", type=int, default=None, help="tensor-parallel degree (profiles one rank)")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                        help="weights/KV dtype (default: the model's; float32 is CPU only)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda: FlashInfer attention, CUDA events; cpu: torch SDPA (default cuda)")
    parser.add_argument("--grid", choices=sorted(GRIDS), default=None,
                        help="batch-shape grid (default: 'default' on cuda, 'tiny' on cpu)")
    parser.add_argument("--max-kv-tokens", type=int, default=None,
                        help="KV pool of the profiled layer; larger cases are skipped "
                        "(default 262144 on cuda, 16384 on cpu)")
    parser.add_argument("--holdout", type=int, default=0,
                        help="also time this many random off-grid shapes and report the fit's error on them")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs per shape (default 3 cuda, 2 cpu)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per shape; medians kept "
                        "(default 10 cuda, 21 cpu: shared CPUs are noisy, shapes are cheap)")
    parser.add_argument("--page-size", type=int, default=1, help="KV page size (SGLang's default is 1)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads on --device cpu (default 1: small ops on shared cores time "
                        "far steadier single-threaded)")
    parser.add_argument("--terms", default=",".join(KERNEL_TERMS),
                        help=f"cost-model terms to fit, comma separated from {','.join(FEATURE_NAMES)}")
    parser.add_argument("--name", default=None, help="preset name (default DEVICE-MODEL[-tpN])")
    parser.add_argument("--out-dir", default=".", help="where NAME.csv and NAME.json go (default .)")
    parser.add_argument("--seed", type=int, default=0, help="seed for ragged decode contexts")
    parser.add_argument("--refit", metavar="CSV", default=None,
                        help="skip measuring: refit a CSV this tool wrote before")
    parser.add_argument("--note", default=None, help="free text stored in the preset's info.note")
    parser.add_argument("--quiet", action="store_true", help="no per-shape progress lines")
    return parser


def profile_cases(backend, cases: list[BatchCase], *, warmup: int, repeats: int, split: str,
                  seed: int = 0, progress=None) -> list[ProfileRow]:
    timings = backend.time_cases(cases, warmup=warmup, repeats=repeats, seed=seed, progress=progress)
    rows = []
    for case, timing in zip(cases, timings):
        shape = case.batch_shape()
        rows.append(ProfileRow(
            shape_class=case.shape_class,
            num_decodes=case.num_decodes,
            sum_decode_context=sum(case.decode_contexts),
            max_decode_context=max(case.decode_contexts, default=0),
            chunk_tokens=case.chunk_tokens,
            prefix_tokens=case.prefix_tokens,
            new_tokens=shape.new_tokens,
            sum_context=shape.sum_context,
            num_seqs=shape.num_seqs,
            sum_chunk_sq=shape.sum_chunk_sq,
            total_ms=timing.total_s * 1e3,
            layer_ms=timing.layer_s * 1e3,
            attention_ms=timing.attention_s * 1e3,
            plan_ms=timing.plan_s * 1e3,
            head_ms=timing.head_s * 1e3,
            spread=timing.spread,
            split=split,
        ))
    return rows


def _parse_terms(text: str) -> tuple[str, ...]:
    terms = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in terms if t not in FEATURE_NAMES]
    if unknown or not terms:
        raise ValueError(f"--terms: unknown term(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(FEATURE_NAMES)}")
    return terms


def run(args: argparse.Namespace) -> dict:
    """Measure (or read) rows, fit, write NAME.csv and NAME.json; returns a summary dict."""
    terms = _parse_terms(args.terms)
    os.makedirs(args.out_dir, exist_ok=True)
    if args.refit:
        try:
            rows = read_csv(args.refit)
        except OSError as exc:
            raise ValueError(f"--refit: cannot read {args.refit}: {exc.strerror}") from None
        name = args.name or os.path.splitext(os.path.basename(args.refit))[0]
        info = {"source": f"refit of {os.path.basename(args.refit)}"}
    else:
        cuda = args.device == "cuda"
        shape = load_model_shape(args.model or ("llama2-7b" if cuda else "tiny"))
        shape = shape.with_options(tp_degree=args.tp, dtype=args.dtype)
        if shape.dtype == "float32" and cuda and args.dtype is None:
            shape = shape.with_options(dtype="bfloat16")  # a float32 config still serves in 16 bits
        spec = GRIDS[args.grid or ("default" if cuda else "tiny")]
        max_kv_tokens = args.max_kv_tokens or (262144 if cuda else 16384)
        warmup = args.warmup if args.warmup is not None else (3 if cuda else 2)
        repeats = args.repeats if args.repeats is not None else (10 if cuda else 21)
        if repeats < 1 or warmup < 0:
            raise ValueError("--repeats must be >= 1 and --warmup >= 0")
        if args.page_size < 1 or max_kv_tokens < 1 or args.holdout < 0 or (args.threads or 1) < 1:
            raise ValueError("--page-size, --max-kv-tokens and --threads must be >= 1, --holdout >= 0")
        backend = make_backend(args.device, shape, max_kv_tokens, page_size=args.page_size, threads=args.threads)
        cases = [c for c in build_grid(spec, seed=args.seed) if c.kv_tokens() <= max_kv_tokens]
        holdout = [c for c in sample_holdout(spec, args.holdout, seed=args.seed + 1)
                   if c.kv_tokens() <= max_kv_tokens] if args.holdout else []
        if not cases:
            raise ValueError(f"no grid shape fits in --max-kv-tokens {max_kv_tokens}")
        short = shape.name.split("/")[-1].lower()
        name = args.name or f"{'gpu' if cuda else 'cpu'}-{short}" + (f"-tp{shape.tp_degree}" if shape.tp_degree > 1 else "")

        def progress(done, total):
            if not args.quiet:
                print(f"  round {done}/{total} ({'warm-up' if done <= warmup else 'timed'})", flush=True)

        print(f"profiling {shape.name} on {backend.describe()}: {len(cases)} grid shapes"
              f" + {len(holdout)} held out, {warmup} warm-up + {repeats} timed rounds over all shapes", flush=True)
        started = time.perf_counter()
        for case in {cases[0], max(cases, key=lambda c: c.batch_shape().new_tokens)}:
            backend.time_case(case, warmup=1, repeats=1)  # lazy init, allocator and kernel caches
        # Grid and held-out shapes are timed in the same rounds, so they see the same conditions.
        rows = profile_cases(backend, cases + holdout, warmup=warmup, repeats=repeats, split="grid",
                             seed=args.seed, progress=progress)
        for row in rows[len(cases):]:
            row.split = "holdout"
        info = {
            "source": f"python -m sglang_fair.profile --device {args.device} --grid {args.grid or ('default' if cuda else 'tiny')}",
            "device": backend.describe(),
            "model_shape": shape.to_dict(),
            "measured": "every term measured on this device; TP communication not included" if shape.tp_degree > 1
            else "every term measured on this device",
            "profile_seconds": round(time.perf_counter() - started, 1),
            "warmup": warmup,
            "repeats": repeats,
        }
    if args.note:
        info["note"] = args.note
    csv_path = os.path.join(args.out_dir, f"{name}.csv")
    json_path = os.path.join(args.out_dir, f"{name}.json")
    if not args.refit or os.path.abspath(args.refit) != os.path.abspath(csv_path):
        write_csv(csv_path, rows)
    model = fit_rows(rows, name=name, terms=terms, info=info)
    model.save(json_path)
    load_cost_model(json_path)  # the preset must round-trip through the loader the servers use
    print(model.describe())
    print(format_error_table(model.info["fit_error"], f"fit error on {model.info['samples']} grid shapes"))
    if "holdout_error" in model.info:
        print(format_error_table(model.info["holdout_error"], "error on held-out shapes"))
    print(f"wrote {csv_path} and {json_path} (use: --cost-model {json_path})")
    return {"csv": csv_path, "json": json_path, "model": model}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run(args)
    except (BackendError, ModelShapeError, CostModelError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
