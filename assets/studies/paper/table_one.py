"""Table 1: the clinical characteristics of a study's patients per cohort, with missing counts and
the p-value of the between-cohort comparison (``tableone`` 0.9, Pollard et al., JAMIA Open 2018).

Cohorts are the split's: ``train``, ``internal_validation`` and one ``external_validation:<center>``
per external center. Variables are the study's clinical columns (``inputs/clinical.parquet``: the
clinical table restricted to the cohort) except identifiers and bookkeeping; a string, boolean or
integer column with at most ``MAX_LEVELS`` distinct values is categorical, any other numeric
column continuous; strings with more levels, dates and columns without any value in the study
are left out (listed in ``skipped``).

Rules (stated in the report, ``RULES_TEXT``):
- Normality: a continuous variable is non-normal when the Shapiro-Wilk test rejects normality
  (p < 0.05) in any cohort with at least 3 values; normal variables are summarised as
  mean ± SD, the others as median [Q1, Q3].
- Tests (tableone's choice, named in ``test``): normal and two cohorts, Welch's t-test; normal and
  more, one-way ANOVA; non-normal, Kruskal-Wallis; categorical, chi-squared (Yates-corrected for
  2x2), Fisher's exact for a 2x2 table with an expected count < 5.
- Counts are n (%) of the patients with a value in that cohort; ``n_missing`` is the cohort's
  patients without a value (missing values are not a level and are not tested).
"""

from __future__ import annotations

import re
from typing import Any

import polars as pl

MAX_LEVELS = 10
NOT_VARIABLES = ("patient_key", "center_id", "source_file", "loaded_at", "study", "cohort")
SCHEMA = {
    "study": pl.String,
    "model_version": pl.String,
    "cohort": pl.String,
    "variable": pl.String,
    "level": pl.String,
    "summary": pl.String,
    "n_missing": pl.Int64,
    "p_value": pl.Float64,
    "test": pl.String,
    "kind": pl.String,
}
RULES_TEXT = (
    "Continuous variables: mean ± SD when the Shapiro-Wilk test does not reject normality "
    "(p >= 0.05) in any cohort with at least 3 values, otherwise median [Q1, Q3]; tested across "
    "cohorts with Welch's t-test (2 cohorts) or one-way ANOVA (normal), Kruskal-Wallis "
    "(non-normal). Categorical variables: n (%) of patients with a value, chi-squared test "
    "(Yates-corrected for 2x2), Fisher's exact test for a 2x2 table with an expected count < 5. "
    "Missing values are counted per cohort and left out of summaries and tests. Computed with "
    "tableone 0.9 (Pollard et al., JAMIA Open 2018) and scipy."
)


def table_one_cohorts(splits: pl.DataFrame) -> pl.DataFrame:
    """patient_key -> Table 1 cohort (each external center on its own)."""
    return splits.select(
        "patient_key",
        pl.when(pl.col("cohort") == "external_validation")
        .then(pl.lit("external_validation:") + pl.col("center_id"))
        .otherwise(pl.col("cohort"))
        .alias("cohort"),
    )


def cohort_order(names: list[str]) -> list[str]:
    """train, internal_validation, then each external center in name order."""
    rank = {"train": 0, "internal_validation": 1}
    return sorted(names, key=lambda n: (rank.get(n, 2), n))


def classify_columns(frame: pl.DataFrame) -> tuple[list[str], list[str], list[str]]:
    """(continuous, categorical, skipped) clinical columns of ``frame``."""
    continuous, categorical, skipped = [], [], []
    for name, dtype in frame.schema.items():
        if name in NOT_VARIABLES:
            continue
        levels = frame[name].drop_nulls().n_unique()
        if levels == 0:  # a column of other patients' files (no value in this study)
            skipped.append(name)
        elif (
            dtype == pl.Boolean
            or levels == 1  # a constant: one level, nothing to test
            or (
                (dtype == pl.String or dtype == pl.Categorical or dtype.is_integer())
                and levels <= MAX_LEVELS
            )
        ):
            categorical.append(name)
        elif dtype.is_numeric():
            continuous.append(name)
        else:
            skipped.append(name)
    return continuous, categorical, skipped


def non_normal(data: Any, variables: list[str], cohort: str = "cohort") -> list[str]:
    """The continuous variables Shapiro-Wilk rejects (p < 0.05) in any cohort with >= 3 values."""
    from scipy import stats

    rejected = []
    for name in variables:
        for _, group in data.groupby(cohort):
            values = group[name].dropna().to_numpy(dtype=float)
            if len(values) >= 3 and values.std() > 0 and stats.shapiro(values).pvalue < 0.05:
                rejected.append(name)
                break
    return rejected


def _plain_summary(text: str, normal_continuous: bool) -> str:
    """tableone's 'mean (SD)' as 'mean ± SD'; 'median [Q1,Q3]' with a space after the comma."""
    text = str(text).strip()
    if normal_continuous:
        return re.sub(r"^(\S+) \((\S+)\)$", r"\1 ± \2", text)
    return text.replace(",", ", ")


def build_table_one(
    splits: pl.DataFrame,
    clinical: pl.DataFrame,
    study: str,
    model_version: str,
    decimals: int = 1,
) -> tuple[pl.DataFrame, list[str]]:
    """(lake table ``table_one``, skipped columns) of a study's patients."""
    import warnings

    import numpy as np
    from tableone import TableOne

    cohorts = table_one_cohorts(splits)
    joined = cohorts.join(
        clinical.unique("patient_key", keep="first"), on="patient_key", how="left"
    )
    continuous, categorical, skipped = classify_columns(joined.drop("cohort"))
    data = joined.to_pandas()
    for name in categorical:  # tableone keys levels by their text; nulls stay missing
        data[name] = data[name].map(lambda v: None if v is None or v != v else str(v))
    variables = continuous + categorical
    order = cohort_order(cohorts["cohort"].unique().to_list())
    rows: list[dict] = []
    sizes = data.groupby("cohort").size()
    for cohort in order:
        rows.append(
            _row(study, model_version, cohort, "n", "", str(int(sizes[cohort])), 0, "count")
        )
    if not variables:
        return pl.DataFrame(rows, schema=SCHEMA), skipped
    nonnormal = non_normal(data, continuous)

    def tabulate(pval: bool):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return TableOne(
                data,
                columns=variables,
                categorical=categorical,
                continuous=continuous,
                nonnormal=nonnormal,
                groupby="cohort",
                order={"cohort": order},
                pval=pval,
                htest_name=True,
                missing=True,
                overall=False,
                decimals=decimals,
            )

    tested = len(order) > 1
    try:
        table = tabulate(tested)
    except ValueError as error:  # a test scipy refuses (e.g. identical values): summaries only
        skipped.append(f"(no p-values: {str(error).splitlines()[0]})")
        table, tested = tabulate(False), False
    tests = table.htest_table if tested else None
    displayed = table.tableone
    top = displayed.columns.levels[0][0]
    for (label, level), values in displayed.iterrows():
        if label == "n":
            continue
        variable = str(label).rsplit(", ", 1)[0]
        kind = (
            "categorical"
            if variable in categorical
            else ("non-normal" if variable in nonnormal else "normal")
        )
        p_value, test = None, None
        if tests is not None and variable in tests.index:
            p = tests.loc[variable, "P-Value"]
            p_value = None if p is None or not np.isfinite(float(p)) else float(p)
            test = str(tests.loc[variable, "Test"])
        for cohort in order:
            missing = int(data.loc[data["cohort"] == cohort, variable].isna().sum())
            summary = _plain_summary(values[(top, cohort)], kind == "normal")
            rows.append(
                _row(study, model_version, cohort, variable, str(level), summary, missing, kind)
                | {"p_value": p_value, "test": test}
            )
    return pl.DataFrame(rows, schema=SCHEMA), skipped


def _row(study, version, cohort, variable, level, summary, missing, kind) -> dict:
    return {
        "study": study,
        "model_version": version,
        "cohort": cohort,
        "variable": variable,
        "level": level,
        "summary": summary,
        "n_missing": missing,
        "p_value": None,
        "test": None,
        "kind": kind,
    }


def table_one_wide(table: pl.DataFrame) -> pl.DataFrame:
    """The paper's layout: one row per variable and level, one column per cohort, then missing
    per cohort, p-value and test."""
    if table.is_empty():
        return table
    cohorts = table["cohort"].unique(maintain_order=True).to_list()
    keys = table.select("variable", "level").unique(maintain_order=True)
    wide = keys
    for cohort in cohorts:
        part = table.filter(pl.col("cohort") == cohort).select(
            "variable",
            "level",
            pl.col("summary").alias(cohort),
            pl.col("n_missing").alias(f"missing {cohort}"),
        )
        wide = wide.join(part, on=["variable", "level"], how="left", maintain_order="left")
    tests = table.select("variable", "level", "p_value", "test").unique(
        ["variable", "level"], maintain_order=True
    )
    wide = wide.join(tests, on=["variable", "level"], how="left", maintain_order="left")
    columns = ["variable", "level", *cohorts, *[f"missing {c}" for c in cohorts], "p_value", "test"]
    return wide.select(columns).with_columns(
        pl.col("p_value").map_elements(_p_text, return_dtype=pl.String)
    )


def _p_text(p: float | None) -> str:
    if p is None:
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"
