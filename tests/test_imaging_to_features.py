"""Real DICOM through the lake, landing file -> table: Dagster materializes imaging_series, cases and
radiomics_features from real public data (QIN-PROSTATE-001 ADC + DICOM SEG, CT_head + NIfTI mask,
pydicom's CT_small/MR_small, the prostate edge-case masks). Features are compared with pyradiomics
run directly on the same image and mask; bad masks land in quarantine with distinct rules."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from dagster_project.quarantine import read_quarantine
from tests.conftest import shared_path
from tests.imaging_run import lake_home, materialize_imaging

CASES_C1 = """Image,Mask,Label,patient_id,phase
head/CT,head/lesion.nii.gz,1,HEAD-01,non_contrast
qin/ADC,qin/seg/1-1.dcm,Lesion,QIN-01,
"""
# LAKE_HOME/params files override the shipped defaults of the same stem (kept light for test time:
# no resampling; shape, first order and GLCM)
LIGHT_PARAMS = """imageType:
  Original: {}
featureClass:
  shape:
  firstorder:
  glcm:
setting:
  binWidth: 25
  label: 1
"""
CASES_C3 = """Image,Mask,Label,patient_id
prostate/img.nii.gz,prostate/seg_one_label.nii.gz,1,PR-1
prostate/img.nii.gz,prostate/seg_empty.nii.gz,1,PR-1
prostate/img.nii.gz,prostate/seg_multilabel.nrrd,,PR-1
prostate/img.nii.gz,prostate/seg_single_slice.nii.gz,1,PR-1
prostate/img.nii.gz,prostate/seg_two_labels.nii.gz,3,PR-1
"""


def _copy(source: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    (shutil.copytree if source.is_dir() else shutil.copy2)(source, dest)


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    with lake_home(tmp_path_factory, "imaging") as lake:
        imaging = lake.landing / "imaging"
        auto = shared_path("dicom", "autoradiomics")
        _copy(auto / "CT_head", imaging / "C1" / "head" / "CT")
        _copy(auto / "nifti" / "CT_head_seg.nii.gz", imaging / "C1" / "head" / "lesion.nii.gz")
        _copy(auto / "QIN-PROSTATE-001" / "ADC", imaging / "C1" / "qin" / "ADC")
        _copy(auto / "QIN-PROSTATE-001" / "seg", imaging / "C1" / "qin" / "seg")
        (imaging / "C1" / "cases.csv").write_text(CASES_C1)
        for name in ("CT_small.dcm", "MR_small.dcm"):
            _copy(shared_path("dicom", "pydicom", name), imaging / "C2" / "pydicom" / name)
        for path in (auto / "nifti" / "prostate").iterdir():
            _copy(path, imaging / "C3" / "prostate" / path.name)
        (imaging / "C3" / "cases.csv").write_text(CASES_C3)
        for stem in ("ct_default", "mr_default"):
            (lake.params_dir / f"{stem}.yaml").write_text(LIGHT_PARAMS)
        result, checks = materialize_imaging(workers=2)
        yield lake, result, checks


def test_every_check_passes_and_real_series_land(materialized):
    lake, result, checks = materialized
    assert result.success
    assert checks and all(checks.values()), checks
    series = lake.read_table("imaging_series")
    by_modality = (
        series.group_by("center_id", "modality").len().sort("center_id", "modality").rows()
    )
    # C1: CT_head (CT) and QIN ADC (MR); C2: pydicom's CT_small and MR_small; C3: the prostate volume
    assert ("C1", "CT", 1) in by_modality and ("C1", "MR", 1) in by_modality
    assert ("C2", "CT", 1) in by_modality and ("C2", "MR", 1) in by_modality
    head = series.filter(pl.col("n_slices") == 93)
    assert head.height == 1


def test_dicom_seg_and_nifti_cases_reach_features_equal_to_direct_pyradiomics(materialized):
    import SimpleITK as sitk
    from radiomics import featureextractor

    lake, _, _ = materialized
    features = lake.read_table("radiomics_features")
    cases = lake.read_table("cases")
    head = cases.filter(pl.col("mask_source") == "nifti", pl.col("center_id") == "C1").row(
        0, named=True
    )
    seg = cases.filter(pl.col("mask_source") == "dicom_seg").row(0, named=True)
    assert seg["segment_label"] == "Lesion"
    assert set(features.filter(pl.col("case_id") == seg["case_id"])["params_id"]) == {"mr_default"}

    # CT_head: the lake's ct_default features equal pyradiomics on the same DICOM series + NIfTI mask
    reader = sitk.ImageSeriesReader()
    folder = lake.landing / "imaging" / "C1" / "head" / "CT"
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    mask = sitk.ReadImage(str(lake.landing / "imaging" / "C1" / "head" / "lesion.nii.gz"))
    from assets.radiomics.params import discover_params

    params, _ = discover_params(lake.params_dir)
    ct_default = next(p for p in params if p.params_id == "ct_default")
    assert ct_default.path.parent == lake.params_dir  # the LAKE_HOME file won over the shipped one
    extractor = featureextractor.RadiomicsFeatureExtractor(str(ct_default.path))
    direct = {
        k: float(v)
        for k, v in extractor.execute(image, mask, label=1).items()
        if not k.startswith("diagnostics_")
    }
    lake_values = dict(
        features.filter(pl.col("case_id") == head["case_id"], pl.col("params_id") == "ct_default")
        .select("feature", "value")
        .iter_rows()
    )
    assert set(lake_values) == set(direct)
    for name, value in direct.items():
        assert lake_values[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name


def test_prostate_edge_case_masks_are_quarantined_with_distinct_rules(materialized):
    lake, _, _ = materialized
    rejected = read_quarantine(lake, "cases")
    rules = sorted(rejected["rule"].to_list())
    assert rules == ["empty_mask", "label_absent", "multilabel_without_label", "roi_too_small"], (
        rejected
    )
    assert all("PR-1" not in reason for reason in rejected["reason"].to_list())
    good = lake.read_table("cases").filter(pl.col("center_id") == "C3")
    assert good.height == 1  # seg_one_label is the one valid prostate case
