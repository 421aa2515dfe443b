"""Fixtures for the profiler tests; the profiler is loaded by path (the name ``kernels`` is taken)."""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long run, deselected unless -m slow or SGLANG_FAIR_RUN_SLOW=1")


def pytest_collection_modifyitems(config, items):
    # Skip only this folder's slow tests, and only when nobody asked for them.
    if os.environ.get("SGLANG_FAIR_RUN_SLOW") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow or SGLANG_FAIR_RUN_SLOW=1")
    for item in items:
        if "slow" in item.keywords and HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def kernels_pkg():
    from sglang_fair.profile import load_kernels

    return load_kernels


@pytest.fixture(scope="session")
def python_exe():
    return sys.executable


@pytest.fixture(scope="session")
def repo_root():
    return REPO


@pytest.fixture(scope="session")
def calibration_dir():
    shared = Path(os.environ.get("SGLANG_FAIR_SHARED") or REPO.parent / "shared")
    path = shared / "calibration"
    if not (path / "vidur_a100_llama2_7b_mlp.csv").is_file():
        pytest.skip(f"Vidur calibration CSVs not found in {path}")
    return path
