"""Hospital-shaped exports built from real CT (IBSI sarcoma series), through Dagster.

- p1/export: the CT series with, in the same folder, a localizer (a real slice whose ImageType
  says LOCALIZER), the scanner's dose screen and another screenshot (real slices turned into
  Secondary Captures), a derived MPR series (ImageType DERIVED\\SECONDARY\\MPR) and a real
  structured report (highdicom's SR): the CT series is the case, everything else is kept out
  with its own rule.
- p2/CT: the series with one slice removed (a gap of twice the spacing).
- p3/CT: the series re-labelled as tilted (ImageOrientationPatient turned about x so that each
  slice is shifted by exactly one row: 17.4 degrees).
- p4/scout: a folder holding only the localizer.

First with the default settings (quarantine), then with ``resample`` for both in centers.yaml:
the gap is interpolated (the tumour keeps the published voxel count) and the tilt removed (every
original pixel is found at its own physical position in the corrected image).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from dagster_project.lake import Lake
from dagster_project.quarantine import read_quarantine
from dagster_project.resources import LakeResource
from tests.conftest import shared_path

CASES = """Image,Mask,Label,patient_id
p1/export,p1/RS.dcm,GTV_Mass_CT,P1
p2/CT,p2/RS.dcm,GTV_Mass_CT,P2
p3/CT,p3/RS.dcm,GTV_Mass_CT,P3
p4/scout,p1/RS.dcm,GTV_Mass_CT,P1
"""


def _ct(patient: str) -> Path:
    return shared_path("dicom", "ibsi_sts", patient, "CT")


def _by_height(folder: Path) -> list[Path]:
    import pydicom

    return sorted(
        folder.iterdir(),
        key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]),
    )


def _variant(source: Path, target: Path, uid: str, **changes) -> None:
    """A real slice as another object of a new series (new SOP instance)."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(source)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    if "SOPClassUID" in changes:
        ds.file_meta.MediaStorageSOPClassUID = changes["SOPClassUID"]
    ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target)


def _land(c1: Path) -> float:
    import pydicom
    from pydicom.uid import generate_uid

    export = c1 / "p1" / "export"
    shutil.copytree(_ct("STS_041") / "image", export)
    shutil.copy2(_ct("STS_041") / "mask" / "RS.dcm", c1 / "p1" / "RS.dcm")
    slices = _by_height(export)
    scout = dict(ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    _variant(slices[0], export / "scout.dcm", generate_uid(), **scout)
    _variant(slices[0], c1 / "p4" / "scout" / "scout.dcm", generate_uid(), **scout)
    sc = "1.2.840.10008.5.1.4.1.1.7"
    _variant(
        slices[1],
        export / "dose.dcm",
        generate_uid(),
        SOPClassUID=sc,
        SeriesDescription="Dose Report",
    )
    _variant(
        slices[2],
        export / "screen.dcm",
        generate_uid(),
        SOPClassUID=sc,
        SeriesDescription="Key images",
    )
    mpr = generate_uid()
    for i in (3, 4):
        _variant(slices[i], export / f"mpr{i}.dcm", mpr, ImageType=["DERIVED", "SECONDARY", "MPR"])
    shutil.copy2(shared_path("dicom", "highdicom", "sr_document.dcm"), export / "sr.dcm")

    gap = c1 / "p2" / "CT"
    shutil.copytree(_ct("STS_042") / "image", gap)
    _by_height(gap)[20].unlink()
    shutil.copy2(_ct("STS_042") / "mask" / "RS.dcm", c1 / "p2" / "RS.dcm")

    tilted = c1 / "p3" / "CT"
    tilted.mkdir(parents=True)
    files = _by_height(_ct("STS_043") / "image")
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    step = float(
        pydicom.dcmread(files[1], stop_before_pixels=True).ImagePositionPatient[2]
    ) - float(first.ImagePositionPatient[2])
    sine = float(first.PixelSpacing[0]) / step  # one row of shear per slice
    for path in files:
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [1, 0, 0, 0, math.sqrt(1 - sine * sine), sine]
        ds.save_as(tilted / path.name)
    shutil.copy2(_ct("STS_043") / "mask" / "RS.dcm", c1 / "p3" / "RS.dcm")
    (c1 / "cases.csv").write_text(CASES)
    return math.degrees(math.asin(sine))


def _materialize(instance):
    from assets.imaging.defs import defs as imaging_defs

    result = dg.materialize(
        [*imaging_defs.assets, *imaging_defs.asset_checks],
        instance=instance,
        resources={"lake": LakeResource()},
    )
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    return result, checks


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    home = tmp_path_factory.mktemp("hospital") / "lakehouse"
    mp = pytest.MonkeyPatch()
    mp.setenv("LAKE_HOME", str(home))
    mp.setenv("LAKE_PSEUDONYM_KEY", "hospital-test-secret")
    lake = Lake.at(home)
    tilt = _land(lake.landing / "imaging" / "C1")
    with dg.instance_for_test() as instance:
        first = _materialize(instance)
        quarantined = read_quarantine(lake)
        cases = lake.read_table("cases")
        (home / "centers.yaml").write_text(
            "centers:\n  C1: {slice_gaps: resample, gantry_tilt: resample}\n"
        )
        second = _materialize(instance)
    yield lake, tilt, (first, quarantined, cases), second
    mp.undo()


def _rules(quarantine: pl.DataFrame, table: str) -> list[tuple[str, str]]:
    rows = quarantine.filter(pl.col("target_table") == table)
    return sorted(zip(rows["record"].fill_null(""), rows["rule"], strict=True))


def test_kept_out_series_gaps_and_tilt_are_quarantined_with_numbers(runs):
    lake, tilt, ((result, checks), quarantine, cases), _ = runs
    assert result.success and checks and all(checks.values()), checks
    assert _rules(quarantine, "cases") == [
        ("", "derived_image"),
        ("", "dose_report"),
        ("", "localizer"),
        ("", "secondary_capture"),
        ("row 2", "slice_gap"),
        ("row 3", "gantry_tilt"),
        ("row 4", "localizer"),
    ]
    reasons = dict(
        quarantine.filter(pl.col("target_table") == "cases").select("rule", "reason").iter_rows()
    )
    assert (
        "a gap of 6.54 mm" in reasons["slice_gap"] and "spacing is 3.27 mm" in reasons["slice_gap"]
    )
    assert "(1 slice(s) missing)" in reasons["slice_gap"]
    assert f"{tilt:.2f} degrees" in reasons["gantry_tilt"]
    assert "MPR" in reasons["derived_image"]
    # the structured report never was an image series: the header scan rejected it
    sr = quarantine.filter(pl.col("target_table") == "imaging_series")
    assert sr["rule"].to_list() == ["non_image_dicom"] and sr["source_path"][0].endswith("sr.dcm")
    # the CT series of the mixed folder is the case; its tumour has the published voxel count
    import SimpleITK as sitk

    reference = sitk.GetArrayFromImage(
        sitk.ReadImage(str(shared_path("dicom", "ibsi_sts", "STS_041", "nifti", "CT_mask.nii.gz")))
    )
    assert cases["qc_roi_voxels"].to_list() == [int(reference.sum())]


def test_resample_setting_corrects_gap_and_tilt_with_a_note(runs):
    import SimpleITK as sitk

    from assets.imaging.cases import LOCATORS_FILE, case_tasks, read_locators
    from assets.imaging.mask_qc import load_case_task
    from dagster_project.pseudonym import Pseudonymizer

    lake, tilt, _, (result, checks) = runs
    assert result.success and checks and all(checks.values()), checks
    key = Pseudonymizer.for_lake(lake.home)
    cases = lake.read_table("cases")
    gap = cases.filter(pl.col("patient_key") == key("C1", "P2")).row(0, named=True)
    assert "1 missing slice(s) (gap 6.54 mm) interpolated" in gap["image_note"]
    reference = sitk.GetArrayFromImage(
        sitk.ReadImage(str(shared_path("dicom", "ibsi_sts", "STS_042", "nifti", "CT_mask.nii.gz")))
    )
    assert gap["qc_roi_voxels"] == int(reference.sum())
    tilted = cases.filter(pl.col("patient_key") == key("C1", "P3"))
    assert f"gantry tilt of {tilt:.2f} degrees removed" in tilted["image_note"][0]
    assert "slice_gap" not in set(read_quarantine(lake, "cases")["rule"])

    # the extractor's loader: every original pixel sits at its own physical position
    (task,) = case_tasks(lake.landing, tilted, read_locators(lake.state_dir / LOCATORS_FILE))
    image, _ = load_case_task(task)
    values = sitk.GetArrayFromImage(image)
    checked = 0
    for path in sorted((lake.landing / "imaging" / "C1" / "p3" / "CT").iterdir())[::7]:
        original = sitk.ReadImage(str(path))
        pixels = sitk.GetArrayFromImage(original)[0]
        for row, col in ((40, 50), (80, 70), (120, 100)):
            index = image.TransformPhysicalPointToContinuousIndex(
                original.TransformIndexToPhysicalPoint((col, row, 0))
            )
            x, y, z = (int(round(v)) for v in index)
            if 0 <= y < values.shape[1]:
                assert np.allclose(index, (x, y, z), atol=1e-6)
                assert values[z, y, x] == pytest.approx(float(pixels[row, col]), abs=1e-6)
                checked += 1
    assert checked >= 15
