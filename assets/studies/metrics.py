"""Discrimination and classification metrics per model x cohort, with confidence intervals.

Which method produced which CI (also in the ``ci_method`` column of every row):

- ``auc``: AUC (Mann-Whitney, ties count 1/2) with a 95% CI by **stratified bootstrap**
  (``ci_method = bootstrap_percentile``): positives and negatives are resampled separately with
  replacement, keeping their counts, ``bootstrap`` times; CI = 2.5th / 97.5th percentiles
  (``numpy.percentile``, linear interpolation). Seeded with the study seed and the cohort name,
  so every model of a cohort sees the same resamples (paired) and re-runs are identical.
- ``auc_delong``: the same AUC with the **DeLong** CI (``ci_method = delong``): AUC +/- z * SE,
  SE from DeLong, DeLong & Clarke-Pearson (Biometrics 1988) computed by the fast midrank
  algorithm of Sun & Xu (IEEE Signal Processing Letters 2014), sample variances with n - 1
  (as pROC); clipped to [0, 1].
- ``accuracy``, ``sensitivity``, ``specificity``, ``ppv``, ``npv`` at the model's threshold
  (Youden's J on training, see ``pipeline``; positive when probability >= threshold) and
  ``brier``: bootstrap percentile CIs from the same resamples, except ``ppv`` and ``npv``:
  plain (non-stratified) bootstrap, since they depend on the prevalence
  (``ci_method = bootstrap_percentile_nonstratified``).
- ``threshold``, ``cv_auc``, ``cv_auc_sd``: no CI (``ci_method = none``); ``cv_auc`` is the
  mean AUC of the outer folds of a nested CV (``pipeline.nested_oof``).
- Model comparison (``model = "<b>_vs_<a>"``): ``auc_difference`` (AUC b - AUC a, DeLong CI of
  the paired difference), ``delong_z`` and ``delong_p`` (two-sided) of DeLong's test for two
  correlated ROC curves (``ci_method = delong_paired``), on validation cohorts only.

Cohorts: ``train``, ``internal_validation``, ``external_validation`` (pooled) and, with several
external centers, ``external_validation:<center>`` per center.

Every row also has ``ci_flag`` and ``ci_note`` (``assets.studies.ci_flags``): an undefined
estimate, a missing or degenerate interval, or an estimate outside its percentile bootstrap
interval is said in the row, read off the resamples themselves, rather than treated as bad data.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from assets.studies.ci_flags import interval_flag

if TYPE_CHECKING:
    from assets.studies.spec import StudySpec

BOOTSTRAP_METRICS = ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "brier")
COHORT_ORDER = ("train", "internal_validation", "external_validation")
RAW_SUFFIX = ":raw"  # the models of harmonization.compare_raw, fitted without harmonization
METRICS_SCHEMA = {
    "study": pl.String,
    "model_version": pl.String,
    "model": pl.String,
    "cohort": pl.String,
    "metric": pl.String,
    "value": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "ci_method": pl.String,
    "n": pl.Int64,
    "n_positive": pl.Int64,
    "ci_flag": pl.String,
    "ci_note": pl.String,
}


# AUC and DeLong ---------------------------------------------------------------------------
def _split_scores(y, p) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    return p[y == 1], p[y == 0]


def midrank(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given the mean of the ranks they span."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    _, first, counts = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return ranks


def auc_score(y, p) -> float:
    """Area under the ROC curve (Mann-Whitney U / (n1 n0)); NaN when a class is missing."""
    pos, neg = _split_scores(y, p)
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    ranks = midrank(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def delong_placements(y, p) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong's structural components V10 (per positive) and V01 (per negative).

    Fast DeLong (Sun & Xu 2014): V10_i = (rank of x_i among all - rank among positives) / n0,
    V01_j = 1 - (rank of y_j among all - rank among negatives) / n1, with midranks.
    """
    pos, neg = _split_scores(y, p)
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        return math.nan, np.array([]), np.array([])
    tz = midrank(np.concatenate([pos, neg]))
    v10 = (tz[:m] - midrank(pos)) / n
    v01 = 1.0 - (tz[m:] - midrank(neg)) / m
    return float(v10.mean()), v10, v01


def delong_variance(y, p) -> tuple[float, float]:
    """(AUC, DeLong variance of the AUC) = S10 / n1 + S01 / n0."""
    auc, v10, v01 = delong_placements(y, p)
    if len(v10) < 2 or len(v01) < 2:
        return auc, math.nan
    return auc, float(v10.var(ddof=1) / len(v10) + v01.var(ddof=1) / len(v01))


def _z(level: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + level / 2)


def delong_ci(y, p, level: float = 0.95) -> tuple[float, float, float, float]:
    """(AUC, CI low, CI high, SE) with the DeLong variance; CI clipped to [0, 1]."""
    auc, var = delong_variance(y, p)
    if not np.isfinite(var):
        return auc, math.nan, math.nan, math.nan
    se = math.sqrt(var)
    half = _z(level) * se
    return auc, max(0.0, auc - half), min(1.0, auc + half), se


def delong_test(y, p_a, p_b, level: float = 0.95) -> dict[str, float]:
    """DeLong's test of two correlated AUCs on the same patients (b - a): z, two-sided p, CI."""
    from statistics import NormalDist

    auc_a, v10_a, v01_a = delong_placements(y, p_a)
    auc_b, v10_b, v01_b = delong_placements(y, p_b)
    out = {"auc_a": auc_a, "auc_b": auc_b, "difference": auc_b - auc_a}
    if len(v10_a) < 2 or len(v01_a) < 2:
        return {
            **out,
            "se": math.nan,
            "z": math.nan,
            "p_value": math.nan,
            "ci_low": math.nan,
            "ci_high": math.nan,
        }
    s10 = np.cov(np.vstack([v10_a, v10_b]), ddof=1)
    s01 = np.cov(np.vstack([v01_a, v01_b]), ddof=1)
    cov = s10 / len(v10_a) + s01 / len(v01_a)
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(var) if var > 0 else 0.0
    diff = out["difference"]
    if se == 0.0:
        z, p_value = (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
    else:
        z = diff / se
        p_value = 2 * (1 - NormalDist().cdf(abs(z)))
    half = _z(level) * se
    return {
        **out,
        "se": se,
        "z": z,
        "p_value": p_value,
        "ci_low": diff - half,
        "ci_high": diff + half,
    }


# threshold metrics ------------------------------------------------------------------------
def youden_threshold(y, p) -> float:
    """The probability cut maximising sensitivity + specificity - 1 (positive when p >= cut).

    Candidates are the observed probabilities; ties go to the highest cut. 0.5 when a class is
    missing.
    """
    pos, neg = _split_scores(y, p)
    if len(pos) == 0 or len(neg) == 0:
        return 0.5
    candidates = np.unique(np.concatenate([pos, neg]))
    sensitivity = 1.0 - np.searchsorted(np.sort(pos), candidates, side="left") / len(pos)
    specificity = np.searchsorted(np.sort(neg), candidates, side="left") / len(neg)
    j = sensitivity + specificity - 1.0
    best = np.flatnonzero(j == j.max())[-1]
    return float(candidates[best])


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def threshold_metrics(y, p, threshold: float) -> dict[str, float]:
    """Accuracy, sensitivity, specificity, PPV, NPV at ``threshold`` (positive when p >= it)."""
    y = np.asarray(y).astype(int)
    predicted = np.asarray(p, dtype=np.float64) >= threshold
    tp = float(np.sum(predicted & (y == 1)))
    tn = float(np.sum(~predicted & (y == 0)))
    fp = float(np.sum(predicted & (y == 0)))
    fn = float(np.sum(~predicted & (y == 1)))
    return {
        "accuracy": _ratio(tp + tn, len(y)),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
    }


def brier_score(y, p) -> float:
    y = np.asarray(y, dtype=np.float64)
    return float(np.mean((np.asarray(p, dtype=np.float64) - y) ** 2)) if len(y) else math.nan


def point_metrics(y, p, threshold: float) -> dict[str, float]:
    return {
        "auc": auc_score(y, p),
        **threshold_metrics(y, p, threshold),
        "brier": brier_score(y, p),
    }


# stratified bootstrap ---------------------------------------------------------------------
@dataclass
class ResampleCounts:
    """How often each positive / negative patient appears in each stratified resample."""

    positives: np.ndarray  # (B, n1) counts
    negatives: np.ndarray  # (B, n0) counts


def _counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    if n == 0:
        return np.zeros((n_boot, 0), dtype=np.int64)
    draws = rng.integers(0, n, size=(n_boot, n))
    offsets = (np.arange(n_boot) * n)[:, None]
    return np.bincount((draws + offsets).ravel(), minlength=n_boot * n).reshape(n_boot, n)


def resample_counts(y, n_boot: int, seed: int | list[int]) -> ResampleCounts:
    """Stratified bootstrap: each class resampled with replacement to its own size."""
    y = np.asarray(y).astype(int)
    rng = np.random.default_rng(seed)
    return ResampleCounts(
        _counts(int((y == 1).sum()), n_boot, rng), _counts(int((y == 0).sum()), n_boot, rng)
    )


def bootstrap_metrics(y, p, threshold: float, counts: ResampleCounts) -> dict[str, np.ndarray]:
    """Every ``BOOTSTRAP_METRICS`` value on every resample, vectorised over resamples.

    AUC of a resample: for each positive, the resampled negatives below it (+ 1/2 the tied ones)
    read off cumulative counts of the sorted negatives, weighted by the positive's own count.
    """
    pos, neg = _split_scores(y, p)
    n1, n0 = len(pos), len(neg)
    cp, cn = counts.positives.astype(np.float64), counts.negatives.astype(np.float64)
    n_boot = cp.shape[0]
    out: dict[str, np.ndarray] = {}
    if n1 and n0:
        order = np.argsort(neg, kind="mergesort")
        neg_sorted = neg[order]
        cumulative = np.zeros((n_boot, n0 + 1))
        np.cumsum(cn[:, order], axis=1, out=cumulative[:, 1:])
        below = np.searchsorted(neg_sorted, pos, side="left")
        upto = np.searchsorted(neg_sorted, pos, side="right")
        wins = cumulative[:, below] + 0.5 * (cumulative[:, upto] - cumulative[:, below])
        out["auc"] = (cp * wins).sum(axis=1) / (n1 * n0)
    else:
        out["auc"] = np.full(n_boot, np.nan)
    tp = cp @ (pos >= threshold).astype(np.float64)
    fn = n1 - tp
    tn = cn @ (neg < threshold).astype(np.float64)
    fp = n0 - tn
    with np.errstate(invalid="ignore", divide="ignore"):
        out["accuracy"] = (tp + tn) / (n1 + n0)
        out["sensitivity"] = tp / n1 if n1 else np.full(n_boot, np.nan)
        out["specificity"] = tn / n0 if n0 else np.full(n_boot, np.nan)
        out["ppv"] = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
        out["npv"] = np.where(tn + fn > 0, tn / (tn + fn), np.nan)
    out["brier"] = (cp @ (1.0 - pos) ** 2 + cn @ neg**2) / (n1 + n0)
    return out


def predictive_values_bootstrap(
    y, p, threshold: float, n_boot: int, seed: int | list[int]
) -> dict[str, np.ndarray]:
    """PPV and NPV on plain (non-stratified) bootstrap resamples of the patients.

    PPV and NPV depend on the prevalence; a stratified resample keeps the class sizes fixed and
    so leaves the prevalence's sampling uncertainty out of their CIs. Here every resample draws
    n patients with replacement regardless of class.
    """
    y = np.asarray(y).astype(int)
    positive_call = np.asarray(p, dtype=np.float64) >= threshold
    counts = _counts(len(y), n_boot, np.random.default_rng(seed)).astype(np.float64)
    tp = counts @ (positive_call & (y == 1)).astype(np.float64)
    fp = counts @ (positive_call & (y == 0)).astype(np.float64)
    tn = counts @ (~positive_call & (y == 0)).astype(np.float64)
    fn = counts @ (~positive_call & (y == 1)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "ppv": np.where(tp + fp > 0, tp / (tp + fp), np.nan),
            "npv": np.where(tn + fn > 0, tn / (tn + fn), np.nan),
        }


def percentile_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return math.nan, math.nan
    low, high = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def stable_seed(seed: int, *names: str) -> list[int]:
    """A numpy seed sequence from the study seed and names (stable across runs and machines)."""
    digest = hashlib.sha256("\x1f".join(names).encode()).digest()
    return [int(seed), int.from_bytes(digest[:8], "little")]


# tidy tables ------------------------------------------------------------------------------
def metric_cohorts(splits: pl.DataFrame) -> list[tuple[str, pl.Expr]]:
    """(cohort label, filter) pairs: the split cohorts and, with 2+ external centers, each one."""
    present = set(splits["cohort"].unique().to_list())
    out = [(c, pl.col("cohort") == c) for c in COHORT_ORDER if c in present]
    external = splits.filter(pl.col("cohort") == "external_validation")
    centers = sorted(external["center_id"].unique().to_list()) if len(external) else []
    if len(centers) > 1:
        for center in centers:
            out.append(
                (
                    f"external_validation:{center}",
                    (pl.col("cohort") == "external_validation") & (pl.col("center_id") == center),
                )
            )
    return out


def _row(
    study, version, model, cohort, metric, value, low, high, method, n, n_pos, flag=None
) -> dict:
    """One metrics row; ``flag`` is the (ci_flag, ci_note) pair of ``ci_flags.interval_flag``."""
    ci_flag, ci_note = flag if flag is not None else (None, None)
    return {
        "study": study,
        "model_version": version,
        "model": model,
        "cohort": cohort,
        "metric": metric,
        "value": None if value is None or not np.isfinite(value) else float(value),
        "ci_low": None if low is None or not np.isfinite(low) else float(low),
        "ci_high": None if high is None or not np.isfinite(high) else float(high),
        "ci_method": method,
        "n": int(n),
        "n_positive": int(n_pos),
        "ci_flag": ci_flag,
        "ci_note": ci_note,
    }


def undefined_reason(metric: str, n: int, n_pos: int) -> str:
    """Why ``metric`` can be undefined on a cohort (or a resample) of ``n`` with ``n_pos`` positives."""
    classes = f"{n_pos} positive(s), {n - n_pos} negative(s) in this cohort"
    if metric in ("auc", "auc_delong"):
        return f"the AUC needs patients of both classes ({classes})"
    if metric == "sensitivity":
        return f"no positive patient ({classes})"
    if metric == "specificity":
        return f"no negative patient ({classes})"
    if metric == "ppv":
        return "no patient predicted positive at the model's threshold"
    if metric == "npv":
        return "no patient predicted negative at the model's threshold"
    return f"undefined on this cohort ({classes})"


def _no_ci_flag(value: float | None, reason: str):
    """A row without an interval by design: flagged only when its value is undefined."""
    if value is None or not np.isfinite(value):
        return interval_flag(None, None, None, reason=reason)
    return None


def _delong_reason(n: int, n_pos: int) -> str:
    return (
        "DeLong's variance needs at least 2 patients of each class "
        f"({n_pos} positive(s), {n - n_pos} negative(s))"
    )


def metrics_table(
    predictions: pl.DataFrame,
    thresholds: dict[str, float],
    *,
    study: str,
    model_version: str,
    n_boot: int,
    seed: int,
    cv_auc: dict[str, tuple[float, float]] | None = None,
    level: float = 0.95,
) -> pl.DataFrame:
    """Tidy metrics of every model x cohort from a predictions frame.

    ``predictions``: one row per patient x model with ``model``, ``cohort``, ``center_id``,
    ``label`` (0/1), ``probability``. ``thresholds``: per model. ``cv_auc``: per model
    (mean, sd) of the cross-validated training AUC, reported on the train cohort.
    """
    rows: list[dict] = []
    patients = predictions.select("patient_key", "cohort", "center_id").unique("patient_key")
    models = list(dict.fromkeys(predictions["model"].to_list()))
    for cohort, condition in metric_cohorts(patients):
        subset = predictions.filter(condition)
        counts = None
        for model in models:
            part = subset.filter(pl.col("model") == model).sort("patient_key")
            if part.is_empty():
                continue
            y = part["label"].to_numpy().astype(int)
            p = part["probability"].to_numpy().astype(np.float64)
            n, n_pos = len(y), int(y.sum())
            if counts is None and n_boot > 0:
                # one set of resamples per cohort, shared by all models (paired comparison)
                counts = resample_counts(y, n_boot, stable_seed(seed, cohort))
            threshold = thresholds[model]
            point = point_metrics(y, p, threshold)
            boot = bootstrap_metrics(y, p, threshold, counts) if counts is not None else {}
            if boot:  # PPV/NPV: non-stratified resamples (prevalence uncertainty included)
                boot.update(
                    predictive_values_bootstrap(
                        y, p, threshold, n_boot, stable_seed(seed, cohort, "ppv_npv")
                    )
                )
            found = []  # (metric, value, ci_low, ci_high, ci_method, (ci_flag, ci_note))
            for metric in BOOTSTRAP_METRICS:
                reason = undefined_reason(metric, n, n_pos)
                if boot:
                    low, high = percentile_ci(boot[metric], level)
                    flag = interval_flag(point[metric], low, high, boot[metric], reason=reason)
                    method = "bootstrap_percentile"
                    if metric in ("ppv", "npv"):
                        method = "bootstrap_percentile_nonstratified"
                    found.append((metric, point[metric], low, high, method, flag))
                else:
                    flag = _no_ci_flag(point[metric], reason)
                    found.append((metric, point[metric], math.nan, math.nan, "none", flag))
            auc, low, high, _ = delong_ci(y, p, level)
            reason = (
                undefined_reason("auc", n, n_pos)
                if not np.isfinite(auc)
                else _delong_reason(n, n_pos)
            )
            flag = interval_flag(auc, low, high, reason=reason)
            found.append(("auc_delong", auc, low, high, "delong", flag))
            found.append(("threshold", threshold, None, None, "none", None))
            if cohort == "train" and cv_auc and model in cv_auc:
                mean, sd = cv_auc[model]
                found += [
                    (
                        "cv_auc",
                        mean,
                        None,
                        None,
                        "none",
                        _no_ci_flag(mean, "no cross-validated AUC"),
                    ),
                    ("cv_auc_sd", sd, None, None, "none", None),
                ]
            rows += [
                _row(
                    study,
                    model_version,
                    model,
                    cohort,
                    metric,
                    value,
                    low,
                    high,
                    method,
                    n,
                    n_pos,
                    flag,
                )
                for metric, value, low, high, method, flag in found
            ]
    return pl.DataFrame(rows, schema=METRICS_SCHEMA)


def comparison_table(
    predictions: pl.DataFrame,
    model_a: str,
    model_b: str,
    *,
    study: str,
    model_version: str,
    level: float = 0.95,
) -> pl.DataFrame:
    """DeLong test of model b against model a on every validation cohort (rows ``<b>_vs_<a>``).

    The training cohort is left out: there the combined model is fitted on out-of-fold radiomics
    scores while the radiomics model's own training predictions are apparent, so the two AUCs
    would not be comparable.
    """
    rows: list[dict] = []
    patients = predictions.select("patient_key", "cohort", "center_id").unique("patient_key")
    name = f"{model_b}_vs_{model_a}"
    for cohort, condition in metric_cohorts(patients):
        if cohort == "train":
            continue
        subset = predictions.filter(condition)
        a = subset.filter(pl.col("model") == model_a).sort("patient_key")
        b = subset.filter(pl.col("model") == model_b).sort("patient_key")
        if a.is_empty() or b.is_empty():
            continue
        if a["patient_key"].to_list() != b["patient_key"].to_list():
            raise ValueError(
                f"{model_a} and {model_b} were not predicted on the same {cohort} patients"
            )
        y = a["label"].to_numpy().astype(int)
        test = delong_test(y, a["probability"].to_numpy(), b["probability"].to_numpy(), level)
        n, n_pos = len(y), int(y.sum())
        if not np.isfinite(test["difference"]):
            reason = undefined_reason("auc", n, n_pos)
        elif not np.isfinite(test["se"]):
            reason = _delong_reason(n, n_pos)
        else:  # se 0: z and p from the sign of the difference alone
            reason = "the DeLong standard error of the difference is 0"
        tests = (
            (
                "auc_difference",
                test["difference"],
                test["ci_low"],
                test["ci_high"],
                interval_flag(test["difference"], test["ci_low"], test["ci_high"], reason=reason),
            ),
            ("delong_z", test["z"], None, None, _no_ci_flag(test["z"], reason)),
            (
                "delong_p",
                test["p_value"],
                None,
                None,
                _no_ci_flag(test["p_value"], reason),
            ),
        )
        rows += [
            _row(
                study,
                model_version,
                name,
                cohort,
                metric,
                value,
                low,
                high,
                "delong_paired",
                n,
                n_pos,
                flag,
            )
            for metric, value, low, high, flag in tests
        ]
    return pl.DataFrame(rows, schema=METRICS_SCHEMA)


def harmonization_label(spec: StudySpec, raw: bool = False) -> str:
    """What a ``model_metrics`` row's ``harmonization`` column says."""
    h = spec.harmonization
    if raw or not h.enabled:
        return "none"
    covariates = f", covariates={','.join(h.covariates)}" if h.covariates else ""
    return f"{h.method}(batch={h.batch}{covariates}, external={h.external})"


def with_harmonization(frame: pl.DataFrame, spec: StudySpec) -> pl.DataFrame:
    """``model_metrics`` rows with their ``harmonization`` column (``:raw`` models: none)."""
    if "harmonization" in frame.columns:
        return frame
    return frame.with_columns(
        pl.when(pl.col("model").str.ends_with(RAW_SUFFIX))
        .then(pl.lit("none"))
        .otherwise(pl.lit(harmonization_label(spec)))
        .alias("harmonization")
    )
