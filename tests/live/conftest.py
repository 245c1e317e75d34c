"""Fixtures for live-audit tests."""

from __future__ import annotations

import pytest

from rlaudit.detectors import DETECTORS

from .helpers import Broken, GoblinCounter, Slow


@pytest.fixture
def test_detectors():
    """Register the test detectors for one test."""
    GoblinCounter.calls = []
    added = [d for d in (GoblinCounter, Broken, Slow) if d not in DETECTORS]
    DETECTORS.extend(added)
    yield
    for d in added:
        DETECTORS.remove(d)


@pytest.fixture(autouse=True)
def _webhook_spool_in_tmp(tmp_path, monkeypatch):
    """Undelivered webhook alerts are kept under $XDG_CACHE_HOME: a per-test directory here."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
