"""Running SGLang where there is no GPU.

:func:`setup` must run before anything imports SGLang (the launcher calls it first thing, and so
does every process SGLang spawns, because they import our modules before SGLang's).  On a machine
without CUDA it

* puts a stand-in for ``sgl_kernel`` in place when the real one cannot load (it needs
  ``libcuda.so.1``).  The stand-in's functions raise when called, so a kernel SGLang really needs
  fails loudly instead of silently doing nothing;
* sets ``SGLANG_USE_CPU_ENGINE=1`` so SGLang picks its CPU platform.

On a machine with CUDA it does nothing.  :func:`cpu_server_defaults` are the server flags that make
a CPU server start (added by the launcher only where the user gave none).
"""

from __future__ import annotations

import os
import sys

from .sgl_kernel_standin import install as _install_standin
from .sgl_kernel_standin import is_installed as standin_installed

__all__ = ["announce", "cpu_server_defaults", "has_cuda", "setup", "standin_installed"]

#: Set in the environment by the first process that probed ("cuda", "cpu" or "cpu-standin"), so
#: the processes it spawns skip the probe (and its log line) and make the same choice.
_CPU_MARK = "SGLANG_FAIR_CPU_PLATFORM"

_notice: str | None = None  # what setup() decided in this process, for announce()

#: Tokens of KV cache on CPU unless the user says otherwise (SGLang would otherwise size the pool
#: from free host memory, ~15 GB).
DEFAULT_CPU_MAX_TOTAL_TOKENS = 16384


def has_cuda() -> bool:
    """True where torch sees a CUDA (or ROCm) device."""
    import torch

    return bool(torch.cuda.is_available())


def _sgl_kernel_loads() -> bool:
    try:
        import sgl_kernel  # noqa: F401
    except (ImportError, OSError):
        for name in [m for m in sys.modules if m == "sgl_kernel" or m.startswith("sgl_kernel.")]:
            del sys.modules[name]
        return False
    return True


def setup(announce_now: bool = True) -> bool:
    """Prepare this process for SGLang; return True when it runs on the CPU platform.

    Idempotent and cheap after the first call in a process tree; only that first call has
    something to announce (now, or later with :func:`announce`).
    """
    global _notice
    decided = os.environ.get(_CPU_MARK)
    if decided in ("cpu", "cpu-standin"):
        if decided == "cpu-standin":
            _install_standin()
        os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")
        return True
    if decided == "cuda" or has_cuda():
        os.environ[_CPU_MARK] = "cuda"
        return False
    if _sgl_kernel_loads():
        os.environ[_CPU_MARK] = "cpu"
        note = "sgl_kernel loads"
    else:
        _install_standin()
        os.environ[_CPU_MARK] = "cpu-standin"
        note = "using a stand-in for sgl_kernel whose functions raise if called"
    os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")
    _notice = f"sglang_fair: no CUDA device: CPU engine, {note}"
    if announce_now:
        announce()
    return True


def announce() -> None:
    """Print, once, the line saying this process tree runs on the CPU engine (if it does).

    Printed rather than logged: logging is not configured this early and the line must be seen.
    """
    global _notice
    if _notice:
        print(_notice, file=sys.stderr, flush=True)
        _notice = None


def cpu_server_defaults() -> list[tuple[tuple[str, ...], list[str]]]:
    """SGLang flags a CPU server needs: ``(flags that already settle it, arguments to add)``."""
    no_graph = ("--disable-cuda-graph",)
    return [
        (("--device",), ["--device", "cpu"]),
        (("--cuda-graph-backend-decode", *no_graph), ["--cuda-graph-backend-decode", "disabled"]),
        (("--cuda-graph-backend-prefill", *no_graph), ["--cuda-graph-backend-prefill", "disabled"]),
        (("--attention-backend",), ["--attention-backend", "torch_native"]),
        (("--sampling-backend",), ["--sampling-backend", "pytorch"]),
        (("--max-total-tokens",), ["--max-total-tokens", str(DEFAULT_CPU_MAX_TOTAL_TOKENS)]),
        (("--sleep-on-idle",), ["--sleep-on-idle"]),  # an idle scheduler would spin a core
    ]
