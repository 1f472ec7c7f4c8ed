"""Agreement of a score (e.g. an AI grade) with one or more reference readers.

Pure logic over pandas DataFrames. For each pair (score vs each reader, and readers vs each
other) the rows hold, in the tidy shape of `assets.studies.results.RESULT_COLUMNS`:

- `agreement_accuracy`: proportion of patients with the same category; exact Clopper-Pearson
  95% CI (beta quantiles: lower B(a/2; x, n-x+1), upper B(1-a/2; x+1, n-x)).
- `kappa` and `weighted_kappa` (`linear`: w_ij = 1 - |i-j|/(k-1), `quadratic`:
  w_ij = 1 - (i-j)^2/(k-1)^2, agreement weights over the ordered categories; weighted kappas
  only with 3 or more categories). kappa_w = (p_o - p_e) / (1 - p_e) with
  p_o = sum w_ij p_ij and p_e = sum w_ij p_i. p_.j. CI: kappa +- z * SE with the large-sample
  (non-null) SE of Fleiss, Cohen & Everitt (1969):
  Var = [sum_ij p_ij (w_ij - (wr_i + wc_j)(1 - k))^2 - (k - p_e (1 - k))^2] / (n (1 - p_e)^2),
  wr_i = sum_j w_ij p_.j, wc_j = sum_i w_ij p_i.; the p-value tests kappa = 0 with their
  null SE: Var0 = [sum_ij p_i. p_.j (w_ij - (wr_i + wc_j))^2 - p_e^2] / (n (1 - p_e)^2).
- `confusion_matrix`: count per (reader category, score category).
- `category_count` / `category_percent`: per-category counts and percentages of each column.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from assets.studies.results import cohort_names, level_label, result_row, results_frame

if TYPE_CHECKING:
    import pandas as pd


def clopper_pearson(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Clopper-Pearson) confidence interval of a binomial proportion."""
    from scipy.stats import binomtest

    if n <= 0:
        return math.nan, math.nan
    interval = binomtest(int(successes), int(n)).proportion_ci(
        confidence_level=1 - alpha, method="exact"
    )
    return float(interval.low), float(interval.high)


def _category_key(value: Any) -> tuple:
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _normalise(value: Any) -> Any:
    """1.0 -> 1 so that a float reader column matches an integer score column."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return int(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def confusion_table(
    reference: Sequence[Any], score: Sequence[Any], categories: Sequence[Any] | None = None
) -> pd.DataFrame:
    """Counts with reference categories as rows and score categories as columns.

    Pairs with a missing value are left out; categories default to the sorted union.
    """
    import pandas as pd

    pairs = pd.DataFrame({"reference": list(reference), "score": list(score)}).dropna()
    pairs = pairs.map(_normalise)
    if categories is None:
        categories = sorted(set(pairs["reference"]) | set(pairs["score"]), key=_category_key)
    else:
        categories = [_normalise(c) for c in categories]
        unknown = (set(pairs["reference"]) | set(pairs["score"])) - set(categories)
        if unknown:
            raise ValueError(
                f"agreement categories {list(categories)} do not include observed value(s) "
                f"{sorted(map(str, unknown))}"
            )
    table = pd.crosstab(pairs["reference"], pairs["score"]).reindex(
        index=categories, columns=categories, fill_value=0
    )
    table.index.name, table.columns.name = "reference", "score"
    return table.astype(int)


def kappa_weights(k: int, weights: str | Sequence[Sequence[float]] | None = None) -> np.ndarray:
    """Agreement weights (1 on the diagonal): identity, `linear`, `quadratic` or a given matrix."""
    if weights is None or (isinstance(weights, str) and weights == "unweighted"):
        return np.eye(k)
    if isinstance(weights, str):
        distance = np.abs(np.subtract.outer(np.arange(k), np.arange(k))).astype(float)
        scale = max(k - 1, 1)
        if weights == "linear":
            return 1 - distance / scale
        if weights == "quadratic":
            return 1 - (distance / scale) ** 2
        raise ValueError(f"kappa weights '{weights}' are unknown; use linear or quadratic")
    matrix = np.asarray(weights, dtype=float)
    if matrix.shape != (k, k):
        raise ValueError(f"kappa weight matrix must be {k}x{k}, got {matrix.shape}")
    return matrix


def cohen_kappa(
    table: Any, weights: str | Sequence[Sequence[float]] | None = None, alpha: float = 0.05
) -> dict[str, float]:
    """(Weighted) Cohen's kappa of a square count table with the Fleiss-Cohen-Everitt SE.

    Returns kappa, se (non-null), ci_low, ci_high, se0 (null), z (= kappa / se0), p_value,
    po, pe and n.
    """
    from scipy.stats import norm

    counts = np.asarray(table, dtype=float)
    n = counts.sum()
    nan_result = dict.fromkeys(
        ["kappa", "se", "ci_low", "ci_high", "se0", "z", "p_value", "po", "pe"], math.nan
    )
    if n == 0:
        return {**nan_result, "n": 0.0}
    w = kappa_weights(counts.shape[0], weights)
    p = counts / n
    rows, cols = p.sum(axis=1), p.sum(axis=0)
    po = float((w * p).sum())
    pe = float((w * np.outer(rows, cols)).sum())
    if 1 - pe <= 1e-12:
        return {**nan_result, "po": po, "pe": pe, "n": float(n)}
    kappa = (po - pe) / (1 - pe)
    row_mean = w @ cols  # wr_i = sum_j w_ij p_.j
    col_mean = rows @ w  # wc_j = sum_i w_ij p_i.
    both = row_mean[:, None] + col_mean[None, :]
    variance = ((p * (w - both * (1 - kappa)) ** 2).sum() - (kappa - pe * (1 - kappa)) ** 2) / (
        n * (1 - pe) ** 2
    )
    variance0 = ((np.outer(rows, cols) * (w - both) ** 2).sum() - pe**2) / (n * (1 - pe) ** 2)
    se = math.sqrt(max(variance, 0.0))
    se0 = math.sqrt(max(variance0, 0.0))
    z_crit = float(norm.ppf(1 - alpha / 2))
    z = kappa / se0 if se0 > 0 else math.nan
    return {
        "kappa": kappa,
        "se": se,
        "ci_low": kappa - z_crit * se,
        "ci_high": kappa + z_crit * se,
        "se0": se0,
        "z": z,
        "p_value": float(2 * norm.sf(abs(z))) if se0 > 0 else math.nan,
        "po": po,
        "pe": pe,
        "n": float(n),
    }


def agreement_rows(
    frame: Any,
    score: str,
    readers: Sequence[str],
    *,
    endpoint: str = "",
    cohort: str = "all",
    categories: Sequence[Any] | None = None,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Agreement rows of `score` with each reader and of the readers with each other."""
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        frame = frame.to_pandas() if hasattr(frame, "to_pandas") else pd.DataFrame(frame)
    readers = list(readers)
    missing = [c for c in [score, *readers] if c not in frame.columns]
    if missing:
        raise ValueError(f"agreement needs column(s) {missing}, which the study data lacks")
    if categories is None:
        observed = pd.concat([frame[c] for c in [score, *readers]]).dropna().map(_normalise)
        categories = sorted(set(observed), key=_category_key)
    categories = [_normalise(c) for c in categories]
    level = int(round((1 - alpha) * 100))
    rows: list[dict[str, Any]] = []
    common = {"endpoint": endpoint, "cohort": cohort}
    for column in [score, *readers]:
        values = frame[column].dropna().map(_normalise)
        total = len(values)
        for category in categories:
            count = int((values == category).sum())
            term = f"{column}={level_label(category)}"
            rows.append(
                result_row(analysis="category_count", term=term, estimate=count, n=total, **common)
            )
            rows.append(
                result_row(
                    analysis="category_percent",
                    term=term,
                    estimate=100 * count / total if total else math.nan,
                    n=total,
                    note="percent of patients with a value",
                    **common,
                )
            )
    pairs = [(reader, score) for reader in readers] + list(itertools.combinations(readers, 2))
    for reference, rated in pairs:
        table = confusion_table(frame[reference], frame[rated], categories)
        n = int(table.to_numpy().sum())
        agree = int(np.trace(table.to_numpy()))
        pair = f"{rated} vs {reference}"
        low, high = clopper_pearson(agree, n, alpha)
        rows.append(
            result_row(
                analysis="agreement_accuracy",
                term=pair,
                estimate=agree / n if n else math.nan,
                ci_low=low,
                ci_high=high,
                statistic=agree,
                n=n,
                note=f"exact Clopper-Pearson {level}% CI; statistic = patients in agreement",
                **common,
            )
        )
        for ref_category, rated_category in itertools.product(categories, categories):
            rows.append(
                result_row(
                    analysis="confusion_matrix",
                    term=f"{reference}={level_label(ref_category)} | "
                    f"{rated}={level_label(rated_category)}",
                    estimate=int(table.loc[ref_category, rated_category]),
                    n=n,
                    **common,
                )
            )
        kappas = [("kappa", pair, None)]
        if len(categories) > 2:
            kappas += [
                ("weighted_kappa", f"{pair} (linear)", "linear"),
                ("weighted_kappa", f"{pair} (quadratic)", "quadratic"),
            ]
        for analysis, term, weights in kappas:
            result = cohen_kappa(table.to_numpy(), weights, alpha)
            rows.append(
                result_row(
                    analysis=analysis,
                    term=term,
                    estimate=result["kappa"],
                    ci_low=result["ci_low"],
                    ci_high=result["ci_high"],
                    p_value=result["p_value"],
                    statistic=result["z"],
                    n=n,
                    se=result["se"],
                    note=(
                        f"{level}% CI from the Fleiss-Cohen-Everitt 1969 large-sample SE; "
                        "p: z test of kappa = 0 with the null SE"
                        if math.isfinite(result["kappa"])
                        else "not estimable: chance agreement is 1 (a single category)"
                    ),
                    **common,
                )
            )
    return results_frame(rows)


def run_agreement(
    frame: Any,
    score: str,
    readers: Sequence[str],
    cohort_col: str | None = None,
    endpoint: str = "",
    categories: Sequence[Any] | None = None,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """`agreement_rows` per cohort (all patients as `all` without `cohort_col`)."""
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        frame = frame.to_pandas() if hasattr(frame, "to_pandas") else pd.DataFrame(frame)
    if not cohort_col:
        return agreement_rows(
            frame, score, readers, endpoint=endpoint, categories=categories, alpha=alpha
        )
    parts = [
        agreement_rows(
            subset,
            score,
            readers,
            endpoint=endpoint,
            cohort=str(cohort),
            categories=categories,
            alpha=alpha,
        )
        for cohort in cohort_names(frame[cohort_col].astype("string"))
        for subset in [frame[frame[cohort_col].astype("string") == cohort]]
    ]
    return pd.concat(parts, ignore_index=True) if parts else results_frame([])


def plot_confusion(table: pd.DataFrame, ax: Any) -> Any:
    """A confusion table (reference rows, score columns) as an annotated heat map."""
    counts = table.to_numpy()
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(counts.shape[1]), [level_label(c) for c in table.columns])
    ax.set_yticks(range(counts.shape[0]), [level_label(c) for c in table.index])
    ax.set_xlabel(str(table.columns.name or "score"))
    ax.set_ylabel(str(table.index.name or "reference"))
    threshold = counts.max() / 2 if counts.size else 0
    for (i, j), count in np.ndenumerate(counts):
        ax.text(
            j,
            i,
            str(count),
            ha="center",
            va="center",
            color="white" if count > threshold else "black",
        )
    return ax
