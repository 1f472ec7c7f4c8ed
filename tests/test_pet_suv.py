"""PET in SUV (body weight) through the lake, checked against MIRP and the published SUV images.

The IBSI sarcoma PET series are stored in SUVbw already (Units GML, decay corrected to the
injection). To have a real BQML series, ``_derive_bqml`` rewrites one into what a scanner stores
before SUV: the same activity in Bq/mL decay corrected to the scan start (Units BQML, DecayCorrection
START, the rescale slope divided by the QIBA SUV factor; SUVType removed; AcquisitionTime = SeriesTime,
one bed position). The lake must then give back the published SUV values, equal to MIRP's own SUV
conversion of the same files (an independent maintained implementation), and features equal to
those of the original GML series. A series without PatientWeight is quarantined naming the tag.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from dagster_project.quarantine import read_quarantine
from tests.conftest import shared_path
from tests.imaging_run import lake_home, materialize_imaging

PARAMS = """imageType:
  Original: {}
featureClass:
  shape: [VoxelVolume]
  firstorder:
  glcm: [JointEntropy, Contrast]
setting:
  binWidth: 0.25
  label: 1
"""


def _pet(patient: str, *parts: str) -> Path:
    return shared_path("dicom", "ibsi_sts", patient, "PET", *parts)


def _series(folder: Path) -> list[Path]:
    import SimpleITK as sitk

    return [Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))]


def _derive_bqml(source: Path, target: Path, drop: str | None = None) -> None:
    import pydicom

    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        ds = pydicom.dcmread(path)
        info = ds.RadiopharmaceuticalInformationSequence[0]

        def at(time, ds=ds):
            return dt.datetime.strptime(
                ds.SeriesDate + str(time).split(".")[0].ljust(6, "0"), "%Y%m%d%H%M%S"
            )

        decay = (at(ds.SeriesTime) - at(info.RadiopharmaceuticalStartTime)).total_seconds()
        decayed_dose = float(info.RadionuclideTotalDose) * 2 ** (
            -decay / float(info.RadionuclideHalfLife)
        )
        bq_per_suv = decayed_dose / (float(ds.PatientWeight) * 1000.0)
        ds.RescaleSlope = f"{float(ds.RescaleSlope) * bq_per_suv:.10g}"
        ds.Units, ds.DecayCorrection, ds.AcquisitionTime = "BQML", "START", ds.SeriesTime
        for keyword in ("SUVType", "AcquisitionDateTime", *([drop] if drop else [])):
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(target / path.name)


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    with lake_home(tmp_path_factory, "pet") as lake:
        c1 = lake.landing / "imaging" / "C1"
        shutil.copytree(_pet("STS_041", "image"), c1 / "gml" / "PET")
        _derive_bqml(_pet("STS_042", "image"), c1 / "bqml" / "PET")
        _derive_bqml(_pet("STS_043", "image"), c1 / "noweight" / "PET", drop="PatientWeight")
        for folder, patient in (("gml", "STS_041"), ("bqml", "STS_042"), ("noweight", "STS_043")):
            shutil.copy2(_pet(patient, "mask", "RS.dcm"), c1 / folder / "RS.dcm")
        (c1 / "cases.csv").write_text(
            "Image,Mask,Label,patient_id\n"
            + "".join(f"{f}/PET,{f}/RS.dcm,GTV_Mass_PET,{f}\n" for f in ("gml", "bqml", "noweight"))
        )
        c2 = lake.landing / "imaging" / "C2"  # the published SUV series of the BQML patient
        shutil.copytree(_pet("STS_042", "image"), c2 / "p" / "PET")
        shutil.copy2(_pet("STS_042", "mask", "RS.dcm"), c2 / "p" / "RS.dcm")
        (c2 / "cases.csv").write_text(
            "Image,Mask,Label,patient_id\np/PET,p/RS.dcm,GTV_Mass_PET,bqml\n"
        )
        (lake.params_dir / "pt_default.yaml").write_text(PARAMS)
        result, checks = materialize_imaging(workers=1)
        yield lake, result, checks


def _case(lake, center, patient):
    from dagster_project.pseudonym import Pseudonymizer

    key = Pseudonymizer.for_lake(lake.home)(center, patient)
    return lake.read_table("cases").filter(pl.col("patient_key") == key).row(0, named=True)


def test_pet_cases_are_in_suv_and_equal_the_published_suv(materialized):
    lake, result, checks = materialized
    assert result.success
    assert checks and all(checks.values()), checks
    gml, bqml, published = (
        _case(lake, "C1", "gml"),
        _case(lake, "C1", "bqml"),
        _case(lake, "C2", "bqml"),
    )
    assert {gml["intensity_unit"], bqml["intensity_unit"], published["intensity_unit"]} == {"SUVbw"}
    assert gml["suv_factor"] == 1.0 and published["suv_factor"] == 1.0
    assert bqml["suv_factor"] != pytest.approx(1.0)
    assert bqml["qc_roi_voxels"] == published["qc_roi_voxels"] > 0

    features = lake.read_table("radiomics_features")
    assert set(features["intensity_unit"]) == {"SUVbw"}

    def values(case):
        rows = features.filter(
            pl.col("case_id") == case["case_id"], pl.col("params_id") == "pt_default"
        )
        return dict(rows.select("feature", "value").iter_rows())

    converted, reference = values(bqml), values(published)
    assert converted.keys() == reference.keys() and len(reference) > 10
    for name, value in reference.items():
        assert np.isclose(converted[name], value, rtol=1e-6, atol=1e-9), (
            name,
            converted[name],
            value,
        )


def test_suv_image_equals_mirps_conversion_of_the_same_files(materialized):
    """The lake's loaded SUV image (the extractor's loader) against MIRP's SUV of the BQML files."""
    import SimpleITK as sitk
    from mirp.data_import.import_image_and_mask import import_image_and_mask

    from assets.imaging.cases import LOCATORS_FILE, case_tasks, read_locators
    from assets.imaging.mask_qc import load_case_task

    lake, _, _ = materialized
    case = _case(lake, "C1", "bqml")
    cases = lake.read_table("cases").filter(pl.col("case_id") == case["case_id"])
    (task,) = case_tasks(lake.landing, cases, read_locators(lake.state_dir / LOCATORS_FILE))
    image, _ = load_case_task(task)
    ours = sitk.GetArrayFromImage(image)
    folder = lake.landing / "imaging" / "C1" / "bqml" / "PET"
    mirp = import_image_and_mask(image=str(folder), image_modality="PT")[0].to_object()
    theirs = mirp.get_voxel_grid()
    assert theirs.shape == ours.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6 * ours.max())  # MIRP: float32
    # and the published SUV series itself (SimpleITK's reading of the original GML files)
    published = sitk.GetArrayFromImage(
        sitk.ReadImage([str(f) for f in _series(_pet("STS_042", "image"))])
    )
    np.testing.assert_allclose(ours, published, rtol=0, atol=1e-9 * published.max())


def test_pet_without_patient_weight_is_quarantined_naming_the_tag(materialized):
    lake, _, _ = materialized
    rejects = read_quarantine(lake).filter(pl.col("target_table") == "cases")
    (row,) = rejects.filter(pl.col("record") == "row 3").iter_rows(named=True)
    assert row["rule"] == "pet_suv_missing_tag"
    assert "PatientWeight (0010,1030)" in row["reason"]
