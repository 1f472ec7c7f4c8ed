"""Tidy result rows shared by the survival and agreement stages (``survival_results`` shape).

Kept apart so that ``agreement`` and ``survival`` import these helpers from here and not from
each other (``survival`` calls ``agreement`` for its agreement rows).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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


def cohort_names(values: pd.Series) -> list[str]:
    present = [str(v) for v in values.dropna().unique()]
    known = [c for c in COHORT_ORDER if c in present]
    return known + sorted(c for c in present if c not in COHORT_ORDER)
