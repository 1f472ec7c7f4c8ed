"""The cases table: one image/mask pair (and label) per row, QC'd and ready for extraction.

Where cases come from, per center ``landing/imaging/<center_id>/``:

1. ``cases.csv`` (any file of that name inside the center; paths relative to it), in the
   pyradiomics batch convention: ``Image`` (a NIfTI/NRRD file, a DICOM file or a DICOM series
   folder), ``Mask`` (NIfTI/NRRD label map or DICOM SEG), optional ``Label`` (a label value; for a
   DICOM SEG a segment number or a segment label such as ``Lesion``), optional ``Segment`` (same,
   for SEG), ``patient_id``, ``study_id``, ``sequence``, ``phase``, ``modality``. An empty Label
   means "the mask's only label"; a mask with several labels then is ``multilabel_without_label``.
2. Without any cases.csv in a center, the file-naming convention:
   - a volume named ``<base>_mask|_label|-label|_labels|_seg|-seg|_segmentation.<ext>`` is the
     mask of the volume beside it named ``<base>.<ext>``, ``<base>_image.<ext>``,
     ``<base>-image.<ext>`` or ``<base>_img.<ext>`` (``P001_image.nii.gz`` + ``P001_mask.nii.gz``,
     ``lung1_image.nrrd`` + ``lung1_label.nrrd``, ``phantom.nrrd`` + ``phantom-label.nrrd``);
     with no such volume, of the one DICOM image series in the mask's folder or in exactly one of
     its sub-folders; the patient id is ``<base>`` (volume pairs) or the series' PatientID;
   - a DICOM SEG is paired with the series it references (ReferencedSeriesSequence), one case per
     segment (label = segment number);
   - an RTSTRUCT is paired with the series it references, with the center's default ROI
     (``rtstruct_roi`` in ``LAKE_HOME/centers.yaml``) or its only ROI.

RTSTRUCT masks (``assets/imaging/rtstruct.py``): ``Label`` names the ROI (number, name or regular
expression), else the center's ``rtstruct_roi``. A structure set that references an image series
other than the case's Image is quarantined as ``rtstruct_series_not_landed`` (that series is not
in landing/) or ``rtstruct_series_mismatch`` (it is, but the Image is another one).

Readers and lesions: cases.csv may carry ``reader`` and ``lesion``; they enter the ``case_id``
(two readers' masks of one image are two cases) and land in the columns of the same name.

Other cases.csv columns are not stored; those that identify a person (``dagster_project.phi``:
a name such as ``姓名`` or ``MRN``, or content such as phone numbers) are also removed from the
rows and reported, one quarantine entry per column (rule, count of values; never a value).

Path safety: an Image or Mask that resolves outside ``landing/`` (``..``, an absolute path, a
symlink) is quarantined as ``path_outside_landing`` and never opened.

QC (``mask_qc``) runs on every new or changed case; its numbers land in ``qc_*`` columns and
``mask_resampled``. Rejected cases go to quarantine with the rule and the numbers.

Paths and ids: ``case_id`` is keyed (pseudonymizer) over center + image path + mask path +
requested label. The table keeps only safe display paths (``image_ref``, ``mask_ref``: relative
to landing/, identifier-bearing components replaced by the patient_key). The real paths the
extractor needs are returned apart, as ``locators`` (case_id -> ``CaseLocator``); the Dagster layer
saves them with ``write_locators`` under ``lake.state_dir`` (private, 0600, not in the catalog).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from assets.imaging import layout
from assets.imaging.io import (
    ImagingError,
    folder_series,
    kept_out,
    mask_source_of,
    read_header,
    series_files,
    series_members,
    sop_kind,
)
from assets.imaging.layout import CaseLocator
from assets.imaging.mask_qc import (
    DEFAULT_MIN_VOXELS,
    DEFAULT_RESAMPLE_TOLERANCE,
    DEFAULT_TOLERANCE,
    IMAGE_RULES,
    CaseRejected,
    prepare_case,
)
from dagster_project.lake import HashCache, file_sha256, require_regular, write_file_atomic
from dagster_project.phi import screen_columns
from dagster_project.quarantine import Reject

if TYPE_CHECKING:
    from assets.imaging.settings import CenterImaging

TARGET = "cases"
# read only to scrub paths (folders named after the patient, birth date or accession number)
_IDENTIFYING_TAGS = ("PatientID", "PatientName", "PatientBirthDate", "AccessionNumber")
LOCATORS_FILE = "case_locators.json"  # where the Dagster layer keeps the locators (state_dir)

CASES_SCHEMA: dict[str, Any] = {
    "case_id": pl.String,
    "patient_key": pl.String,
    "center_id": pl.String,
    "series_id": pl.String,
    "mask_source": pl.String,
    "label": pl.Int64,
    "image_sha256": pl.String,
    "mask_sha256": pl.String,
    "image_ref": pl.String,
    "mask_ref": pl.String,
    "segment_label": pl.String,
    "phase": pl.String,
    "sequence": pl.String,
    "modality": pl.String,
    "study_key": pl.String,
    "case_source": pl.String,  # cases.csv / naming / seg_reference
    "cases_row": pl.Int64,
    "mask_resampled": pl.Boolean,
    "qc_roi_voxels": pl.Int64,
    "qc_roi_slices": pl.Int64,
    "qc_labels_present": pl.List(pl.Int64),
    "qc_spacing_delta_mm": pl.Float64,
    "qc_origin_delta_mm": pl.Float64,
    "qc_direction_delta": pl.Float64,
    "qc_max_shift_voxels": pl.Float64,
    "qc_settings": pl.String,
    "reader": pl.String,
    "lesion": pl.String,
    "roi_volume_ml": pl.Float64,  # qc_roi_voxels x voxel volume: the tumour volume
    "intensity_unit": pl.String,  # HU (CT), SUVbw (PET, converted from its own tags), else null
    "suv_factor": pl.Float64,  # PET: stored values x suv_factor = SUVbw
    "image_note": pl.String,  # a correction of the image's geometry (slice gaps, gantry tilt)
}
_QC_REUSED = [
    c
    for c in CASES_SCHEMA
    if c.startswith("qc_")
    or c
    in (
        "mask_resampled",
        "label",
        "segment_label",
        "roi_volume_ml",
        "intensity_unit",
        "suv_factor",
        "image_note",
    )
]


@dataclass
class CasesResult:
    """``cases`` table, ``rejects``, ``stats`` and the private ``locators`` (real paths).

    Unpacks like every pure ingest: ``cases, rejects, stats = load_cases(...)``.
    """

    cases: pl.DataFrame
    rejects: list[Reject]
    stats: dict[str, Any]
    locators: dict[str, CaseLocator] = field(default_factory=dict)

    def __iter__(self):
        return iter((self.cases, self.rejects, self.stats))


@dataclass
class _Candidate:
    """One image/mask pair before checks; paths are as written (unsafe until resolved)."""

    center_id: str
    source: str  # cases.csv / naming / seg_reference
    where: str  # for reasons: "cases.csv row 3", "naming convention"
    origin: Path  # the cases.csv, or the mask file (for source_path of rejects)
    image: Path | None
    mask: Path | None
    label: str | None = None
    row: int | None = None
    patient_id: str | None = None
    study_id: str | None = None
    sequence: str | None = None
    phase: str | None = None
    modality: str | None = None
    series_uid: str | None = None
    reader: str | None = None
    lesion: str | None = None
    kept_out: list[tuple[str, str, str]] = field(default_factory=list)  # (series key, rule, detail)
    tokens: set[str] = field(default_factory=set)  # identifiers found on the way (for reject paths)


class _Skip(Exception):
    """A candidate that becomes a Reject (rule, detail)."""

    def __init__(self, rule: str, detail: str, todo: str = ""):
        super().__init__(detail)
        self.rule, self.detail, self.todo = rule, detail, todo


def load_cases(
    landing: Path,
    series_df: pl.DataFrame | None,
    pseudonymize: layout.Pseudonymize,
    *,
    previous: pl.DataFrame | None = None,
    scan_files: pl.DataFrame | None = None,
    min_voxels: int = DEFAULT_MIN_VOXELS,
    require_3d: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    resample_tolerance: float = DEFAULT_RESAMPLE_TOLERANCE,
    hashes: HashCache | None = None,
    center_settings: dict[str, CenterImaging] | None = None,
) -> CasesResult:
    """Cases of every center (see the module doc).

    ``previous`` (the last cases table) lets unchanged cases (same case_id, image and mask
    hashes, QC settings) skip the pixel QC. ``scan_files`` (``ScanResult.files``) tells which
    files are DICOM SEG / RTSTRUCT without reading their headers again. ``hashes`` (loaded by the
    caller, saved after) gives the sha256 of unchanged image and mask files without reading them
    again; without it every file is hashed. ``center_settings`` (``settings.load_imaging_settings``)
    gives each center's default RTSTRUCT ROI.
    """
    landing = Path(landing)
    qc = {
        "min_voxels": min_voxels,
        "require_3d": require_3d,
        "tolerance": tolerance,
        "resample_tolerance": resample_tolerance,
    }
    qc_settings = ";".join(f"{k}={v}" for k, v in qc.items())
    before = _previous(previous, qc_settings)
    series_paths = _series_paths(series_df)
    kinds = _Kinds(pseudonymize, scan_files)
    hash_file = hashes.sha256 if hashes is not None else file_sha256
    rows: list[dict[str, Any]] = []
    rejects: list[Reject] = []
    locators: dict[str, CaseLocator] = {}
    stats: dict[str, int] = defaultdict(int)

    from assets.imaging.settings import DEFAULT as DEFAULT_CENTER

    center_settings = center_settings or {}
    reported: set[str] = set()  # kept-out series already in quarantine
    for center_dir in layout.center_dirs(landing):
        candidates, early = _candidates(landing, center_dir, kinds)
        settings = center_settings.get(center_dir.name, DEFAULT_CENTER)
        # every patient id of this center, to scrub the paths of rejects that have none of their own
        center_scrubber = layout.Scrubber()
        for cand in candidates:
            if cand.patient_id or cand.study_id:
                center_scrubber.add(
                    layout.identifier_tokens(cand.patient_id, cand.study_id),
                    pseudonymize(center_dir.name, cand.patient_id)
                    if cand.patient_id
                    else "redacted",
                )
        for item in early:
            if item.patient_id:
                center_scrubber.add(
                    layout.identifier_tokens(item.patient_id),
                    pseudonymize(center_dir.name, item.patient_id),
                )
        for item in early:
            stats["landed"] += 1
            rejects.append(_reject(landing, item, center_scrubber, pseudonymize))
        for cand in candidates:
            stats["landed"] += 1
            try:
                row, locator, reused = _case(
                    landing,
                    cand,
                    pseudonymize,
                    series_paths,
                    before,
                    qc,
                    qc_settings,
                    hash_file,
                    settings,
                )
            except _Skip as skip:
                _report_kept_out(
                    landing, cand, reported, rejects, stats, pseudonymize, center_scrubber
                )
                item = _Early(
                    cand.origin,
                    skip.rule,
                    skip.detail,
                    skip.todo,
                    f"row {cand.row}" if cand.row else "",
                )
                item.patient_id, item.tokens = cand.patient_id, cand.tokens
                rejects.append(
                    _reject(landing, item, center_scrubber, pseudonymize, cand.center_id)
                )
                continue
            _report_kept_out(landing, cand, reported, rejects, stats, pseudonymize, center_scrubber)
            if row["case_id"] in locators:
                stats["merged"] += 1  # the same image/mask/label listed twice
                continue
            stats["reused" if reused else "checked"] += 1
            rows.append(row)
            locators[row["case_id"]] = locator

    stats["ingested"] = len(rows)
    stats["quarantined"] = len(rejects)
    for name in ("landed", "ingested", "quarantined", "merged", "checked", "reused"):
        stats.setdefault(name, 0)
    cases = pl.DataFrame(rows, schema=CASES_SCHEMA).sort(["center_id", "case_id"])
    return CasesResult(cases=cases, rejects=rejects, stats=dict(stats), locators=locators)


@dataclass
class _Early:
    """A reject found while pairing files (bad csv, orphan mask, RTSTRUCT, ...)."""

    origin: Path
    rule: str
    detail: str
    todo: str = ""
    record: str = ""
    patient_id: str | None = None
    tokens: set[str] = field(default_factory=set)


class _Kinds:
    """DICOM kind (image / seg / rtstruct / ...) of a landed file: from the scan index when given,
    else by reading the header."""

    def __init__(self, pseudonymize: layout.Pseudonymize, scan_files: pl.DataFrame | None):
        self._pseudonymize = pseudonymize
        self._known: dict[str, str] = {}
        if scan_files is not None and not scan_files.is_empty():
            self._known = dict(scan_files.select("path_key", "kind").iter_rows())

    def __call__(self, landed: layout.LandedFile) -> str | None:
        if self._known:
            kind = self._known.get(
                layout.file_key(self._pseudonymize, landed.center_id or "", landed.rel)
            )
            if kind is not None:
                return kind
        return _dicom_kind(landed.path)


# --- candidates ------------------------------------------------------------------------------
def _candidates(
    landing: Path, center_dir: Path, kinds: _Kinds
) -> tuple[list[_Candidate], list[_Early]]:
    """Candidates of one center, and rejects found before any pairing (bad csv, orphans)."""
    center = center_dir.name
    csvs = layout.cases_csv_files(center_dir)
    if not csvs:
        return _convention_candidates(landing, center_dir, kinds)
    candidates: list[_Candidate] = []
    early: list[_Early] = []
    referenced: set[Path] = set()
    for csv_path in csvs:
        rows, problem = layout.read_cases_csv(csv_path)
        if problem:
            early.append(
                _Early(csv_path, "bad_cases_csv", f"cases.csv {problem}", "fix the header")
            )
            continue
        early.extend(_identifier_columns(csv_path, rows))
        for row in rows:
            for raw in (row.image, row.mask):
                resolved = layout.resolve_inside(landing, csv_path.parent / raw) if raw else None
                if resolved is not None:
                    referenced.add(resolved)
            candidates.append(
                _Candidate(
                    center_id=center,
                    source="cases.csv",
                    where=f"cases.csv row {row.row}",
                    origin=csv_path,
                    image=_as_path(csv_path, row.image),
                    mask=_as_path(csv_path, row.mask),
                    label=row.label if row.label is not None else row.segment,
                    row=row.row,
                    patient_id=row.patient_id,
                    study_id=row.study_id,
                    sequence=row.sequence,
                    phase=row.phase,
                    modality=row.modality,
                    reader=row.reader,
                    lesion=row.lesion,
                )
            )
    for path, kind in _mask_like_files(landing, center_dir, kinds):
        if Path(os.path.realpath(path)) not in referenced:
            early.append(
                _Early(
                    path,
                    "unreferenced_mask",
                    f"is a {kind} that no cases.csv row uses",
                    "add a row to cases.csv or remove it",
                    patient_id=layout.mask_base(path.name),
                )
            )
    return candidates, early


def _identifier_columns(csv_path: Path, rows: list[layout.CasesRow]) -> list[_Early]:
    """Extra cases.csv columns that identify a person (``dagster_project.phi``): removed from every
    row, so nothing downstream can store them, and reported, one quarantine entry per column."""
    names = list(dict.fromkeys(name for row in rows for name in row.extra))
    values = {name: [row.extra[name] for row in rows if name in row.extra] for name in names}
    found = []
    for finding in screen_columns(values, free_text_ok=names):  # extra text is never stored
        for row in rows:
            row.extra.pop(finding.column, None)
        found.append(
            _Early(
                csv_path,
                finding.rule,
                f"cases.csv {finding.detail}",
                finding.todo,
                f"column {finding.column}",
            )
        )
    return found


def _as_path(csv_path: Path, raw: str | None) -> Path | None:
    if not raw:
        return None
    return csv_path.parent / raw  # absolute raw paths replace the base (then checked for safety)


def _mask_like_files(landing: Path, center_dir: Path, kinds: _Kinds) -> list[tuple[Path, str]]:
    """Volumes named like masks, DICOM SEG and RTSTRUCT files of a center."""
    found = []
    for landed in layout.walk_imaging(landing, center_dir.name):
        if landed.is_link or landed.path.name == layout.CASES_CSV:
            continue
        name = landed.path.name
        if layout.volume_format(name):
            if layout.mask_base(name):
                found.append((landed.path, "mask volume"))
            continue
        kind = kinds(landed)
        if kind == "seg":
            found.append((landed.path, "DICOM SEG"))
        elif kind == "rtstruct":
            found.append((landed.path, "DICOM RTSTRUCT"))
    return found


def _dicom_kind(path: Path) -> str | None:
    try:
        require_regular(path)  # a FIFO would block the read (the scan rejected it already)
        return sop_kind(read_header(path, ["SOPClassUID", "Rows", "Columns"]))
    except Exception:
        return None


def _convention_candidates(
    landing: Path, center_dir: Path, kinds: _Kinds
) -> tuple[list[_Candidate], list[_Early]]:
    center = center_dir.name
    files = [f for f in layout.walk_imaging(landing, center) if not f.is_link]
    volumes = [f.path for f in files if layout.volume_format(f.path.name)]
    candidates: list[_Candidate] = []
    early: list[_Early] = []
    image_series: dict[str, Path] | None = None  # SeriesInstanceUID -> folder, read on demand
    for path in volumes:
        base = layout.mask_base(path.name)
        if base is None:
            continue
        images = [
            v
            for v in volumes
            if v.parent == path.parent
            and layout.mask_base(v.name) is None
            and layout.image_base(v.name) == base
        ]
        if len(images) > 1:
            early.append(
                _Early(
                    path,
                    "ambiguous_image",
                    f"has {len(images)} image volumes beside it with the same base name",
                    "keep one, or write a cases.csv",
                    patient_id=base,
                )
            )
            continue
        image = images[0] if images else _single_series_folder(path.parent)
        if image is None:
            early.append(
                _Early(
                    path,
                    "mask_without_image",
                    "is named like a mask but no image volume or single DICOM series is beside it",
                    "land the image or write a cases.csv",
                    patient_id=base,
                )
            )
            continue
        patient = base if images else None  # beside a DICOM series: the series' PatientID
        candidates.append(
            _Candidate(center, "naming", "naming convention", path, image, path, patient_id=patient)
        )
    for landed in files:
        if layout.volume_format(landed.path.name) or landed.path.name == layout.CASES_CSV:
            continue
        kind = kinds(landed)
        if kind == "rtstruct":
            if image_series is None:
                image_series = _image_series_folders(files, kinds)
            candidates.extend(_rtstruct_candidates(center, landed.path, image_series, early))
        elif kind == "seg":
            if image_series is None:
                image_series = _image_series_folders(files, kinds)
            candidates.extend(_seg_candidates(center, landed.path, image_series, early))
    return candidates, early


def _single_series_folder(folder: Path) -> Path | None:
    """The one folder (``folder`` itself or one sub-folder) holding exactly one DICOM image series."""
    options = []
    for candidate in [
        folder,
        *sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()),
    ]:
        try:
            series_files(candidate)
        except ImagingError as exc:
            if exc.rule == "ambiguous_series":
                return None
            continue
        options.append(candidate)
    return options[0] if len(options) == 1 else None


def _image_series_folders(files: list[layout.LandedFile], kinds: _Kinds) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for landed in files:
        if layout.volume_format(landed.path.name) or kinds(landed) != "image":
            continue
        try:
            dataset = read_header(
                landed.path, ["SOPClassUID", "SeriesInstanceUID", "Rows", "Columns"]
            )
        except ImagingError:
            continue
        if sop_kind(dataset) == "image" and dataset.get("SeriesInstanceUID"):
            out.setdefault(str(dataset.SeriesInstanceUID), landed.path.parent)
    return out


def _seg_candidates(
    center: str, path: Path, image_series: dict[str, Path], early: list[_Early]
) -> list[_Candidate]:
    try:
        dataset = read_header(path, ["SOPClassUID", "ReferencedSeriesSequence", "SegmentSequence"])
        referenced = [
            str(item.SeriesInstanceUID) for item in dataset.get("ReferencedSeriesSequence", [])
        ]
        segments = sorted(int(item.SegmentNumber) for item in dataset.get("SegmentSequence", []))
    except Exception:
        early.append(
            _Early(
                path,
                "unreadable_mask",
                "is a DICOM SEG whose references cannot be read",
                "re-export it",
            )
        )
        return []
    found = [(uid, image_series[uid]) for uid in referenced if uid in image_series]
    if not found:
        early.append(
            _Early(
                path,
                "mask_without_image",
                "is a DICOM SEG whose referenced series is not landed in this center",
                "land the referenced series or write a cases.csv",
            )
        )
        return []
    uid, folder = found[0]
    return [
        _Candidate(
            center,
            "seg_reference",
            f"DICOM SEG segment {n}",
            path,
            folder,
            path,
            label=str(n),
            series_uid=uid,
        )
        for n in segments
    ]


def _rtstruct_candidates(
    center: str, path: Path, image_series: dict[str, Path], early: list[_Early]
) -> list[_Candidate]:
    from assets.imaging.rtstruct import read_structure_set

    try:
        referenced = read_structure_set(path).referenced_series
    except ImagingError:
        early.append(
            _Early(path, "unreadable_mask", "is an RTSTRUCT that cannot be read", "re-export it")
        )
        return []
    found = sorted((uid, image_series[uid]) for uid in referenced if uid in image_series)
    if not found:
        early.append(
            _Early(
                path,
                "rtstruct_series_not_landed",
                f"is an RTSTRUCT whose {len(referenced)} referenced image series "
                "is not landed in this center",
                "land the referenced series or write a cases.csv",
            )
        )
        return []
    uid, folder = found[0]
    return [
        _Candidate(center, "rtstruct_reference", "RTSTRUCT", path, folder, path, series_uid=uid)
    ]


# --- one case ----------------------------------------------------------------------------------
def _case(
    landing: Path,
    cand: _Candidate,
    pseudonymize: layout.Pseudonymize,
    series_paths: dict[str, str],
    before: dict[str, dict[str, Any]],
    qc: dict[str, Any],
    qc_settings: str,
    hash_file: Callable[[Path], str] = file_sha256,
    settings: CenterImaging | None = None,
) -> tuple[dict[str, Any], CaseLocator, bool]:
    if settings is None:
        from assets.imaging.settings import DEFAULT as settings
    if cand.image is None or cand.mask is None:
        missing = "Image" if cand.image is None else "Mask"
        raise _Skip(
            "bad_cases_row", f"{cand.where} has no {missing}", "fill in both Image and Mask"
        )
    image = layout.resolve_inside(landing, cand.image)
    mask = layout.resolve_inside(landing, cand.mask)
    if image is None or mask is None:
        column = "Image" if image is None else "Mask"
        raise _Skip(
            "path_outside_landing",
            f"{cand.where}: the {column} path resolves outside landing/ (via '..', an absolute path or a link); "
            "it was not opened",
            "land the file inside landing/imaging and write its path relative to cases.csv",
        )
    for path, column in ((image, "Image"), (mask, "Mask")):
        if not path.exists():
            raise _Skip(
                "missing_file",
                f"{cand.where}: the {column} file does not exist",
                "land it or fix the path",
            )
    image_rel = layout.relative_to_landing(landing, image)
    mask_rel = layout.relative_to_landing(landing, mask)

    try:
        mask_source = mask_source_of(mask) if mask.is_file() else None
    except ImagingError as exc:
        raise _Skip("unreadable_mask", f"{cand.where}: the mask {exc.detail}") from exc
    if mask_source is None:
        raise _Skip(
            "unreadable_mask",
            f"{cand.where}: the Mask is a folder, not a mask file",
            "point Mask at the file",
        )
    if mask_source == "rtstruct" and not (cand.label or "").strip() and settings.rtstruct_roi:
        cand.label = settings.rtstruct_roi  # the center's default ROI pattern (centers.yaml)
    label = _requested_label(cand, mask_source)

    image_files, series_uid, header = _image_files(image, cand.series_uid, cand.where, cand)
    patient_id = cand.patient_id or (_text(header.get("PatientID")) if header is not None else None)
    if not patient_id and layout.volume_format(image.name):
        patient_id = layout.image_base(image.name)
    tokens = layout.identifier_tokens(
        patient_id,
        cand.study_id,
        *(header.get(t) for t in _IDENTIFYING_TAGS if header is not None),
    )
    cand.tokens |= tokens
    if not patient_id:
        raise _Skip(
            "missing_patient_id",
            f"{cand.where}: no patient_id in cases.csv and none in the DICOM image",
            "add patient_id",
        )
    cand.patient_id = patient_id
    patient_key = pseudonymize(cand.center_id, patient_id)
    if mask_source == "rtstruct":
        _check_rtstruct_series(mask, series_uid, cand, pseudonymize, series_paths)
    case_id = layout.case_id_for(
        pseudonymize, cand.center_id, image_rel, mask_rel, _case_label_key(cand)
    )
    if series_uid:
        series_id = layout.dicom_series_id(pseudonymize, cand.center_id, series_uid)
    else:
        series_id = layout.volume_series_id(pseudonymize, cand.center_id, image_rel)

    series = series_paths.get(series_id) or {}
    image_sha = _combined_sha256(image_files, hash_file)
    mask_sha = hash_file(mask)
    scrubber = layout.Scrubber()
    scrubber.add(tokens, patient_key)
    locator = CaseLocator(
        case_id=case_id,
        center_id=cand.center_id,
        patient_key=patient_key,
        image=image_rel,
        mask=mask_rel,
        mask_source=mask_source,
        label=label if isinstance(label, int) else None,
        series_uid=series_uid,
        image_sha256=image_sha,
        mask_sha256=mask_sha,
        slice_gaps=settings.slice_gaps,
        gantry_tilt=settings.gantry_tilt,
    )
    if (settings.slice_gaps, settings.gantry_tilt) != ("quarantine", "quarantine"):
        qc_settings += f";slice_gaps={settings.slice_gaps};gantry_tilt={settings.gantry_tilt}"
    row: dict[str, Any] = {
        "case_id": case_id,
        "patient_key": patient_key,
        "center_id": cand.center_id,
        "series_id": series_id,
        "mask_source": mask_source,
        "image_sha256": image_sha,
        "mask_sha256": mask_sha,
        "image_ref": series.get("source_path") or scrubber.scrub(image_rel),
        "mask_ref": scrubber.scrub(mask_rel),
        "phase": cand.phase or series.get("phase"),
        "sequence": cand.sequence,
        "modality": cand.modality
        or series.get("modality")
        or (_text(header.get("Modality")) if header is not None else None),
        "study_key": pseudonymize(cand.center_id, f"study\x1f{cand.study_id}")
        if cand.study_id
        else None,
        "case_source": cand.source,
        "cases_row": cand.row,
        "qc_settings": qc_settings,
        "reader": cand.reader,
        "lesion": cand.lesion,
    }
    old = before.get(case_id)
    if old is not None and (old["image_sha256"], old["mask_sha256"], old["qc_settings"]) == (
        image_sha,
        mask_sha,
        qc_settings,
    ):
        row.update({k: old[k] for k in _QC_REUSED})
        locator = _with_label(locator, row["label"])
        return row, locator, True

    try:
        prepared = prepare_case(landing, _with_label(locator, label), where=cand.where, **qc)
    except CaseRejected as exc:
        raise _Skip(exc.rule, exc.reason) from exc
    info = prepared.info
    spacing = prepared.image.GetSpacing()
    row.update(
        label=int(info["label"]),
        segment_label=info.get("segment_label"),
        roi_volume_ml=info["qc_roi_voxels"] * float(np.prod(spacing)) / 1000.0,
        intensity_unit=info.get("intensity_unit"),
        image_note=info.get("image_note"),
        suv_factor=info.get("suv_factor"),
        **{
            k: info[k]
            for k in (
                "mask_resampled",
                *[c for c in CASES_SCHEMA if c.startswith("qc_") and c != "qc_settings"],
            )
        },
    )
    return row, _with_label(locator, row["label"]), False


def _with_label(locator: CaseLocator, label: Any) -> CaseLocator:
    data = locator.to_dict()
    data["label"] = label
    return CaseLocator.from_dict(data)


def _requested_label(cand: _Candidate, mask_source: str) -> int | str | None:
    """Label as int; for a DICOM SEG a segment number or a segment label string."""
    raw = (cand.label or "").strip()
    if not raw:
        return None
    if re.fullmatch(r"[0-9]+(\.0+)?", raw):
        return int(float(raw))
    if mask_source in ("dicom_seg", "rtstruct"):
        return raw
    raise _Skip(
        "invalid_label",
        f"{cand.where}: Label {raw[:40]!r} is not a whole number "
        "(names only select DICOM SEG segments and RTSTRUCT ROIs)",
        "write the label value",
    )


def _case_label_key(cand: _Candidate) -> str | None:
    """What, besides the image and mask paths, tells cases apart: the Label, and the reader and
    lesion when given (ids of cases without them are unchanged)."""
    if not cand.reader and not cand.lesion:
        return cand.label
    return f"{cand.label or ''}\x1freader={cand.reader or ''}\x1flesion={cand.lesion or ''}"


def _check_rtstruct_series(
    mask: Path,
    series_uid: str | None,
    cand: _Candidate,
    pseudonymize: layout.Pseudonymize,
    series_paths: dict[str, dict[str, Any]],
) -> None:
    """The structure set must reference the case's image series (when it names any)."""
    from assets.imaging.rtstruct import read_structure_set

    try:
        structure = read_structure_set(mask)
    except ImagingError as exc:
        raise _Skip("unreadable_mask", f"{cand.where}: the mask {exc.detail}") from exc
    referenced = structure.referenced_series
    if not referenced or series_uid is None or series_uid in referenced:
        return
    contours = sum(len(v) for v in structure.contours.values())
    ids = sorted(layout.dicom_series_id(pseudonymize, cand.center_id, u) for u in referenced)
    landed = [i for i in ids if i in series_paths]
    image_id = layout.dicom_series_id(pseudonymize, cand.center_id, series_uid)
    numbers = (
        f"{len(structure.rois)} ROIs, {contours} contours; referenced series "
        f"{', '.join(i[:12] for i in ids)}, the Image is series {image_id[:12]}"
    )
    if landed:
        raise _Skip(
            "rtstruct_series_mismatch",
            f"{cand.where}: the RTSTRUCT references another landed series than the Image ({numbers})",
            "point Image at the referenced series",
        )
    raise _Skip(
        "rtstruct_series_not_landed",
        f"{cand.where}: the RTSTRUCT references an image series that is not in landing/ ({numbers})",
        "land the referenced series",
    )


def _image_files(
    image: Path, series_uid: str | None, where: str, cand: _Candidate | None = None
) -> tuple[list[Path], str | None, Any]:
    """Files of the image, its SeriesInstanceUID (DICOM) and one DICOM header (or None).
    Series of the folder kept out of cases (localizers, ...) are noted on ``cand``."""
    if layout.volume_format(image.name) and image.is_file():
        return [image], None, None
    try:
        if image.is_dir():
            groups = folder_series(image)
            uid, members = series_members(image, series_uid, groups)
            if cand is not None:
                cand.kept_out = [
                    (f"{image}\x1f{other}", rule, f"{detail}; {len(groups[other])} file(s)")
                    for other, (rule, detail) in kept_out(groups).items()
                    if other != uid
                ]
            files = [path for path, _ in members]
        else:
            dataset = read_header(image)
            if sop_kind(dataset) != "image":
                raise ImagingError("unreadable_image", "is not a DICOM image")
            uid, files = _text(dataset.get("SeriesInstanceUID")), [image]
        header = read_header(files[0], [*_IDENTIFYING_TAGS, "Modality"])
    except ImagingError as exc:
        rule = exc.rule if exc.rule in IMAGE_RULES else "unreadable_image"
        raise _Skip(rule, f"{where}: the image {exc.detail}", "fix the Image path") from exc
    return files, uid, header


def _combined_sha256(files: list[Path], hash_file: Callable[[Path], str] = file_sha256) -> str:
    """sha256 of one file, or of the sorted per-file sha256s of a DICOM series."""
    if len(files) == 1 and layout.volume_format(files[0].name):
        return hash_file(files[0])
    digests = sorted(hash_file(f) for f in files)
    return hashlib.sha256("\n".join(digests).encode("ascii")).hexdigest()


def _text(value) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def _series_paths(series_df: pl.DataFrame | None) -> dict[str, dict[str, Any]]:
    """series_id -> the imaging_series row (its safe source_path, phase, modality)."""
    if series_df is None or series_df.is_empty() or "series_id" not in series_df.columns:
        return {}
    return {row["series_id"]: row for row in series_df.iter_rows(named=True)}


def _previous(previous: pl.DataFrame | None, qc_settings: str) -> dict[str, dict[str, Any]]:
    """Last run's rows by case_id (reused when hashes and QC settings, with the center's
    geometry settings, are unchanged: ``_case`` compares them)."""
    if previous is None or previous.is_empty() or not set(CASES_SCHEMA) <= set(previous.columns):
        return {}
    frame = previous.filter(pl.col("qc_settings").str.starts_with(qc_settings))
    return {row["case_id"]: row for row in frame.iter_rows(named=True)}


def _report_kept_out(
    landing: Path,
    cand: _Candidate,
    reported: set[str],
    rejects: list[Reject],
    stats: dict[str, int],
    pseudonymize: layout.Pseudonymize,
    center_scrubber: layout.Scrubber,
) -> None:
    """One quarantine row per series kept out of cases in a case's image folder (once each)."""
    for key, rule, detail in cand.kept_out:
        if key in reported:
            continue
        reported.add(key)
        stats["landed"] += 1
        folder = Path(key.split("\x1f")[0])
        item = _Early(folder, rule, f"{cand.where}: a series in the Image folder {detail}")
        item.patient_id, item.tokens = cand.patient_id, cand.tokens
        item.todo = "kept out of cases; nothing to do unless it is the image you meant"
        rejects.append(_reject(landing, item, center_scrubber, pseudonymize, cand.center_id))


def _reject(
    landing: Path,
    item: _Early,
    center_scrubber: layout.Scrubber,
    pseudonymize: layout.Pseudonymize,
    center_id: str | None = None,
) -> Reject:
    rel = Path(os.path.relpath(item.origin, landing)).as_posix()
    own = layout.Scrubber()
    if item.patient_id and center_id:
        key = pseudonymize(center_id, item.patient_id)
        own.add(layout.identifier_tokens(item.patient_id) | item.tokens, key)
    safe = center_scrubber.scrub(own.scrub(rel))
    if item.detail.startswith(f"{item.rule}: "):  # a reason from mask QC: already complete
        return Reject(safe, TARGET, item.rule, item.detail, item.record)
    where = (
        ""
        if item.detail.startswith(("cases.csv", "DICOM SEG", "RTSTRUCT", "naming"))
        else f"{safe} "
    )
    reason = f"{item.rule}: {where}{item.detail}" + (f" ({item.todo})" if item.todo else "")
    return Reject(safe, TARGET, item.rule, reason, item.record)


# --- hand-over to the extractor --------------------------------------------------------------
def write_locators(path: Path, locators: dict[str, CaseLocator]) -> Path:
    """Save locators as JSON (0600, atomic). They hold real landing paths: private state only."""
    payload = json.dumps({k: v.to_dict() for k, v in sorted(locators.items())}, indent=1)
    return write_file_atomic(Path(path), lambda handle: handle.write(payload.encode("utf-8")))


def read_locators(path: Path) -> dict[str, CaseLocator]:
    path = Path(path)
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {k: CaseLocator.from_dict(v) for k, v in data.items()}


def case_tasks(
    landing: Path, cases: pl.DataFrame, locators: dict[str, CaseLocator]
) -> list[dict[str, Any]]:
    """Task dicts for the radiomics extractor (one per case with a locator), to be loaded with
    ``mask_qc.load_case_task``: absolute paths, the label to pass to pyradiomics, the hashes."""
    landing = Path(landing).resolve()
    tasks = []
    for row in cases.iter_rows(named=True):
        locator = locators.get(row["case_id"])
        if locator is None:
            continue
        tasks.append(
            {
                "case_id": row["case_id"],
                "patient_key": row["patient_key"],
                "center_id": row["center_id"],
                "image_path": str(landing / locator.image),
                "mask_path": str(landing / locator.mask),
                "label": int(row["label"]),
                "image_sha256": row["image_sha256"],
                "mask_sha256": row["mask_sha256"],
                "mask_source": locator.mask_source,
                "series_uid": locator.series_uid,
                "intensity_unit": row.get("intensity_unit"),
                "roi_volume_ml": row.get("roi_volume_ml"),  # the extraction's cost estimate
                "slice_gaps": locator.slice_gaps,
                "gantry_tilt": locator.gantry_tilt,
                "landing": str(landing),
            }
        )
    return tasks


__all__ = [
    "CASES_SCHEMA",
    "LOCATORS_FILE",
    "CasesResult",
    "case_tasks",
    "load_cases",
    "read_locators",
    "write_locators",
]
