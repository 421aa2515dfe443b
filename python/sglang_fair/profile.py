"""``python -m sglang_fair.profile``: the cost-model profiler in the repository's ``kernels/`` folder.

The name ``kernels`` belongs to a PyPI package that sglang installs (a hub kernel loader), so the
profiler is not imported by that name.  This module loads ``kernels/`` from its path as the private
package ``sglang_fair_kernels`` and runs its CLI.  Set ``SGLANG_FAIR_KERNELS`` to the folder when the
package is not installed from a checkout (``pip install -e .``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["kernels_dir", "load_kernels", "main"]

PACKAGE_NAME = "sglang_fair_kernels"


def kernels_dir() -> Path:
    override = os.environ.get("SGLANG_FAIR_KERNELS")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "kernels"  # python/sglang_fair/profile.py -> repo


def load_kernels(submodule: str | None = None) -> ModuleType:
    """The repository's ``kernels/`` package (or one of its modules), imported from its path."""
    if PACKAGE_NAME not in sys.modules:
        folder = kernels_dir()
        init = folder / "__init__.py"
        if not init.is_file():
            raise ImportError(
                f"profiler sources not found at {folder} (install sglang_fair from a checkout with "
                "`pip install -e .` or set SGLANG_FAIR_KERNELS to the repository's kernels/ folder)"
            )
        spec = importlib.util.spec_from_file_location(PACKAGE_NAME, init, submodule_search_locations=[str(folder)])
        package = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE_NAME] = package
        try:
            spec.loader.exec_module(package)
        except BaseException:
            del sys.modules[PACKAGE_NAME]
            raise
    if submodule:
        return importlib.import_module(f"{PACKAGE_NAME}.{submodule}")
    return sys.modules[PACKAGE_NAME]


def main(argv: list[str] | None = None) -> int:
    try:
        profile = load_kernels("profile")
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return profile.main(argv)


if __name__ == "__main__":
    sys.exit(main())
