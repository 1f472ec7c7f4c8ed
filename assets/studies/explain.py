"""Explanations of fitted study models: which selected features drive the predictions.

- ``xgboost``: exact TreeSHAP values from XGBoost itself (``Booster.predict(DMatrix,
  pred_contribs=True)``; no ``shap`` dependency), on the training cohort after the pipeline's
  preprocessing and selection. They are in log-odds units and add up, with the bias column, to
  the model's margin. Importance = mean |SHAP|.
- ``random_forest`` / ``decision_tree``: scikit-learn's impurity-based ``feature_importances_``
  (mean decrease in impurity; not SHAP values, stated in the ``method`` column).
- ``logistic_regression``: coefficients on the standardised selected features (log-odds per SD);
  importance = |coefficient|, the signed value kept.
- ``svm`` (RBF kernel, no coefficients): permutation importance on training (drop in AUC,
  5 repeats, seeded) of the calibrated SVC on the selected features.

Each gives a tidy table ``model, feature, importance, signed_value, method, rank``; the summary
plot is a beeswarm-like dot plot of SHAP values (top 15 features, colour = feature value rank)
for XGBoost and a bar chart for the others.

Stage 4 (asset ``explanations``): ``explain_models`` explains every fitted model on the training
cohort; ``top_features_table`` is what ``store.save_explanations`` keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

if TYPE_CHECKING:
    from assets.studies.data import StudyData
    from assets.studies.spec import StudySpec

TOP_FEATURES = 15


@dataclass
class Explanation:
    model: str
    method: str
    features: list[str]
    importance: pl.DataFrame  # model, feature, importance, signed_value, method, rank
    shap_values: np.ndarray | None = None  # (n, p) for xgboost
    feature_values: np.ndarray | None = None  # (n, p) transformed inputs the SHAP values explain
    base_value: float | None = None


def _table(
    model: str, method: str, features: list[str], importance: np.ndarray, signed: np.ndarray
) -> pl.DataFrame:
    order = np.argsort(-importance, kind="stable")
    return pl.DataFrame(
        {
            "model": [model] * len(features),
            "feature": [features[i] for i in order],
            "importance": importance[order].astype(np.float64),
            "signed_value": signed[order].astype(np.float64),
            "method": [method] * len(features),
            "rank": np.arange(1, len(features) + 1, dtype=np.int64),
        }
    )


def transformed_inputs(pipeline: Any, X: Any) -> tuple[np.ndarray, list[str]]:
    """The inputs of the final estimator (after preprocessing and selection) and their names."""
    front = pipeline[:-1]
    values = np.asarray(front.transform(X), dtype=np.float64)
    try:
        names = [str(n) for n in front.get_feature_names_out()]
    except (AttributeError, ValueError):
        names = [f"x{i}" for i in range(values.shape[1])]
    return values, names


def xgboost_shap(pipeline: Any, X: Any) -> tuple[np.ndarray, float, np.ndarray, list[str]]:
    """(SHAP values (n, p), bias, transformed inputs, feature names) via ``pred_contribs``."""
    from xgboost import DMatrix

    values, names = transformed_inputs(pipeline, X)
    booster = pipeline.named_steps["model"].get_booster()
    contribs = booster.predict(DMatrix(values), pred_contribs=True)
    return contribs[:, :-1].astype(np.float64), float(contribs[0, -1]), values, names


def explain_model(
    name: str, pipeline: Any, X_train: Any, y_train: np.ndarray, seed: int
) -> Explanation:
    """Explain one fitted pipeline on the training cohort (see module docstring per model)."""
    estimator = pipeline.named_steps["model"]
    if name == "xgboost":
        shap, bias, values, features = xgboost_shap(pipeline, X_train)
        mean_abs = np.abs(shap).mean(axis=0)
        # signed: correlation of SHAP with the feature value says which direction raises risk
        with np.errstate(invalid="ignore", divide="ignore"):
            direction = [np.corrcoef(values[:, j], shap[:, j])[0, 1] for j in range(len(features))]
        signed = np.sign(np.nan_to_num(np.array(direction, dtype=np.float64))) * mean_abs
        method = "shap_pred_contribs"
        return Explanation(
            name,
            method,
            features,
            _table(name, method, features, mean_abs, signed),
            shap,
            values,
            bias,
        )
    values, features = transformed_inputs(pipeline, X_train)
    if hasattr(estimator, "feature_importances_"):
        importance = np.asarray(estimator.feature_importances_, dtype=np.float64)
        method = "impurity_importance"
        return Explanation(
            name, method, features, _table(name, method, features, importance, importance)
        )
    if hasattr(estimator, "coef_"):
        coef = np.asarray(estimator.coef_, dtype=np.float64).ravel()
        method = "coefficient_standardized"
        return Explanation(
            name, method, features, _table(name, method, features, np.abs(coef), coef)
        )
    from sklearn.inspection import permutation_importance

    result = permutation_importance(
        estimator,
        values,
        np.asarray(y_train, dtype=int),
        scoring="roc_auc",
        n_repeats=5,
        random_state=seed,
    )
    importance = np.asarray(result.importances_mean, dtype=np.float64)
    method = "permutation_auc"
    return Explanation(
        name, method, features, _table(name, method, features, importance, importance)
    )


def plot_shap_summary(explanation: Explanation, ax: Any, top: int = TOP_FEATURES) -> Any:
    """Beeswarm-like dot plot: one row per feature (most important on top), x = SHAP value."""
    shap, values = explanation.shap_values, explanation.feature_values
    if shap is None or values is None:
        return plot_importance(explanation, ax, top)
    order = np.argsort(-np.abs(shap).mean(axis=0), kind="stable")[:top]
    rng = np.random.default_rng(0)
    for row, j in enumerate(order[::-1]):
        x = shap[:, j]
        # colour = within-feature rank of the value (0 low .. 1 high), as in SHAP summary plots
        ranks = np.argsort(np.argsort(values[:, j], kind="stable"), kind="stable") / max(
            len(x) - 1, 1
        )
        jitter = rng.uniform(-0.3, 0.3, size=len(x))
        ax.scatter(
            x, np.full(len(x), row) + jitter, c=ranks, cmap="coolwarm", s=6, alpha=0.8, linewidths=0
        )
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([explanation.features[j] for j in order[::-1]], fontsize=7)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("SHAP value (log-odds contribution)")
    ax.set_title(
        f"{explanation.model}: SHAP summary (colour: feature value low -> high)", fontsize=9
    )
    return ax


def plot_importance(explanation: Explanation, ax: Any, top: int = TOP_FEATURES) -> Any:
    """Horizontal bars of the top features' importance (signed for coefficients)."""
    table = explanation.importance.head(top)
    values = table["signed_value"].to_numpy()[::-1]
    ax.barh(range(len(table)), values, color=["#b2182b" if v >= 0 else "#2166ac" for v in values])
    ax.set_yticks(range(len(table)))
    ax.set_yticklabels(table["feature"].to_list()[::-1], fontsize=7)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel(explanation.method.replace("_", " "))
    ax.set_title(f"{explanation.model}: top features", fontsize=9)
    return ax


# the stage ---------------------------------------------------------------------------------
def explain_models(
    spec: StudySpec, fitted: dict[str, Any], data: StudyData, splits: pl.DataFrame
) -> dict[str, Any]:
    """An ``Explanation`` per model on the training cohort (see ``explain``)."""
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
