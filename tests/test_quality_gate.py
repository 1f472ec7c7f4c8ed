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


GOOD = "missing_id: row 4 of clinical/outcomes.csv has no patient_id"


@pytest.mark.parametrize("reason", [None, "short"])
def test_failing_version_is_never_published(lake_home, reason):
    """Write-audit-publish: a version that breaks its suite fails its asset naming the failed
    expectation, stays out of the lake (kept under rejected/ with its results) and the previous
    version stays live; nothing downstream runs."""
    import json

    from dagster_project.lake import Lake

    with dg.instance_for_test() as instance:
        assets, checks = _definitions(GOOD)
        first = dg.materialize(
            [*assets, *checks], instance=instance, resources={"lake": LakeResource()}
        )
        assert first.success
        live = Lake.at().read_table("quarantine")
        assets, checks = _definitions(reason)
        result = dg.materialize(
            [*assets, *checks],
            instance=instance,
            resources={"lake": LakeResource()},
            raise_on_error=False,
        )
        assert not result.success
        key = (
            "expect_column_values_to_not_be_null(column=reason)"
            if reason is None
            else ("expect_column_value_lengths_to_be_between(column=reason, min_value=10)")
        )
        (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        message = str(failure.step_failure_data.error)
        assert key in message and "previous version stays live" in message
        assert result.get_asset_materialization_events() == []
        lake = Lake.at()
        assert lake.read_table("quarantine").equals(live)  # the previous version, untouched
        (kept,) = list(lake.rejected_dir("quarantine").iterdir())
        results = json.loads((kept / "results.json").read_text())["results"]["quarantine"]
        assert not results["passed"]
        assert results["suite"]["failed"][key]["unexpected_count"] == 1
        if reason:
            assert results["suite"]["failed"][key]["sample_values"] == ["short"]
        rejected = pl.read_parquet(kept / "clinical.parquet")
        assert rejected["reason"].to_list() == [reason]
        assert instance.get_latest_materialization_event(dg.AssetKey("downstream")) is not None
        runs = instance.get_runs()
        assert runs[0].status == dg.DagsterRunStatus.FAILURE


def test_passing_suite_lets_downstream_run(lake_home):
    assets, checks = _definitions(GOOD)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [*assets, *checks], instance=instance, resources={"lake": LakeResource()}
        )
        assert result.success
        evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
        evaluation = evaluations["gx_suite"]
        assert evaluation.passed
        assert evaluation.metadata["audited"].value.startswith("staging audit of version")
        assert evaluations["gx_suite_freshness"].passed
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
