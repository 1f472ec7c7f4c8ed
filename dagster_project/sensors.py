"""The landing sensor (files in, lake updated) and the sensor that reports failed runs.

What a folder triggers is read from the definitions, not from a table kept here: every ingest asset
names the folders it reads (``metadata=reads("landing/clinical")``, ``core_assets.reads``). A stable
change in such a folder materializes those assets, widened to whole multi-assets (``clinical``
comes with ``clinical_history``), and everything downstream of them except the studies (retrained
by the nightly job): ``quarantine``, ``catalog`` and the derived tables, so the lake is consistent
when the run ends. A renamed or split asset changes the selection with it.
"""

import hashlib
import os

import dagster as dg

from dagster_project.core_assets import READS_METADATA
from dagster_project.lake import Lake
from dagster_project.schedules import STUDY_GROUP

SENSOR_INTERVAL_S = int(os.environ.get("RADLAKE_SENSOR_INTERVAL", "30"))
TRIGGER_TAG = "radlake/trigger"


class LandingSensorError(Exception):
    """The sensor cannot build a valid run for a change it saw; the change stays pending."""


def folder_readers(asset_graph) -> dict[str, frozenset[dg.AssetKey]]:
    """Watched folder (relative to LAKE_HOME) -> the assets that declare they read it."""
    readers: dict[str, set[dg.AssetKey]] = {}
    for node in asset_graph.asset_nodes:
        value = node.metadata.get(READS_METADATA)
        folders = value.value if isinstance(value, dg.JsonMetadataValue) else value
        for folder in folders or ():
            readers.setdefault(folder, set()).add(node.key)
    return {folder: frozenset(keys) for folder, keys in sorted(readers.items())}


def run_selection(asset_graph, readers: frozenset[dg.AssetKey]) -> frozenset[dg.AssetKey]:
    """The readers and everything downstream but the studies, closed over whole multi-assets."""
    keys = set(readers)
    while True:
        downstream = dg.AssetSelection.assets(*keys).downstream() - dg.AssetSelection.groups(
            STUDY_GROUP
        )
        wider = {
            sibling
            for key in downstream.resolve(asset_graph)
            for sibling in asset_graph.get(key).execution_set_asset_keys
        }
        if wider <= keys:
            return frozenset(keys)
        keys |= wider


def last_ingest_start(instance: dg.DagsterInstance, keys) -> float | None:
    """When the runs that last materialized ``keys`` started (the earliest), or None when none of
    them ever ran. A key that never ran is passed over when others did: a folder several assets
    read besides their own (``mappings``) is not due for them; their own folders are."""
    starts = []
    for key in keys:
        event = instance.get_latest_materialization_event(key)
        if event is None:
            continue
        record = instance.get_run_record_by_id(event.run_id)
        starts.append(record.start_time if record and record.start_time else event.timestamp)
    return min(starts) if starts else None


def _validate(context: dg.SensorEvaluationContext, keys: list[dg.AssetKey]) -> None:
    """Build the run's job subset as the daemon will, so that an invalid selection fails here."""
    repository = context.repository_def
    if repository is None:
        return
    job = repository.get_implicit_job_def_for_assets(keys)
    if job is None:
        raise LandingSensorError(f"no asset job holds {[k.to_user_string() for k in keys]}")
    checks = dg.AssetSelection.assets(*keys).resolve_checks(repository.asset_graph)
    job.get_subset(asset_selection=set(keys), asset_check_selection=set(checks))


def _last_run_note(context: dg.SensorEvaluationContext) -> str:
    runs = context.instance.get_runs(
        filters=dg.RunsFilter(tags={"dagster/sensor_name": "landing_sensor"}), limit=1
    )
    if not runs or runs[0].status != dg.DagsterRunStatus.FAILURE:
        return ""
    return f"; the last run it launched ({runs[0].run_id}) FAILED: see that run's logs"


def build_landing_sensor(asset_graph) -> dg.SensorDefinition:
    readers = folder_readers(asset_graph)
    selections = {folder: run_selection(asset_graph, keys) for folder, keys in readers.items()}
    targets = sorted(set().union(*selections.values()), key=lambda k: k.to_user_string())

    @dg.sensor(
        name="landing_sensor",
        minimum_interval_seconds=SENSOR_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        asset_selection=targets,
        description=(
            "Watches the folders ingest assets read (" + ", ".join(readers) + "): a new, changed "
            "or removed file, once the folder has stopped changing between two ticks, materializes "
            "the assets reading that folder and everything downstream but the studies "
            "(quarantine and catalog included). On its first tick, folders the lake already "
            "ingested are recorded without a run."
        ),
    )
    def landing_sensor(context: dg.SensorEvaluationContext):
        from dagster_project.landing_watch import WatchState, observe

        home = Lake.at().home
        observation = observe(
            {folder: home / folder for folder in readers},
            WatchState.from_cursor(context.cursor),
            ingested_at=lambda folder: last_ingest_start(context.instance, readers[folder]),
        )
        for folder in observation.already_ingested:
            context.log.info(f"{folder}: already in the lake (ingested after its newest file)")
        for folder in observation.waiting:
            context.log.info(f"{folder}: files still being written (or just seen), waiting a tick")
        if not observation.changed:
            context.update_cursor(observation.state.to_cursor())
            return dg.SkipReason(
                "no new or changed stable files under the watched folders" + _last_run_note(context)
            )
        keys = sorted(
            set().union(*(selections[f] for f in observation.changed)),
            key=lambda k: k.to_user_string(),
        )
        summary = "; ".join(f"{f} ({n} files)" for f, n in sorted(observation.changed.items()))
        try:
            _validate(context, keys)
        except Exception as error:
            message = (
                f"landing_sensor cannot launch a run for {summary}: the selection "
                f"{[k.to_user_string() for k in keys]} is not valid in this code location "
                f"({type(error).__name__}: {error}). Nothing was marked as ingested; the change "
                "is picked up again by the next tick once the definitions are fixed and reloaded."
            )
            context.log.error(message)
            raise LandingSensorError(message) from error
        context.log.info(f"changed: {summary}; materializing {len(keys)} assets")
        state = observation.state
        state.runs += 1  # a retried tick (same cursor in) gives the same key: one run
        context.update_cursor(state.to_cursor())
        return dg.RunRequest(
            run_key=f"landing-{state.runs}-"
            + hashlib.sha256(state.to_cursor().encode()).hexdigest()[:12],
            asset_selection=keys,
            tags={TRIGGER_TAG: "landing_sensor", "radlake/changed": summary[:200]},
        )

    return landing_sensor


@dg.run_failure_sensor(
    name="failed_run_reporter",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    description="Logs every failed run (landing sensor, nightly schedule or manual) with its "
    "trigger, failed steps and error, in this sensor's tick log and the daemon's log.",
)
def failed_run_reporter(context: dg.RunFailureSensorContext) -> None:
    run = context.dagster_run
    steps = sorted({e.step_key for e in context.get_step_failure_events() if e.step_key})
    context.log.error(
        f"run {run.run_id} ({run.tags.get(TRIGGER_TAG, 'manual')}) failed"
        + (f" in {', '.join(steps)}" if steps else "")
        + f": {context.failure_event.message}"
    )
