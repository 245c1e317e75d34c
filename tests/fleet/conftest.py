from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .helpers import make_full


@pytest.fixture(scope="session")
def full_fleet(tmp_path_factory) -> Path:
    """Three simulated runs (prime-rl, verl, TRL), 16 steps each, written once per session."""
    return make_full(tmp_path_factory.mktemp("fleet-full"))


@pytest.fixture
def fleet_root(tmp_path, full_fleet) -> Path:
    """A fresh copy of the full fleet to scan."""
    root = tmp_path / "root"
    shutil.copytree(full_fleet, root, copy_function=shutil.copy2)
    return root
