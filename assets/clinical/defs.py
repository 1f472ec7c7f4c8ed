"""Dagster layer of the clinical domain: thin assets over assets.clinical (pure logic).

- ``clinical`` + ``clinical_history`` (one multi-asset, ingest): landing/clinical/*.csv|*.xlsx ->
  lake/clinical (current, one row per patient; the replaced file kept under _history/) and
  lake/clinical_history (SCD type 2, for "clinical as of <time>").
- ``external_features`` (ingest): landing/features/<center_id>/*.csv|*.parquet -> the long table.
- one asset per cohort file (``sql/cohorts/*.sql`` and the lake's own ``LAKE_HOME/sql/cohorts/*.sql``;
  a cohort that cannot run on this lake fails alone, naming the file, the missing column and the
  columns the tables it reads do have) and one for ``sql/views/dataset_inventory.sql`` (the same
  SELECT the catalog exposes as a view), result preview in the metadata; its data version is the
  result's content hash, so studies downstream see when their cohort changed.
"""

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from dagster_project.catalog import sql_files, sql_roots
from dagster_project.core_assets import INGEST_TAG, reads
from dagster_project.lake import Lake
from dagster_project.materialize import removed_since_last_version, table_result
from dagster_project.quarantine import write_quarantine
from dagster_project.resources import LakeResource
from dagster_project.sql_assets import sql_file_asset
from quality.checks import accounting_check, suite_check

SQL_ROOT = Path(__file__).resolve().parents[2] / "sql"
LAKE_TABLES = ("clinical", "cases", "imaging_series", "radiomics_features", "external_features")
TABLES = ("clinical", "clinical_history", "external_features")


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "clinical",
            group_name="clinical",
            kinds={"python", "parquet"},
            tags={INGEST_TAG: "ingest"},
            metadata=reads("landing/clinical", "mappings"),
            description=(
                "One row per patient from landing/clinical/*.csv|*.xlsx, typed (schema file or "
                "inference), pseudonymized; a newer file's values replace older ones."
            ),
        ),
        dg.AssetSpec(
            "clinical_history",
            group_name="clinical",
            kinds={"python", "parquet"},
            description=(
                "Every version of every patient's clinical row (SCD type 2: valid_from, valid_to, "
                "is_current): ask for clinical as of any earlier time."
            ),
        ),
    ]
)
def clinical(context: dg.AssetExecutionContext, lake: LakeResource):
    from assets.clinical.history import update_history
    from assets.clinical.load import clinical_files, load_centers, load_clinical
    from dagster_project.mappings import load_mappings

    home = lake.lake()
    loaded_at = datetime.now(UTC)
    previous = home.read_table("clinical") if home.has_table("clinical") else None
    history = home.read_table("clinical_history") if home.has_table("clinical_history") else None
    mappings, mapping_errors = load_mappings(home.home, "clinical")
    table, rejects, stats = load_clinical(
        clinical_files(home.landing),
        home.landing,
        lake.pseudonymizer(),
        centers=load_centers(home.home),
        previous=previous,
        loaded_at=loaded_at,
        mappings=mappings,
    )
    for error in mapping_errors.values():
        context.log.warning(f"mapping not used: {error}")
    for path, names in stats["other_sheets"].items():
        context.log.warning(
            f"{path}: only the first worksheet with data is read; not read: {', '.join(names)} "
            "(one table per file, or one file per sheet)"
        )
    stats["mapping_errors"] = mapping_errors
    history = update_history(history, table, loaded_at)
    stats["patients_removed"] = removed_since_last_version(home, "clinical", table, "patient_key")
    if stats["patients_removed"]:
        context.log.info(
            f"clinical: {stats['patients_removed']} patients removed (not in landing/)"
        )
    home.write_table("clinical", table, keep_history=True)
    home.write_table("clinical_history", history)
    write_quarantine(home, "clinical", rejects)
    for reject in rejects:
        context.log.warning(str(reject))
    versions = {"versions": history.height, "current": int(history.get_column("is_current").sum())}
    for name, frame, extra in (("clinical", table, stats), ("clinical_history", history, versions)):
        result = table_result(home, name, frame, extra)
        yield dg.MaterializeResult(
            asset_key=name, metadata=result.metadata, data_version=result.data_version
        )


@dg.asset(
    group_name="clinical",
    kinds={"python", "parquet"},
    tags={INGEST_TAG: "ingest"},
    metadata=reads("landing/features", "mappings"),
    deps=["clinical", "cases"],
    description=(
        "Feature tables computed elsewhere (pyradiomics batch output, deep or pathology features) "
        "from landing/features/<center_id>/*.csv|*.parquet, long: one feature of one case per row."
    ),
)
def external_features(
    context: dg.AssetExecutionContext, lake: LakeResource
) -> dg.MaterializeResult:
    from assets.clinical.external import load_external_features
    from dagster_project.mappings import load_mappings

    home = lake.lake()
    cases = home.read_table("cases") if home.has_table("cases") else None
    clinical_table = home.read_table("clinical") if home.has_table("clinical") else None
    mappings, _errors = load_mappings(home.home, "external_features")
    table, rejects, stats = load_external_features(
        home.landing, lake.pseudonymizer(), cases, clinical_table, mappings=mappings
    )
    home.write_table("external_features", table, keep_history=True)
    write_quarantine(home, "external_features", rejects)
    for reject in rejects:
        context.log.warning(str(reject))
    return table_result(home, "external_features", table, stats)


COHORT_FILES = sql_files(sql_roots(Lake.at(create=False), SQL_ROOT), layers=("cohorts",))
SQL_ASSETS = [sql_file_asset(p, "cohorts", LAKE_TABLES) for p in COHORT_FILES.values()] + [
    sql_file_asset(SQL_ROOT / "views" / "dataset_inventory.sql", "clinical", LAKE_TABLES)
]

defs = dg.Definitions(
    assets=[clinical, external_features, *SQL_ASSETS],
    asset_checks=[
        *[suite_check(table) for table in TABLES],
        accounting_check("clinical"),
        accounting_check("external_features"),
    ],
)
