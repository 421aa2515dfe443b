"""The shape of a decoder-only transformer, as far as iteration time is concerned."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

__all__ = ["ModelShape", "NAMED_SHAPES", "ModelShapeError", "load_model_shape"]


class ModelShapeError(ValueError):
    """A model shape that cannot be used; one line for the user."""


@dataclass(frozen=True)
class ModelShape:
    """Dimensions of the whole model; ``shard()`` gives one tensor-parallel rank's share."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int = 32000
    dtype: str = "bfloat16"
    tp_degree: int = 1

    def __post_init__(self) -> None:
        for key in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "intermediate_size",
                    "vocab_size", "tp_degree"):
            value = getattr(self, key)
            if not isinstance(value, int) or value <= 0:
                raise ModelShapeError(f"model shape {self.name}: {key} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ModelShapeError(f"model shape {self.name}: hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ModelShapeError(f"model shape {self.name}: num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.num_heads % self.tp_degree or self.intermediate_size % self.tp_degree:
            raise ModelShapeError(f"model shape {self.name}: heads/intermediate size do not split over TP {self.tp_degree}")
        if self.dtype not in ("bfloat16", "float16", "float32"):
            raise ModelShapeError(f"model shape {self.name}: dtype must be bfloat16, float16 or float32, got {self.dtype!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    # Per-rank sizes: heads and the MLP split over TP; KV heads replicate once TP exceeds them.
    @property
    def heads_per_rank(self) -> int:
        return self.num_heads // self.tp_degree

    @property
    def kv_heads_per_rank(self) -> int:
        return max(1, self.num_kv_heads // self.tp_degree)

    @property
    def intermediate_per_rank(self) -> int:
        return self.intermediate_size // self.tp_degree

    def with_options(self, **changes) -> "ModelShape":
        data = asdict(self)
        data.update({k: v for k, v in changes.items() if v is not None})
        return ModelShape(**data)

    def to_dict(self) -> dict:
        return asdict(self)


NAMED_SHAPES: dict[str, ModelShape] = {
    shape.name: shape
    for shape in (
        ModelShape("llama2-7b", 32, 4096, 32, 32, 11008, 32000),
        ModelShape("llama2-13b", 40, 5120, 40, 40, 13824, 32000),
        ModelShape("llama3-8b", 32, 4096, 32, 8, 14336, 128256),
        ModelShape("mistral-7b", 32, 4096, 32, 8, 14336, 32000),
        ModelShape("qwen2.5-7b", 28, 3584, 28, 4, 18944, 152064),
        # The runtime's CPU test model (python/sglang_fair/models/tiny_llama.py): the same code path
        # at shapes a 2-core machine times in seconds.
        ModelShape("tiny", 2, 64, 4, 2, 128, 512, dtype="float32"),
    )
}


def _from_hf_config(path: str) -> ModelShape:
    try:
        with open(path) as handle:
            config = json.load(handle)
    except OSError as exc:
        raise ModelShapeError(f"--model: cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ModelShapeError(f"--model: {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(config, dict):
        raise ModelShapeError(f"--model: {path} is not a JSON object")
    config = config.get("text_config", config)  # multimodal configs nest the language model
    try:
        heads = int(config["num_attention_heads"])
        dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
        return ModelShape(
            name=str(config.get("_name_or_path") or config.get("model_type") or path),
            num_layers=int(config["num_hidden_layers"]),
            hidden_size=int(config["hidden_size"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            intermediate_size=int(config["intermediate_size"]),
            vocab_size=int(config.get("vocab_size", 32000)),
            dtype=dtype if dtype in ("bfloat16", "float16", "float32") else "bfloat16",
        )
    except KeyError as exc:
        raise ModelShapeError(f"--model: {path} lacks {exc.args[0]!r} (need a Hugging Face decoder config.json)") from None
    except (TypeError, ValueError) as exc:
        raise ModelShapeError(f"--model: {path}: {exc}") from None


def load_model_shape(name_or_path: str) -> ModelShape:
    """A named shape (see ``NAMED_SHAPES``), or a Hugging Face ``config.json`` (file or its folder)."""
    import os

    if name_or_path in NAMED_SHAPES:
        return NAMED_SHAPES[name_or_path]
    path = os.path.join(name_or_path, "config.json") if os.path.isdir(name_or_path) else name_or_path
    if os.path.isfile(path):
        return _from_hf_config(path)
    raise ModelShapeError(
        f"--model: unknown shape or missing config {name_or_path!r} (named: {', '.join(NAMED_SHAPES)})"
    )
