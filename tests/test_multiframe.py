"""Enhanced multi-frame CT/MR through Dagster (real NEMA/pydicom files, tests/fixtures/multiframe).

The Enhanced CT becomes one 3D case whose geometry comes from each frame's plane position
(highdicom); the lake's features equal pyradiomics run on SimpleITK's own (GDCM) reading of the same
file with the same mask. The Enhanced MR without a frame of reference is quarantined rather than
given a made-up 1 mm grid. (Multi-frame DICOM SEG, e.g. QIN-PROSTATE's 80-frame SEG, is read in
tests/test_imaging_to_features.py.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from dagster_project.quarantine import read_quarantine
from tests.imaging_run import lake_home, materialize_imaging

FIXTURES = Path(__file__).parent / "fixtures" / "multiframe"
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


def _threshold_mask(image_path: Path, target: Path) -> None:
    """A real-looking ROI: tissue above -300 HU in the central part of the image, on SimpleITK's
    reading of the file."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(image_path))
    values = sitk.GetArrayFromImage(image)
    mask = np.zeros(values.shape, dtype=np.uint8)
    mask[:, 180:330, 180:330] = values[:, 180:330, 180:330] > -300
    out = sitk.GetImageFromArray(mask)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(target))


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    import SimpleITK as sitk

    with lake_home(tmp_path_factory, "multiframe") as lake:
        c1 = lake.landing / "imaging" / "C1"
        (c1 / "ect").mkdir(parents=True)
        shutil.copy2(FIXTURES / "eCT_Supplemental.dcm", c1 / "ect" / "eCT_Supplemental.dcm")
        _threshold_mask(FIXTURES / "eCT_Supplemental.dcm", c1 / "ect_mask.nii.gz")
        (c1 / "emr").mkdir()
        shutil.copy2(FIXTURES / "emri_small.dcm", c1 / "emr" / "emri_small.dcm")
        emri = sitk.ReadImage(str(FIXTURES / "emri_small.dcm"))
        sitk.WriteImage(sitk.Cast(emri > 100, sitk.sitkUInt8), str(c1 / "emr_mask.nii.gz"))
        (c1 / "cases.csv").write_text(
            "Image,Mask,Label,patient_id\nect,ect_mask.nii.gz,1,P1\nemr/emri_small.dcm,emr_mask.nii.gz,1,P2\n"
        )
        (lake.params_dir / "ct_default.yaml").write_text(PARAMS)
        result, checks = materialize_imaging(workers=1)
        yield lake, result, checks


def test_enhanced_ct_is_one_case_with_features_equal_to_pyradiomics(materialized):
    import SimpleITK as sitk
    from radiomics import featureextractor

    lake, result, checks = materialized
    assert result.success and checks and all(checks.values()), checks
    series = lake.read_table("imaging_series").filter(pl.col("modality") == "CT")
    assert series.height == 1
    (case,) = lake.read_table("cases").iter_rows(named=True)
    image = sitk.ReadImage(str(FIXTURES / "eCT_Supplemental.dcm"))
    mask = sitk.ReadImage(str(lake.landing / "imaging" / "C1" / "ect_mask.nii.gz"))
    assert case["qc_roi_voxels"] == int(sitk.GetArrayFromImage(mask).sum())
    params = lake.params_dir / "ct_default.yaml"
    direct = featureextractor.RadiomicsFeatureExtractor(str(params)).execute(image, mask, label=1)
    features = lake.read_table("radiomics_features").filter(pl.col("case_id") == case["case_id"])
    ours = dict(features.select("feature", "value").iter_rows())
    expected = {k: float(v) for k, v in direct.items() if not k.startswith("diagnostics_")}
    assert expected.keys() <= ours.keys() and len(expected) > 50
    for name, value in expected.items():
        assert np.isclose(ours[name], value, rtol=1e-6, atol=1e-9), (name, ours[name], value)


def test_enhanced_mr_without_frame_positions_is_quarantined(materialized):
    lake, _, _ = materialized
    rows = read_quarantine(lake, "cases")
    (row,) = rows.filter(pl.col("record") == "row 2").iter_rows(named=True)
    assert row["rule"] == "multiframe_without_geometry"
    assert "frame-of-reference" in row["reason"]
