"""Fixtures for the profiler tests; the profiler is loaded by path (the name ``kernels`` is taken).

Markers ``slow`` and ``gpu`` are registered and deselected by default in the repository's pytest.ini.
"""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


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
