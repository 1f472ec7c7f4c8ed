"""Imaging: series scan, cases, image/mask reading and mask QC on real public DICOM/NIfTI/NRRD.

References are external: pydicom's full read of each file, SimpleITK/GDCM's own slice order,
pydicom's DICOMDIR FileSet (series grouping), highdicom's source-instance indexing and the raw
SEG frames (segment alignment), SimpleITK reading the masks directly (voxel counts).
Landing zones are built in ``tmp_path`` by copying the shared files (never symlinking: a link
out of landing/ is exactly what path safety refuses).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from assets.imaging import io, layout
from assets.imaging.cases import case_tasks, load_cases, read_locators, write_locators
from assets.imaging.dicom_scan import scan_imaging
from assets.imaging.mask_qc import CaseRejected, check_case, load_case_task, prepare_case
from dagster_project.pseudonym import Pseudonymizer
from tests.conftest import shared_path

PSEUDONYMIZE = Pseudonymizer(b"test")
# identifiers carried by the shared files (PatientID / PatientName), and the QIN folder name
IDENTIFIERS = [
    "1CT1",
    "4MR1",
    "CompressedSamples",
    "8775070",
    "Austrialian",
    "PCAMPMRI",
    "77654033",
    "98890234",
]


def dicom(*parts: str) -> Path:
    return shared_path("dicom", *parts)


def land(landing: Path, source: Path, *target: str) -> Path:
    """Copy a shared file or folder into landing/imaging/<target...>."""
    dest = landing.joinpath("imaging", *target)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, dest)
    else:
        shutil.copy2(source, dest)
    return dest


def write_cases(landing: Path, center: str, text: str) -> Path:
    path = landing / "imaging" / center / "cases.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.strip() + "\n", encoding="utf-8")
    return path


def assert_no_identifiers(*frames: pl.DataFrame, rejects=()) -> None:
    texts = []
    for frame in frames:
        for column, dtype in frame.schema.items():
            if dtype == pl.String:
                texts.extend(v for v in frame[column].to_list() if v)
            elif isinstance(dtype, pl.List):
                texts.extend(str(v) for v in frame[column].to_list() if v is not None)
    for reject in rejects:
        texts.extend([reject.source_path, reject.reason, reject.record])
    blob = "\n".join(texts).lower()
    for identifier in IDENTIFIERS:
        assert identifier.lower() not in blob, identifier


# --- imaging_series -----------------------------------------------------------------------------
def test_pydicom_small_files_land_with_header_values(tmp_path):
    import pydicom

    landing = tmp_path / "landing"
    land(
        landing, dicom("pydicom", "CT_small.dcm"), "C1", "1CT1", "CT_small.dcm"
    )  # folder = PatientID
    land(landing, dicom("pydicom", "MR_small.dcm"), "C1", "mr", "MR_small.dcm")
    result = scan_imaging(landing, PSEUDONYMIZE)

    assert result.stats["ingested"] == 2 and result.stats["quarantined"] == 0
    assert result.series.height == 2
    for name, folder in (("CT_small.dcm", "1CT1"), ("MR_small.dcm", "mr")):
        full = pydicom.dcmread(dicom("pydicom", name))  # reference: pydicom's full read
        row = result.series.filter(pl.col("modality") == full.Modality).row(0, named=True)
        assert row["manufacturer"] == full.Manufacturer
        assert row["pixel_spacing_mm"] == pytest.approx(float(full.PixelSpacing[0]))
        assert row["pixel_spacing_col_mm"] == pytest.approx(float(full.PixelSpacing[1]))
        assert row["slice_thickness_mm"] == pytest.approx(float(full.SliceThickness))
        assert (row["rows"], row["columns"]) == (full.Rows, full.Columns)
        assert row["acquired_on"].strftime("%Y%m%d") == (
            full.get("AcquisitionDate") or full.StudyDate
        )
        assert row["n_slices"] == 1 and row["file_format"] == "dicom"
        assert row["patient_key"] == PSEUDONYMIZE("C1", full.PatientID)
        if full.Modality == "CT":
            assert row["kvp"] == pytest.approx(float(full.KVP))
            assert row["convolution_kernel"] == full.ConvolutionKernel
            assert row["contrast_agent"] == full.ContrastBolusAgent
            assert row["phase"] == "contrast"  # an agent is recorded, no phase word
            # the folder named after the PatientID is replaced by the patient_key
            assert row["source_path"] == f"imaging/C1/{row['patient_key']}"
        else:
            assert row["echo_time_ms"] == pytest.approx(float(full.EchoTime))
            assert row["repetition_time_ms"] == pytest.approx(float(full.RepetitionTime))
            assert row["source_path"] == f"imaging/C1/{folder}"
    assert_no_identifiers(result.series, result.files, rejects=result.rejects)


def test_ct_head_is_one_series_in_slice_position_order(tmp_path):
    import SimpleITK as sitk

    landing = tmp_path / "landing"
    folder = land(landing, dicom("autoradiomics", "CT_head"), "C1", "head")
    result = scan_imaging(landing, PSEUDONYMIZE)

    assert result.series.height == 1
    row = result.series.row(0, named=True)
    assert row["n_slices"] == 93 and row["n_files"] == 93 and row["n_positions"] == 93
    assert row["spacing_z_mm"] == pytest.approx(1.5) and row["spacing_uniform"]
    # slice order: file names sort CTHead1, CTHead10, ...; GDCM sorts by position (the reference)
    gdcm_order = [Path(f).name for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))]
    _, ours = io.series_files(folder)
    assert [f.name for f in ours] == gdcm_order
    assert [f.name for f in ours] != sorted(f.name for f in ours)
    image = io.read_image(folder)
    assert image.GetSize() == (64, 64, 93)
    assert image.GetSpacing() == pytest.approx((3.2, 3.2, 1.5))


def test_folders_named_after_name_birth_date_or_study_are_replaced(tmp_path):
    import pydicom

    header = pydicom.dcmread(
        dicom("autoradiomics", "CT_head", "CTHead1.dcm"), stop_before_pixels=True
    )
    name, birth, study = str(header.PatientName), header.PatientBirthDate, header.StudyID
    landing = tmp_path / "landing"
    land(landing, dicom("autoradiomics", "CT_head"), "C1", f"{name}_{birth}", study)
    (landing / "imaging" / "C1" / f"{name}_{birth}" / "report.txt").write_text("dictated report\n")
    first = scan_imaging(landing, PSEUDONYMIZE)

    key = PSEUDONYMIZE("C1", header.PatientID)
    assert first.series["source_path"].to_list() == [f"imaging/C1/{key}/{key}"]
    assert [r.source_path for r in first.rejects] == [f"imaging/C1/{key}/report.txt"]
    # on a re-scan nothing is re-read: the reject's path is scrubbed from the index's digests
    second = scan_imaging(landing, PSEUDONYMIZE, previous=first.files)
    assert second.stats["read"] == 0
    assert [r.source_path for r in second.rejects] == [f"imaging/C1/{key}/report.txt"]
    for value in (name, birth, study):
        assert value not in str(first.files.to_dicts()) + str(second.rejects)


def test_qin_prostate_adc_is_one_mr_series_and_seg_is_left_to_cases(tmp_path):
    landing = tmp_path / "landing"
    land(landing, dicom("autoradiomics", "QIN-PROSTATE-001", "ADC"), "C1", "qin", "ADC")
    land(landing, dicom("autoradiomics", "QIN-PROSTATE-001", "seg"), "C1", "qin", "seg")
    result = scan_imaging(landing, PSEUDONYMIZE)

    assert result.series.height == 1 and not result.rejects
    row = result.series.row(0, named=True)
    assert (row["modality"], row["n_slices"], row["rows"], row["columns"]) == ("MR", 20, 256, 256)
    assert row["spacing_z_mm"] == pytest.approx(3.0, abs=1e-3)
    assert row["field_strength_t"] == pytest.approx(3.0)
    assert result.stats["for_cases"] == 1  # the DICOM SEG is a mask, not a series nor a reject
    assert result.stats["files_seen"] == result.stats["landed"] + result.stats["for_cases"]
    assert (
        result.stats["landed"]
        == result.stats["ingested"] + result.stats["quarantined"] + result.stats["merged"]
    )


def test_series_grouping_matches_the_dicomdir(tmp_path):
    """pydicom's DICOMDIR test set: folders holding several series; the DICOMDIR lists them."""
    import pydicom
    from pydicom.fileset import FileSet

    landing = tmp_path / "landing"
    for patient in ("77654033", "98892001", "98892003"):
        land(landing, dicom("pydicom", "dicomdirtests", patient), "C1", patient)
    land(landing, dicom("pydicom", "dicomdirtests", "DICOMDIR"), "C1", "DICOMDIR")
    result = scan_imaging(landing, PSEUDONYMIZE)

    fileset = FileSet(pydicom.dcmread(dicom("pydicom", "dicomdirtests", "DICOMDIR")))
    expected: dict[str, int] = {}
    for instance in fileset:
        expected[instance.SeriesInstanceUID] = expected.get(instance.SeriesInstanceUID, 0) + 1
    assert result.series.height == len(expected) == 13
    assert sorted(result.series["n_files"].to_list()) == sorted(expected.values())
    by_series = {layout.dicom_series_id(PSEUDONYMIZE, "C1", uid): n for uid, n in expected.items()}
    assert dict(result.series.select("series_id", "n_files").iter_rows()) == by_series
    assert [r.rule for r in result.rejects] == ["non_image_dicom"]  # the DICOMDIR index itself
    assert_no_identifiers(result.series, result.files, rejects=result.rejects)


def test_a_folder_with_several_series_needs_a_series_uid():
    folder = dicom("pydicom", "dicomdirtests", "98892003", "MR1")  # three series, one file each
    with pytest.raises(io.ImagingError) as ambiguous:
        io.read_image(folder)
    assert (
        ambiguous.value.rule == "ambiguous_series"
        and "3 DICOM image series" in ambiguous.value.detail
    )
    import pydicom

    first = sorted(folder.iterdir())[0]
    uid = pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID
    assert io.series_files(folder, uid)[1] == [first]
    assert io.read_image(folder, uid).GetSize()[2] == 1


@pytest.mark.parametrize(
    ("description", "agent", "phase"),
    [
        ("portal venous 1.25mm B30f", None, "portal_venous"),
        ("CT_PV", None, "portal_venous"),
        ("Abd arterial 1.0 B30f", "Omnipaque", "arterial"),
        ("ART 2.5", None, "arterial"),
        ("Delayed 3 min", None, "delayed"),
        ("Non-contrast abdomen", None, "non_contrast"),
        ("Apparent Diffusion Coefficient", None, "unknown"),
        ("ABDOMEN 5mm", "ISOVUE300/100", "contrast"),
    ],
)
def test_contrast_phase_from_series_description(description, agent, phase):
    from assets.imaging.dicom_scan import contrast_phase

    assert contrast_phase(description, None, agent) == phase


def test_bad_files_are_quarantined_with_distinct_rules_and_rescan_reads_nothing(tmp_path):
    landing = tmp_path / "landing"
    land(landing, dicom("pydicom", "CT_small.dcm"), "C1", "1CT1", "CT_small.dcm")
    land(landing, dicom("pydicom", "no_meta.dcm"), "C1", "1CT1", "no_meta.dcm")
    (landing / "imaging" / "C1" / "1CT1" / "garbage.dcm").write_bytes(bytes(range(256)) * 8)
    (landing / "imaging" / "C1" / "1CT1" / "notes.txt").write_text("scanned on the old CT\n")
    (landing / "imaging" / "C1" / "link.dcm").symlink_to(dicom("pydicom", "MR_small.dcm"))
    first = scan_imaging(landing, PSEUDONYMIZE)

    rules = {Path(r.source_path).name: r.rule for r in first.rejects}
    assert rules == {
        "garbage.dcm": "corrupt_dicom",
        "no_meta.dcm": "corrupt_dicom",  # stray first byte: pydicom recovers no dataset even forced
        "notes.txt": "not_dicom",
        "link.dcm": "path_outside_landing",
    }
    key = PSEUDONYMIZE("C1", "1CT1")
    for reject in first.rejects:
        assert reject.target_table == "imaging_series" and reject.rule in reject.reason
        if (
            reject.rule != "path_outside_landing"
        ):  # the PatientID folder is replaced in reject paths too
            assert reject.source_path.startswith(f"imaging/C1/{key}/")
    assert first.stats["read"] == 4 and first.series.height == 1

    second = scan_imaging(landing, PSEUDONYMIZE, previous=first.files)
    assert second.stats["read"] == 0 and second.stats["reused"] == 4
    assert second.series.equals(first.series)
    assert [(r.source_path, r.rule) for r in second.rejects] == [
        (r.source_path, r.rule) for r in first.rejects
    ]
    assert_no_identifiers(second.series, second.files, rejects=second.rejects)

    shutil.copy2(
        dicom("pydicom", "MR_small.dcm"), landing / "imaging" / "C1" / "1CT1" / "garbage.dcm"
    )
    third = scan_imaging(landing, PSEUDONYMIZE, previous=second.files)
    assert third.stats["read"] == 1 and third.series.height == 2


# --- masks --------------------------------------------------------------------------------------
def test_dicom_seg_lesion_is_read_onto_the_adc_grid():
    import highdicom as hd
    import pydicom
    import SimpleITK as sitk

    adc = dicom("autoradiomics", "QIN-PROSTATE-001", "ADC")
    seg_path = dicom("autoradiomics", "QIN-PROSTATE-001", "seg", "1-1.dcm")
    image = io.read_image(adc)
    mask, info = io.read_mask(seg_path, image, "Lesion")
    array = sitk.GetArrayFromImage(mask)

    assert mask.GetSize() == image.GetSize() == (256, 256, 20)
    assert (
        info["segment_number"] == 3 and info["segment_label"] == "Lesion" and not info["resampled"]
    )
    assert array.any()
    # reference 1: highdicom indexing by the source SOP instances, in our slice order
    _, files = io.series_files(adc)
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    seg = hd.seg.segread(seg_path)
    by_instance = seg.get_pixels_by_source_instance(
        uids,
        segment_numbers=[3],
        combine_segments=True,
        relabel=True,
        ignore_spatial_locations=True,
    )
    assert np.array_equal(array, by_instance)
    # reference 2: the raw SEG frames of segment 3 (pydicom), voxel count and referenced slices
    raw = pydicom.dcmread(seg_path)
    frames = raw.pixel_array
    per_frame = raw.PerFrameFunctionalGroupsSequence
    lesion = [
        i
        for i, f in enumerate(per_frame)
        if f.SegmentIdentificationSequence[0].ReferencedSegmentNumber == 3
    ]
    assert array.sum() == sum(int(frames[i].sum()) for i in lesion)
    slices_with_lesion = {
        uids.index(
            per_frame[i].DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        )
        for i in lesion
        if frames[i].any()
    }
    assert set(np.nonzero(array.any(axis=(1, 2)))[0]) == slices_with_lesion


def test_seg_segment_choice_errors_name_the_segments():
    adc = dicom("autoradiomics", "QIN-PROSTATE-001", "ADC")
    seg_path = dicom("autoradiomics", "QIN-PROSTATE-001", "seg", "1-1.dcm")
    image = io.read_image(adc)
    with pytest.raises(io.ImagingError) as none_given:
        io.read_mask(seg_path, image, None)
    assert (
        none_given.value.rule == "multilabel_without_label" and "Lesion" in none_given.value.detail
    )
    with pytest.raises(io.ImagingError) as absent:
        io.read_mask(seg_path, image, 7)
    assert absent.value.rule == "label_absent" and "4 'Prostate'" in absent.value.detail


# --- cases ----------------------------------------------------------------------------------------
def test_ct_head_with_nifti_mask_and_qin_seg_become_cases(tmp_path):
    import SimpleITK as sitk

    landing = tmp_path / "landing"
    land(landing, dicom("autoradiomics", "CT_head"), "C1", "8775070", "CT")  # a PatientID folder
    land(
        landing,
        dicom("autoradiomics", "nifti", "CT_head_seg.nii.gz"),
        "C1",
        "8775070",
        "lesion.nii.gz",
    )
    land(landing, dicom("autoradiomics", "QIN-PROSTATE-001", "ADC"), "C1", "qin", "ADC")
    land(landing, dicom("autoradiomics", "QIN-PROSTATE-001", "seg"), "C1", "qin", "seg")
    write_cases(
        landing,
        "C1",
        """
Image,Mask,Label,patient_id,phase
8775070/CT,8775070/lesion.nii.gz,1,8775070,non_contrast
qin/ADC,qin/seg/1-1.dcm,Lesion,,
""",
    )
    scan = scan_imaging(landing, PSEUDONYMIZE)
    assert scan.series.height == 2 and scan.stats["for_cases"] == 3  # csv, NIfTI mask, SEG
    result = load_cases(landing, scan.series, PSEUDONYMIZE, scan_files=scan.files)

    assert not result.rejects and result.cases.height == 2
    ct = result.cases.filter(pl.col("mask_source") == "nifti").row(0, named=True)
    reference = sitk.GetArrayFromImage(
        sitk.ReadImage(str(dicom("autoradiomics", "nifti", "CT_head_seg.nii.gz")))
    )
    assert ct["qc_roi_voxels"] == int((reference == 1).sum()) and ct["qc_roi_slices"] == 93
    assert not ct["mask_resampled"] and ct["qc_origin_delta_mm"] < 1e-3
    assert ct["series_id"] in scan.series["series_id"].to_list()
    assert ct["image_ref"] == f"imaging/C1/{ct['patient_key']}/CT"
    assert ct["mask_ref"] == f"imaging/C1/{ct['patient_key']}/lesion.nii.gz"
    assert ct["phase"] == "non_contrast"
    seg = result.cases.filter(pl.col("mask_source") == "dicom_seg").row(0, named=True)
    assert (seg["label"], seg["segment_label"], seg["qc_roi_voxels"]) == (3, "Lesion", 118)
    assert seg["patient_key"] == PSEUDONYMIZE("C1", "PCAMPMRI-00001")  # from the DICOM PatientID
    assert seg["series_id"] in scan.series["series_id"].to_list()
    # a DICOM series' hash is the sha256 over its files' sorted sha256s
    import hashlib

    from dagster_project.lake import file_sha256

    files = sorted((landing / "imaging" / "C1" / "qin" / "ADC").iterdir())
    expected = hashlib.sha256("\n".join(sorted(file_sha256(f) for f in files)).encode()).hexdigest()
    assert seg["image_sha256"] == expected
    assert seg["mask_sha256"] == file_sha256(landing / "imaging" / "C1" / "qin" / "seg" / "1-1.dcm")
    assert_no_identifiers(result.cases, rejects=result.rejects)

    # locators keep the real paths apart; the extractor's loader reads from them
    state = write_locators(tmp_path / "state" / "case_locators.json", result.locators)
    assert read_locators(state) == result.locators
    assert (state.stat().st_mode & 0o777) == 0o600
    for task in case_tasks(landing, result.cases, result.locators):
        image, mask = load_case_task(task)
        values = sitk.GetArrayViewFromImage(mask)
        assert set(np.unique(values)) == {
            0,
            task["label"],
        }  # pass label=task["label"] to pyradiomics
        assert mask.GetOrigin() == image.GetOrigin() and mask.GetSpacing() == image.GetSpacing()

    again = load_cases(
        landing, scan.series, PSEUDONYMIZE, previous=result.cases, scan_files=scan.files
    )
    assert again.stats["reused"] == 2 and again.stats["checked"] == 0
    assert again.cases.equals(result.cases)


def test_prostate_edge_case_masks_are_rejected_with_distinct_rules(tmp_path):
    landing = tmp_path / "landing"
    land(landing, dicom("autoradiomics", "nifti", "prostate"), "C2", "prostate")
    write_cases(
        landing,
        "C2",
        """
Image,Mask,Label,patient_id
prostate/img.nii.gz,prostate/seg_one_label.nii.gz,,PR-1
prostate/img.nii.gz,prostate/seg_empty.nii.gz,,PR-1
prostate/img.nii.gz,prostate/seg_multilabel.nrrd,,PR-1
prostate/img.nii.gz,prostate/seg_single_slice.nii.gz,1,PR-1
prostate/img.nii.gz,prostate/seg_two_labels.nii.gz,3,PR-1
prostate/img.nii.gz,prostate/seg_two_labels.nii.gz,2,PR-1
prostate/img.nii.gz,prostate/seg_dilated_10mm.nii.gz,1,PR-1
""",
    )
    scan = scan_imaging(landing, PSEUDONYMIZE)
    assert scan.series.height == 1  # img.nii.gz; the masks named in cases.csv are not series
    result = load_cases(landing, scan.series, PSEUDONYMIZE)

    by_row = {r.record: r.rule for r in result.rejects}
    assert by_row == {
        "row 2": "empty_mask",
        "row 3": "multilabel_without_label",
        "row 4": "roi_too_small",
        "row 5": "label_absent",
    }
    assert len(set(by_row.values())) == 4
    reasons = {r.rule: r.reason for r in result.rejects}
    assert "labels present: 1, 2" in reasons["label_absent"]
    assert "1 slice" in reasons["roi_too_small"]
    assert all(
        "cases.csv row" in r.reason and r.source_path == "imaging/C2/cases.csv"
        for r in result.rejects
    )
    assert sorted(result.cases["label"].to_list()) == [1, 1, 2]
    assert (
        result.stats["landed"]
        == result.stats["ingested"] + result.stats["quarantined"] + result.stats["merged"]
    )

    # the single-slice mask passes when 3D features are not required
    relaxed = load_cases(landing, scan.series, PSEUDONYMIZE, require_3d=False)
    assert {r.rule for r in relaxed.rejects} == {
        "empty_mask",
        "multilabel_without_label",
        "label_absent",
    }


def test_paths_outside_landing_and_rtstruct_without_series_are_quarantined(tmp_path):
    landing = tmp_path / "landing"
    land(landing, dicom("autoradiomics", "nifti", "prostate", "img.nii.gz"), "C1", "img.nii.gz")
    land(
        landing,
        dicom("autoradiomics", "nifti", "prostate", "seg_one_label.nii.gz"),
        "C1",
        "seg.nii.gz",
    )
    land(landing, dicom("pydicom", "rtstruct.dcm"), "C1", "rtstruct.dcm")
    outside = tmp_path / "outside.nii.gz"
    shutil.copy2(dicom("autoradiomics", "nifti", "prostate", "seg_one_label.nii.gz"), outside)
    (landing / "imaging" / "C1" / "linked.nii.gz").symlink_to(outside)
    write_cases(
        landing,
        "C1",
        f"""
Image,Mask,Label,patient_id
img.nii.gz,{"../" * 12}etc/passwd,1,P1
{outside},seg.nii.gz,1,P1
img.nii.gz,linked.nii.gz,1,P1
img.nii.gz,rtstruct.dcm,1,P1
img.nii.gz,seg.nii.gz,1,P1
img.nii.gz,../../etc/passwd,1,P1
""",
    )
    scan = scan_imaging(landing, PSEUDONYMIZE)
    result = load_cases(landing, scan.series, PSEUDONYMIZE, scan_files=scan.files)

    by_row = {r.record: r.rule for r in result.rejects}
    assert by_row == {
        "row 1": "path_outside_landing",
        "row 2": "path_outside_landing",
        "row 3": "path_outside_landing",
        "row 4": "rtstruct_series_mismatch",  # an RTSTRUCT needs the DICOM series it was drawn on
        "row 6": "missing_file",  # ../../ from imaging/C1/ is landing/etc/passwd: inside, absent
    }
    assert result.cases.height == 1
    assert all(str(tmp_path) not in r.reason for r in result.rejects)  # no absolute path echoed
    assert {r.rule for r in scan.rejects} == {
        "path_outside_landing"
    }  # the link, seen by the scan too


def test_naming_convention_pairs_volumes_and_seg_references(tmp_path):
    landing = tmp_path / "landing"
    pyrad = shared_path("pyradiomics")
    land(landing, pyrad / "breast1_image.nrrd", "C3", "breast1_image.nrrd")
    land(landing, pyrad / "breast1_label.nrrd", "C3", "breast1_label.nrrd")
    land(
        landing, pyrad / "prostate_phantom_subvolume.nrrd", "C3", "prostate_phantom_subvolume.nrrd"
    )
    land(
        landing,
        pyrad / "prostate_phantom_subvolume-label.nrrd",
        "C3",
        "prostate_phantom_subvolume-label.nrrd",
    )
    land(landing, pyrad / "lung1_label.nrrd", "C3", "lung1_label.nrrd")  # no image beside it
    land(landing, dicom("autoradiomics", "QIN-PROSTATE-001", "ADC"), "C3", "qin", "ADC")
    land(landing, dicom("autoradiomics", "QIN-PROSTATE-001", "seg"), "C3", "qin", "seg")
    land(landing, dicom("pydicom", "rtstruct.dcm"), "C3", "rtstruct.dcm")
    scan = scan_imaging(landing, PSEUDONYMIZE)
    assert sorted(scan.series["file_format"].to_list()) == ["dicom", "nrrd", "nrrd"]
    result = load_cases(landing, scan.series, PSEUDONYMIZE, scan_files=scan.files)

    rules = {Path(r.source_path).name: r.rule for r in result.rejects}
    # by the convention the base name is the patient id, so it is replaced in stored paths
    assert rules == {
        f"{PSEUDONYMIZE('C3', 'lung1')}.nrrd": "mask_without_image",
        "rtstruct.dcm": "rtstruct_series_not_landed",  # pydicom's file references an unlanded CT
        # labels 1, 7, 8, 9 and no cases.csv to name one
        f"{PSEUDONYMIZE('C3', 'prostate_phantom_subvolume')}.nrrd": "multilabel_without_label",
    }
    volumes = result.cases.filter(pl.col("case_source") == "naming")
    assert volumes["patient_key"].to_list() == [PSEUDONYMIZE("C3", "breast1")]
    assert volumes["qc_roi_voxels"].to_list() == [
        143
    ]  # SimpleITK count of label 1 in breast1_label
    segments = result.cases.filter(pl.col("case_source") == "seg_reference")
    assert sorted(segments["segment_label"].to_list()) == sorted(
        ["Normal", "Peripheral zone of the prostate", "Lesion", "Prostate"]
    )
    assert segments["label"].sort().to_list() == [1, 2, 3, 4]


# --- mask QC ------------------------------------------------------------------------------------
def test_small_grid_offsets_are_resampled_and_large_ones_rejected():
    import SimpleITK as sitk

    prostate = dicom("autoradiomics", "nifti", "prostate")
    image = sitk.ReadImage(str(prostate / "img.nii.gz"))
    mask = sitk.ReadImage(str(prostate / "seg_one_label.nii.gz"))
    reference_voxels = int(sitk.GetArrayViewFromImage(mask).sum())

    exact = check_case(image, mask, 1)
    assert exact.ok and not exact.mask_resampled and exact.roi_voxels == reference_voxels

    nudged = sitk.Image(mask)
    nudged.SetOrigin(
        tuple(o + 0.2 * s for o, s in zip(mask.GetOrigin(), mask.GetSpacing(), strict=True))
    )
    small = check_case(image, nudged, 1)
    assert small.ok and small.mask_resampled and small.roi_voxels == reference_voxels
    assert small.max_shift_voxels == pytest.approx(0.2, abs=1e-6)

    moved = sitk.Image(mask)
    moved.SetOrigin(
        tuple(o + 2.0 * s for o, s in zip(mask.GetOrigin(), mask.GetSpacing(), strict=True))
    )
    large = check_case(image, moved, 1, case="case X")
    assert (
        large.rule == "geometry_mismatch"
        and "case X" in large.reason
        and "origin delta" in large.reason
    )

    cropped = mask[0:50, :, :]
    assert check_case(image, cropped, 1).rule == "geometry_mismatch"


def test_prepare_case_refuses_paths_leaving_landing(tmp_path):
    landing = tmp_path / "landing"
    land(landing, dicom("autoradiomics", "nifti", "prostate", "img.nii.gz"), "C1", "img.nii.gz")
    locator = layout.CaseLocator(
        case_id="0" * 32,
        center_id="C1",
        patient_key="1" * 32,
        image="imaging/C1/img.nii.gz",
        mask="../../outside.nii.gz",
        mask_source="nifti",
        label=1,
    )
    with pytest.raises(CaseRejected) as rejected:
        prepare_case(landing, locator)
    assert rejected.value.rule == "path_outside_landing"


def test_resolver_agrees_with_realpath_on_links_dots_and_missing_paths(tmp_path):
    """``layout.Resolver`` resolves a path from its parent folder's memoized real path; it must
    give what ``os.path.realpath`` gives (and the same inside/outside verdict) for every kind
    of path a cases.csv can name."""
    import os

    landing = tmp_path / "landing"
    center = landing / "imaging" / "C1"
    (center / "P1" / "CT").mkdir(parents=True)
    (center / "P1" / "CT" / "img.nii.gz").write_bytes(b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "img.nii.gz").write_bytes(b"x")
    (center / "away").symlink_to(outside)  # a folder link leaving landing/
    (center / "alias").symlink_to(center / "P1")  # a folder link staying inside
    (center / "P1" / "file_link.nii.gz").symlink_to(outside / "img.nii.gz")
    (center / "loop").symlink_to(center / "loop")  # a link loop
    root = os.path.realpath(landing)
    resolver = layout.Resolver(landing)
    base = str(center)
    for rel in [
        "P1/CT/img.nii.gz",
        "P1/CT/missing.nii.gz",
        "missing/deeper/x.nii",
        "away/img.nii.gz",
        "alias/CT/img.nii.gz",
        "P1/file_link.nii.gz",
        "P1/../P1/CT/./img.nii.gz",
        "P1/CT/../../away/img.nii.gz",
        "../../../outside/img.nii.gz",
        "P1/CT/",
        "loop/x.nii",
        str(outside / "img.nii.gz"),  # absolute
    ]:
        path = os.path.join(base, rel)
        try:
            real = os.path.realpath(path)
            expected = real if real == root or real.startswith(root + os.sep) else None
        except OSError:
            expected = None
        assert resolver.real(path) == expected, rel
        assert layout.Resolver(landing).real(path) == expected, rel  # fresh memo, same answer


def test_scan_survives_header_workers_that_fail(tmp_path, monkeypatch):
    """Worker processes that die (here: at once) cost time, never a file: their chunks are
    read in this process and the result equals a scan without workers."""
    from assets.imaging import header_worker

    landing = tmp_path / "landing"
    shutil.copytree(shared_path("dicom", "autoradiomics", "CT_head"), landing / "imaging/A/ct")
    here = scan_imaging(landing, PSEUDONYMIZE, workers=0)
    monkeypatch.setattr(header_worker, "_WORKER_MAIN", "import sys; sys.exit(3)")
    monkeypatch.setattr(header_worker.HeaderReader, "CHUNK", 8)  # chunks for the workers
    there = scan_imaging(landing, PSEUDONYMIZE, workers=2)
    assert there.stats["workers"] == 2 and there.stats["worker_failures"] == 2
    assert there.series.equals(here.series) and there.files.equals(here.files)
    assert there.stats["read"] == here.stats["read"] == 93
