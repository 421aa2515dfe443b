"""A stand-in for the ``sgl_kernel`` package on machines where it cannot load (no CUDA).

SGLang imports ``sgl_kernel`` (and submodules) at import time all over the place, although a CPU
server on a Llama model never calls its kernels.  The stand-in lets those imports succeed; every
name it hands out is a :class:`MissingKernel` that raises :class:`SglKernelUnavailable` when
called, so nothing silently does nothing.  (SGLang's own test helper returns ``MagicMock``s, which
would.)  Never installed where CUDA is available: see :func:`sglang_fair.platform.setup`.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

__all__ = ["MissingKernel", "SglKernelUnavailable", "install", "is_installed"]

_ROOT = "sgl_kernel"


class SglKernelUnavailable(RuntimeError):
    """A kernel from ``sgl_kernel`` was called on a machine where it is not available."""


class MissingKernel:
    """Placeholder for one ``sgl_kernel`` attribute: importable, raises when called."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __call__(self, *args, **kwargs):
        raise SglKernelUnavailable(
            f"{self._name} was called, but sgl_kernel is not available on this machine"
            " (sglang_fair put a stand-in in place because no CUDA device was found)"
        )

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return MissingKernel(f"{self._name}.{name}")

    def __repr__(self) -> str:
        return f"<sglang_fair stand-in for {self._name}>"


class _StandInModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return MissingKernel(f"{self.__name__}.{name}")


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        return _StandInModule(spec.name)

    def exec_module(self, module) -> None:
        module.__version__ = "0.0.0+sglang_fair.standin"
        module.SGLANG_FAIR_STANDIN = True


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname == _ROOT or fullname.startswith(_ROOT + "."):
            return importlib.machinery.ModuleSpec(fullname, _Loader(), is_package=True)
        return None


def is_installed() -> bool:
    return any(isinstance(finder, _Finder) for finder in sys.meta_path)


def install() -> None:
    """Serve ``import sgl_kernel[...]`` from the stand-in in this process (idempotent)."""
    if not is_installed():
        sys.meta_path.insert(0, _Finder())
