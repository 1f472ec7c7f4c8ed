"""Several readers and lesions per patient, landed in cases.csv, through Dagster to the case rules.

Real public masks of one prostate MR (autoradiomics): reader A's lesion (``seg_one_label``),
reader B's wider contour of the same lesion (``seg_dilated_10mm``), reader C's copy of reader A's
mask, and a second lesion (label 2 of ``seg_two_labels``); a second patient (CT_head + its NIfTI
mask) has only reader A. The references are SimpleITK voxel counts of the mask files times the
voxel volume (pyradiomics' ``original_shape_VoxelVolume`` is exactly that).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.conftest import shared_path
from tests.imaging_run import lake_home, materialize_imaging

PARAMS = """imageType:
  Original: {}
featureClass:
  shape: [VoxelVolume, Maximum3DDiameter]
  firstorder: [Mean]
setting:
  label: 1
"""
CASES = """Image,Mask,Label,patient_id,reader,lesion
prostate/img.nii.gz,prostate/seg_one_label.nii.gz,1,P1,A,1
prostate/img.nii.gz,prostate/seg_dilated_10mm.nii.gz,1,P1,B,1
prostate/img.nii.gz,prostate/seg_one_label.nii.gz,1,P1,C,1
prostate/img.nii.gz,prostate/seg_two_labels.nii.gz,2,P1,A,2
head/CT,head/lesion.nii.gz,1,P2,A,1
"""
VOXELS = "original_shape_VoxelVolume"


def _prostate(name: str) -> Path:
    return shared_path("dicom", "autoradiomics", "nifti", "prostate", name)


def _volume(path: Path, label: int = 1) -> float:
    """Reference: voxels of the label x voxel volume (mm3), by SimpleITK."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    return float((sitk.GetArrayFromImage(image) == label).sum()) * float(
        np.prod(image.GetSpacing())
    )


@pytest.fixture(scope="module")
def lake_with_readers(tmp_path_factory):
    with lake_home(tmp_path_factory, "readers") as lake:
        c1 = lake.landing / "imaging" / "C1"
        for name in (
            "img.nii.gz",
            "seg_one_label.nii.gz",
            "seg_dilated_10mm.nii.gz",
            "seg_two_labels.nii.gz",
        ):
            (c1 / "prostate").mkdir(parents=True, exist_ok=True)
            shutil.copy2(_prostate(name), c1 / "prostate" / name)
        auto = shared_path("dicom", "autoradiomics")
        shutil.copytree(auto / "CT_head", c1 / "head" / "CT")
        shutil.copy2(auto / "nifti" / "CT_head_seg.nii.gz", c1 / "head" / "lesion.nii.gz")
        (c1 / "cases.csv").write_text(CASES)
        for stem in ("ct_default", "mr_default"):
            (lake.params_dir / f"{stem}.yaml").write_text(PARAMS)
        result, _ = materialize_imaging(workers=1)
        assert result.success
        yield lake


def _key(lake, patient):
    from dagster_project.pseudonym import Pseudonymizer

    return Pseudonymizer.for_lake(lake.home)("C1", patient)


def test_cases_keep_readers_and_lesions_apart(lake_with_readers):
    cases = lake_with_readers.read_table("cases")
    p1 = cases.filter(pl.col("patient_key") == _key(lake_with_readers, "P1"))
    # readers A and C drew the same file: still two cases, told apart by the reader
    assert sorted(zip(p1["reader"], p1["lesion"], strict=True)) == [
        ("A", "1"),
        ("A", "2"),
        ("B", "1"),
        ("C", "1"),
    ]
    assert p1["case_id"].n_unique() == 4
    assert sorted(p1["qc_roi_voxels"].to_list()) == [2499, 19401, 19401, 70101]


def _pivot(lake, rule):
    """The shared pivot a study calls (``lake_inputs.study_inputs``), over the lake's tables."""
    from assets.clinical.pivot import pivot_features
    from dagster_project.catalog import lake_connection

    con = lake_connection(lake)
    try:
        return pivot_features(con, "radiomics", "mr_default", rule)
    finally:
        con.close()


def test_case_rules_choose_by_reader_size_and_lesion(lake_with_readers):
    lake = lake_with_readers
    p1 = _key(lake, "P1")
    one, dilated, two = (
        _volume(_prostate("seg_one_label.nii.gz")),
        _volume(_prostate("seg_dilated_10mm.nii.gz")),
        _volume(_prostate("seg_two_labels.nii.gz"), 2),
    )
    largest, _ = _pivot(lake, "largest_roi")
    assert largest.filter(pl.col("patient_key") == p1)[VOXELS].item() == pytest.approx(dilated)

    reader_a, sentence = _pivot(lake, "reader:a")
    assert reader_a.filter(pl.col("patient_key") == p1)[VOXELS].item() == pytest.approx(one)
    reader_b, sentence = _pivot(lake, "reader:B")
    assert reader_b["patient_key"].to_list() == [p1]
    assert reader_b[VOXELS].item() == pytest.approx(dilated)

    per_lesion, _ = _pivot(lake, "per_lesion")
    rows = per_lesion.filter(pl.col("patient_key") == p1)
    assert rows["lesion"].to_list() == ["1", "2"]
    assert rows[VOXELS].to_list() == pytest.approx([dilated, two])

    aggregated, sentence = _pivot(lake, "all_lesions")
    row = aggregated.filter(pl.col("patient_key") == p1).row(0, named=True)
    assert row["n_lesions"] == 2
    assert row[VOXELS] == pytest.approx((dilated + two) / 2)
    assert "mean of each feature over the patient's lesions" in sentence


def test_by_reader_gives_the_icc_input_and_spec_refuses_per_lesion(lake_with_readers, tmp_path):
    from assets.studies.case_rule import by_reader
    from assets.studies.spec import StudySpecError, load_study
    from dagster_project.catalog import lake_connection

    con = lake_connection(lake_with_readers)
    try:
        long = by_reader(con, "mr_default")
    finally:
        con.close()
    volumes = long.filter(pl.col("feature") == VOXELS)
    assert volumes["reader"].to_list() == ["A", "B", "C"]  # lesion 1 of P1; lesion 2 has one reader
    assert volumes["value"].to_list() == pytest.approx(
        [
            _volume(_prostate(n))
            for n in ("seg_one_label.nii.gz", "seg_dilated_10mm.nii.gz", "seg_one_label.nii.gz")
        ]
    )

    base = "name: s\ncohort_query: select patient_key from clinical\nlabel: y\n"
    base += "features: {radiomics: {params_id: mr_default}}\nmodels: [logistic_regression]\n"
    base += "split: {development_centers: [C1]}\n"
    (tmp_path / "ok.yaml").write_text(base + "case_rule: reader:A\n")
    assert load_study(tmp_path / "ok.yaml").case_rule == "reader:A"
    (tmp_path / "bad.yaml").write_text(base + "case_rule: per_lesion\n")
    with pytest.raises(StudySpecError, match="per_lesion gives several rows per patient"):
        load_study(tmp_path / "bad.yaml")
