"""Write a dummy-weight Llama model directory for the CPU side-by-side benchmark.

The shape is chosen so that one iteration's time on a 2-core CPU grows with the tokens computed
and the context attended to (like a GPU's does), instead of being dominated by the scheduler's
fixed Python overhead: hidden 512, 4 layers, grouped-query attention, bfloat16 (this CPU has AMX,
so bf16 matmuls run ~6x faster than fp32).  Weights are never written: serve it with
``--load-format dummy``.  The tokenizer is a byte-level BPE trained here from seeded synthetic
text, so the directory is built offline and identically every time.

    python benchmark/cpu_model.py --out /tmp/sglang_fair_cpu_model
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

#: The benchmark's model shape (see docs/results-cpu.md for the measured cost model).
DEFAULT_SHAPE = {
    "hidden_size": 512,
    "intermediate_size": 1408,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
}
VOCAB_SIZE = 1024
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
SEED = 20261122


def _synthetic_corpus(lines: int, seed: int) -> list[str]:
    """Seeded pseudo-English text: enough structure for BPE merges, no external data."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "tor", "va", "sel", "un", "ri", "po", "da", "fen", "qu",
                 "is", "ar", "om", "bel", "cy", "the", "and", "ing", "er", "st", "ch"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(600)]
    return [
        " ".join(rng.choice(words) for _ in range(rng.randint(5, 25))) + rng.choice([".", "?", "!", ","])
        for _ in range(lines)
    ]


def write_tokenizer(out_dir: Path, vocab_size: int = VOCAB_SIZE, seed: int = SEED) -> int:
    """Train and save a byte-level BPE tokenizer; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_synthetic_corpus(4000, seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        model_max_length=8192,
    )
    fast.save_pretrained(str(out_dir))
    return tokenizer.get_vocab_size()


def write_model_dir(out_dir: str | Path, shape: dict | None = None, max_context_tokens: int = 8192) -> Path:
    """Create ``out_dir`` with config.json, generation_config.json and tokenizer files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(out)
    dims = {**DEFAULT_SHAPE, **(shape or {})}
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **dims,
        "vocab_size": vocab,
        "max_position_embeddings": max_context_tokens,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": SPECIAL_TOKENS.index("<s>"),
        "eos_token_id": SPECIAL_TOKENS.index("</s>"),
        "torch_dtype": "bfloat16",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}) + "\n"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory to create (overwritten files)")
    parser.add_argument("--hidden-size", type=int, default=DEFAULT_SHAPE["hidden_size"])
    parser.add_argument("--intermediate-size", type=int, default=DEFAULT_SHAPE["intermediate_size"])
    parser.add_argument("--num-layers", type=int, default=DEFAULT_SHAPE["num_hidden_layers"])
    args = parser.parse_args()
    out = write_model_dir(
        args.out,
        {"hidden_size": args.hidden_size, "intermediate_size": args.intermediate_size,
         "num_hidden_layers": args.num_layers},
    )
    print(f"wrote {out} ({json.loads((out / 'config.json').read_text())['vocab_size']} tokens vocab)")


if __name__ == "__main__":
    main()
