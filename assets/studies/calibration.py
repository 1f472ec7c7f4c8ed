"""Calibration and decision curve analysis per model x cohort: tables and plots.

- Calibration curve: patients grouped by deciles of predicted probability (quantile bins,
  ``numpy.quantile`` linear = R type 7, right-closed bins, ties kept together); per bin the mean
  predicted probability, the observed event rate and its Wilson 95% interval. Small cohorts get
  fewer bins (about 15 patients per bin, at least 3) so each point means something.
- Calibration slope and intercept (logistic recalibration; Steyerberg, *Clinical Prediction
  Models*, ch. 15): with L = logit(p), the slope is b in logit P(y=1) = a + b L, and the
  calibration intercept ("calibration-in-the-large") is a in logit P(y=1) = a + 1 * L (L as an
  offset, slope fixed at 1). Both are maximum-likelihood fits by Newton-Raphson (a few
  iterations; Wald standard errors from the inverse information). Ideal: slope 1, intercept 0.
- Hosmer-Lemeshow: g = 10 groups by quantiles of p (as R ``ResourceSelection::hoslem.test``:
  breaks ``quantile(p, seq(0, 1, 1/g))``, ``include.lowest``), statistic = sum over groups and
  both outcomes of (O - E)^2 / E, p from chi-square with df = g - 2 on the training cohort (the
  model was fitted there) and df = g on validation cohorts (the predictions are fixed in advance;
  Hosmer & Lemeshow, Applied Logistic Regression, 3rd ed., sec. 5.2.2) (if tied probabilities
  merge breaks, g is the number of distinct groups).
- Under complete or quasi-complete separation (the logits of the two classes do not overlap)
  the calibration slope has no finite maximum-likelihood estimate: it is reported "not
  estimable" (value and CI null, ``ci_method`` ``not_estimable_separation``), never a number
  with a zero-width CI.
- Decision curve analysis (Vickers & Elkin, Med Decis Making 2006): at threshold pt in
  0.01..0.99, net benefit = TP/n - FP/n * pt/(1 - pt) treating patients with p >= pt;
  treat-all = prevalence - (1 - prevalence) * pt/(1 - pt); treat-none = 0.

Stage 5: ``calibrate_study`` (asset ``calibration``) takes the evaluation's predictions;
``dca_table`` (asset ``decision_curves``) the same predictions.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from assets.studies.ci_flags import interval_flag
from assets.studies.metrics import METRICS_SCHEMA, metric_cohorts, with_harmonization

if TYPE_CHECKING:
    from assets.studies.spec import StudySpec

DCA_THRESHOLDS = np.round(np.arange(1, 100) / 100, 2)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-9, 1 - 1e-9)
    return np.log(p / (1 - p))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) without overflow."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def logistic_newton(
    X: np.ndarray,
    y: np.ndarray,
    offset: np.ndarray | None = None,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Maximum-likelihood logistic regression (with optional offset): (coefficients, covariance,
    converged)."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    offset = np.zeros(len(y)) if offset is None else np.asarray(offset, dtype=np.float64)
    beta = np.zeros(X.shape[1])
    converged = False
    for _ in range(max_iter):
        mu = _sigmoid(X @ beta + offset)
        information = X.T @ (X * (mu * (1 - mu))[:, None])
        step = np.linalg.lstsq(information, X.T @ (y - mu), rcond=None)[0]
        beta = beta + step
        if np.max(np.abs(step)) < tol:
            converged = True
            break
    mu = _sigmoid(X @ beta + offset)
    covariance = np.linalg.pinv(X.T @ (X * (mu * (1 - mu))[:, None]))
    return beta, covariance, converged


def _wald_se(covariance: np.ndarray, index: int) -> float:
    """sqrt of a variance; NaN when the information matrix was (numerically) singular."""
    variance = covariance[index, index]
    return float(math.sqrt(variance)) if variance > 0 else math.nan


def calibration_slope_intercept(y, p) -> dict[str, Any]:
    """Calibration slope (with its intercept) and calibration-in-the-large, with Wald SEs.

    NaN, with the reason in ``slope_note`` / ``intercept_note``, where the maximum-likelihood
    estimate does not exist: fewer than 3 patients or a single class; for the slope, logits that
    separate the classes (or are all equal: the slope is then not identified); a fit that did
    not converge. A Wald SE is NaN when the information matrix is singular (every probability
    at 0 or 1).
    """
    y = np.asarray(y, dtype=np.float64)
    out: dict[str, Any] = {
        "slope": math.nan,
        "slope_se": math.nan,
        "intercept": math.nan,
        "intercept_se": math.nan,
        "slope_note": None,
        "intercept_note": None,
        "separated": False,
    }
    n, n_pos = len(y), int(y.sum())
    if n < 3 or y.min() == y.max():
        note = (
            f"logistic recalibration needs at least 3 patients of both classes ({n_pos} "
            f"positive(s), {n - n_pos} negative(s))"
        )
        return {**out, "slope_note": note, "intercept_note": note}
    lp = _logit(p)
    low_pos, high_neg = lp[y == 1].min(), lp[y == 0].max()
    high_pos, low_neg = lp[y == 1].max(), lp[y == 0].min()
    if lp.max() == lp.min():
        out["slope_note"] = "every patient has the same predicted probability: no slope to fit"
    elif high_neg <= low_pos or high_pos <= low_neg:
        out["separated"] = True  # ci_method not_estimable_separation
        out["slope_note"] = (
            "the predicted probabilities separate the classes perfectly: the recalibration "
            "slope has no finite maximum-likelihood estimate"
        )
    else:
        beta, cov, converged = logistic_newton(np.column_stack([np.ones(n), lp]), y)
        if converged:
            out["slope"], out["slope_se"] = float(beta[1]), _wald_se(cov, 1)
        else:
            out["slope_note"] = "the recalibration fit did not converge"
    citl, citl_cov, converged = logistic_newton(np.ones((n, 1)), y, offset=lp)
    if converged:
        out["intercept"], out["intercept_se"] = float(citl[0]), _wald_se(citl_cov, 0)
    else:
        out["intercept_note"] = "the calibration-in-the-large fit did not converge"
    return out


def quantile_groups(p: np.ndarray, g: int) -> np.ndarray:
    """Group index (0..G-1) of each probability by its quantile bin, right-closed, ties together."""
    p = np.asarray(p, dtype=np.float64)
    breaks = np.unique(np.quantile(p, np.linspace(0, 1, g + 1)))
    return np.searchsorted(breaks[1:-1], p, side="left")


def hosmer_lemeshow(y, p, g: int = 10, fitted_here: bool = True) -> dict[str, float]:
    """Hosmer-Lemeshow chi-square over quantile groups of p.

    df = groups - 2 where the model was fitted (``fitted_here``, the training cohort), df =
    groups on a validation cohort (fixed predictions: no parameters estimated on it).
    """
    from scipy.stats import chi2

    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    groups = quantile_groups(p, g)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    observed = np.bincount(groups, weights=y, minlength=n_groups)
    expected = np.bincount(groups, weights=p, minlength=n_groups)
    size = np.bincount(groups, minlength=n_groups).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = (observed - expected) ** 2 / expected + (
            (size - observed) - (size - expected)
        ) ** 2 / (size - expected)
    statistic = float(np.nansum(terms))
    df = n_groups - 2 if fitted_here else n_groups
    return {
        "statistic": statistic,
        "df": float(df),
        "p_value": float(chi2.sf(statistic, df)) if df > 0 else math.nan,
        "groups": float(n_groups),
    }


def calibration_curve(y, p, n_bins: int = 10) -> pl.DataFrame:
    """Observed event rate vs mean predicted probability per quantile bin (Wilson 95% CI)."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    groups = quantile_groups(p, n_bins)
    rows = []
    for group in np.unique(groups):
        inside = groups == group
        n = int(inside.sum())
        observed = float(y[inside].mean())
        low, high = _wilson(observed, n)
        rows.append(
            {
                "bin": int(group) + 1,
                "n": n,
                "mean_predicted": float(p[inside].mean()),
                "observed": observed,
                "observed_ci_low": low,
                "observed_ci_high": high,
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "bin": pl.Int64,
            "n": pl.Int64,
            "mean_predicted": pl.Float64,
            "observed": pl.Float64,
            "observed_ci_low": pl.Float64,
            "observed_ci_high": pl.Float64,
        },
    )


def _wilson(rate: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    if n == 0:
        return math.nan, math.nan
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def net_benefit(y, p, thresholds: np.ndarray = DCA_THRESHOLDS) -> np.ndarray:
    """Net benefit of treating patients with p >= threshold, at each threshold."""
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, dtype=np.float64)
    n = len(y)
    treat = p[None, :] >= np.asarray(thresholds)[:, None]
    tp = (treat & y[None, :]).sum(axis=1)
    fp = (treat & ~y[None, :]).sum(axis=1)
    odds = thresholds / (1 - thresholds)
    return tp / n - fp / n * odds


def decision_curve(y, p, thresholds: np.ndarray = DCA_THRESHOLDS) -> pl.DataFrame:
    y = np.asarray(y, dtype=np.float64)
    prevalence = float(y.mean())
    odds = thresholds / (1 - thresholds)
    return pl.DataFrame(
        {
            "threshold": thresholds,
            "net_benefit": net_benefit(y, p, thresholds),
            "treat_all": prevalence - (1 - prevalence) * odds,
            "treat_none": np.zeros(len(thresholds)),
        }
    )


# per model x cohort ------------------------------------------------------------------------
def _cohort_parts(predictions: pl.DataFrame):
    patients = predictions.select("patient_key", "cohort", "center_id").unique("patient_key")
    models = list(dict.fromkeys(predictions["model"].to_list()))
    for cohort, condition in metric_cohorts(patients):
        subset = predictions.filter(condition)
        for model in models:
            part = subset.filter(pl.col("model") == model).sort("patient_key")
            if not part.is_empty():
                yield (
                    cohort,
                    model,
                    part["label"].to_numpy().astype(int),
                    part["probability"].to_numpy(),
                )


def calibration_tables(
    predictions: pl.DataFrame, *, study: str, model_version: str, n_bins: int = 10
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(calibration curves: model, cohort, bin...; calibration statistics as metrics rows)."""
    curves, rows = [], []
    z = 1.959963984540054
    for cohort, model, y, p in _cohort_parts(predictions):
        bins = min(n_bins, max(3, len(y) // 15))
        curve = calibration_curve(y, p, bins).with_columns(
            pl.lit(model).alias("model"), pl.lit(cohort).alias("cohort")
        )
        curves.append(curve)
        fit = calibration_slope_intercept(y, p)
        hl = hosmer_lemeshow(y, p, fitted_here=cohort == "train")
        base = {
            "study": study,
            "model_version": model_version,
            "model": model,
            "cohort": cohort,
            "n": len(y),
            "n_positive": int(y.sum()),
        }
        values = [
            (
                "calibration_slope",
                fit["slope"],
                fit["slope"] - z * fit["slope_se"],
                fit["slope"] + z * fit["slope_se"],
                "not_estimable_separation" if fit.get("separated") else "wald",
            ),
            (
                "calibration_intercept",
                fit["intercept"],
                fit["intercept"] - z * fit["intercept_se"],
                fit["intercept"] + z * fit["intercept_se"],
                "wald",
            ),
            ("hosmer_lemeshow_chi2", hl["statistic"], None, None, "none"),
            ("hosmer_lemeshow_df", hl["df"], None, None, "none"),
            ("hosmer_lemeshow_p", hl["p_value"], None, None, "none"),
        ]
        for metric, value, low, high, method in values:
            reason = _undefined_reason(metric, fit, hl)
            if method == "wald":
                flag, note = interval_flag(value, low, high, reason=reason)
            elif _finite(value) is None and metric != "hosmer_lemeshow_df":
                flag, note = interval_flag(None, None, None, reason=reason)
            else:
                flag, note = None, None
            rows.append(
                {
                    **base,
                    "metric": metric,
                    "value": _finite(value),
                    "ci_low": _finite(low),
                    "ci_high": _finite(high),
                    "ci_method": method,
                    "ci_flag": flag,
                    "ci_note": note,
                }
            )
    curve_frame = pl.concat(curves) if curves else pl.DataFrame()
    if curves:
        curve_frame = curve_frame.select(
            "model", "cohort", *[c for c in curve_frame.columns if c not in ("model", "cohort")]
        )
    return curve_frame, pl.DataFrame(rows, schema=METRICS_SCHEMA).select(list(METRICS_SCHEMA))


def _undefined_reason(metric: str, fit: dict[str, Any], hl: dict[str, float]) -> str:
    """Why a calibration statistic (or its Wald interval) can be undefined on this cohort."""
    if metric.startswith("hosmer_lemeshow"):
        if hl["groups"] < 3:
            return (
                f"{hl['groups']:g} distinct probability group(s): Hosmer-Lemeshow needs at "
                "least 3 (df = groups - 2)"
            )
        return (
            "a group's expected count is 0 (predicted probabilities of exactly 0 or 1): the "
            "statistic is infinite (p = 0, as R's hoslem.test)"
        )
    note = fit["slope_note"] if metric == "calibration_slope" else fit["intercept_note"]
    return note or "the Wald standard error is undefined (every probability at 0 or 1)"


def _finite(value: Any) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def dca_table(predictions: pl.DataFrame) -> pl.DataFrame:
    """Decision curves of every model x cohort (model, cohort, threshold, net benefits)."""
    parts = [
        decision_curve(y, p).with_columns(
            pl.lit(model).alias("model"), pl.lit(cohort).alias("cohort")
        )
        for cohort, model, y, p in _cohort_parts(predictions)
    ]
    if not parts:
        return pl.DataFrame()
    frame = pl.concat(parts)
    return frame.select("model", "cohort", "threshold", "net_benefit", "treat_all", "treat_none")


def plot_calibration(curves: pl.DataFrame, ax: Any) -> Any:
    """Calibration curves of one cohort (all models) against the diagonal."""
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="ideal")
    for model in dict.fromkeys(curves["model"].to_list()):
        part = curves.filter(pl.col("model") == model).sort("bin")
        ax.plot(part["mean_predicted"], part["observed"], marker="o", ms=3, lw=1.2, label=model)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("Predicted probability")
    ax.set_ylabel("Observed proportion")
    ax.legend(fontsize=7, loc="upper left")
    return ax


def plot_decision_curve(dca: pl.DataFrame, ax: Any) -> Any:
    """Net benefit of every model of one cohort vs treat-all and treat-none."""
    first = dca.filter(pl.col("model") == dca["model"][0]).sort("threshold")
    ax.plot(first["threshold"], first["treat_all"], color="grey", lw=1, label="treat all")
    ax.plot(first["threshold"], first["treat_none"], color="black", lw=1, label="treat none")
    for model in dict.fromkeys(dca["model"].to_list()):
        part = dca.filter(pl.col("model") == model).sort("threshold")
        ax.plot(part["threshold"], part["net_benefit"], lw=1.2, label=model)
    top = max(float(first["treat_all"].max()), float(dca["net_benefit"].max()))
    ax.set_ylim(-0.05, max(0.1, top + 0.05))
    ax.set_xlim(0, 1)
    ax.set_xlabel("Threshold probability")
    ax.set_ylabel("Net benefit")
    ax.legend(fontsize=7, loc="upper right")
    return ax


# the stage ---------------------------------------------------------------------------------
def calibrate_study(
    spec: StudySpec, predictions: pl.DataFrame, version: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Stage 5 (asset ``calibration``): curves and metric rows of the evaluation's predictions.

    The decision curves (asset ``decision_curves``) are ``dca_table`` of the same predictions.
    """
    curves, rows = calibration_tables(predictions, study=spec.name, model_version=version)
    return curves, with_harmonization(rows, spec)
