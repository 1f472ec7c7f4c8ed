"""Stage 3, the evaluation (asset ``model_metrics``): ``evaluate_study`` takes the fitted models
and computes what a reader of the study asks first.

Predictions per patient x model x cohort (``predict_cohorts``; out-of-fold ones for training
patients beside the apparent ones), tidy metrics with bootstrap and DeLong CIs
(``metrics.metrics_table``), the best model by the study's rule (chosen on training
cross-validation only), the combined model with its nomogram and the DeLong test of combined vs
best, the heterogeneity of the external centers' AUCs, optional per-center recalibration and
Harrell's optimism correction, and ``auc_drop_warnings``. Every ``model_metrics`` row says the
harmonization it was computed with (``metrics.with_harmonization``). The result, an
``Evaluation``, is what ``calibration.calibrate_study`` and the survival stage take (its
predictions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from assets.studies.data import StudyData, train_inputs
from assets.studies.metrics import RAW_SUFFIX, with_harmonization
from assets.studies.spec import StudySpec

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
    "oof_predicted_label": pl.Int8,
}


def predict_cohorts(
    spec: StudySpec,
    fitted: dict[str, Any],
    data: StudyData,
    splits: pl.DataFrame,
    raw: bool = False,
) -> pl.DataFrame:
    """Probability (and label at the model's threshold) of every patient x model.

    ``oof_probability`` is the out-of-fold training probability (train cohort only) and
    ``oof_predicted_label`` the label it gives at the threshold: training-cohort analyses that
    group patients by a predicted label (survival) use it, never the apparent label. ``raw``:
    the models fitted without harmonization (features only).
    """
    keys = splits["patient_key"].to_list()
    X = data.X(keys) if not raw else data.X_raw(keys)
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
            "oof_predicted_label": pl.Series(
                np.where(np.isnan(oof), np.nan, (oof >= threshold).astype(float))
            )
            .fill_nan(None)
            .cast(pl.Int8),
        },
        schema=PREDICTIONS_SCHEMA,
    )


def fit_combined_model(
    spec: StudySpec, best: Any, data: StudyData, splits: pl.DataFrame
) -> tuple[Any, pl.DataFrame, float]:
    """(CombinedModel, its predictions, its Youden threshold on out-of-fold training data)."""
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
    # its threshold from out-of-fold training probabilities (the same folds as the radiomics
    # models), never from its apparent training fit
    from assets.studies.pipeline import training_cv

    train_frame, y_train = frame[train_mask], y[train_mask]
    oof_train = np.full(len(y_train), np.nan)
    folds = training_cv(spec, y_train).splitter(spec.split.seed)
    for fit_idx, held_idx in folds.split(np.zeros(len(y_train)), y_train):
        part = fit_combined(
            train_frame.iloc[fit_idx],
            y_train[fit_idx],
            data.clinical_numeric,
            data.clinical_categorical,
            best.name,
        )
        oof_train[held_idx] = part.predict_probability(train_frame.iloc[held_idx])
    threshold = youden_threshold(y_train, oof_train)
    oof = np.full(len(keys), np.nan)
    oof[train_mask] = oof_train
    predictions = _prediction_part(spec, "combined", splits, combined_probability, threshold, oof)
    return combined, predictions, threshold


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
    spec: StudySpec,
    data: StudyData,
    splits: pl.DataFrame,
    fitted: dict[str, Any],
    version: str,
    raw_fitted: dict[str, Any] | None = None,
) -> Evaluation:
    """Predict every cohort, compute the metrics, pick the best model, fit the combined model.

    Also: the random-effects heterogeneity of the external centers' AUCs, optional per-center
    recalibration and Harrell's optimism-corrected AUC, and (``raw_fitted``, from
    ``harmonization.compare_raw``) the same models without harmonization as ``<model>:raw``
    rows. Every row carries the ``harmonization`` it was computed with.
    """
    from assets.studies.heterogeneity import auc_heterogeneity_rows, recalibration_rows
    from assets.studies.metrics import comparison_table, metrics_table
    from assets.studies.pipeline import optimism_rows, select_best_model

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
    extra = [auc_heterogeneity_rows(predictions, **common)]
    if spec.validation.recalibrate_external:
        extra.append(recalibration_rows(predictions, **common))
    if spec.validation.optimism_bootstrap > 0:
        X_train, y_train = train_inputs(data, splits)
        extra.append(optimism_rows(spec, fitted, X_train, y_train, **common))
    if raw_fitted:
        raw = predict_cohorts(spec, raw_fitted, data, splits, raw=True).with_columns(
            pl.col("model") + RAW_SUFFIX
        )
        raw_thresholds = {f"{n}{RAW_SUFFIX}": m.threshold for n, m in raw_fitted.items()}
        raw_cv = {f"{n}{RAW_SUFFIX}": (m.cv_auc, m.cv_auc_sd) for n, m in raw_fitted.items()}
        extra.append(metrics_table(raw, raw_thresholds, cv_auc=raw_cv, **boot, **common))
        extra.append(auc_heterogeneity_rows(raw, **common))
    metrics = with_harmonization(pl.concat([metrics, *extra]), spec)
    return Evaluation(
        predictions, metrics, best, rule, combined, nomogram, auc_drop_warnings(spec, metrics, best)
    )


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
