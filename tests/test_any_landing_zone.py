"""Any group's landing zone materializes, not only the demo's (issue #13).

Each scenario lands real public files (never the demo generator) for a subset of the domains and
runs the lake as a user does, `radlake materialize` in a fresh LAKE_HOME, then asks the catalog
with `radlake sql` from another working directory:
- the run succeeds; every contract table is a view; a domain with nothing landed has zero rows;
- every landed domain's rows are there, and every rejected row is in `quarantine` with its rule
  (the blocking accounting checks of the run hold landed = ingested + quarantined);
- a group's own cohort SQL written for another lake's columns fails alone, naming the file, the
  missing column and the columns the clinical table does have, while everything else lands.

Real data: pydicom/AutoRadiomics CT_head (DICOM series) + NIfTI mask and the prostate edge-case
masks; lifelines' GBSG2 trial (686 patients) as a clinical sheet; radMLBench WORC-Lipo features
(115 patients x 1,015 features); NIH ExPORTER project_io records; PubMed MEDLINE and XML exports.
"""

from __future__ import annotations

import csv
import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import radlake
from tests.conftest import shared_path

BIN = Path(sys.executable).parent
DOMAINS = ("imaging", "clinical", "features", "portfolio")
SCENARIOS = {
    "empty": (),
    "imaging_only": ("imaging",),
    "clinical_only": ("clinical",),
    "features_only": ("features",),
    "portfolio_only": ("portfolio",),
    "imaging_and_clinical": ("imaging", "clinical"),
    "everything": DOMAINS,
}
CONTRACT_TABLES = (
    "imaging_series",
    "cases",
    "radiomics_features",
    "external_features",
    "clinical",
    "grants",
    "publications",
    "publication_grants",
    "quarantine",
    "study_splits",
    "model_metrics",
    "survival_results",
    "model_versions",
)
# the tables each domain fills (the rest stay empty when only that domain is landed)
FILLS = {
    "imaging": ("imaging_series", "cases", "radiomics_features"),
    "clinical": ("clinical",),
    "features": ("external_features",),
    "portfolio": ("grants", "publications", "publication_grants"),
}
LIGHT_PARAMS = """imageType:
  Original: {}
featureClass:
  shape:
  firstorder:
setting:
  binWidth: 25
  label: 1
"""
GBSG2_PATIENTS = 120  # of the trial's 686, enough for the sheet and quick to land
NIH_RECORDS = 300


def _copy(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    (shutil.copytree if source.is_dir() else shutil.copy2)(source, dest)


def land_imaging(landing: Path) -> dict:
    """CT_head (a real DICOM series) with its NIfTI mask, and the prostate volume with a good and
    an empty mask (the empty one is a quarantined case)."""
    auto = shared_path("dicom", "autoradiomics")
    center = landing / "imaging" / "C1"
    _copy(auto / "CT_head", center / "head" / "CT")
    _copy(auto / "nifti" / "CT_head_seg.nii.gz", center / "head" / "lesion.nii.gz")
    for name in ("img.nii.gz", "seg_one_label.nii.gz", "seg_empty.nii.gz"):
        _copy(auto / "nifti" / "prostate" / name, center / "prostate" / name)
    (center / "cases.csv").write_text(
        "Image,Mask,Label,patient_id\n"
        "head/CT,head/lesion.nii.gz,1,HEAD-01\n"
        "prostate/img.nii.gz,prostate/seg_one_label.nii.gz,1,PR-01\n"
        "prostate/img.nii.gz,prostate/seg_empty.nii.gz,1,PR-01\n"
    )
    return {"cases": 2, "quarantine_rules": {"imaging"}}


def land_clinical(landing: Path) -> dict:
    """A group's own sheet: GBSG2 columns as the trial published them, hospital ids, two centers,
    the imaging patients' rows, and one row without a patient id (quarantined)."""
    from lifelines.datasets import load_gbsg2

    trial = load_gbsg2().head(GBSG2_PATIENTS + 2)
    rows = []
    for n, record in enumerate(trial.to_dict("records")):
        pid = {GBSG2_PATIENTS: "HEAD-01", GBSG2_PATIENTS + 1: "PR-01"}.get(n, f"GBSG-{n + 1:04d}")
        rows.append({"patient_id": pid, "center_id": "C1" if n % 3 else "C2", **record})
    rows[GBSG2_PATIENTS]["center_id"] = rows[GBSG2_PATIENTS + 1]["center_id"] = "C1"
    rows.append({**rows[0], "patient_id": ""})
    path = landing / "clinical" / "gbsg2_followup.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return {"clinical": GBSG2_PATIENTS + 2, "quarantine_rules": {"missing_id"}}


def land_features(landing: Path) -> dict:
    """radMLBench WORC-Lipo, as computed elsewhere: one row per patient, ID renamed patient_id."""
    source = shared_path("radiomics_features", "radMLBench", "datasets", "WORC-Lipo.gz")
    with gzip.open(source, "rt", newline="") as handle:
        rows = list(csv.reader(handle))
    header = ["patient_id" if c == "ID" else c for c in rows[0]]
    path = landing / "features" / "C1" / "worc_lipo.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows[1:]])
    return {"external_patients": len(rows) - 1}


def land_portfolio(landing: Path) -> dict:
    nih = shared_path("funding", "nih", "project_io_NCI_CA_subset.csv")
    lines = nih.read_text().splitlines()[: NIH_RECORDS + 1]
    grants = landing / "portfolio" / "grants" / "nci_projects.csv"
    grants.parent.mkdir(parents=True, exist_ok=True)
    grants.write_text("\n".join(lines) + "\n")
    pubs = landing / "portfolio" / "publications"
    _copy(shared_path("publications", "medline", "pubmed_result1.txt"), pubs / "pubmed_result1.txt")
    xml = shared_path("publications", "pubmed_xml", "pubmed20n0014_subset_307_with_grantlist.xml")
    _copy(xml, pubs / "with_grants.xml")  # 307 records citing 483 grant ids
    return {"grants": NIH_RECORDS}


LANDERS = {
    "imaging": land_imaging,
    "clinical": land_clinical,
    "features": land_features,
    "portfolio": land_portfolio,
}


def _env(tmp_path: Path) -> dict:
    home = tmp_path / "lakehouse"
    return {
        **os.environ,
        "LAKE_HOME": str(home),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "LAKE_PSEUDONYM_KEY": "any-landing-zone-test",
        "RADLAKE_CONFIG_DIR": str(tmp_path / "config"),
        "GX_ANALYTICS_ENABLED": "false",
        "DAGSTER_DISABLE_TELEMETRY": "1",
        "MPLBACKEND": "Agg",
    }


def _radlake(env: dict, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "radlake"), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _lake(tmp_path: Path, domains: tuple[str, ...]) -> tuple[dict, Path, dict]:
    env = _env(tmp_path)
    home = Path(env["LAKE_HOME"])
    assert _radlake(env, "init").returncode == 0
    expected: dict = {}
    for domain in domains:
        expected[domain] = LANDERS[domain](home / "landing")
    if "imaging" in domains:
        for stem in ("ct_default", "mr_default"):
            (home / "params" / f"{stem}.yaml").write_text(LIGHT_PARAMS)
    return env, home, expected


def _counts(home: Path) -> dict[str, int]:
    con = radlake.connect(home)
    try:
        return {t: con.execute(f"select count(*) from {t}").fetchone()[0] for t in CONTRACT_TABLES}
    finally:
        con.close()


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_landing_zone_materializes(tmp_path, scenario):
    domains = SCENARIOS[scenario]
    env, home, expected = _lake(tmp_path, domains)
    run = _radlake(env, "materialize")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    counts = _counts(home)  # every contract table is a view, landed or not
    filled = {t for d in domains for t in FILLS[d]}
    if "clinical" in domains:  # WORC-Lipo's patients are not in the GBSG2 sheet: quarantined
        filled.discard("external_features")
    for table in CONTRACT_TABLES:
        if table in filled:
            assert counts[table] > 0, (scenario, table)
        elif table != "quarantine" and not (table == "external_features" and "features" in domains):
            assert counts[table] == 0, (scenario, table, counts[table])
    if "clinical" in domains:
        assert counts["clinical"] == expected["clinical"]["clinical"]
    if "imaging" in domains:
        assert counts["cases"] == expected["imaging"]["cases"]
    if "portfolio" in domains:
        assert counts["grants"] == expected["portfolio"]["grants"]

    # the catalog answers from any working directory, through the CLI a user runs
    query = "select source, rule, count(*) as n from quarantine group by all order by all"
    answer = _radlake(env, "sql", query, "--csv", str(tmp_path / "q.csv"), cwd=tmp_path)
    assert answer.returncode == 0, answer.stderr
    with (tmp_path / "q.csv").open() as handle:
        rejected = {(r["source"], r["rule"]): int(r["n"]) for r in csv.DictReader(handle)}
    sources = {source for source, _ in rejected}
    if "clinical" in domains:
        assert rejected[("clinical", "missing_id")] == 1
    if "imaging" in domains:
        assert "cases" in sources or "radiomics_features" in sources, rejected
    if not domains:
        assert rejected == {}
    if "features" in domains:
        # a feature table computed elsewhere lands as its own cases; where the lake has a clinical
        # table, patients it does not know are quarantined by name: nothing is dropped silently
        con = radlake.connect(home)
        patients = con.execute(
            "select count(distinct patient_key) from external_features"
        ).fetchone()
        con.close()
        landed = expected["features"]["external_patients"]
        assert patients[0] + rejected.get(("external_features", "unknown_patient"), 0) == landed


def test_a_cohort_for_another_lake_fails_alone_and_names_what_is_missing(tmp_path):
    """The demo's cohort SQL copied into a lake with a real clinical sheet of other columns."""
    from radlake.demo.generator import DEMO_DIR

    env, home, _ = _lake(tmp_path, ("clinical", "portfolio"))
    cohort = home / "sql" / "cohorts" / "gist_portal_venous.sql"
    _copy(DEMO_DIR / "sql" / "cohorts" / "gist_portal_venous.sql", cohort)
    run = _radlake(env, "materialize")
    assert run.returncode != 0  # the run reports the failed cohort ...
    log = run.stdout + run.stderr
    line = next(x for x in log.splitlines() if "gist_portal_venous.sql: Binder Error" in x)
    assert '"rfs_months"' in line and "clinical has patient_key, center_id" in line
    assert "tsize" in line and "pnodes" in line  # what the group's sheet does have
    counts = _counts(home)  # ... and everything else landed, the catalog included
    assert counts["clinical"] == GBSG2_PATIENTS + 2 and counts["grants"] == NIH_RECORDS
    con = radlake.connect(home)
    failed_view = con.execute(
        "select count(*) from duckdb_views() where view_name = 'gist_portal_venous'"
    ).fetchone()[0]
    con.close()
    assert failed_view == 0  # the broken cohort is not a view; the catalog still answers


def test_key_custody_through_the_cli(tmp_path):
    """`radlake key show`, a run refused with another key, and a deliberate rotation."""
    env = {**_env(tmp_path)}
    del env["LAKE_PSEUDONYM_KEY"]  # the key file in the config folder
    home = Path(env["LAKE_HOME"])
    shown = _radlake(env, "key", "show")
    assert shown.returncode == 0, shown.stderr
    key_files = list((tmp_path / "config" / "keys").glob("*.key"))
    assert len(key_files) == 1 and str(key_files[0]) in shown.stdout
    assert key_files[0].read_text().strip() not in shown.stdout  # the key itself is never shown
    assert not list(home.rglob("*.key")) and not (home / ".pseudonym_key").exists()
    (home / "lake" / "clinical").mkdir(parents=True)
    (home / "lake" / "clinical" / "clinical.parquet").write_bytes(b"made with the first key")

    other = {**env, "LAKE_PSEUDONYM_KEY": "not-this-lakes-key"}
    refused = _radlake(other, "materialize")
    assert refused.returncode == 1 and "is not the key of the lake" in refused.stderr
    assert "radlake key rotate" in refused.stderr

    assert _radlake(other, "key", "rotate").returncode == 1  # asks for --yes first
    rotated = _radlake(other, "key", "rotate", "--yes")
    assert rotated.returncode == 0, rotated.stderr
    retired = list((home / "retired").glob("*/lake/clinical/clinical.parquet"))
    assert len(retired) == 1 and not (home / "lake" / "clinical").exists()
    assert _radlake(other, "key", "show").returncode == 0  # the new key is now the lake's
    assert _radlake(env, "key", "show").returncode == 1  # and the old file's key is refused
