"""Mask QC before radiomics extraction, and the loader the extractor calls.

Rules (each a quarantine ``rule`` id; the reason names the case and the numbers):

- ``unreadable_image`` / ``unreadable_mask``: the file cannot be read (or is not a scalar volume).
- ``localizer``, ``secondary_capture``, ``dose_report``, ``derived_image``: the Image folder holds
  no series for a case; ``slice_gap``, ``gantry_tilt``: the series' geometry (``hospital``), unless
  the center's settings say ``resample`` (then ``image_note`` records the correction).
- ``pet_suv_missing_tag`` / ``pet_suv_unsupported``: a PET series that cannot be put in SUV
  (body weight); the reason names the tag (``assets/imaging/suv.py``). PET images are handed
  to pyradiomics in SUVbw; ``intensity_unit`` says so.
- RTSTRUCT masks (``rtstruct``): ``roi_absent``, ``roi_ambiguous``, ``rtstruct_series_mismatch``,
  ``contour_outside_image`` (see ``assets/imaging/rtstruct.py``).
- ``geometry_mismatch``: size, spacing, origin or direction of mask and image differ beyond
  ``tolerance`` (mm for spacing/origin, unitless for direction cosines). When size and direction
  agree and the grids are only offset/scaled so little that no voxel centre moves by half a voxel
  or more (``resample_tolerance``, in voxels), the mask is resampled onto the image grid
  (nearest neighbour) instead, and ``mask_resampled`` is recorded on the case.
- ``empty_mask``: no voxel is non-zero.
- ``multilabel_without_label``: several label values and the case gives no Label.
- ``label_absent``: the requested label is not in the mask (the reason lists those present).
- ``roi_too_small``: fewer than ``min_voxels`` voxels, or, when 3D features are configured
  (``require_3d``), an ROI that is one voxel thick along any axis (e.g. a single slice).

``prepare_case`` reads a case from its ``CaseLocator``, runs the QC and returns the image and a
mask on the image grid whose ROI has one value (1 by default), or raises ``CaseRejected``.
``load_case_task`` adapts it to the radiomics extractor's task dicts (see ``cases.case_tasks``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from assets.imaging.hospital import KEPT_OUT, check_geometry, read_regular
from assets.imaging.io import ImagingError, read_header, read_image, read_mask, series_members
from assets.imaging.layout import CaseLocator, resolve_inside, volume_format

DEFAULT_MIN_VOXELS = 2
DEFAULT_TOLERANCE = 1e-3
DEFAULT_RESAMPLE_TOLERANCE = (
    0.5  # voxels: below this a nearest-neighbour resample moves no ROI voxel
)
IMAGE_RULES = {
    "ambiguous_series",
    "pet_suv_missing_tag",
    "pet_suv_unsupported",
    "slice_gap",
    "gantry_tilt",
    "multiframe_without_geometry",
    *KEPT_OUT,
}
MASK_RULES = {
    "unreadable_mask",
    "roi_absent",
    "roi_ambiguous",
    "rtstruct_series_mismatch",
    "contour_outside_image",
    "empty_mask",
    "label_absent",
    "multilabel_without_label",
    "geometry_mismatch",
}


class CaseRejected(Exception):
    """A case that cannot be extracted; ``rule`` is the quarantine rule, ``reason`` the sentence."""

    def __init__(self, rule: str, reason: str):
        super().__init__(reason)
        self.rule = rule
        self.reason = reason


@dataclass
class QcResult:
    """Outcome of ``check_case``; ``mask`` is the ROI mask on the image grid when the case passes."""

    rule: str | None = None
    reason: str = ""
    label: int | None = None
    labels_present: list[int] = field(default_factory=list)
    roi_voxels: int = 0
    roi_slices: int = 0
    roi_extent: tuple[int, ...] = ()
    spacing_delta_mm: float = 0.0
    origin_delta_mm: float = 0.0
    direction_delta: float = 0.0
    max_shift_voxels: float = 0.0
    mask_resampled: bool = False
    mask: Any = None

    @property
    def ok(self) -> bool:
        return self.rule is None

    def qc_columns(self) -> dict[str, Any]:
        """The numbers the ``cases`` table keeps (``qc_*`` and ``mask_resampled``)."""
        return {
            "mask_resampled": self.mask_resampled,
            "qc_roi_voxels": self.roi_voxels,
            "qc_roi_slices": self.roi_slices,
            "qc_labels_present": list(self.labels_present),
            "qc_spacing_delta_mm": self.spacing_delta_mm,
            "qc_origin_delta_mm": self.origin_delta_mm,
            "qc_direction_delta": self.direction_delta,
            "qc_max_shift_voxels": self.max_shift_voxels,
        }


def _fmt(values) -> str:
    return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _max_abs(a, b) -> float:
    return (
        float(np.max(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float))))
        if len(a)
        else 0.0
    )


def _max_shift_voxels(image, mask) -> float:
    """Largest distance (in mask voxels) between an image corner voxel and the same point in the mask."""
    size = image.GetSize()
    worst = 0.0
    for corner in itertools.product(*[(0, n - 1) for n in size]):
        point = image.TransformIndexToPhysicalPoint([int(c) for c in corner])
        index = mask.TransformPhysicalPointToContinuousIndex(point)
        worst = max(worst, _max_abs(index, corner))
    return worst


def check_case(
    image,
    mask,
    label: int | None,
    *,
    min_voxels: int = DEFAULT_MIN_VOXELS,
    require_3d: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    resample_tolerance: float = DEFAULT_RESAMPLE_TOLERANCE,
    case: str = "this case",
    roi_value: int = 1,
) -> QcResult:
    """QC of one image/mask pair. ``label`` None means the case gave no Label."""
    import SimpleITK as sitk

    result = QcResult()

    def reject(rule: str, finding: str, todo: str) -> QcResult:
        result.rule = rule
        result.reason = f"{rule}: {case}: {finding} ({todo})"
        return result

    if image.GetDimension() != mask.GetDimension():
        return reject(
            "geometry_mismatch",
            f"image is {image.GetDimension()}D, mask is {mask.GetDimension()}D",
            "export the mask on the image grid",
        )
    result.spacing_delta_mm = _max_abs(image.GetSpacing(), mask.GetSpacing())
    result.origin_delta_mm = _max_abs(image.GetOrigin(), mask.GetOrigin())
    result.direction_delta = _max_abs(image.GetDirection(), mask.GetDirection())
    deltas = (
        f"spacing delta {result.spacing_delta_mm:.4g} mm, origin delta {result.origin_delta_mm:.4g} mm, "
        f"direction delta {result.direction_delta:.4g} (tolerance {tolerance:g})"
    )
    if image.GetSize() != mask.GetSize():
        return reject(
            "geometry_mismatch",
            f"mask size {_fmt(mask.GetSize())} differs from image size {_fmt(image.GetSize())}; {deltas}",
            "export the mask on the image grid",
        )
    if result.direction_delta > tolerance:
        return reject(
            "geometry_mismatch",
            f"mask orientation differs; {deltas}",
            "export the mask on the image grid",
        )
    aligned = mask
    if result.spacing_delta_mm > tolerance or result.origin_delta_mm > tolerance:
        result.max_shift_voxels = _max_shift_voxels(image, mask)
        if result.max_shift_voxels >= resample_tolerance:
            return reject(
                "geometry_mismatch",
                f"mask grid is shifted by up to {result.max_shift_voxels:.3g} voxels; {deltas}",
                "export the mask on the image grid",
            )
        # small offset: nearest neighbour onto the image grid keeps every ROI voxel where it was
        aligned = sitk.Resample(
            mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID()
        )
        result.mask_resampled = True

    values = sitk.GetArrayViewFromImage(aligned)
    if np.issubdtype(values.dtype, np.floating):
        if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
            return reject(
                "unreadable_mask",
                "mask has non-integer values",
                "store the mask as an integer label map",
            )
        values = values.astype(np.int64)
    present = _labels_present(values)
    result.labels_present = present
    if not present:
        return reject(
            "empty_mask",
            f"mask has no non-zero voxel ({values.size} voxels, all 0)",
            "segment the ROI or drop the case",
        )
    if label is None:
        if len(present) > 1:
            return reject(
                "multilabel_without_label",
                f"mask has {len(present)} labels ({', '.join(map(str, present))}) and the case gives no Label",
                "add a Label column to cases.csv",
            )
        label = present[0]
    result.label = int(label)
    if result.label not in present:
        return reject(
            "label_absent",
            f"label {result.label} is not in the mask; labels present: {', '.join(map(str, present))}",
            "fix the Label of this case",
        )
    roi = values == result.label
    result.roi_voxels = int(roi.sum())
    nonzero = np.nonzero(roi)  # array axes are (z, y, x)
    extent = tuple(int(ax.max() - ax.min() + 1) for ax in nonzero)
    result.roi_extent = extent
    result.roi_slices = int(np.unique(nonzero[0]).size) if roi.ndim == 3 else 1
    if result.roi_voxels < min_voxels:
        return reject(
            "roi_too_small",
            f"label {result.label} has {result.roi_voxels} voxel(s), fewer than {min_voxels}",
            "check the segmentation",
        )
    if require_3d and roi.ndim == 3 and min(extent) < 2:
        axis = "z" if extent[0] < 2 else ("y" if extent[1] < 2 else "x")
        return reject(
            "roi_too_small",
            f"label {result.label} ({result.roi_voxels} voxels in {result.roi_slices} slice(s)) is one voxel "
            f"thick along {axis} (extent z,y,x = {_fmt(extent)}), too thin for 3D features",
            "segment the whole lesion, or configure 2D features with force2D",
        )
    dtype = np.uint8 if 0 < roi_value < 256 else np.int32
    binary = sitk.GetImageFromArray(roi.astype(dtype) * dtype(roi_value))
    binary.CopyInformation(image)  # within tolerance: make the grid identical for pyradiomics
    result.mask = binary
    return result


def _labels_present(values: np.ndarray) -> list[int]:
    if values.size == 0:
        return []
    if np.issubdtype(values.dtype, np.integer) and values.min() >= 0 and values.max() < 1 << 16:
        counts = np.bincount(values.ravel())  # much faster than np.unique on big volumes
        return [int(v) for v in np.nonzero(counts)[0] if v != 0]
    return [int(v) for v in np.unique(values) if v != 0]


# --- the extractor's entry point --------------------------------------------------------------
@dataclass
class PreparedCase:
    """An image and its ROI mask (one value, on the image grid), ready for pyradiomics."""

    image: Any
    mask: Any
    info: dict[str, Any]


def case_name(case_id: str, where: str = "") -> str:
    """How reasons name a case: 'case 1a2b3c4d5e6f (cases.csv row 3)'."""
    return f"case {case_id[:12]}" + (f" ({where})" if where else "")


def prepare_case(
    landing: Path,
    locator: CaseLocator | Mapping[str, Any],
    *,
    min_voxels: int = DEFAULT_MIN_VOXELS,
    require_3d: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    resample_tolerance: float = DEFAULT_RESAMPLE_TOLERANCE,
    roi_value: int = 1,
    where: str = "",
) -> PreparedCase:
    """Read, QC and return one case, or raise ``CaseRejected(rule, reason)``.

    The returned mask has ``roi_value`` (default 1) inside the ROI and 0 elsewhere, on exactly the
    image's grid, so pass ``label=roi_value`` to pyradiomics.
    """
    if not isinstance(locator, CaseLocator):
        locator = CaseLocator.from_dict(dict(locator))
    name = case_name(locator.case_id, where)
    image_path = resolve_inside(landing, Path(landing) / locator.image)
    mask_path = resolve_inside(landing, Path(landing) / locator.mask)
    if image_path is None or mask_path is None:
        raise CaseRejected(
            "path_outside_landing",
            f"path_outside_landing: {name}: the {'image' if image_path is None else 'mask'} path resolves "
            "outside landing/ (refusing to read it; land the file and use a relative path)",
        )
    try:
        members = _dicom_members(image_path, locator.series_uid)
        files = [path for path, _ in members] if members else None
        fixes: list[str] = []
        if members and len(members) > 2:
            found, fixes = check_geometry(
                [h for _, h in members], locator.slice_gaps, locator.gantry_tilt
            )
        if fixes:
            image, note = read_regular(files, found, fixes)
        else:
            image, note = read_image(image_path, locator.series_uid, files), None
        image, intensity = _intensity_unit(image, members)
        intensity["image_note"] = note
    except ImagingError as exc:
        rule = exc.rule if exc.rule in IMAGE_RULES else "unreadable_image"
        raise CaseRejected(
            rule, f"{rule}: {name}: the image {exc.detail} (fix or re-export the image)"
        ) from exc
    requested = locator.label
    try:
        mask, info = read_mask(mask_path, image, requested, files, locator.series_uid)
    except ImagingError as exc:
        rule = exc.rule if exc.rule in MASK_RULES else "unreadable_mask"
        raise CaseRejected(rule, f"{rule}: {name}: the mask {exc.detail}") from exc
    if info.get("label_value") is not None:  # a DICOM SEG segment, already 0/1
        requested = info["label_value"]
    qc = check_case(
        image,
        mask,
        requested,
        min_voxels=min_voxels,
        require_3d=require_3d,
        tolerance=tolerance,
        resample_tolerance=resample_tolerance,
        case=name,
        roi_value=roi_value,
    )
    if not qc.ok:
        raise CaseRejected(qc.rule or "unreadable_mask", qc.reason)
    info = dict(info)
    info.update(intensity)
    info.update(qc.qc_columns())
    info["mask_resampled"] = bool(qc.mask_resampled or info.get("resampled"))
    info["label"] = info.get("segment_number", qc.label)
    info["pyradiomics_label"] = roi_value
    return PreparedCase(image=image, mask=qc.mask, info=info)


def _dicom_members(image: Path, series_uid: str | None) -> list[tuple[Path, Any]] | None:
    """The image's DICOM files and headers in slice order (None for a NIfTI/NRRD volume)."""
    if image.is_dir():
        return series_members(image, series_uid)[1]
    return None if volume_format(image.name) else [(image, None)]


def _intensity_unit(image, members: list[tuple[Path, Any]] | None) -> tuple[Any, dict[str, Any]]:
    """PET -> SUV (body weight) by ``suv``; the unit the image's values are in (HU for CT)."""
    if not members:
        return image, {"intensity_unit": None, "suv_factor": None}
    files = [path for path, _ in members]
    header = members[0][1] if members[0][1] is not None else read_header(files[0], ["Modality"])
    modality = str(header.get("Modality", "") or "").upper()
    if modality != "PT":
        return image, {"intensity_unit": "HU" if modality == "CT" else None, "suv_factor": None}
    import SimpleITK as sitk

    from assets.imaging.suv import SUV_UNIT, read_pet_headers, suv_factor

    factor = suv_factor(read_pet_headers(files))
    suv = sitk.Cast(image, sitk.sitkFloat64) * factor.factor
    return suv, {"intensity_unit": SUV_UNIT, "suv_factor": factor.factor}


def load_case_task(task: Mapping[str, Any], **qc: Any) -> tuple[Any, Any]:
    """Loader for the radiomics extractor: ``task`` from ``cases.case_tasks`` -> (image, mask).

    The mask's ROI value is ``task['label']``, so ``pyradiomics ... label=task['label']`` works as
    with a plain label map. Raises ``CaseRejected``. Picklable (module-level), for process pools.
    """
    landing = Path(task["landing"])
    locator = CaseLocator(
        case_id=str(task["case_id"]),
        center_id=str(task.get("center_id", "")),
        patient_key=str(task.get("patient_key", "")),
        image=_landing_relative(landing, task["image_path"]),
        mask=_landing_relative(landing, task["mask_path"]),
        mask_source=str(task.get("mask_source", "")),
        label=task.get("label"),
        series_uid=task.get("series_uid"),
        slice_gaps=str(task.get("slice_gaps") or "quarantine"),
        gantry_tilt=str(task.get("gantry_tilt") or "quarantine"),
    )
    prepared = prepare_case(landing, locator, roi_value=int(task.get("label") or 1), **qc)
    return prepared.image, prepared.mask


def _landing_relative(landing: Path, path: str | Path) -> str:
    # lexical only: prepare_case resolves it and refuses anything outside landing/
    path = Path(path)
    return (
        Path(os.path.relpath(path, landing)).as_posix() if path.is_absolute() else path.as_posix()
    )
