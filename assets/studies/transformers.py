"""Custom scikit-learn steps of the study feature pipeline: correlation filter and selectors.

This module imports scikit-learn at top level (its classes must subclass sklearn's bases and be
importable for joblib). Other study modules import it only inside functions, so loading the
Dagster code location does not pay for scikit-learn.

All steps are fitted on the training cohort only (they live inside the ``Pipeline``):

- ``CorrelationFilter(threshold)``: Pearson |r| on the training rows; features are visited in
  column order and a feature is kept when its |r| with every already kept feature is <=
  ``threshold`` (greedy, label-free: of a correlated pair the earlier column survives).
- ``LassoSelector``: L1-penalised logistic regression (liblinear) on the label; the inverse
  penalty C is fixed (``C``) or chosen by stratified 3-fold CV (inside the training data of each
  fit) minimising the mean log loss (glmnet's default ``lambda.min`` criterion, "deviance") over
  6 values log-spaced from 10**0.1 to 10**1.5 times ``l1_min_c`` (the C at which the first
  feature enters; larger C are slow with liblinear and keep hundreds of features). Features with a non-zero
  coefficient are kept (optionally the ``max_features`` largest |coef|). When the penalty zeroes
  every coefficient, the single feature with the largest ANOVA F statistic is kept
  (``fallback_ = True``) so the model downstream still has an input.
- ``MRMRSelector(k)``: minimum-redundancy maximum-relevance, MID scheme (Peng, Long & Ding, IEEE
  TPAMI 2005): relevance = mutual information with the label (``mutual_info_classif``, k-NN
  estimator, seeded); redundancy = mean |Pearson r| with the features already selected; greedy:
  first the most relevant, then repeatedly the feature maximising relevance - redundancy.
- ``UnivariateSelector(k)``: the ``k`` features with the largest ANOVA F (``f_classif``), exactly
  ``SelectKBest(f_classif, k)`` but with ``k`` capped at the features that reach the step.

The LASSO's inner CV uses at most as many folds as the minority class of the data it is fitted on
has patients (``cv_splits_``); inside a cross-validation fold of a tiny cohort that may be fewer
than 2, and then no CV is possible and the largest candidate C (weakest penalty) is used
(``cv_splits_ = 0``). ``CappedStratifiedKFold`` is the splitter of nested cross-validations (the
SVM's Platt calibration re-run inside every outer fold): ``StratifiedKFold(k, shuffle=True)``
with ``k = min(max_splits, minority count of the labels it splits)``, so a training fold of a
small cohort gets fewer inner folds instead of a scikit-learn error; on a set whose minority
count is >= ``max_splits`` it gives exactly ``StratifiedKFold(max_splits)``'s folds.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.feature_selection import SelectorMixin, f_classif, mutual_info_classif
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.validation import check_is_fitted, validate_data


def minority_count(y, cap: int | None = None) -> int:
    """Patients of the smaller of the two classes in ``y`` (0 with a single class), at most ``cap``."""
    counts = np.unique(np.asarray(y), return_counts=True)[1]
    count = int(counts.min()) if len(counts) >= 2 else 0
    return count if cap is None else min(int(cap), count)


class CappedStratifiedKFold:
    """Shuffled, seeded ``StratifiedKFold`` with k = min(``max_splits``, minority count of ``y``).

    No ``n_splits`` attribute on purpose: ``CalibratedClassifierCV`` would compare it with the
    class counts of the (smaller) outer training fold before splitting.
    """

    def __init__(self, max_splits: int = 5, random_state: int | None = 0):
        self.max_splits = max_splits
        self.random_state = random_state

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        return self.max_splits if y is None else minority_count(y, self.max_splits)

    def split(self, X, y, groups=None):
        n_splits = minority_count(y, self.max_splits)
        if n_splits < 2:
            raise ValueError(
                f"stratified cross-validation needs at least 2 patients of each class, got "
                f"class counts {np.unique(np.asarray(y), return_counts=True)[1].tolist()}"
            )
        folds = StratifiedKFold(n_splits, shuffle=True, random_state=self.random_state)
        yield from folds.split(X, y)

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(max_splits={self.max_splits}, random_state={self.random_state})"


def _abs_correlation(X: np.ndarray) -> np.ndarray:
    """|Pearson r| between columns; constant columns correlate 0 with everything."""
    centered = X - X.mean(axis=0)
    norms = np.sqrt((centered**2).sum(axis=0))
    norms[norms == 0] = np.inf
    unit = centered / norms
    return np.abs(unit.T @ unit)


class CorrelationFilter(SelectorMixin, BaseEstimator):
    """Drop features whose |r| with an earlier kept feature exceeds ``threshold`` (None: keep)."""

    def __init__(self, threshold: float | None = 0.9):
        self.threshold = threshold

    def fit(self, X, y=None):
        X = validate_data(self, X, dtype=np.float64)
        p = X.shape[1]
        if self.threshold is None or self.threshold >= 1.0 or p <= 1:
            self.support_ = np.ones(p, dtype=bool)
            return self
        corr = _abs_correlation(X)
        keep = np.zeros(p, dtype=bool)
        for j in range(p):
            # a feature survives when it is not too close to any feature kept before it
            if not keep.any() or corr[j, keep].max() <= self.threshold:
                keep[j] = True
        self.support_ = keep
        return self

    def _get_support_mask(self):
        check_is_fitted(self, "support_")
        return self.support_


class LassoSelector(SelectorMixin, BaseEstimator):
    """Features with a non-zero L1-logistic coefficient; C fixed or chosen by stratified CV."""

    def __init__(
        self,
        C: float | None = None,
        n_cs: int = 6,
        decades: tuple[float, float] = (0.1, 1.5),
        cv: int = 3,
        max_features: int | None = None,
        random_state: int = 0,
    ):
        self.C = C
        self.n_cs = n_cs
        self.decades = decades
        self.cv = cv
        self.max_features = max_features
        self.random_state = random_state

    def candidate_cs(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Inverse penalties from just above the first-feature-enters C up 10**decades[1] times it."""
        from sklearn.svm import l1_min_c

        return l1_min_c(X, y, loss="log") * np.logspace(*self.decades, self.n_cs)

    def _model(self, C: float) -> LogisticRegression:
        return LogisticRegression(
            C=C, l1_ratio=1.0, solver="liblinear", max_iter=1000, random_state=self.random_state
        )

    def _choose_c(self, X: np.ndarray, y: np.ndarray) -> float:
        cs = self.candidate_cs(X, y)
        self.cs_ = cs
        n_splits = minority_count(y, self.cv)
        self.cv_splits_ = n_splits if n_splits >= 2 else 0
        if n_splits < 2:
            return float(cs[-1])
        folds = StratifiedKFold(n_splits, shuffle=True, random_state=self.random_state)
        losses = np.zeros(len(cs))
        for train, test in folds.split(X, y):
            for i, C in enumerate(cs):
                prob = self._model(C).fit(X[train], y[train]).predict_proba(X[test])[:, 1]
                prob = np.clip(prob, 1e-12, 1 - 1e-12)
                yt = y[test]
                losses[i] -= np.mean(yt * np.log(prob) + (1 - yt) * np.log(1 - prob))
        return float(cs[int(np.argmin(losses))])

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64)
        y = np.asarray(y).astype(int)
        self.C_ = float(self.C) if self.C is not None else self._choose_c(X, y)
        coef = self._model(self.C_).fit(X, y).coef_.ravel()
        self.coef_ = coef
        support = np.abs(coef) > 1e-10
        if self.max_features is not None and support.sum() > self.max_features:
            order = np.argsort(-np.abs(coef), kind="stable")[: self.max_features]
            support = np.zeros_like(support)
            support[order] = True
        self.fallback_ = not support.any()
        if self.fallback_:
            scores = np.nan_to_num(f_classif(X, y)[0], nan=-np.inf)
            support[int(np.argmax(scores))] = True
        self.support_ = support
        return self

    def _get_support_mask(self):
        check_is_fitted(self, "support_")
        return self.support_


class MRMRSelector(SelectorMixin, BaseEstimator):
    """mRMR (MID): mutual-information relevance minus mean |r| redundancy, greedy, ``k`` features."""

    def __init__(self, k: int = 10, random_state: int = 0):
        self.k = k
        self.random_state = random_state

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64)
        p = X.shape[1]
        k = min(self.k, p)
        relevance = mutual_info_classif(X, y, random_state=self.random_state)
        corr = _abs_correlation(X)
        selected = [int(np.argmax(relevance))]
        redundancy_sum = corr[selected[0]].copy()
        available = np.ones(p, dtype=bool)
        available[selected[0]] = False
        while len(selected) < k:
            score = relevance - redundancy_sum / len(selected)
            score[~available] = -np.inf
            best = int(np.argmax(score))
            selected.append(best)
            available[best] = False
            redundancy_sum += corr[best]
        self.relevance_ = relevance
        self.selected_order_ = np.array(selected)
        support = np.zeros(p, dtype=bool)
        support[selected] = True
        self.support_ = support
        return self

    def _get_support_mask(self):
        check_is_fitted(self, "support_")
        return self.support_


class UnivariateSelector(SelectorMixin, BaseEstimator):
    """``SelectKBest(f_classif, k)`` with ``k`` capped at the number of incoming features."""

    def __init__(self, k: int = 10):
        self.k = k

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64)
        self.scores_, self.pvalues_ = f_classif(X, y)
        k = min(self.k, X.shape[1])
        scores = np.nan_to_num(self.scores_, nan=-np.inf)
        # same ordering rule as SelectKBest: stable sort, the k last (largest) scores
        support = np.zeros(X.shape[1], dtype=bool)
        support[np.argsort(scores, kind="mergesort")[X.shape[1] - k :]] = True
        self.support_ = support
        return self

    def _get_support_mask(self):
        check_is_fitted(self, "support_")
        return self.support_
