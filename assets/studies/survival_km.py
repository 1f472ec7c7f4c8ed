"""Kaplan-Meier and log-rank tests of a survival endpoint, and the input they share.

Pure logic over pandas DataFrames (used by ``survival.run_survival``); every estimate comes back
as one tidy row (``results.result_row``). Methods (repeated in the ``note`` of each row):

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
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from assets.studies.results import (
    level_label,
    result_row,
)

if TYPE_CHECKING:
    import pandas as pd

TIME_COL, EVENT_COL = "__time", "__event"
_MEDIAN_TOLERANCE = math.sqrt(np.finfo(float).eps)  # R quantile.survfit's tolerance


# --------------------------------------------------------------------------------------------
# Input preparation
# --------------------------------------------------------------------------------------------


def survival_data(frame: Any, time: str, event: str, columns: Sequence[str] = ()) -> pd.DataFrame:
    """`frame` reduced to `__time`, `__event` (0/1) and `columns`; rows without time/event dropped.

    Raises ValueError naming the column when a column is missing, a time is negative or an
    event is not coded 0/1 (or True/False): those are study-configuration errors.
    """
    import pandas as pd

    frame = as_pandas(frame)
    wanted = [time, event, *[c for c in columns if c not in (time, event)]]
    missing = [c for c in dict.fromkeys(wanted) if c not in frame.columns]
    if missing:
        raise ValueError(
            f"survival analysis needs column(s) {missing}, which the study data lacks; "
            f"available columns: {sorted(map(str, frame.columns))}"
        )
    data = frame[list(dict.fromkeys(wanted))].copy()
    data[TIME_COL] = pd.to_numeric(data[time], errors="coerce").astype(float)
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
    data[EVENT_COL] = event_values
    negative = data[TIME_COL] < 0
    if negative.any():
        raise ValueError(
            f"time column '{time}' has {int(negative.sum())} negative value(s); "
            "survival times must be >= 0"
        )
    data = data[data[TIME_COL].notna() & data[EVENT_COL].notna()].copy()
    data[EVENT_COL] = data[EVENT_COL].astype(int)
    return data


def as_pandas(frame: Any) -> pd.DataFrame:
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
        durations = subset[TIME_COL].to_numpy(float)
        observed = subset[EVENT_COL].to_numpy(int)
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
        kmf = _fit_km(
            subset[TIME_COL].to_numpy(float), subset[EVENT_COL].to_numpy(int), label, alpha
        )
        kmf.plot_survival_function(ax=ax, ci_show=show_ci, show_censors=True)
        fitters.append(kmf)
    ax.set_xlabel(time_label or time)
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    if title:
        ax.set_title(title)
    if fitters:
        max_time = float(data[TIME_COL].max())
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
                events=int(data[EVENT_COL].sum()),
                note=f"not tested: {len(levels)} group level(s) present",
            )
        ]
    labels = data[group].map({level: level_label(level) for level in levels})
    durations, observed = data[TIME_COL], data[EVENT_COL]
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
