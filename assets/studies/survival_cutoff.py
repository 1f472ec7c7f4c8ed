"""Cut-offs of a continuous biomarker for survival groups, chosen on the training cohort only.

Used by ``survival.run_survival``, which applies the cut-off unchanged to every cohort and
adjusts the chosen cohort's p-values for the search. Method:

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

LOW, HIGH = "low", "high"


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
