"""The radlake code location: every domain's assets and checks, the core assets, jobs, resources.

Domains live in ``assets/<domain>/defs.py`` (each exposes ``defs: dagster.Definitions``). Heavy
libraries are imported inside asset bodies so this module loads fast.
"""

import importlib
import importlib.util
import os

import dagster as dg

from dagster_project.core_assets import INGEST_TAG, build_core_assets
from dagster_project.resources import ExtractionBackend, LakeResource
from dagster_project.schedules import build_nightly_schedule
from dagster_project.sensors import build_landing_sensor, failed_run_reporter

DOMAINS = ("imaging", "radiomics", "clinical", "portfolio", "studies")


def domain_modules() -> list:
    found = []
    for domain in DOMAINS:
        name = f"assets.{domain}.defs"
        if importlib.util.find_spec(name) is not None:
            found.append(importlib.import_module(name))
    return found


def domain_definitions() -> list[dg.Definitions]:
    return [module.defs for module in domain_modules()]


def table_schemas() -> dict:
    """Tables the domains publish after the catalog (``TABLE_SCHEMAS`` of their defs.py)."""
    schemas: dict = {}
    for module in domain_modules():
        schemas.update(getattr(module, "TABLE_SCHEMAS", {}))
    return schemas


def _asset_keys(definitions: list[dg.Definitions], layer: str | None = None) -> list[dg.AssetKey]:
    keys: list[dg.AssetKey] = []
    for d in definitions:
        for item in d.assets or []:
            specs = item.specs if isinstance(item, dg.AssetsDefinition) else [item]
            keys.extend(
                s.key for s in specs if layer is None or (s.tags or {}).get(INGEST_TAG) == layer
            )
    return keys


def _executor() -> dg.ExecutorDefinition:
    # In-process by default: the quality gate imports Great Expectations once per run, not once per step.
    if os.environ.get("RADLAKE_EXECUTOR", "in_process") == "multiprocess":
        return dg.multiprocess_executor
    return dg.in_process_executor


def build_definitions() -> dg.Definitions:
    domains = domain_definitions()
    core = build_core_assets(ingest=_asset_keys(domains, "ingest"), table_schemas=table_schemas())
    everything = dg.define_asset_job(
        "materialize_everything",
        selection=dg.AssetSelection.all(),
        description="Every asset: ingest, quality gate, features, studies, catalog.",
    )
    base = dg.Definitions(
        assets=[a for a in core if not isinstance(a, dg.AssetChecksDefinition)],
        asset_checks=[a for a in core if isinstance(a, dg.AssetChecksDefinition)],
        jobs=[everything],
        schedules=[build_nightly_schedule()],
        resources={
            "lake": LakeResource(),
            # RADLAKE_EXTRACTION=dask and RADLAKE_DASK_ADDRESS=tcp://scheduler:8786 run extraction on a cluster
            "extraction": ExtractionBackend(
                kind=os.environ.get("RADLAKE_EXTRACTION", "local"),
                dask_address=os.environ.get("RADLAKE_DASK_ADDRESS", "local:2"),
            ),
        },
        executor=_executor(),
    )
    merged = dg.Definitions.merge(*domains, base)
    # the landing sensor's selections are read from the finished asset graph (see sensors.py)
    sensors = [build_landing_sensor(merged.resolve_asset_graph()), failed_run_reporter]
    return dg.Definitions.merge(merged, dg.Definitions(sensors=sensors))


defs = build_definitions()
