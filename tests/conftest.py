"""Shared fixtures: the real public data in ../shared/data and a temporary LAKE_HOME."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RADLAKE_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")


def shared_path(*parts: str) -> Path:
    """A file under ../shared/data; missing data fails loudly in CI and skips elsewhere."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        message = (
            f"shared test data missing: {path} (set RADLAKE_SHARED_DATA or check out ../shared)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def shared_data() -> Path:
    return shared_path()


@pytest.fixture
def lake_home(tmp_path, monkeypatch) -> Path:
    """A fresh LAKE_HOME with a fixed pseudonymization secret."""
    home = tmp_path / "lakehouse"
    monkeypatch.setenv("LAKE_HOME", str(home))
    monkeypatch.setenv("LAKE_PSEUDONYM_KEY", "test-secret-not-for-production")
    monkeypatch.setenv("RADLAKE_CONFIG_DIR", str(tmp_path / "config"))  # key files, if any
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    from dagster_project.lake import Lake

    Lake.at(home)
    return home


@pytest.fixture
def lake(lake_home):
    from dagster_project.lake import Lake

    return Lake.at(lake_home)
