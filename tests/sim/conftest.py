"""Shared fixtures for the simulator tests."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session", autouse=True)
def sim_cache(tmp_path_factory: pytest.TempPathFactory):
    """One compile cache for the whole session, away from the user's cache."""
    path = tmp_path_factory.mktemp("sim_cache")
    old = os.environ.get("CARAFE_CUPY_SIM_CACHE")
    os.environ["CARAFE_CUPY_SIM_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("CARAFE_CUPY_SIM_CACHE", None)
    else:
        os.environ["CARAFE_CUPY_SIM_CACHE"] = old


@pytest.fixture
def fresh_cache(sim_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty module cache that reuses the session's prebuilt scheduler objects."""
    path = tmp_path / "cache"
    path.mkdir()
    for obj in sim_cache.glob("runtime-*.o"):
        shutil.copy(obj, path / obj.name)
    monkeypatch.setenv("CARAFE_CUPY_SIM_CACHE", str(path))
    return path
