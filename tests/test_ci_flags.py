"""Interval flags (assets.studies.ci_flags) on constructed resamples, and the study-table suites.

A percentile bootstrap interval need not contain its estimate and may have zero width; these are
properties of the method, said in `ci_flag` / `ci_note`, while the suites keep checking the data
(keys, probabilities in [0, 1]).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import polars as pl
import pytest

from assets.studies.ci_flags import (
    DEGENERATE_CI,
    MIN_DISTINCT_RESAMPLES,
    NO_CI,
    NOT_ESTIMABLE,
    OUTSIDE_CI,
    distinct_values,
    interval_flag,
)
from assets.studies.metrics import delong_ci, percentile_ci


def test_constant_resamples_are_degenerate_not_outside_at_float_precision():
    # issue 18's row: every stratified resample of a constant prediction has the same Brier
    # score, computed from resample counts it differs from the direct estimate in the last bit
    value = 0.23765432098765432
    replicates = np.full(1000, np.nextafter(value, 1.0))
    low, high = percentile_ci(replicates)
    assert low > value  # what the old suite called a violation
    flag, note = interval_flag(value, low, high, replicates)
    assert flag == DEGENERATE_CI
    assert note.startswith("zero width: every resample gave 0.237654") and "lies" not in note
    # zero width needs only 95% of the resamples on one value
    mostly = np.r_[np.full(980, 0.5), np.linspace(0.4, 0.6, 20)]
    assert interval_flag(0.5, *percentile_ci(mostly), mostly) == (
        DEGENERATE_CI,
        "zero width: 98.0% of resamples gave 0.5",
    )


def test_too_few_distinct_resample_values_are_degenerate():
    rng = np.random.default_rng(3)
    few = rng.choice([0.5, 0.6, 0.7], size=1000)
    low, high = percentile_ci(few)
    assert (low, high) == (0.5, 0.7)
    flag, note = interval_flag(0.6, low, high, few)
    assert flag == DEGENERATE_CI and "only 3 distinct value(s) among 1000 resamples" in note
    # values equal within float precision count once; MIN_DISTINCT_RESAMPLES is enough
    assert distinct_values(np.array([0.1, 0.1 + 1e-17, 0.2])) == 2
    enough = rng.choice(np.linspace(0.5, 0.7, MIN_DISTINCT_RESAMPLES), size=1000)
    assert interval_flag(0.6, *percentile_ci(enough), enough) == (None, None)


def test_estimate_outside_a_skewed_percentile_interval_is_flagged_with_the_shares():
    rng = np.random.default_rng(5)
    replicates = 0.82 + 0.17 * rng.beta(2, 5, size=1000)  # all above the estimate
    low, high = percentile_ci(replicates)
    flag, note = interval_flag(0.80, low, high, replicates)
    assert flag == OUTSIDE_CI
    assert f"estimate 0.8 lies below the interval [{low:.6g}, {high:.6g}]" in note
    assert "0.0% of resamples below it, 100.0% above" in note
    flag, note = interval_flag(0.999, low, high, replicates)
    assert flag == OUTSIDE_CI and "lies above" in note and "100.0% of resamples below it" in note


def test_a_usable_interval_has_no_flag():
    rng = np.random.default_rng(7)
    replicates = rng.normal(0.75, 0.04, size=1000)
    low, high = percentile_ci(replicates)
    assert interval_flag(0.75, low, high, replicates) == (None, None)
    # an estimate on an interval end (within float precision) is inside
    assert interval_flag(low * (1 - 1e-12), low, high, replicates) == (None, None)


def test_undefined_estimates_resamples_and_intervals():
    assert interval_flag(math.nan, None, None, reason="no positive patient") == (
        NOT_ESTIMABLE,
        "no positive patient",
    )
    undefined = np.full(200, np.nan)
    flag, note = interval_flag(
        0.5, *percentile_ci(undefined), undefined, reason="no predicted positive"
    )
    assert flag == NO_CI and note == "every resample undefined (no predicted positive)"
    partly = np.r_[np.full(50, np.nan), np.random.default_rng(1).normal(0.6, 0.05, 950)]
    flag, note = interval_flag(0.6, *percentile_ci(partly), partly, reason="no predicted positive")
    assert flag is None
    assert (
        note
        == "50 of 1000 resamples undefined (no predicted positive); interval over the other 950"
    )


def test_delong_intervals_zero_width_at_separation_and_missing_with_one_negative():
    # perfectly separated classes: DeLong's variance is 0
    auc, low, high, se = delong_ci([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert (auc, low, high, se) == (1.0, 1.0, 1.0, 0.0)
    flag, note = interval_flag(auc, low, high)
    assert flag == DEGENERATE_CI and note == "zero width: [1, 1] (standard error 0)"
    # one negative: no variance, no interval
    auc, low, high, _ = delong_ci([0, 1, 1], [0.1, 0.8, 0.9])
    assert auc == 1.0 and math.isnan(low)
    assert interval_flag(auc, low, high, reason="one negative")[0] == NO_CI


def _metrics_rows(**changes) -> pd.DataFrame:
    base = {
        "study": "s",
        "model_version": "v",
        "model": "logistic_regression",
        "cohort": "train",
        "metric": "brier",
        "value": 0.23765432098765432,
        "ci_low": 0.2376543209876544,
        "ci_high": 0.2376543209876544,
        "ci_method": "bootstrap_percentile",
        "n": 18,
        "n_positive": 11,
        "ci_flag": DEGENERATE_CI,
        "ci_note": "zero width",
    }
    outside = {**base, "metric": "auc", "value": 0.8, "ci_low": 0.82, "ci_high": 0.95}
    outside["ci_flag"] = OUTSIDE_CI
    return pd.DataFrame([base, {**outside, **changes}])


def test_model_metrics_suite_accepts_method_properties_and_rejects_bad_data():
    from quality.suites import run_suite

    assert run_suite("model_metrics", _metrics_rows()).success
    bad_auc = run_suite("model_metrics", _metrics_rows(value=1.2, ci_flag=None))
    assert not bad_auc.success
    (failed,) = bad_auc.failed
    assert failed.kwargs["column"] == "value" and failed.sample_values == [1.2]
    unknown_flag = run_suite("model_metrics", _metrics_rows(ci_flag="looks_odd"))
    assert [f.kwargs.get("column") for f in unknown_flag.failed] == ["ci_flag"]


def test_survival_rows_get_flags_from_their_numbers_and_the_suite_passes():
    from assets.studies.results import result_row, results_frame
    from quality.suites import run_suite

    rows = results_frame(
        [
            result_row("os", "train", "km_survival", "all@36", 1.0, 1.0, 1.0),
            result_row("os", "train", "c_index", "x", 0.55, 0.6, 0.9),
            result_row("os", "train", "cox_univariable", "x", 1.5, 1.1, 2.0, p_value=0.01),
            result_row("os", "train", "logrank", "x", p_value=0.2),
        ]
    )
    assert rows["ci_flag"].tolist() == [DEGENERATE_CI, OUTSIDE_CI, None, None]
    table = pl.from_pandas(rows).with_columns(
        pl.lit("s").alias("study"), pl.lit("v").alias("model_version")
    )
    assert run_suite("survival_results", table.to_pandas()).success


@pytest.mark.parametrize("n_bootstrap", [0, 300])
def test_c_index_row_flags_its_bootstrap(n_bootstrap):
    from assets.studies.survival_cox import bootstrap_c_index, c_index_replicates

    # three patients: few distinct resampled C values
    time, event, risk = [2.0, 5.0, 9.0], [1, 1, 0], [3.0, 1.0, 2.0]
    c, replicates = c_index_replicates(time, event, risk, n_bootstrap=n_bootstrap, seed=7)
    c_again, low, high = bootstrap_c_index(time, event, risk, n_bootstrap=n_bootstrap, seed=7)
    assert c == c_again
    if n_bootstrap == 0:
        assert len(replicates) == 0 and math.isnan(low)
        return
    assert (low, high) == tuple(np.quantile(replicates[np.isfinite(replicates)], [0.025, 0.975]))
    flag, _ = interval_flag(c, low, high, replicates)
    assert flag == DEGENERATE_CI and distinct_values(replicates[np.isfinite(replicates)]) < 5
