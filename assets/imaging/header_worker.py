"""Reading DICOM headers for the scan: per file, and in parallel worker processes.

``read_dicom_file(path)`` turns one file into a plain dict: its kind (image, seg, rtstruct,
rejected with rule and detail), the protocol fields of ``imaging_series`` (``dicom_row``), the
SeriesInstanceUID and SOPInstanceUID, and the identifier values the scan needs to pseudonymize
and to scrub paths (``ids``). Plain Part-10 files go through ``dicom_header.read_header_values``;
everything it declines through pydicom (``io.read_header``), which also names what is wrong.

``file_row(task, result, identities)`` turns that into the scan's index row: identifiers become
the patient_key, keyed digests and a scrubbed path (``Identities`` computes them once per
distinct set of identifiers, i.e. once per series).

``HeaderReader`` does both for a stream of files, in worker processes for large scans. A worker
is a fresh ``python -S -m assets.imaging.header_worker``: the pseudonymizer and chunks of tasks
in on stdin, rows out on stdout (pickle, between this process and its own child; the secret
never touches argv, the environment or disk). Not ``multiprocessing``: spawn and forkserver
children re-run the parent's ``__main__`` (in a Dagster run that is the Dagster CLI, over a
second of imports per worker), and forking a process with threads (Dagster's, polars') is
unsafe. This module, ``dicom_header``, ``layout`` and the pseudonymizer import only the standard
library, so a worker needs no site-packages (``-S``) and starts in ~0.1 s. Files the fast reader
declines, and every file of a worker that failed (killed, out of memory), are read again in this
process with pydicom: a worker can cost time, never a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
from datetime import date
from pathlib import Path
from typing import Any

from assets.imaging import layout
from assets.imaging.dicom_header import (
    HEADER_TAGS,
    Decline,
    HeaderValues,
    ImagingError,
    read_header_values,
    sop_kind,
)

# For the pydicom fallback: the wanted tags (the same as dicom_header.WANTED reads), with
# three read only to find them in folder and file names (never stored): folders are often named
# after the birth date or the accession number (PS3.15 removes both when de-identifying).
SCAN_TAGS = [*HEADER_TAGS, "PatientBirthDate", "AccessionNumber", "StudyID"]
ID_TAGS = ("PatientID", "PatientName", "PatientBirthDate", "AccessionNumber", "StudyID")
_HERE = -1  # a chunk this process reads itself
MIN_FILES_PER_WORKER = 1000  # workers cost ~0.1 s to start and ~15 us per file to talk to
_REPO = Path(__file__).resolve().parents[2]


# --- value converters (pydicom values and HeaderValues alike) -----------------------------------
def text(value) -> str | None:
    if value is None:
        return None
    if hasattr(value, "__iter__") and not isinstance(value, str | bytes):
        out = "\\".join(str(v) for v in value)
    else:
        out = str(value)
    out = out.strip()
    return out or None


def number(value) -> float | None:
    try:
        if value is None or str(value).strip() == "":
            return None
        if hasattr(value, "__iter__") and not isinstance(value, str | bytes):
            value = list(value)[0]
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


def integer(value) -> int | None:
    found = number(value)
    return int(found) if found is not None else None


def numbers(value, n: int) -> list[float] | None:
    if value is None:
        return None
    try:
        items = [float(v) for v in value] if not isinstance(value, str) else [float(value)]
    except (TypeError, ValueError):
        return None
    return items if len(items) == n else None


def dicom_date(*values) -> date | None:
    for value in values:
        digits = re.sub(r"[^0-9]", "", str(value or ""))
        if len(digits) >= 8:
            try:
                return date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
            except ValueError:
                continue
    return None


# The header fields dicom_row converts once per series (all but the per-file and identifying
# ones; the memo key is their values, so a file that differs gets its own entry).
_PER_FILE = {
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "PatientID",
    "PatientName",
    "ImagePositionPatient",
    "InstanceNumber",
}
_SERIES_FIELDS = tuple(t for t in HEADER_TAGS if t not in _PER_FILE)
_ROW_MEMO: dict[tuple, dict[str, Any]] = {}


def dicom_row(dataset) -> dict[str, Any]:
    """Header fields of one DICOM image file (identifiers excluded)."""
    get = dataset.get
    if isinstance(dataset, HeaderValues):  # hashable values: convert once per series
        key = tuple(get(name) for name in _SERIES_FIELDS)
        common = _ROW_MEMO.get(key)
        if common is None:
            if len(_ROW_MEMO) > 4096:
                _ROW_MEMO.clear()
            common = _ROW_MEMO[key] = _series_fields(get)
    else:
        common = _series_fields(get)
    row = dict(common)
    row["position"] = numbers(get("ImagePositionPatient"), 3)
    row["instance_number"] = integer(get("InstanceNumber"))
    return row


def _series_fields(get) -> dict[str, Any]:
    spacing = numbers(get("PixelSpacing"), 2)
    return {
        "modality": text(get("Modality")),
        "manufacturer": text(get("Manufacturer")),
        "manufacturer_model": text(get("ManufacturerModelName")),
        "kvp": number(get("KVP")),
        "convolution_kernel": text(get("ConvolutionKernel")),
        "contrast_agent": text(get("ContrastBolusAgent")),
        "contrast_route": text(get("ContrastBolusRoute")),
        "series_description": text(get("SeriesDescription")),
        "protocol_name": text(get("ProtocolName")),
        "body_part": text(get("BodyPartExamined")),
        "field_strength_t": number(get("MagneticFieldStrength")),
        "sequence_name": text(get("SequenceName")) or text(get("ScanningSequence")),
        "echo_time_ms": number(get("EchoTime")),
        "repetition_time_ms": number(get("RepetitionTime")),
        "slice_thickness_mm": number(get("SliceThickness")),
        "pixel_spacing_mm": spacing[0] if spacing else None,  # row spacing (between rows)
        "pixel_spacing_col_mm": spacing[1] if spacing else None,
        "rows": integer(get("Rows")),
        "columns": integer(get("Columns")),
        "n_frames": integer(get("NumberOfFrames")) or 1,
        "orientation": numbers(get("ImageOrientationPatient"), 6),
        "acquired_on": dicom_date(
            get("AcquisitionDate"), get("SeriesDate"), get("StudyDate"), get("ContentDate")
        ),
        "file_format": "dicom",
    }


# --- one file ----------------------------------------------------------------------------------
def read_dicom_file(path: str | Path, fast_only: bool = False) -> dict[str, Any] | None:
    """What the scan needs from one DICOM file (see the module doc); never raises. With
    ``fast_only`` a file the fast reader declines gives None (a worker leaves it to pydicom in
    the parent process)."""
    try:
        try:
            dataset = read_header_values(path)  # the fast path for plain Part-10 files
        except (Decline, OSError):
            if fast_only:
                return None
            from assets.imaging.io import read_header  # pydicom: everything else, and reasons

            dataset = read_header(Path(path), SCAN_TAGS)
        kind = sop_kind(dataset)
    except ImagingError as exc:
        return {"kind": "rejected", "rule": exc.rule, "detail": exc.detail}
    except Exception as exc:  # a value that breaks while decoding
        return _rejected("corrupt_dicom", f"has an unreadable header ({type(exc).__name__})")
    if kind in ("seg", "rtstruct"):
        return {"kind": kind}
    if kind == "dicomdir":
        return _rejected("non_image_dicom", "is a DICOMDIR index, not an image")
    if kind != "image":
        return _rejected("non_image_dicom", f"is a DICOM object without image slices ({kind[6:]})")
    get = dataset.get
    series_uid = text(get("SeriesInstanceUID"))
    if not series_uid:
        return _rejected("missing_series_uid", "has no SeriesInstanceUID")
    return {
        "kind": "image",
        "series_uid": series_uid,
        "sop_uid": text(get("SOPInstanceUID")),
        "ids": {name: (None if get(name) is None else str(get(name))) for name in ID_TAGS},
        "row": dicom_row(dataset),
    }


def _rejected(rule: str, detail: str) -> dict[str, Any]:
    return {"kind": "rejected", "rule": rule, "detail": detail}


class Identities:
    """Pseudonyms, identifier tokens and path scrubbers per distinct set of identifiers (the
    files of one series share them: computed once per series, not per file)."""

    def __init__(self, pseudonymize: layout.Pseudonymize):
        self.pseudonymize = pseudonymize
        self.digest = layout.digest_fn(pseudonymize)
        self._known: dict[tuple, dict[str, Any]] = {}
        self._series: dict[tuple[str, str], str] = {}
        self._texts: dict[tuple, str | None] = {}

    def of(self, center: str, cases_pid, cases_study, ids: dict[str, str | None]) -> dict:
        key = (center, cases_pid, cases_study, *ids.values())
        known = self._known.get(key)
        if known is None:
            study_id = text(ids["StudyID"])
            tokens = layout.identifier_tokens(
                cases_pid,
                cases_study,
                ids["PatientID"],
                ids["PatientName"],
                ids["PatientBirthDate"],
                ids["AccessionNumber"],
                study_id if study_id and len(layout.normalize_token(study_id)) >= 4 else None,
            )
            patient_id = cases_pid or text(ids["PatientID"])
            patient_key = self.pseudonymize(center, patient_id) if patient_id else None
            scrubber = layout.Scrubber()
            if patient_key:
                scrubber.add(tokens, patient_key)
            known = {
                "patient_key": patient_key,
                "tokens": tokens,
                "id_digests": layout.token_digests(tokens, self.digest),
                "scrubber": scrubber,
                "key": key,
            }
            self._known[key] = known
        return known

    def series_id(self, center: str, series_uid: str) -> str:
        found = self._series.get((center, series_uid))
        if found is None:
            found = layout.dicom_series_id(self.pseudonymize, center, series_uid)
            self._series[(center, series_uid)] = found
        return found

    def scrub_text(self, value: str | None, known: dict) -> str | None:
        if value is None:
            return None
        key = (value, known["key"])
        if key not in self._texts:
            self._texts[key] = layout.scrub_text(value, known["tokens"])
        return self._texts[key]


def file_row(task: FileTask, result: dict[str, Any], identities: Identities) -> dict[str, Any]:
    """The scan index row of one DICOM file from its ``read_dicom_file`` result: identifiers
    turned into the patient_key, digests and a scrubbed path (see ``dicom_scan``)."""
    row = dict(task.base, file_format="dicom")
    kind = result["kind"]
    if kind != "image":
        if kind == "rejected":
            return dict(row, kind=kind, rule=result["rule"], detail=result["detail"])
        return dict(row, kind=kind)
    known = identities.of(task.center_id, task.cases_pid, task.cases_study, result["ids"])
    if known["patient_key"] is None:
        # identifiers (a name) may still be in the path: keep them as digests for scrubbing
        return dict(
            row,
            kind="rejected",
            rule="missing_patient_id",
            detail="has no PatientID and no cases.csv patient_id",
            id_digests=known["id_digests"],
        )
    row.update(result["row"])
    row["series_description"] = identities.scrub_text(row["series_description"], known)
    row["protocol_name"] = identities.scrub_text(row["protocol_name"], known)
    sop_uid = result["sop_uid"]
    row.update(
        kind="image",
        series_id=identities.series_id(task.center_id, result["series_uid"]),
        patient_key=known["patient_key"],
        instance_key=hashlib.sha256(sop_uid.encode()).hexdigest()[:32] if sop_uid else None,
        safe_path=known["scrubber"].scrub(task.rel),
        id_digests=known["id_digests"],
    )
    return row


# --- many files --------------------------------------------------------------------------------
class FileTask:
    """One DICOM file to read: where it is, its center, its cases.csv ids and its index base."""

    __slots__ = ("path", "rel", "center_id", "cases_pid", "cases_study", "base")

    def __init__(self, path, rel, center_id, cases_pid, cases_study, base):
        self.path: str = path
        self.rel: str = rel  # relative to landing/ (leaves no process unscrubbed)
        self.center_id: str = center_id
        self.cases_pid: str | None = cases_pid
        self.cases_study: str | None = cases_study
        self.base: dict[str, Any] = base  # path_key, center_id, size, mtime_ns, cases_digest

    def __reduce__(self):  # pickled as a plain tuple (workers get thousands)
        return (
            FileTask,
            (self.path, self.rel, self.center_id, self.cases_pid, self.cases_study, self.base),
        )


def default_workers() -> int:
    """Worker processes for large scans: ``RADLAKE_SCAN_WORKERS`` if set (0 = read everything
    in this process), else one per available core (none on one core). This process reads a
    share too (see ``HeaderReader._send``): measured on 2 cores, 2 workers beat 1 worker."""
    configured = os.environ.get("RADLAKE_SCAN_WORKERS", "").strip()
    if configured:
        return max(0, int(configured))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores if (cores or 1) >= 2 else 0


class HeaderReader:
    """``file_row`` for a stream of tasks, read while the caller is still walking the landing
    zone. ``submit`` tasks in order, then ``rows()`` returns one row per task, in that order.

    Up to ``MIN_FILES_PER_WORKER`` tasks nothing starts (a small scan is read here, in
    ``rows``). From then on worker processes start (``workers``, default one per core) and get
    the tasks in chunks of ``CHUNK`` through their stdin, fed by one writer thread each so the
    caller never waits on a pipe; a worker parses while the walk goes on and answers with all
    its rows at the end. A file the fast reader declines, and every file of a worker that
    failed, is read here with pydicom (``read_dicom_file``): nothing is lost.
    """

    CHUNK = 256

    def __init__(self, pseudonymize: layout.Pseudonymize, workers: int | None = None):
        import pickle

        self.pseudonymize = pseudonymize
        self.workers = default_workers() if workers is None else workers
        self.threshold = MIN_FILES_PER_WORKER if workers is None else 0
        self.tasks: list[FileTask] = []
        self.sent = 0  # tasks handed to workers so far (a prefix of self.tasks)
        self.chunks: list[tuple[int, int, int]] = []  # (worker, start, stop) in task order
        self._procs: list = []
        self._queues: list = []
        self._writers: list = []
        try:
            self._pickled_key = pickle.dumps(pseudonymize) if self.workers else b""
        except Exception:  # a pseudonymizer that cannot travel (a lambda): read here
            self.workers = 0

    def submit(self, task: FileTask) -> None:
        self.tasks.append(task)
        if not self.workers:
            return
        waiting = len(self.tasks) - self.sent
        if waiting >= self.CHUNK and (self._procs or len(self.tasks) >= self.threshold):
            self._send(len(self.tasks))

    def _start(self) -> None:
        import queue
        import subprocess
        import threading

        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["PYTHONPATH"] = str(_REPO)
        for _ in range(self.workers):
            try:
                proc = subprocess.Popen(
                    # -S: no site-packages; a worker needs only the standard library
                    [sys.executable, "-S", "-m", "assets.imaging.header_worker"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    env=env,
                )
            except OSError:
                break
            jobs: queue.SimpleQueue = queue.SimpleQueue()
            writer = threading.Thread(target=_feed, args=(proc, jobs), daemon=True)
            writer.start()
            jobs.put(self._pickled_key)
            self._procs.append(proc)
            self._queues.append(jobs)
            self._writers.append(writer)
        if not self._procs:
            self.workers = 0

    def _send(self, stop: int) -> None:
        """Hand tasks up to ``stop`` out in chunks: per cycle two chunks to each worker and one
        kept for this process, which reads its share once the walk is done (the parent also
        walks, so it takes 1 chunk in 2W+1: a third with one worker, 1/15 with seven)."""
        import pickle

        if not self._procs:
            self._start()
            if not self._procs:
                return
        workers = len(self._procs)
        for start in range(self.sent, stop, self.CHUNK):
            end = min(start + self.CHUNK, stop)
            slot = len(self.chunks) % (2 * workers + 1)
            worker = slot // 2 if slot < 2 * workers else _HERE
            if worker != _HERE:
                self._queues[worker].put(
                    pickle.dumps(self.tasks[start:end], protocol=pickle.HIGHEST_PROTOCOL)
                )
            self.chunks.append((worker, start, end))
        self.sent = stop

    def rows(self) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """One row per submitted task, in order; counts ``workers`` and ``worker_failures``."""
        unsent = self.workers and self.sent < len(self.tasks)
        if unsent and (self._procs or len(self.tasks) >= self.threshold):
            self._send(len(self.tasks))
        for jobs in self._queues:
            jobs.put(None)  # end of input: the workers finish while this process reads its share
        found: list[dict[str, Any] | None] = [None] * len(self.tasks)
        identities = Identities(self.pseudonymize)
        for worker, start, stop in self.chunks:
            if worker == _HERE:
                for index in range(start, stop):
                    task = self.tasks[index]
                    found[index] = file_row(task, read_dicom_file(task.path), identities)
        outputs = self._collect()
        failures = 0
        for worker, output in enumerate(outputs):
            mine = [(start, stop) for w, start, stop in self.chunks if w == worker]
            if output is None or len(output) != len(mine):
                failures += 1
                continue
            for (start, stop), rows in zip(mine, output, strict=True):
                if len(rows) == stop - start:
                    found[start:stop] = rows
        for index, row in enumerate(found):
            if row is None:  # not sent, declined by the fast reader, or its worker failed
                task = self.tasks[index]
                found[index] = file_row(task, read_dicom_file(task.path), identities)
        return found, {"workers": len(self._procs), "worker_failures": failures}

    def _collect(self) -> list[list | None]:
        import pickle
        from concurrent.futures import ThreadPoolExecutor

        for writer in self._writers:
            writer.join()

        def read(proc) -> list | None:
            try:
                data = proc.stdout.read()
                proc.stdout.close()
                return pickle.loads(data) if proc.wait() == 0 else None
            except (OSError, pickle.UnpicklingError, EOFError, ValueError):
                return None

        if not self._procs:
            return []
        with ThreadPoolExecutor(len(self._procs)) as pool:  # threads only wait on the pipes
            return list(pool.map(read, self._procs))


def _feed(proc, jobs) -> None:
    """Writer thread: pickled blobs from ``jobs`` into a worker's stdin until None."""
    import struct as _struct

    try:
        while (blob := jobs.get()) is not None:
            proc.stdin.write(_struct.pack("<Q", len(blob)) + blob)
            proc.stdin.flush()
    except (BrokenPipeError, OSError):  # the worker died: its chunks are read in the parent
        while jobs.get() is not None:
            pass
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()


def _frames(stream) -> Any:
    """Length-prefixed pickled blobs from a binary stream, until EOF."""
    import struct as _struct

    while len(head := stream.read(8)) == 8:
        (size,) = _struct.unpack("<Q", head)
        yield stream.read(size)


def main() -> None:
    """Worker: the pickled pseudonymizer, then chunks of tasks, on stdin (length-prefixed
    pickles); after EOF, one list of rows (or None) per chunk on stdout."""
    import pickle

    frames = _frames(sys.stdin.buffer)
    identities = Identities(pickle.loads(next(frames)))
    answers = []
    for blob in frames:
        rows = []
        for task in pickle.loads(blob):
            result = read_dicom_file(task.path, fast_only=True)
            rows.append(None if result is None else file_row(task, result, identities))
        answers.append(rows)
    sys.stdout.buffer.write(pickle.dumps(answers, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
