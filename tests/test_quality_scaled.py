"""GX suites on large tables: GX on distinct values must judge like GX on every row.

Reference: Great Expectations itself on the whole table (``run_suite``). Tables carry the
defects the suites exist for: malformed ids, nulls, out-of-range values, CI bounds the wrong way
round, duplicated keys; a clean table must pass both ways.
"""

from __future__ import annotations

import dagster as dg
import numpy as np
import polars as pl
import pytest

import quality.scaled
from dagster_project.resources import LakeResource
from quality.checks import suite_check
from quality.scaled import run_suite_scaled
from quality.suites import run_suite


def _radiomics(rows: int, defects: bool, seed: int = 3) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    cases = [f"{i:032x}" for i in rng.integers(0, 2**62, rows // 100 + 1)]
    features = [f"original_glcm_Feature{i}" for i in range(100)]
    idx = np.arange(rows)
    frame = pl.DataFrame(
        {
            "case_id": [cases[i // 100] for i in idx],
            "patient_key": [cases[i // 100][::-1] for i in idx],
            "center_id": ["C1" if i % 3 else "C2" for i in idx],
            "feature": [features[i % 100] for i in idx],
            "value": rng.normal(size=rows),
            "params_id": "ct_default",
            "params_sha256": "a" * 64,
            "image_sha256": "b" * 64,
            "mask_sha256": "c" * 64,
            "extractor_version": "3.1.4",
        }
    ).with_columns(
        extracted_at=pl.datetime(2026, 11, 27, time_zone="UTC").cast(pl.Datetime("us", "UTC"))
    )
    if defects:
        frame = frame.with_row_index("i").with_columns(
            case_id=pl.when(pl.col("i") % 997 == 0).then(pl.lit("NOT-A-KEY")).otherwise("case_id"),
            center_id=pl.when(pl.col("i") % 1301 == 0).then(None).otherwise("center_id"),
            feature=pl.when(pl.col("i") % 2003 == 0)
            .then(pl.lit("bad feature"))
            .otherwise("feature"),
        )
        frame = pl.concat([frame, frame.filter(pl.col("i") % 5000 == 1)]).drop("i")  # duplicates
    return frame


def _survival(rows: int, defects: bool, seed: int = 5) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    km = np.arange(rows) % 2 == 0
    # Kaplan-Meier rows hold a survival probability (its range is checked under a
    # row_condition), Cox rows a hazard ratio
    estimate = np.where(km, rng.uniform(0.2, 0.9, rows), rng.lognormal(0.0, 0.3, rows))
    low, high = estimate - rng.uniform(0, 0.1, rows), estimate + rng.uniform(0, 0.1, rows)
    p_value = rng.uniform(0, 1, rows)
    frame = pl.DataFrame(
        {
            "study": "gist",
            "model_version": [f"v{i % 7}" for i in range(rows)],
            "endpoint": "os",
            "analysis": np.where(km, "km_survival", "cox_univariable").tolist(),
            "term": [f"t{i % 40}" for i in range(rows)],
            "estimate": np.round(estimate, 2),
            "ci_low": np.round(low, 2),
            "ci_high": np.round(high, 2),
            "p_value": np.round(p_value, 3),
            "n": rng.integers(20, 40, rows),
            "events": rng.integers(0, 20, rows),
            "ci_flag": [None if i % 9 else "degenerate_ci" for i in range(rows)],
        }
    )
    if defects:
        frame = (
            frame.with_row_index("i")
            .with_columns(
                estimate=pl.when((pl.col("i") % 503 == 0) & (pl.col("analysis") == "km_survival"))
                .then(1.25)
                .otherwise("estimate"),
                p_value=pl.when(pl.col("i") % 211 == 0).then(1.5).otherwise("p_value"),
                ci_low=pl.when(pl.col("i") % 307 == 0)
                .then(pl.col("estimate") + 1)
                .when(pl.col("i") % 13 == 0)
                .then(None)
                .otherwise("ci_low"),
                term=pl.when(pl.col("i") % 401 == 0).then(None).otherwise("term"),
            )
            .drop("i")
        )
    return frame


def _summary(outcome) -> dict:
    return {
        (o.expectation, repr(sorted(o.kwargs.items()))): (
            o.success,
            o.unexpected_count,
            None if o.unexpected_percent is None else round(o.unexpected_percent, 9),
            o.error,
        )
        for o in outcome.outcomes
    }


@pytest.mark.parametrize(
    ("table", "make"), [("radiomics_features", _radiomics), ("survival_results", _survival)]
)
@pytest.mark.parametrize("defects", [False, True])
def test_distinct_value_suite_equals_gx_on_every_row(table, make, defects):
    frame = make(30_000, defects)
    full = run_suite(table, frame.to_pandas())
    scaled = run_suite_scaled(table, frame.lazy())
    assert scaled.rows == full.rows == frame.height
    assert _summary(scaled) == _summary(full)
    assert scaled.success == full.success == (not defects)
    if defects:
        failed = {o.expectation for o in scaled.failed}
        assert failed >= (
            {"expect_column_values_to_match_regex", "expect_compound_columns_to_be_unique"}
            if table == "radiomics_features"
            else {
                "expect_column_values_to_be_between",
                "expect_column_pair_values_a_to_be_greater_than_b",
            }
        )
        for o in scaled.failed:  # samples are the failing values themselves
            assert o.sample_values, o
        if table == "survival_results":  # a range checked under a row_condition
            conditional = [o for o in scaled.failed if o.kwargs.get("row_condition")]
            km_over_one = frame.filter(
                (pl.col("analysis") == "km_survival") & (pl.col("estimate") > 1)
            ).height
            assert km_over_one > 0
            assert [o.unexpected_count for o in conditional] == [km_over_one]


def test_check_on_a_large_table_uses_distinct_values(lake_home, monkeypatch):
    """The blocking check takes the distinct-value path above the threshold (lowered here so a
    small table counts as large) and still fails on the defects, naming them."""
    monkeypatch.setattr(quality.scaled, "LARGE_TABLE_ROWS", 1_000)
    frame = _radiomics(5_000, defects=True)

    @dg.asset(name="radiomics_features")
    def radiomics_features(lake: LakeResource) -> dg.MaterializeResult:
        lake.lake().write_table("radiomics_features", frame)
        return dg.MaterializeResult()

    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [radiomics_features, suite_check("radiomics_features")],
            instance=instance,
            resources={"lake": LakeResource()},
            raise_on_error=False,
        )
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed
    assert evaluation.metadata["evaluated_on"].value.startswith("distinct values")
    assert evaluation.metadata["rows"].value == frame.height
    failed = evaluation.metadata["failed_expectations"].value
    regex = "expect_column_values_to_match_regex(column=case_id, regex=^[0-9a-f]{32}$)"
    assert failed[regex]["sample_values"] == ["NOT-A-KEY"]
    assert (
        failed[regex]["unexpected_count"] == frame.filter(pl.col("case_id") == "NOT-A-KEY").height
    )
