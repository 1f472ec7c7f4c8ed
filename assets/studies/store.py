"""The one place a study's stage results are persisted and reloaded (pure, no Dagster).

Each stage (``data``, ``fit``, ``evaluate``, ``explain``, ``calibration``, ``survival``,
``report``) computes; its asset saves the result here and the next stage's asset loads it from
here. What the stages read from the lake is here too.

- ``discover_studies``: every ``LAKE_HOME/studies/*.yaml`` (a demo lake gets the demo's study
  there from ``radlake demo-data``). Files that do not validate are returned with their
  ``StudySpecError`` message instead of being dropped silently.
- ``study_inputs``: the study's patients from the lake: the clinical table (restricted to the
  cohort of ``cohort_sql`` / ``cohort_query`` when given) and one wide feature row per patient
  from the shared pivot (``assets.clinical.pivot.pivot_features`` with the study's
  ``case_rule``) for the radiomics ``params_id`` and each external ``feature_set``; external
  feature columns are prefixed ``<feature_set>:`` so names never collide.
- Hand-over files under ``models/<study>/``: ``inputs/`` (the features and clinical rows the split
  saw, and ``prepared.json``; ``save_inputs`` / ``load_inputs``), ``current.json`` (the version
  the last ``models`` run wrote; ``write_current`` / ``read_current``; ``study_version`` also
  for survival-only studies) and the version folder:

  - stage 2: ``save_training`` (``<model>.joblib``, ``raw/``, ``resolved.yaml``,
    ``hashes.json``, then ``complete.json``; ``read_complete`` says whether a folder holds a
    complete run), ``load_fitted``
  - stage 3: ``save_evaluation`` (``combined.joblib``, ``predictions.parquet``,
    ``metrics.parquet``, ``summary.json``)
  - stages 4-5: ``save_explanations``, ``save_calibration``, ``save_decision_curves``
  - ``save_results``: all of them from ``run.run_study``'s in-memory ``StudyResult``;
    ``load_study_result`` rebuilds it from a version folder (for the report asset)
- ``survival_frame``: one row per patient for ``survival.run_survival`` (clinical columns,
  cohort, and for classification studies the best radiomics model's probability and
  ``predicted_label`` at its training threshold; out-of-fold ones for training patients).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from assets.studies.spec import StudySpec, StudySpecError, load_study
from dagster_project.lake import file_sha256, write_file_atomic

if TYPE_CHECKING:
    from assets.studies.evaluate import Evaluation
    from assets.studies.report import StudyResult

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


def study_dir(home: Any, spec: StudySpec) -> Path:
    return Path(home.models_dir) / spec.name


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


def save_inputs(
    home: Any,
    spec: StudySpec,
    features: pl.DataFrame,
    clinical: pl.DataFrame,
    prepared: dict[str, Any],
) -> Path:
    folder = study_dir(home, spec) / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    features.write_parquet(folder / "features.parquet")
    clinical.write_parquet(folder / "clinical.parquet")
    (folder / "prepared.json").write_text(
        json.dumps(prepared, indent=2, sort_keys=True, default=str), encoding="utf-8"
    )
    return folder


def load_inputs(home: Any, spec: StudySpec) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    folder = study_dir(home, spec) / "inputs"
    if not (folder / "clinical.parquet").is_file():
        raise FileNotFoundError(
            f"{folder} has no inputs: materialize {spec.name}/study_splits first"
        )
    prepared = json.loads((folder / "prepared.json").read_text(encoding="utf-8"))
    return (
        pl.read_parquet(folder / "features.parquet"),
        pl.read_parquet(folder / "clinical.parquet"),
        prepared,
    )


def write_current(home: Any, spec: StudySpec, version: str) -> None:
    payload = json.dumps({"model_version": version}).encode("utf-8")
    path = study_dir(home, spec) / "current.json"
    write_file_atomic(path, lambda handle: handle.write(payload), 0o644)


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


def write_provenance(home: Any, spec: StudySpec, version: str) -> Path:
    """``models/<study>/<version>/provenance.json``: the manifests of every lake table version the
    model's inputs were read from (recorded by ``study_inputs``), kept with the model version so a
    paper can cite its data exactly (``radlake provenance <study> <version>``). Written once: a
    version re-used on a later night keeps the snapshot it was trained on."""
    path = study_dir(home, spec) / version / "provenance.json"
    if path.exists():
        return path
    prepared = json.loads((study_dir(home, spec) / "inputs" / "prepared.json").read_text("utf-8"))
    payload = {
        "study": spec.name,
        "model_version": version,
        "inputs": prepared.get("manifests", {}),
    }
    data = json.dumps(payload, indent=1, sort_keys=True, default=str).encode("utf-8")
    return write_file_atomic(path, lambda handle: handle.write(data), 0o644)


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


def read_current(home: Any, spec: StudySpec) -> tuple[str, Path]:
    """(model version, its folder) of the last ``models`` run of the study."""
    path = study_dir(home, spec) / "current.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{spec.name} has no trained version yet: materialize {spec.name}/models first"
        )
    version = json.loads(path.read_text(encoding="utf-8"))["model_version"]
    return version, study_dir(home, spec) / version


def study_version(home: Any, spec: StudySpec) -> tuple[str, Path | None]:
    """(model version, its folder or None): the current trained version of a classification
    study; for a survival-only study the content version its survival asset computes."""
    from assets.studies.versioning import code_version, frame_sha256, model_version

    if spec.is_classification:
        return read_current(home, spec)
    _, clinical, _ = load_inputs(home, spec)
    version = model_version(
        spec.resolved_yaml(), {"clinical": frame_sha256(clinical)}, code_version()
    )
    return version, None


def version_best_model(home: Any, spec: StudySpec, version: str) -> str | None:
    """The best model recorded in a version folder's ``summary.json`` (None when there is none)."""
    path = study_dir(home, spec) / version / "summary.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("best_model")


def survival_frame(
    spec: StudySpec,
    clinical: pl.DataFrame,
    splits: pl.DataFrame,
    predictions: pl.DataFrame | None = None,
    best_model: str | None = None,
) -> Any:
    """One row per study patient for ``run_survival``: clinical columns, cohort, model outputs."""
    frame = splits.select("patient_key", "cohort").join(
        clinical.drop("center_id", strict=False), on="patient_key", how="left"
    )
    if predictions is not None and best_model is not None:
        frame = frame.join(
            _model_outputs(predictions, best_model, "radiomics_probability", "predicted_label"),
            on="patient_key",
            how="left",
        )
        if "combined" in set(predictions["model"].unique()):
            outputs = _model_outputs(
                predictions, "combined", "combined_probability", "combined_predicted_label"
            )
            frame = frame.join(outputs, on="patient_key", how="left")
    return frame.to_pandas()


def _model_outputs(
    predictions: pl.DataFrame, model: str, probability: str, label: str
) -> pl.DataFrame:
    """A model's probability and predicted label per patient; out-of-fold ones for training.

    Training patients get their out-of-fold probability and label (the model never saw them
    when it predicted them), so training-cohort Kaplan-Meier, log-rank and Cox by predicted
    label are not the apparent fit's; older predictions without OOF columns keep the apparent.
    """
    part = predictions.filter(pl.col("model") == model)
    prob, lab = pl.col("probability"), pl.col("predicted_label")
    if "oof_predicted_label" in part.columns:
        train = pl.col("cohort") == "train"
        prob = pl.when(train).then(pl.col("oof_probability")).otherwise(prob)
        lab = pl.when(train).then(pl.col("oof_predicted_label")).otherwise(lab)
    return part.select("patient_key", prob.alias(probability), lab.alias(label))


def load_study_result(home: Any, spec: StudySpec, version_dir: Path, splits: pl.DataFrame) -> Any:
    """A ``StudyResult`` rebuilt from a version folder and the figures in ``reports/<study>/``."""
    from assets.studies.combined import build_nomogram
    from assets.studies.report import StudyResult

    fitted, combined = load_fitted(version_dir)
    summary = json.loads((version_dir / "summary.json").read_text(encoding="utf-8"))
    hashes = json.loads((version_dir / "hashes.json").read_text(encoding="utf-8"))
    report_dir = Path(home.reports_dir) / spec.name
    figures = {p.stem: p for p in sorted(report_dir.glob("*.png"))}

    def table(name: str) -> pl.DataFrame:
        path = version_dir / f"{name}.parquet"
        return pl.read_parquet(path) if path.is_file() else pl.DataFrame()

    return StudyResult(
        spec=spec,
        model_version=version_dir.name,
        code_version=hashes["code_version"],
        data_hashes=hashes["data"],
        splits=splits,
        excluded=summary.get("excluded", {}),
        fitted=fitted,
        best_model=summary["best_model"],
        best_model_rule=summary["best_model_rule"],
        predictions=table("predictions"),
        metrics=table("metrics"),
        calibration_curves=table("calibration_curves"),
        dca=table("decision_curves"),
        explanations={},
        top_features=table("top_features"),
        combined=combined,
        nomogram=build_nomogram(combined) if combined is not None else None,
        figures=figures,
        artifact_dir=version_dir,
        warnings=summary.get("warnings", []),
        notes=summary.get("notes", []),
    )


# stage results: written by each stage, reloaded by the next --------------------
COMPLETE_MARKER = "complete.json"


def read_complete(version_dir: Path, spec: StudySpec, version: str) -> dict[str, Any] | None:
    """The ``complete.json`` marker when ``version_dir`` holds a complete training run, else None.

    ``save_training`` writes the marker last (atomically), after ``<model>.joblib`` for every
    model, ``resolved.yaml`` and ``hashes.json``; it records each of those files' SHA-256. Complete means:
    the marker parses and names this version and ``trained_at``, it lists a pipeline for every
    model of the study, every listed file exists with its recorded SHA-256 (a file cut short or
    replaced after the run does not count), and ``resolved.yaml`` is this study's resolved YAML.
    A crash before the marker is written therefore never looks complete.
    """
    version_dir = Path(version_dir)
    path = version_dir / COMPLETE_MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
        files = dict(marker["files"])
        datetime.fromisoformat(marker["trained_at"])
    except (ValueError, KeyError, TypeError):
        return None
    needed = {f"{m}.joblib" for m in spec.models} | {"resolved.yaml", "hashes.json"}
    if spec.harmonization.enabled and spec.harmonization.compare_raw:
        needed |= {f"raw/{m}.joblib" for m in spec.models}
    if marker.get("model_version") != version or not needed <= set(files):
        return None
    for name, sha in files.items():
        file = version_dir / name
        if not file.is_file() or file_sha256(file) != sha:
            return None
    if (version_dir / "resolved.yaml").read_text(encoding="utf-8") != spec.resolved_yaml():
        return None
    return marker


def write_complete(
    version_dir: Path, version: str, trained_at: datetime, files: list[Path]
) -> None:
    marker = {
        "model_version": version,
        "trained_at": trained_at.isoformat(),
        "files": {p.relative_to(version_dir).as_posix(): file_sha256(p) for p in files},
    }
    payload = json.dumps(marker, indent=2, sort_keys=True).encode("utf-8")
    write_file_atomic(version_dir / COMPLETE_MARKER, lambda handle: handle.write(payload), 0o644)


def save_training(
    version_dir: Path,
    spec: StudySpec,
    version: str,
    code: str,
    data_hashes: dict[str, str],
    fitted: dict[str, Any],
    raw: dict[str, Any],
    trained_at: datetime,
) -> None:
    """Stage 2 files: the pipelines (``raw/`` too), resolved.yaml, hashes.json, then complete.json."""
    from assets.studies.versioning import data_version

    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / COMPLETE_MARKER).unlink(missing_ok=True)  # incomplete until written again
    files = save_fitted(fitted, None, version_dir)
    if raw:
        files += save_fitted(raw, None, version_dir / "raw")
    (version_dir / "resolved.yaml").write_text(spec.resolved_yaml(), encoding="utf-8")
    hashes = {
        "data": data_hashes,
        "data_version": data_version(data_hashes),
        "code_version": code,
    }
    (version_dir / "hashes.json").write_text(
        json.dumps(hashes, indent=2, sort_keys=True), encoding="utf-8"
    )
    write_complete(
        version_dir,
        version,
        trained_at,
        [*files, version_dir / "resolved.yaml", version_dir / "hashes.json"],
    )


def save_fitted(fitted: dict[str, Any], combined: Any | None, version_dir: Path) -> list[Path]:
    """Fitted pipelines as ``<model>.joblib`` (+ ``combined.joblib``) in the version folder."""
    import joblib

    version_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, model in fitted.items():
        path = version_dir / f"{name}.joblib"
        joblib.dump(model, path, compress=3)
        paths.append(path)
    if combined is not None:
        path = version_dir / "combined.joblib"
        joblib.dump(combined, path, compress=3)
        paths.append(path)
    return paths


def load_fitted(
    version_dir: Path, models: tuple[str, ...] | list[str] | None = None
) -> tuple[dict[str, Any], Any | None]:
    """The fitted models (and combined model, if any) saved by ``save_fitted``.

    ``models`` loads just those, in that order; by default every ``<model>.joblib`` of the folder.
    """
    import joblib

    if models is None:
        paths = [p for p in sorted(Path(version_dir).glob("*.joblib")) if p.stem != "combined"]
    else:
        paths = [Path(version_dir) / f"{m}.joblib" for m in models]
    fitted = {p.stem: joblib.load(p) for p in paths}
    combined_path = Path(version_dir) / "combined.joblib"
    return fitted, joblib.load(combined_path) if combined_path.exists() else None


CALIBRATION_METRICS = (
    "calibration_slope",
    "calibration_intercept",
    "hosmer_lemeshow_chi2",
    "hosmer_lemeshow_df",
    "hosmer_lemeshow_p",
)


def save_evaluation(
    version_dir: Path, evaluation: Evaluation, excluded: dict[str, int], notes: list[str]
) -> None:
    """Stage 3 files: combined.joblib, predictions.parquet, metrics.parquet, summary.json."""
    if evaluation.combined is not None:
        save_fitted({}, evaluation.combined, version_dir)
    evaluation.predictions.write_parquet(version_dir / "predictions.parquet")
    evaluation.metrics.write_parquet(version_dir / "metrics.parquet")
    summary = {
        "best_model": evaluation.best_model,
        "best_model_rule": evaluation.best_model_rule,
        "excluded": excluded,
        "warnings": evaluation.warnings,
        "notes": notes,
    }
    (version_dir / "summary.json").write_text(
        json.dumps(summary, indent=2, sort_keys=True), encoding="utf-8"
    )


def save_calibration(version_dir: Path, curves: pl.DataFrame, rows: pl.DataFrame) -> pl.DataFrame:
    """Stage 5 files; the calibration rows replace earlier ones in metrics.parquet (returned)."""
    curves.write_parquet(version_dir / "calibration_curves.parquet")
    metrics = pl.read_parquet(version_dir / "metrics.parquet")
    metrics = pl.concat(
        [metrics.filter(~pl.col("metric").is_in(CALIBRATION_METRICS)), rows], how="diagonal_relaxed"
    )
    metrics.write_parquet(version_dir / "metrics.parquet")
    return metrics


def save_decision_curves(version_dir: Path, dca: pl.DataFrame) -> None:
    dca.write_parquet(version_dir / "decision_curves.parquet")


def save_explanations(version_dir: Path, top_features: pl.DataFrame) -> None:
    top_features.write_parquet(version_dir / "top_features.parquet")


def save_results(result: StudyResult, version_dir: Path) -> None:
    """Everything ``run_study`` computed, as the separate stages would have written it."""
    from assets.studies.evaluate import Evaluation

    calibration = result.metrics.filter(pl.col("metric").is_in(CALIBRATION_METRICS))
    discrimination = result.metrics.filter(~pl.col("metric").is_in(CALIBRATION_METRICS))
    evaluation = Evaluation(
        result.predictions,
        discrimination,
        result.best_model,
        result.best_model_rule,
        result.combined,
        result.nomogram,
        result.warnings,
    )
    save_evaluation(version_dir, evaluation, result.excluded, result.notes)
    save_calibration(version_dir, result.calibration_curves, calibration)
    save_decision_curves(version_dir, result.dca)
    save_explanations(version_dir, result.top_features)
