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
neuroCombat pool them across features within each batch; the location/scale model and the
adjustment are the published ones. The tests compare this step with combatlearn itself.

A batch level never seen in training (an external center) is refused (``external: refuse``,
``HarmonizationError`` naming the levels and the remedy) or, with ``external:
estimate_unlabeled``, its location and scale are estimated from its own features only (never
its labels) against the frozen training reference: for ``combat``, ComBat is fitted on the
harmonized training features (reference batch, left unchanged) plus that level's rows, and only
the new level's rows are transformed; for ``zscore_per_center`` the level is standardised by its
own mean and SD. ``unseen_levels`` tells the report which levels were treated so.
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
            if len(self.levels_) > 1:
                self.combat_ = self._combat(batch, disc, cont).fit(features)
                # the frozen training reference for levels never seen in training
                harmonized = self.combat_.transform(features)
                # the fitted state keeps parameters, not the rows' batch/covariate vectors
                self.combat_.set_params(
                    batch=None, discrete_covariates=None, continuous_covariates=None
                )
            else:  # one training level: nothing to remove in training, it is the reference
                self.combat_ = None
                harmonized = features
            self.reference_ = harmonized.reset_index(drop=True)
            self.reference_covariates_ = (
                None if covariates is None else covariates.reset_index(drop=True)
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
        n_ref = len(self.reference_)
        stacked = pd.concat([self.reference_, features.reset_index(drop=True)], ignore_index=True)
        batch = pd.Series([REFERENCE] * n_ref + [level] * len(features), index=stacked.index)
        both = None
        if covariates is not None:
            both = pd.concat(
                [self.reference_covariates_, covariates.reset_index(drop=True)], ignore_index=True
            )
        disc, cont = self._fill_covariates(both)
        combat = self._combat(batch, disc, cont, reference=REFERENCE).fit(stacked)
        adjusted = combat.transform(stacked).iloc[n_ref:]
        adjusted.index = features.index
        return adjusted

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
            else "a level never seen in training is mapped onto the frozen training reference "
            "with location/scale estimated from its own features only (no labels)"
        )
        return f"{what} by {self.batch}, fitted on the training cohort only; {external}"
