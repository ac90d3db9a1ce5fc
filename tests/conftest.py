"""Shared fixtures: a registry reset around tests that change plugin switches."""

from __future__ import annotations

import numpy as np
import pytest

import deltaprop
from deltaprop.registry import reset_registry


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch):
    """A registry re-discovered from the entry points, restored afterwards."""
    saved = deltaprop.get_registry()
    yield lambda **kw: reset_registry(deltaprop.registry.Registry(**kw))
    reset_registry(saved)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
