"""The one place a study's stage results are persisted and reloaded (pure, no Dagster).

Each stage (``data``, ``fit``, ``evaluate``, ``explain``, ``calibration``, ``survival``,
``report``) computes; its asset saves the result here and the next stage's asset loads it from
here. What a study reads from the lake is ``lake_inputs``.

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

from assets.studies.spec import StudySpec
from dagster_project.lake import file_sha256, write_file_atomic

if TYPE_CHECKING:
    from assets.studies.evaluate import Evaluation
    from assets.studies.report import StudyResult


def study_dir(home: Any, spec: StudySpec) -> Path:
    return Path(home.models_dir) / spec.name


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


# stage results: written by each stage, reloaded by the next --------------------------------
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
