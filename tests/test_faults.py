"""The fault campaign: injected faults of many kinds, each checked for nothing lost, nothing
duplicated, a reason for every rejected item, and a lake readable throughout.

- ``test_faulty_landing_zone``: one real ``radlake materialize`` over a landing zone of real public
  files with ~25 file-level faults mixed in (``tests/faults_landing.py``); every fault must end in
  ``quarantine`` with a reason naming its file, or (a file the loader reads fine, e.g. GBK) its
  rows in the table; the good files land.
- process-level faults on the publishing path: kill -9 mid-write, mid-publish (then recovery),
  with the lock held; a full disk (RLIMIT_FSIZE); an audit failure; two concurrent
  ``radlake materialize`` runs; a reader querying during every publish.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest

from dagster_project.lake import AuditFailed, Lake, recover
from dagster_project.locks import is_locked

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def _env(home: Path, **extra) -> dict:
    return {
        **os.environ,
        "LAKE_HOME": str(home),
        "LAKE_PSEUDONYM_KEY": "test-secret-not-for-production",
        "DAGSTER_HOME": str(home.parent / "dagster_home"),
        "RADLAKE_DEMO_STUDIES": "0",
        "PYTHONPATH": str(REPO),
        **extra,
    }


def _python(code: str, home: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), str(home)],
        env=_env(home),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def _frame(n: int, start: int = 0) -> pl.DataFrame:
    return pl.DataFrame({"k": list(range(start, start + n)), "v": [float(i) for i in range(n)]})


# --- 1-3: kill -9 during a write, during a publish (recovered), while holding a lock --------------
KILL_DURING_WRITE = """
import sys, numpy as np, polars as pl
from dagster_project.lake import Lake
lake = Lake.at(sys.argv[1])
frame = pl.DataFrame({f"c{i}": np.random.default_rng(0).random(2_000_000) for i in range(10)})
with lake.transaction() as tx:
    print("staging", flush=True)
    tx.write_table("t", frame)
    tx.write_table("u", frame)
"""


def test_kill_during_staging_leaves_previous_versions(lake):
    lake.write_table("t", _frame(3))
    lake.write_table("u", _frame(3))
    proc = _python(KILL_DURING_WRITE, lake.home)
    assert proc.stdout.readline().strip() == "staging"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert lake.read_table("t").equals(_frame(3)) and lake.read_table("u").equals(_frame(3))
    assert [p.name for p in lake.table_files("t")] == ["t.parquet"]
    assert not is_locked(lake.lock_path("table-t"))  # the kernel released the dead writer's lock
    lake.write_table("t", _frame(5))  # the next writer is not blocked
    assert lake.read_table("t").height == 5


KILL_DURING_PUBLISH = """
import os, signal, sys, polars as pl
import dagster_project.lake as core
lake = core.Lake.at(sys.argv[1])
real_apply = core._apply
def apply_then_die(journal):  # the journal is written: move the first file, then die
    source, dest = journal["moves"][0]
    os.replace(source, dest)
    os.kill(os.getpid(), signal.SIGKILL)
core._apply = apply_then_die
with lake.transaction() as tx:
    tx.write_table("features", pl.DataFrame({"k": [1, 2, 3, 4]}))
    tx.write_table("diagnostics", pl.DataFrame({"k": [1, 2, 3, 4]}))
"""


def test_kill_during_publish_is_finished_by_the_next_publish(lake):
    lake.write_table("features", pl.DataFrame({"k": [1]}))
    lake.write_table("diagnostics", pl.DataFrame({"k": [1]}))
    proc = _python(KILL_DURING_PUBLISH, lake.home)
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    # half published: a reader of the pair would see 4 features and 1 diagnostics row ...
    assert (lake.read_table("diagnostics").height, lake.read_table("features").height) == (4, 1)
    # ... until the next publish (or an explicit recover) finishes it from the journal
    lake.write_table("other", pl.DataFrame({"k": [0]}))
    assert lake.read_table("features").height == lake.read_table("diagnostics").height == 4
    assert lake.manifest("features")["rows"] == 4
    assert recover(lake) == []  # nothing left half done


# --- 4: a full disk ---------------------------------------------------------------------------------
FULL_DISK = """
import resource, signal, sys, numpy as np, polars as pl
from dagster_project.lake import Lake
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # files of at most 1 MiB
lake = Lake.at(sys.argv[1])
try:
    lake.write_table("t", pl.DataFrame({"x": np.random.default_rng(1).random(1_000_000)}))
except Exception as error:  # polars reports EFBIG as a ComputeError naming the IO error
    print("refused:", error, flush=True)
"""


def test_full_disk_keeps_the_previous_version(lake):
    lake.write_table("t", _frame(7))
    proc = _python(FULL_DISK, lake.home)
    out, err = proc.communicate(timeout=120)
    assert "refused:" in out and "File too large" in out, err  # EFBIG
    assert lake.read_table("t").equals(_frame(7))
    assert not [p for p in (lake.home / "staging").iterdir() if p.name != "checkpoints"]


# --- 5: an audit failure: rejected with reasons, previous version live -----------------------------
def test_audit_failure_keeps_version_out_with_its_reasons(lake_home):
    from dagster_project.resources import LakeResource

    lake = LakeResource().lake()
    good = pl.DataFrame(
        {
            "case_id": ["a" * 32],
            "patient_key": ["b" * 32],
            "center_id": ["C1"],
            "feature": ["original_firstorder_Mean"],
            "value": [1.0],
            "params_id": ["ct"],
            "params_sha256": ["c" * 64],
            "extractor_version": ["x"],
            "image_sha256": ["d" * 64],
            "mask_sha256": ["e" * 64],
            "label": [1],
            "extracted_at": [datetime(2026, 1, 1, tzinfo=UTC)],
            "intensity_unit": ["HU"],
        }
    )
    lake.write_table("radiomics_features", good)
    bad = pl.concat(
        [good, good.with_columns(feature=pl.lit("original_glcm_Idn"), value=float("nan"))]
    )
    with pytest.raises(AuditFailed, match=r"finite\(column=value\): 1 value\(s\) are NaN"):
        lake.write_table("radiomics_features", bad)
    assert lake.read_table("radiomics_features").equals(good)
    (kept,) = list(lake.rejected_dir("radiomics_features").iterdir())
    results = json.loads((kept / "results.json").read_text())["results"]["radiomics_features"]
    assert not results["passed"] and any("finite" in f for f in results["failed"])


# --- 6: a reader querying during every publish -------------------------------------------------------
def test_reader_never_sees_a_torn_or_half_published_table(lake):
    """Parts written and deleted in one transaction: a reader sees 100 rows, never 0 or 200."""
    lake.write_part("t", "a", _frame(100))
    errors, seen = [], set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                seen.add(lake.read_table("t").height)
                con = duckdb.connect()
                con.sql(f"select count(*) from read_parquet('{lake.table_glob('t')}')").fetchall()
                con.close()
            except Exception as error:  # a glob that lost a file mid-query is a failure
                if "No files found" not in str(error) and "No such file" not in str(error):
                    errors.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(60):
            with lake.transaction() as tx:
                tx.write_part("t", f"p{i}", _frame(100, start=i))
                tx.delete_part("t", "a" if i == 0 else f"p{i - 1}")
    finally:
        stop.set()
        reader.join()
    assert not errors, errors[:3]
    assert seen == {100}, seen


# --- 7-8: two real runs at once, and kill -9 of a real run then a rerun ------------------------------
def _land_real(landing: Path) -> None:
    from tests.conftest import shared_path
    from tests.faults_landing import _rossi

    imaging = landing / "imaging" / "C1"
    imaging.mkdir(parents=True)
    prostate = shared_path("dicom", "autoradiomics", "nifti", "prostate")
    for name, mask in (("p1", "seg_one_label"), ("p2", "seg_dilated_10mm")):
        (imaging / f"{name}.nii.gz").write_bytes((prostate / "img.nii.gz").read_bytes())
        (imaging / f"{name}_mask.nii.gz").write_bytes((prostate / f"{mask}.nii.gz").read_bytes())
    (landing / "clinical").mkdir(parents=True)
    _rossi(slice(0, 80), "ROS").to_csv(landing / "clinical" / "rossi.csv", index=False)
    grants = landing / "portfolio" / "grants"
    grants.mkdir(parents=True)
    lines = shared_path("funding", "nih", "project_io_NCI_CA_subset.csv").read_text().splitlines()
    (grants / "project_io.csv").write_text("\n".join(lines[:300]) + "\n")


SELECT = "imaging_series,cases,radiomics_features,clinical,clinical_history,grants,quarantine"


def _materialize(home: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "radlake"), "materialize", "--select", SELECT, "--log-level", "WARNING"],
        env=_env(home),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: radlake, dg launch, extraction workers
    )


def _assert_lake_whole(lake: Lake) -> None:
    keys = {
        "imaging_series": ["series_id"],
        "cases": ["case_id"],
        "radiomics_features": ["case_id", "params_id", "feature"],
        "clinical": ["patient_key"],
        "grants": ["grant_id"],
    }
    for table, key in keys.items():
        frame = lake.read_table(table)
        assert frame.height and not frame.select(key).is_duplicated().any(), table
        manifest = lake.manifest(table)
        assert manifest["rows"] == frame.height, table  # the manifest describes the live files
    assert lake.read_table("clinical").height == 80
    assert lake.read_table("cases").height == 2
    assert lake.read_table("grants").height == 299
    history = lake.read_table("clinical_history")
    assert history.height == 80 and history["is_current"].all()  # no version written twice


@pytest.mark.slow
def test_two_concurrent_runs_and_a_killed_run(tmp_path):
    home = tmp_path / "lakehouse"
    Lake.at(home)
    _land_real(home / "landing")
    first, second = _materialize(home), _materialize(home)
    out1, _ = first.communicate(timeout=900)
    out2, _ = second.communicate(timeout=900)
    assert first.returncode == 0, out1[-3000:]
    assert second.returncode == 0, out2[-3000:]
    lake = Lake.at(home)
    _assert_lake_whole(lake)
    before = {t: lake.manifest(t)["content_sha256"] for t in ("clinical", "cases", "grants")}

    # kill -9 a third run while it extracts, then rerun: whole again, same content
    (home / "landing" / "imaging" / "C1" / "p3.nii.gz").write_bytes(
        (home / "landing" / "imaging" / "C1" / "p1.nii.gz").read_bytes()
    )
    (home / "landing" / "imaging" / "C1" / "p3_mask.nii.gz").write_bytes(
        (home / "landing" / "imaging" / "C1" / "p2_mask.nii.gz").read_bytes()
    )
    victim = _materialize(home)
    deadline = time.time() + 300
    while time.time() < deadline and not is_locked(lake.lock_path("table-radiomics_features")):
        time.sleep(0.05)
    assert is_locked(lake.lock_path("table-radiomics_features"))
    os.killpg(victim.pid, signal.SIGKILL)  # kill -9 the whole run: CLI, dg launch and workers
    victim.wait()
    rerun = _materialize(home)
    out, _ = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, out[-3000:]
    # the victim held a pool slot (pools are limited to 1 in the instance radlake writes): the
    # rerun could only start because radlake materialize found it dead and freed its slot
    assert "had died (killed?)" in out, out[-2000:]
    assert lake.read_table("cases").height == 3
    features = lake.read_table("radiomics_features")
    assert not features.select("case_id", "params_id", "feature").is_duplicated().any()
    assert features["case_id"].n_unique() == 3
    assert lake.manifest("clinical")["content_sha256"] == before["clinical"]
    assert lake.manifest("grants")["content_sha256"] == before["grants"]


# --- the mixed landing zone: file-level faults in one real run --------------------------------------
LANDED_ANYWAY = {"csv_gbk", "csv_utf16", "csv_bom", "excel_merged_header", "dicom_truncated_pixels"}


@pytest.mark.slow
def test_faulty_landing_zone(tmp_path):
    from tests.faults_landing import build_faulty_landing

    home = tmp_path / "lakehouse"
    lake = Lake.at(home)
    faults = build_faulty_landing(lake.landing)
    run = subprocess.run(
        [
            str(BIN / "radlake"),
            "materialize",
            "--select",
            SELECT + ",publications,publication_authors,publication_grants",
            "--log-level",
            "WARNING",
        ],
        env=_env(home),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = run.stdout[-3000:] + run.stderr[-3000:]
    quarantine = lake.read_table("quarantine")
    assert quarantine.height and quarantine["reason"].str.len_chars().min() > 10, log
    names = " ".join(quarantine["source_path"].to_list())
    missing = []
    for fault, relative in faults.items():
        if fault in LANDED_ANYWAY or fault in ("mask_empty",):
            continue
        if Path(relative).name not in names:
            missing.append(fault)
    assert not missing, (missing, run.stdout[-2000:], run.stderr[-2000:])
    clinical = lake.read_table("clinical")
    # every rossi row of the readable files landed: UTF-8, GBK, UTF-16, BOM, merged-header Excel
    assert clinical.height == 120 + 1, clinical.height  # + the one well-formed row of ragged.csv
    gbk = clinical.filter(pl.col("source_file") == "clinical/rossi_gbk.csv")
    assert gbk.height == 20 and set(gbk["备注"].to_list()) == {
        "随访",
        "复发",
    }  # decoded, not mojibake
    assert clinical.filter(pl.col("source_file") == "clinical/rossi_utf16.csv").height == 20
    by_file = dict(quarantine.group_by("source_path").agg(pl.col("rule").first()).iter_rows())
    assert by_file["clinical/huge.csv"] == "unreadable_file"  # refused unread, by its size
    assert by_file["imaging/C1/bad/cut.nii.gz"] == "truncated_image"
    assert by_file["imaging/C1/bad/pipe.dcm"] == "not_a_regular_file"
    assert by_file["clinical/ragged.csv"] == "ragged_row"
    assert "empty_mask" in set(quarantine["rule"])  # its path is scrubbed: found by its rule
    # the good files landed: the real MR volume with its mask, the CT slice, grants, MEDLINE
    assert lake.read_table("cases").height == 1
    assert lake.read_table("grants").height == 200
    assert lake.read_table("publications").height >= 1
    series = lake.read_table("imaging_series")
    assert series.filter(pl.col("source_path").str.contains("C1/mr")).height == 1  # its series
    for table in ("imaging_series", "clinical", "grants", "quarantine"):
        assert lake.manifest(table) is not None
