"""What a hospital export holds beside the series a case needs, and geometry it must not hide.

Series in a case's image folder (``classify``), from the first file's header:

- ``localizer``: ImageType names LOCALIZER, SCOUT, SURVEY or TOPOGRAM (the planning views);
- ``secondary_capture``: a Secondary Capture SOP class (screenshots, exported views);
  ``dose_report`` when it is the scanner's dose screen (DOSE in ImageType or SeriesDescription);
- ``derived_image``: ImageType DERIVED with a reformat/projection term (MPR, MIP, MINIP, CPR,
  REFORMATTED, PROJECTION IMAGE, VOLUME RENDERING, ...), or DERIVED beside an ORIGINAL series of
  the same modality in the same folder;
- structured reports (dose SR), presentation states and other non-image objects are rejected by
  the header scan already (``imaging_series`` quarantine rows).

These series are kept out of cases; when one image series is left it is the case's image, so a
folder with several series is split. Each kept-out series is a quarantine row with its rule.

Geometry of the chosen series (``check_geometry``), from ImagePositionPatient and
ImageOrientationPatient of every slice:

- ``slice_gap``: slice positions along the normal not evenly spaced (a missing slice, or mixed
  spacing): the largest gap and the usual spacing in mm, and how many slices are missing;
- ``gantry_tilt``: the slices are stacked along a direction that is not the slice normal
  (a tilted gantry): the angle in degrees.

Each is quarantined, or, with ``resample`` in the center's settings (``centers.yaml``:
``slice_gaps``, ``gantry_tilt``), corrected by ``read_regular`` (linear interpolation onto a
regular grid) and the correction recorded in ``cases.image_note``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from assets.imaging.dicom_header import ImagingError

SC_PREFIX = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture and its multi-frame variants
LOCALIZER_TERMS = {"LOCALIZER", "SCOUT", "SURVEY", "TOPOGRAM"}
REFORMAT_TERMS = {
    "MPR",
    "MIP",
    "MINIP",
    "CPR",
    "CURVED",
    "REFORMATTED",
    "PROJECTION IMAGE",
    "VOLUME RENDERING",
    "VRT",
    "3D",
}
KEPT_OUT = ("localizer", "secondary_capture", "dose_report", "derived_image")
GAP_TOLERANCE = 0.1  # a step more than 10% off the usual spacing is a gap
TILT_TOLERANCE_DEG = 0.5


def _words(value: Any) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list | tuple) or hasattr(value, "__iter__") else [value]
    if isinstance(value, str):
        items = value.split("\\")
    return [str(v).strip().upper() for v in items]


def classify(header: Any) -> tuple[str, str] | None:
    """(rule, detail) for a series that is not a case image, None for an image series."""
    sop = str(header.get("SOPClassUID", "") or "")
    image_type = _words(header.get("ImageType"))
    described = str(header.get("SeriesDescription", "") or "").upper()
    shown = "\\".join(image_type) or "none"
    if sop.startswith(SC_PREFIX):
        if "DOSE" in shown or "DOSE" in described:
            return "dose_report", f"is a dose report (Secondary Capture, ImageType {shown})"
        return "secondary_capture", f"is a Secondary Capture (ImageType {shown})"
    if LOCALIZER_TERMS & set(image_type):
        return "localizer", f"is a localizer/scout (ImageType {shown})"
    if image_type[:1] == ["DERIVED"] and REFORMAT_TERMS & set(image_type):
        return "derived_image", f"is a derived reformat or projection (ImageType {shown})"
    return None


def derived_beside_original(headers: list[Any]) -> list[bool]:
    """For the first headers of a folder's series: True for DERIVED series next to an ORIGINAL
    series of the same modality (a reformat exported with its source)."""
    kinds = [(_words(h.get("ImageType"))[:1], str(h.get("Modality", "") or "")) for h in headers]
    originals = {m for t, m in kinds if t == ["ORIGINAL"]}
    return [t == ["DERIVED"] and m in originals for t, m in kinds]


@dataclass
class Geometry:
    """Slice geometry of one series (positions in slice order)."""

    normal: np.ndarray
    positions: np.ndarray  # (n, 3) ImagePositionPatient, in slice order
    along: np.ndarray  # positions along the normal
    spacing: float  # the usual (median) step, mm
    largest_step: float
    missing: int  # slices missing at the gaps (largest step / spacing - 1, summed)
    uneven: bool
    tilt_deg: float

    def gap_detail(self) -> str:
        index = int(np.argmax(np.diff(self.along))) if len(self.along) > 1 else 0
        return (
            f"slice positions are not evenly spaced: a gap of {self.largest_step:.3g} mm after slice "
            f"{index + 1} of {len(self.along)} where the spacing is {self.spacing:.3g} mm "
            f"({self.missing} slice(s) missing)"
        )

    def tilt_detail(self) -> str:
        return f"the slices are stacked {self.tilt_deg:.2f} degrees off their normal (gantry tilt)"


def geometry(headers: list[Any]) -> Geometry | None:
    """Geometry of a series from its headers in slice order (None: too few slices or no position)."""
    positions, orientation = [], None
    for h in headers:
        ipp, iop = h.get("ImagePositionPatient"), h.get("ImageOrientationPatient")
        if ipp is None or iop is None or len(ipp) != 3 or len(iop) != 6:
            return None
        positions.append([float(v) for v in ipp])
        orientation = orientation or [float(v) for v in iop]
    if len(positions) < 3 or orientation is None:
        return None
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = np.cross(row, col)
    norm = np.linalg.norm(normal)
    if norm == 0:
        return None
    normal = normal / norm
    points = np.asarray(positions)
    along = points @ normal
    steps = np.diff(along)
    spacing = float(np.median(steps))
    if spacing <= 0:
        return None
    largest = float(steps.max())
    uneven = bool(np.any(np.abs(steps - spacing) > GAP_TOLERANCE * spacing))
    missing = int(sum(max(0, round(s / spacing) - 1) for s in steps))
    stack = points[-1] - points[0]
    cosine = abs(float(stack @ normal)) / float(np.linalg.norm(stack))
    tilt = math.degrees(math.acos(min(1.0, cosine)))
    return Geometry(normal, points, along, spacing, largest, missing, uneven, tilt)


def check_geometry(
    headers: list[Any], slice_gaps: str = "quarantine", gantry_tilt: str = "quarantine"
) -> tuple[Geometry | None, list[str]]:
    """The series' geometry and what must be corrected (``slice_gap``, ``gantry_tilt``); raises
    ``ImagingError`` for a finding whose setting is ``quarantine``."""
    found = geometry(headers)
    fixes: list[str] = []
    if found is None:
        return None, fixes
    if found.tilt_deg > TILT_TOLERANCE_DEG:
        if gantry_tilt != "resample":
            raise ImagingError("gantry_tilt", found.tilt_detail())
        fixes.append("gantry_tilt")
    if found.uneven:
        if slice_gaps != "resample":
            raise ImagingError("slice_gap", found.gap_detail())
        fixes.append("slice_gap")
    return found, fixes


def read_regular(files: list[Path], found: Geometry, fixes: list[str]) -> tuple[Any, str]:
    """The series on a regular grid, and the note saying what was done.

    Each slice is placed at its own position: in-plane (de-shearing a tilted stack, linear
    interpolation) and along the normal (linear interpolation between the two nearest slices onto
    evenly spaced positions at the usual spacing). Direction = the slices' orientation."""
    import SimpleITK as sitk
    from scipy import ndimage

    slices = [sitk.ReadImage(str(f)) for f in files]
    first = slices[0]
    spacing_xy = first.GetSpacing()[:2]
    direction = np.asarray(first.GetDirection()).reshape(3, 3)
    row, col = direction[:, 0], direction[:, 1]
    stack = np.stack(
        [sitk.GetArrayFromImage(s).reshape(s.GetSize()[1], s.GetSize()[0]) for s in slices]
    )
    stack = stack.astype(np.float64)
    notes = []
    origin = found.positions[0]
    if "gantry_tilt" in fixes:
        for i in range(1, len(stack)):
            offset = found.positions[i] - origin
            shift = (float(offset @ col) / spacing_xy[1], float(offset @ row) / spacing_xy[0])
            # the slice's pixel (r, c) lies at the first slice's (r + dy, c + dx): move it there
            stack[i] = ndimage.shift(stack[i], shift, order=1, mode="nearest")
        notes.append(
            f"gantry tilt of {found.tilt_deg:.2f} degrees removed by shifting each slice in-plane"
        )
    along = found.along - found.along[0]
    spacing = found.spacing
    if "slice_gap" in fixes:
        count = int(round(along[-1] / spacing)) + 1
        targets = np.arange(count) * spacing
        upper = np.clip(np.searchsorted(along, targets, side="right"), 1, len(along) - 1)
        lower = upper - 1
        weight = ((targets - along[lower]) / (along[upper] - along[lower])).clip(0, 1)
        stack = stack[lower] * (1 - weight)[:, None, None] + stack[upper] * weight[:, None, None]
        notes.append(
            f"{found.missing} missing slice(s) (gap {found.largest_step:.3g} mm) interpolated onto "
            f"{count} slices at {spacing:.3g} mm"
        )
    image = sitk.GetImageFromArray(stack)
    image.SetSpacing((*spacing_xy, spacing))
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetDirection(tuple(np.column_stack([row, col, found.normal]).ravel().tolist()))
    return image, "; ".join(notes)
