"""The landing sensor: new or changed files under landing/ trigger only the ingest assets they feed."""

import hashlib
import os

import dagster as dg

from dagster_project.lake import Lake

# landing folder (relative to LAKE_HOME) -> the ingest assets it feeds
LANDING_SOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "imaging": ("landing/imaging", ("imaging_series", "cases", "radiomics_features")),
    "params": ("params", ("radiomics_features",)),
    "mappings": ("mappings", ("grants", "clinical", "external_features")),
    "features": ("landing/features", ("external_features",)),
    "clinical": ("landing/clinical", ("clinical",)),
    "grants": ("landing/portfolio/grants", ("grants",)),
    "publications": (
        "landing/portfolio/publications",
        ("publications", "publication_authors", "publication_grants"),
    ),
}
SENSOR_INTERVAL_S = int(os.environ.get("RADLAKE_SENSOR_INTERVAL", "30"))


def build_landing_sensor(known: set[dg.AssetKey]) -> dg.SensorDefinition:
    sources = {
        name: (folder, tuple(a for a in assets if dg.AssetKey(a) in known))
        for name, (folder, assets) in LANDING_SOURCES.items()
    }
    sources = {name: spec for name, spec in sources.items() if spec[1]}

    @dg.sensor(
        name="landing_sensor",
        minimum_interval_seconds=SENSOR_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        asset_selection=sorted({a for _, assets in sources.values() for a in assets}),
        description=(
            "Watches landing/ (and params/): a new or changed file, once its size has stopped "
            "changing between two ticks, triggers only the ingest assets that folder feeds."
        ),
    )
    def landing_sensor(context: dg.SensorEvaluationContext):
        from dagster_project.landing_watch import WatchState, observe

        home = Lake.at().home
        roots = {name: home / folder for name, (folder, _) in sources.items()}
        observation = observe(roots, WatchState.from_cursor(context.cursor))
        for source in observation.waiting:
            context.log.info(
                f"{source}: files still being written (or just written), waiting a tick"
            )
        selected = sorted({a for s in observation.changed for a in sources[s][1]})
        context.update_cursor(observation.state.to_cursor())
        if not selected:
            return dg.SkipReason("no new or changed stable files under landing/")
        summary = "; ".join(f"{s} ({n} files)" for s, n in sorted(observation.changed.items()))
        context.log.info(f"changed: {summary}; materializing {', '.join(selected)}")
        return dg.RunRequest(
            run_key="landing-"
            + hashlib.sha256(observation.state.to_cursor().encode()).hexdigest()[:16],
            asset_selection=[dg.AssetKey(a) for a in selected],
            tags={"radlake/trigger": "landing_sensor", "radlake/changed": summary[:200]},
        )

    return landing_sensor
