"""Dagster layer of the imaging domain: thin assets over assets.imaging (pure logic).

- ``imaging_series``: scan landing/imaging (incremental: the per-file index lives in
  ``state/imaging_files.parquet``, never in the lake or the catalog).
- ``cases``: image/mask pairs with mask QC; the real landing paths of each case (locators) are
  kept in ``state/case_locators.json`` (0600) for the radiomics extractor, and the sha256 of
  every image and mask file in ``state/file_hashes.parquet`` (keyed by stat identity, no paths),
  so a re-run reads only new or changed files.
"""

import os
import uuid
from pathlib import Path

import dagster as dg

from dagster_project.core_assets import INGEST_TAG, reads
from dagster_project.materialize import removed_since_last_version, table_result
from dagster_project.quarantine import write_quarantine
from dagster_project.resources import LakeResource
from quality.checks import accounting_check, suite_check


class CasesConfig(dg.Config):
    """Mask QC settings: the smallest ROI, and whether 3D features need an ROI thicker than one slice."""

    min_voxels: int = 2
    require_3d: bool = True
    tolerance: float = 1e-3
    resample_tolerance: float = 0.5


def _center_settings(home) -> dict:
    """Each center's imaging settings (``LAKE_HOME/centers.yaml``: default RTSTRUCT ROI, what to
    do with slice gaps and gantry tilt); a bad value fails the asset naming it."""
    from assets.imaging.settings import load_imaging_settings

    try:
        return load_imaging_settings(home.home)
    except ValueError as exc:  # the group's configuration, not landed data
        raise dg.Failure(str(exc)) from exc


def _read_private(path: Path):
    import polars as pl

    try:
        return pl.read_parquet(path) if path.exists() else None
    except Exception:  # a damaged index only costs a full re-scan
        return None


def _write_private(path: Path, frame) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        frame.write_parquet(tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dg.asset(
    group_name="imaging",
    kinds={"python", "parquet"},
    tags={INGEST_TAG: "ingest"},
    metadata=reads("landing/imaging"),
    description="One row per DICOM series or NIfTI/NRRD volume under landing/imaging/<center_id>/, "
    "with the acquisition protocol; headers only, re-reading only new or changed files.",
)
def imaging_series(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    from assets.imaging.dicom_scan import INDEX_FILE, scan_imaging

    home = lake.lake()
    index_path = home.state_dir / INDEX_FILE
    result = scan_imaging(home.landing, lake.pseudonymizer(), previous=_read_private(index_path))
    removed = removed_since_last_version(home, "imaging_series", result.series, "series_id")
    if removed:
        context.log.info(f"imaging_series: {removed} series removed (no longer in landing/)")
    home.write_table("imaging_series", result.series, keep_history=True)
    _write_private(index_path, result.files)
    write_quarantine(home, "imaging_series", result.rejects)
    for reject in result.rejects:
        context.log.warning(str(reject))
    stats = result.stats
    context.log.info(
        f"imaging_series: {stats['series']} series from {stats['ingested']} files; "
        f"headers read {stats['read']}, unchanged {stats['reused']}, quarantined {stats['quarantined']}"
    )
    return table_result(home, "imaging_series", result.series, {**stats, "series_removed": removed})


@dg.asset(
    group_name="imaging",
    kinds={"python", "parquet"},
    tags={INGEST_TAG: "ingest"},
    metadata=reads("landing/imaging"),
    deps=["imaging_series"],
    description="One row per image/mask pair (cases.csv or the naming convention) that passed mask QC.",
)
def cases(
    context: dg.AssetExecutionContext, lake: LakeResource, config: CasesConfig
) -> dg.MaterializeResult:
    from assets.imaging.cases import LOCATORS_FILE, load_cases, write_locators
    from assets.imaging.dicom_scan import INDEX_FILE
    from dagster_project.lake import HASH_CACHE_FILE, HashCache

    home = lake.lake()
    hashes = HashCache.load(home.state_dir / HASH_CACHE_FILE)
    if hashes.load_error:
        context.log.warning(f"cases: file hash cache ignored ({hashes.load_error})")
    result = load_cases(
        home.landing,
        home.read_table("imaging_series"),
        lake.pseudonymizer(),
        previous=home.read_table("cases") if home.has_table("cases") else None,
        scan_files=_read_private(home.state_dir / INDEX_FILE),
        min_voxels=config.min_voxels,
        require_3d=config.require_3d,
        tolerance=config.tolerance,
        resample_tolerance=config.resample_tolerance,
        hashes=hashes,
        center_settings=_center_settings(home),
    )
    try:
        hashes.save(home.state_dir / HASH_CACHE_FILE)
    except OSError as exc:  # only costs hashing again next run
        context.log.warning(f"cases: file hash cache not saved ({exc})")
    removed = removed_since_last_version(home, "cases", result.cases, "case_id")
    if removed:
        context.log.info(f"cases: {removed} cases removed (no longer in landing/)")
    home.write_table("cases", result.cases, keep_history=True)
    write_locators(home.state_dir / LOCATORS_FILE, result.locators)
    write_quarantine(home, "cases", result.rejects)
    for reject in result.rejects:
        context.log.warning(str(reject))
    stats = {
        **result.stats,
        "hash_cache_hits": hashes.hits,
        "hash_cache_misses": hashes.misses,
        "cases_removed": removed,
    }
    context.log.info(
        f"cases: {stats['ingested']} cases ({stats['checked']} QC'd, {stats['reused']} unchanged), "
        f"quarantined {stats['quarantined']}; files hashed {hashes.misses}, "
        f"hashes reused {hashes.hits}"
    )
    return table_result(home, "cases", result.cases, stats)


defs = dg.Definitions(
    assets=[imaging_series, cases],
    asset_checks=[
        suite_check("imaging_series"),
        accounting_check("imaging_series"),
        suite_check("cases"),
        accounting_check("cases"),
    ],
)
