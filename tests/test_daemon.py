"""The daemon runs the lake (issues 19 and 16.6): `radlake serve` (the Dagster daemon and webserver)
with its runs, events and sensor cursors on a real PostgreSQL server started here, over a temporary
lake of real public files.

1. Started on a lake that never ingested anything, with only imaging landed (pyradiomics' breast1
   NRRD image and label with a cases.csv), the landing sensor's first ticks launch one run of
   every ingest (the empty folders give empty, typed tables), awaited to its end.
2. Then files are dropped in each other watched folder in turn (clinical: a CSV of radMLBench's
   HN1 patients and breast1; features: HN1's real feature table split over three centers;
   params: pyradiomics' exampleSettings/Params.yaml; grants: real NCI projects from nihexporter;
   publications: Biopython's MEDLINE exports); each drop makes the sensor launch exactly one run,
   awaited to its end, whose new rows are queried through the catalog and compared with the files
   themselves (or pyradiomics' baseline for the features). Last, a run that fails (the grants
   table's folder is a file) is reported as failed by the run, the reporter and the sensor.
3. A second `radlake serve` (a restart) with ``RADLAKE_NIGHTLY_CRON`` set to a minute that passed
   while the first one ran: the daemon's scheduler launches that missed tick of
   `nightly_retraining` once, which trains the HN1 study and succeeds; the landing sensor,
   resuming from its cursor in PostgreSQL, launches nothing.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, shared_path
from tests.postgres_server import postgres_server
from tests.test_model_history import HN1
from tests.test_model_history import SPEC as HN1_HISTORY_SPEC

KEY = "daemon-test-secret-not-for-production"
STUDY = "hn1_nightly"
SPEC = {**HN1_HISTORY_SPEC, "name": STUDY, "models": ["logistic_regression"]}  # HN1, 3 centers
CASES_CSV = "Image,Mask,Label,patient_id,study_id,modality\nbreast1_image.nrrd,breast1_label.nrrd,1,breast1,S1,MR\n"
NIH_ROWS = 200  # the first rows of the real NCI project file: a lab's own grants export
RUN_TIMEOUT_S = 180
SENSOR_TAGS = {"dagster/sensor_name": "landing_sensor"}
NIGHTLY_TAGS = {"dagster/schedule_name": "nightly_retraining_schedule"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(log: Path, chars: int = 6000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


@contextlib.contextmanager
def _serving(env: dict[str, str], log: Path):
    """`radlake serve` as a user starts it; stopped (SIGTERM, then its whole session) at the end."""
    port = _free_port()
    radlake = Path(sys.executable).with_name("radlake")
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(radlake), "serve", "--port", str(port)],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=45)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the session this test started, nothing else
        process.wait()


def _await_run(instance, tags: dict[str, str], before: set[str], log: Path, timeout: float):
    """The one new run with ``tags`` (not in ``before``), once it has ended."""
    import dagster as dg

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = instance.get_runs(filters=dg.RunsFilter(tags=tags))
        new = [r for r in runs if r.run_id not in before]
        assert len(new) <= 1, f"more than one run for one change: {[r.run_id for r in new]}"
        if new and new[0].is_finished:
            return new[0]
        time.sleep(1)
    pytest.fail(f"no finished run tagged {tags} within {timeout:.0f}s; serve log:\n{_tail(log)}")


def _await_ticks(instance, run_id: str, log: Path, timeout: float = 60) -> dict[str, object]:
    """The failed-run reporter's tick for ``run_id`` and the landing sensor's next skip reason."""
    deadline = time.monotonic() + timeout
    found: dict[str, object] = {}
    while time.monotonic() < deadline and len(found) < 2:
        for state in instance.all_instigator_state():
            ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=10)
            for tick in ticks:
                if state.instigator_name == "failed_run_reporter":
                    if run_id in (tick.origin_run_ids or ()):
                        found["reporter"] = tick
                elif state.instigator_name == "landing_sensor" and run_id in (
                    tick.skip_reason or ""
                ):
                    found["landing"] = tick.skip_reason
        time.sleep(1)
    assert len(found) == 2, f"ticks about the failed run {run_id}: {found}\n{_tail(log)}"
    return found


def _last_minute_after(since: float) -> datetime.datetime:
    """The latest whole UTC minute after ``since`` (waiting for one if none has passed yet)."""
    while True:
        now = datetime.datetime.now(datetime.UTC).replace(second=0, microsecond=0)
        if now.timestamp() > since + 1:
            return now
        time.sleep(1)


def _step_failures(instance, run) -> dict[str, str]:
    """Failed step -> its error, from the run's event log."""
    import dagster as dg

    records = instance.get_records_for_run(
        run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE
    ).records
    return {
        r.event_log_entry.step_key: str(r.event_log_entry.dagster_event.event_specific_data)
        for r in records
    }


def _land_imaging(landing: Path) -> None:
    center = landing / "imaging" / "C1" / "breast1"
    center.mkdir(parents=True)
    for name in ("breast1_image.nrrd", "breast1_label.nrrd"):
        shutil.copy2(shared_path("pyradiomics", name), center / name)
    (center / "cases.csv").write_text(CASES_CSV)


def _drops(home: Path, hn1: pd.DataFrame, tmp: Path):
    """(folder, how to drop its file) for each watched folder the initial run did not cover."""

    def clinical():
        table = hn1[["ID", "center_id", "Target"]].rename(
            columns={"ID": "patient_id", "Target": "ln_metastasis"}
        )
        breast1 = pd.DataFrame({"patient_id": ["breast1"], "center_id": ["C1"]})
        (home / "landing" / "clinical").mkdir(parents=True)
        pd.concat([table, breast1]).to_csv(home / "landing" / "clinical" / "hn1.csv", index=False)

    def features():
        for center, rows in hn1.groupby("center_id"):
            folder = home / "landing" / "features" / str(center)
            folder.mkdir(parents=True)
            rows.drop(columns=["Target", "center_id"]).to_csv(folder / "hn1.csv", index=False)

    def params():
        shutil.copy2(
            shared_path("pyradiomics", "exampleSettings", "Params.yaml"),
            home / "params" / "Params.yaml",
        )

    def grants():
        folder = home / "landing" / "portfolio" / "grants"
        folder.mkdir(parents=True)
        source = shared_path("funding", "nih", "project_io_NCI_CA_subset.csv")
        with source.open() as handle:
            lines = [next(handle) for _ in range(NIH_ROWS + 1)]
        (folder / "nci_projects.csv").write_text("".join(lines))

    def publications():
        folder = home / "landing" / "portfolio" / "publications"
        folder.mkdir(parents=True)
        for path in sorted(shared_path("publications", "medline").glob("pubmed_result*.txt")):
            shutil.copy2(path, folder / path.name)

    return [("clinical", clinical), ("features", features), ("params", params),
            ("grants", grants), ("publications", publications)]  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import dagster as dg

    from dagster_project.catalog import open_catalog
    from dagster_project.lake import Lake

    root = tmp_path_factory.mktemp("daemon")
    home, dagster_home, log = root / "lakehouse", root / "dagster_home", root / "serve.log"
    raw = pd.read_csv(shared_path(*HN1))
    raw["ID"] = raw["ID"].astype(str)
    raw["center_id"] = [("C1", "C1", "C1", "C2", "C3")[i % 5] for i in range(len(raw))]
    started = time.monotonic()
    with postgres_server() as pg_url, pytest.MonkeyPatch.context() as mp:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "LAKE_HOME": str(home),
            "DAGSTER_HOME": str(dagster_home),
            "DAGSTER_PG_URL": pg_url,
            "LAKE_PSEUDONYM_KEY": KEY,
            "RADLAKE_SENSOR_INTERVAL": "1",
            "RADLAKE_NIGHTLY_CRON": "0 0 1 1 *",  # not during the sensor part
            "RADLAKE_TIMEZONE": "UTC",
            "RADLAKE_DEMO_STUDIES": "0",
            "RADLAKE_SCAN_WORKERS": "0",
            "GX_ANALYTICS_ENABLED": "false",
            "DAGSTER_DISABLE_TELEMETRY": "1",
            "MPLBACKEND": "Agg",
        }
        for name in ("LAKE_HOME", "DAGSTER_HOME", "DAGSTER_PG_URL", "LAKE_PSEUDONYM_KEY"):
            mp.setenv(name, env[name])
        lake = Lake.at(home)
        _land_imaging(lake.landing)
        (lake.studies_dir / f"{STUDY}.yaml").write_text(yaml.safe_dump(SPEC))
        runs, rows, seconds = {}, {}, {}
        radlake = Path(sys.executable).with_name("radlake")
        subprocess.run([str(radlake), "init"], env=env, check=True, capture_output=True)
        config = (dagster_home / "dagster.yaml").read_text()
        fast = yaml.safe_load(config)  # the shipped instance, its queue polled every second
        fast["run_coordinator"].setdefault("config", {})["dequeue_interval_seconds"] = 1
        (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(fast))

        def query(sql: str):
            with open_catalog(lake) as con:
                return con.execute(sql).fetchall()

        serving_since = time.time()
        with _serving(env, log) as port:
            instance = dg.DagsterInstance.from_config(str(dagster_home))
            phase = time.monotonic()
            runs["initial"] = _await_run(instance, SENSOR_TAGS, set(), log, RUN_TIMEOUT_S)
            seconds["initial"] = time.monotonic() - phase
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=10) as r:
                server_info = r.status
            rows["initial"] = {
                t: query(f"select count(*) from {t}")[0][0]
                for t in ("clinical", "imaging_series", "cases")
            }
            for folder, drop in _drops(home, raw, root):
                before = {
                    r.run_id for r in instance.get_runs(filters=dg.RunsFilter(tags=SENSOR_TAGS))
                }
                phase = time.monotonic()
                drop()
                runs[folder] = _await_run(instance, SENSOR_TAGS, before, log, RUN_TIMEOUT_S)
                seconds[folder] = time.monotonic() - phase
                print(f"{folder}: {seconds[folder]:.0f} s", flush=True)
            # a run that fails: the grants table's folder is a file when a new grants file lands
            table, aside = lake.lake_dir / "grants", root / "grants_aside"
            table.rename(aside)
            table.write_text("not a folder\n")
            before = {r.run_id for r in instance.get_runs(filters=dg.RunsFilter(tags=SENSOR_TAGS))}
            source = shared_path("funding", "nih", "project_io_NCI_CA_subset.csv")
            lines = source.read_text().splitlines(keepends=True)
            grants_dir = home / "landing" / "portfolio" / "grants"
            (grants_dir / "more_projects.csv").write_text(lines[0] + lines[NIH_ROWS + 1])
            runs["failing"] = _await_run(instance, SENSOR_TAGS, before, log, RUN_TIMEOUT_S)
            table.unlink()
            aside.rename(table)
            reported = _await_ticks(instance, runs["failing"].run_id, log)
            landing_runs = instance.get_runs(filters=dg.RunsFilter(tags=SENSOR_TAGS))
            instance.dispose()
        print(f"sensor part: {time.monotonic() - started:.0f} s", flush=True)

        # the schedule's state dates from the first start: a restarted daemon launches the latest
        # tick it missed since then, once (a server down at 02:00 still retrains that night)
        missed = _last_minute_after(serving_since)
        env["RADLAKE_NIGHTLY_CRON"] = f"{missed.minute} {missed.hour} * * *"
        phase = time.monotonic()
        with _serving(env, log):
            instance = dg.DagsterInstance.from_config(str(dagster_home))
            runs["nightly"] = _await_run(instance, NIGHTLY_TAGS, set(), log, 60 + RUN_TIMEOUT_S)
            seconds["nightly"] = time.monotonic() - phase
            print(f"nightly (with the restart): {seconds['nightly']:.0f} s", flush=True)
            after_restart = instance.get_runs(filters=dg.RunsFilter(tags=SENSOR_TAGS))
            details = {k: _step_failures(instance, r) for k, r in runs.items() if not r.is_success}
            failed_steps = set(_step_failures(instance, runs["failing"]))
            instance.dispose()
        seconds["total"] = time.monotonic() - started
        print(f"daemon test seconds: { {k: round(v) for k, v in seconds.items()} }")
        yield {
            "lake": lake,
            "raw": raw,
            "runs": runs,
            "details": details,
            "rows": rows,
            "query": query,
            "landing_runs": landing_runs,
            "after_restart": after_restart,
            "server_info": server_info,
            "reported": reported,
            "failed_steps": failed_steps,
            "log": log,
            "config": yaml.safe_load(config),
        }


def _selected(run) -> set[str]:
    return {key.to_user_string() for key in run.asset_selection or ()}


def test_every_run_the_daemon_launched_succeeded(served):
    runs = {k: r for k, r in served["runs"].items() if k != "failing"}
    failed = {k: r.status for k, r in runs.items() if not r.is_success}
    assert not failed, f"{failed}\n{served['details']}\n{_tail(served['log'])}"
    assert served["server_info"] == 200  # the webserver of `radlake serve` answers
    # `radlake init` with DAGSTER_PG_URL set wrote an instance on PostgreSQL, read from the env
    storage = served["config"]["storage"]
    assert storage == {"postgres": {"postgres_url": {"env": "DAGSTER_PG_URL"}}}


def test_a_failed_sensor_run_is_reported_as_failed(served):
    run = served["runs"]["failing"]
    assert run.status.value == "FAILURE"
    assert served["failed_steps"] == {"grants"}  # its downstream steps were skipped
    reported = served["reported"]
    assert reported["reporter"].status.value == "SUCCESS"  # it handled (logged) this run
    assert f"({run.run_id}) FAILED" in reported["landing"]  # the sensor's own skip reason says so


def test_first_ticks_ingest_a_landing_zone_the_lake_never_saw(served):
    run = served["runs"]["initial"]
    # a lake whose assets never ran: every ingest (the empty folders give empty, typed tables),
    # whole multi-assets, what follows them (derived tables, rejects, catalog), never the studies
    assert {"imaging_series", "cases", "radiomics_features", "clinical", "clinical_history",
            "external_features", "grants", "publications", "publication_authors", "quarantine",
            "catalog"} <= _selected(run)  # fmt: skip
    assert not any(key.startswith(f"{STUDY}/") for key in _selected(run))
    assert run.tags["radlake/trigger"] == "landing_sensor"
    assert served["rows"]["initial"] == {
        "clinical": 0,  # nothing landed there yet: an empty, typed table
        "imaging_series": 1,  # breast1_image.nrrd (the label is the case's mask)
        "cases": 1,
    }


def test_dropped_clinical_is_queryable_through_the_catalog(served):
    hn1, query = served["raw"], served["query"]
    assert {"clinical", "clinical_history", "external_features"} <= _selected(
        served["runs"]["clinical"]
    )  # the whole multi-asset (issue 19) and what reads clinical
    assert "imaging_series" not in _selected(served["runs"]["clinical"])
    patients = len(hn1) + 1  # HN1's patients and breast1, as written to hn1.csv
    assert query("select count(*) from clinical") == [(patients,)]
    assert query("select count(*) from clinical_history where is_current") == [(patients,)]
    positives = query("select count(*) from clinical where ln_metastasis = 1")[0][0]
    assert positives == int(hn1["Target"].sum())


def test_each_drop_launches_one_run_of_its_folder(served):
    runs = served["runs"]
    assert {"external_features", "quarantine", "catalog"} <= _selected(runs["features"])
    assert "clinical" not in _selected(runs["features"])
    assert {"radiomics_features", "catalog"} <= _selected(runs["params"])
    assert "cases" not in _selected(runs["params"])
    assert {"grants", "publications", "publication_grants"} <= _selected(runs["grants"])
    assert {"publications", "publication_authors", "publication_grants"} <= _selected(
        runs["publications"]
    )
    assert "grants" not in _selected(runs["publications"])
    # one run per change (initial, five drops, the failing one), none after the restart
    assert len(served["landing_runs"]) == 7
    assert len(served["after_restart"]) == 7


def test_dropped_features_are_queryable_through_the_catalog(served):
    hn1, query = served["raw"], served["query"]
    n_features = hn1.shape[1] - 3  # every column but ID, Target and center_id is numeric
    assert query("select count(*), count(distinct patient_key) from external_features")[0] == (
        len(hn1) * n_features,
        len(hn1),
    )


def test_dropped_params_extract_breast1_equal_to_pyradiomics_baseline(served):
    baseline = shared_path("pyradiomics", "baseline", "baseline_shape.csv")
    with baseline.open() as handle:
        expected = {
            row["featureName"]: float(row["breast1"])
            for row in csv.DictReader(handle)
            if row["featureName"].startswith("original_shape_")
        }
    got = dict(
        served["query"](
            "select feature, value from radiomics_features "
            "where params_id = 'Params' and feature like 'original_shape_%'"
        )
    )
    assert set(got) == set(expected)
    for name, value in expected.items():  # shape does not depend on bin width or shift
        assert math.isclose(got[name], value, rel_tol=1e-6), name


def test_dropped_grants_and_publications_are_queryable_through_the_catalog(served):
    query = served["query"]
    source = pd.read_csv(shared_path("funding", "nih", "project_io_NCI_CA_subset.csv"))
    projects = source.head(NIH_ROWS)
    got = dict(query("select grant_id, amount from grants"))
    assert set(got) == set(projects["project_num"])
    for project, cost in zip(projects["project_num"], projects["total_cost"], strict=True):
        assert math.isclose(got[project], cost), project
    raw = "\n".join(
        p.read_text(encoding="utf-8")
        for p in sorted(shared_path("publications", "medline").glob("pubmed_result*.txt"))
    )
    pmids = {row[0] for row in query("select pmid from publications")}
    assert pmids == set(re.findall(r"^PMID- (\d+)", raw, re.M))


def test_the_daemons_schedule_tick_retrains_the_study(served):
    run = served["runs"]["nightly"]
    assert run.job_name == "nightly_retraining" and run.is_success
    assert run.tags["radlake/trigger"] == "nightly"
    versions = served["query"](f"select count(*) from model_versions where study = '{STUDY}'")
    assert versions == [(1,)]
    aucs = served["query"](
        f"select cohort, value from model_metrics where study = '{STUDY}' and metric = 'auc'"
    )
    cohorts = {cohort for cohort, _ in aucs}
    assert {"train", "internal_validation"} <= cohorts
    assert any(cohort.startswith("external_validation") for cohort in cohorts)
    assert all(0.0 <= value <= 1.0 for _, value in aucs)


@pytest.mark.parametrize(
    ("url", "local_config", "says"),
    [
        ("postgresql://dagster:secret@db.lab:5432/dagster", False, "postgresql+psycopg2://"),
        ("postgresql+psycopg2://dagster:secret@db.lab:5432/dagster", True, "keeps runs in local"),
    ],
)
def test_serve_refuses_a_storage_it_cannot_use_before_starting(tmp_path, url, local_config, says):
    """A bare postgresql:// URL (SQLAlchemy 2.1 reads it as psycopg 3, not installed) or a
    DAGSTER_HOME whose dagster.yaml keeps runs in local files while DAGSTER_PG_URL is set: a
    one-line error naming the fix, exit code 2, no password printed, nothing started."""
    import importlib.util

    if not local_config and importlib.util.find_spec("psycopg") is not None:
        pytest.skip("psycopg 3 is installed: a bare postgresql:// URL works")
    dagster_home = tmp_path / "dagster_home"
    if local_config:
        dagster_home.mkdir()
        (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "LAKE_HOME": str(tmp_path / "lake"),
           "DAGSTER_HOME": str(dagster_home), "DAGSTER_PG_URL": url}  # fmt: skip
    radlake = Path(sys.executable).with_name("radlake")
    result = subprocess.run(
        [str(radlake), "serve", "--port", str(_free_port())],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert says in result.stderr and "secret" not in result.stderr + result.stdout
    assert "Dagster UI" not in result.stdout  # refused before starting anything
