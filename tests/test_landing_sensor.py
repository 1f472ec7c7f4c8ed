"""The landing sensor: only stable (no longer growing) new or changed files trigger, and only their assets."""

from __future__ import annotations

import os
import time

import dagster as dg

from dagster_project.landing_watch import WatchState, observe


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


def test_sensor_requests_only_the_assets_a_folder_feeds(lake_home):
    from dagster_project.definitions import defs

    sensor = defs.get_sensor_def("landing_sensor")
    grants_dir = lake_home / "landing" / "portfolio" / "grants"
    grants_dir.mkdir(parents=True)
    csv = grants_dir / "nsfc.csv"
    csv.write_text("批准号,项目名称\n81971612,影像组学\n", encoding="utf-8")
    old = time.time() - 60
    os.utime(csv, (old, old))
    with dg.instance_for_test() as instance:
        cursor = None
        results = []
        for _ in range(3):
            context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
            results.append(sensor(context))
            cursor = context.cursor
        first, second, third = results
        assert isinstance(first, dg.SkipReason)  # seen once: not yet known to be stable
        assert isinstance(second, dg.RunRequest)
        assert second.asset_selection == [dg.AssetKey("grants")]
        assert isinstance(third, dg.SkipReason)  # nothing new since
