"""DICOM RT structure sets (RTSTRUCT) as masks: choose the ROI, check it, rasterize it with MIRP.

Why MIRP (``mirp``, Zwanenburg et al., the IBSI reference implementation): its rasterizer casts
rays across each slice through the polygons of *all* contours of that slice at once and fills by
the even-odd rule, so holes (an inner contour) and several islands per slice come out right, and
it works in continuous voxel coordinates (no rounding of vertices to whole pixels as
rt-utils' ``cv2.fillPoly`` does). It is actively released, and it is what made the published IBSI
voxel masks of the soft-tissue-sarcoma set, which ``tests/test_rtstruct.py`` reproduces voxel for
voxel. platipy pins pydicom 2, highdicom reads SEG but does not rasterize contours.

Rules (quarantine ``rule`` ids; reasons name the ROIs and the numbers):

- ``roi_absent``: no ROI matches the case's Label (a name, case-insensitive, or a regular
  expression matched whole); the reason lists the ROI names the file has.
- ``roi_ambiguous``: several ROIs match, or the case names none and the file has several.
- ``rtstruct_series_mismatch``: the structure set references another image series (or frame of
  reference) than the case's Image.
- ``contour_outside_image``: contour points lie more than half a voxel outside the image.
- ``empty_mask``: the ROI has no contour, or its contours enclose no voxel centre.

Only ``pydicom`` and ``mirp`` are used, imported inside the functions.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from assets.imaging.dicom_header import ImagingError


@dataclass
class StructureSet:
    """What the lake needs from an RTSTRUCT header: ROI numbers and names, and its references."""

    rois: dict[int, str]
    referenced_series: set[str] = field(default_factory=set)
    frames_of_reference: set[str] = field(default_factory=set)
    contours: dict[int, list[np.ndarray]] = field(default_factory=dict)  # ROI -> (n, 3) mm points

    def listing(self) -> str:
        return ", ".join(f"{n} {name!r}" for n, name in sorted(self.rois.items())) or "none"


def read_structure_set(path: Path) -> StructureSet:
    """ROIs, references and contour points of one RTSTRUCT file."""
    import pydicom

    try:
        with _quiet():
            ds = pydicom.dcmread(str(path), force=True)
        rois = {
            int(item.ROINumber): str(item.get("ROIName", "") or "").strip()
            for item in ds.get("StructureSetROISequence", [])
        }
    except Exception as exc:
        raise ImagingError(
            "unreadable_mask", f"RTSTRUCT cannot be read ({type(exc).__name__})"
        ) from exc
    found = StructureSet(rois=rois)
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        if frame.get("FrameOfReferenceUID"):
            found.frames_of_reference.add(str(frame.FrameOfReferenceUID))
        for study in frame.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                if series.get("SeriesInstanceUID"):
                    found.referenced_series.add(str(series.SeriesInstanceUID))
    for roi in ds.get("ROIContourSequence", []):
        number = int(roi.get("ReferencedROINumber", -1))
        points = []
        for contour in roi.get("ContourSequence", []):
            data = contour.get("ContourData")
            if data is not None and len(data) >= 3:
                points.append(np.asarray(data, dtype=float).reshape(-1, 3))
        found.contours[number] = points
    return found


def choose_roi(structure: StructureSet, label: int | str | None) -> int:
    """ROI number for a Label: an ROI number, an ROI name (case-insensitive) or a regular
    expression matched against the whole name (case-insensitive)."""
    listing = structure.listing()
    rois = structure.rois
    if label is None or (isinstance(label, str) and not label.strip()):
        if len(rois) == 1:
            return next(iter(rois))
        raise ImagingError(
            "roi_ambiguous",
            f"has {len(rois)} ROIs ({listing}) and the case names none; "
            "write the ROI name (or a pattern) in Label, or a default in centers.yaml",
        )
    text = str(label).strip()
    if re.fullmatch(r"[0-9]+", text) and int(text) in rois:
        return int(text)
    exact = [n for n, name in rois.items() if name.lower() == text.lower()]
    if len(exact) == 1:
        return exact[0]
    try:
        pattern = re.compile(text, re.IGNORECASE)
    except re.error:
        pattern = None
    matches = exact or (
        [n for n, name in rois.items() if pattern.fullmatch(name)] if pattern else []
    )
    if len(matches) == 1:
        return matches[0]
    if matches:
        names = ", ".join(repr(rois[n]) for n in sorted(matches))
        raise ImagingError(
            "roi_ambiguous",
            f"has {len(matches)} ROIs matching {text!r} ({names}); its ROIs: {listing}",
        )
    raise ImagingError("roi_absent", f"has no ROI matching {text!r}; its ROIs: {listing}")


def check_references(
    structure: StructureSet, series_uid: str | None, frame_uid: str | None
) -> None:
    """Raise ``rtstruct_series_mismatch`` when the structure set names another series/frame."""
    if series_uid and structure.referenced_series and series_uid not in structure.referenced_series:
        raise ImagingError(
            "rtstruct_series_mismatch",
            f"references {len(structure.referenced_series)} other image series, not the case's Image",
        )
    if (
        frame_uid
        and structure.frames_of_reference
        and frame_uid not in structure.frames_of_reference
    ):
        raise ImagingError(
            "rtstruct_series_mismatch",
            "is in another frame of reference than the case's Image",
        )


def outside_points(points: list[np.ndarray], reference) -> tuple[int, int, float]:
    """(points outside, points in all, largest distance outside in mm) of contours against the
    image ``reference`` (SimpleITK): outside = more than half a voxel beyond the image's edge."""
    if not points:
        return 0, 0, 0.0
    allp = np.concatenate(points, axis=0)
    origin = np.asarray(reference.GetOrigin(), dtype=float)
    spacing = np.asarray(reference.GetSpacing(), dtype=float)
    direction = np.asarray(reference.GetDirection(), dtype=float).reshape(3, 3)
    size = np.asarray(reference.GetSize(), dtype=float)
    index = ((allp - origin) @ direction) / spacing  # continuous index (x, y, z)
    below = np.clip(-0.5 - index, 0, None)
    above = np.clip(index - (size - 0.5), 0, None)
    beyond = np.maximum(below, above) * spacing
    outside = beyond.max(axis=1) > 0
    return int(outside.sum()), len(allp), float(beyond.max()) if outside.any() else 0.0


def rasterize(
    path: Path, image_files: list[Path], reference, roi_number: int, structure: StructureSet
) -> tuple[Any, dict[str, Any]]:
    """The ROI as a 0/1 ``SimpleITK`` mask on ``reference``'s grid, and what was done.

    MIRP reads the image series' geometry (headers only) and rasterizes on it; the result is
    copied onto ``reference`` when the grids agree within 1e-3 mm, else resampled (nearest
    neighbour, ``resampled`` recorded)."""
    import SimpleITK as sitk

    name = structure.rois[roi_number]
    points = structure.contours.get(roi_number, [])
    if not points:
        raise ImagingError("empty_mask", f"ROI {roi_number} {name!r} has no contour")
    n_out, n_all, beyond_mm = outside_points(points, reference)
    if n_out:
        raise ImagingError(
            "contour_outside_image",
            f"ROI {name!r}: {n_out} of {n_all} contour points ({len(points)} contours) lie outside "
            f"the image, up to {beyond_mm:.1f} mm beyond its edge",
        )
    array, origin, spacing, direction = _mirp_mask(path, image_files, name)
    mask = sitk.GetImageFromArray(array.astype(np.uint8))
    mask.SetOrigin(origin)
    mask.SetSpacing(spacing)
    mask.SetDirection(direction)
    info: dict[str, Any] = {
        "mask_source": "rtstruct",
        "segment_number": roi_number,
        "segment_label": name,
        "label_value": 1,
        "resampled": False,
        "rtstruct_contours": len(points),
    }
    same = mask.GetSize() == reference.GetSize() and all(
        np.allclose(a, b, atol=1e-3)
        for a, b in (
            (mask.GetOrigin(), reference.GetOrigin()),
            (mask.GetSpacing(), reference.GetSpacing()),
            (mask.GetDirection(), reference.GetDirection()),
        )
    )
    if same:
        mask.CopyInformation(reference)
    else:
        mask = sitk.Resample(
            mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
        )
        info["resampled"] = True
    return mask, info


def _mirp_mask(path: Path, image_files: list[Path], roi_name: str):
    """MIRP's rasterization: (z, y, x) bool array and SimpleITK origin, spacing, direction."""
    import os
    import tempfile

    from mirp.data_import.import_image_and_mask import import_image_and_mask

    # MIRP stacks the slices of a folder (not of a list of files): give it a folder of links to
    # exactly this series' files, so other series or objects beside them never get in the way
    with _quiet(), tempfile.TemporaryDirectory(prefix="radlake-rtstruct-") as folder:
        for i, source in enumerate(image_files):
            os.symlink(os.path.abspath(source), os.path.join(folder, f"{i:06d}.dcm"))
        try:
            images = import_image_and_mask(image=folder, mask=str(path), roi_name=roi_name)
            image = images[0]
            masks = list(image.associated_masks or [])
            result = masks[0].to_object(image=image) if masks else None
        except Exception as exc:  # MIRP raises many types on unusual series
            why = f"it lacks the element {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ImagingError(
                "unreadable_mask", f"RTSTRUCT ROI {roi_name!r} cannot be rasterized ({why})"[:300]
            ) from exc
    if not result:
        raise ImagingError("empty_mask", f"ROI {roi_name!r} encloses no voxel centre of the image")
    roi = result[0].roi
    array = np.asarray(roi.get_voxel_grid(), dtype=bool)
    origin = tuple(float(v) for v in roi.image_origin[::-1])  # MIRP keeps (z, y, x)
    spacing = tuple(float(v) for v in roi.image_spacing[::-1])
    matrix = np.asarray(roi.image_orientation, dtype=float)[::-1, ::-1]
    return array, origin, spacing, tuple(matrix.ravel().tolist())


@contextlib.contextmanager
def _quiet():
    """MIRP and pydicom warn per slice about over-long values of clinical exports; keep the
    lake's log readable (the lake's own checks report what matters)."""
    loggers = [logging.getLogger(n) for n in ("pydicom", "mirp", "")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
