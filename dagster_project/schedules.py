"""Nightly retraining: every study's assets at 02:00 (RADLAKE_TIMEZONE, default UTC).

Runs by default as soon as `dagster dev` (or the daemon) runs. A study whose inputs did not change
reproduces the same content-hashed model version, so nothing is retrained and no version is added.
"""

import os

import dagster as dg

STUDY_GROUP = "studies"
NIGHTLY_CRON = os.environ.get("RADLAKE_NIGHTLY_CRON", "0 2 * * *")


def build_nightly_schedule() -> dg.ScheduleDefinition:
    job = dg.define_asset_job(
        "nightly_retraining",
        selection=dg.AssetSelection.groups(STUDY_GROUP),
        description="Re-materialize every study (splits, models, metrics, figures, survival, report).",
        tags={"radlake/trigger": "nightly"},
    )
    return dg.ScheduleDefinition(
        name="nightly_retraining_schedule",
        job=job,
        cron_schedule=NIGHTLY_CRON,
        execution_timezone=os.environ.get("RADLAKE_TIMEZONE", "UTC"),
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Nightly retraining of every study; unchanged inputs give the same model version.",
    )
