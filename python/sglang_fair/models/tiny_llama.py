"""A tiny Llama-architecture model with its own BPE tokenizer, built reproducibly from a seed.

The default model of ``python -m sglang_fair.launch_server``: it needs no download and runs on a
2-core CPU.  Its weights are random (seeded), so its text is gibberish, but every part of the
serving path (tokenizer, chat template, prefill, decode, sampling, KV cache) is exercised for real.

The build is deterministic: same code version -> byte-identical files.  It is written once to a
cache folder (``$SGLANG_FAIR_MODEL_CACHE``, default ``~/.cache/sglang_fair/models``) and published
with an atomic rename, so concurrent servers never see a half-written model.

    python -m sglang_fair.models.tiny_llama [--out DIR]   # build (or find) it, print its path
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["TINY_LLAMA_NAME", "build_tiny_llama", "default_model_path"]

#: Bump the suffix whenever anything below changes the files.
TINY_LLAMA_NAME = "sglang-fair-tiny-llama-v1"
SEED = 20240531

HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
INTERMEDIATE = 128
VOCAB = 512
MAX_POSITIONS = 4096
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2

# A simple Llama-2-like chat template, so /v1/chat/completions works.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}<<SYS>> {{ message['content'] }} <</SYS>>\n"
    "{% elif message['role'] == 'user' %}[INST] {{ message['content'] }} [/INST]"
    "{% else %} {{ message['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}"
)

_WORDS = (
    "the a an of to and in is was for on with as by at from that this it be are or not have "
    "request batch token tokens server model time first output prefill decode schedule scheduler "
    "fair fairness deadline slack budget latency throughput queue client user system answer "
    "question what how why when where who which one two three four five six seven eight nine ten "
    "hello world good day night capital city country river mountain sky blue green red number "
    "paris london tokyo france japan england cat dog bird fish tree house car road book word"
).split()


def _corpus(rng: np.random.Generator, lines: int = 3000) -> list[str]:
    """Seeded pseudo-English training text for the tokenizer (no data files needed)."""
    out = []
    for _ in range(lines):
        words = rng.choice(_WORDS, size=int(rng.integers(4, 16)))
        sentence = " ".join(str(w) for w in words)
        out.append(sentence[0].upper() + sentence[1:] + rng.choice([".", "?", "!", ",", ":"]))
    out.append("0 1 2 3 4 5 6 7 8 9 10 100 1000 ( ) [ ] { } < > / - _ + = * # @ $ % & ' \"")
    return out


def _build_tokenizer(rng: np.random.Generator):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(rng), trainer=trainer)
    if tokenizer.get_vocab_size() != VOCAB:
        raise RuntimeError(f"tiny tokenizer has {tokenizer.get_vocab_size()} tokens, want {VOCAB}")
    return tokenizer


def _weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    head_dim = HIDDEN // HEADS

    def normal(*shape):
        return rng.normal(0.0, 0.02, size=shape).astype(np.float32)

    tensors = {"model.embed_tokens.weight": normal(VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = np.ones(HIDDEN, np.float32)
        tensors[p + "post_attention_layernorm.weight"] = np.ones(HIDDEN, np.float32)
        tensors[p + "self_attn.q_proj.weight"] = normal(HEADS * head_dim, HIDDEN)
        tensors[p + "self_attn.k_proj.weight"] = normal(KV_HEADS * head_dim, HIDDEN)
        tensors[p + "self_attn.v_proj.weight"] = normal(KV_HEADS * head_dim, HIDDEN)
        tensors[p + "self_attn.o_proj.weight"] = normal(HIDDEN, HEADS * head_dim)
        tensors[p + "mlp.gate_proj.weight"] = normal(INTERMEDIATE, HIDDEN)
        tensors[p + "mlp.up_proj.weight"] = normal(INTERMEDIATE, HIDDEN)
        tensors[p + "mlp.down_proj.weight"] = normal(HIDDEN, INTERMEDIATE)
    tensors["model.norm.weight"] = np.ones(HIDDEN, np.float32)
    tensors["lm_head.weight"] = normal(VOCAB, HIDDEN)
    return tensors


def _config() -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HIDDEN // HEADS,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "vocab_size": VOCAB,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _write_model(folder: Path) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(SEED)
    tokenizer = _build_tokenizer(rng)
    tokenizer.save(str(folder / "tokenizer.json"))
    _write_json(folder / "config.json", _config())
    _write_json(folder / "generation_config.json", {"bos_token_id": 1, "eos_token_id": 2})
    _write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "</s>",
            "add_bos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": MAX_POSITIONS,
            "chat_template": CHAT_TEMPLATE,
        },
    )
    _write_json(
        folder / "special_tokens_map.json",
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"},
    )
    save_file(_weights(rng), str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "README.md").write_text(
        f"# {TINY_LLAMA_NAME}\n\nRandom (seed {SEED}) Llama-architecture weights, hidden {HIDDEN}, "
        f"{LAYERS} layers, vocab {VOCAB}; built by sglang_fair.models.tiny_llama. For tests only.\n"
    )


def _cache_root() -> Path:
    root = os.environ.get("SGLANG_FAIR_MODEL_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sglang_fair" / "models"


def build_tiny_llama(out: str | os.PathLike | None = None) -> Path:
    """Return the folder holding the tiny model, building it there first if it is missing."""
    target = Path(out) if out is not None else _cache_root() / TINY_LLAMA_NAME
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _write_model(staging)
        try:
            os.rename(staging, target)  # atomic; fails if a concurrent build won the race
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def default_model_path() -> str:
    """Path of the default model (built on first use)."""
    return str(build_tiny_llama())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="folder to build into (default: the cache folder)")
    args = parser.parse_args(argv)
    print(build_tiny_llama(args.out))


if __name__ == "__main__":
    main()
