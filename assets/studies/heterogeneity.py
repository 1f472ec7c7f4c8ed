"""Between-center heterogeneity of external validation, and per-center recalibration.

- ``random_effects(estimates, variances)``: DerSimonian-Laird random-effects meta-analysis
  (DerSimonian & Laird 1986): Cochran's Q, tau^2 (method of moments, truncated at 0),
  I^2 = max(0, (Q - df) / Q) (Higgins & Thompson 2002), the pooled estimate with its Wald 95% CI.
- ``auc_heterogeneity_rows``: per model, the external centers' AUCs pooled on the logit scale
  (variance: DeLong's, by the delta method var(logit A) = var(A) / (A (1 - A))^2), as
  ``model_metrics`` rows on cohort ``external_validation``: ``auc_pooled_random_effects`` (back
  on the AUC scale, CI too), ``auc_i2``, ``auc_tau2`` (logit scale), ``auc_q_p``.
  Calibration-in-the-large per center is in the ``calibration_intercept`` rows of each
  ``external_validation:<center>`` cohort (calibration stage) and pooled the same way there.
- ``recalibration_rows``: optional (``validation.recalibrate_external``): on each external
  center, logistic recalibration p' = expit(a + b logit p) fitted on that center (Steyerberg,
  Clinical Prediction Models, ch. 20) and the Brier score before and after, reported beside the
  untouched model (which is never replaced).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import polars as pl

from assets.studies.metrics import METRICS_SCHEMA, _row, delong_variance


def random_effects(estimates: Sequence[float], variances: Sequence[float]) -> dict[str, float]:
    """DerSimonian-Laird pooled estimate, its SE and 95% CI, Q, its p-value, tau^2 and I^2."""
    from scipy.stats import chi2, norm

    y = np.asarray(estimates, dtype=np.float64)
    v = np.asarray(variances, dtype=np.float64)
    k = len(y)
    w = 1.0 / v
    fixed = float(np.sum(w * y) / np.sum(w))
    q = float(np.sum(w * (y - fixed) ** 2))
    df = k - 1
    c = float(np.sum(w) - np.sum(w**2) / np.sum(w))
    tau2 = max(0.0, (q - df) / c) if c > 0 else 0.0
    w_star = 1.0 / (v + tau2)
    pooled = float(np.sum(w_star * y) / np.sum(w_star))
    se = float(math.sqrt(1.0 / np.sum(w_star)))
    z = float(norm.ppf(0.975))
    return {
        "pooled": pooled,
        "se": se,
        "ci_low": pooled - z * se,
        "ci_high": pooled + z * se,
        "q": q,
        "q_p": float(chi2.sf(q, df)) if df > 0 else math.nan,
        "tau2": tau2,
        "i2": max(0.0, (q - df) / q) if q > 0 else 0.0,
        "k": float(k),
    }


def _logit(x: float) -> float:
    return math.log(x / (1 - x))


def _expit(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _centers(predictions: pl.DataFrame) -> list[str]:
    external = predictions.filter(pl.col("cohort") == "external_validation")
    return sorted(external["center_id"].unique().to_list()) if len(external) else []


def auc_heterogeneity_rows(
    predictions: pl.DataFrame, *, study: str, model_version: str
) -> pl.DataFrame:
    """Random-effects pooling of the external centers' logit AUCs, per model (2+ centers)."""
    centers = _centers(predictions)
    rows: list[dict] = []
    if len(centers) < 2:
        return pl.DataFrame(rows, schema=METRICS_SCHEMA)
    external = predictions.filter(pl.col("cohort") == "external_validation")
    for model in dict.fromkeys(external["model"].to_list()):
        estimates, variances, n, n_pos = [], [], 0, 0
        for center in centers:
            part = external.filter((pl.col("model") == model) & (pl.col("center_id") == center))
            y = part["label"].to_numpy().astype(int)
            if y.min(initial=1) == y.max(initial=0):
                continue  # one class only: no AUC at this center
            auc, var = delong_variance(y, part["probability"].to_numpy())
            if not 0 < auc < 1 or var <= 0:
                continue  # perfect separation: the logit is infinite
            estimates.append(_logit(auc))
            variances.append(var / (auc * (1 - auc)) ** 2)
            n, n_pos = n + len(y), n_pos + int(y.sum())
        if len(estimates) < 2:
            continue
        fit = random_effects(estimates, variances)
        method = "dersimonian_laird_logit_auc"
        for metric, value, low, high in (
            (
                "auc_pooled_random_effects",
                _expit(fit["pooled"]),
                _expit(fit["ci_low"]),
                _expit(fit["ci_high"]),
            ),
            ("auc_i2", fit["i2"], None, None),
            ("auc_tau2", fit["tau2"], None, None),
            ("auc_q_p", fit["q_p"], None, None),
        ):
            rows.append(
                _row(
                    study,
                    model_version,
                    model,
                    "external_validation",
                    metric,
                    value,
                    low,
                    high,
                    method,
                    n,
                    n_pos,
                )
            )
    return pl.DataFrame(rows, schema=METRICS_SCHEMA)


def recalibration_rows(
    predictions: pl.DataFrame, *, study: str, model_version: str
) -> pl.DataFrame:
    """Per external center and model: recalibration intercept/slope and Brier before/after."""
    from assets.studies.calibration import _logit as logit_array
    from assets.studies.calibration import _sigmoid, logistic_newton

    rows: list[dict] = []
    external = predictions.filter(pl.col("cohort") == "external_validation")
    for center in _centers(predictions):
        cohort = f"external_validation:{center}"
        for model in dict.fromkeys(external["model"].to_list()):
            part = external.filter((pl.col("model") == model) & (pl.col("center_id") == center))
            y = part["label"].to_numpy().astype(np.float64)
            p = part["probability"].to_numpy().astype(np.float64)
            if len(y) < 3 or y.min() == y.max():
                continue
            lp = logit_array(p)
            beta, _, _ = logistic_newton(np.column_stack([np.ones(len(y)), lp]), y)
            updated = _sigmoid(beta[0] + beta[1] * lp)
            n, n_pos = len(y), int(y.sum())
            method = "logistic_recalibration_on_center"
            for metric, value in (
                ("recalibration_intercept", beta[0]),
                ("recalibration_slope", beta[1]),
                ("brier_untouched", float(np.mean((p - y) ** 2))),
                ("brier_recalibrated", float(np.mean((updated - y) ** 2))),
            ):
                rows.append(
                    _row(
                        study,
                        model_version,
                        model,
                        cohort,
                        metric,
                        value,
                        None,
                        None,
                        method,
                        n,
                        n_pos,
                    )
                )
    return pl.DataFrame(rows, schema=METRICS_SCHEMA)
