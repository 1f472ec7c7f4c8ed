"""The quality gate: a table that breaks its GX suite fails its blocking check and stops downstream."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import polars as pl
import pytest

from dagster_project.quarantine import QUARANTINE_SCHEMA, Reject, write_quarantine
from dagster_project.resources import LakeResource
from quality.checks import accounting_check, suite_check
from quality.suites import load_suite, run_suite, suite_tables


def _quarantine_rows(reason: str | None) -> pl.DataFrame:
    row = {
        "source_path": "clinical/outcomes.csv",
        "record": "row 4",
        "target_table": "clinical",
        "reason": reason,
        "rule": "missing_id",
        "source": "clinical",
        "detected_at": datetime(2026, 1, 1, tzinfo=UTC),
    }
    return pl.DataFrame([row], schema=QUARANTINE_SCHEMA)


def _definitions(reason: str | None):
    @dg.asset(name="quarantine")
    def upstream(lake: LakeResource) -> dg.MaterializeResult:
        lake.lake().write_part("quarantine", "clinical", _quarantine_rows(reason))
        return dg.MaterializeResult()

    @dg.asset(deps=[upstream])
    def downstream(lake: LakeResource) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"rows": lake.lake().read_table("quarantine").height})

    return [upstream, downstream], [suite_check("quarantine")]


@pytest.mark.parametrize("reason", [None, "short"])
def test_failing_suite_blocks_downstream(lake_home, reason):
    assets, checks = _definitions(reason)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [*assets, *checks],
            instance=instance,
            resources={"lake": LakeResource()},
            raise_on_error=False,
        )
        assert not result.success
        (evaluation,) = result.get_asset_check_evaluations()
        assert evaluation.check_name == "gx_suite" and not evaluation.passed
        failed = evaluation.metadata["failed_expectations"].value
        key = (
            "expect_column_values_to_not_be_null(column=reason)"
            if reason is None
            else ("expect_column_value_lengths_to_be_between(column=reason, min_value=10)")
        )
        assert key in failed, failed
        assert failed[key]["unexpected_count"] == 1
        if reason:
            assert failed[key]["sample_values"] == ["short"]  # the UI shows the offending values
        assert "FAILED" in evaluation.metadata["report"].value
        materialized = {
            e.asset_key.to_user_string() for e in result.get_asset_materialization_events()
        }
        assert materialized == {"quarantine"}
        assert instance.get_latest_materialization_event(dg.AssetKey("downstream")) is None


def test_passing_suite_lets_downstream_run(lake_home):
    assets, checks = _definitions("missing_id: row 4 of clinical/outcomes.csv has no patient_id")
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [*assets, *checks], instance=instance, resources={"lake": LakeResource()}
        )
        assert result.success
        (evaluation,) = result.get_asset_check_evaluations()
        assert evaluation.passed
        assert instance.get_latest_materialization_event(dg.AssetKey("downstream")) is not None


def test_accounting_check_catches_silent_drop(lake_home):
    @dg.asset(name="grants")
    def grants(lake: LakeResource) -> dg.MaterializeResult:
        write_quarantine(
            lake.lake(),
            "grants",
            [Reject("portfolio/grants/a.csv", "grants", "no_id", "row 3 has no grant id", "row 3")],
        )
        # 10 rows landed, 8 ingested, 1 quarantined: one row vanished
        return dg.MaterializeResult(metadata={"landed": 10, "ingested": 8, "quarantined": 1})

    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [grants, accounting_check("grants")],
            instance=instance,
            resources={"lake": LakeResource()},
            raise_on_error=False,
        )
        (evaluation,) = result.get_asset_check_evaluations()
        assert not evaluation.passed
        assert evaluation.metadata["landed"].value == 10
        assert evaluation.metadata["quarantine_rows"].value == 1


def test_every_suite_file_is_well_formed():
    tables = suite_tables()
    assert "quarantine" in tables
    for table in tables:
        assert load_suite(table), table


def test_run_suite_reports_missing_column():
    import pandas as pd

    outcome = run_suite("quarantine", pd.DataFrame({"reason": ["a reason long enough"]}))
    assert not outcome.success
    missing = [o for o in outcome.failed if o.error and "missing" in o.error]
    assert {o.kwargs["column"] for o in missing} >= {"source_path", "rule"}
