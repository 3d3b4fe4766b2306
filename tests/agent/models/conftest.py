"""Shared fixtures: one OpenVINO cache folder and one default-architecture build per session.

Building MobileCLIP2-S0 with random weights and converting it takes seconds to
tens of seconds on two cores, so the few tests that need it share one build and
one cache folder (and the CLI test then finds the converted model there).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.models.weights import BuiltModel, build_model
from tests.agent.models.samples import DEFAULT_RANDOM


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VMR_CACHE folder kept for the session (converted models are reused across tests)."""
    return tmp_path_factory.mktemp("vmr-cache")


@pytest.fixture
def vmr_cache(shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """VMR_CACHE set to the session's folder for one test: no test writes into the user's cache."""
    monkeypatch.setenv("VMR_CACHE", str(shared_cache))
    yield shared_cache


@pytest.fixture(scope="session")
def default_random() -> BuiltModel:
    """MobileCLIP2-S0, reparameterised, with the seeded random weights (built once)."""
    return build_model(DEFAULT_RANDOM)
