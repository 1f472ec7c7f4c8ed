"""The imaging_series table: scan landing/imaging/<center_id>/** for DICOM series and volumes.

What is a series:
- DICOM image files grouped by (center, SeriesInstanceUID); slices ordered by ImagePositionPatient
  along the slice normal. Headers are read up to (0028,0030) only, by ``dicom_header`` (a struct-
  level element walk; pydicom for the files it declines), in worker processes for large scans
  (``header_worker.HeaderReader``: one per core but one, from ``MIN_FILES_PER_WORKER`` new
  files on; this process walks, then reads chunks from the same queue).
- each NIfTI (.nii, .nii.gz) / NRRD (.nrrd) file, except masks: files named as Mask in a cases.csv
  and, anywhere, volumes named like masks (``*_mask``, ``*_label``, ``*-label``, ``*_seg``, ...; see
  ``layout.MASK_MARKERS``) unless a cases.csv names them as Image. Volume headers are read with
  SimpleITK's ``ImageFileReader.ReadImageInformation`` (no voxels loaded).
- cases.csv files, masks, DICOM SEG and RTSTRUCT objects are not series: they belong to cases
  (``cases.load_cases`` takes them, or quarantines them); they count as ``for_cases``.
- anything else (text, corrupt files, DICOMDIR indexes, SR, files outside a center folder,
  symlinks leaving landing/) is a ``Reject`` with a rule and reason.

Patient: a cases.csv ``patient_id`` for the image (the volume file or the series folder) wins;
else the DICOM PatientID; for volumes the file name (``P001_image.nii.gz`` -> ``P001``). A DICOM
series without any patient id is quarantined (``missing_patient_id``).

Ids and paths (no identifier leaves this module):
- ``series_id`` = pseudonymizer(center, "dicom-series" + SeriesInstanceUID) for DICOM and
  pseudonymizer(center, "volume" + path) for volumes: keyed (HMAC), stable within one lake.
- ``source_path``: relative to landing/; each path component containing the PatientID,
  PatientName (or a name part of 3+ characters), birth date, AccessionNumber or StudyID of that
  series, or the cases.csv patient_id / study_id, is replaced by the patient_key (file suffix
  kept). SeriesDescription and ProtocolName are masked the same way.

Incremental: the returned ``files`` frame is a per-file index without raw paths or identifiers
(``path_key`` is a keyed digest of the path; identifiers are kept as keyed digests so later runs
can still scrub the paths of rejected files). Pass it back as ``previous``: a file is read again
only when its size, mtime_ns or cases.csv patient id changed. The Dagster layer keeps it in
``lake.state_dir`` (it is not a lake table).

Stats (unit: files): ``files_seen`` = every file under landing/imaging (links included) =
``landed`` + ``for_cases`` (cases.csv, masks, SEG, RTSTRUCT: the cases' units); ``landed`` =
``ingested`` (in a series) + ``quarantined`` + ``merged`` (a SOP instance landed twice, or a
symlink to a file inside landing/ that is scanned at its target: ``links_inside``);
``read`` / ``reused`` count header reads vs index hits; ``series`` counts series; ``workers`` /
``worker_failures``: header-reading processes used, and failed (their files are read in-process).
"""

from __future__ import annotations

import gc
import itertools
import operator
import os
import re
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import Any

import polars as pl

from assets.imaging import layout
from assets.imaging.header_worker import (
    MIN_FILES_PER_WORKER,
    PART_COLUMNS,
    FileTask,
    HeaderReader,
)
from assets.imaging.io import ImagingError, order_slices
from dagster_project.quarantine import Reject

TARGET = "imaging_series"
INDEX_FILE = (
    "imaging_files.parquet"  # where the Dagster layer keeps ``ScanResult.files`` (state_dir)
)

SERIES_SCHEMA: dict[str, Any] = {
    "series_id": pl.String,
    "patient_key": pl.String,
    "center_id": pl.String,
    "modality": pl.String,
    "manufacturer": pl.String,
    "slice_thickness_mm": pl.Float64,
    "pixel_spacing_mm": pl.Float64,
    "n_slices": pl.Int64,
    "acquired_on": pl.Date,
    "source_path": pl.String,
    "manufacturer_model": pl.String,
    "kvp": pl.Float64,
    "convolution_kernel": pl.String,
    "contrast_agent": pl.String,
    "phase": pl.String,
    "field_strength_t": pl.Float64,
    "sequence_name": pl.String,
    "echo_time_ms": pl.Float64,
    "repetition_time_ms": pl.Float64,
    "rows": pl.Int64,
    "columns": pl.Int64,
    "pixel_spacing_col_mm": pl.Float64,
    "spacing_z_mm": pl.Float64,
    "spacing_uniform": pl.Boolean,
    "n_positions": pl.Int64,
    "series_description": pl.String,
    "body_part": pl.String,
    "file_format": pl.String,
    "n_files": pl.Int64,
}

_HEADER_COLUMNS: dict[str, Any] = {
    "modality": pl.String,
    "manufacturer": pl.String,
    "manufacturer_model": pl.String,
    "kvp": pl.Float64,
    "convolution_kernel": pl.String,
    "contrast_agent": pl.String,
    "contrast_route": pl.String,
    "series_description": pl.String,
    "protocol_name": pl.String,
    "body_part": pl.String,
    "field_strength_t": pl.Float64,
    "sequence_name": pl.String,
    "echo_time_ms": pl.Float64,
    "repetition_time_ms": pl.Float64,
    "slice_thickness_mm": pl.Float64,
    "pixel_spacing_mm": pl.Float64,
    "pixel_spacing_col_mm": pl.Float64,
    "rows": pl.Int64,
    "columns": pl.Int64,
    "n_frames": pl.Int64,
    "position": pl.List(pl.Float64),
    "orientation": pl.List(pl.Float64),
    "instance_number": pl.Int64,
    "acquired_on": pl.Date,
    "volume_spacing": pl.List(pl.Float64),
    "volume_size": pl.List(pl.Int64),
}

FILES_SCHEMA: dict[str, Any] = {
    "path_key": pl.String,  # keyed digest of the path relative to landing/
    "center_id": pl.String,
    "size": pl.Int64,
    "mtime_ns": pl.Int64,
    "cases_digest": pl.String,  # keyed digest of the cases.csv patient id used ('' if none)
    "kind": pl.String,  # image / volume / seg / rtstruct / rejected
    "file_format": pl.String,
    "rule": pl.String,
    "detail": pl.String,
    "series_id": pl.String,
    "patient_key": pl.String,
    "instance_key": pl.String,  # sha256 of SOPInstanceUID (duplicate detection)
    "safe_path": pl.String,
    "id_digests": pl.List(pl.String),  # "<length>:<keyed digest>" of identifier tokens
    **_HEADER_COLUMNS,
}

_TODO = {
    "not_dicom": "remove it from landing/imaging or land it elsewhere",
    "corrupt_dicom": "re-export the file from the PACS",
    "unreadable_file": "check the file's permissions",
    "not_a_regular_file": "land a copy of the data as a regular file",
    "unreadable_image": "re-export the volume",
    "truncated_image": "copy the whole file again",
    "non_image_dicom": "it is not used; remove it from landing/imaging",
    "missing_patient_id": "add a patient_id for this series folder in cases.csv",
    "inconsistent_patient": "split the series or fix the PatientID",
    "no_center": "move it into landing/imaging/<center_id>/",
    "path_outside_landing": "copy the file into landing/ instead of linking to it",
    "missing_series_uid": "re-export the file from the PACS",
}


@dataclass
class ScanResult:
    """``series`` (imaging_series), ``files`` (the incremental index), ``rejects``, ``stats``.

    Unpacks like every pure ingest: ``series, rejects, stats = scan_imaging(...)``.
    """

    series: pl.DataFrame
    files: pl.DataFrame
    rejects: list[Reject]
    stats: dict[str, Any] = field(default_factory=dict)

    def __iter__(self):
        return iter((self.series, self.rejects, self.stats))


# --- what cases.csv files say about the scan --------------------------------------------------
@dataclass
class _CasesHints:
    """Keyed by real path strings (hashing a str is much cheaper than a Path)."""

    mask_paths: set[str] = field(default_factory=set)
    image_ids: dict[str, str] = field(default_factory=dict)  # real image path -> patient_id
    image_studies: dict[str, str] = field(default_factory=dict)  # real image path -> study_id
    image_modality: dict[str, str] = field(default_factory=dict)
    image_paths: set[str] = field(default_factory=set)
    # center -> (patient_id, study_id) of every row: identifiers to scrub from reject paths
    pids: dict[str, list[tuple[str | None, str | None]]] = field(
        default_factory=lambda: defaultdict(list)
    )


def _cases_hints(listing: list[layout.LandedFile], resolver: layout.Resolver) -> _CasesHints:
    """What the cases.csv files of ``listing`` (the walk) say, in ``layout.cases_csv_files``
    order: by center, then by path."""
    hints = _CasesHints()
    resolve = resolver.real
    found = sorted(
        (landed.center_id, Path(landed.path_str))
        for landed in listing
        if landed.center_id is not None
        and not landed.is_link
        and landed.path_str.endswith("/" + layout.CASES_CSV)
    )
    for center, csv_path in found:
        rows, _problem = layout.read_cases_csv(csv_path)
        folder = str(csv_path.parent)
        for row in rows:  # unsafe or missing paths are the cases' business: ignored here
            image = resolve(os.path.join(folder, row.image)) if row.image else None
            mask = resolve(os.path.join(folder, row.mask)) if row.mask else None
            if mask is not None:
                hints.mask_paths.add(mask)
            if image is not None:
                hints.image_paths.add(image)
                if row.patient_id:
                    hints.image_ids.setdefault(image, row.patient_id)
                if row.study_id:
                    hints.image_studies.setdefault(image, row.study_id)
                if row.modality:
                    hints.image_modality.setdefault(image, row.modality)
            if row.patient_id or row.study_id:
                hints.pids[center].append((row.patient_id, row.study_id))
    return hints


# --- header extraction (DICOM: header_worker) ----------------------------------------------
def nifti_shortfall(path: Path) -> str | None:
    """Why a NIfTI-1 file holds fewer voxel bytes than its header promises (None when it does
    not, or cannot tell): the header's vox_offset + voxels x bitpix / 8 against the file size,
    or, for .nii.gz, the gzip trailer's uncompressed size (ISIZE, mod 2^32): no voxel is read."""
    import gzip
    import struct

    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return None
    try:
        with (gzip.open if name.endswith(".gz") else open)(path, "rb") as handle:
            header = handle.read(348)
        if len(header) < 348:
            return None
        for order in "<>":
            if struct.unpack(f"{order}i", header[:4])[0] == 348:
                break
        else:
            return None
        dims = struct.unpack(f"{order}8h", header[40:56])
        bitpix = struct.unpack(f"{order}h", header[72:74])[0]
        offset = int(struct.unpack(f"{order}f", header[108:112])[0]) or 352
        voxels = 1
        for d in dims[1 : max(1, min(dims[0], 7)) + 1]:
            voxels *= max(int(d), 1)
        expected = offset + voxels * bitpix // 8
        if name.endswith(".gz"):
            if expected >= 1 << 32:
                return None
            with open(path, "rb") as raw:
                raw.seek(-4, os.SEEK_END)
                actual = struct.unpack("<I", raw.read(4))[0]
        else:
            actual = path.stat().st_size
    except (OSError, EOFError, struct.error, ValueError):
        return None
    if actual >= expected:
        return None
    return (
        f"holds {actual:,} bytes but its header promises {expected:,} "
        f"({voxels:,} voxels of {bitpix} bits from byte {offset}): the file was cut short"
    )


def _volume_row(path: Path) -> dict[str, Any]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()  # header only, no voxels
    except Exception as exc:
        raise ImagingError(
            "unreadable_image", "is named like a NIfTI/NRRD volume but its header cannot be read"
        ) from exc
    short = nifti_shortfall(path)
    if short:
        raise ImagingError("truncated_image", short)
    size = list(reader.GetSize())
    spacing = [float(s) for s in reader.GetSpacing()]
    size3 = size + [1] * (3 - len(size))
    spacing3 = spacing + [None] * (3 - len(spacing))
    return {
        "rows": int(size3[1]),
        "columns": int(size3[0]),
        "n_frames": int(size3[2]),
        "pixel_spacing_mm": spacing3[1],
        "pixel_spacing_col_mm": spacing3[0],
        "slice_thickness_mm": spacing3[2],  # NIfTI/NRRD carry no thickness: the z spacing
        "volume_spacing": spacing,
        "volume_size": [int(s) for s in size],
        "file_format": layout.volume_format(path.name),
    }


# --- phase -----------------------------------------------------------------------------------
_PHASES = [
    (
        "non_contrast",
        r"\b(non ?contrast|noncon|nc|plain|native|pre ?contrast|unenhanced|without contrast)\b",
    ),
    ("arterial", r"\b(arterial|art|ap|hepatic arterial|late arterial|early arterial)\b"),
    ("portal_venous", r"\b(portal ?venous|portal|venous|pv|pvp|vp)\b"),
    ("delayed", r"\b(delayed|delay|equilibrium|late|excretory)\b"),
]


def contrast_phase(
    description: str | None, protocol: str | None = None, agent: str | None = None
) -> str:
    """portal_venous / arterial / delayed / non_contrast from SeriesDescription or ProtocolName;
    'contrast' when a ContrastBolusAgent is recorded without a phase word; else 'unknown'."""
    text = re.sub(r"[^a-z0-9]+", " ", f"{description or ''} {protocol or ''}".lower())
    for phase, pattern in _PHASES:
        if re.search(pattern, text):
            return phase
    return "contrast" if agent else "unknown"


# --- the scan --------------------------------------------------------------------------------
def scan_imaging(
    landing: Path,
    pseudonymize: layout.Pseudonymize,
    previous: pl.DataFrame | None = None,
    workers: int | None = None,
) -> ScanResult:
    """Scan ``landing/imaging/<center_id>/**`` into imaging_series rows (see the module doc).

    ``workers``: processes reading DICOM headers while the walk goes on (None: one per core
    but one, from ``header_worker.MIN_FILES_PER_WORKER`` new files on; 0: all in this process).

    The cyclic garbage collector is off meanwhile: the scan allocates dozens of containers per
    file and frees almost none, so every few hundred files CPython would traverse the whole
    heap (in a Dagster run: everything Dagster, polars and pyarrow keep alive) for nothing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _scan(Path(landing), pseudonymize, previous, workers)
    finally:
        if enabled:
            gc.enable()


def _scan(
    landing: Path, pseudonymize: layout.Pseudonymize, previous: pl.DataFrame | None, workers
) -> ScanResult:
    digest = layout.digest_fn(pseudonymize)
    # one walk (cases.csv files are read first); the header workers start (they boot
    # meanwhile) as soon as it has seen enough files that the index does not know
    reader = HeaderReader(pseudonymize, workers)  # DICOM headers, in workers for large scans
    known = 0 if previous is None else previous.height
    listing: list[layout.LandedFile] = []
    for landed in layout.walk_imaging(landing):
        listing.append(landed)
        if len(listing) - known == MIN_FILES_PER_WORKER:
            reader.expect(MIN_FILES_PER_WORKER)
    resolver = layout.Resolver(landing)
    hints = _cases_hints(listing, resolver)
    cache = _index(previous)
    stats = defaultdict(int)
    rows: list[dict[str, Any]] = []  # file index rows of this run
    # in walk order: ("reject", (center, real rel, rule, detail)) or ("row", (index, landed))
    events: list[tuple[str, Any]] = []
    to_read: list[int] = []  # rows whose DICOM header the reader reads
    masks, images = hints.mask_paths, hints.image_paths
    image_ids, image_studies = hints.image_ids, hints.image_studies
    cases_digests: dict[tuple[str | None, str | None], str] = {}

    for landed in listing:
        stats["files_seen"] += 1
        if landed.is_link:
            if layout.resolve_inside(landing, landed.path) is None:
                events.append(
                    (
                        "reject",
                        (
                            landed.center_id,
                            landed.rel,
                            "path_outside_landing",
                            "is a symbolic link that leads outside landing/",
                        ),
                    )
                )
            else:
                stats["links_inside"] += 1  # the target is scanned where it really is
            continue
        if landed.center_id is None:
            events.append(
                ("reject", (None, landed.rel, "no_center", "is not inside a center folder"))
            )
            continue
        path = landed.path_str
        folder, name = path.rsplit("/", 1)
        real_folder = resolver.folder(folder)  # the file is no link: only its folder can move
        real = f"{real_folder}/{name}"
        fmt = layout.volume_format(name)
        if name == layout.CASES_CSV or real in masks:
            stats["for_cases"] += 1
            continue
        if fmt and layout.mask_base(name) and real not in images:
            stats["for_cases"] += 1  # a mask by the naming convention
            continue
        pid = image_ids.get(real) or (None if fmt else image_ids.get(real_folder))
        study = image_studies.get(real) or (None if fmt else image_studies.get(real_folder))
        try:
            stat = os.stat(path)
        except OSError:
            events.append(
                ("reject", (landed.center_id, landed.rel, "unreadable_file", "cannot be opened"))
            )
            continue
        if not S_ISREG(stat.st_mode):  # a FIFO would block the reader for ever, a device worse
            events.append(
                (
                    "reject",
                    (
                        landed.center_id,
                        landed.rel,
                        "not_a_regular_file",
                        "is not a regular file (a FIFO, socket or device); it is not read",
                    ),
                )
            )
            continue
        # with no index to look in (a first scan) a DICOM file's key is made where it is read
        key = layout.file_key(pseudonymize, landed.center_id, landed.rel) if cache or fmt else None
        # the cases.csv ids of a file decide its patient and path scrubbing: part of the cache key
        cases_digest = ""
        if pid or study:
            cases_digest = cases_digests.get((pid, study)) or cases_digests.setdefault(
                (pid, study), digest(f"{pid or ''}\x1f{study or ''}")
            )
        row = cache.get(key) if cache else None
        if row is not None and (row["size"], row["mtime_ns"], row["cases_digest"]) == (
            stat.st_size,
            stat.st_mtime_ns,
            cases_digest,
        ):
            stats["reused"] += 1
        else:
            stats["read"] += 1
            row = {
                "path_key": key,
                "center_id": landed.center_id,
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "cases_digest": cases_digest,
            }
            if fmt:
                row = _read_volume(landed, row)
            else:
                reader.submit(FileTask(path, landed.rel, landed.center_id, pid, study, row))
                to_read.append(len(rows))
        events.append(("row", (len(rows), landed)))
        rows.append(row)

    # DICOM headers: read, pseudonymized and scrubbed (in worker processes for large scans)
    read_rows, worker_stats = reader.rows()
    stats.update(worker_stats)
    for index, row in zip(to_read, read_rows, strict=True):
        rows[index] = row

    pending_rejects: list[tuple[str | None, str, str, str]] = []  # (center, real rel, rule, detail)
    volume_rows: list[tuple[dict[str, Any], layout.LandedFile, str]] = []
    for what, item in events:
        if what == "reject":
            pending_rejects.append(item)
            continue
        index, landed = item
        row = rows[index]
        if row["kind"] == "volume":
            folder, name = landed.path_str.rsplit("/", 1)
            volume_rows.append((row, landed, f"{resolver.folder(folder)}/{name}"))
        elif row["kind"] in ("seg", "rtstruct"):
            stats["for_cases"] += 1
        elif row["kind"] == "rejected":
            pending_rejects.append((landed.center_id, landed.rel, row["rule"], row["detail"]))

    series_rows, series_rejects, merged, ingested = _dicom_series(rows)
    stats["merged"] += merged
    stats["ingested"] += ingested
    for row in series_rejects:
        pending_rejects.append((row["center_id"], row["safe_path"], row["rule"], row["detail"]))
    rejects: list[Reject] = []
    if pending_rejects or volume_rows:  # paths to scrub with everything known of their center
        rejects = _volumes_and_rejects(
            rows, hints, pseudonymize, digest, volume_rows, pending_rejects, series_rows, stats
        )
    stats["quarantined"] = len(rejects)
    stats["series"] = len(series_rows)
    stats["merged"] += stats["links_inside"]  # a link inside landing/ duplicates its target
    stats["landed"] = stats["files_seen"] - stats["for_cases"]
    for name in ("ingested", "merged", "links_inside", "read", "reused"):
        stats.setdefault(name, 0)

    series = pl.DataFrame(series_rows, schema=SERIES_SCHEMA).sort(
        ["center_id", "source_path", "series_id"]
    )
    files = _frame(rows, FILES_SCHEMA, shared=PART_COLUMNS)
    return ScanResult(series=series, files=files, rejects=rejects, stats=dict(stats))


def _volumes_and_rejects(
    rows: list[dict[str, Any]],
    hints: _CasesHints,
    pseudonymize: layout.Pseudonymize,
    digest,
    volume_rows: list[tuple[dict[str, Any], layout.LandedFile, str]],
    pending_rejects: list[tuple[str | None, str, str, str]],
    series_rows: list[dict[str, Any]],
    stats: dict[str, int],
) -> list[Reject]:
    """Volume series (appended to ``series_rows``) and the rejects, their paths scrubbed with
    every identifier known of their center (DICOM headers, cases.csv, volume names)."""
    # scrubbers that know every identifier of a center (as keyed digests) for reject paths
    center_scrubbers: dict[str | None, layout.Scrubber] = defaultdict(
        lambda: layout.Scrubber(digest)
    )
    everywhere = layout.Scrubber(digest)  # for files outside any center folder
    seen: set[tuple] = set()
    lists: set[int] = set()  # the files of a series share one id_digests list: see it once
    for row in rows:
        digests = row.get("id_digests")
        if not digests or id(digests) in lists:
            continue
        lists.add(id(digests))
        entries = tuple(digests)
        if (row["center_id"], entries) not in seen:
            seen.add((row["center_id"], entries))
            for scrubber in (center_scrubbers[row["center_id"]], everywhere):
                scrubber.add_digests(entries, row.get("patient_key") or "redacted")
    for center, pairs in hints.pids.items():
        for pid, study in pairs:
            replacement = pseudonymize(center, pid) if pid else "redacted"
            for scrubber in (center_scrubbers[center], everywhere):
                scrubber.add(layout.identifier_tokens(pid, study), replacement)

    for row, landed, real in volume_rows:
        pid = hints.image_ids.get(real) or layout.image_base(landed.path.name)
        patient_key = pseudonymize(landed.center_id, pid)
        tokens = layout.identifier_tokens(pid, hints.image_studies.get(real))
        center_scrubbers[landed.center_id].add(tokens, patient_key)
        scrubber = layout.Scrubber()
        scrubber.add(tokens, patient_key)
        safe = center_scrubbers[landed.center_id].scrub(scrubber.scrub(landed.rel))
        row["patient_key"] = patient_key
        row["series_id"] = layout.volume_series_id(pseudonymize, landed.center_id, landed.rel)
        row["safe_path"] = safe
        series_rows.append(_volume_series(row, hints.image_modality.get(real)))
        stats["ingested"] += 1

    rejects = []
    for center, rel, rule, detail in pending_rejects:
        if center is None:
            safe = everywhere.scrub(rel, keep=1)
        else:
            safe = everywhere.scrub(center_scrubbers[center].scrub(rel))
        todo = _TODO.get(rule, "fix or remove the file")
        rejects.append(Reject(safe, TARGET, rule, f"{rule}: {safe} {detail} ({todo})"))
    return rejects


def _frame(
    rows: list[dict[str, Any]], schema: dict[str, Any], shared: tuple[str, ...] = ()
) -> pl.DataFrame:
    """Rows to a frame, column by column (``_column``). The rows are turned into columns by
    ``map`` and ``zip`` (a list of ``row.get(name)`` per column costs twice as much); the
    ``shared`` columns of rows that carry a ``"_part"`` (header fields one series shares,
    ``header_worker.Identities.part``) are converted once per part and gathered."""
    if not rows:
        return pl.DataFrame(schema=schema)
    own = [name for name in schema if name not in shared]
    table = [tuple(map(row.get, own)) for row in rows]  # a missing column: None
    values_of = dict(zip(own, zip(*table, strict=True), strict=True))
    codes: list[int] | None = None
    if shared:  # the ``shared`` columns of a row with a "_part": from that part (one per series)
        index: dict[int, int] = {}
        parts: list[tuple] = []
        codes = []
        for row in rows:
            part = row.get("_part")
            if part is None:  # a row without a part (a volume, a reused index row): its own
                codes.append(len(parts))
                parts.append(tuple(map(row.get, shared)))
                continue
            code = index.get(id(part))
            if code is None:
                code = index[id(part)] = len(parts)
                parts.append(tuple(map(part.get, shared)))
            codes.append(code)
        values_of.update(zip(shared, zip(*parts, strict=True), strict=True))
    columns = []
    for name, dtype in schema.items():
        series = _column(name, dtype, values_of[name])
        if codes is not None and name in shared and len(series) < len(rows):
            series = series.gather(pl.Series(codes, dtype=pl.UInt32))
        columns.append(series)
    return pl.DataFrame(columns)


def _column(name: str, dtype: Any, values: Sequence) -> pl.Series:
    """One column; list columns through pyarrow, each distinct list object converted once (the
    files of a series share theirs: id_digests), then gathered."""
    if not isinstance(dtype, pl.List) or values.count(None) == len(values):
        return pl.Series(name, values, dtype=dtype)
    import pyarrow as pa

    inner = {pl.Float64: pa.float64(), pl.Int64: pa.int64(), pl.String: pa.string()}
    arrow_type = pa.list_(inner[dtype.inner])
    ids = list(map(id, values))
    index = dict.fromkeys(ids)  # distinct objects, in order of first use
    if len(index) == len(ids):
        return pl.Series(name, pa.array(values, type=arrow_type)).cast(dtype)
    by_id = dict(zip(ids, values, strict=True))
    distinct = [by_id[key] for key in index]
    for code, key in enumerate(index):
        index[key] = code
    series = pl.Series(name, pa.array(distinct, type=arrow_type)).cast(dtype)
    return series.gather(pl.Series(list(map(index.__getitem__, ids)), dtype=pl.UInt32))


def _index(previous: pl.DataFrame | None) -> dict[str, dict[str, Any]]:
    if previous is None or previous.is_empty() or "path_key" not in previous.columns:
        return {}
    frame = previous
    for name, dtype in FILES_SCHEMA.items():  # an index from an older version: missing columns
        if name not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=dtype).alias(name))
    return {row["path_key"]: row for row in frame.select(list(FILES_SCHEMA)).iter_rows(named=True)}


def _read_volume(landed: layout.LandedFile, base: dict[str, Any]) -> dict[str, Any]:
    row = dict(base)
    try:
        row.update(_volume_row(landed.path))
        row["kind"] = "volume"
    except ImagingError as exc:
        row.update(kind="rejected", rule=exc.rule, detail=exc.detail)
    return row


def _dicom_series(rows: list[dict[str, Any]]) -> tuple[list[dict], list[dict], int, int]:
    """Series rows from the image files; files of broken series become rejects."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["kind"] == "image":
            groups[(row["center_id"], row["series_id"])].append(row)
    series_rows, rejects = [], []
    merged = ingested = 0
    for key in sorted(groups):
        members = sorted(groups[key], key=_SAFE_PATH)
        patients = set(map(_PATIENT_KEY, members))
        if len(patients) > 1:
            for m in members:
                rejects.append(
                    dict(
                        m,
                        rule="inconsistent_patient",
                        detail=f"belongs to a series whose {len(members)} files carry {len(patients)} different patient ids",
                    )
                )
            continue
        instances = list(map(_INSTANCE_KEY, members))
        unique = members
        if len(set(instances)) < len(instances):  # the same SOP instance landed twice
            unique, seen = [], set()
            for m, instance in zip(members, instances, strict=True):
                if instance and instance in seen:
                    merged += 1
                    continue
                seen.add(instance)
                unique.append(m)
        ingested += len(unique)
        series_rows.append(_series_row(unique))
    return series_rows, rejects, merged, ingested


_SAFE_PATH = operator.itemgetter("safe_path")  # set on every image row
_PATIENT_KEY = operator.itemgetter("patient_key")
_INSTANCE_KEY = operator.itemgetter("instance_key")


# the protocol fields of a series row: its first file (in slice order) that has a value
_FIRST_OF = (
    "modality",
    "manufacturer",
    "slice_thickness_mm",
    "pixel_spacing_mm",
    "acquired_on",
    "manufacturer_model",
    "kvp",
    "convolution_kernel",
    "contrast_agent",
    "field_strength_t",
    "sequence_name",
    "echo_time_ms",
    "repetition_time_ms",
    "rows",
    "columns",
    "pixel_spacing_col_mm",
    "series_description",
    "body_part",
    "protocol_name",
)


def _series_row(members: list[dict[str, Any]]) -> dict[str, Any]:
    parts = [m.get("_part") or m for m in members]  # header fields: a shared part, or the row
    order, along = order_slices(
        list(map(operator.itemgetter("position"), members)),
        [p["orientation"] for p in parts],
        list(map(operator.itemgetter("instance_number"), members)),
    )
    ordered = [members[i] for i in order]
    ordered_parts = [parts[i] for i in order]
    positions = sorted({round(a, 4) for a in along if a is not None})
    steps = [b - a for a, b in itertools.pairwise(positions)]
    spacing_z = statistics.median(steps) if steps else None
    uniform = (
        None if not steps else max(abs(s - spacing_z) for s in steps) <= max(1e-3, 0.01 * spacing_z)
    )
    head = ordered[0]
    first = {}
    for name in _FIRST_OF:  # the first file usually has them all, or none of them has it
        value = ordered_parts[0].get(name)
        if value is None:
            values = list(map(operator.itemgetter(name), ordered_parts))
            if values.count(None) < len(values):
                value = next(v for v in values if v is not None)
        first[name] = value
    n_frames = sum(p["n_frames"] or 1 for p in ordered_parts)
    folders = {m["safe_path"].rsplit("/", 1)[0] for m in ordered}
    folder = folders.pop() if len(folders) == 1 else os.path.commonpath(sorted(folders))
    protocol = first.pop("protocol_name")
    return {
        "series_id": head["series_id"],
        "patient_key": head["patient_key"],
        "center_id": head["center_id"],
        **first,
        "n_slices": n_frames,
        "source_path": Path(folder).as_posix() if folder else None,
        "phase": contrast_phase(first["series_description"], protocol, first["contrast_agent"]),
        "spacing_z_mm": spacing_z,
        "spacing_uniform": uniform,
        "n_positions": len(positions) or None,
        "file_format": "dicom",
        "n_files": len(ordered),
    }


def _volume_series(row: dict[str, Any], modality: str | None) -> dict[str, Any]:
    spacing = row.get("volume_spacing") or []
    return {
        "series_id": row["series_id"],
        "patient_key": row["patient_key"],
        "center_id": row["center_id"],
        "modality": modality,
        "manufacturer": None,
        "slice_thickness_mm": row.get("slice_thickness_mm"),
        "pixel_spacing_mm": row.get("pixel_spacing_mm"),
        "n_slices": row.get("n_frames"),
        "acquired_on": None,
        "source_path": row["safe_path"],
        "rows": row.get("rows"),
        "columns": row.get("columns"),
        "pixel_spacing_col_mm": row.get("pixel_spacing_col_mm"),
        "spacing_z_mm": spacing[2] if len(spacing) > 2 else None,
        "spacing_uniform": True,
        "n_positions": row.get("n_frames"),
        "phase": "unknown",
        "file_format": row.get("file_format"),
        "n_files": 1,
    }
