"""End to end, as a user runs it: `radlake demo-data`, `radlake materialize --select '*'`, then the
catalog, the quality gate, pseudonymization and the Dagster UI (headless Chromium) are checked.

One small demo lake is materialized once for the module (a few minutes on 2 cores).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

import radlake

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEMO_PATIENTS = 60
CONTRACT_TABLES = {
    "imaging_series": [
        "series_id",
        "patient_key",
        "center_id",
        "modality",
        "manufacturer",
        "slice_thickness_mm",
        "pixel_spacing_mm",
        "n_slices",
        "acquired_on",
        "source_path",
    ],
    "cases": [
        "case_id",
        "patient_key",
        "center_id",
        "series_id",
        "mask_source",
        "label",
        "image_sha256",
        "mask_sha256",
    ],
    "radiomics_features": [
        "case_id",
        "patient_key",
        "center_id",
        "feature",
        "value",
        "params_id",
        "extractor_version",
    ],
    "external_features": ["case_id", "patient_key", "feature_set", "feature", "value"],
    "clinical": ["patient_key", "center_id"],
    "grants": [
        "grant_id",
        "source",
        "title",
        "pi",
        "institution",
        "region",
        "fund_type",
        "amount",
        "currency",
        "start_year",
        "discipline_code",
    ],
    "publications": [
        "pub_id",
        "title",
        "authors",
        "journal",
        "year",
        "abstract",
        "doi",
        "pmid",
        "source_files",
    ],
    "publication_grants": ["pub_id", "grant_id"],
    "quarantine": ["source_path", "record", "target_table", "reason", "detected_at"],
    "study_splits": ["study", "patient_key", "cohort"],
    "model_metrics": [
        "study",
        "model_version",
        "model",
        "cohort",
        "metric",
        "value",
        "ci_low",
        "ci_high",
    ],
    "survival_results": [
        "study",
        "model_version",
        "endpoint",
        "analysis",
        "term",
        "estimate",
        "ci_low",
        "ci_high",
        "p_value",
    ],
    "model_versions": [
        "study",
        "model_version",
        "trained_at",
        "data_version",
        "code_version",
        "params",
        "artifact_path",
    ],
}


def _env(home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "LAKE_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster_home"),
        "LAKE_PSEUDONYM_KEY": "end-to-end-test-secret",
        "GX_ANALYTICS_ENABLED": "false",
        "MPLBACKEND": "Agg",
    }


@pytest.fixture(scope="module")
def demo_lake(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("e2e") / "lakehouse"
    env = _env(home)

    def run(*args: str) -> subprocess.CompletedProcess:
        command = [str(BIN / "radlake"), *args]
        return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)

    assert run("init").returncode == 0
    generated = run("demo-data", "--patients", str(DEMO_PATIENTS), "--seed", "11")
    assert generated.returncode == 0, generated.stderr
    # the demo study as demo-data wrote it (funded by the grants its papers cite), with fewer
    # bootstrap resamples to keep the test suite short
    study = yaml.safe_load((home / "studies" / "gist_mitotic_index.yaml").read_text())
    assert study["funding"], "demo-data names the grants that fund the demo study"
    study["bootstrap"] = 200
    (home / "studies").mkdir(exist_ok=True)
    (home / "studies" / "gist_mitotic_index.yaml").write_text(
        yaml.safe_dump(study, sort_keys=False)
    )
    # the demo's two scanners (C1 Siemens, C2 GE) harmonized by manufacturer (issue 15)
    harmonized = {
        **study,
        "name": "gist_harmonized",
        "models": ["logistic_regression"],
        "bootstrap": 100,
        "harmonization": {
            "method": "combat",
            "batch": "manufacturer",
            "external": "estimate_unlabeled",
            "compare_raw": True,
        },
    }
    harmonized.pop("survival")
    harmonized.pop("auc_drop_warning")
    (home / "studies" / "gist_harmonized.yaml").write_text(
        yaml.safe_dump(harmonized, sort_keys=False)
    )
    result = run("materialize", "--select", "*")
    (home / "materialize.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return home


@pytest.fixture(scope="module")
def catalog(demo_lake):
    con = radlake.connect(demo_lake)
    yield con
    con.close()


def test_every_contract_table_is_a_catalog_view_with_its_key_columns(catalog):
    views = {
        r[0]
        for r in catalog.execute(
            "select view_name from duckdb_views() where not internal"
        ).fetchall()
    }
    for table, columns in CONTRACT_TABLES.items():
        assert table in views, f"no view {table}"
        present = {r[0] for r in catalog.execute(f"describe {table}").fetchall()}
        assert set(columns) <= present, f"{table} lacks {set(columns) - present}"
        assert catalog.execute(f"select count(*) from {table}").fetchall()[0][0] > 0, (
            f"{table} is empty"
        )


def test_sql_views_cohorts_and_portfolio_run(catalog):
    from dagster_project.catalog import sql_files

    for name in sql_files():
        catalog.execute(f"select * from {name} limit 5").fetchall()
    cohort = catalog.execute(
        "select count(distinct patient_key) from gist_portal_venous"
    ).fetchall()[0][0]
    assert 0 < cohort <= DEMO_PATIENTS


def test_cohort_funding_and_model_history_views_answer_in_duckdb_1_4(demo_lake, catalog):
    """Every view of the demo catalog (cohorts and model_history included, which the real-file
    lake of tests/test_catalog_portable.py lacks) gives DuckDB 2.x's rows in DuckDB 1.4."""
    from tests.clients import python_digests, python_duckdb
    from tests.clients.digests import digests

    answer = python_digests(python_duckdb(), demo_lake, cwd=REPO)
    assert {"gist_portal_venous", "grants_per_year", "model_history"} <= set(answer["views"])
    assert answer["views"] == digests(catalog)


def _demo_identifiers(home: Path) -> set[str]:
    """The demo's fake names, hospital ids, accession numbers and birth dates, read from landing/."""
    import pydicom

    found: set[str] = set()
    for path in sorted((home / "landing" / "imaging").rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found |= {
            str(ds.PatientName),
            str(ds.PatientID),
            str(ds.get("AccessionNumber", "")),
            str(ds.get("PatientBirthDate", "")),
        }
        given = str(ds.PatientName).split("^")
        found |= {" ".join(given), "^".join(given)}
    with (home / "landing" / "clinical" / "clinical.csv").open(encoding="utf-8") as handle:
        found |= {row["patient_id"] for row in csv.DictReader(handle)}
    return {value for value in found if len(value) >= 5}


def test_no_patient_identifier_reaches_lake_catalog_reports_or_logs(demo_lake, catalog):
    identifiers = _demo_identifiers(demo_lake)
    assert len(identifiers) > DEMO_PATIENTS  # names, ids, accession numbers, birth dates
    views = [
        r[0]
        for r in catalog.execute(
            "select view_name from duckdb_views() where not internal"
        ).fetchall()
    ]
    for view in views:
        rows = catalog.execute(f"select * from {view}").fetchall()
        text = "\n".join("\t".join(map(str, row)) for row in rows)
        leaked = sorted(i for i in identifiers if i in text)
        assert not leaked, f"view {view} shows identifiers {leaked[:3]}"
    written = [
        demo_lake / "lake",
        demo_lake / "reports",
        demo_lake / "models",
        demo_lake / "dagster_home",
    ]
    # state/case_locators.json maps case_id -> the real landing paths (which may name patients,
    # like landing/ itself); it is private to the lake: owner-only and never in a table or view
    locators = demo_lake / "state" / "case_locators.json"
    assert locators.stat().st_mode & 0o077 == 0
    for folder in written:
        for path in folder.rglob("*"):
            if path.is_file():
                blob = path.read_bytes()
                leaked = sorted(i for i in identifiers if i.encode() in blob)
                assert not leaked, f"{path} holds identifiers {leaked[:3]}"
    log = (demo_lake / "materialize.log").read_text()
    assert not [i for i in identifiers if i in log]


def test_demo_scanners_harmonized_by_manufacturer(demo_lake, catalog, monkeypatch):
    """The demo's C2 scanner (GE) never trains: its features are mapped onto the Siemens
    training reference from its own features only, as neuroCombat (ref_batch) does it."""
    import joblib
    import numpy as np
    import pandas as pd

    from tests.test_harmonization import neurocombat_reference_batch

    rows = catalog.sql(
        "select distinct model, harmonization from model_metrics where study = 'gist_harmonized'"
    ).fetchall()
    assert set(rows) == {
        ("logistic_regression", "combat(batch=manufacturer, external=estimate_unlabeled)"),
        ("combined", "combat(batch=manufacturer, external=estimate_unlabeled)"),
        (
            "combined_vs_logistic_regression",
            "combat(batch=manufacturer, external=estimate_unlabeled)",
        ),
        ("logistic_regression:raw", "none"),
    }
    folder = demo_lake / "models" / "gist_harmonized"
    inputs = pd.read_parquet(folder / "inputs" / "features.parquet").set_index("patient_key")
    clinical = pd.read_parquet(folder / "inputs" / "clinical.parquet").set_index("patient_key")
    scanners = inputs["manufacturer"].groupby(clinical["center_id"]).agg(set).to_dict()
    assert {c: len(s) for c, s in scanners.items()} == {"C1": 1, "C2": 1}
    assert scanners["C1"] != scanners["C2"]
    version = json.loads((folder / "current.json").read_text())["model_version"]
    model = joblib.load(folder / version / "logistic_regression.joblib")
    step = model.pipeline.named_steps["harmonize"]
    splits = catalog.sql(
        "select patient_key, cohort from study_splits where study = 'gist_harmonized'"
    ).df()
    train = splits[splits["cohort"] == "train"]["patient_key"].tolist()
    external = splits[splits["cohort"] == "external_validation"]["patient_key"].tolist()
    columns = step.features_
    frame = inputs[[*columns, "manufacturer"]]
    out = step.transform(frame.loc[external])
    reference = frame.loc[train, columns].fillna(step.medians_).reset_index(drop=True)
    new = frame.loc[external, columns].fillna(step.medians_).reset_index(drop=True)
    (scanner,) = scanners["C2"]
    expected = neurocombat_reference_batch(reference, new, monkeypatch)
    np.testing.assert_allclose(out.to_numpy(), expected, rtol=1e-10, atol=1e-9)
    # the report says what was fitted where, and that the GE center was estimated unlabeled
    html = (demo_lake / "reports" / "gist_harmonized" / "report.html").read_text()
    assert "Harmonization: ComBat" in html and f"manufacturer {scanner} was not in training" in html
    assert "no labels" in html


def test_demo_bad_rows_are_quarantined_with_distinct_reasons(catalog):
    rows = catalog.execute("select source, rule, reason from quarantine").fetchall()
    rules = {(source, rule) for source, rule, _ in rows}
    # the demo's deliberate defects (radlake.demo.generator.CLINICAL_DEFECTS / GRANT_DEFECTS)
    clinical = sorted(rule for source, rule, _ in rows if source == "clinical")
    assert clinical == ["invalid_event", "missing_id", "negative_duration"], rows
    assert ("grants", "amount_negative") in rules, rules
    assert all(len(reason) > 20 for _, _, reason in rows)


def test_every_check_passed_in_the_demo_run(demo_lake):
    import dagster as dg

    from dagster_project.definitions import defs

    os.environ["DAGSTER_HOME"] = str(demo_lake / "dagster_home")
    with dg.DagsterInstance.get() as instance:
        graph = defs.resolve_asset_graph()
        failed = []
        for check_key in graph.asset_check_keys:
            record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
                [check_key]
            ).get(check_key)
            assert record is not None, f"{check_key} never ran"
            evaluation = record.event.dagster_event.event_specific_data if record.event else None
            if evaluation is None or not evaluation.passed:
                failed.append(check_key.to_user_string())
        assert not failed, failed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def webserver(demo_lake):
    port = _free_port()
    proc = subprocess.Popen(
        [
            str(BIN / "dagster-webserver"),
            "-w",
            "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=_env(demo_lake),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/server_info", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("dagster-webserver did not start in 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from tests.ui.browser import Browser, find_chromium

    executable = find_chromium()
    if executable is None:
        message = "chromium is not installed (make test installs Debian's chromium package)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    driver = Browser(executable)
    yield driver
    driver.close()


def test_ui_shows_lineage_metadata_checks_and_schedule(webserver, browser, tmp_path):
    browser.open(f"{webserver}/asset-groups")
    browser.wait_for_text("Global asset lineage", "imaging", "radiomics", "studies")
    browser.open(f"{webserver}/locations/radlake/asset-groups/imaging/lineage")
    browser.wait_for_text("imaging_series", "cases")
    shot = browser.screenshot(tmp_path / "lineage.png")
    assert shot.stat().st_size > 20_000
    if os.environ.get("UPDATE_SCREENSHOTS"):
        shutil.copy(shot, REPO / "docs" / "lineage_imaging.png")
    # a figure in an asset's metadata opens as an image (the PNG decodes in the browser)
    browser.open(f"{webserver}/assets/funding_trends_figure")
    browser.wait_for_text("funding_trends_figure", "[Show Markdown]")
    assert browser.click_text("[Show Markdown]") >= 1
    deadline = time.time() + 60
    while browser.loaded_images() == 0 and time.time() < deadline:
        time.sleep(0.5)
    assert browser.loaded_images() >= 1
    browser.screenshot(tmp_path / "figure.png")
    # the blocking quality checks and their results
    browser.open(f"{webserver}/assets/clinical?view=checks")
    browser.wait_for_text("gx_suite", "accounting")
    # the nightly schedule, running by default
    browser.open(f"{webserver}/automation")
    browser.wait_for_text("nightly_retraining_schedule", "landing_sensor")


def test_demo_checklist_items_come_from_imaging_and_extraction_tables(demo_lake, catalog):
    """CLEAR 16 (protocol per center), 23 (binning) and 25 (software) against the lake's rows;
    every item the lake can fill (``lake_fillable: yes`` in the checklist CSVs) is filled."""
    from assets.studies.paper.checklists import CHECKLISTS, read_checklist

    items = {
        (c, i): (status, value)
        for c, i, status, value in catalog.execute(
            "select checklist, item, status, value from reporting_checklist "
            "where study = 'gist_mitotic_index'"
        ).fetchall()
    }
    for center, manufacturer, thickness in catalog.execute(
        "select imaging_series.center_id, min(manufacturer), min(slice_thickness_mm) "
        "from imaging_series "
        "join study_splits using (patient_key) where study = 'gist_mitotic_index' group by all"
    ).fetchall():
        assert f"{center}: " in items[("CLEAR", "16")][1]
        assert (
            manufacturer in items[("CLEAR", "16")][1]
            and f"{thickness:g} mm" in items[("CLEAR", "16")][1]
        )
    (version,) = catalog.execute(
        "select distinct extractor_version from radiomics_features where params_id = 'ct_default'"
    ).fetchall()
    assert (
        items[("CLEAR", "25")][0] == "filled"
        and f"pyradiomics {version[0]}" in items[("CLEAR", "25")][1]
    )
    fillable = [
        (c, i["item"]) for c in CHECKLISTS for i in read_checklist(c) if i["lake_fillable"] == "yes"
    ]
    assert len(fillable) > 25
    assert [k for k in fillable if items[k][0] != "filled"] == []
    params = yaml.safe_load((REPO / "assets/radiomics/params/ct_default.yaml").read_text())
    assert items[("CLEAR", "23")] == (
        "filled",
        f"fixed bin width: binWidth {params['setting']['binWidth']}",
    )
    funded = catalog.execute(
        "select grant_id, studies, patients from grant_outputs where n_studies > 0"
    ).fetchall()
    # every study of the demo lake that names the grant in `funding:` (the e2e lake also holds a
    # harmonized copy of the demo study); patients counted once across them
    specs = [yaml.safe_load(p.read_text()) for p in (demo_lake / "studies").glob("*.yaml")]
    study = next(s for s in specs if s["name"] == "gist_mitotic_index")
    (patients,) = catalog.execute(
        "select count(distinct patient_key) from study_splits"
    ).fetchall()[0]
    expected = []
    for grant in study["funding"]:
        names = sorted(s["name"] for s in specs if grant in s.get("funding", []))
        expected.append((grant, ", ".join(names), patients))
    assert sorted(funded) == sorted(expected)


def test_report_shows_the_paper_sections_and_the_flow_diagram(demo_lake, browser):
    """The report in Chromium: flow diagram decoded, Table 1 and both checklists shown."""
    report = demo_lake / "reports" / "gist_mitotic_index" / "report.html"
    browser.open(report.as_uri())
    browser.wait_for_text(
        "Patient flow",
        "Table 1: patient characteristics",
        "TRIPOD+AI",
        "CLEAR",
        "author to complete",
    )
    width = browser.evaluate(
        "(() => { const i = [...document.images].find(i => i.alt === 'patient_flow'); "
        "return i && i.complete ? i.naturalWidth : 0; })()"
    )
    assert width >= 800
    card = demo_lake / "reports" / "gist_mitotic_index" / "model_card.html"
    browser.open(card.as_uri())
    browser.wait_for_text("Intended use", "Data manifest", "Known limits", "Research use only")
    # printable: Chromium's own print-to-PDF of the card (print stylesheet applied)
    import base64

    pdf = base64.b64decode(browser.call("Page.printToPDF", session=True)["data"])
    assert pdf.startswith(b"%PDF") and len(pdf) > 20_000


def test_every_table_column_and_view_of_the_demo_catalog_is_described(demo_lake, catalog):
    """The data dictionary covers every column of every lake table, and every view has a comment."""
    from dagster_project.lake import Lake
    from quality.dictionary import column_description

    tables = Lake.at(demo_lake, create=False).tables()
    columns = catalog.execute(
        "select table_name, column_name, comment from duckdb_columns() where table_name in "
        f"({', '.join(repr(t) for t in tables)})"
    ).fetchall()
    assert len(columns) > 200
    assert [(t, c) for t, c, comment in columns if not comment] == []
    assert all(comment == column_description(t, c) for t, c, comment in columns)
    undescribed = catalog.execute(
        "select view_name from duckdb_views() where not internal and comment is null"
    ).fetchall()
    assert undescribed == []


def test_ui_shows_grant_study_paper_links_and_the_flow_diagram(demo_lake, webserver, browser):
    """The Dagster UI: the study's grants as metadata of its study_references asset (fed by the
    grants asset), and the flow diagram in the patient_flow asset's metadata."""
    study = yaml.safe_load((demo_lake / "studies" / "gist_mitotic_index.yaml").read_text())
    browser.open(f"{webserver}/assets/gist_mitotic_index/study_references")
    browser.wait_for_text("study_references", "funding", *study["funding"])
    browser.open(f"{webserver}/assets/gist_mitotic_index/patient_flow")
    browser.wait_for_text("patient_flow", "flow_diagram", "landed")
