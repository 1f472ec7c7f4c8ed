"""Imaging landing-zone layout shared by the series scan, the cases and the extractor's loader.

What lives here:
- the walk over ``landing/imaging/<center_id>/**`` (no symlink is followed; links are reported),
- path safety (``resolve_inside``): a path named in a landed file is only read when it resolves
  inside ``landing/`` after following ``..`` and symlinks,
- ``cases.csv`` parsing (pyradiomics batch convention, case-insensitive column names),
- the file-naming convention for centers without a ``cases.csv`` (see ``mask_base``),
- stable keyed ids (``series_id``, ``case_id``) and the ``Scrubber`` that replaces
  identifier-bearing path components by the patient_key before a path is stored.

Ids are keyed with the lake's pseudonymizer (HMAC with the lake secret): a SeriesInstanceUID is not
a patient identifier, but it can be looked up in the hospital PACS, and a landed path can carry a
patient name, so neither is stored raw nor as a plain (guessable) hash.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

IMAGING = "imaging"
CASES_CSV = "cases.csv"
VOLUME_SUFFIXES = {".nii.gz": "nifti", ".nii": "nifti", ".nrrd": "nrrd"}
DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}
# Naming convention: "<base><marker>.<ext>" is a mask of "<base>.<ext>" or "<base>_image.<ext>".
MASK_MARKERS = ("_mask", "-mask", "_label", "-label", "_labels", "_seg", "-seg", "_segmentation")
IMAGE_MARKERS = ("_image", "-image", "_img")

Pseudonymize = Callable[[str, object], str]


# --- names -----------------------------------------------------------------------------------
def volume_format(name: str) -> str | None:
    """'nifti' / 'nrrd' for a volume file name, else None."""
    lower = name.lower()
    for suffix, kind in VOLUME_SUFFIXES.items():
        if lower.endswith(suffix):
            return kind
    return None


def split_volume_name(name: str) -> tuple[str, str]:
    """('brain1_image', '.nrrd') for a volume file name; (name, '') otherwise."""
    lower = name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    return name, ""


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
                    (e for e in listing if not e.name.startswith(".")), key=lambda e: e.name
                )
        except OSError:  # unreadable folder: os.walk skips it too
            continue
        subfolders = []
        for entry in entries:
            link = entry.is_symlink()
            if not link and entry.is_dir(follow_symlinks=False):
                subfolders.append(entry.path)
                continue
            rel = entry.path[prefix:]
            parts = rel.split("/")
            yield LandedFile(entry.path, rel, parts[1] if len(parts) > 2 else None, link)
        stack.extend(reversed(subfolders))


def resolve_inside(landing: Path, path: Path) -> Path | None:
    """The real path when ``path`` resolves (``..``, symlinks) inside landing/, else None."""
    try:
        real = os.path.realpath(path)
        root = os.path.realpath(landing)
    except (OSError, RuntimeError, ValueError):  # symlink loops, NUL bytes
        return None
    inside = real == root or real.startswith(root.rstrip(os.sep) + os.sep)
    return Path(real) if inside else None


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


# --- ids -------------------------------------------------------------------------------------
def file_key(pseudonymize: Pseudonymize, center_id: str, rel: str) -> str:
    """Keyed digest of a landed file's path: how the scan index names a file without its path."""
    return pseudonymize(center_id, f"file\x1f{rel}")


def dicom_series_id(pseudonymize: Pseudonymize, center_id: str, series_uid: str) -> str:
    return pseudonymize(center_id, f"dicom-series\x1f{series_uid}")


def volume_series_id(pseudonymize: Pseudonymize, center_id: str, rel: str) -> str:
    return pseudonymize(center_id, f"volume\x1f{rel}")


def case_id_for(
    pseudonymize: Pseudonymize, center_id: str, image_rel: str, mask_rel: str, label: object
) -> str:
    label_text = "" if label is None else str(label)
    return pseudonymize(center_id, f"case\x1f{image_rel}\x1f{mask_rel}\x1f{label_text}")


# --- identifier scrubbing --------------------------------------------------------------------
_NON_ALNUM = re.compile(r"[^0-9a-z]")
_KEY_COMPONENT = re.compile(r"^(redacted|[0-9a-f]{32})(\.[A-Za-z0-9.]+)?$")
MIN_CONTAINED = 3  # identifiers shorter than this only match a whole path component


def normalize_token(text: str) -> str:
    return _NON_ALNUM.sub("", str(text).lower())


def identifier_tokens(*values: object) -> set[str]:
    """Normalized identifier strings to look for in paths.

    Each value whole (found anywhere inside a path component), and each part of a person name
    of 3+ characters as a ``w:`` word token (only equal to a whole word of a component: a given
    name such as 'Jun' must not wipe out 'junk.txt').
    """
    tokens: set[str] = set()
    for value in values:
        if value is None:
            continue
        text = str(value).strip()
        if not text:
            continue
        whole = normalize_token(text)
        if whole:
            tokens.add(whole)
        parts = [normalize_token(p) for p in re.split(r"[\^\s,]+", text)]  # PN: Family^Given^...
        if len(parts) > 1:
            tokens.update(f"w:{p}" for p in parts if len(p) >= MIN_CONTAINED)
    return tokens


def _words(component: str) -> list[str]:
    return [w for w in re.split(r"[^0-9a-z]+", component.lower()) if w]


class Scrubber:
    """Replaces path components that contain a known identifier by that patient's key.

    Tokens are kept as ``key_fn(token)``: the identity for identifiers in memory, or a keyed digest
    (``digest_fn``) so an incremental index can remember identifiers without storing them
    (``token_digests`` / ``add_digests``).
    """

    def __init__(self, key_fn: Callable[[str], str] | None = None):
        self._key = key_fn or (lambda token: token)
        self._plain = key_fn is None  # tokens kept as they are: search them directly
        self._contained: dict[str, str] = {}
        self._words: dict[str, str] = {}
        self._lengths: set[int] = set()
        self._cache: dict[str, str | None] = {}

    def __bool__(self) -> bool:
        return bool(self._contained or self._words)

    def add(self, tokens: Iterable[str], replacement: str) -> None:
        for token in tokens:
            if token.startswith("w:"):
                self._words.setdefault(self._key(token), replacement)
            elif token:
                self._contained.setdefault(self._key(token), replacement)
                self._lengths.add(len(token))
        self._cache.clear()

    def add_digests(self, entries: Iterable[str], replacement: str) -> None:
        """Entries from ``token_digests`` made with the same ``key_fn``."""
        for entry in entries:
            kind, _, key = entry.partition(":")
            if kind == "w":
                self._words.setdefault(key, replacement)
            elif kind.isdigit() and key:
                self._contained.setdefault(key, replacement)
                self._lengths.add(int(kind))
        self._cache.clear()

    def match(self, component: str) -> str | None:
        """The replacement for a path component that carries an identifier, else None."""
        if component in self._cache:
            return self._cache[component]
        found = None
        if self._words:
            found = next(
                (
                    self._words[k]
                    for k in map(self._key, (f"w:{w}" for w in _words(component)))
                    if k in self._words
                ),
                None,
            )
        norm = normalize_token(component)
        stem = normalize_token(split_volume_name(component)[0].rsplit(".", 1)[0])
        if self._plain and not found:  # a few plain tokens: substring search, longest first
            for token in sorted(self._contained, key=len, reverse=True):
                if token in (norm, stem) or len(token) >= MIN_CONTAINED and token in norm:
                    found = self._contained[token]
                    break
            self._cache[component] = found
            return found
        for length in sorted(self._lengths, reverse=True):
            if found:
                break
            if length < MIN_CONTAINED:
                candidates = {n for n in (norm, stem) if len(n) == length}
            else:
                candidates = {norm[i : i + length] for i in range(len(norm) - length + 1)}
            found = next(
                (self._contained[k] for k in map(self._key, candidates) if k in self._contained),
                None,
            )
        self._cache[component] = found
        return found

    def scrub(self, rel: str, keep: int = 2) -> str:
        """``rel`` (relative to landing/) with identifier components replaced; the first ``keep``
        components (``imaging/<center_id>``) are kept as they are."""
        parts = rel.split("/")
        out = parts[:keep]
        for index, part in enumerate(parts[keep:], start=keep):
            if _KEY_COMPONENT.match(part):  # already a patient_key: leave it
                out.append(part)
                continue
            replacement = self.match(part)
            if replacement is None:
                out.append(part)
            else:
                out.append(replacement + (_file_suffix(part) if index == len(parts) - 1 else ""))
        return "/".join(out)


def _file_suffix(name: str) -> str:
    """The extension to keep on a replaced file name ('.nii.gz', '.dcm'), '' if none."""
    volume = split_volume_name(name)[1]
    if volume:
        return volume
    suffix = Path(name).suffix
    return suffix if 1 < len(suffix) <= 6 and suffix[1:].isalpha() else ""


def digest_fn(pseudonymize: Pseudonymize) -> Callable[[str], str]:
    """Keyed digest of an identifier token (for remembering identifiers without storing them)."""
    return lambda token: pseudonymize("radlake", f"identifier\x1f{token}")[:24]


def token_digests(tokens: Iterable[str], digest: Callable[[str], str]) -> list[str]:
    """Storable form of identifier tokens: 'w:<digest>' for words, '<length>:<digest>' otherwise."""
    return sorted(
        f"w:{digest(t)}" if t.startswith("w:") else f"{len(t)}:{digest(t)}" for t in tokens
    )


def scrub_text(text: str | None, tokens: Iterable[str]) -> str | None:
    """A free-text header value (SeriesDescription) with any identifier token masked."""
    if text is None:
        return None
    out = text
    for token in sorted(tokens, key=len, reverse=True):
        word = token.startswith("w:")
        token = token.removeprefix("w:")
        if len(token) < MIN_CONTAINED or token not in normalize_token(out):
            continue
        pattern = r"[^0-9A-Za-z]*".join(re.escape(ch) for ch in token)
        if word:  # a name part only as a whole word ('Art' must not hit 'arterial')
            pattern = rf"(?<![0-9A-Za-z]){pattern}(?![0-9A-Za-z])"
        out = re.sub(pattern, "[redacted]", out, flags=re.IGNORECASE)
    return out


# --- where a case's files really are (private: kept in the lake's state, never in a table) ----
@dataclass(frozen=True)
class CaseLocator:
    """The real landing paths of one case. Paths may carry identifiers, so locators are saved
    only under ``lake.state_dir`` (0600), never in a lake table or the catalog."""

    case_id: str
    center_id: str
    patient_key: str
    image: str  # relative to landing/, posix: a volume file, a DICOM file or a DICOM series folder
    mask: str  # relative to landing/, posix: NIfTI/NRRD label map or DICOM SEG file
    mask_source: str  # nifti / nrrd / dicom_seg
    label: (
        int | str | None
    )  # label value, or DICOM SEG segment number (a segment label until resolved)
    series_uid: str | None = None  # which series of a DICOM folder is the image
    image_sha256: str | None = None
    mask_sha256: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict) -> CaseLocator:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})
