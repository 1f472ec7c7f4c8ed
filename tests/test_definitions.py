"""The code location: loads, stays light, and its asset graph is pinned by a snapshot.

Regenerate the snapshot after an intended change to the lineage with
``UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest tests/test_definitions.py``; the diff is the review.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"
HEAVY = (
    "great_expectations",
    "radiomics",
    "SimpleITK",
    "xgboost",
    "lifelines",
    "sklearn",
    "matplotlib",
    "highdicom",
)


def demo_graph_snapshot(tmp_path: Path) -> dict:
    """The graph of a demo lake (the demo's cohorts and study in its LAKE_HOME), loaded in a fresh
    interpreter: the code location reads LAKE_HOME's studies and cohorts when it loads."""
    from radlake.demo.generator import write_demo_definitions

    home = tmp_path / "demo-lake"
    write_demo_definitions(home)
    env = {**os.environ, "LAKE_HOME": str(home), "PYTHONPATH": str(Path(__file__).parents[1])}
    code = "import json; from tests.test_definitions import graph_snapshot as g; print(json.dumps(g()))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def graph_snapshot() -> dict:
    from dagster_project.definitions import defs

    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(p.to_user_string() for p in node.parent_keys),
            "checks": sorted(c.name for c in node.check_keys),
        }
    repo = defs.get_repository_def()
    return {
        "assets": assets,
        "blocking_checks": sorted(
            f"{spec.asset_key.to_user_string()}:{spec.name}"
            for checks_def in repo.asset_checks_defs_by_key.values()
            for spec in checks_def.check_specs
            if spec.blocking
        ),
        "jobs": sorted(j.name for j in repo.get_all_jobs() if not j.name.startswith("__")),
        "schedules": sorted(f"{s.name}@{s.cron_schedule}" for s in repo.schedule_defs),
        "sensors": sorted(s.name for s in repo.sensor_defs),
        "resources": sorted(repo.get_top_level_resources()),
    }


def test_asset_graph_matches_snapshot(tmp_path):
    current = demo_graph_snapshot(tmp_path)
    if os.environ.get("UPDATE_SNAPSHOTS") or not SNAPSHOT.exists():
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert current == json.loads(SNAPSHOT.read_text()), (
        "asset graph changed: review, then UPDATE_SNAPSHOTS=1"
    )


def test_every_lake_table_asset_has_a_blocking_suite(tmp_path):
    snapshot = demo_graph_snapshot(tmp_path)
    from quality.suites import suite_tables

    for table in suite_tables():
        if table in snapshot["assets"]:
            assert f"{table}:gx_suite" in snapshot["blocking_checks"], table


def test_code_location_does_not_import_heavy_libraries():
    code = (
        "import sys; import dagster_project.definitions as d; "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_dg_check_defs_passes():
    dg_cli = Path(sys.executable).with_name("dg")
    out = subprocess.run(
        [str(dg_cli), "check", "defs"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "All definitions loaded successfully" in out.stdout + out.stderr
