"""Fixtures for reliability tests."""

import pytest

from tests.live.conftest import test_detectors  # noqa: F401


@pytest.fixture(autouse=True)
def _spools_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("RLAUDIT_SPOOL_DIR", str(tmp_path / "spool"))
