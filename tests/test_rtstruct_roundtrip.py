"""A real voxel mask turned into an RT structure set goes back to the same voxels through the lake.

autoradiomics' CT_head series (93 slices) and its NIfTI lesion mask: each slice's mask is traced
with scikit-image's marching squares (``measure.find_contours`` at 0.5: every island and every
hole becomes its own closed polygon, half-way between inside and outside voxel centres), written
as an RTSTRUCT with pydicom, landed beside the series and rasterized by the lake (MIRP). Voxel
centres are never on such a contour, so the lake must give back the original voxels exactly; the
stated tolerance is still 1% for contour edges.
"""

from __future__ import annotations

import hashlib
import hmac
import shutil

import numpy as np

from tests.conftest import shared_path


def _pseudonymize(center, value):
    return hmac.new(b"k", f"{center}\x1f{value}".encode(), hashlib.sha256).hexdigest()[:32]


def _image_ref(header):
    from pydicom.dataset import Dataset

    ref = Dataset()
    ref.ReferencedSOPClassUID = header.SOPClassUID
    ref.ReferencedSOPInstanceUID = header.SOPInstanceUID
    return ref


def _write_rtstruct(series_files, image, mask_array, target) -> tuple[int, int]:
    """RTSTRUCT of ``mask_array`` (z, y, x) on ``image``; returns (contours, slices with holes
    or several islands)."""
    import pydicom
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    from skimage import measure

    slices = [pydicom.dcmread(f, stop_before_pixels=True) for f in series_files]
    first = slices[0]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(target), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Modality = "RTSTRUCT"
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID"):
        setattr(ds, keyword, first.get(keyword, ""))
    frame_uid = first.get("FrameOfReferenceUID") or generate_uid()  # CT_head carries none
    ds.SeriesInstanceUID = generate_uid()
    ds.StructureSetLabel = "lesion"
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_uid
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = Sequence([_image_ref(s) for s in slices])  # Type 1
    study.RTReferencedSeriesSequence = Sequence([series])
    frame.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    roi = Dataset()
    roi.ROINumber, roi.ROIName = 1, "Lesion"
    roi.ReferencedFrameOfReferenceUID = frame_uid
    ds.StructureSetROISequence = Sequence([roi])
    contours, complex_slices = [], 0
    for z in range(mask_array.shape[0]):
        traced = measure.find_contours(np.pad(mask_array[z], 1).astype(float), 0.5)
        complex_slices += len(traced) > 1
        for polygon in traced:
            points = [
                image.TransformContinuousIndexToPhysicalPoint(
                    (float(c) - 1, float(r) - 1, float(z))
                )
                for r, c in polygon[:-1]  # find_contours closes the polygon by repeating a point
            ]
            item = Dataset()
            item.ContourImageSequence = Sequence([_image_ref(slices[z])])
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(points)
            item.ContourData = [f"{v:.6f}" for p in points for v in p]
            contours.append(item)
    roi_contour = Dataset()
    roi_contour.ReferencedROINumber = 1
    roi_contour.ContourSequence = Sequence(contours)
    ds.ROIContourSequence = Sequence([roi_contour])
    observation = Dataset()
    observation.ObservationNumber, observation.ReferencedROINumber = 1, 1
    observation.RTROIInterpretedType, observation.ROIInterpreter = "GTV", ""
    ds.RTROIObservationsSequence = Sequence([observation])
    ds.save_as(target, enforce_file_format=True)
    return len(contours), complex_slices


def test_nifti_mask_as_rtstruct_gives_back_the_same_voxels(tmp_path):
    import SimpleITK as sitk

    from assets.imaging.cases import load_cases
    from assets.imaging.dicom_scan import scan_imaging
    from assets.imaging.io import read_image, series_files

    auto = shared_path("dicom", "autoradiomics")
    landing = tmp_path / "landing"
    folder = landing / "imaging" / "C1" / "head"
    shutil.copytree(auto / "CT_head", folder / "CT")
    image = read_image(folder / "CT")
    nifti = sitk.ReadImage(str(auto / "nifti" / "CT_head_seg.nii.gz"))
    reference = sitk.GetArrayFromImage(nifti) > 0
    assert nifti.GetSize() == image.GetSize()
    _, files = series_files(folder / "CT")
    n_contours, complex_slices = _write_rtstruct(files, image, reference, folder / "RS.dcm")
    assert n_contours > reference.any(axis=(1, 2)).sum()  # several polygons on some slices
    (landing / "imaging" / "C1" / "cases.csv").write_text(
        "Image,Mask,Label,patient_id\nhead/CT,head/RS.dcm,lesion,P1\n"
    )
    scan = scan_imaging(landing, _pseudonymize)
    result = load_cases(landing, scan.series, _pseudonymize, scan_files=scan.files)
    assert not result.rejects, [str(r) for r in result.rejects]
    (row,) = result.cases.iter_rows(named=True)
    expected = int(reference.sum())
    assert abs(row["qc_roi_voxels"] - expected) <= 0.01 * expected
    assert row["qc_roi_voxels"] == expected  # observed: exact
    assert row["segment_label"] == "Lesion" and row["mask_source"] == "rtstruct"
    assert complex_slices > 0  # islands and holes were traced (observed: 483 contours, 85 slices)
