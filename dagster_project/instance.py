"""One persistent DAGSTER_HOME shared by `make demo`, `make ui` and the CLI (inside LAKE_HOME unless set)."""

from __future__ import annotations

import os
from pathlib import Path

from dagster_project.lake import Lake

DAGSTER_YAML = """\
# Written by radlake: local run/event storage under this folder; no telemetry (no network here).
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


def dagster_home(lake: Lake) -> Path:
    return Path(os.environ.get("DAGSTER_HOME") or lake.home / "dagster_home").expanduser().resolve()


def ensure_dagster_home(lake: Lake) -> Path:
    """Create DAGSTER_HOME with a dagster.yaml (kept if the user already has one) and export it."""
    home = dagster_home(lake)
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML, encoding="utf-8")
    os.environ["DAGSTER_HOME"] = str(home)
    return home
