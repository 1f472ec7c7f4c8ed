"""Dagster layer of the radiomics domain: a thin asset over assets.radiomics (pure logic).

``radiomics_features``: every case of the ``cases`` table x every parameter set (LAKE_HOME/params
plus the shipped ``ct_default`` / ``mr_default``; ``ct_*`` / ``mr_*`` only for that modality),
extracted incrementally on the backend of the ``extraction`` resource (``local`` process pool or
``dask``). It also writes ``radiomics_diagnostics`` (pyradiomics' ``diagnostics_*``). Progress
(done/total, cases per minute, ETA) goes to the run log; the counts to the asset metadata.
"""

import time

import dagster as dg

from dagster_project.core_assets import INGEST_TAG, reads
from dagster_project.materialize import table_result
from dagster_project.quarantine import write_quarantine
from dagster_project.resources import ExtractionBackend, LakeResource
from quality.checks import accounting_check, suite_check

PROGRESS_EVERY_S = 10.0  # one progress line per 10 s keeps the run log readable


@dg.asset(
    group_name="radiomics",
    kinds={"python", "parquet"},
    tags={INGEST_TAG: "ingest"},
    metadata=reads("params"),
    deps=["cases"],
    description="pyradiomics features, one row per case x feature x params_id (long); extracted "
    "again only when the image, mask, label or parameter file changed.",
)
def radiomics_features(
    context: dg.AssetExecutionContext, lake: LakeResource, extraction: ExtractionBackend
) -> dg.MaterializeResult:
    from assets.imaging.cases import LOCATORS_FILE, case_tasks, read_locators
    from assets.imaging.mask_qc import load_case_task
    from assets.radiomics.backends import Backend
    from assets.radiomics.incremental import read_diagnostics, read_features, stored_pairs
    from assets.radiomics.params import applies_to, discover_params
    from assets.radiomics.run import run_extraction

    home = lake.lake()
    cases = home.read_table("cases")
    tasks = case_tasks(home.landing, cases, read_locators(home.state_dir / LOCATORS_FILE))
    known = set(stored_pairs(home).get_column("params_sha256").to_list())  # validated before
    params, params_rejects = discover_params(home.params_dir, landing=home.landing, validated=known)
    rows = {r["case_id"]: r for r in cases.iter_rows(named=True)}
    for task in tasks:
        row = rows[task["case_id"]]
        task["params_ids"] = [
            p.params_id for p in params if applies_to(p.params_id, row.get("modality"))
        ]
        task["source_path"] = row.get("mask_ref") or f"imaging/{task['center_id']}"  # safe path
    backend = Backend(
        kind=extraction.kind, max_workers=extraction.max_workers, address=extraction.dask_address
    )
    pairs = sum(len(t["params_ids"]) for t in tasks)
    context.log.info(
        f"radiomics: {len(tasks)} cases, {pairs} case x params pairs "
        f"({', '.join(p.params_id for p in params)}) on {backend.describe()}"
    )

    last_log = [0.0]

    def log_progress(progress) -> None:
        now = time.monotonic()
        if progress.done == progress.total or now - last_log[0] >= PROGRESS_EVERY_S:
            last_log[0] = now
            context.log.info(str(progress))

    stats, rejects = run_extraction(
        home,
        tasks,
        params,
        backend,
        progress=log_progress,
        batch_size=extraction.batch_size,
        loader=load_case_task,
    )
    # an invalid parameter file is one landed unit that was quarantined
    rejects = params_rejects + rejects
    stats["landed"] += len(params_rejects)
    stats["quarantined"] += len(params_rejects)
    write_quarantine(home, "radiomics_features", rejects)
    for reject in rejects:
        context.log.warning(str(reject))
    context.log.info(
        f"radiomics: extracted {stats['extracted']}, unchanged {stats['unchanged']}, quarantined "
        f"{stats['quarantined']}, {stats['seconds_per_case']:.2f} s per case"
    )
    table = read_features(home)
    stats["diagnostics_rows"] = read_diagnostics(home).height
    return table_result(home, "radiomics_features", table, stats)


defs = dg.Definitions(
    assets=[radiomics_features],
    asset_checks=[
        suite_check("radiomics_features"),
        # pyradiomics' diagnostics_* are written by the same asset into their own table
        suite_check(
            "radiomics_diagnostics", asset="radiomics_features", name="gx_suite_diagnostics"
        ),
        accounting_check("radiomics_features"),
    ],
)
