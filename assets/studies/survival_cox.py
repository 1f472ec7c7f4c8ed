"""Cox regression and concordance (C-index) of a survival endpoint.

Pure logic over pandas DataFrames (used by ``survival.run_survival``); every estimate comes back
as one tidy row (``results.result_row``). Methods (repeated in the ``note`` of each row):

- Cox: lifelines `CoxPHFitter` (Efron ties, as R `coxph`), Wald 95% CI and p. Categorical
  terms are one-hot coded against a reference level (`reference_levels`, else the first
  level in sort order). Proportional hazards: lifelines `proportional_hazard_test` on the
  scaled Schoenfeld residuals with `time_transform="km"` (R `cox.zph`'s default transform),
  one row per model column.
- C-index: Harrell's C (lifelines `concordance_index`) of a risk score (higher = worse); the
  risk is the linear predictor of a Cox model fitted on the training cohort. 95% CI:
  percentile bootstrap over patients (model held fixed), `n_bootstrap` resamples, seeded.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from assets.studies.results import (
    level_label,
    result_row,
)
from assets.studies.survival_km import EVENT_COL, TIME_COL, group_levels

if TYPE_CHECKING:
    import pandas as pd


# --------------------------------------------------------------------------------------------
# Cox regression
# --------------------------------------------------------------------------------------------


@dataclass
class CoxDesign:
    """How cox terms become model columns: numeric as is, categorical one-hot vs a reference."""

    terms: list[str]
    categorical: dict[str, tuple[Any, list[Any]]] = field(default_factory=dict)

    def columns(self) -> list[tuple[str, str]]:
        """(model column, row term label) in model order."""
        out = []
        for term in self.terms:
            if term in self.categorical:
                reference, others = self.categorical[term]
                for level in others:
                    label = f"{term}={level_label(level)} vs {level_label(reference)}"
                    out.append((f"{term}={level_label(level)}", label))
            else:
                out.append((term, term))
        return out

    def matrix(self, data: pd.DataFrame) -> pd.DataFrame:
        """Model matrix for `data` (rows with a missing term or an unknown level are NaN)."""
        import pandas as pd

        parts = {}
        for term in self.terms:
            if term in self.categorical:
                reference, others = self.categorical[term]
                known = data[term].isin([reference, *others])
                for level in others:
                    column = (data[term] == level).astype(float)
                    parts[f"{term}={level_label(level)}"] = column.where(known)
            else:
                parts[term] = pd.to_numeric(data[term], errors="coerce").astype(float)
        return pd.DataFrame(parts, index=data.index)


def cox_design(
    data: pd.DataFrame,
    terms: Sequence[str],
    reference_levels: Mapping[str, Any] | None = None,
    level_orders: Mapping[str, Sequence[Any]] | None = None,
) -> CoxDesign:
    """Decide, on `data`, which terms are categorical and their reference level.

    Text, categorical and two-valued-text columns are categorical; numbers and booleans enter
    as they are (booleans as 0/1). Raises ValueError for an unknown reference level.
    """
    import pandas as pd

    reference_levels = dict(reference_levels or {})
    level_orders = dict(level_orders or {})
    design = CoxDesign(terms=list(terms))
    for term in terms:
        values = data[term]
        if pd.api.types.is_bool_dtype(values) or (
            pd.api.types.is_numeric_dtype(values)
            and getattr(values.dtype, "name", "") != "category"
        ):
            continue
        levels = group_levels(values, level_orders.get(term))
        if term in reference_levels:
            wanted = reference_levels[term]
            matches = [lv for lv in levels if lv == wanted or level_label(lv) == str(wanted)]
            if not matches:
                raise ValueError(
                    f"reference level '{wanted}' for Cox term '{term}' is not among its values "
                    f"{[level_label(lv) for lv in levels]}; fix reference_levels in the study YAML"
                )
            reference = matches[0]
        elif levels:
            reference = levels[0]
        else:
            reference = None
        design.categorical[term] = (reference, [lv for lv in levels if lv != reference])
    return design


@dataclass
class CoxFit:
    """A fitted Cox model with the rows it used and the model columns it kept."""

    fitter: Any
    frame: pd.DataFrame
    columns: list[tuple[str, str]]
    notes: list[str]

    @property
    def n(self) -> int:
        return int(self.frame.shape[0])

    @property
    def events(self) -> int:
        return int(self.frame[EVENT_COL].sum())


def fit_cox(data: pd.DataFrame, design: CoxDesign, *, alpha: float = 0.05) -> CoxFit:
    """Fit a Cox model of `__time`/`__event` (see `survival_data`) on the design.

    Rows with a missing term are dropped and columns that do not vary (a level absent from this
    cohort) are left out, each with a note. Raises on failure (no events, no convergence).
    """
    from lifelines import CoxPHFitter

    matrix = design.matrix(data)
    complete = matrix.notna().all(axis=1)
    notes = []
    if (~complete).any():
        notes.append(f"{int((~complete).sum())} patient(s) with a missing term left out")
    matrix = matrix[complete]
    columns = []
    for column, label in design.columns():
        if matrix[column].nunique() < 2:
            notes.append(f"{label}: no variation in this cohort, left out")
        else:
            columns.append((column, label))
    if not columns:
        raise ValueError("no Cox term varies in this cohort")
    model_frame = matrix[[c for c, _ in columns]].copy()
    model_frame[TIME_COL] = data.loc[model_frame.index, TIME_COL]
    model_frame[EVENT_COL] = data.loc[model_frame.index, EVENT_COL]
    if int(model_frame[EVENT_COL].sum()) == 0:
        raise ValueError("no events in this cohort")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitter = CoxPHFitter(alpha=alpha).fit(
            model_frame, duration_col=TIME_COL, event_col=EVENT_COL
        )
    for warning in caught:
        text = f"{type(warning.message).__name__} {warning.message}"
        if "converge" in text.lower() or "separation" in text.lower():
            first_sentence = str(warning.message).strip().split(". ")[0].splitlines()[0]
            notes.append(f"lifelines warning: {first_sentence[:160]}")
    return CoxFit(fitter=fitter, frame=model_frame, columns=columns, notes=notes)


def cox_rows(
    data: pd.DataFrame,
    design: CoxDesign,
    *,
    analysis: str,
    endpoint: str,
    cohort: str,
    alpha: float = 0.05,
) -> tuple[list[dict[str, Any]], Any]:
    """HR rows (estimate = exp(coef)) for one Cox model; returns (rows, fitter or None)."""
    model_name = " + ".join(design.terms)
    try:
        fit = fit_cox(data, design, alpha=alpha)
    except Exception as error:  # a failed fit is a result row, not a crash
        return [
            result_row(
                endpoint,
                cohort,
                analysis,
                model_name,
                n=len(data),
                events=int(data[EVENT_COL].sum()),
                note=f"not estimable: {str(error).splitlines()[0]}",
            )
        ], None
    summary = fit.fitter.summary
    n, n_events = fit.n, fit.events
    level = int(round((1 - alpha) * 100))
    note = "; ".join([f"Wald {level}% CI; Efron ties; model: {model_name}", *fit.notes])
    rows = []
    for column, label in fit.columns:
        line = summary.loc[column]
        rows.append(
            result_row(
                endpoint,
                cohort,
                analysis,
                label,
                estimate=line["exp(coef)"],
                ci_low=line[f"exp(coef) lower {level}%"],
                ci_high=line[f"exp(coef) upper {level}%"],
                p_value=line["p"],
                statistic=line["z"],
                n=n,
                events=n_events,
                note=note,
                coef=line["coef"],
                se=line["se(coef)"],
            )
        )
    return rows, fit


def ph_test_rows(fit: CoxFit, *, endpoint: str, cohort: str, model: str) -> list[dict[str, Any]]:
    """Schoenfeld-residual proportional-hazards test per model column (lifelines, km transform)."""
    from lifelines.statistics import proportional_hazard_test

    n, n_events = fit.n, fit.events
    try:
        result = proportional_hazard_test(fit.fitter, fit.frame, time_transform="km")
    except Exception as error:  # a failed test is a result row, not a crash
        return [
            result_row(
                endpoint,
                cohort,
                "ph_test",
                model,
                n=n,
                events=n_events,
                note=f"not estimable: {str(error).splitlines()[0]}",
            )
        ]
    summary = result.summary
    rows = []
    for column, label in fit.columns:
        if column not in summary.index:
            continue
        rows.append(
            result_row(
                endpoint,
                cohort,
                "ph_test",
                label,
                statistic=summary.loc[column, "test_statistic"],
                df=1,
                p_value=summary.loc[column, "p"],
                n=n,
                events=n_events,
                note=(
                    "scaled Schoenfeld residuals vs KM-transformed time "
                    f"(lifelines proportional_hazard_test); model: {model}"
                ),
            )
        )
    return rows


def cox_risk(fit: CoxFit, design: CoxDesign, data: pd.DataFrame) -> pd.Series:
    """Linear predictor x'beta of a fitted Cox model for `data` (NaN where a term is missing)."""
    import pandas as pd

    matrix = design.matrix(data)
    params = fit.fitter.params_
    values = matrix[list(params.index)].to_numpy(float) @ params.to_numpy(float)
    return pd.Series(values, index=data.index)


# --------------------------------------------------------------------------------------------
# Concordance
# --------------------------------------------------------------------------------------------


def harrell_c(durations: Sequence[float], events: Sequence[int], risk: Sequence[float]) -> float:
    """Harrell's C of a risk score (higher = earlier event), via lifelines `concordance_index`."""
    from lifelines.utils import concordance_index

    return float(
        concordance_index(
            np.asarray(durations, float), -np.asarray(risk, float), np.asarray(events, int)
        )
    )


def _pair_matrices(t: np.ndarray, e: np.ndarray, r: np.ndarray, rows: slice):
    """For rows i in `rows`: comparable (i died first) and concordance credit, as lifelines."""
    ti, ei, ri = t[rows, None], e[rows, None], r[rows, None]
    comparable = (ei == 1) & ((ti < t[None, :]) | ((ti == t[None, :]) & (e[None, :] == 0)))
    credit = np.where(ri > r[None, :], 1.0, np.where(ri == r[None, :], 0.5, 0.0))
    return comparable.astype(float), comparable * credit


def weighted_c_index(
    durations: Sequence[float],
    events: Sequence[int],
    risk: Sequence[float],
    counts: np.ndarray,
) -> np.ndarray:
    """Harrell's C of resamples given as patient counts (one row of `counts` per resample).

    A resample is the multinomial count vector w over the patients, and C* = w'Aw / w'Pw with
    P the comparable pairs and A the concordance credit of lifelines' definition (i dies
    before j, or at the same time as a censored j; tied risks count 1/2): the same number as
    lifelines `concordance_index` on the resampled rows, without a loop over resamples.
    NaN where a resample has no comparable pair.
    """
    t = np.asarray(durations, float)
    e = np.asarray(events, int)
    r = np.asarray(risk, float)
    counts = np.atleast_2d(np.asarray(counts, float))
    n = len(t)
    numerator = np.zeros(counts.shape[0])
    denominator = np.zeros(counts.shape[0])
    block = max(1, 4_000_000 // max(n, 1))  # keeps each pair block near 32 MB
    for start in range(0, n, block):
        rows = slice(start, min(start + block, n))
        comparable, credit = _pair_matrices(t, e, r, rows)
        numerator += ((counts[:, rows] @ credit) * counts).sum(axis=1)
        denominator += ((counts[:, rows] @ comparable) * counts).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def bootstrap_c_index(
    durations: Sequence[float],
    events: Sequence[int],
    risk: Sequence[float],
    *,
    n_bootstrap: int = 1000,
    seed: int = 42,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """Harrell's C with a percentile bootstrap CI: (c, ci_low, ci_high).

    Patients are resampled with replacement (`numpy.random.default_rng(seed)`, multinomial
    counts), the risk score held fixed; the CI is the alpha/2 and 1-alpha/2 quantiles of the
    resampled C (`weighted_c_index`).
    """
    c, replicates = c_index_replicates(durations, events, risk, n_bootstrap=n_bootstrap, seed=seed)
    return (c, *percentile_interval(replicates, alpha))


def percentile_interval(replicates: np.ndarray, alpha: float) -> tuple[float, float]:
    finite = replicates[np.isfinite(replicates)]
    if len(finite) == 0:
        return math.nan, math.nan
    low, high = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def c_index_replicates(
    durations: Sequence[float],
    events: Sequence[int],
    risk: Sequence[float],
    *,
    n_bootstrap: int = 1000,
    seed: int = 42,
) -> tuple[float, np.ndarray]:
    """Harrell's C and its `n_bootstrap` resampled values (NaN: no comparable pair), as
    `bootstrap_c_index` draws them; (NaN, []) when C is undefined (fewer than 2 patients, no
    event)."""
    t = np.asarray(durations, float)
    e = np.asarray(events, int)
    r = np.asarray(risk, float)
    keep = np.isfinite(t) & np.isfinite(r)
    t, e, r = t[keep], e[keep], r[keep]
    n = len(t)
    if n < 2 or e.sum() == 0:
        return math.nan, np.array([])
    try:
        c = harrell_c(t, e, r)
    except ZeroDivisionError:
        return math.nan, np.array([])
    if n_bootstrap <= 0:
        return c, np.array([])
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_bootstrap)
    return c, weighted_c_index(t, e, r, counts)
