"""Withdrawal of consent (issue #20) on a real public landing zone, as a user does it: three real
patients (pydicom's CT_head series, the QIN-PROSTATE ADC series with its DICOM SEG, the AutoRadiomics
prostate volume), a clinical sheet in two versions, a feature table from elsewhere, and a
quarantined row; `radlake materialize`, then `radlake forget` for the CT_head patient.

- forget refuses while landing/ still holds the patient, and names where;
- with --also-landing, the patient's key occurs nowhere under LAKE_HOME afterwards (bytes of every
  file, and every Parquet value, `_history/` and state included), and not after the next run;
- every file that held no row of the patient is byte for byte what it was;
- the erasure is one row of `erasures` (the key's SHA-256, never the key or id), with counts;
- the other patients are all still there.
Deleted landing files leave the lake too: the files index and `imaging_series` follow landing/.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import radlake
from dagster_project.erasure import find_key
from dagster_project.pseudonym import Pseudonymizer
from tests.conftest import shared_path

BIN = Path(sys.executable).parent
SECRET = "forget-test-secret"
FORGOTTEN = "8775070"  # CT_head's PatientID
OTHERS = ("PCAMPMRI-00001", "PR-01")
LIGHT_PARAMS = (
    "imageType:\n  Original: {}\nfeatureClass:\n  firstorder:\nsetting:\n  binWidth: 25\n"
)


def _copy(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    (shutil.copytree if source.is_dir() else shutil.copy2)(source, dest)


def _radlake(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "radlake"), *args], env=env, capture_output=True, text=True, timeout=900
    )


def _clinical(path: Path, forgotten_age: int) -> None:
    # values from lifelines' rossi (the first three released prisoners): age, arrests, weeks
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        ("patient_id", "center_id", "age", "event", "weeks"),
        (FORGOTTEN, "C1", forgotten_age, 1, 20),
        (OTHERS[0], "C1", 18, 1, 17),
        (OTHERS[1], "C1", 19, 1, 25),
    ]
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def _snapshot(home: Path) -> dict[str, bytes]:
    return {
        p.relative_to(home).as_posix(): p.read_bytes()
        for p in home.rglob("*")
        if p.is_file() and p.relative_to(home).parts[0] not in ("landing", "dagster_home")
    }


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("forget")
    home = root / "lakehouse"
    env = {
        **os.environ,
        "LAKE_HOME": str(home),
        "DAGSTER_HOME": str(root / "dagster_home"),
        "LAKE_PSEUDONYM_KEY": SECRET,
        "RADLAKE_CONFIG_DIR": str(root / "config"),
        "GX_ANALYTICS_ENABLED": "false",
        "MPLBACKEND": "Agg",
    }
    assert _radlake(env, "init").returncode == 0
    auto = shared_path("dicom", "autoradiomics")
    center = home / "landing" / "imaging" / "C1"
    _copy(auto / "CT_head", center / FORGOTTEN / "CT")  # a folder named after the patient id
    _copy(auto / "nifti" / "CT_head_seg.nii.gz", center / FORGOTTEN / "lesion.nii.gz")
    _copy(auto / "QIN-PROSTATE-001" / "ADC", center / "qin" / "ADC")
    _copy(auto / "QIN-PROSTATE-001" / "seg", center / "qin" / "seg")
    for name in ("img.nii.gz", "seg_one_label.nii.gz"):
        _copy(auto / "nifti" / "prostate" / name, center / "prostate" / name)
    (center / "cases.csv").write_text(
        "Image,Mask,Label,patient_id\n"
        f"{FORGOTTEN}/CT,{FORGOTTEN}/lesion.nii.gz,1,{FORGOTTEN}\n"
        f"qin/ADC,qin/seg/1-1.dcm,Lesion,{OTHERS[0]}\n"
        f"prostate/img.nii.gz,prostate/seg_one_label.nii.gz,1,{OTHERS[1]}\n"
    )
    for stem in ("ct_default", "mr_default"):
        (home / "params" / f"{stem}.yaml").write_text(LIGHT_PARAMS)
    landing = home / "landing"
    _clinical(landing / "clinical" / "followup.csv", forgotten_age=20)
    # the patient's quarantined row: a follow-up sheet with an unreadable age
    (landing / "clinical" / "zz_update.csv").write_text(
        f"patient_id,center_id,age\n{FORGOTTEN},C1,twenty\n"
    )
    # a feature table computed elsewhere (radMLBench WORC-Lipo's first two features)
    worc = shared_path("radiomics_features", "radMLBench", "datasets", "WORC-Lipo.gz")
    import gzip

    with gzip.open(worc, "rt") as handle:
        rows = list(csv.reader(handle))[:4]
    features = landing / "features" / "C1" / "worc_two.csv"
    features.parent.mkdir(parents=True)
    with features.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", *rows[0][:2]])
        for pid, row in zip((FORGOTTEN, *OTHERS), rows[1:], strict=True):
            writer.writerow([pid, *row[:2]])

    first = _radlake(env, "materialize")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    _clinical(landing / "clinical" / "followup.csv", forgotten_age=21)  # a second version
    second = _radlake(env, "materialize")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    key = Pseudonymizer(SECRET.encode())("C1", FORGOTTEN)
    before = _snapshot(home)
    held = find_key(home, key)
    index_rows = pl.read_parquet(home / "state" / "imaging_files.parquet").height
    return env, home, key, before, held, index_rows


def test_the_patient_lives_in_every_table_before(lake):
    env, home, key, _, held, _ = lake
    con = radlake.connect(home)
    try:
        for table in ("imaging_series", "cases", "radiomics_features", "external_features"):
            n = con.execute(f"select count(*) from {table} where patient_key = ?", [key]).fetchone()
            assert n[0] > 0, table
        versions = con.execute(
            "select count(*) from clinical_history where patient_key = ?", [key]
        ).fetchone()[0]
    finally:
        con.close()
    assert versions == 2
    assert any("_history/" in path for path in held) and any(p.startswith("state/") for p in held)


def test_forget_refuses_while_landing_holds_the_patient(lake):
    env, home, key, before, _, _ = lake
    refused = _radlake(env, "forget", "--center", "C1", "--patient-id", FORGOTTEN)
    assert refused.returncode == 1
    assert "landing/ still holds this patient" in refused.stderr
    assert "clinical/followup.csv (1 clinical row(s))" in refused.stderr
    assert "features/C1/worc_two.csv" in refused.stderr and "cases.csv" in refused.stderr
    assert _snapshot(home) == before  # nothing was touched


def test_forget_with_landing_leaves_no_trace_and_touches_nothing_else(lake):
    env, home, key, before, held, _ = lake
    done = _radlake(
        env, "forget", "--center", "C1", "--patient-id", FORGOTTEN, "--also-landing",
        "--reason", "withdrew consent 2026-12-01",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert FORGOTTEN not in done.stdout  # the id is never printed
    assert find_key(home, key) == []
    after = _snapshot(home)
    # lock files hold only their last holder's pid and time (dagster_project.locks)
    untouched = [p for p in before if p not in held and not p.startswith(".locks/")]
    changed = [p for p in untouched if after.get(p) != before[p]]
    assert untouched and changed == []
    landing = home / "landing"
    assert not (landing / "imaging" / "C1" / FORGOTTEN).exists()
    assert FORGOTTEN not in (landing / "clinical" / "followup.csv").read_text()
    assert FORGOTTEN not in (landing / "imaging" / "C1" / "cases.csv").read_text()

    rerun = _radlake(env, "materialize")
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert find_key(home, key) == []  # the next run does not bring the patient back
    con = radlake.connect(home)
    try:
        erasures = con.sql("select * from erasures").pl()
        others = {
            table: con.execute(f"select count(distinct patient_key) from {table}").fetchone()[0]
            for table in ("clinical", "cases", "imaging_series", "external_features")
        }
    finally:
        con.close()
    assert erasures.height == 1
    row = erasures.row(0, named=True)
    assert row["patient_key_sha256"] == hashlib.sha256(key.encode()).hexdigest()
    assert row["reason"] == "withdrew consent 2026-12-01" and row["landing_files_removed"] > 0
    removed = json.loads(row["rows_removed"])
    assert removed["clinical_history"] == 2 and removed["clinical"] == 1
    assert removed["radiomics_features"] > 0 and removed["external_features"] == 2
    assert others == {"clinical": 2, "cases": 2, "imaging_series": 2, "external_features": 2}
    assert key not in json.dumps(erasures.to_dicts(), default=str)


def test_deleted_landing_files_leave_the_lake(lake):
    """After forget removed the CT_head series from landing/, the header index and imaging_series
    hold only what landing/ holds: one index row per landed file."""
    env, home, _, _, _, index_before = lake
    index = pl.read_parquet(home / "state" / "imaging_files.parquet")
    removed = len(list(shared_path("dicom", "autoradiomics", "CT_head").glob("*.dcm")))
    assert index.height == index_before - removed == 21  # the QIN ADC series (20) and a volume
    series = pl.read_parquet(home / "lake" / "imaging_series" / "imaging_series.parquet")
    assert series.height == 2


def test_a_file_deleted_from_landing_is_reported_and_leaves_every_table(lake):
    env, home, _, _, _, _ = lake
    prostate = home / "landing" / "imaging" / "C1" / "prostate"
    shutil.rmtree(prostate)  # the user deletes PR-01's volume and mask; cases.csv still names them
    run = _radlake(env, "materialize")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    log = run.stdout + run.stderr
    assert "imaging_series: 1 series removed (no longer in landing/)" in log
    assert "cases: 1 cases removed (no longer in landing/)" in log
    key = Pseudonymizer(SECRET.encode())("C1", OTHERS[1])
    con = radlake.connect(home)
    try:
        left = {
            table: con.execute(
                f"select count(*) from {table} where patient_key = ?", [key]
            ).fetchone()[0]
            for table in ("imaging_series", "cases", "radiomics_features")
        }
        rejected = con.execute(
            "select count(*) from quarantine where source_path like 'imaging/C1/cases.csv%'"
        ).fetchone()[0]
    finally:
        con.close()
    assert left == {"imaging_series": 0, "cases": 0, "radiomics_features": 0}
    assert rejected >= 1  # the cases.csv row naming the deleted files is reported, not dropped
