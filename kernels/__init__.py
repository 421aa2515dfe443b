"""Iteration-time profiler for the FairBatching cost model (GPU: FlashInfer + torch; CPU: torch SDPA).

Not an installed package: the PyPI package ``kernels`` (a hub kernel loader, pulled in by sglang)
owns that import name.  Run it as ``python -m sglang_fair.profile`` (robust, loads this folder by
path) or ``python -m kernels.profile`` from the repository root (works only because the current
directory comes first on ``sys.path``).  Modules here import each other relatively so both work.
"""
