"""Feature pipeline and models of a classification study: one scikit-learn ``Pipeline`` per model.

Steps, all fitted on the training cohort only (they are inside the pipeline that
``GridSearchCV`` re-fits per fold, so cross-validation AUCs are not optimistic either):

1. ``impute``: median imputation (``SimpleImputer``)
2. ``variance``: ``VarianceThreshold(variance_min)`` on the imputed values, in each feature's own
   units (placed before scaling on purpose: after scaling every feature has variance 1, so the
   threshold would mean nothing; with the default 0.0 it removes constant features either way)
3. ``scale``: ``StandardScaler``
4. ``correlation``: ``CorrelationFilter(max_correlation)`` (see ``transformers``)
5. ``select``: ``LassoSelector`` | ``MRMRSelector`` | ``UnivariateSelector`` (see ``transformers``)
6. ``model``: the estimator

Models: ``logistic_regression`` (L2, lbfgs), ``svm`` (RBF ``SVC``), ``random_forest``,
``decision_tree``, ``xgboost`` (``XGBClassifier``, ``tree_method="hist"``, ``n_jobs=1``, fixed
``random_state``). Each is tuned by ``GridSearchCV`` (``StratifiedKFold(k, shuffle=True,
random_state=seed)``, scoring ``roc_auc``) on training only, over small default grids
(``DEFAULT_GRIDS``) that a study's ``grids:`` overrides per parameter. SVM probabilities: the SVC
is tuned on its decision function (AUC is rank-based, so the tuning is the same), then the final
step is ``CalibratedClassifierCV(SVC(best), method="sigmoid", ensemble=False)`` (Platt scaling on
out-of-fold decision values; scikit-learn 1.9 deprecates ``SVC(probability=True)``).

Folds (``training_cv``): k = min(study ``cv_folds`` (default 5), patients of the minority class in
the training cohort), the same k for every cross-validation of training: tuning, out-of-fold
probabilities, and the SVM's calibration. A stratified fold needs one patient of each class, so
with fewer minority patients than ``cv_folds`` the folds are reduced (a warning and a note,
``FittedModel.cv_note``, that reaches ``summary.json`` and the report) rather than failing; below
2 (or a single class) training stops with a ``StudyDataError`` naming the study, the class counts,
the development centers and the remedies. The SVM's calibration runs again inside every outer
fold (for its out-of-fold probabilities) on a smaller minority class, so it splits with
``CappedStratifiedKFold`` (k capped again by that fold's minority count) and the SVM needs at
least 3 minority patients in training. The LASSO's inner CV (3 folds) is capped the same way
(see ``transformers``).

The decision threshold of each model is Youden's J on its out-of-fold training probabilities
(``cross_val_predict`` on the same folds): apparent training probabilities of forests and boosted
trees are overfit and would put the threshold in the wrong place. Transformer fits are cached
(joblib ``Memory``) during a study so the five models share the preprocessing of each fold.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from assets.studies.metrics import youden_threshold
from assets.studies.spec import DEFAULT_CV_FOLDS, SelectionSpec, StudySpec, StudySpecError
from assets.studies.split import StudyDataError

log = logging.getLogger(__name__)

DEFAULT_GRIDS: dict[str, dict[str, list]] = {
    "logistic_regression": {"C": [0.01, 0.1, 1.0]},
    "svm": {"C": [0.1, 1.0, 10.0]},
    "random_forest": {"max_depth": [4, 8], "min_samples_leaf": [3]},
    "decision_tree": {"max_depth": [2, 3, 5], "min_samples_leaf": [10]},
    "xgboost": {"max_depth": [2, 3], "learning_rate": [0.05]},
}
CV_FOLDS = DEFAULT_CV_FOLDS  # default of the study's cv_folds


@dataclass
class FittedModel:
    """One tuned model: the pipeline refitted on all training patients, and how it was chosen."""

    name: str
    pipeline: Any
    best_params: dict[str, Any]
    cv_auc: float
    cv_auc_sd: float
    threshold: float
    oof_probability: np.ndarray
    selected_features: list[str] = field(default_factory=list)
    fit_seconds: float = 0.0
    cv_folds: int = CV_FOLDS  # folds actually used (see training_cv)
    cv_note: str | None = None  # why they are fewer than the study's cv_folds

    def predict_probability(self, X) -> np.ndarray:
        """Predicted probability of the positive class (label 1)."""
        return self.pipeline.predict_proba(X)[:, 1]


def make_estimator(model: str, seed: int) -> Any:
    """The untuned estimator of a model name (defaults that the grid then varies)."""
    if model == "logistic_regression":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=1.0, max_iter=5000)
    if model == "svm":
        from sklearn.svm import SVC

        return SVC(kernel="rbf", C=1.0, gamma="scale", random_state=seed)
    if model == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1)
    if model == "decision_tree":
        from sklearn.tree import DecisionTreeClassifier

        return DecisionTreeClassifier(random_state=seed)
    if model == "xgboost":
        from xgboost import XGBClassifier

        return XGBClassifier(
            n_estimators=200,
            learning_rate=0.05,
            max_depth=3,
            subsample=0.8,
            colsample_bytree=0.8,
            tree_method="hist",
            n_jobs=1,
            random_state=seed,
            eval_metric="logloss",
            verbosity=0,
        )
    raise ValueError(f"unknown model {model!r}")


def feature_steps(selection: SelectionSpec, seed: int) -> list[tuple[str, Any]]:
    """The preprocessing and selection steps (unfitted) for a selection spec."""
    from sklearn.feature_selection import VarianceThreshold
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import StandardScaler

    from assets.studies.transformers import (
        CorrelationFilter,
        LassoSelector,
        MRMRSelector,
        UnivariateSelector,
    )

    if selection.method == "lasso":
        selector = LassoSelector(
            C=selection.lasso_c, max_features=selection.n_features, random_state=seed
        )
    elif selection.method == "mrmr":
        selector = MRMRSelector(k=selection.k, random_state=seed)
    elif selection.method == "univariate":
        selector = UnivariateSelector(k=selection.k)
    else:
        raise ValueError(f"unknown selection method {selection.method!r}")
    return [
        ("impute", SimpleImputer(strategy="median")),
        ("variance", VarianceThreshold(threshold=selection.variance_min)),
        ("scale", StandardScaler()),
        ("correlation", CorrelationFilter(threshold=selection.max_correlation)),
        ("select", selector),
    ]


def build_pipeline(model: str, selection: SelectionSpec, seed: int, memory: Any = None) -> Any:
    """One unfitted ``Pipeline``: preprocessing, selection, then the model's estimator."""
    from sklearn.pipeline import Pipeline

    steps = [*feature_steps(selection, seed), ("model", make_estimator(model, seed))]
    return Pipeline(steps, memory=memory)


def param_grid(model: str, spec: StudySpec) -> dict[str, list]:
    """The tuning grid (``model__`` prefixed): defaults, overridden per parameter by the study."""
    grid = dict(DEFAULT_GRIDS[model])
    overrides = spec.grids.get(model, {})
    if overrides:
        allowed = make_estimator(model, spec.split.seed).get_params()
        for param in overrides:
            if param not in allowed:
                raise StudySpecError(
                    spec.source,
                    f"grids.{model}.{param}",
                    f"not a parameter of the {model} estimator; allowed: {sorted(allowed)}",
                )
        grid.update(overrides)
    return {f"model__{k}": list(v) for k, v in grid.items()}


@dataclass(frozen=True)
class TrainingCV:
    """The cross-validation of a training cohort: ``n_splits`` folds of ``configured``."""

    n_splits: int
    configured: int
    counts: tuple[int, int]  # training patients with label 0, with label 1
    note: str | None = None

    def splitter(self, seed: int) -> Any:
        from sklearn.model_selection import StratifiedKFold

        return StratifiedKFold(n_splits=self.n_splits, shuffle=True, random_state=seed)


def training_cv(spec: StudySpec, y: np.ndarray) -> TrainingCV:
    """k = min(``spec.cv_folds``, minority count of the training labels ``y``), or StudyDataError.

    Raises ``StudyDataError`` when k < 2 (a single class, or one patient of a class), and when
    the study has the SVM and fewer than 3 minority patients (its calibration is cross-validated
    again inside each outer training fold, which then holds a single minority patient).
    """
    counts = np.bincount(np.asarray(y, dtype=int), minlength=2)[:2]
    minority = int(counts.min())
    needed = 3 if "svm" in spec.models else 2
    if minority < needed:
        raise StudyDataError(_too_small_message(spec, counts, needed))
    n_splits = min(spec.cv_folds, minority)
    note = None
    if n_splits < spec.cv_folds:
        which = "positives" if counts[1] <= counts[0] else "negatives"
        value = 1 if which == "positives" else 0
        note = (
            f"{spec.name}: {spec.cv_folds}-fold CV reduced to {n_splits}-fold: the training cohort "
            f"has {minority} {which} ({spec.label}={value}; {int(counts.sum())} patients), and a "
            "stratified fold needs one of each class; tuning, out-of-fold thresholds and "
            "cross-validated AUCs rest on these few patients"
        )
    return TrainingCV(n_splits, spec.cv_folds, (int(counts[0]), int(counts[1])), note)


def _too_small_message(spec: StudySpec, counts: np.ndarray, needed: int) -> str:
    split = spec.split
    aside = (
        f", after setting aside internal_validation_fraction {split.internal_validation_fraction:g}"
        if split.internal_validation_fraction > 0
        else ""
    )
    cohort = (
        f"study {spec.name}: the training cohort (development center(s) "
        f"{', '.join(split.development_centers)}{aside}) has {counts[0]} patient(s) with "
        f"{spec.label}=0 and {counts[1]} with {spec.label}=1"
    )
    remedies = [
        "add patients (of the rarer class)",
        "use a larger development cohort (more split.development_centers)",
    ]
    if counts.min() == 0:
        reason = "only one class is present, so no model can be trained or cross-validated"
    elif counts.min() < 2:
        reason = (
            "stratified cross-validation (tuning, out-of-fold probabilities) needs at least 2 "
            "patients of each class in training"
        )
    else:
        reason = (
            f"the svm model needs at least {needed} of each class in training (its Platt "
            "calibration is cross-validated again inside every cross-validation fold)"
        )
        remedies.insert(0, "remove svm from models")
    if split.internal_validation_fraction > 0:
        remedies.append(
            "set split.internal_validation_fraction: 0 to train on every development patient "
            "(the cross-validated AUC then picks the best model)"
        )
    return f"{cohort}: {reason}. To fix: {'; or '.join(remedies)}"


def training_notes(fitted: dict[str, FittedModel]) -> list[str]:
    """The notes of a training run (reduced folds), once each; old pickles have none."""
    notes = [getattr(m, "cv_note", None) for m in fitted.values()]
    return list(dict.fromkeys(n for n in notes if n))


def fit_model(
    model: str, spec: StudySpec, X_train, y_train: np.ndarray, memory: Any = None, n_jobs: int = 1
) -> FittedModel:
    """Tune one model by CV on training, pick the threshold, refit on all training patients."""
    from sklearn.base import clone
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import GridSearchCV, cross_val_predict

    from assets.studies.transformers import CappedStratifiedKFold

    started = time.perf_counter()
    y = np.asarray(y_train, dtype=int)
    seed = spec.split.seed
    plan = training_cv(spec, y)
    folds = plan.splitter(seed)
    pipeline = build_pipeline(model, spec.selection, seed, memory=memory)
    search = GridSearchCV(
        pipeline,
        param_grid(model, spec),
        scoring="roc_auc",
        cv=folds,
        n_jobs=n_jobs,
        refit=False,
        error_score="raise",
    )
    search.fit(X_train, y)
    best_index = int(search.best_index_)
    best = clone(pipeline).set_params(**search.best_params_)
    if model == "svm":
        # Platt scaling of the tuned SVC on out-of-fold decision values: on all of training the
        # same folds as the tuning; inside an outer fold (cross_val_predict below) fewer when
        # that fold's training part has fewer minority patients than plan.n_splits
        best.set_params(
            model=CalibratedClassifierCV(
                best.named_steps["model"],
                method="sigmoid",
                ensemble=False,
                cv=CappedStratifiedKFold(plan.n_splits, random_state=seed),
            )
        )
    oof = cross_val_predict(best, X_train, y, cv=folds, method="predict_proba", n_jobs=n_jobs)[:, 1]
    best.fit(X_train, y)
    try:
        selected = [str(n) for n in best[:-1].get_feature_names_out()]
    except (AttributeError, ValueError):
        selected = []
    return FittedModel(
        name=model,
        pipeline=best,
        best_params={k.removeprefix("model__"): v for k, v in search.best_params_.items()},
        cv_auc=float(search.cv_results_["mean_test_score"][best_index]),
        cv_auc_sd=float(search.cv_results_["std_test_score"][best_index]),
        threshold=youden_threshold(y, oof),
        oof_probability=oof,
        selected_features=selected,
        fit_seconds=time.perf_counter() - started,
        cv_folds=plan.n_splits,
        cv_note=plan.note,
    )


def fit_models(
    spec: StudySpec, X_train, y_train: np.ndarray, n_jobs: int = 1, cache_dir: str | None = None
) -> dict[str, FittedModel]:
    """Fit every model of the study; the fold preprocessing is cached and shared between them.

    Checks the training cohort first (``training_cv``: a ``StudyDataError`` before any fit) and
    logs a warning when the folds are reduced.
    """
    import tempfile

    from joblib import Memory

    plan = training_cv(spec, np.asarray(y_train, dtype=int))
    if plan.note:
        log.warning(plan.note)
    with tempfile.TemporaryDirectory(prefix="radlake-study-cache-", dir=cache_dir) as tmp:
        memory = Memory(location=tmp, verbose=0)
        fitted = {m: fit_model(m, spec, X_train, y_train, memory, n_jobs) for m in spec.models}
        for model in fitted.values():
            # the cache folder disappears with this block: fitted pipelines must not point at it
            model.pipeline.memory = None
    return fitted


_LOWER_IS_BETTER = {"brier"}


def select_best_model(
    metrics: Any, fitted: dict[str, FittedModel], spec: StudySpec
) -> tuple[str, str]:
    """The best radiomics model by the study's rule; returns (model name, rule as applied).

    ``metrics`` is the tidy metrics frame (polars) of the radiomics models. With
    ``internal_validation_fraction: 0`` an ``internal_validation`` rule falls back to the
    cross-validated training AUC. Ties go to the earlier model in the study's ``models`` list.
    """
    rule = spec.best_model
    cohort = rule.cohort
    if cohort == "internal_validation" and spec.split.internal_validation_fraction == 0:
        cohort = "cv"
    if cohort == "cv":
        scores = {name: f.cv_auc for name, f in fitted.items()}
        described = "highest cross-validated training AUC (GridSearchCV, best parameters)"
        if cohort != rule.cohort:
            described += " (internal_validation_fraction is 0, so no internal validation cohort)"
        metric_sign = 1.0
    else:
        import polars as pl

        rows = metrics.filter((pl.col("cohort") == cohort) & (pl.col("metric") == rule.metric))
        scores = {
            r["model"]: r["value"] for r in rows.iter_rows(named=True) if r["model"] in fitted
        }
        if not scores:
            raise StudyDataError(
                f"study {spec.name}: no {rule.metric} on cohort {cohort} to choose the best model "
                "by (best_model.cohort names a cohort this study does not have)"
            )
        metric_sign = -1.0 if rule.metric in _LOWER_IS_BETTER else 1.0
        direction = "lowest" if metric_sign < 0 else "highest"
        described = f"{direction} {rule.metric} on the {cohort} cohort"
    order = [m for m in spec.models if scores.get(m) is not None and np.isfinite(scores[m])]
    if not order:
        raise StudyDataError(
            f"study {spec.name}: every model has an undefined {rule.metric} on the {cohort} cohort "
            "(e.g. it has patients of one class only), so no best model can be chosen by it: "
            "choose best_model by another cohort or metric (cohort: cv, the cross-validated "
            "training AUC, is always defined), or add patients of the missing class"
        )
    best = max(order, key=lambda m: (metric_sign * scores[m], -order.index(m)))
    return best, described
