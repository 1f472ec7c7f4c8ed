"""The landing sensor: only stable (no longer growing) new or changed files trigger, and only their assets."""

from __future__ import annotations

import os
import time

import dagster as dg
import pytest

from dagster_project.landing_watch import WatchState, observe
from tests.conftest import shared_path


def _tick(roots, state):
    return observe(roots, state, now_ns=time.time_ns() + 10**10)  # files old enough


def test_growing_file_waits_until_stable(tmp_path):
    roots = {"clinical": tmp_path / "clinical", "grants": tmp_path / "grants"}
    roots["clinical"].mkdir()
    data = roots["clinical"] / "outcomes.csv"
    data.write_text("patient_id,center_id\n")
    first = _tick(roots, WatchState())
    assert first.changed == {} and first.waiting == [
        "clinical"
    ]  # first sight: not known stable yet
    with data.open("a") as handle:  # still being copied
        handle.write("P1,C1\n")
    second = _tick(roots, first.state)
    assert second.changed == {} and second.waiting == ["clinical"]
    third = _tick(roots, second.state)  # same size and mtime as at the last tick: stable
    assert third.changed == {"clinical": 1} and third.waiting == []
    fourth = _tick(roots, third.state)  # nothing new: nothing triggers
    assert fourth.changed == {} and fourth.waiting == []


def test_fresh_file_is_not_picked_up_before_min_age(tmp_path):
    roots = {"clinical": tmp_path}
    (tmp_path / "a.csv").write_text("x\n")
    now = time.time_ns()
    first = observe(roots, WatchState(), now_ns=now)
    second = observe(roots, first.state, now_ns=now, min_age_s=60)
    assert second.changed == {} and second.waiting == ["clinical"]


def test_removed_file_is_a_change_and_cursor_round_trips(tmp_path):
    roots = {"grants": tmp_path / "grants"}
    roots["grants"].mkdir()
    (roots["grants"] / "a.csv").write_text("x\n")
    (roots["grants"] / "b.csv").write_text("y\n")
    state = _tick(roots, _tick(roots, WatchState()).state).state
    state = WatchState.from_cursor(state.to_cursor())
    (roots["grants"] / "b.csv").unlink()
    assert _tick(roots, _tick(roots, state).state).changed == {"grants": 1}


def _landed(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    old = time.time() - 60
    os.utime(path, (old, old))
    return path


def _ticks(sensor, instance, defs, n: int, cursor=None):
    results = []
    for _ in range(n):
        context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
        results.append(sensor(context))
        cursor = context.cursor
    return results, cursor


def test_sensor_requests_the_folders_readers_and_what_follows_them(lake_home):
    from dagster_project.definitions import defs

    sensor = defs.get_sensor_def("landing_sensor")
    grants = lake_home / "landing" / "portfolio" / "grants"
    _landed(grants / "nsfc.csv", "批准号,项目名称\n81971612,影像组学\n")
    with dg.instance_for_test() as instance:
        (first, fresh, idle), cursor = _ticks(sensor, instance, defs, 3)
        _landed(grants / "more.csv", "批准号,项目名称\n81971613,影像组学\n")
        (waiting, second, third), _ = _ticks(sensor, instance, defs, 3, cursor)
    assert isinstance(first, dg.SkipReason)  # seen once: not yet known to be stable
    # a lake whose assets never ran: every ingest once, empty folders too (their typed tables)
    assert isinstance(fresh, dg.RunRequest)
    ingest = {"imaging_series", "cases", "radiomics_features", "clinical", "external_features",
              "grants", "publications"}  # fmt: skip
    assert ingest <= {key.to_user_string() for key in fresh.asset_selection}
    assert isinstance(idle, dg.SkipReason) and isinstance(waiting, dg.SkipReason)
    assert isinstance(second, dg.RunRequest)
    selected = {key.to_user_string() for key in second.asset_selection}
    # grants, everything downstream (publications as a whole multi-asset, the portfolio SQL),
    # the rejects and the catalog; nothing of another folder, no study
    assert {"grants", "publications", "publication_authors", "publication_grants",
            "grants_per_year", "quarantine", "catalog"} <= selected  # fmt: skip
    assert not selected & {"clinical", "cases", "imaging_series", "radiomics_features"}
    graph = defs.resolve_asset_graph()
    assert not any(graph.get(k).group_name == "studies" for k in second.asset_selection)
    assert isinstance(third, dg.SkipReason)  # nothing new since


def test_every_ingest_asset_declares_its_folders_and_every_request_builds():
    """The selections come from the definitions; each must be a job Dagster can build (issue 19:
    `clinical` alone is not a valid subset of the clinical multi-asset)."""
    from dagster_project.core_assets import INGEST_TAG
    from dagster_project.definitions import defs
    from dagster_project.sensors import folder_readers, run_selection

    repository = defs.get_repository_def()
    graph = repository.asset_graph
    readers = folder_readers(graph)
    ingest = {n.key for n in graph.asset_nodes if n.tags.get(INGEST_TAG) == "ingest"}
    assert ingest == set().union(*readers.values())  # no ingest asset without its folders
    assert set(readers) == {"landing/imaging", "landing/clinical", "landing/features",
                            "landing/portfolio/grants", "landing/portfolio/publications",
                            "params", "mappings"}  # fmt: skip
    mapped = {dg.AssetKey(k) for k in ("clinical", "external_features", "grants")}
    assert readers["mappings"] == mapped  # a new or edited mapping re-runs what it maps
    for folder, keys in readers.items():
        selection = run_selection(graph, keys)
        for key in selection:  # whole multi-assets only
            assert graph.get(key).execution_set_asset_keys <= selection, (folder, key)
        assert {dg.AssetKey("quarantine"), dg.AssetKey("catalog")} <= selection
        job = repository.get_implicit_job_def_for_assets(list(selection))
        job.get_subset(asset_selection=set(selection))  # raises on an invalid subset
    clinical = run_selection(graph, readers["landing/clinical"])
    assert dg.AssetKey("clinical_history") in clinical
    imaging = run_selection(graph, readers["landing/imaging"])
    assert dg.AssetKey("radiomics_features") in imaging  # derived after cases


def test_selection_follows_renamed_and_split_assets():
    from dagster_project.core_assets import reads
    from dagster_project.sensors import folder_readers, run_selection

    @dg.multi_asset(
        specs=[dg.AssetSpec("visits", metadata=reads("landing/ehr")), dg.AssetSpec("visit_log")]
    )
    def ehr():
        pass

    @dg.asset(deps=["visit_log"])
    def visit_summary():
        pass

    @dg.asset(deps=["visit_summary"], group_name="studies")
    def study_model():
        pass

    graph = dg.Definitions(assets=[ehr, visit_summary, study_model]).resolve_asset_graph()
    readers = folder_readers(graph)
    assert readers == {"landing/ehr": frozenset({dg.AssetKey("visits")})}
    keys = {k.to_user_string() for k in run_selection(graph, readers["landing/ehr"])}
    assert keys == {"visits", "visit_log", "visit_summary"}  # sibling, its downstream, no study


def test_a_tick_that_cannot_build_its_run_fails_naming_the_cause(lake_home):
    """A sensor whose selection does not fit the code location (here: built from a graph where
    `clinical` was a single asset) fails its tick with the folder, the selection and Dagster's
    reason, and keeps the change pending instead of leaving the daemon in a silent error loop."""
    from dagster_project.core_assets import reads
    from dagster_project.definitions import defs
    from dagster_project.sensors import LandingSensorError, build_landing_sensor

    stale = dg.Definitions(assets=[dg.AssetSpec("clinical", metadata=reads("landing/clinical"))])
    sensor = build_landing_sensor(stale.resolve_asset_graph())
    _landed(lake_home / "landing" / "clinical" / "outcomes.csv", "patient_id,center_id\nP1,C1\n")
    with dg.instance_for_test() as instance:
        (first,), cursor = _ticks(sensor, instance, defs, 1)
        assert isinstance(first, dg.SkipReason)
        for _ in range(2):  # the change stays pending: every tick says why
            context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
            with pytest.raises(LandingSensorError) as failure:
                sensor(context)
            assert context.cursor == cursor
    message = str(failure.value)
    assert "landing/clinical (1 files)" in message and "['clinical']" in message
    assert "DagsterInvalidSubsetError" in message and "clinical_history" in message


def test_first_tick_on_an_ingested_lake_launches_nothing_new(lake_home):
    """Grants were materialized (in this instance) after their file landed: the first ticks
    record them; publications never were: they are ingested."""
    from assets.portfolio.defs import grants
    from dagster_project.definitions import defs
    from dagster_project.resources import LakeResource

    nih = shared_path("funding", "nih", "project_io_NCI_CA_subset.csv").read_text().splitlines()
    portfolio = lake_home / "landing" / "portfolio"
    _landed(portfolio / "grants" / "nci.csv", "\n".join(nih[:21]) + "\n")
    medline = shared_path("publications", "medline", "pubmed_result1.txt")
    _landed(portfolio / "publications" / medline.name, medline.read_text())
    sensor = defs.get_sensor_def("landing_sensor")
    with dg.instance_for_test() as instance:
        run = dg.materialize([grants], instance=instance, resources={"lake": LakeResource()})
        assert run.success
        (first, second, third), _ = _ticks(sensor, instance, defs, 3)
    assert isinstance(first, dg.SkipReason)
    assert isinstance(second, dg.RunRequest)
    selected = {key.to_user_string() for key in second.asset_selection}
    assert "publications" in selected and "grants" not in selected
    assert isinstance(third, dg.SkipReason)


def test_first_sight_of_a_folder_compares_its_files_with_the_last_ingest(tmp_path):
    roots = {"old": tmp_path / "old", "new": tmp_path / "new", "never": tmp_path / "never"}
    for root in roots.values():
        root.mkdir()
        (root / "a.csv").write_text("x\n")
    # "old" was ingested by a run that started after its file arrived, "new" before, "never" never
    ingested = {"old": time.time() + 60, "new": time.time() - 60, "never": None}
    first = _tick_with(roots, WatchState(), ingested.get)
    assert first.already_ingested == ["old"] and first.changed == {}
    assert sorted(first.waiting) == ["never", "new"]
    second = _tick_with(roots, first.state, ingested.get)
    assert second.changed == {"never": 1, "new": 1}  # stable now: they trigger
    (roots["old"] / "b.csv").write_text("y\n")  # a later change to the ingested folder triggers
    third = _tick_with(roots, _tick_with(roots, second.state, ingested.get).state, ingested.get)
    assert third.changed == {"old": 2}


def test_a_folder_whose_assets_never_ran_triggers_once_even_empty(tmp_path):
    roots = {"empty": tmp_path / "missing", "ingested": tmp_path / "also_missing"}
    ingested = {"empty": None, "ingested": time.time()}
    first = _tick_with(roots, WatchState(), ingested.get)
    assert first.changed == {} and first.waiting == ["empty"]  # ingested and still empty: idle
    second = _tick_with(roots, first.state, ingested.get)
    assert second.changed == {"empty": 0}  # its ingest writes the empty, typed tables
    assert _tick_with(roots, second.state, ingested.get).changed == {}
    # without a lake to ask (no ingested_at), an empty folder never triggers
    plain = _tick(roots, _tick(roots, WatchState()).state)
    assert plain.changed == {} and plain.waiting == []


def _tick_with(roots, state, ingested_at):
    return observe(roots, state, now_ns=time.time_ns() + 10**10, ingested_at=ingested_at)


def test_a_folder_back_in_an_earlier_state_gets_a_new_run_key(lake_home):
    """Removing a file and copying it back (same name, size, mtime) restores an earlier folder
    digest; Dagster skips a request whose run key was used, so the key must differ."""
    from dagster_project.definitions import defs

    sensor = defs.get_sensor_def("landing_sensor")
    nih = shared_path("funding", "nih", "project_io_NCI_CA_subset.csv").read_text().splitlines()
    grants = lake_home / "landing" / "portfolio" / "grants"
    extra = "\n".join([nih[0], *nih[21:26]]) + "\n"
    _landed(grants / "nci.csv", "\n".join(nih[:21]) + "\n")
    keys = []
    with dg.instance_for_test() as instance:
        cursor = None
        for step in range(3):  # one file; two files; the second removed again
            if step == 1:
                _landed(grants / "more.csv", extra)
            if step == 2:
                (grants / "more.csv").unlink()
            (_, request), cursor = _ticks(sensor, instance, defs, 2, cursor)
            assert isinstance(request, dg.RunRequest)
            keys.append(request.run_key)
        _landed(grants / "more.csv", extra)  # back as it was at step 1
        (_, request), _ = _ticks(sensor, instance, defs, 2, cursor)
    assert isinstance(request, dg.RunRequest)
    keys.append(request.run_key)
    assert len(set(keys)) == 4, keys
