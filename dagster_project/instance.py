"""One persistent DAGSTER_HOME shared by `make demo`, `make ui` and the CLI (inside LAKE_HOME unless set).

On a laptop Dagster keeps its runs and events in SQLite files in that folder. On a lab server, with
``DAGSTER_PG_URL`` set when the folder is first made (``radlake init``, ``make serve``), they go
to PostgreSQL instead, so the webserver, the daemon and every run share one database.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from dagster_project.lake import Lake

DAGSTER_YAML = """\
# Written by radlake: runs and events in this folder unless a storage section follows; no telemetry.
telemetry:
  enabled: false
nux:
  enabled: false
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 2
"""
POSTGRES_STORAGE = """\
# Runs, event logs, schedules and sensor cursors in PostgreSQL, read from the environment variable
# DAGSTER_PG_URL (postgresql+psycopg2://user:password@host:5432/database; Dagster makes the tables).
storage:
  postgres:
    postgres_url:
      env: DAGSTER_PG_URL
"""


def dagster_yaml() -> str:
    """The instance configuration: local storage, or PostgreSQL when DAGSTER_PG_URL is set."""
    return DAGSTER_YAML + (POSTGRES_STORAGE if os.environ.get("DAGSTER_PG_URL") else "")


def pg_url_problem(url: str) -> str | None:
    """Why DAGSTER_PG_URL cannot work here, or None.

    dagster-postgres talks to the server through psycopg2; SQLAlchemy 2.1 reads a bare
    ``postgresql://`` URL as psycopg 3, which is not installed: name the driver in the URL.
    """
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg") is None:
        rest = url.split("://", 1)[1]
        return (
            f"DAGSTER_PG_URL starts with {scheme}://, which SQLAlchemy reads as the psycopg 3 "
            f"driver (not installed): use postgresql+psycopg2://{rest.split('@')[-1]} (with your "
            "user and password before the @)"
        )
    if not scheme.startswith("postgresql"):
        return "DAGSTER_PG_URL must look like postgresql+psycopg2://user:password@host:5432/dagster"
    return None


def dagster_home(lake: Lake) -> Path:
    return Path(os.environ.get("DAGSTER_HOME") or lake.home / "dagster_home").expanduser().resolve()


def ensure_dagster_home(lake: Lake) -> Path:
    """Create DAGSTER_HOME with a dagster.yaml (kept if the user already has one) and export it."""
    home = dagster_home(lake)
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(dagster_yaml(), encoding="utf-8")
    os.environ["DAGSTER_HOME"] = str(home)
    return home
