"""Shared set-up of the imaging tests: a temporary lake home in the environment, and the imaging and
radiomics domains materialized in-process, assets and checks, as ``radlake materialize`` runs them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from dagster_project.lake import Lake


@contextmanager
def lake_home(tmp_path_factory, name: str) -> Iterator[Lake]:
    """A fresh lake home as ``LAKE_HOME`` (and a pseudonym key) for the duration of a fixture."""
    home = tmp_path_factory.mktemp(name) / "lakehouse"
    mp = pytest.MonkeyPatch()
    mp.setenv("LAKE_HOME", str(home))
    mp.setenv("LAKE_PSEUDONYM_KEY", f"{name}-test-secret")
    try:
        yield Lake.at(home)
    finally:
        mp.undo()


def materialize_imaging(workers: int = 1):
    """Materialize every imaging and radiomics asset and check of the lake in ``LAKE_HOME``:
    ``(result, {(asset key, check name): passed})``."""
    import dagster as dg

    from assets.imaging.defs import defs as imaging_defs
    from assets.radiomics.defs import defs as radiomics_defs
    from dagster_project.resources import ExtractionBackend, LakeResource

    merged = dg.Definitions.merge(imaging_defs, radiomics_defs)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [*merged.assets, *merged.asset_checks],
            instance=instance,
            resources={
                "lake": LakeResource(),
                "extraction": ExtractionBackend(max_workers=workers),
            },
        )
    checks = {
        (e.asset_key.to_user_string(), e.check_name): e.passed
        for e in result.get_asset_check_evaluations()
    }
    return result, checks
