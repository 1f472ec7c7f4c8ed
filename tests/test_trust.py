"""Write-audit-publish details: value rules on staged data, manifests, extractor versions."""

from __future__ import annotations

import json

import duckdb
import polars as pl
import pytest

from assets.radiomics.run import run_extraction
from dagster_project.lake import AuditFailed, Lake
from dagster_project.manifest import file_sha256
from tests.conftest import shared_path
from tests.test_radiomics_incremental import current, land_cases


def _grants(lake: Lake) -> pl.DataFrame:
    """Real NCI projects through the real grants loader."""
    from assets.portfolio.grants import load_grants

    source = shared_path("funding", "nih", "project_io_NCI_CA_subset.csv")
    folder = lake.landing / "portfolio" / "grants"
    folder.mkdir(parents=True)
    lines = source.read_text().splitlines()
    (folder / "nci.csv").write_text("\n".join(lines[:401]) + "\n")
    table, rejects, _ = load_grants(sorted(folder.iterdir()), lake.landing)
    assert not rejects
    return table


def test_manifest_describes_the_published_files(lake_home):
    from dagster_project.resources import LakeResource

    lake = LakeResource().lake()
    table = _grants(lake)
    lake.write_table("grants", table, keep_history=True)
    manifest = lake.manifest("grants")
    (live,) = lake.table_files("grants")
    assert manifest["rows"] == table.height == pl.read_parquet(live).height
    assert manifest["files"][0]["sha256"] == file_sha256(live)
    assert manifest["audit"]["passed"] and manifest["audit"]["suite"]["rows"] == table.height
    assert manifest["libraries"]["polars"] == pl.__version__
    assert manifest["libraries"]["duckdb"] == duckdb.__version__
    assert manifest["code_version"].startswith(("git:", "radlake"))
    # a row-count drop beyond the suite's threshold publishes, with a warning recorded
    lake.write_table("grants", table.head(table.height // 10), keep_history=True)
    after = lake.manifest("grants")
    assert after["previous_version"] == manifest["version"]
    (warning,) = after["audit"]["warnings"]
    assert warning.startswith("row_count_drop") and f"{table.height} -> " in warning
    assert len(list((lake.table_dir("grants") / "_manifests").glob("*.json"))) == 2
    assert pl.read_parquet(lake.history("grants")[0]).height == table.height


def test_referential_integrity_is_checked_on_the_staged_lake(lake_home):
    """cases -> imaging_series: a case whose series is not in the lake is refused; staged
    together with its series (one transaction), the same case passes."""
    from assets.imaging.dicom_scan import scan_imaging
    from dagster_project.pseudonym import Pseudonymizer
    from dagster_project.resources import LakeResource

    lake = LakeResource().lake()
    folder = lake.landing / "imaging" / "C1"
    folder.mkdir(parents=True)
    prostate = shared_path("dicom", "autoradiomics", "nifti", "prostate", "img.nii.gz")
    (folder / "p1.nii.gz").write_bytes(prostate.read_bytes())
    series = scan_imaging(lake.landing, Pseudonymizer.for_lake(lake.home)).series  # real row
    assert series.height == 1
    case = pl.DataFrame(
        {
            "case_id": ["c" * 32],
            "patient_key": ["b" * 32],
            "center_id": ["C1"],
            "series_id": ["f" * 32],  # not the landed series
            "mask_source": ["nifti"],
            "label": [1],
            "image_sha256": ["d" * 64],
            "mask_sha256": ["e" * 64],
            "qc_roi_voxels": [100],
            "roi_volume_ml": [0.1],
            "intensity_unit": ["HU"],
            "image_ref": ["imaging/C1/x.nii.gz"],
            "mask_ref": ["imaging/C1/x_mask.nii.gz"],
        }
    )
    lake.write_table("imaging_series", series)
    with pytest.raises(AuditFailed, match=r"references\(column=series_id.*1 series_id value"):
        lake.write_table("cases", case)
    assert not lake.has_table("cases")
    (kept,) = list(lake.rejected_dir("cases").iterdir())
    rules = json.loads((kept / "results.json").read_text())["results"]["cases"]["rules"]
    (ref,) = [r for r in rules if r["rule"] == "references"]
    assert ref["sample_values"] == ["f" * 32]
    with lake.transaction() as tx:  # the series and its case published together
        tx.write_table(
            "imaging_series", pl.concat([series, series.with_columns(series_id=pl.lit("f" * 32))])
        )
        tx.write_table("cases", case)
    assert lake.read_table("cases").height == 1
    coverage = [r for r in lake.manifest("cases")["audit"]["rules"] if r["rule"] == "coverage"]
    assert coverage[0]["skipped"]  # no clinical table yet: reported, not failed


def test_other_library_versions_re_extract(lake, monkeypatch):
    """extractor_version carries pyradiomics, SimpleITK and numpy versions; stored features of
    other versions are extracted again, and a study refuses a mix of versions."""
    import assets.radiomics.run as run_module
    from assets.radiomics.extract import extractor_version
    from assets.studies.lake_inputs import check_one_extractor

    cases_csv = land_cases(lake)
    first, _ = run_extraction(lake, *current(lake, cases_csv), backend="local:2")
    assert first["extracted"] == 3
    again, _ = run_extraction(lake, *current(lake, cases_csv), backend="local:2")
    assert again["extracted"] == 0
    monkeypatch.setattr(run_module, "extractor_version", lambda: "pyradiomics v9; numpy 9")
    upgraded, _ = run_extraction(lake, *current(lake, cases_csv), backend="local:2")
    assert (upgraded["extracted"], upgraded["unchanged"]) == (3, 0)

    features = lake.read_table("radiomics_features")
    mixed = features.with_columns(
        extractor_version=pl.when(pl.col("case_id") == features["case_id"][0])
        .then(pl.lit("pyradiomics v3.0.1; SimpleITK 2.2.1; numpy 1.26.4"))
        .otherwise(pl.col("extractor_version"))
    )
    con = duckdb.connect()
    con.register("radiomics_features", mixed.to_arrow())
    params_id = features["params_id"][0]
    with pytest.raises(ValueError, match="2 extractor versions .* must not mix them"):
        check_one_extractor(con, params_id)
    con.register("radiomics_features", features.to_arrow())
    assert check_one_extractor(con, params_id) == extractor_version()
