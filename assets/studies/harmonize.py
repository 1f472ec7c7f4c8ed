"""Stage "harmonize": batch-effect harmonization as the first step of every study pipeline.

``Harmonizer`` is a scikit-learn transformer, so it is fitted inside the same ``Pipeline`` that
``GridSearchCV`` and the (nested) cross-validation refit per fold: on training rows only. Its
input is the study's feature frame plus the batch column (``center_id`` or an imaging_series
field such as ``manufacturer``) and the ComBat covariates; its output is the harmonized
features only. ``fit`` never receives the labels (``y`` is ignored), and no covariate may be the
label (the study spec refuses it).

Methods:

- ``combat``: ComBat with neuroCombat-style covariates (Fortin et al. 2018), parametric empirical
  Bayes, through the maintained scikit-learn transformer ``combatlearn.ComBat`` (method
  ``fortin``). The features are first median-imputed with training medians (ComBat needs finite
  values); missing covariates take the training median (numeric) or ``missing`` (categorical).
- ``zscore_per_center``: the simple baseline: each batch level is standardised by the mean and
  standard deviation of its own training rows (ddof 1; a constant feature keeps SD 1).

With a single training level (one development center) training has no batch effect to remove
and is itself the reference: training rows pass unchanged (combatlearn cannot fit one batch).
Note on the library: combatlearn 2.3.0 estimates the empirical-Bayes hyperpriors of each
feature across batches (``gamma_hat.mean(axis=0)``), where Johnson et al. 2007 and Fortin's
neuroCombat pool them across features within each batch; with two batches (a reference and one
new center) that shrinks a small shift by up to a half. Levels seen in training go through
combatlearn (tested against it); a level never seen in training is mapped onto the frozen
reference with the published estimator (``_map_onto_reference``, tested against neuroCombat).

A batch level never seen in training (an external center) is refused (``external: refuse``,
``HarmonizationError`` naming the levels and the remedy) or, with ``external:
estimate_unlabeled``, its location and scale are estimated from its own features only (never
its labels) against the frozen training reference: for ``combat``, the harmonized training
features are the reference batch (left unchanged) and the new level's rows are adjusted to it
by ComBat's location/scale model with empirical-Bayes shrinkage (Johnson et al. 2007); for
``zscore_per_center`` the level is standardised by its own mean and SD. ``unseen_levels`` tells the report which levels were treated so.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

REFERENCE = "__training_reference__"
METHODS = ("combat", "zscore_per_center")


class HarmonizationError(ValueError):
    """A batch level that cannot be harmonized (not in training, too few rows)."""


class Harmonizer(BaseEstimator, TransformerMixin):
    """Fit on training rows; ``X`` holds the features plus ``batch`` and ``covariates`` columns."""

    def __init__(
        self,
        method: str = "combat",
        batch: str = "center_id",
        covariates: tuple[str, ...] = (),
        external: str = "refuse",
    ):
        self.method = method
        self.batch = batch
        self.covariates = covariates
        self.external = external

    # helpers ---------------------------------------------------------------------------------
    def _split(self, X: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame | None]:
        if not isinstance(X, pd.DataFrame) or self.batch not in X.columns:
            raise HarmonizationError(
                f"harmonization needs a frame with the batch column {self.batch!r}"
            )
        extra = [self.batch, *self.covariates]
        features = X.drop(columns=extra).astype(np.float64)
        batch = X[self.batch].astype("string").fillna("missing").astype(str)
        covariates = X[list(self.covariates)].copy() if self.covariates else None
        return features, batch, covariates

    def _fill_covariates(self, covariates: pd.DataFrame | None) -> tuple[object, object]:
        """(discrete, continuous) covariate frames with training fills, or Nones."""
        if covariates is None:
            return None, None
        discrete, continuous = [], []
        for column in covariates.columns:
            fill = self.covariate_fills_[column]
            if column in self.continuous_covariates_:
                values = pd.to_numeric(covariates[column], errors="coerce").fillna(fill)
                continuous.append(values.astype(np.float64).rename(column))
            else:
                discrete.append(covariates[column].astype("string").fillna(fill).rename(column))
        disc = pd.concat(discrete, axis=1) if discrete else None
        cont = pd.concat(continuous, axis=1) if continuous else None
        return disc, cont

    def _combat(self, batch: pd.Series, disc, cont, reference: str | None = None):
        from combatlearn import ComBat

        return ComBat(
            batch=batch,
            discrete_covariates=disc,
            continuous_covariates=cont,
            method="fortin",
            reference_batch=reference,
        )

    # fit / transform ---------------------------------------------------------------------
    def fit(self, X, y=None):  # noqa: ARG002 - y is ignored on purpose (never the labels)
        if self.method not in METHODS:
            raise HarmonizationError(f"unknown harmonization method {self.method!r}")
        features, batch, covariates = self._split(X)
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        self.features_ = list(features.columns)
        self.n_features_in_ = X.shape[1]
        self.medians_ = features.median().fillna(0.0)
        features = features.fillna(self.medians_)
        counts = batch.value_counts()
        small = sorted(counts[counts < 2].index)
        if small:
            raise HarmonizationError(
                f"{self.batch} level(s) {small} have fewer than 2 training patients: "
                "harmonization cannot estimate their location and scale"
            )
        self.levels_ = sorted(counts.index)
        self.continuous_covariates_, self.covariate_fills_ = [], {}
        for column in self.covariates:
            values = covariates[column]
            numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(
                values
            )
            if numeric:
                self.continuous_covariates_.append(column)
                self.covariate_fills_[column] = float(pd.to_numeric(values).median())
            else:
                self.covariate_fills_[column] = "missing"
        if self.method == "combat":
            disc, cont = self._fill_covariates(covariates)
            self.combat_ = None  # one training level: nothing to remove, it is the reference
            if len(self.levels_) > 1:
                self.combat_ = self._combat(batch, disc, cont).fit(features)
                # the fitted state keeps parameters, not the rows' batch/covariate vectors
                self.combat_.set_params(
                    batch=None, discrete_covariates=None, continuous_covariates=None
                )
            # the frozen training reference for levels never seen in training (only kept when
            # they are to be estimated: it holds the harmonized training features)
            self.reference_ = self.reference_covariates_ = None
            self.reference_levels_ = {}
            if self.external == "estimate_unlabeled":
                harmonized = (
                    features
                    if self.combat_ is None
                    else self._transform_seen(features, batch, covariates)
                )
                self.reference_ = harmonized.reset_index(drop=True)
                self.reference_covariates_ = (
                    None if covariates is None else covariates.reset_index(drop=True)
                )
                disc, _ = self._fill_covariates(self.reference_covariates_)
                self.reference_levels_ = (
                    {c: sorted(disc[c].unique()) for c in disc.columns} if disc is not None else {}
                )
        else:
            grouped = features.groupby(batch.to_numpy())
            self.means_ = grouped.mean()
            self.sds_ = grouped.std(ddof=1).replace(0.0, 1.0).fillna(1.0)
        return self

    def unseen_levels(self, X) -> list[str]:
        """Batch levels of ``X`` that were not in training."""
        batch = X[self.batch].astype("string").fillna("missing").astype(str)
        return sorted(set(batch) - set(self.levels_))

    def transform(self, X):
        features, batch, covariates = self._split(X)
        features = features[self.features_].fillna(self.medians_)
        unseen = sorted(set(batch) - set(self.levels_))
        if unseen and self.external != "estimate_unlabeled":
            raise HarmonizationError(
                f"{self.batch} level(s) {unseen} were never seen in training (training levels: "
                f"{self.levels_}); harmonization.external is 'refuse'. To fix: set "
                "harmonization.external: estimate_unlabeled (each new level's location and scale "
                "estimated from its own features, never its labels), or harmonization.method: none"
            )
        out = pd.DataFrame(index=features.index, columns=self.features_, dtype=np.float64)
        seen = ~batch.isin(unseen).to_numpy()
        if seen.any():
            out.loc[seen] = self._transform_seen(
                features[seen], batch[seen], None if covariates is None else covariates[seen]
            ).to_numpy()
        for level in unseen:
            rows = (batch == level).to_numpy()
            part = None if covariates is None else covariates[rows]
            out.loc[rows] = self._transform_new_level(level, features[rows], part).to_numpy()
        return out

    def _transform_seen(self, features, batch, covariates) -> pd.DataFrame:
        if self.method == "combat" and self.combat_ is None:
            return features
        if self.method == "combat":
            disc, cont = self._fill_covariates(covariates)
            # a shallow copy carries this call's rows: the fitted state is never changed
            combat = copy.copy(self.combat_).set_params(
                batch=batch, discrete_covariates=disc, continuous_covariates=cont
            )
            return combat.transform(features)
        means = self.means_.loc[batch.to_numpy()].to_numpy()
        sds = self.sds_.loc[batch.to_numpy()].to_numpy()
        return (features - means) / sds

    def _transform_new_level(self, level: str, features, covariates) -> pd.DataFrame:
        """A level never seen in training, from its own features only (never its labels)."""
        if len(features) < 2:
            raise HarmonizationError(
                f"{self.batch} level {level!r} has {len(features)} patient(s): at least 2 are "
                "needed to estimate its location and scale (estimate_unlabeled)"
            )
        if self.method == "zscore_per_center":
            sd = features.std(ddof=1).replace(0.0, 1.0).fillna(1.0)
            return (features - features.mean()) / sd
        return self._map_onto_reference(features, covariates)

    def _design(self, covariates: pd.DataFrame | None, n: int) -> np.ndarray:
        """Intercept + covariates (numeric as is, categorical one-hot on reference levels)."""
        columns = [np.ones(n)]
        if covariates is not None:
            disc, cont = self._fill_covariates(covariates)
            if cont is not None:
                columns += [cont[c].to_numpy(np.float64) for c in cont.columns]
            if disc is not None:
                for c in disc.columns:
                    levels = self.reference_levels_[c]
                    columns += [(disc[c].to_numpy() == lv).astype(np.float64) for lv in levels[1:]]
        return np.column_stack(columns)

    def _map_onto_reference(self, features: pd.DataFrame, covariates) -> pd.DataFrame:
        """ComBat of one new batch against the frozen training reference (Johnson et al. 2007).

        Location/scale model fitted on the reference rows only (intercept + covariates, pooled
        variance /n as neuroCombat); the new rows standardised by it; their gamma/delta with the
        parametric empirical-Bayes priors pooled across features (Johnson 2007; neuroCombat's
        ``it_sol``, same convergence rule); reference rows stay unchanged. Without covariates
        this is neuroCombat's ``ref_batch`` adjustment of that batch exactly (tested).
        """
        reference = self.reference_.to_numpy(np.float64)
        ref_cov = self.reference_covariates_
        design_ref = self._design(ref_cov, len(reference))
        beta = np.linalg.lstsq(design_ref, reference, rcond=None)[0]
        var_pooled = ((reference - design_ref @ beta) ** 2).mean(axis=0)
        var_pooled = np.where(var_pooled == 0, 1.0, var_pooled)
        x = features.to_numpy(np.float64)
        stand = self._design(covariates, len(x)) @ beta
        s = (x - stand) / np.sqrt(var_pooled)
        gamma_hat = s.mean(axis=0)
        delta_hat = s.var(axis=0, ddof=1)
        delta_hat = np.where(delta_hat == 0, 1.0, delta_hat)
        g_old, d_old = gamma_hat.copy(), delta_hat.copy()
        if len(gamma_hat) >= 2 and gamma_hat.var(ddof=1) > 0 and delta_hat.var(ddof=1) > 0:
            gamma_bar, t2 = gamma_hat.mean(), gamma_hat.var(ddof=1)
            m, v = delta_hat.mean(), delta_hat.var(ddof=1)
            a, b = (2 * v + m**2) / v, (m * v + m**3) / v
            n = len(x)
            change, iterations = 1.0, 0
            with np.errstate(divide="ignore", invalid="ignore"):
                while change > 1e-4 and iterations < 1000:  # neuroCombat's rule, bounded
                    g_new = (t2 * n * gamma_hat + d_old * gamma_bar) / (t2 * n + d_old)
                    sum2 = ((s - g_new) ** 2).sum(axis=0)
                    d_new = (0.5 * sum2 + b) / (n / 2.0 + a - 1.0)
                    change = max(
                        (np.abs(g_new - g_old) / g_old).max(),
                        (np.abs(d_new - d_old) / d_old).max(),
                    )
                    g_old, d_old, iterations = g_new, d_new, iterations + 1
        # else (one feature, or no spread to pool): the plain location/scale estimates
        adjusted = (s - g_old) / np.sqrt(d_old) * np.sqrt(var_pooled) + stand
        return pd.DataFrame(adjusted, index=features.index, columns=features.columns)

    def get_feature_names_out(self, input_features=None):
        return np.asarray(self.features_, dtype=object)

    def describe(self) -> str:
        """One sentence for the report: what was fitted where."""
        what = (
            "ComBat (combatlearn, Fortin et al. 2018 with covariates "
            f"{list(self.covariates)}, parametric empirical Bayes)"
            if self.method == "combat"
            else "per-level z-scoring (training mean and SD of each level)"
        )
        external = (
            "levels never seen in training are refused"
            if self.external == "refuse"
            else "a level never seen in training is mapped onto the frozen training reference by "
            "ComBat's location/scale model with empirical-Bayes priors pooled across features "
            "(Johnson et al. 2007), estimated from its own features only (no labels)"
        )
        return f"{what} by {self.batch}, fitted on the training cohort only; {external}"
