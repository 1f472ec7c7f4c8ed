"""Flags on confidence intervals: what a row's interval does and does not say.

A percentile bootstrap interval need not contain its estimate (a skewed statistic, a small or
separated sample, resamples that all give the same value), a Wald interval of a boundary
estimate can have zero width, and a method can give no interval at all. These are properties
of the method on this cohort, not bad data, so the study tables' quality suites do not assert
them: each row of ``model_metrics`` and ``survival_results`` says it in two columns instead.

``ci_flag`` (null when the interval is usable, or when the row has no interval by design):

- ``not_estimable``: the estimate itself is undefined on this cohort (e.g. an AUC on a cohort
  with a single class, a PPV without predicted positives); ``value`` is null.
- ``no_ci``: the estimate exists but its method gave no interval (e.g. DeLong's variance with
  fewer than 2 patients of a class, every bootstrap resample undefined).
- ``degenerate_ci``: the interval has zero width (within float precision), or its resamples
  take fewer than ``MIN_DISTINCT_RESAMPLES`` distinct values: it does not describe the
  uncertainty (e.g. a constant prediction: the stratified resamples keep the class counts, so
  every resample has the same Brier score).
- ``estimate_outside_ci``: the estimate lies outside its interval by more than float precision
  (a percentile bootstrap interval of a skewed statistic); the note gives the share of resamples
  on each side of the estimate.

``ci_note`` says why, in words, with the numbers. Equality within float precision
(``REL_TOL``, relative) is never a flag: a value computed directly and the same value
computed from resample counts differ in the last bits.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

NOT_ESTIMABLE = "not_estimable"
NO_CI = "no_ci"
DEGENERATE_CI = "degenerate_ci"
OUTSIDE_CI = "estimate_outside_ci"
CI_FLAGS = (NOT_ESTIMABLE, NO_CI, DEGENERATE_CI, OUTSIDE_CI)
MIN_DISTINCT_RESAMPLES = 5
REL_TOL = 1e-9

CI_FLAG_TEXT = {
    NOT_ESTIMABLE: "the estimate is undefined on this cohort (the note says why); no value, no "
    "interval.",
    NO_CI: "the estimate exists, but its interval method gave no interval on this cohort (the "
    "note says why).",
    DEGENERATE_CI: "the interval has zero width, or its bootstrap resamples take fewer than "
    f"{MIN_DISTINCT_RESAMPLES} distinct values: it does not describe the uncertainty of the "
    "estimate (typical of very small cohorts, or a model that predicts one probability for "
    "everyone).",
    OUTSIDE_CI: "the estimate lies outside its interval. A percentile bootstrap interval need "
    "not contain the estimate (a skewed or bounded statistic, a small or perfectly separated "
    "cohort); this is a property of the method, not an error. Read the interval with care or "
    "prefer the DeLong interval for the AUC.",
}


def _finite(value: Any) -> bool:
    return value is not None and isinstance(value, int | float | np.number) and math.isfinite(value)


def _tolerance(*values: float) -> float:
    return REL_TOL * max(1.0, *(abs(v) for v in values))


def distinct_values(values: np.ndarray) -> int:
    """Distinct values of ``values``, equal within float precision (``REL_TOL``) counted once."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    if len(ordered) == 0:
        return 0
    gaps = np.diff(ordered) > REL_TOL * np.maximum(1.0, np.abs(ordered[1:]))
    return 1 + int(gaps.sum())


def interval_flag(
    value: float | None,
    low: float | None,
    high: float | None,
    replicates: np.ndarray | None = None,
    *,
    reason: str | None = None,
) -> tuple[str | None, str | None]:
    """(ci_flag, ci_note) of an estimate and its interval (see the module docstring).

    ``replicates``: the bootstrap values the interval was read from (undefined ones included
    as NaN), or None for an analytic interval. ``reason``: why the estimate or the interval
    is undefined, when the caller knows (used in the note of ``not_estimable`` / ``no_ci``).
    """
    if not _finite(value):
        return NOT_ESTIMABLE, reason or "the estimate is undefined on this cohort"
    notes: list[str] = []
    finite = None
    if replicates is not None:
        replicates = np.asarray(replicates, dtype=np.float64)
        finite = replicates[np.isfinite(replicates)]
        undefined = len(replicates) - len(finite)
        if undefined and len(finite):
            notes.append(
                f"{undefined} of {len(replicates)} resamples undefined"
                f"{f' ({reason})' if reason else ''}; interval over the other {len(finite)}"
            )
    if not (_finite(low) and _finite(high)):
        if finite is not None and len(finite) == 0:
            why = f"every resample undefined{f' ({reason})' if reason else ''}"
        else:
            why = reason or "the interval method gave no interval on this cohort"
        return NO_CI, "; ".join([why, *notes])
    tol = _tolerance(value, low, high)
    flag = None
    if high - low <= tol:
        flag = DEGENERATE_CI
        if finite is not None:
            share = float(np.mean(np.abs(finite - low) <= tol))
            gave = "every resample" if share == 1.0 else f"{share:.1%} of resamples"
            notes.append(f"zero width: {gave} gave {low:.6g}")
        else:
            notes.append(f"zero width: [{low:.6g}, {high:.6g}] (standard error 0)")
    elif finite is not None and (distinct := distinct_values(finite)) < MIN_DISTINCT_RESAMPLES:
        flag = DEGENERATE_CI
        notes.append(
            f"only {distinct} distinct value(s) among {len(finite)} resamples "
            f"(fewer than {MIN_DISTINCT_RESAMPLES})"
        )
    if value < low - tol or value > high + tol:
        flag = flag or OUTSIDE_CI
        side = "below" if value < low else "above"
        text = f"estimate {value:.6g} lies {side} the interval [{low:.6g}, {high:.6g}]"
        if finite is not None and len(finite):
            below = float(np.mean(finite < value - tol))
            above = float(np.mean(finite > value + tol))
            text += f"; {below:.1%} of resamples below it, {above:.1%} above"
        notes.append(text)
    return flag, "; ".join(notes) or None
