"""Run a classification study: stages that each become a Dagster asset, and ``run_study``.

Stages (each usable alone; the Dagster layer persists what passes between them):

1. ``prepare_study`` (asset ``study_splits``): ``assemble_study_data`` joins the wide features
   (``patient_key`` + numeric columns, from the shared pivot) to the clinical table and hashes
   both; ``split_patients`` assigns cohorts and counts exclusions by reason
2. ``train_study`` (asset ``models``): ``model_version`` names the run; when
   ``models/<study>/<version>/`` already holds a complete training run (``complete.json``, written
   last, see ``read_complete``) the pipelines are loaded instead of refitted and the original
   ``trained_at`` is kept; otherwise ``fit_models`` tunes every pipeline on training only and the
   pipelines, ``resolved.yaml``, ``hashes.json`` and then ``complete.json`` are written; the
   ``model_versions`` row
3. ``evaluate_study`` (asset ``model_metrics``): predictions per patient x model x cohort,
   tidy metrics with bootstrap and DeLong CIs, the best model by the study's rule, the combined
   model with its nomogram, DeLong test of combined vs best
4. ``explain_models`` (asset ``explanations``): SHAP / importances / coefficients
5. ``calibrate_study`` (assets ``calibration`` and ``decision_curves``)
6. figures (``roc_png``, ``calibration_png``, ``decision_curve_png``, ``explanation_pngs``,
   ``nomogram_png``) and ``report.write_study_report``

``run_study(spec, features_df, clinical_df, out_dir)`` chains them in one process (tests and the
benchmark). Versioning: ``model_version(resolved spec YAML, data hashes, code version)`` is a
content hash, so the same data with the same seed and code gives the same version (and, as
tested, identical metrics). ``out_dir`` is normally ``LAKE_HOME``: artifacts in
``models/<study>/<version>/`` (``<model>.joblib``, ``combined.joblib``, ``resolved.yaml``,
``hashes.json``, ``complete.json``, ``metrics.parquet``, ``predictions.parquet``,
``calibration_curves.parquet``, ``decision_curves.parquet``, ``top_features.parquet``,
``summary.json``), figures and ``report.html`` in ``reports/<study>/``.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from assets.studies.spec import StudySpec
from assets.studies.split import EXCLUSION_REASONS, StudyDataError, split_patients

ID_COLUMNS = ("patient_key", "center_id", "case_id", "study", "cohort", "label")
CODE_MODULES = (
    "spec",
    "split",
    "transformers",
    "pipeline",
    "metrics",
    "ci_flags",
    "combined",
    "explain",
    "calibration",
    "train",
)
MODEL_VERSIONS_SCHEMA = {
    "study": pl.String,
    "model_version": pl.String,
    "trained_at": pl.Datetime("us", "UTC"),
    "data_version": pl.String,
    "code_version": pl.String,
    "params": pl.String,
    "artifact_path": pl.String,
}


# versioning -------------------------------------------------------------------------------
def frame_sha256(frame: pl.DataFrame, key: str = "patient_key") -> str:
    """Content hash of a frame, independent of row and column order."""
    ordered = frame.select(sorted(frame.columns))
    if key in ordered.columns:
        ordered = ordered.sort(key)
    digest = hashlib.sha256()
    for name in ordered.columns:
        series = ordered[name]
        digest.update(f"{name}\x00{series.dtype}\x00".encode())
        digest.update(series.is_null().to_numpy().tobytes())
        if series.dtype.is_numeric() or series.dtype == pl.Boolean:
            digest.update(series.cast(pl.Float64).fill_null(0.0).to_numpy().tobytes())
        else:
            digest.update("\x1f".join(series.cast(pl.String).fill_null("").to_list()).encode())
    return digest.hexdigest()


def code_version() -> str:
    """Hash of this package's study modules and the versions of the libraries they fit with."""
    import sklearn
    import xgboost

    digest = hashlib.sha256()
    folder = Path(__file__).resolve().parent
    for module in CODE_MODULES:
        digest.update((folder / f"{module}.py").read_bytes())
    digest.update(
        f"numpy {np.__version__} sklearn {sklearn.__version__} xgboost {xgboost.__version__}".encode()
    )
    return digest.hexdigest()[:12]


def model_version(spec_yaml_text: str, data_hashes: dict[str, str], code_version: str) -> str:
    """Content-addressed model version: same study text + data + code -> same version."""
    payload = json.dumps(
        {"spec": spec_yaml_text, "data": dict(sorted(data_hashes.items())), "code": code_version},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def data_version(data_hashes: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(sorted(data_hashes.items()))).encode()).hexdigest()[:16]


# 1. data ----------------------------------------------------------------------------------
@dataclass
class StudyData:
    """Patients of a study with their features and clinical columns (pandas, one row each)."""

    frame: Any  # pandas DataFrame indexed by patient_key
    feature_columns: list[str]
    clinical_numeric: list[str]
    clinical_categorical: list[str]
    split_input: pl.DataFrame  # patient_key, center_id, label, has_features
    excluded: dict[str, int]
    data_hashes: dict[str, str]
    notes: list[str] = field(default_factory=list)

    def X(self, keys: list[str]) -> Any:
        return self.frame.loc[keys, self.feature_columns]


def _referenced_clinical_columns(spec: StudySpec) -> list[str]:
    names = [spec.label] if spec.label else []
    names += list(spec.features.clinical)
    for entry in spec.survival:
        names += [entry.time, entry.event, *entry.cox_terms]
        names += [entry.groups] if entry.groups else []
        names += [entry.cutoff.variable] if entry.cutoff else []
    return list(dict.fromkeys(names))


def assemble_study_data(
    spec: StudySpec, features_df: pl.DataFrame, clinical_df: pl.DataFrame
) -> StudyData:
    """Join the wide features (``patient_key`` + numeric columns) to the clinical table."""
    for column in (
        "patient_key",
        "center_id",
        *([spec.label] if spec.label else []),
        *spec.features.clinical,
    ):
        if column not in clinical_df.columns:
            raise StudyDataError(
                f"{spec.source}: column {column!r} is not in the clinical table (has: "
                f"{sorted(clinical_df.columns)[:20]}); fix the study YAML or the clinical file"
            )
    if "patient_key" not in features_df.columns:
        raise StudyDataError("the feature table has no patient_key column")
    duplicated = features_df["patient_key"].is_duplicated().sum()
    if duplicated:
        raise StudyDataError(
            f"the feature table has {duplicated} rows of patients with several cases; apply the study's "
            f"case_rule ({spec.case_rule}) in the pivot first"
        )
    notes: list[str] = []
    feature_columns = [
        c for c in features_df.columns if c not in ID_COLUMNS and features_df[c].dtype.is_numeric()
    ]
    skipped = [c for c in features_df.columns if c not in ID_COLUMNS and c not in feature_columns]
    if skipped:
        notes.append(f"{len(skipped)} non-numeric feature columns ignored: {skipped[:10]}")
    features = features_df.select("patient_key", *feature_columns).with_columns(
        pl.col(feature_columns).cast(pl.Float64)
    )

    clinical_cols = [c for c in _referenced_clinical_columns(spec) if c in clinical_df.columns]
    clinical = clinical_df.select(
        "patient_key",
        "center_id",
        *[c for c in clinical_cols if c not in ("patient_key", "center_id")],
    )
    clinical = clinical.unique("patient_key", keep="first", maintain_order=True)
    feature_keys = set(features["patient_key"].to_list())
    clinical_keys = set(clinical["patient_key"].to_list())
    excluded = dict.fromkeys((*EXCLUSION_REASONS, "no_clinical_row"), 0)
    excluded["no_clinical_row"] = len(feature_keys - clinical_keys)

    split_input = clinical.select(
        "patient_key",
        "center_id",
        *([pl.col(spec.label).alias("label")] if spec.label else []),
        pl.col("patient_key").is_in(list(feature_keys)).alias("has_features"),
    )
    merged = clinical.join(features, on="patient_key", how="inner") if feature_columns else clinical
    frame = merged.to_pandas().set_index("patient_key", drop=False)
    frame.index.name = None

    from assets.studies.combined import clinical_types

    numeric, categorical = clinical_types(
        frame, list(spec.features.clinical), spec.features.categorical
    )
    hashes = {"features": frame_sha256(features), "clinical": frame_sha256(clinical)}
    return StudyData(
        frame, feature_columns, numeric, categorical, split_input, excluded, hashes, notes
    )


# 4. predictions ---------------------------------------------------------------------------
PREDICTIONS_SCHEMA = {
    "study": pl.String,
    "model": pl.String,
    "patient_key": pl.String,
    "center_id": pl.String,
    "cohort": pl.String,
    "label": pl.Int8,
    "probability": pl.Float64,
    "predicted_label": pl.Int8,
    "oof_probability": pl.Float64,
}


def predict_cohorts(
    spec: StudySpec, fitted: dict[str, Any], data: StudyData, splits: pl.DataFrame
) -> pl.DataFrame:
    """Probability (and label at the model's threshold) of every patient x model.

    ``oof_probability`` is the out-of-fold training probability (train cohort only).
    """
    keys = splits["patient_key"].to_list()
    X = data.X(keys)
    train_mask = (splits["cohort"] == "train").to_numpy()
    parts = []
    for name, model in fitted.items():
        probability = model.predict_probability(X)
        oof = np.full(len(keys), np.nan)
        oof[train_mask] = model.oof_probability
        parts.append(_prediction_part(spec, name, splits, probability, model.threshold, oof))
    return pl.concat(parts) if parts else pl.DataFrame(schema=PREDICTIONS_SCHEMA)


def _prediction_part(
    spec: StudySpec,
    name: str,
    splits: pl.DataFrame,
    probability: np.ndarray,
    threshold: float,
    oof: np.ndarray,
) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "study": spec.name,
            "model": name,
            "patient_key": splits["patient_key"],
            "center_id": splits["center_id"],
            "cohort": splits["cohort"],
            "label": splits["label"],
            "probability": probability,
            "predicted_label": (probability >= threshold).astype(np.int8),
            "oof_probability": pl.Series(oof).fill_nan(None),
        },
        schema=PREDICTIONS_SCHEMA,
    )


# 6. combined model ------------------------------------------------------------------------
def fit_combined_model(
    spec: StudySpec, best: Any, data: StudyData, splits: pl.DataFrame
) -> tuple[Any, pl.DataFrame, float]:
    """(CombinedModel, its predictions, its Youden threshold on training)."""
    from assets.studies.combined import RADIOMICS_SCORE, fit_combined, radiomics_score
    from assets.studies.metrics import youden_threshold

    keys = splits["patient_key"].to_list()
    train_mask = (splits["cohort"] == "train").to_numpy()
    probability = best.predict_probability(data.X(keys))
    # training patients get their out-of-fold score (see combined module docstring)
    score_probability = probability.copy()
    score_probability[train_mask] = best.oof_probability
    frame = data.frame.loc[keys, data.clinical_numeric + data.clinical_categorical].copy()
    frame[RADIOMICS_SCORE] = radiomics_score(score_probability)
    y = splits["label"].to_numpy().astype(int)
    combined = fit_combined(
        frame[train_mask],
        y[train_mask],
        data.clinical_numeric,
        data.clinical_categorical,
        best.name,
    )
    combined_probability = combined.predict_probability(frame)
    threshold = youden_threshold(y[train_mask], combined_probability[train_mask])
    oof = np.full(len(keys), np.nan)
    predictions = _prediction_part(spec, "combined", splits, combined_probability, threshold, oof)
    return combined, predictions, threshold


# 7. explanations --------------------------------------------------------------------------
def explain_models(
    spec: StudySpec, fitted: dict[str, Any], data: StudyData, splits: pl.DataFrame
) -> dict[str, Any]:
    """An ``Explanation`` per model on the training cohort (see ``explain``)."""
    from assets.studies.explain import explain_model

    train = splits.filter(pl.col("cohort") == "train")
    X = data.X(train["patient_key"].to_list())
    y = train["label"].to_numpy().astype(int)
    return {
        name: explain_model(name, model.pipeline, X, y, spec.split.seed)
        for name, model in fitted.items()
    }


def top_features_table(explanations: dict[str, Any], top: int = 15) -> pl.DataFrame:
    if not explanations:
        return pl.DataFrame()
    return pl.concat([e.importance.head(top) for e in explanations.values()])


# 8. figures -------------------------------------------------------------------------------
def _cohorts_of(predictions: pl.DataFrame) -> list[tuple[str, pl.Expr]]:
    from assets.studies.metrics import metric_cohorts

    return metric_cohorts(
        predictions.select("patient_key", "cohort", "center_id").unique("patient_key")
    )


def roc_png(report_dir: Path, predictions: pl.DataFrame, metrics: pl.DataFrame) -> Path:
    from assets.studies.plots import roc_figure, save

    return save(roc_figure(predictions, metrics, _cohorts_of(predictions)), report_dir / "roc.png")


def _per_cohort_png(
    plot, table: pl.DataFrame, predictions: pl.DataFrame, path: Path
) -> Path | None:
    """One panel per cohort (in the predictions' cohort order) of a tidy table with a cohort column."""
    from assets.studies.plots import cohort_figure, save

    if table.is_empty():
        return None
    frames = {c: table.filter(pl.col("cohort") == c) for c, _ in _cohorts_of(predictions)}
    return save(cohort_figure(plot, frames), path)


def calibration_png(
    report_dir: Path, predictions: pl.DataFrame, curves: pl.DataFrame
) -> Path | None:
    from assets.studies.calibration import plot_calibration

    return _per_cohort_png(plot_calibration, curves, predictions, report_dir / "calibration.png")


def decision_curve_png(
    report_dir: Path, predictions: pl.DataFrame, dca: pl.DataFrame
) -> Path | None:
    from assets.studies.calibration import plot_decision_curve

    return _per_cohort_png(plot_decision_curve, dca, predictions, report_dir / "decision_curve.png")


def explanation_pngs(report_dir: Path, explanations: dict[str, Any]) -> dict[str, Path]:
    from assets.studies.explain import plot_shap_summary
    from assets.studies.plots import new_figure, save

    paths = {}
    for name, explanation in explanations.items():
        fig, (ax,) = new_figure(1, panel_size=(7.0, 5.0))
        plot_shap_summary(explanation, ax)
        paths[f"explain_{name}"] = save(fig, report_dir / f"explain_{name}.png")
    return paths


def nomogram_png(report_dir: Path, nomogram: Any) -> Path:
    from assets.studies.combined import plot_nomogram
    from assets.studies.plots import new_figure, save

    rows = nomogram.points["predictor"].n_unique() + 3
    fig, (ax,) = new_figure(1, panel_size=(10.0, 0.7 * rows + 1))
    plot_nomogram(nomogram, ax)
    return save(fig, report_dir / "nomogram.png")


# stages ------------------------------------------------------------------------------------
def prepare_study(
    spec: StudySpec, features_df: pl.DataFrame, clinical_df: pl.DataFrame
) -> tuple[StudyData, pl.DataFrame, dict[str, int]]:
    """Stage 1 (asset ``study_splits``): data, cohorts and excluded patients by reason."""
    if not spec.is_classification:
        raise StudyDataError(f"{spec.source}: study {spec.name} has no label: it is survival-only")
    data = assemble_study_data(spec, features_df, clinical_df)
    splits, excluded = split_patients(data.split_input, spec)
    return data, splits, {**data.excluded, **excluded}


def train_inputs(data: StudyData, splits: pl.DataFrame) -> tuple[Any, np.ndarray]:
    train = splits.filter(pl.col("cohort") == "train")
    return data.X(train["patient_key"].to_list()), train["label"].to_numpy().astype(int)


@dataclass
class TrainedStudy:
    """Stage 2 (asset ``models``): the tuned pipelines and the version they are saved under.

    ``retrained`` is False when the version folder already held a complete training run and the
    pipelines were loaded from it instead of being fitted again. ``notes``: how the training
    deviated from the study as written (cross-validation folds reduced for a small cohort, see
    ``pipeline.training_cv``); they go to ``summary.json`` and the report with the data notes.
    """

    model_version: str
    code_version: str
    data_hashes: dict[str, str]
    fitted: dict[str, Any]
    version_dir: Path
    model_versions_row: pl.DataFrame
    retrained: bool = True
    trained_at: datetime | None = None
    notes: list[str] = field(default_factory=list)


COMPLETE_MARKER = "complete.json"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_complete(version_dir: Path, spec: StudySpec, version: str) -> dict[str, Any] | None:
    """The ``complete.json`` marker when ``version_dir`` holds a complete training run, else None.

    ``train_study`` writes the marker last (atomically), after ``<model>.joblib`` for every model,
    ``resolved.yaml`` and ``hashes.json``; it records each of those files' SHA-256. Complete means:
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
    if marker.get("model_version") != version or not needed <= set(files):
        return None
    for name, sha in files.items():
        file = version_dir / name
        if not file.is_file() or file_sha256(file) != sha:
            return None
    if (version_dir / "resolved.yaml").read_text(encoding="utf-8") != spec.resolved_yaml():
        return None
    return marker


def _write_complete(
    version_dir: Path, version: str, trained_at: datetime, files: list[Path]
) -> None:
    marker = {
        "model_version": version,
        "trained_at": trained_at.isoformat(),
        "files": {p.name: file_sha256(p) for p in files},
    }
    tmp = version_dir / f".{COMPLETE_MARKER}.tmp"
    tmp.write_text(json.dumps(marker, indent=2, sort_keys=True), encoding="utf-8")
    tmp.replace(version_dir / COMPLETE_MARKER)


def train_study(
    spec: StudySpec,
    data: StudyData,
    splits: pl.DataFrame,
    out_dir: str | Path,
    *,
    n_jobs: int = 1,
    code_version_override: str | None = None,
    trained_at: datetime | None = None,
    reuse: bool = True,
) -> TrainedStudy:
    """Fit every model on training; write the pipelines, resolved.yaml, hashes.json, complete.json.

    With ``reuse`` (default) a version folder that already holds a complete training run
    (``read_complete``) is not refitted: its pipelines are loaded and its original ``trained_at``
    is kept (``trained_at`` given here is then ignored), so the ``model_versions`` row is the
    same as the first time.
    """
    from assets.studies.pipeline import fit_models, training_notes

    code = code_version_override or code_version()
    version = model_version(spec.resolved_yaml(), data.data_hashes, code)
    relative = Path("models") / spec.name / version
    version_dir = Path(out_dir) / relative
    marker = read_complete(version_dir, spec, version) if reuse else None

    def trained(fitted, at: datetime, fitted_now: bool) -> TrainedStudy:
        row = model_versions_row(
            spec, version, code, data.data_hashes, fitted, relative.as_posix(), at
        )
        return TrainedStudy(
            version,
            code,
            data.data_hashes,
            fitted,
            version_dir,
            row,
            fitted_now,
            at,
            training_notes(fitted),
        )

    if marker is not None:
        fitted, _ = load_fitted(version_dir, spec.models)
        return trained(fitted, datetime.fromisoformat(marker["trained_at"]), fitted_now=False)

    X_train, y_train = train_inputs(data, splits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # joblib cache timing notes
        fitted = fit_models(spec, X_train, y_train, n_jobs=n_jobs)
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / COMPLETE_MARKER).unlink(missing_ok=True)  # incomplete until written again
    files = save_fitted(fitted, None, version_dir)
    (version_dir / "resolved.yaml").write_text(spec.resolved_yaml(), encoding="utf-8")
    hashes = {
        "data": data.data_hashes,
        "data_version": data_version(data.data_hashes),
        "code_version": code,
    }
    (version_dir / "hashes.json").write_text(
        json.dumps(hashes, indent=2, sort_keys=True), encoding="utf-8"
    )
    trained_at = trained_at or datetime.now(UTC)
    _write_complete(
        version_dir,
        version,
        trained_at,
        [*files, version_dir / "resolved.yaml", version_dir / "hashes.json"],
    )
    return trained(fitted, trained_at, fitted_now=True)


@dataclass
class Evaluation:
    """Stage 3 (asset ``model_metrics``): predictions, discrimination metrics, combined model."""

    predictions: pl.DataFrame
    metrics: pl.DataFrame
    best_model: str
    best_model_rule: str
    combined: Any | None = None
    nomogram: Any | None = None
    warnings: list[str] = field(default_factory=list)


def evaluate_study(
    spec: StudySpec, data: StudyData, splits: pl.DataFrame, fitted: dict[str, Any], version: str
) -> Evaluation:
    """Predict every cohort, compute the metrics, pick the best model, fit the combined model."""
    from assets.studies.metrics import comparison_table, metrics_table
    from assets.studies.pipeline import select_best_model

    predictions = predict_cohorts(spec, fitted, data, splits)
    thresholds = {name: m.threshold for name, m in fitted.items()}
    cv_auc = {name: (m.cv_auc, m.cv_auc_sd) for name, m in fitted.items()}
    common = {"study": spec.name, "model_version": version}
    boot = {"n_boot": spec.bootstrap, "seed": spec.split.seed}
    metrics = metrics_table(predictions, thresholds, cv_auc=cv_auc, **boot, **common)
    best, rule = select_best_model(metrics, fitted, spec)
    combined = nomogram = None
    if spec.features.clinical:
        from assets.studies.combined import build_nomogram

        combined, combined_predictions, threshold = fit_combined_model(
            spec, fitted[best], data, splits
        )
        nomogram = build_nomogram(combined)
        predictions = pl.concat([predictions, combined_predictions])
        metrics = pl.concat(
            [
                metrics,
                metrics_table(combined_predictions, {"combined": threshold}, **boot, **common),
                comparison_table(predictions, best, "combined", **common),
            ]
        )
    return Evaluation(
        predictions, metrics, best, rule, combined, nomogram, auc_drop_warnings(spec, metrics, best)
    )


def calibrate_study(
    spec: StudySpec, predictions: pl.DataFrame, version: str
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Stages 5-6 (assets ``calibration``, ``decision_curves``): curves, metric rows, DCA."""
    from assets.studies.calibration import calibration_tables, dca_table

    curves, rows = calibration_tables(predictions, study=spec.name, model_version=version)
    return curves, rows, dca_table(predictions)


# the whole study --------------------------------------------------------------------------
@dataclass
class StudyResult:
    spec: StudySpec
    model_version: str
    code_version: str
    data_hashes: dict[str, str]
    splits: pl.DataFrame
    excluded: dict[str, int]
    fitted: dict[str, Any]
    best_model: str
    best_model_rule: str
    predictions: pl.DataFrame
    metrics: pl.DataFrame  # model_metrics rows (discrimination, calibration, comparison)
    calibration_curves: pl.DataFrame
    dca: pl.DataFrame
    explanations: dict[str, Any]
    top_features: pl.DataFrame
    combined: Any | None = None
    nomogram: Any | None = None
    figures: dict[str, Path] = field(default_factory=dict)
    artifact_dir: Path | None = None
    report_path: Path | None = None
    model_versions_row: pl.DataFrame | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def auc_drop_warnings(spec: StudySpec, metrics: pl.DataFrame, model: str) -> list[str]:
    """Validation cohorts whose AUC is more than ``auc_drop_warning`` below training's."""
    if spec.auc_drop_warning is None:
        return []
    auc = metrics.filter((pl.col("model") == model) & (pl.col("metric") == "auc"))
    values = dict(zip(auc["cohort"].to_list(), auc["value"].to_list(), strict=True))
    train = values.get("train")
    out = []
    for cohort, value in values.items():
        if (
            cohort != "train"
            and train is not None
            and value is not None
            and train - value > spec.auc_drop_warning
        ):
            out.append(
                f"{spec.name}: {model} AUC drops from {train:.3f} (train, apparent) to {value:.3f} "
                f"({cohort}), more than auc_drop_warning {spec.auc_drop_warning:g}: check for "
                "overfitting or a center effect"
            )
    return out


def run_study(
    spec: StudySpec,
    features_df: pl.DataFrame,
    clinical_df: pl.DataFrame,
    out_dir: str | Path,
    *,
    n_jobs: int = 1,
    code_version_override: str | None = None,
    trained_at: datetime | None = None,
    write_report: bool = True,
    figures: bool = True,
) -> StudyResult:
    """Split, fit, predict, evaluate, explain, calibrate and report one classification study.

    ``out_dir`` is normally LAKE_HOME: artifacts go to ``models/<study>/<version>/``, figures
    and the report to ``reports/<study>/``. ``n_jobs`` parallelises the cross-validation fits;
    ``figures=False`` / ``write_report=False`` skip the PNGs / the HTML report.
    """
    out_dir = Path(out_dir)
    data, splits, excluded = prepare_study(spec, features_df, clinical_df)
    trained = train_study(
        spec,
        data,
        splits,
        out_dir,
        n_jobs=n_jobs,
        code_version_override=code_version_override,
        trained_at=trained_at,
    )
    evaluation = evaluate_study(spec, data, splits, trained.fitted, trained.model_version)
    curves, calibration_rows, dca = calibrate_study(
        spec, evaluation.predictions, trained.model_version
    )
    explanations = explain_models(spec, trained.fitted, data, splits)
    result = StudyResult(
        spec=spec,
        model_version=trained.model_version,
        code_version=trained.code_version,
        data_hashes=trained.data_hashes,
        splits=splits,
        excluded=excluded,
        fitted=trained.fitted,
        best_model=evaluation.best_model,
        best_model_rule=evaluation.best_model_rule,
        predictions=evaluation.predictions,
        metrics=pl.concat([evaluation.metrics, calibration_rows]),
        calibration_curves=curves,
        dca=dca,
        explanations=explanations,
        top_features=top_features_table(explanations),
        combined=evaluation.combined,
        nomogram=evaluation.nomogram,
        artifact_dir=trained.version_dir,
        model_versions_row=trained.model_versions_row,
        warnings=evaluation.warnings,
        notes=[*data.notes, *trained.notes],
    )
    save_results(result, trained.version_dir)
    report_dir = out_dir / "reports" / spec.name
    if figures:
        result.figures = write_figures(report_dir, result)
    if write_report:
        from assets.studies.report import write_study_report

        result.report_path = write_study_report(result, report_dir / "report.html")
    return result


def write_figures(report_dir: Path, result: StudyResult) -> dict[str, Path]:
    """Every PNG of a study result; returns name -> path."""
    paths = {"roc": roc_png(report_dir, result.predictions, result.metrics)}
    optional = {
        "calibration": calibration_png(report_dir, result.predictions, result.calibration_curves),
        "decision_curve": decision_curve_png(report_dir, result.predictions, result.dca),
        "nomogram": nomogram_png(report_dir, result.nomogram)
        if result.nomogram is not None
        else None,
    }
    paths.update({k: v for k, v in optional.items() if v is not None})
    paths.update(explanation_pngs(report_dir, result.explanations))
    return paths


# artifacts --------------------------------------------------------------------------------
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
    metrics = pl.concat([metrics.filter(~pl.col("metric").is_in(CALIBRATION_METRICS)), rows])
    metrics.write_parquet(version_dir / "metrics.parquet")
    return metrics


def save_decision_curves(version_dir: Path, dca: pl.DataFrame) -> None:
    dca.write_parquet(version_dir / "decision_curves.parquet")


def save_explanations(version_dir: Path, top_features: pl.DataFrame) -> None:
    top_features.write_parquet(version_dir / "top_features.parquet")


def save_results(result: StudyResult, version_dir: Path) -> None:
    """Everything ``run_study`` computed, as the separate stages would have written it."""
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


def model_versions_row(
    spec: StudySpec,
    version: str,
    code: str,
    data_hashes: dict[str, str],
    fitted: dict[str, Any],
    artifact_path: str,
    trained_at: datetime | None = None,
) -> pl.DataFrame:
    """The ``model_versions`` row of a training run (params: tuned parameters, thresholds)."""
    params = {
        "models": {
            name: {
                "best_params": _jsonable(m.best_params),
                "threshold": m.threshold,
                "cv_auc": m.cv_auc,
                "cv_folds": getattr(m, "cv_folds", None),
                "selected_features": m.selected_features,
            }
            for name, m in fitted.items()
        },
        "spec": spec.to_dict(),
    }
    return pl.DataFrame(
        {
            "study": [spec.name],
            "model_version": [version],
            "trained_at": [trained_at or datetime.now(UTC)],
            "data_version": [data_version(data_hashes)],
            "code_version": [code],
            "params": [json.dumps(params, sort_keys=True, default=str)],
            "artifact_path": [artifact_path],
        },
        schema=MODEL_VERSIONS_SCHEMA,
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value
