"""Imaging landing-zone layout shared by the series scan, the cases and the extractor's loader.

What lives here:
- the walk over ``landing/imaging/<center_id>/**`` (no symlink is followed; links are reported),
- path safety (``resolve_inside``): a path named in a landed file is only read when it resolves
  inside ``landing/`` after following ``..`` and symlinks,
- ``cases.csv`` parsing (pyradiomics batch convention, case-insensitive column names),
- the file-naming convention for centers without a ``cases.csv`` (see ``mask_base``),
- re-exported from ``identifiers``: stable keyed ids (``series_id``, ``case_id``) and the
  ``Scrubber`` that replaces identifier-bearing path components by the patient_key before a
  path is stored.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from assets.imaging.identifiers import (  # noqa: F401  (re-exported: layout's API)
    MIN_CONTAINED,
    VOLUME_SUFFIXES,
    Pseudonymize,
    Scrubber,
    case_id_for,
    dicom_series_id,
    digest_fn,
    file_key,
    identifier_tokens,
    normalize_token,
    scrub_text,
    split_volume_name,
    token_digests,
    volume_series_id,
)

IMAGING = "imaging"
CASES_CSV = "cases.csv"
DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}
# Naming convention: "<base><marker>.<ext>" is a mask of "<base>.<ext>" or "<base>_image.<ext>".
MASK_MARKERS = ("_mask", "-mask", "_label", "-label", "_labels", "_seg", "-seg", "_segmentation")
IMAGE_MARKERS = ("_image", "-image", "_img")


# --- names -----------------------------------------------------------------------------------
def volume_format(name: str) -> str | None:
    """'nifti' / 'nrrd' for a volume file name, else None."""
    lower = name.lower()
    for suffix, kind in VOLUME_SUFFIXES.items():
        if lower.endswith(suffix):
            return kind
    return None


def mask_base(name: str) -> str | None:
    """For a volume named like a mask ('P01_mask.nii.gz', 'lung1_label.nrrd'), its base ('P01')."""
    stem, suffix = split_volume_name(name)
    if not suffix:
        return None
    lower = stem.lower()
    for marker in MASK_MARKERS:
        if lower.endswith(marker) and len(stem) > len(marker):
            return stem[: -len(marker)]
    return None


def image_base(name: str) -> str:
    """Base of an image volume name: 'P01_image.nii.gz' -> 'P01', 'P01.nrrd' -> 'P01'."""
    stem, _ = split_volume_name(name)
    lower = stem.lower()
    for marker in IMAGE_MARKERS:
        if lower.endswith(marker) and len(stem) > len(marker):
            return stem[: -len(marker)]
    return stem


# --- walking and path safety -----------------------------------------------------------------
class LandedFile:
    """One entry under landing/imaging: a regular file, or a symlink (never followed).

    ``path`` (a Path) is made on first use: the scan walks tens of thousands of files and only
    needs the path string for most of them."""

    __slots__ = ("path_str", "rel", "center_id", "is_link", "_path")

    def __init__(self, path: str | Path, rel: str, center_id: str | None, is_link: bool):
        self.path_str = str(path)
        self.rel = rel  # relative to landing/, posix
        self.center_id = center_id  # None for a file directly under landing/imaging
        self.is_link = is_link
        self._path = path if isinstance(path, Path) else None

    @property
    def path(self) -> Path:
        if self._path is None:
            self._path = Path(self.path_str)
        return self._path

    def __repr__(self) -> str:
        return f"LandedFile({self.rel!r})"


def imaging_root(landing: Path) -> Path:
    return Path(landing) / IMAGING


def walk_imaging(landing: Path, center_id: str | None = None) -> Iterator[LandedFile]:
    """Every non-hidden file (and symlink) below landing/imaging (or one center's folder), sorted,
    without following links: per folder its files and linked folders by name, then its
    subfolders by name (``os.walk`` order)."""
    root = imaging_root(landing) / center_id if center_id else imaging_root(landing)
    if not root.is_dir() or (center_id and root.is_symlink()):
        return
    prefix = len(str(Path(landing))) + 1
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(
                    (e for e in listing if not e.name.startswith(".")), key=_entry_name
                )
        except OSError:  # unreadable folder: os.walk skips it too
            continue
        parts = folder[prefix:].split("/")  # imaging[/<center_id>[/...]]: the same for its files
        center = parts[1] if len(parts) > 1 else None
        subfolders = []
        for entry in entries:
            link = entry.is_symlink()
            if not link and entry.is_dir(follow_symlinks=False):
                subfolders.append(entry.path)
                continue
            path = entry.path
            yield LandedFile(path, path[prefix:], center, link)
        stack.extend(reversed(subfolders))


def _entry_name(entry: os.DirEntry) -> str:
    return entry.name


def resolve_inside(landing: Path, path: Path) -> Path | None:
    """The real path when ``path`` resolves (``..``, symlinks) inside landing/, else None."""
    real = Resolver(landing).real(path)
    return None if real is None else Path(real)


class Resolver:
    """``resolve_inside`` for many paths of one landing zone, as strings: each folder is
    resolved once (``os.path.realpath`` stats every component of every path it is given)."""

    def __init__(self, landing: Path | str):
        try:
            self.root = os.path.realpath(landing)
        except (OSError, RuntimeError, ValueError):
            self.root = None
        self._prefix = (self.root or "").rstrip(os.sep) + os.sep
        self._folders: dict[str, str | None] = {}

    def real(self, path: Path | str) -> str | None:
        """The real path of ``path`` if it is inside landing/, else None."""
        if self.root is None:
            return None
        try:
            real = self.folder(os.fspath(path))
        except (OSError, RuntimeError, ValueError):  # symlink loops, NUL bytes
            return None
        return real if real == self.root or real.startswith(self._prefix) else None

    def folder(self, path: str) -> str:
        """``os.path.realpath(path)``, from the memoized real path of its parent when its last
        component is a plain name and no link (one ``lstat`` instead of one per component)."""
        found = self._folders.get(path)
        if found is None:
            parent, _, name = path.rpartition(os.sep)
            if not parent or name in ("", ".", "..") or os.path.islink(path):
                found = os.path.realpath(path)
            else:
                found = os.path.join(self.folder(parent), name)
            if len(self._folders) < 1 << 20:
                self._folders[path] = found
        return found


def relative_to_landing(landing: Path, real: Path) -> str:
    return real.relative_to(Path(os.path.realpath(landing))).as_posix()


def center_dirs(landing: Path) -> list[Path]:
    root = imaging_root(landing)
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
    )


# --- cases.csv -------------------------------------------------------------------------------
_COLUMNS = {
    "image": "image",
    "mask": "mask",
    "label": "label",
    "segment": "segment",
    "patient_id": "patient_id",
    "patientid": "patient_id",
    "study_id": "study_id",
    "sequence": "sequence",
    "phase": "phase",
    "modality": "modality",
    "reader": "reader",
    "lesion": "lesion",
}


@dataclass
class CasesRow:
    """One data row of a cases.csv (raw strings; empty cells are None)."""

    csv_path: Path
    row: int  # 1-based data row number (the header is not counted)
    image: str | None
    mask: str | None
    label: str | None = None
    segment: str | None = None
    patient_id: str | None = None
    study_id: str | None = None
    sequence: str | None = None
    phase: str | None = None
    modality: str | None = None
    reader: str | None = None
    lesion: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def read_cases_csv(path: Path) -> tuple[list[CasesRow], str | None]:
    """Rows of one cases.csv, or ([], problem) when the file cannot be used at all."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            names = {h: _COLUMNS.get(h.strip().lower().replace(" ", "_")) for h in header}
            if "image" not in names.values() or "mask" not in names.values():
                return [], f"needs the columns Image and Mask, found {', '.join(header) or 'none'}"
            rows = []
            for number, raw in enumerate(reader, start=1):
                values: dict[str, str | None] = {}
                extra = {}
                for key, value in raw.items():
                    text = (value or "").strip() if isinstance(value, str) else ""
                    target = names.get(key) if key is not None else None
                    if target:
                        values[target] = text or None
                    elif key is not None and text:
                        extra[key] = text
                if not any(values.values()) and not extra:
                    continue  # blank line
                rows.append(CasesRow(path, number, extra=extra, **values))
            return rows, None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return [], f"cannot be read as CSV ({type(exc).__name__})"


def cases_csv_files(center_dir: Path) -> list[Path]:
    """Every cases.csv inside one center (paths in each are relative to that csv)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(center_dir, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if CASES_CSV in filenames and not Path(dirpath, CASES_CSV).is_symlink():
            found.append(Path(dirpath) / CASES_CSV)
    return sorted(found)


# --- where a case's files really are (private: kept in the lake's state, never in a table) ----
@dataclass(frozen=True)
class CaseLocator:
    """The real landing paths of one case. Paths may carry identifiers, so locators are saved
    only under ``lake.state_dir`` (0600), never in a lake table or the catalog."""

    case_id: str
    center_id: str
    patient_key: str
    image: str  # relative to landing/, posix: a volume file, a DICOM file or a DICOM series folder
    mask: str  # relative to landing/, posix: NIfTI/NRRD label map, DICOM SEG or RTSTRUCT file
    mask_source: str  # nifti / nrrd / dicom_seg / rtstruct
    label: (
        int | str | None
    )  # label value, or DICOM SEG segment number (a segment label until resolved)
    series_uid: str | None = None  # which series of a DICOM folder is the image
    image_sha256: str | None = None
    mask_sha256: str | None = None
    slice_gaps: str = "quarantine"  # or resample (the center's setting, centers.yaml)
    gantry_tilt: str = "quarantine"

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict) -> CaseLocator:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})
