"""Reading images and masks: DICOM headers, DICOM series folders, NIfTI/NRRD volumes, DICOM SEG.

- ``read_header``: one DICOM file's header (``stop_before_pixels`` and only the tags the lake
  uses). Files without the 128-byte preamble + ``DICM`` (old implicit-VR files such as pydicom's
  ``rtstruct.dcm``) are retried with ``force=True`` and kept only when a SOP Class UID is found.
  Failures raise ``ImagingError`` with a rule: ``not_dicom`` (text or unknown binary),
  ``corrupt_dicom`` (a DICOM preamble, or a DICOM-like name, but no readable dataset; pydicom's
  ``no_meta.dcm`` is such a file: it starts with a stray byte, so no dataset can be recovered).
  A file without preamble is only parsed when it starts like a DICOM stream (group 0002 or 0008),
  so arbitrary bytes are never forced through the parser.
- ``read_image``: a volume file (SimpleITK), or a DICOM series folder: the folder's files are
  grouped by SeriesInstanceUID, non-image objects (SEG, RTSTRUCT, SR, ...) left out, slices ordered
  by ImagePositionPatient along the slice normal, then read with SimpleITK's ImageSeriesReader.
- ``read_mask``: a NIfTI/NRRD label map as it is, or one segment of a DICOM SEG (highdicom) as a
  binary (0/1) mask on the reference image grid: ``Segmentation.get_volume`` then
  ``Volume.match_geometry`` (exact: only flips, permutations, crop or pad), falling back to
  nearest-neighbour resampling (recorded as ``info["resampled"]``) when the grids differ.

Heavy libraries (SimpleITK, highdicom, pydicom) are imported inside the functions.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from assets.imaging.dicom_header import (  # noqa: F401  (re-exported: the readers' API)
    DICOMDIR_SOP_CLASS,
    HEADER_TAGS,
    RTSTRUCT_SOP_CLASS,
    SEG_SOP_CLASS,
    ImagingError,
    sop_kind,
)
from assets.imaging.layout import DICOM_SUFFIXES, volume_format

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# A DICOM stream without preamble starts with group 0002 (file meta) or 0008 (little endian).
_FIRST_GROUPS = {b"\x02\x00", b"\x08\x00"}


# --- DICOM headers ---------------------------------------------------------------------------
def read_header(path: Path, tags: Sequence[str] | None = None):
    """The header of one DICOM file (no pixel data), or ``ImagingError`` saying why not."""
    import pydicom

    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError as exc:
        raise ImagingError("unreadable_file", f"cannot be opened ({exc.strerror})") from exc
    has_preamble = head[128:132] == b"DICM"
    if not has_preamble and head[:2] not in _FIRST_GROUPS:
        raise _not_dicom(path, head)  # forcing a parse of arbitrary bytes can allocate gigabytes
    try:
        dataset = pydicom.dcmread(
            path,
            stop_before_pixels=True,
            specific_tags=_tag_numbers(tuple(tags or HEADER_TAGS)),
            force=not has_preamble,
            defer_size="512 KB",  # never load big values (e.g. private blobs) just to skip them
        )
        sop_class = str(dataset.get("SOPClassUID", "") or "")
        media_class = str(
            getattr(dataset, "file_meta", {}).get("MediaStorageSOPClassUID", "") or ""
        )
    except Exception as exc:  # pydicom raises many types on broken input
        if has_preamble:
            raise ImagingError(
                "corrupt_dicom",
                f"has a DICOM preamble but its header cannot be parsed ({type(exc).__name__})",
            ) from exc
        raise _not_dicom(path, head) from exc
    if not has_preamble and not _UID.match(sop_class) and not _UID.match(media_class):
        raise _not_dicom(path, head)  # force=True parses anything; no SOP class means no DICOM
    return dataset


@functools.cache
def _tag_numbers(keywords: tuple[str, ...]) -> list:
    from pydicom.tag import Tag

    return [Tag(k) for k in keywords]  # converting keywords on every read costs ~1 ms per file


def _not_dicom(path: Path, head: bytes) -> ImagingError:
    if _looks_like_text(head):
        return ImagingError("not_dicom", "is a text file, not DICOM, NIfTI or NRRD")
    if path.suffix.lower() in DICOM_SUFFIXES:
        return ImagingError(
            "corrupt_dicom",
            "is named like DICOM but has neither a DICOM preamble nor a readable DICOM dataset",
        )
    return ImagingError(
        "not_dicom", "is neither DICOM (no DICM preamble, no dataset) nor NIfTI/NRRD"
    )


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 4  # a multi-byte character cut at the end of the chunk
    return True


def slice_normal(orientation: Sequence[float] | None) -> tuple[float, float, float] | None:
    """Unit normal of the slice plane from ImageOrientationPatient (row x column cosines).
    Plain floats: called once per series, where numpy's call overhead (~0.1 ms) dominates."""
    if orientation is None or len(orientation) != 6:
        return None
    r0, r1, r2, c0, c1, c2 = (float(v) for v in orientation)
    n0, n1, n2 = r1 * c2 - r2 * c1, r2 * c0 - r0 * c2, r0 * c1 - r1 * c0
    norm = math.sqrt(n0 * n0 + n1 * n1 + n2 * n2)
    return (n0 / norm, n1 / norm, n2 / norm) if norm > 0 else None


def order_slices(
    positions: Sequence[Sequence[float] | None],
    orientations: Sequence[Sequence[float] | None],
    instance_numbers: Sequence[int | None],
) -> tuple[list[int], list[float | None]]:
    """Slice order (indices) by position along the normal; files without a position go last by
    InstanceNumber. Also returns each file's position along the normal (None when unknown)."""
    normal = next((n for n in (slice_normal(o) for o in orientations) if n is not None), None)
    along: list[float | None] = [None] * len(positions)
    if normal is not None:
        n0, n1, n2 = normal
        for i, p in enumerate(positions):
            if p is not None and len(p) == 3:
                along[i] = p[0] * n0 + p[1] * n1 + p[2] * n2
    big = float("inf")
    keys = [
        (a is None, 0.0 if a is None else a, big if number is None else number, i)
        for i, (a, number) in enumerate(zip(along, instance_numbers, strict=True))
    ]
    return sorted(range(len(positions)), key=keys.__getitem__), along


def _float_list(value) -> list[float] | None:
    if value is None:
        return None
    items = value if hasattr(value, "__iter__") and not isinstance(value, str | bytes) else [value]
    try:
        return [float(v) for v in items]
    except (TypeError, ValueError):
        return None


def series_files(folder: Path, series_uid: str | None = None) -> tuple[str, list[Path]]:
    """(SeriesInstanceUID, files ordered by slice position) of the image series in a folder.

    Only files directly in ``folder`` count. Localizers, secondary captures, dose screens and
    derived reformats are left out (``hospital.classify``); with several image series left and
    no ``series_uid`` the choice is ambiguous and ``ImagingError('ambiguous_series')`` is raised.
    """
    uid, members = series_members(folder, series_uid)
    return uid, [path for path, _ in members]


_SERIES_TAGS = (*HEADER_TAGS, "ImageType")


def folder_series(folder: Path) -> dict[str, list[tuple[Path, Any]]]:
    """Image series directly in ``folder``: SeriesInstanceUID -> [(file, header)], unordered."""
    groups: dict[str, list[tuple[Path, Any]]] = {}
    for path in sorted(
        p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".")
    ):
        try:
            dataset = read_header(path, _SERIES_TAGS)
        except ImagingError:
            continue  # stray non-DICOM files in a series folder are the scan's business
        if sop_kind(dataset) != "image":
            continue
        uid = str(dataset.get("SeriesInstanceUID", "") or "")
        if uid:
            groups.setdefault(uid, []).append((path, dataset))
    return groups


def kept_out(groups: dict[str, list[tuple[Path, Any]]]) -> dict[str, tuple[str, str]]:
    """SeriesInstanceUID -> (rule, detail) of the series of a folder that are no case image."""
    from assets.imaging.hospital import classify, derived_beside_original

    uids = list(groups)
    firsts = [groups[u][0][1] for u in uids]
    out = {}
    for uid, first, beside in zip(uids, firsts, derived_beside_original(firsts), strict=True):
        found = classify(first)
        if found is None and beside:
            found = ("derived_image", "is a DERIVED series beside the ORIGINAL series it came from")
        if found is not None:
            out[uid] = found
    return out


def series_members(
    folder: Path,
    series_uid: str | None = None,
    groups: dict[str, list[tuple[Path, Any]]] | None = None,
) -> tuple[str, list[tuple[Path, Any]]]:
    """(SeriesInstanceUID, [(file, header)] in slice order) of the folder's case image series
    (``groups``: ``folder_series(folder)`` when the caller has read it already)."""
    groups = folder_series(folder) if groups is None else groups
    if series_uid is not None:
        if series_uid not in groups:
            raise ImagingError(
                "unreadable_image", "the series named for this case is not in the folder"
            )
        chosen = series_uid
    else:
        out = kept_out(groups)
        images = [u for u in groups if u not in out]
        if not groups:
            raise ImagingError("unreadable_image", "the folder holds no DICOM image series")
        if not images:
            rule, detail = next(iter(out.values()))
            raise ImagingError(
                rule if len(out) == 1 else "unreadable_image",
                f"is a folder without an image series for a case: its only series {detail}"
                if len(out) == 1
                else f"is a folder without an image series for a case, only {len(out)} series "
                f"kept out ({', '.join(sorted({r for r, _ in out.values()}))})",
            )
        if len(images) > 1:
            listing = ", ".join(
                f"{groups[u][0][1].get('Modality', '?')} {len(groups[u])} files" for u in images
            )
            raise ImagingError(
                "ambiguous_series",
                f"the folder holds {len(images)} DICOM image series ({listing}); put each series "
                "in its own folder or name the series",
            )
        chosen = images[0]
    members = groups[chosen]
    order, _ = order_slices(
        [_float_list(d.get("ImagePositionPatient")) for _, d in members],
        [_float_list(d.get("ImageOrientationPatient")) for _, d in members],
        [_int_or_none(d.get("InstanceNumber")) for _, d in members],
    )
    return chosen, [members[i] for i in order]


def _int_or_none(value) -> int | None:
    try:
        return int(value) if value is not None and str(value).strip() != "" else None
    except (TypeError, ValueError):
        return None


# --- images ----------------------------------------------------------------------------------
def read_image(path: Path, series_uid: str | None = None, files: Sequence[Path] | None = None):
    """A ``SimpleITK.Image`` from a NIfTI/NRRD file, a DICOM file, or a DICOM series folder
    (``files``: the series' files in slice order, when the caller has listed them already)."""
    import SimpleITK as sitk

    path = Path(path)
    try:
        if path.is_dir():
            if files is None:
                _, files = series_files(path, series_uid)
            if len(files) == 1 and _frames(files[0]) > 1:
                return _read_multiframe(files[0])
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames([str(f) for f in files])
            image = reader.Execute()
        elif not volume_format(path.name) and _frames(path) > 1:
            return _read_multiframe(path)
        else:
            image = sitk.ReadImage(str(path))
    except ImagingError:
        raise
    except Exception as exc:  # SimpleITK raises RuntimeError with long ITK traces
        raise ImagingError("unreadable_image", f"cannot be read ({_short(exc)})") from exc
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImagingError(
            "unreadable_image",
            f"has {image.GetNumberOfComponentsPerPixel()} components per voxel; radiomics needs a scalar image",
        )
    return image


def _frames(path: Path) -> int:
    try:
        value = read_header(path, ["SOPClassUID", "NumberOfFrames"]).get("NumberOfFrames")
        return int(value) if value not in (None, "") else 1
    except (ImagingError, TypeError, ValueError):
        return 1


def _read_multiframe(path: Path):
    """An enhanced (or legacy converted) multi-frame CT/MR/PET file as a 3D image. highdicom
    places each frame by its own PlanePositionSequence (per-frame functional groups); a file
    whose frames have no positions has no geometry and is refused (SimpleITK would silently
    give it 1 mm spacing at the origin)."""
    import highdicom as hd
    import SimpleITK as sitk

    try:
        volume = hd.imread(str(path)).get_volume(dtype=np.float64)
    except Exception as exc:  # highdicom raises RuntimeError/ValueError on missing geometry
        raise ImagingError(
            "multiframe_without_geometry",
            f"is a multi-frame image whose frames cannot be placed in space ({_short(exc)})",
        ) from exc
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))  # (frame, row, column)
    image.SetOrigin(tuple(float(v) for v in volume.position))
    image.SetSpacing(tuple(float(v) for v in volume.spacing[::-1]))
    image.SetDirection(tuple(np.asarray(volume.direction)[:, ::-1].ravel().tolist()))
    return image


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    message = next((line for line in reversed(text) if line.strip()), type(exc).__name__)
    return message.strip()[:200]


# --- masks -----------------------------------------------------------------------------------
def mask_source_of(path: Path) -> str:
    """'nifti', 'nrrd', 'dicom_seg' or 'rtstruct' for a mask path (DICOM: by its SOP class)."""
    kind = volume_format(Path(path).name)
    if kind:
        return kind
    dataset = read_header(path)
    sop = sop_kind(dataset)
    if sop == "seg":
        return "dicom_seg"
    if sop == "rtstruct":
        return "rtstruct"
    raise ImagingError("unreadable_mask", f"is a DICOM object of kind {sop!r}, not a segmentation")


def read_mask(
    path: Path,
    reference,
    label: int | str | None = None,
    image_files: Sequence[Path] | None = None,
    series_uid: str | None = None,
) -> tuple[Any, dict]:
    """The mask of a case and what was done to read it.

    NIfTI/NRRD: the label map as stored (``label`` is checked later by mask QC).
    DICOM SEG: the chosen segment (``label`` = segment number or segment label; ``None`` when the
    SEG has one segment) as a 0/1 mask on ``reference``'s grid; ``info`` holds
    ``segment_number``, ``segment_label``, ``resampled`` and ``label_value`` (always 1).
    RTSTRUCT: the chosen ROI (``label`` = ROI number, name or pattern; see ``rtstruct``)
    rasterized by MIRP on the grid of ``image_files`` (the reference's DICOM files, in order),
    then placed on ``reference``; ``info`` as for a SEG, plus ``rtstruct_contours``.
    """
    import SimpleITK as sitk

    path = Path(path)
    source = mask_source_of(path)
    if source == "rtstruct":
        from assets.imaging import rtstruct

        if not image_files:
            raise ImagingError(
                "rtstruct_series_mismatch",
                "is a DICOM RTSTRUCT, and the case's Image is not a DICOM series to draw it on",
            )
        structure = rtstruct.read_structure_set(path)
        number = rtstruct.choose_roi(structure, label)
        rtstruct.check_references(structure, series_uid, None)
        return rtstruct.rasterize(path, list(image_files), reference, number, structure)
    if source == "dicom_seg":
        return _read_seg(path, reference, label)
    try:
        mask = sitk.ReadImage(str(path))
    except Exception as exc:
        raise ImagingError("unreadable_mask", f"cannot be read ({_short(exc)})") from exc
    if mask.GetNumberOfComponentsPerPixel() != 1:
        raise ImagingError(
            "unreadable_mask", f"has {mask.GetNumberOfComponentsPerPixel()} components per voxel"
        )
    return mask, {"mask_source": source, "resampled": False, "label_value": None}


def seg_segments(seg) -> dict[int, str]:
    return {
        int(item.SegmentNumber): str(item.get("SegmentLabel", "")) for item in seg.SegmentSequence
    }


def choose_segment(segments: dict[int, str], label: int | str | None) -> int:
    """Segment number for a Label/Segment value: a number, or a segment label (case-insensitive)."""
    listing = ", ".join(f"{n} {name!r}" for n, name in sorted(segments.items()))
    if label is None or (isinstance(label, str) and not label.strip()):
        if len(segments) == 1:
            return next(iter(segments))
        raise ImagingError(
            "multilabel_without_label",
            f"the DICOM SEG has {len(segments)} segments ({listing}) and the case names none; "
            "add a Label (segment number or label) to the case",
        )
    text = str(label).strip()
    if re.fullmatch(r"[0-9]+(\.0+)?", text):
        number = int(float(text))
        if number in segments:
            return number
    else:
        wanted = text.lower()
        matches = [n for n, name in segments.items() if name.strip().lower() == wanted]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ImagingError(
                "label_absent", f"segment label {text!r} names {len(matches)} segments ({listing})"
            )
    raise ImagingError(
        "label_absent", f"segment {text!r} is not in the DICOM SEG; it has {listing}"
    )


def _read_seg(path: Path, reference, label: int | str | None) -> tuple[Any, dict]:
    import highdicom as hd
    import SimpleITK as sitk

    try:
        seg = hd.seg.segread(str(path))
        segments = seg_segments(seg)
    except Exception as exc:
        raise ImagingError("unreadable_mask", f"DICOM SEG cannot be read ({_short(exc)})") from exc
    number = choose_segment(segments, label)
    try:
        volume = seg.get_volume(segment_numbers=[number], dtype=np.float32)
    except Exception as exc:
        raise ImagingError(
            "unreadable_mask",
            f"DICOM SEG segment {number} has no usable volume geometry ({_short(exc)})",
        ) from exc
    array = volume.array.reshape(volume.spatial_shape)  # drop the single segment channel
    # BINARY segments are 0/1; FRACTIONAL ones are rescaled to [0, 1]: keep voxels >= 0.5
    binary = volume.squeeze_channel().with_array((array >= 0.5).astype(np.uint8))
    voxels_in_seg = int(binary.array.sum())
    info: dict[str, Any] = {
        "mask_source": "dicom_seg",
        "segment_number": number,
        "segment_label": segments[number],
        "label_value": 1,
        "resampled": False,
        "seg_voxels": voxels_in_seg,
    }
    try:
        target = hd.Volume.from_simpleitk(reference, frame_of_reference_uid=seg.FrameOfReferenceUID)
        matched = binary.match_geometry(target, tol=1e-3)
        mask = sitk.Cast(matched.to_simpleitk(), sitk.sitkUInt8)
        mask.CopyInformation(reference)  # same grid within 1e-3: make it exact for pyradiomics
    except Exception:  # grids differ beyond flips/crops: resample onto the reference grid
        mask = sitk.Resample(
            binary.to_simpleitk(),
            reference,
            sitk.Transform(),
            sitk.sitkNearestNeighbor,
            0,
            sitk.sitkUInt8,
        )
        info["resampled"] = True
    if voxels_in_seg and not sitk.GetArrayViewFromImage(mask).any():
        raise ImagingError(
            "geometry_mismatch",
            f"DICOM SEG segment {number} ({voxels_in_seg} voxels) lies outside the image grid; "
            "check that the SEG references this image series",
        )
    return mask, info
