"""Models sglang_fair provides itself, with no download: ``tiny_llama`` (the default model)."""
