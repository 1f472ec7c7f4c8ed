"""What a study reads from the lake (pure, no Dagster): its YAML files and its patients.

- ``discover_studies``: every ``LAKE_HOME/studies/*.yaml`` (a demo lake gets the demo's study
  there from ``radlake demo-data``). Files that do not validate are returned with their
  ``StudySpecError`` message instead of being dropped silently.
- ``study_inputs``: the study's patients from the lake: the clinical table (restricted to the
  cohort of ``cohort_sql`` / ``cohort_query`` when given) and one wide feature row per patient
  from the shared pivot (``assets.clinical.pivot.pivot_features`` with the study's
  ``case_rule``) for the radiomics ``params_id`` and each external ``feature_set``; external
  feature columns are prefixed ``<feature_set>:`` so names never collide. The ``study_splits``
  asset hands them to ``data.prepare_study`` and saves them (``store.save_inputs``) for the
  later stages; ``input_manifests`` records the table versions read (``store.write_provenance``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from assets.studies.spec import StudySpec, StudySpecError, load_study

REPO = Path(__file__).resolve().parents[2]


def discover_studies(studies_dir: Path) -> tuple[dict[str, StudySpec], dict[str, str]]:
    """(valid studies by name, error message by file) of LAKE_HOME/studies."""
    files = sorted(Path(studies_dir).glob("*.yaml")) if Path(studies_dir).is_dir() else []
    studies: dict[str, StudySpec] = {}
    errors: dict[str, str] = {}
    for path in files:
        try:
            spec = load_study(path)
        except StudySpecError as error:
            errors[path.stem] = str(error)
            continue
        studies[spec.name] = spec
    return studies, errors


def cohort_sql_text(spec: StudySpec, home: Any) -> str | None:
    """The study's cohort SELECT: ``cohort_query`` or the ``cohort_sql`` file.

    A relative ``cohort_sql`` path is looked up beside the study YAML, then in LAKE_HOME (a group
    keeps its cohorts in ``LAKE_HOME/sql/cohorts/``), then in the repository.
    """
    if spec.cohort_query:
        return spec.cohort_query
    if not spec.cohort_sql:
        return None
    relative = Path(spec.cohort_sql)
    candidates = (
        [relative]
        if relative.is_absolute()
        else [
            Path(spec.source).parent / relative,
            Path(home.home) / relative,
            REPO / relative,
        ]
    )
    for candidate in candidates:
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8").strip().rstrip(";")
    raise StudySpecError(
        spec.source,
        "cohort_sql",
        f"{spec.cohort_sql} not found (looked in {[str(c) for c in candidates]})",
    )


def study_inputs(home: Any, spec: StudySpec) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """(wide features, clinical rows, info) of the study's patients, read from the lake."""
    import duckdb

    from assets.clinical.pivot import pivot_features
    from assets.studies.split import StudyDataError
    from dagster_project.catalog import explain_sql_error, lake_connection

    clinical = home.read_table("clinical")
    if clinical.is_empty():
        raise StudyDataError(
            f"{spec.source}: the clinical table has no rows: land the outcomes under "
            "landing/clinical/ (or materialize `clinical`) before this study can run"
        )
    info: dict[str, Any] = {"clinical_patients": clinical.height}
    info["manifests"] = input_manifests(home)
    con = lake_connection(home)
    try:
        if spec.features.radiomics is not None and home.has_table("radiomics_features"):
            info["extractor_version"] = check_one_extractor(con, spec.features.radiomics.params_id)
        sql = cohort_sql_text(spec, home)
        if sql is not None:
            try:
                cohort = con.sql(f"select distinct patient_key from ({sql})").pl()
            except duckdb.Error as error:
                source = f"{spec.source} (cohort {spec.cohort_sql or 'cohort_query'})"
                raise StudyDataError(explain_sql_error(con, source, sql, error)) from None
            keys = cohort["patient_key"].to_list()
            info["not_in_cohort"] = clinical.filter(~pl.col("patient_key").is_in(keys)).height
            clinical = clinical.filter(pl.col("patient_key").is_in(keys))
        wide: pl.DataFrame | None = None
        case_rules: dict[str, str] = {}
        sources = []
        if spec.features.radiomics is not None:
            sources.append(("radiomics", spec.features.radiomics.params_id, ""))
        sources += [
            ("external", e.feature_set, f"{e.feature_set}:") for e in spec.features.external
        ]
        batch = spec.harmonization.batch if spec.harmonization.enabled else "center_id"
        for source, selector, prefix in sources:
            frame, description = pivot_features(con, source, selector, spec.case_rule)
            case_rules[f"{source}:{selector}"] = description
            values = [c for c in frame.columns if c not in ("patient_key", "case_id", "center_id")]
            batch_values = (
                _series_field(con, frame, batch)
                if source == "radiomics" and batch != "center_id"
                else None
            )
            if source == "radiomics" and spec.selection.min_icc is not None:
                values, info["min_icc"] = _robust_only(home, spec, selector, values)
            frame = frame.select("patient_key", *[pl.col(c).alias(f"{prefix}{c}") for c in values])
            if batch_values is not None:
                frame = frame.with_columns(batch_values)
            wide = (
                frame
                if wide is None
                else wide.join(frame, on="patient_key", how="full", coalesce=True)
            )
    finally:
        con.close()
    info["case_rules"] = case_rules
    features = (
        wide if wide is not None else pl.DataFrame({"patient_key": pl.Series([], dtype=pl.String)})
    )
    if sql is not None:
        # patients outside the cohort are not in the study at all (counted as not_in_cohort)
        features = features.filter(pl.col("patient_key").is_in(clinical["patient_key"].to_list()))
    return features, clinical, info


def _robust_only(
    home: Any, spec: StudySpec, params_id: str, columns: list[str]
) -> tuple[list[str], str]:
    """The radiomics columns whose ICC lower bound reaches ``selection.min_icc`` (and why)."""
    from assets.radiomics.robustness import robust_features

    table = home.read_table("feature_robustness")
    if table.is_empty() or table.filter(pl.col("params_id") == params_id).is_empty():
        raise StudySpecError(
            spec.source,
            "selection.min_icc",
            f"no feature_robustness rows for params_id {params_id}: materialize "
            "feature_robustness first (cases.csv with a reader column, several masks per lesion)",
        )
    keep = robust_features(table, spec.selection.min_icc, params_id)
    kept = [c for c in columns if c in keep]
    return kept, (
        f"{len(kept)} of {len(columns)} radiomics features kept: ICC lower 95% bound >= "
        f"{spec.selection.min_icc:g} in feature_robustness ({params_id})"
    )


def _series_field(con: Any, frame: pl.DataFrame, field: str) -> pl.Series:
    """An imaging_series field (e.g. manufacturer) of each row's chosen case, as a string column."""
    con.register("__batch_cases", frame.select("case_id").with_row_index("row"))
    try:
        values = con.sql(
            f"select b.row, cast(s.{field} as varchar) as value from __batch_cases b "
            "left join cases c using (case_id) left join imaging_series s using (series_id) "
            "order by b.row"
        ).pl()
    finally:
        con.unregister("__batch_cases")
    return values["value"].fill_null("unknown").alias(field)


# the lake tables a study can read (cohort SQL, clinical, the feature pivot)
STUDY_INPUT_TABLES = (
    "clinical",
    "cases",
    "imaging_series",
    "radiomics_features",
    "radiomics_diagnostics",
    "external_features",
)


def input_manifests(home: Any) -> dict[str, dict]:
    """The manifest of every input table's live version (what a study reads now)."""
    return {t: m for t in STUDY_INPUT_TABLES if (m := home.manifest(t)) is not None}


def check_one_extractor(con: Any, params_id: str) -> str | None:
    """The single ``extractor_version`` of a parameter set's features; a study refuses features
    computed by different pyradiomics/SimpleITK/numpy versions."""
    versions = [
        row[0]
        for row in con.execute(
            "select distinct extractor_version from radiomics_features where params_id = ?",
            [params_id],
        ).fetchall()
    ]
    if len(versions) > 1:
        raise ValueError(
            f"radiomics_features for params_id {params_id!r} come from {len(versions)} extractor "
            f"versions ({'; '.join(f'[{v}]' for v in sorted(map(str, versions)))}): a study "
            "must not mix them. Re-materialize radiomics_features to re-extract every case with "
            "the installed versions."
        )
    return versions[0] if versions else None
