"""Sim tests: registers the ``slow`` marker (deselected unless ``-m slow``)."""

from __future__ import annotations

from pathlib import Path

import pytest




def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test, deselected by default (run with -m slow)")


def pytest_collection_modifyitems(config, items):
    if "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    here = str(Path(__file__).parent)
    for item in items:  # only this folder's tests: other folders manage their own
        if "slow" in item.keywords and str(item.fspath).startswith(here):
            item.add_marker(skip)


