"""One persistent DAGSTER_HOME shared by `make demo`, `make ui` and the CLI (inside LAKE_HOME unless set).

On a laptop Dagster keeps its runs and events in SQLite files in that folder. On a lab server, with
``DAGSTER_PG_URL`` set when the folder is first made (``radlake init``, ``make serve``), they go
to PostgreSQL instead, so the webserver, the daemon and every run share one database.
"""

from __future__ import annotations

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
# DAGSTER_PG_URL (postgresql://user:password@host:5432/database; Dagster creates its tables).
storage:
  postgres:
    postgres_url:
      env: DAGSTER_PG_URL
"""


def dagster_yaml() -> str:
    """The instance configuration: local storage, or PostgreSQL when DAGSTER_PG_URL is set."""
    return DAGSTER_YAML + (POSTGRES_STORAGE if os.environ.get("DAGSTER_PG_URL") else "")


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
