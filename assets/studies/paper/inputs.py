"""What the paper assets read: the study's split, its clinical rows and exclusions (saved by
``study_splits``), and the facts the checklist and the model card share (pure, no Dagster)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl


def paper_inputs(home: Any, spec: Any) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """(splits, clinical rows of the study's cohort, prepared.json) of a study."""
    from assets.studies.store import load_inputs

    path = Path(home.table_dir("study_splits")) / f"{spec.name}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"no study_splits part for {spec.name}: materialize it first")
    _, clinical, prepared = load_inputs(home, spec)
    return pl.read_parquet(path), clinical, prepared


def paper_facts(home: Any, spec: Any) -> tuple[str, Path | None, pl.DataFrame, dict[str, Any]]:
    """(model version, its folder, splits, ``checklists.lake_facts``): what the reporting
    checklist and the model card are filled from (after ``table_one`` and ``patient_flow``)."""
    from assets.studies.paper.checklists import lake_facts
    from assets.studies.store import study_version

    splits, _, _ = paper_inputs(home, spec)
    version, version_dir = study_version(home, spec)
    flow = pl.read_parquet(Path(home.table_dir("patient_flow")) / f"{spec.name}.parquet")
    t1 = pl.read_parquet(Path(home.table_dir("table_one")) / f"{spec.name}-{version}.parquet")
    facts = lake_facts(home, spec, version, splits, flow, t1, version_dir)
    return version, version_dir, splits, facts
