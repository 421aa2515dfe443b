"""Every third-party distribution the project imports is declared in requirements/.

A package that arrives only through sglang's own requirements works until sglang changes them.
So every import in python/, kernels/, benchmark/ and test/ (``import x``, ``from x import y``,
and a constant name given to ``importlib.import_module``, ``__import__`` or ``pytest.importorskip``)
is mapped to the distribution that installs it, from the installed metadata
(``importlib.metadata.packages_distributions()``), and that distribution must be named in
requirements/runtime.txt, test.txt or bench.txt.  The standard library
(``sys.stdlib_module_names``) and the repository's own modules are not distributions.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("python", "kernels", "benchmark", "test")
LOCK = REPO / "requirements" / "constraints.txt"
DYNAMIC_IMPORTERS = {"import_module", "__import__", "importorskip"}


def python_files() -> list[Path]:
    files = []
    for root in SCANNED:
        for folder, dirs, names in os.walk(REPO / root):  # does not follow the .venv link
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            files += [Path(folder) / n for n in names if n.endswith(".py")]
    return sorted(files)


def local_modules(files: list[Path]) -> set[str]:
    """Top-level names the repository itself provides: each module file and package folder.

    Scripts import their siblings (benchmark/load_client.py) and test helpers (inproc.py) by bare
    name, so every file's stem counts, not only the installed package ``sglang_fair``."""
    names = {f.stem for f in files}
    names |= {f.parent.name for f in files if f.name == "__init__.py"}
    return names


def imports(path: Path) -> list[tuple[str, int]]:
    """(top-level module name, line) of every absolute import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in DYNAMIC_IMPORTERS and isinstance(node.args[0].value, str):
                found.append((node.args[0].value, node.lineno))
    return [(name.split(".")[0], line) for name, line in found]


def requirement_files() -> list[Path]:
    return sorted(p for p in (REPO / "requirements").glob("*.txt") if p != LOCK)


def read_requirements(path: Path) -> list[Requirement]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line and not line.startswith("-")]


def declared() -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for path in requirement_files() for r in read_requirements(path)}


def test_every_imported_distribution_is_declared():
    files = python_files()
    assert len(files) > 50, f"scanned only {len(files)} files under {SCANNED}"
    own = local_modules(files)
    providers = importlib.metadata.packages_distributions()
    wanted = declared()
    missing: dict[str, list[str]] = {}
    for path in files:
        for module, line in imports(path):
            if module in sys.stdlib_module_names or module in own:
                continue
            dists = providers.get(module)
            where = f"{path.relative_to(REPO)}:{line}"
            if not dists:
                missing.setdefault(f"{module} (no installed distribution provides it)", []).append(where)
            elif not any(canonicalize_name(d) in wanted for d in dists):
                missing.setdefault(f"{module} (distribution {' or '.join(sorted(set(dists)))})", []).append(where)
    assert not missing, "imported but not declared in requirements/{runtime,test,bench}.txt:\n" + "\n".join(
        f"  {what}: {', '.join(places[:3])}{' ...' if len(places) > 3 else ''}" for what, places in sorted(missing.items())
    )


def test_declared_pins_are_the_locked_and_installed_versions():
    lock = {canonicalize_name(r.name): r for r in read_requirements(LOCK)}
    wrong = []
    for path in requirement_files():
        for req in read_requirements(path):
            name = canonicalize_name(req.name)
            pins = [s.version for s in req.specifier if s.operator == "=="]
            locked = [s.version for s in lock[name].specifier] if name in lock else []
            try:
                installed = importlib.metadata.version(req.name)
            except importlib.metadata.PackageNotFoundError:
                installed = None
            if len(pins) != 1 or pins != locked or installed != pins[0]:
                wrong.append(f"{path.name}: {req} (lock {locked or 'none'}, installed {installed})")
    assert not wrong, "requirements must be exact pins equal to constraints.txt and the installed version:\n  " + \
        "\n  ".join(wrong)


@pytest.mark.parametrize("source, expected", [
    ("import a.b, c\nfrom d.e import f\nfrom . import g\n", {"a", "c", "d"}),
    ("import importlib\nm = importlib.import_module('h.i')\nx = pytest.importorskip('j')\n", {"importlib", "h", "j"}),
])
def test_import_scan_sees_static_and_constant_dynamic_imports(tmp_path, source, expected):
    path = tmp_path / "example.py"
    path.write_text(source)
    assert {name for name, _ in imports(path)} == expected
