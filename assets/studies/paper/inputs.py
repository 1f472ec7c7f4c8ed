"""What the paper assets read: the study's split, its clinical rows and exclusions (saved by
``study_splits``), and the model version they describe (pure, no Dagster)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl


def study_version(home: Any, spec: Any) -> tuple[str, Path | None]:
    """(model version, its folder or None): the current trained version of a classification
    study; for a survival-only study the content version its survival asset computes."""
    from assets.studies.store import load_inputs, read_current
    from assets.studies.versioning import code_version, frame_sha256, model_version

    if spec.is_classification:
        return read_current(home, spec)
    _, clinical, _ = load_inputs(home, spec)
    version = model_version(
        spec.resolved_yaml(), {"clinical": frame_sha256(clinical)}, code_version()
    )
    return version, None


def paper_inputs(home: Any, spec: Any) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """(splits, clinical rows of the study's cohort, prepared.json) of a study."""
    from assets.studies.store import load_inputs

    path = Path(home.table_dir("study_splits")) / f"{spec.name}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"no study_splits part for {spec.name}: materialize it first")
    _, clinical, prepared = load_inputs(home, spec)
    return pl.read_parquet(path), clinical, prepared
