"""Clinical RT structure sets through the lake, landed as a hospital exports them.

Four real soft-tissue-sarcoma patients (IBSI validation set, TCIA): each CT series folder with its
clinical RTSTRUCT (ROI ``GTV_Mass_CT``). Dagster materializes imaging_series, cases and
radiomics_features; the rasterized tumour must match the published voxel mask of the same patient
(``nifti/CT_mask.nii.gz``, made by the IBSI with MIRP) in voxel count (stated tolerance: 1% of the
voxels, for voxel centres on a contour edge; observed: none differ) and in pyradiomics features
computed directly on the published NIfTI image and mask. Wrong ROI names, a structure set drawn on
a series that is not landed, and contours outside the image are quarantined with the ROI names and
the numbers. Center C2 lands without cases.csv and gets its ROI from ``centers.yaml``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from dagster_project.quarantine import read_quarantine
from tests.conftest import shared_path
from tests.imaging_run import lake_home, materialize_imaging

PATIENTS = ("STS_041", "STS_042", "STS_043")
EDGE_TOLERANCE = 0.01  # fraction of the reference voxels allowed to differ at contour edges
PARAMS = """imageType:
  Original: {}
featureClass:
  shape:
  firstorder:
  glcm:
setting:
  binWidth: 25
  label: 1
"""


def _sts(patient: str, *parts: str) -> Path:
    return shared_path("dicom", "ibsi_sts", patient, *parts)


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    with lake_home(tmp_path_factory, "rtstruct") as lake:
        home = lake.home
        c1 = lake.landing / "imaging" / "C1"
        rows = ["Image,Mask,Label,patient_id"]
        for patient in PATIENTS:  # the hospital's export: series folder + RS.dcm beside it
            shutil.copytree(_sts(patient, "CT", "image"), c1 / patient / "CT")
            shutil.copy2(_sts(patient, "CT", "mask", "RS.dcm"), c1 / patient / "RS.dcm")
            rows.append(f"{patient}/CT,{patient}/RS.dcm,GTV_Mass_CT,{patient}")
        rows.append("STS_041/CT,STS_041/RS.dcm,Liver,STS_041")  # wrong ROI name
        shutil.copy2(_sts("STS_044", "CT", "mask", "RS.dcm"), c1 / "other_RS.dcm")
        rows.append("STS_041/CT,other_RS.dcm,GTV_Mass_CT,STS_041")  # drawn on a series not landed
        (c1 / "cases.csv").write_text("\n".join(rows) + "\n")
        # C2: no cases.csv; the structure set is paired with the series it references, ROI by pattern
        c2 = lake.landing / "imaging" / "C2"
        shutil.copytree(_sts("STS_044", "CT", "image"), c2 / "export" / "CT")
        shutil.copy2(_sts("STS_044", "CT", "mask", "RS.dcm"), c2 / "export" / "RS.dcm")
        (home / "centers.yaml").write_text(
            "centers:\n  C1: {}\n  C2: {rtstruct_roi: 'gtv_.*_ct'}\n"
        )
        (lake.params_dir / "ct_default.yaml").write_text(PARAMS)
        result, checks = materialize_imaging(workers=2)
        yield lake, result, checks


def _reference_voxels(patient: str) -> int:
    import SimpleITK as sitk

    return int(
        sitk.GetArrayFromImage(sitk.ReadImage(str(_sts(patient, "nifti", "CT_mask.nii.gz")))).sum()
    )


def test_rtstruct_volumes_equal_the_published_voxel_masks(materialized):
    lake, result, checks = materialized
    assert result.success
    assert checks and all(checks.values()), checks
    cases = lake.read_table("cases").filter(pl.col("mask_source") == "rtstruct")
    assert cases.height == 4
    assert set(cases["segment_label"]) == {"GTV_Mass_CT"}
    from dagster_project.pseudonym import Pseudonymizer

    key = Pseudonymizer.for_lake(lake.home)
    for center, patient in [("C1", p) for p in PATIENTS] + [("C2", "STS_044")]:
        row = cases.filter(pl.col("patient_key") == key(center, patient)).row(0, named=True)
        reference = _reference_voxels(patient)
        assert abs(row["qc_roi_voxels"] - reference) <= EDGE_TOLERANCE * reference, (
            patient,
            row["qc_roi_voxels"],
            reference,
        )
        assert row["mask_resampled"] is False
        assert row["roi_volume_ml"] > 0


def test_rtstruct_features_equal_pyradiomics_on_the_published_mask(materialized, tmp_path):
    import SimpleITK as sitk
    from radiomics import featureextractor

    lake, _, _ = materialized
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS)
    extractor = featureextractor.RadiomicsFeatureExtractor(str(params))
    from dagster_project.pseudonym import Pseudonymizer

    key = Pseudonymizer.for_lake(lake.home)
    cases = lake.read_table("cases").filter(pl.col("mask_source") == "rtstruct")
    features = lake.read_table("radiomics_features")
    for patient in PATIENTS:
        case_id = cases.filter(pl.col("patient_key") == key("C1", patient))["case_id"][0]
        lake_values = dict(
            features.filter(pl.col("case_id") == case_id).select("feature", "value").iter_rows()
        )
        direct = extractor.execute(
            sitk.ReadImage(str(_sts(patient, "nifti", "CT_image.nii.gz"))),
            sitk.ReadImage(str(_sts(patient, "nifti", "CT_mask.nii.gz"))),
            label=1,
        )
        expected = {k: float(v) for k, v in direct.items() if not k.startswith("diagnostics_")}
        assert set(expected) <= set(lake_values)
        for name, value in expected.items():
            assert np.isclose(lake_values[name], value, rtol=1e-6, atol=1e-9), (
                patient,
                name,
                lake_values[name],
                value,
            )


def test_wrong_roi_and_unlanded_series_are_quarantined_with_names_and_numbers(materialized):
    lake, _, _ = materialized
    rejects = read_quarantine(lake).filter(pl.col("target_table") == "cases")
    by_record = {r["record"]: r for r in rejects.iter_rows(named=True)}
    wrong = by_record["row 4"]
    assert wrong["rule"] == "roi_absent"
    assert "'Liver'" in wrong["reason"] and "'GTV_Mass_CT'" in wrong["reason"]
    unlanded = by_record["row 5"]
    assert unlanded["rule"] == "rtstruct_series_not_landed"
    assert re.search(
        r"\(1 ROIs, \d+ contours; referenced series [0-9a-f]{12}, the Image", unlanded["reason"]
    )
    assert "STS_0" not in " ".join(rejects["reason"].to_list() + rejects["source_path"].to_list())


def test_contours_outside_the_image_are_quarantined_with_numbers(tmp_path):
    """A real structure set on a series cut short (its last ten slices not landed)."""
    import hashlib
    import hmac

    from assets.imaging.cases import load_cases
    from assets.imaging.dicom_scan import scan_imaging

    def pseudonymize(center, value):
        return hmac.new(b"k", f"{center}\x1f{value}".encode(), hashlib.sha256).hexdigest()[:32]

    landing = tmp_path / "landing"
    folder = landing / "imaging" / "C1" / "p" / "CT"
    folder.mkdir(parents=True)
    import pydicom

    files = sorted(_sts("STS_042", "CT", "image").iterdir())
    z = {
        f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files
    }
    for f in sorted(files, key=z.get)[:-20]:  # the tumour's upper slices are not landed
        shutil.copy2(f, folder / f.name)
    shutil.copy2(_sts("STS_042", "CT", "mask", "RS.dcm"), folder.parent / "RS.dcm")
    (landing / "imaging" / "C1" / "cases.csv").write_text(
        "Image,Mask,Label,patient_id\np/CT,p/RS.dcm,GTV_Mass_CT,P1\n"
    )
    scan = scan_imaging(landing, pseudonymize)
    result = load_cases(landing, scan.series, pseudonymize, scan_files=scan.files)
    assert result.cases.height == 0
    (reject,) = result.rejects
    assert reject.rule == "contour_outside_image"
    assert "contour points" in reject.reason and "mm beyond its edge" in reject.reason
