"""Shared fixtures for policy tests (markers are registered in the repository's pytest.ini)."""

from __future__ import annotations

import pytest

from policy_helpers import A100


@pytest.fixture
def model():
    return A100
