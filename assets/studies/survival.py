"""Survival analyses of a study: Kaplan-Meier, log-rank, Cox, C-index and biomarker cut-offs.

Pure logic over pandas DataFrames (no Dagster, no study-spec object): each function takes the
columns to use as plain arguments, and every estimate comes back as one tidy row with the
columns of `RESULT_COLUMNS` (the study asset adds `study` and `model_version` and writes the
rows to `survival_results`). `run_survival` runs one `survival:` entry of a study YAML across
its cohorts; cut-offs are chosen on the training cohort only and applied unchanged elsewhere.

Methods, stated once (they are repeated in the `note` of each row):

- Kaplan-Meier: product-limit estimate; 95% CI from Greenwood's variance on the log(-log)
  scale (lifelines' default, the same as R `survfit(conf.type = "log-log")`; R's own default
  is "log"). Survival at a stated time t is S(t) (right-continuous); times beyond a group's
  last follow-up give no estimate. Number at risk at t counts patients with time >= t (R
  `summary.survfit`). Median survival follows R's `quantile.survfit`: the first time with
  S(t) <= 0.5, or, when S(t) equals 0.5 exactly on a flat stretch, the midpoint between the
  start of that stretch and the next drop; its CI applies the same rule to the CI bands.
- Log-rank: lifelines `multivariate_logrank_test` (chi-square with K-1 df) and
  `pairwise_logrank_test` (unadjusted p-values). Trend for ordered groups with scores w_g
  (`logrank_trend`): U = sum_g w_g (O_g - E_g) and Var(U) = w' V w, where V is the log-rank
  (hypergeometric) covariance of O - E summed over distinct event times t_j:
  V = sum_j d_j (n_j - d_j) / (n_j - 1) * (diag(p_j) - p_j p_j'), p_gj = n_gj / n_j;
  chi-square = U^2 / Var(U) on 1 df (Klein & Moeschberger 2003, section 7.4; Stata `sts
  test, trend`). U > 0 means more events than expected at higher scores.
- Cox: lifelines `CoxPHFitter` (Efron ties, as R `coxph`), Wald 95% CI and p. Categorical
  terms are one-hot coded against a reference level (`reference_levels`, else the first
  level in sort order). Proportional hazards: lifelines `proportional_hazard_test` on the
  scaled Schoenfeld residuals with `time_transform="km"` (R `cox.zph`'s default transform),
  one row per model column.
- C-index: Harrell's C (lifelines `concordance_index`) of a risk score (higher = worse); the
  risk is the linear predictor of a Cox model fitted on the training cohort. 95% CI:
  percentile bootstrap over patients (model held fixed), `n_bootstrap` resamples, seeded.
- Cut-off for a continuous biomarker: maximally selected log-rank statistic (Lausen &
  Schumacher 1992), as R `maxstat.test(Surv(time, event) ~ x, smethod = "LogRank")`: log-rank
  scores a_i (exactRankTests `cscores.Surv`), for each candidate split with m patients at or
  below the cut the standardized statistic |S_m - E_m| / sqrt(V_m), S_m = sum of the m lowest
  scores, E_m = m / N * sum(a), V_m = m (N - m) / (N^2 (N - 1)) * (N sum(a^2) - sum(a)^2);
  candidate splits keep floor(N * minprop) <= m <= floor(N * maxprop) (default 10%-90%). The
  p-value of the maximum M is the Lausen-Schumacher / Miller-Siegmund approximation (R
  `pmethod = "Lau92"`): p = 4 phi(M) / M + phi(M) (M - 1/M) log(e2 (1 - e1) / ((1 - e2) e1)),
  with e1 = minprop, e2 = maxprop, phi the standard normal density (p = 1 for M < 1).
  Or the median of the training values. Patients with value <= cut are `low`, > cut `high`.

Every row has `ci_flag` and `ci_note` (`assets.studies.ci_flags`): a zero-width interval, an
estimate outside its interval (the C-index's percentile bootstrap), or a bootstrap with fewer
than a handful of distinct resample values is said in the row, not treated as bad data.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

RESULT_COLUMNS = [
    "endpoint",
    "cohort",
    "analysis",
    "term",
    "estimate",
    "ci_low",
    "ci_high",
    "p_value",
    "statistic",
    "df",
    "n",
    "events",
    "note",
    "coef",
    "se",
    "ci_flag",
    "ci_note",
]
COHORT_ORDER = ["train", "internal_validation", "external_validation"]
LOW, HIGH = "low", "high"
_TIME, _EVENT = "__time", "__event"
_MEDIAN_TOLERANCE = math.sqrt(np.finfo(float).eps)  # R quantile.survfit's tolerance


# --------------------------------------------------------------------------------------------
# Tidy rows
# --------------------------------------------------------------------------------------------


def result_row(
    endpoint: str,
    cohort: str,
    analysis: str,
    term: str,
    estimate: float = math.nan,
    ci_low: float = math.nan,
    ci_high: float = math.nan,
    p_value: float = math.nan,
    statistic: float = math.nan,
    df: float = math.nan,
    n: int | None = None,
    events: int | None = None,
    note: str = "",
    coef: float = math.nan,
    se: float = math.nan,
    ci_flag: str | None = None,
    ci_note: str | None = None,
) -> dict[str, Any]:
    """One estimate as a dict with the keys of `RESULT_COLUMNS` (`ci_flag`/`ci_note` left
    None are filled in from the numbers by `results_frame`)."""
    return {
        "endpoint": endpoint,
        "cohort": cohort,
        "analysis": analysis,
        "term": term,
        "estimate": _float(estimate),
        "ci_low": _float(ci_low),
        "ci_high": _float(ci_high),
        "p_value": _float(p_value),
        "statistic": _float(statistic),
        "df": _float(df),
        "n": n,
        "events": events,
        "note": note,
        "coef": _float(coef),
        "se": _float(se),
        "ci_flag": ci_flag,
        "ci_note": ci_note,
    }


def results_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows -> a DataFrame with exactly `RESULT_COLUMNS` (n and events as nullable ints).

    A row with an estimate and both interval ends but no `ci_flag` gets one from the numbers
    (`ci_flags.interval_flag`: zero width, estimate outside); rows without an interval keep none.
    """
    import pandas as pd

    from assets.studies.ci_flags import interval_flag

    rows = [dict(row) for row in rows]
    for row in rows:
        if row.get("ci_flag") is None and all(
            math.isfinite(_float(row.get(k))) for k in ("estimate", "ci_low", "ci_high")
        ):
            row["ci_flag"], row["ci_note"] = interval_flag(
                row["estimate"], row["ci_low"], row["ci_high"]
            )
    table = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    for column in ("n", "events"):
        table[column] = pd.array(table[column].astype("float").round(), dtype="Int64")
    for column in ("estimate", "ci_low", "ci_high", "p_value", "statistic", "df", "coef", "se"):
        table[column] = table[column].astype("float64")
    table["note"] = table["note"].fillna("").astype(str)
    for column in ("ci_flag", "ci_note"):
        table[column] = table[column].astype(object).where(table[column].notna(), None)
    return table


def _float(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def level_label(value: Any) -> str:
    """A group level as text: 1.0 -> '1', 'high' -> 'high'."""
    if isinstance(value, bool | np.bool_):
        return str(int(value))
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


# --------------------------------------------------------------------------------------------
# Input preparation
# --------------------------------------------------------------------------------------------


def survival_data(frame: Any, time: str, event: str, columns: Sequence[str] = ()) -> pd.DataFrame:
    """`frame` reduced to `__time`, `__event` (0/1) and `columns`; rows without time/event dropped.

    Raises ValueError naming the column when a column is missing, a time is negative or an
    event is not coded 0/1 (or True/False): those are study-configuration errors.
    """
    import pandas as pd

    frame = _as_pandas(frame)
    wanted = [time, event, *[c for c in columns if c not in (time, event)]]
    missing = [c for c in dict.fromkeys(wanted) if c not in frame.columns]
    if missing:
        raise ValueError(
            f"survival analysis needs column(s) {missing}, which the study data lacks; "
            f"available columns: {sorted(map(str, frame.columns))}"
        )
    data = frame[list(dict.fromkeys(wanted))].copy()
    data[_TIME] = pd.to_numeric(data[time], errors="coerce").astype(float)
    raw_event = data[event]
    if raw_event.dtype == bool:
        raw_event = raw_event.astype(float)
    event_values = pd.to_numeric(raw_event, errors="coerce").astype(float)
    bad_event = event_values.notna() & ~event_values.isin([0.0, 1.0])
    if bad_event.any():
        examples = sorted(set(map(str, raw_event[bad_event].head(5))))
        raise ValueError(
            f"event column '{event}' must be coded 0/1 (or True/False); found {examples}: "
            "recode it in the clinical file"
        )
    data[_EVENT] = event_values
    negative = data[_TIME] < 0
    if negative.any():
        raise ValueError(
            f"time column '{time}' has {int(negative.sum())} negative value(s); "
            "survival times must be >= 0"
        )
    data = data[data[_TIME].notna() & data[_EVENT].notna()].copy()
    data[_EVENT] = data[_EVENT].astype(int)
    return data


def _as_pandas(frame: Any) -> pd.DataFrame:
    import pandas as pd

    if isinstance(frame, pd.DataFrame):
        return frame
    if hasattr(frame, "to_pandas"):  # polars
        return frame.to_pandas()
    return pd.DataFrame(frame)


def _natural_key(value: Any) -> tuple:
    """Sort key: numbers numerically, text by its leading number then alphabetically."""
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
        return (0, float(value), "")
    text = str(value)
    match = re.match(r"^\s*(-?\d+(?:\.\d+)?)", text)
    if match:
        return (1, float(match.group(1)), text)
    return (2, 0.0, text)


def group_levels(values: pd.Series, order: Sequence[Any] | None = None) -> list[Any]:
    """Levels of a grouping column in analysis order (explicit, categorical, numeric or natural)."""
    present = [v for v in values.dropna().unique()]
    if order is not None:
        wanted = [v for v in order if v in set(present)]
        return wanted + sorted((v for v in present if v not in set(order)), key=_natural_key)
    if getattr(values.dtype, "name", "") == "category":
        return [v for v in values.cat.categories if v in set(present)]
    return sorted(present, key=_natural_key)


def _is_ordered(values: pd.Series, levels: Sequence[Any], order: Sequence[Any] | None) -> bool:
    """Whether a trend test makes sense: explicit order, ordered categorical, numbers."""
    import pandas as pd

    if order is not None:
        return True
    if getattr(values.dtype, "name", "") == "category":
        return bool(values.cat.ordered)
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return True
    return all(_natural_key(level)[0] in (0, 1) for level in levels)


def _trend_scores(values: pd.Series, levels: Sequence[Any]) -> dict[Any, float]:
    """Numeric levels score as themselves, other ordered levels as 1..K."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return {level: float(level) for level in levels}
    return {level: float(rank) for rank, level in enumerate(levels, start=1)}


# --------------------------------------------------------------------------------------------
# Kaplan-Meier
# --------------------------------------------------------------------------------------------


def r_quantile_time(timeline: Sequence[float], survival: Sequence[float], q: float = 0.5) -> float:
    """Time at which a step survival curve reaches q, by R `quantile.survfit`'s rule.

    The first time with S(t) <= q; when S(t) == q (within sqrt(machine eps)) on a flat stretch,
    the midpoint between that stretch's start and the next drop below q (or the last time).
    NaN when the curve never reaches q.
    """
    times = np.asarray(timeline, dtype=float)
    surv = np.asarray(survival, dtype=float)
    valid = np.isfinite(surv)
    times, surv = times[valid], surv[valid]
    at_q = np.abs(surv - q) < _MEDIAN_TOLERANCE
    below = surv < q - _MEDIAN_TOLERANCE
    if at_q.any():
        start = times[at_q][0]
        end = times[below][0] if below.any() else times[at_q][-1]
        return float(0.5 * (start + end))
    if below.any():
        return float(times[below][0])
    return math.nan


def _fit_km(durations: np.ndarray, events: np.ndarray, label: str, alpha: float):
    from lifelines import KaplanMeierFitter

    return KaplanMeierFitter(alpha=alpha).fit(durations, events, label=label)


def km_rows(
    data: pd.DataFrame,
    time: str,
    event: str,
    group: str | None,
    times: Sequence[float],
    *,
    endpoint: str,
    cohort: str,
    group_order: Sequence[Any] | None = None,
    alpha: float = 0.05,
) -> list[dict[str, Any]]:
    """Kaplan-Meier per group: survival at `times` with CIs, number at risk, median with CI.

    Terms: `<level>@<t>` (`km_survival`, `km_at_risk`) and `<level>` (`km_median`); with
    `group=None` the single level is `all`.
    """
    data = survival_data(data, time, event, [group] if group else [])
    ci_note = f"{int(round((1 - alpha) * 100))}% CI: Greenwood variance, log(-log) transform"
    rows: list[dict[str, Any]] = []
    for label, subset in _groups(data, group, group_order):
        durations = subset[_TIME].to_numpy(float)
        observed = subset[_EVENT].to_numpy(int)
        n, n_events = len(durations), int(observed.sum())
        if n == 0:
            continue
        kmf = _fit_km(durations, observed, label, alpha)
        curve = kmf.survival_function_.iloc[:, 0]
        bands = kmf.confidence_interval_survival_function_
        last_follow_up = float(durations.max())
        for t in times:
            term = f"{label}@{level_label(t)}"
            at_risk = int((durations >= t).sum())
            rows.append(
                result_row(
                    endpoint,
                    cohort,
                    "km_at_risk",
                    term,
                    estimate=at_risk,
                    n=n,
                    events=int(observed[durations <= t].sum()),
                    note="patients with time >= t",
                )
            )
            if t > last_follow_up:
                rows.append(
                    result_row(
                        endpoint,
                        cohort,
                        "km_survival",
                        term,
                        n=n,
                        events=n_events,
                        note=f"not estimable: beyond last follow-up ({last_follow_up:g})",
                    )
                )
                continue
            upto = curve.loc[:t]
            band = bands.loc[:t].iloc[-1]
            rows.append(
                result_row(
                    endpoint,
                    cohort,
                    "km_survival",
                    term,
                    estimate=float(upto.iloc[-1]),
                    ci_low=float(band.iloc[0]),
                    ci_high=float(band.iloc[1]),
                    n=n,
                    events=int(observed[durations <= t].sum()),
                    note=f"S(t); {ci_note}; {at_risk} at risk; events = events by t",
                )
            )
        timeline = curve.index.to_numpy(float)
        median = r_quantile_time(timeline, curve.to_numpy(float))
        median_low = r_quantile_time(timeline, bands.iloc[:, 0].to_numpy(float))
        median_high = r_quantile_time(timeline, bands.iloc[:, 1].to_numpy(float))
        notes = ["R quantile.survfit rule; CI from the log(-log) bands"]
        if math.isnan(median):
            notes.insert(0, "median not reached")
        elif math.isnan(median_high):
            notes.insert(0, "upper limit not reached")
        rows.append(
            result_row(
                endpoint,
                cohort,
                "km_median",
                label,
                estimate=median,
                ci_low=median_low,
                ci_high=median_high,
                n=n,
                events=n_events,
                note="; ".join(notes),
            )
        )
    return rows


def _groups(data: pd.DataFrame, group: str | None, order: Sequence[Any] | None):
    """(label, subset) per group level in analysis order; one `all` group without `group`."""
    if not group:
        yield "all", data
        return
    present = data[data[group].notna()]
    for level in group_levels(present[group], order):
        yield level_label(level), present[present[group] == level]


def plot_km(
    data: pd.DataFrame,
    ax: Any,
    *,
    time: str = "time",
    event: str = "event",
    group: str | None = None,
    group_order: Sequence[Any] | None = None,
    at_risk_times: Sequence[float] | None = None,
    title: str | None = None,
    time_label: str | None = None,
    show_ci: bool = True,
    alpha: float = 0.05,
) -> Any:
    """Kaplan-Meier curves per group on `ax` with the number at risk (time >= t) under it.

    The at-risk row is lifelines' `add_at_risk_counts` at `at_risk_times` (else the x ticks).
    """
    from lifelines.plotting import add_at_risk_counts

    data = survival_data(data, time, event, [group] if group else [])
    fitters = []
    for label, subset in _groups(data, group, group_order):
        if subset.empty:
            continue
        kmf = _fit_km(subset[_TIME].to_numpy(float), subset[_EVENT].to_numpy(int), label, alpha)
        kmf.plot_survival_function(ax=ax, ci_show=show_ci, show_censors=True)
        fitters.append(kmf)
    ax.set_xlabel(time_label or time)
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    if title:
        ax.set_title(title)
    if fitters:
        max_time = float(data[_TIME].max())
        if at_risk_times:
            ax.set_xticks(sorted({0.0, *[float(t) for t in at_risk_times if 0 <= t <= max_time]}))
        low, high = ax.get_xlim()
        ticks = [float(t) for t in ax.get_xticks() if low <= t <= high]
        # lifelines counts time > tick; a tick nudged by a hair counts time >= t, as R does
        nudge = 1e-9 * max(high - low, 1.0)
        nudged = [t - nudge if t > low + nudge else t for t in ticks]
        add_at_risk_counts(*fitters, ax=ax, fig=ax.figure, rows_to_show=["At risk"], xticks=nudged)
    return ax


# --------------------------------------------------------------------------------------------
# Log-rank tests
# --------------------------------------------------------------------------------------------


def logrank_rows(
    data: pd.DataFrame,
    time: str,
    event: str,
    group: str,
    *,
    endpoint: str,
    cohort: str,
    group_order: Sequence[Any] | None = None,
    trend: bool | None = None,
) -> list[dict[str, Any]]:
    """Overall, pairwise and (ordered groups) trend log-rank tests as rows.

    `trend=None` tests for trend when the levels are ordered (numeric, an ordered categorical,
    an explicit `group_order` or text starting with a number) and there are 3 or more.
    """
    from lifelines.statistics import multivariate_logrank_test, pairwise_logrank_test

    data = survival_data(data, time, event, [group])
    data = data[data[group].notna()]
    levels = group_levels(data[group], group_order)
    if len(levels) < 2:
        return [
            result_row(
                endpoint,
                cohort,
                "logrank",
                group,
                n=len(data),
                events=int(data[_EVENT].sum()),
                note=f"not tested: {len(levels)} group level(s) present",
            )
        ]
    labels = data[group].map({level: level_label(level) for level in levels})
    durations, observed = data[_TIME], data[_EVENT]
    n, n_events = len(data), int(observed.sum())
    overall = multivariate_logrank_test(durations, labels, observed)
    level_text = " vs ".join(level_label(level) for level in levels)
    rows = [
        result_row(
            endpoint,
            cohort,
            "logrank",
            f"{group}: {level_text}",
            statistic=overall.test_statistic,
            df=overall.degrees_of_freedom,
            p_value=overall.p_value,
            n=n,
            events=n_events,
            note="chi-square, lifelines multivariate_logrank_test",
        )
    ]
    if len(levels) > 2:
        pairwise = pairwise_logrank_test(durations, labels, observed)
        for (first, second), result in pairwise.summary.iterrows():
            in_pair = labels.isin([first, second])
            rows.append(
                result_row(
                    endpoint,
                    cohort,
                    "logrank_pairwise",
                    f"{first} vs {second}",
                    statistic=result["test_statistic"],
                    df=1,
                    p_value=result["p"],
                    n=int(in_pair.sum()),
                    events=int(observed[in_pair].sum()),
                    note="chi-square, unadjusted p",
                )
            )
    ordered = _is_ordered(data[group], levels, group_order) if trend is None else trend
    if ordered and len(levels) > 2 and n_events == 0:
        rows.append(
            result_row(
                endpoint,
                cohort,
                "logrank_trend",
                f"{group}: {level_text}",
                n=n,
                events=0,
                note="not tested: no events",
            )
        )
    elif ordered and len(levels) > 2:
        scores = _trend_scores(data[group], levels)
        result = logrank_trend(durations, observed, data[group], scores)
        score_text = ", ".join(f"{level_label(k)}={v:g}" for k, v in scores.items())
        rows.append(
            result_row(
                endpoint,
                cohort,
                "logrank_trend",
                f"{group}: {level_text}",
                statistic=result["statistic"],
                df=1,
                p_value=result["p_value"],
                n=n,
                events=n_events,
                note=(
                    f"chi-square for trend, scores {score_text}; U={result['u']:.4g} "
                    f"({'more' if result['u'] > 0 else 'fewer'} events than expected at "
                    "higher scores)"
                ),
            )
        )
    return rows


def logrank_trend(
    durations: Sequence[float],
    events: Sequence[int],
    groups: Sequence[Any],
    scores: Mapping[Any, float],
) -> dict[str, Any]:
    """Log-rank test for trend across ordered groups with the given scores (formula above).

    Returns statistic (chi-square, 1 df), p_value, u, variance, and the per-group observed,
    expected and covariance matrix (levels in the order of `scores`).
    """
    from scipy.stats import chi2

    levels = list(scores)
    weights = np.array([float(scores[level]) for level in levels])
    t = np.asarray(durations, dtype=float)
    e = np.asarray(events, dtype=int)
    g = np.asarray(groups, dtype=object)
    keep = np.isin(g, np.array(levels, dtype=object))
    t, e, g = t[keep], e[keep], g[keep]
    event_times = np.unique(t[e == 1])
    at_risk = np.zeros((len(event_times), len(levels)))
    deaths = np.zeros_like(at_risk)
    for k, level in enumerate(levels):
        in_group = g == level
        times_k = np.sort(t[in_group])
        at_risk[:, k] = len(times_k) - np.searchsorted(times_k, event_times, side="left")
        death_times = np.sort(t[in_group & (e == 1)])
        deaths[:, k] = np.searchsorted(death_times, event_times, side="right") - np.searchsorted(
            death_times, event_times, side="left"
        )
    n_j = at_risk.sum(axis=1)
    d_j = deaths.sum(axis=1)
    share = at_risk / n_j[:, None]
    expected = (d_j[:, None] * share).sum(axis=0)
    observed = deaths.sum(axis=0)
    # the hypergeometric factor d (n - d) / (n - 1); a risk set of one carries no variance
    factor = np.where(n_j > 1, d_j * (n_j - d_j) / np.maximum(n_j - 1, 1), 0.0)
    covariance = (
        np.diag((factor[:, None] * share).sum(axis=0)) - (share * factor[:, None]).T @ share
    )
    u = float(weights @ (observed - expected))
    variance = float(weights @ covariance @ weights)
    statistic = u * u / variance if variance > 0 else math.nan
    return {
        "statistic": statistic,
        "df": 1,
        "p_value": float(chi2.sf(statistic, 1)) if variance > 0 else math.nan,
        "u": u,
        "variance": variance,
        "levels": levels,
        "observed": observed,
        "expected": expected,
        "covariance": covariance,
    }


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
        return int(self.frame[_EVENT].sum())


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
    model_frame[_TIME] = data.loc[model_frame.index, _TIME]
    model_frame[_EVENT] = data.loc[model_frame.index, _EVENT]
    if int(model_frame[_EVENT].sum()) == 0:
        raise ValueError("no events in this cohort")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitter = CoxPHFitter(alpha=alpha).fit(model_frame, duration_col=_TIME, event_col=_EVENT)
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
                events=int(data[_EVENT].sum()),
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
    return (c, *_percentile_interval(replicates, alpha))


def _percentile_interval(replicates: np.ndarray, alpha: float) -> tuple[float, float]:
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


# --------------------------------------------------------------------------------------------
# Cut-offs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cutoff:
    """A cut-off chosen for a continuous variable (`low`: value <= cut, `high`: value > cut)."""

    variable: str
    method: str
    value: float
    statistic: float = math.nan
    p_value: float = math.nan
    n: int = 0
    events: int = 0
    minprop: float = 0.1
    maxprop: float = 0.9
    cuts: tuple[float, ...] = ()
    statistics: tuple[float, ...] = ()


def logrank_scores(durations: Sequence[float], events: Sequence[int]) -> np.ndarray:
    """Log-rank (Savage) scores of censored times, as exactRankTests `cscores.Surv`.

    a_i = delta_i - sum over j with t_j <= t_i of delta_j / (N - r_j + 1), r_j = number of
    times <= t_j (ties get the maximum rank).
    """
    t = np.asarray(durations, float)
    e = np.asarray(events, float)
    order = np.argsort(t, kind="stable")
    sorted_t = t[order]
    rank_max = np.searchsorted(sorted_t, t, side="right")  # 1-based max rank
    factor = e / (len(t) - rank_max + 1)
    cumulative = np.cumsum(factor[order])
    return e - cumulative[rank_max - 1]


def lausen92_p(statistic: float, minprop: float = 0.1, maxprop: float = 0.9) -> float:
    """Lausen & Schumacher (1992) approximate p-value of a maximally selected statistic.

    R maxstat `pLausen92`: 4 phi(b)/b + phi(b) (b - 1/b) log(e2 (1 - e1) / ((1 - e2) e1)),
    floored at 0; 1 when b < 1.
    """
    b = float(statistic)
    if not math.isfinite(b):
        return math.nan
    if b < 1:
        return 1.0
    density = math.exp(-0.5 * b * b) / math.sqrt(2 * math.pi)
    log_ratio = math.log((maxprop * (1 - minprop)) / ((1 - maxprop) * minprop))
    return max(4 * density / b + density * (b - 1 / b) * log_ratio, 0.0)


def maxstat_cutoff(
    values: Sequence[float],
    durations: Sequence[float],
    events: Sequence[int],
    *,
    variable: str = "x",
    minprop: float = 0.1,
    maxprop: float = 0.9,
) -> Cutoff:
    """Maximally selected log-rank statistic cut-off (R `maxstat.test`, smethod LogRank, Lau92)."""
    x = np.asarray(values, float)
    t = np.asarray(durations, float)
    e = np.asarray(events, int)
    keep = np.isfinite(x) & np.isfinite(t)
    x, t, e = x[keep], t[keep], e[keep]
    n = len(x)
    if n < 2 or e.sum() == 0:
        raise ValueError(f"cut-off for '{variable}': needs patients with events (n={n})")
    scores = logrank_scores(t, e)
    order = np.argsort(x, kind="stable")
    y, xs = scores[order], x[order]
    first_of_value = np.r_[True, xs[1:] != xs[:-1]]
    m = np.flatnonzero(first_of_value)  # patients strictly below each distinct value
    m = m[(m >= math.floor(n * minprop)) & (m <= math.floor(n * maxprop)) & (m > 0) & (m < n)]
    if len(m) == 0:
        raise ValueError(
            f"cut-off for '{variable}': no distinct value splits the {n} patients between "
            f"{minprop:.0%} and {maxprop:.0%}"
        )
    total = y.sum()
    expected = m / n * total
    variance = m * (n - m) / (n**2 * (n - 1)) * (n * (y**2).sum() - total**2)
    standardized = np.abs((np.cumsum(y)[m - 1] - expected) / np.sqrt(variance))
    best = int(np.argmax(standardized))  # first maximum, as R
    statistic = float(standardized[best])
    return Cutoff(
        variable=variable,
        method="maxstat",
        value=float(xs[m[best] - 1]),
        statistic=statistic,
        p_value=lausen92_p(statistic, minprop, maxprop),
        n=n,
        events=int(e.sum()),
        minprop=minprop,
        maxprop=maxprop,
        cuts=tuple(float(v) for v in xs[m - 1]),
        statistics=tuple(float(v) for v in standardized),
    )


def choose_cutoff(
    values: Sequence[float],
    durations: Sequence[float],
    events: Sequence[int],
    *,
    method: str = "maxstat",
    variable: str = "x",
    minprop: float = 0.1,
    maxprop: float = 0.9,
) -> Cutoff:
    """A cut-off by `maxstat` (maximally selected log-rank statistic) or `median`."""
    if method == "maxstat":
        return maxstat_cutoff(
            values, durations, events, variable=variable, minprop=minprop, maxprop=maxprop
        )
    if method == "median":
        x = np.asarray(values, float)
        e = np.asarray(events, int)
        keep = np.isfinite(x)
        if not keep.any():
            raise ValueError(f"cut-off for '{variable}': no values")
        return Cutoff(
            variable=variable,
            method="median",
            value=float(np.median(x[keep])),
            n=int(keep.sum()),
            events=int(e[keep].sum()),
        )
    raise ValueError(f"cut-off method '{method}' is unknown; use 'maxstat' or 'median'")


def apply_cutoff(values: Sequence[float], cutoff: Cutoff | float) -> np.ndarray:
    """`low` (value <= cut) / `high` (value > cut) / None (missing) for each value."""
    cut = cutoff.value if isinstance(cutoff, Cutoff) else float(cutoff)
    x = np.asarray(values, float)
    labels = np.where(x > cut, HIGH, LOW).astype(object)
    labels[~np.isfinite(x)] = None
    return labels


def plot_maxstat(cutoff: Cutoff, ax: Any) -> Any:
    """Standardized log-rank statistic per candidate cut, the chosen cut marked."""
    ax.plot(cutoff.cuts, cutoff.statistics, marker="o", markersize=3, linewidth=1)
    ax.axvline(cutoff.value, linestyle="--", color="grey")
    ax.set_xlabel(cutoff.variable)
    ax.set_ylabel("standardized log-rank statistic")
    ax.set_title(
        f"cut-off {cutoff.value:g} (M = {cutoff.statistic:.3f}, Lau92 p = {cutoff.p_value:.3g})"
    )
    return ax


# --------------------------------------------------------------------------------------------
# One survival entry across cohorts
# --------------------------------------------------------------------------------------------


def cohort_names(values: pd.Series) -> list[str]:
    present = [str(v) for v in values.dropna().unique()]
    known = [c for c in COHORT_ORDER if c in present]
    return known + sorted(c for c in present if c not in COHORT_ORDER)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "x"


def _save(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path


def run_survival(
    frame: Any,
    endpoint: str,
    time: str,
    event: str,
    groups: str | None = None,
    cox_terms: Sequence[str] = (),
    times: Sequence[float] = (),
    cohort_col: str | None = "cohort",
    cutoff: Mapping[str, Any] | None = None,
    reference_levels: Mapping[str, Any] | None = None,
    out_dir: str | Path | None = None,
    *,
    agreement: Mapping[str, Any] | None = None,
    group_order: Sequence[Any] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 42,
    alpha: float = 0.05,
    train_cohort: str = "train",
) -> tuple[pd.DataFrame, list[Path]]:
    """Run one `survival:` entry of a study on every cohort; returns (rows, figure paths).

    `frame` has one row per patient: `time`, `event`, the `groups` column, the `cox_terms`
    and `cohort_col` (train / internal_validation / external_validation...; without it all
    patients form one cohort `all`). `cutoff` ({method: maxstat|median, variable, minprop,
    maxprop}) is chosen on the `train_cohort` rows only, then `variable` is replaced by
    `low`/`high` in every cohort, so `groups` and `cox_terms` naming it use the cut (and
    `groups` defaults to it). Per cohort: Kaplan-Meier, log-rank (overall, pairwise, trend),
    univariable and multivariable Cox with PH tests, and C-index rows for the group and the
    multivariable model (models fitted on the training cohort, bootstrap CI). `agreement`
    ({score, readers: [...], categories}) adds `assets.studies.agreement.agreement_rows` per
    cohort. `cutoff` and `agreement` may also be objects with those attributes (the study
    spec's dataclasses). Figures (KM per cohort, the maxstat curve) go to `out_dir` if given.
    """
    frame = _as_pandas(frame).copy()
    cutoff, agreement = _as_mapping(cutoff), _as_mapping(agreement)
    if cohort_col and cohort_col not in frame.columns:
        raise ValueError(f"cohort column '{cohort_col}' is not in the study data")
    if not cohort_col:
        cohort_col = "__cohort"
        frame[cohort_col] = "all"
    frame[cohort_col] = frame[cohort_col].astype("string")
    cohorts = cohort_names(frame[cohort_col])
    cox_terms = list(dict.fromkeys(cox_terms or []))
    times = [float(t) for t in (times or [])]
    reference_levels = dict(reference_levels or {})
    cutoff_variable = (cutoff or {}).get("variable")
    groups = groups or cutoff_variable
    needed = [c for c in dict.fromkeys([groups, *cox_terms, cutoff_variable]) if c]
    data = survival_data(frame, time, event, [*needed, cohort_col])
    rows: list[dict[str, Any]] = []
    figures: list[Path] = []
    out = Path(out_dir) if out_dir is not None else None
    level_orders: dict[str, Sequence[Any]] = {}
    if groups and group_order is not None:
        level_orders[groups] = group_order

    if cutoff:
        basis_name = train_cohort if train_cohort in cohorts else None
        if basis_name is None and cohorts == ["all"]:
            basis_name = "all"
        if basis_name is None:
            raise ValueError(
                f"cut-off for '{cutoff_variable}' must be chosen on the '{train_cohort}' cohort, "
                f"but the study data has only {cohorts}"
            )
        chosen, cutoff_row = _choose_on(data[data[cohort_col] == basis_name], cutoff, endpoint)
        cutoff_row["cohort"] = basis_name
        rows.append(cutoff_row)
        if chosen is None:
            return results_frame(rows), figures
        import pandas as pd

        numeric = pd.to_numeric(data[cutoff_variable], errors="coerce").to_numpy(float)
        data[cutoff_variable] = apply_cutoff(numeric, chosen)
        level_orders[cutoff_variable] = [LOW, HIGH]
        reference_levels.setdefault(cutoff_variable, LOW)
        if out is not None and chosen.method == "maxstat":
            from matplotlib.figure import Figure

            figure = Figure(figsize=(6, 4))
            plot_maxstat(chosen, figure.subplots())
            name = f"maxstat_{_slug(endpoint)}_{_slug(cutoff_variable)}.png"
            figures.append(_save(figure, out / name))

    designs = {
        term: cox_design(data, [term], reference_levels, level_orders)
        for term in dict.fromkeys([*([groups] if groups else []), *cox_terms])
    }
    multivariable = (
        cox_design(data, cox_terms, reference_levels, level_orders) if len(cox_terms) > 1 else None
    )
    fit_basis = train_cohort if train_cohort in cohorts else cohorts[0] if cohorts else None
    c_models = _c_index_models(
        data[data[cohort_col] == fit_basis] if fit_basis else data.iloc[:0],
        fit_basis,
        groups,
        cox_terms,
        designs,
        multivariable,
        alpha,
    )
    for cohort in cohorts:
        subset = data[data[cohort_col] == cohort]
        common = {"endpoint": endpoint, "cohort": cohort}
        group_order_here = level_orders.get(groups) if groups else None
        rows.extend(
            km_rows(
                subset,
                _TIME,
                _EVENT,
                groups,
                times,
                group_order=group_order_here,
                alpha=alpha,
                **common,
            )
        )
        if groups:
            rows.extend(
                logrank_rows(subset, _TIME, _EVENT, groups, group_order=group_order_here, **common)
            )
        rows.extend(_cox_cohort_rows(subset, cox_terms, designs, multivariable, alpha, common))
        for name, (design, fit, basis_note) in c_models.items():
            rows.append(
                _c_index_row(
                    subset, name, design, fit, basis_note, n_bootstrap, seed, alpha, common
                )
            )
        if agreement:
            rows.extend(
                _agreement_cohort_rows(frame[frame[cohort_col] == cohort], agreement, alpha, common)
            )
        if out is not None:
            from matplotlib.figure import Figure

            figure = Figure(figsize=(7, 5.5))
            plot_km(
                subset,
                figure.subplots(),
                time=_TIME,
                event=_EVENT,
                group=groups,
                group_order=group_order_here,
                at_risk_times=times or None,
                title=f"{endpoint}: {cohort}",
                time_label=time,
                alpha=alpha,
            )
            figures.append(_save(figure, out / f"km_{_slug(endpoint)}_{_slug(cohort)}.png"))
    return results_frame(rows), figures


def _as_mapping(value: Any) -> dict[str, Any] | None:
    """A mapping, or an object with attributes (e.g. the study spec's dataclasses), as a dict."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return dict(value)
    if is_dataclass(value):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    return dict(vars(value))


def _choose_on(
    basis: pd.DataFrame, cutoff: Mapping[str, Any], endpoint: str
) -> tuple[Cutoff | None, dict[str, Any]]:
    """Choose the cut-off on the training rows; returns (cutoff or None, its result row)."""
    import pandas as pd

    variable = cutoff["variable"]
    minprop = float(cutoff.get("minprop", 0.1))
    maxprop = float(cutoff.get("maxprop", 0.9))
    try:
        chosen = choose_cutoff(
            pd.to_numeric(basis[variable], errors="coerce").to_numpy(float),
            basis[_TIME].to_numpy(float),
            basis[_EVENT].to_numpy(int),
            method=str(cutoff.get("method", "maxstat")),
            variable=variable,
            minprop=minprop,
            maxprop=maxprop,
        )
    except ValueError as error:  # no usable split is a result, the run goes on without it
        return None, result_row(endpoint, "", "cutoff", variable, note=f"not chosen: {error}")
    method_note = (
        f"maximally selected log-rank statistic over splits with {minprop:.0%}-{maxprop:.0%} "
        "of patients at or below the cut; p: Lausen-Schumacher 1992 approximation (maxstat Lau92)"
        if chosen.method == "maxstat"
        else "median of the training values"
    )
    row = result_row(
        endpoint,
        "",
        "cutoff",
        variable,
        estimate=chosen.value,
        statistic=chosen.statistic,
        p_value=chosen.p_value,
        n=chosen.n,
        events=chosen.events,
        note=f"{method_note}; low: value <= cut, high: value > cut; applied unchanged to all cohorts",
    )
    return chosen, row


def _c_index_models(
    basis: pd.DataFrame,
    basis_name: str | None,
    groups: str | None,
    cox_terms: Sequence[str],
    designs: Mapping[str, CoxDesign],
    multivariable: CoxDesign | None,
    alpha: float,
) -> dict[str, tuple[CoxDesign, CoxFit | None, str]]:
    """Cox models whose linear predictor is scored by C-index, fitted on the training cohort."""
    candidates: list[tuple[str, CoxDesign]] = []
    if groups:
        candidates.append((groups, designs[groups]))
    if multivariable is not None:
        candidates.append((f"multivariable: {' + '.join(cox_terms)}", multivariable))
    elif not groups and cox_terms:
        candidates.append((cox_terms[0], designs[cox_terms[0]]))
    models: dict[str, tuple[CoxDesign, CoxFit | None, str]] = {}
    for name, design in candidates:
        try:
            fit = fit_cox(basis, design, alpha=alpha)
        except Exception as error:  # reported on every cohort's c_index row
            models[name] = (design, None, f"not estimable on {basis_name}: {error}")
        else:
            models[name] = (design, fit, f"model fitted on {basis_name}")
    return models


def _cox_cohort_rows(
    subset: pd.DataFrame,
    cox_terms: Sequence[str],
    designs: Mapping[str, CoxDesign],
    multivariable: CoxDesign | None,
    alpha: float,
    common: Mapping[str, str],
) -> list[dict[str, Any]]:
    """Univariable and multivariable Cox rows of one cohort, with the PH test of the model."""
    rows: list[dict[str, Any]] = []
    last_fit = None
    for term in cox_terms:
        term_rows, last_fit = cox_rows(
            subset, designs[term], analysis="cox_univariable", alpha=alpha, **common
        )
        rows.extend(term_rows)
    if multivariable is not None:
        term_rows, fit = cox_rows(
            subset, multivariable, analysis="cox_multivariable", alpha=alpha, **common
        )
        rows.extend(term_rows)
        if fit is not None:
            rows.extend(ph_test_rows(fit, model=" + ".join(cox_terms), **common))
    elif last_fit is not None:
        rows.extend(ph_test_rows(last_fit, model=cox_terms[0], **common))
    return rows


def _c_index_row(
    subset: pd.DataFrame,
    name: str,
    design: CoxDesign,
    fit: CoxFit | None,
    basis_note: str,
    n_bootstrap: int,
    seed: int,
    alpha: float,
    common: Mapping[str, str],
) -> dict[str, Any]:
    """Harrell's C with its bootstrap CI for one training-fitted model on one cohort."""
    if fit is None:
        return result_row(analysis="c_index", term=name, note=basis_note, **common)
    from assets.studies.ci_flags import interval_flag

    risk = cox_risk(fit, design, subset)
    usable = risk.notna()
    c, replicates = c_index_replicates(
        subset.loc[usable, _TIME],
        subset.loc[usable, _EVENT],
        risk[usable],
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    low, high = _percentile_interval(replicates, alpha)
    if math.isnan(c):
        return result_row(
            analysis="c_index",
            term=name,
            n=int(usable.sum()),
            events=int(subset.loc[usable, _EVENT].sum()),
            note=f"not estimable: no comparable pairs (no events); {basis_note}",
            **common,
        )
    flag, flag_note = (
        interval_flag(c, low, high, replicates, reason="no comparable pair in the resample")
        if len(replicates)
        else (None, None)  # bootstrap: 0, no interval asked for
    )
    return result_row(
        analysis="c_index",
        term=name,
        estimate=c,
        ci_low=low,
        ci_high=high,
        ci_flag=flag,
        ci_note=flag_note,
        n=int(usable.sum()),
        events=int(subset.loc[usable, _EVENT].sum()),
        note=(
            f"Harrell's C of the Cox linear predictor ({basis_note}); percentile bootstrap "
            f"{int(round((1 - alpha) * 100))}% CI, {n_bootstrap} resamples, seed {seed}"
        ),
        **common,
    )


def _agreement_cohort_rows(
    cohort_frame: pd.DataFrame,
    agreement: Mapping[str, Any],
    alpha: float,
    common: Mapping[str, str],
) -> list[dict[str, Any]]:
    """Agreement rows of one cohort (score vs each reader, readers vs each other)."""
    from assets.studies.agreement import agreement_rows

    readers = agreement.get("readers") or []
    readers = [readers] if isinstance(readers, str) else list(readers)
    return agreement_rows(
        cohort_frame,
        agreement["score"],
        readers,
        categories=agreement.get("categories"),
        alpha=alpha,
        **common,
    ).to_dict("records")
