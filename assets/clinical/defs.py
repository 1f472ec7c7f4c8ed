"""Dagster layer of the clinical domain: thin assets over assets.clinical (pure logic).

- ``clinical`` + ``clinical_history`` (one multi-asset, ingest): landing/clinical/*.csv|*.xlsx ->
  lake/clinical (current, one row per patient; the replaced file kept under _history/) and
  lake/clinical_history (SCD type 2, for "clinical as of <time>").
- ``external_features`` (ingest): landing/features/<center_id>/*.csv|*.parquet -> the long table.
- one asset per ``sql/cohorts/*.sql`` file and one for ``sql/views/dataset_inventory.sql`` (the same
  SELECT the catalog exposes as a view), result preview in the metadata; its data version is the
  result's content hash, so studies downstream see when their cohort changed.
"""

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from dagster_project.core_assets import INGEST_TAG
from dagster_project.instance import LAKE_POOL
from dagster_project.materialize import table_result
from dagster_project.quarantine import write_quarantine
from dagster_project.resources import LakeResource
from dagster_project.sql_assets import sql_file_asset
from quality.checks import accounting_check, suite_check

SQL_ROOT = Path(__file__).resolve().parents[2] / "sql"
LAKE_TABLES = ("clinical", "cases", "imaging_series", "radiomics_features", "external_features")
TABLES = ("clinical", "clinical_history", "external_features")


@dg.multi_asset(
    pool=LAKE_POOL,
    specs=[
        dg.AssetSpec(
            "clinical",
            group_name="clinical",
            kinds={"python", "parquet"},
            tags={INGEST_TAG: "ingest"},
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
    ],
)
def clinical(context: dg.AssetExecutionContext, lake: LakeResource):

    home = lake.lake()
    # read-modify-write of clinical_history: one writer at a time, both tables published together
    with home.transaction(lock=("clinical", "clinical_history")) as tx:
        yield from _clinical(context, lake, home, tx)


def _clinical(context, lake: LakeResource, home, tx):
    from assets.clinical.history import update_history
    from assets.clinical.load import clinical_files, load_centers, load_clinical

    loaded_at = datetime.now(UTC)
    previous = home.read_table("clinical") if home.has_table("clinical") else None
    history = home.read_table("clinical_history") if home.has_table("clinical_history") else None
    table, rejects, stats = load_clinical(
        clinical_files(home.landing),
        home.landing,
        lake.pseudonymizer(),
        centers=load_centers(home.home),
        previous=previous,
        loaded_at=loaded_at,
    )
    history = update_history(history, table, loaded_at)
    tx.write_table("clinical", table, keep_history=True)
    tx.write_table("clinical_history", history)
    write_quarantine(tx, "clinical", rejects)
    for reject in rejects:
        context.log.warning(str(reject))
    tx.publish()
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
    pool=LAKE_POOL,
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

    home = lake.lake()
    cases = home.read_table("cases") if home.has_table("cases") else None
    clinical_table = home.read_table("clinical") if home.has_table("clinical") else None
    table, rejects, stats = load_external_features(
        home.landing, lake.pseudonymizer(), cases, clinical_table
    )
    with home.transaction() as tx:
        tx.write_table("external_features", table, keep_history=True)
        write_quarantine(tx, "external_features", rejects)
    for reject in rejects:
        context.log.warning(str(reject))
    return table_result(home, "external_features", table, stats)


SQL_ASSETS = [
    sql_file_asset(p, "cohorts", LAKE_TABLES) for p in sorted((SQL_ROOT / "cohorts").glob("*.sql"))
] + [sql_file_asset(SQL_ROOT / "views" / "dataset_inventory.sql", "clinical", LAKE_TABLES)]

defs = dg.Definitions(
    assets=[clinical, external_features, *SQL_ASSETS],
    asset_checks=[
        *[suite_check(table) for table in TABLES],
        accounting_check("clinical"),
        accounting_check("external_features"),
    ],
)
