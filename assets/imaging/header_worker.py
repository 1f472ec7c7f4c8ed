"""Reading DICOM headers for the scan: per file, and in parallel worker processes.

``read_dicom_file(path)`` turns one file into a plain dict: its kind (image, seg, rtstruct,
rejected with rule and detail), the protocol fields of ``imaging_series`` (``dicom_row``), the
SeriesInstanceUID and SOPInstanceUID, and the identifier values the scan needs to pseudonymize
and to scrub paths (``ids``). Plain Part-10 files go through ``dicom_header.read_header_values``;
everything it declines through pydicom (``io.read_header``), which also names what is wrong.

``file_row(task, result, identities)`` turns that into the scan's index row: identifiers become
the patient_key, keyed digests and a scrubbed path (``Identities`` computes them once per
distinct set of identifiers, i.e. once per series). The header fields a series shares stay in
one dict per series (the row's ``"_part"``, ``PART_COLUMNS``): rows travel between processes
and become frame columns faster. ``read_chunk`` does both for a chunk of files, opened ahead
(``dicom_header.open_ahead``) so that their reads overlap.

``HeaderReader`` does it for a stream of files, in worker processes for large scans. A worker
is a fresh ``python -S -c "from assets.imaging.header_worker import main; main()"``: the
pseudonymizer and chunks of tasks in on stdin, each chunk's rows out on stdout as soon as they
are read (pickle, between this process and its own child; the secret never touches argv, the
environment or disk). Not ``multiprocessing``: spawn and forkserver children re-run the
parent's ``__main__`` (in a Dagster run that is the Dagster CLI, over a second of imports per
worker), and forking a process with threads (Dagster's, polars') is unsafe. This module,
``dicom_header``, ``identifiers`` and the pseudonymizer import only the standard library (and
typing/pathlib only for type checkers), so a worker needs no site-packages (``-S``) and starts
in ~35 ms. Files the fast reader declines, and every chunk of a worker that failed (killed, out
of memory), are read again in this process with pydicom: a worker can cost time, never a file.
"""

from __future__ import annotations

import hashlib
import os
import sys
from datetime import date

from assets.imaging import identifiers
from assets.imaging.dicom_header import (
    HEADER_TAGS,
    Decline,
    HeaderValues,
    ImagingError,
    close_all,
    open_ahead,
    read_header_values,
    sop_kind,
)

TYPE_CHECKING = False  # typing and pathlib stay unimported in a worker (it starts faster)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path
    from typing import Any

# For the pydicom fallback: the wanted tags (the same as dicom_header.WANTED reads), with
# three read only to find them in folder and file names (never stored): folders are often named
# after the birth date or the accession number (PS3.15 removes both when de-identifying).
SCAN_TAGS = [*HEADER_TAGS, "PatientBirthDate", "AccessionNumber", "StudyID"]
ID_TAGS = ("PatientID", "PatientName", "PatientBirthDate", "AccessionNumber", "StudyID")
MIN_FILES_PER_WORKER = 1000  # a worker costs ~35 ms to start: below ~800 files it does not pay
_WORKER_MAIN = "from assets.imaging.header_worker import main; main()"  # no runpy
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))


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
        digits = "".join(c for c in str(value or "") if "0" <= c <= "9")
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
    row = dict(_common(dataset)[1])
    row["position"] = numbers(dataset.get("ImagePositionPatient"), 3)
    row["instance_number"] = integer(dataset.get("InstanceNumber"))
    return row


def _common(dataset) -> tuple[tuple | None, dict[str, Any]]:
    """(key, fields) of the header fields a series shares; from a ``HeaderValues`` (hashable
    values) converted once per distinct key, from a pydicom Dataset every time (key None)."""
    get = dataset.get
    if not isinstance(dataset, HeaderValues):
        return None, _series_fields(get)
    key = tuple(map(get, _SERIES_FIELDS))
    common = _ROW_MEMO.get(key)
    if common is None:
        if len(_ROW_MEMO) > 4096:
            _ROW_MEMO.clear()
        common = _ROW_MEMO[key] = _series_fields(get)
    return key, common


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


# the columns of a row's "_part" (``Identities.part``): the header fields a series shares
PART_COLUMNS = tuple(_series_fields(lambda name: None))


# --- one file ----------------------------------------------------------------------------------
def read_dicom_file(
    path: str | Path, fast_only: bool = False, fd: int | None = None
) -> dict[str, Any] | None:
    """What the scan needs from one DICOM file (see the module doc); never raises. With
    ``fast_only`` a file the fast reader declines gives None (a worker leaves it to pydicom in
    the parent process). ``fd``: the file already open (``dicom_header.open_ahead``)."""
    try:
        try:
            dataset = read_header_values(path, fd)  # the fast path for plain Part-10 files
        except (Decline, OSError):
            if fast_only:
                return None
            from pathlib import Path

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
    common_key, common = _common(dataset)
    return {
        "kind": "image",
        "series_uid": series_uid,
        "sop_uid": text(get("SOPInstanceUID")),
        "ids": tuple(None if v is None else str(v) for v in map(get, ID_TAGS)),  # ID_TAGS order
        "common_key": common_key,
        "common": common,
        "position": numbers(get("ImagePositionPatient"), 3),
        "instance_number": integer(get("InstanceNumber")),
    }


def _rejected(rule: str, detail: str) -> dict[str, Any]:
    return {"kind": "rejected", "rule": rule, "detail": detail}


class Identities:
    """Pseudonyms, identifier tokens and path scrubbers per distinct set of identifiers (the
    files of one series share them: computed once per series, not per file)."""

    def __init__(self, pseudonymize: identifiers.Pseudonymize):
        self.pseudonymize = pseudonymize
        self.digest = identifiers.digest_fn(pseudonymize)
        self._known: dict[tuple, dict[str, Any]] = {}
        self._series: dict[tuple[str, str], str] = {}
        self._texts: dict[tuple, str | None] = {}
        self._parts: dict[tuple, dict[str, Any]] = {}

    def of(self, center: str, cases_pid, cases_study, ids: tuple[str | None, ...]) -> dict:
        """``ids``: the values of ``ID_TAGS``, in that order."""
        key = (center, cases_pid, cases_study, *ids)
        known = self._known.get(key)
        if known is None:
            patient_id_tag, name, birth_date, accession, study_id = ids
            study_id = text(study_id)
            tokens = identifiers.identifier_tokens(
                cases_pid,
                cases_study,
                patient_id_tag,
                name,
                birth_date,
                accession,
                study_id if study_id and len(identifiers.normalize_token(study_id)) >= 4 else None,
            )
            patient_id = cases_pid or text(patient_id_tag)
            patient_key = self.pseudonymize(center, patient_id) if patient_id else None
            scrubber = identifiers.Scrubber()
            if patient_key:
                scrubber.add(tokens, patient_key)
            known = {
                "patient_key": patient_key,
                "tokens": tokens,
                "id_digests": identifiers.token_digests(tokens, self.digest),
                "scrubber": scrubber,
                "key": key,
            }
            self._known[key] = known
        return known

    def series_id(self, center: str, series_uid: str) -> str:
        found = self._series.get((center, series_uid))
        if found is None:
            found = identifiers.dicom_series_id(self.pseudonymize, center, series_uid)
            self._series[(center, series_uid)] = found
        return found

    def part(self, result: dict[str, Any], known: dict) -> dict[str, Any]:
        """The header fields the files of a series share (``PART_COLUMNS``), free text
        scrubbed: one dict per distinct fields and identities, shared by the rows."""
        key = result["common_key"]
        if key is not None:
            key = (known["key"], key)
            found = self._parts.get(key)
            if found is not None:
                return found
        part = dict(result["common"])
        part["series_description"] = self.scrub_text(part["series_description"], known)
        part["protocol_name"] = self.scrub_text(part["protocol_name"], known)
        if key is not None:
            self._parts[key] = part
        return part

    def scrub_text(self, value: str | None, known: dict) -> str | None:
        if value is None:
            return None
        key = (value, known["key"])
        if key not in self._texts:
            self._texts[key] = identifiers.scrub_text(value, known["tokens"])
        return self._texts[key]


def read_chunk(
    tasks: Sequence[FileTask], identities: Identities, fast_only: bool = False
) -> list[dict[str, Any] | None]:
    """``file_row`` of each task (None: declined, with ``fast_only``), the chunk's files opened
    ahead so that their reads overlap (``dicom_header.open_ahead``)."""
    fds = open_ahead([task.path for task in tasks])
    try:
        rows: list[dict[str, Any] | None] = []
        for task, fd in zip(tasks, fds, strict=True):
            result = read_dicom_file(task.path, fast_only, fd)
            rows.append(None if result is None else file_row(task, result, identities))
        return rows
    finally:
        close_all(fds)


def file_row(task: FileTask, result: dict[str, Any], identities: Identities) -> dict[str, Any]:
    """The scan index row of one DICOM file from its ``read_dicom_file`` result: identifiers
    turned into the patient_key, digests and a scrubbed path (see ``dicom_scan``)."""
    row = dict(task.base, file_format="dicom")
    if row["path_key"] is None:  # left to the reader (dicom_scan: a first scan)
        row["path_key"] = identifiers.file_key(identities.pseudonymize, task.center_id, task.rel)
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
    sop_uid = result["sop_uid"]
    # the series' header fields stay in one shared dict: rows pickle and unpickle faster, and
    # the files frame converts them once per series (dicom_scan._frame)
    row["_part"] = identities.part(result, known)
    row["kind"] = "image"
    row["series_id"] = identities.series_id(task.center_id, result["series_uid"])
    row["patient_key"] = known["patient_key"]
    row["id_digests"] = known["id_digests"]
    row["position"] = result["position"]
    row["instance_number"] = result["instance_number"]
    row["instance_key"] = hashlib.sha256(sop_uid.encode()).hexdigest()[:32] if sop_uid else None
    row["safe_path"] = known["scrubber"].scrub(task.rel)
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
        # path_key (None: file_row makes it), center_id, size, mtime_ns, cases_digest
        self.base: dict[str, Any] = base

    def __reduce__(self):  # pickled as a plain tuple (workers get thousands)
        return (
            FileTask,
            (self.path, self.rel, self.center_id, self.cases_pid, self.cases_study, self.base),
        )


def default_workers() -> int:
    """Worker processes for large scans: ``RADLAKE_SCAN_WORKERS`` if set (0 = read everything
    in this process), else one per available core but one: this process walks and then reads
    chunks too (``HeaderReader.rows``). Measured on 2 cores: 1 worker beats 2 (bench/README.md).
    """
    configured = os.environ.get("RADLAKE_SCAN_WORKERS", "").strip()
    if configured:
        return max(0, int(configured))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max((cores or 1) - 1, 0)


class HeaderReader:
    """``file_row`` for a stream of tasks, read while the caller is still walking the landing
    zone. ``submit`` tasks in order, then ``rows()`` returns one row per task, in that order.

    Up to ``MIN_FILES_PER_WORKER`` tasks nothing starts (a small scan is read here, in
    ``rows``). From then on worker processes start (``workers``, default one per core but one)
    and the tasks are cut into chunks of ``CHUNK`` on a shared queue. One feeder thread per
    worker takes chunks from it, keeps two in flight on the worker's stdin and collects each
    answer from its stdout as soon as it is ready; when the walk is done this process takes
    chunks from the same queue and reads them itself. So the work balances itself whatever the
    cores, the load or the files. A file the fast reader declines, and every chunk of a worker
    that failed (killed, out of memory), is read here with pydicom (``read_dicom_file``):
    nothing is lost.
    """

    CHUNK = 64  # small: at the end this process waits for at most two of a worker's chunks

    def __init__(self, pseudonymize: identifiers.Pseudonymize, workers: int | None = None):
        import pickle
        import threading
        from collections import deque

        self.pseudonymize = pseudonymize
        self.workers = default_workers() if workers is None else workers
        self.threshold = MIN_FILES_PER_WORKER if workers is None else 0
        self.tasks: list[FileTask] = []
        self.chunked = 0  # tasks cut into chunks so far (a prefix of self.tasks)
        self._ready: deque[tuple[int, int]] = deque()  # chunks (start, stop) nobody took yet
        self._cond = threading.Condition()
        self._closed = False  # no more chunks will come
        self._answers: dict[int, list] = {}  # chunk start -> the rows a worker read
        self._procs: list = []
        self._feeders: list = []
        self._failures = 0
        try:
            self._pickled_key = pickle.dumps(pseudonymize) if self.workers else b""
        except Exception:  # a pseudonymizer that cannot travel (a lambda): read here
            self.workers = 0

    def expect(self, files: int) -> None:
        """Start the workers now if about ``files`` tasks will come (they boot meanwhile)."""
        if self.workers and not self._procs and files >= self.threshold:
            self._start()

    def submit(self, task: FileTask) -> None:
        self.tasks.append(task)
        if not self.workers or len(self.tasks) - self.chunked < self.CHUNK:
            return
        if self._procs or len(self.tasks) >= self.threshold:
            self._cut(len(self.tasks))

    def _cut(self, stop: int, start_workers: bool = True) -> None:
        """Queue the tasks up to ``stop`` as chunks (starting the workers first)."""
        if start_workers and not self._procs and self.workers:
            self._start()
        with self._cond:
            for start in range(self.chunked, stop, self.CHUNK):
                self._ready.append((start, min(start + self.CHUNK, stop)))
            self.chunked = stop
            self._cond.notify_all()

    def _take(self, wait: bool) -> tuple[int, int] | None:
        """The next chunk nobody took; None when there is none (``wait``: unless one comes)."""
        with self._cond:
            while wait and not self._ready and not self._closed:
                self._cond.wait()
            return self._ready.popleft() if self._ready else None

    def _start(self) -> None:
        import subprocess
        import threading

        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["PYTHONPATH"] = _REPO
        for _ in range(self.workers):
            try:
                proc = subprocess.Popen(
                    # -S: no site-packages; a worker needs only the standard library
                    [sys.executable, "-S", "-c", _WORKER_MAIN],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    env=env,
                )
            except OSError:
                break
            feeder = threading.Thread(target=self._feed, args=(proc,), daemon=True)
            feeder.start()
            self._procs.append(proc)
            self._feeders.append(feeder)
        if not self._procs:
            self.workers = 0

    def _feed(self, proc) -> None:
        """Feeder thread of one worker: chunks in (two in flight), answers out, until the
        queue is closed and empty. A worker that fails leaves its chunks unanswered."""
        import pickle
        import struct as _struct
        from collections import deque
        from contextlib import suppress

        in_flight: deque[tuple[int, int]] = deque()
        failed = False
        try:
            proc.stdin.write(_struct.pack("<Q", len(self._pickled_key)) + self._pickled_key)
            while True:
                while len(in_flight) < 2 and (chunk := self._take(not in_flight)) is not None:
                    blob = pickle.dumps(self.tasks[chunk[0] : chunk[1]], pickle.HIGHEST_PROTOCOL)
                    proc.stdin.write(_struct.pack("<Q", len(blob)) + blob)
                    proc.stdin.flush()
                    in_flight.append(chunk)
                if not in_flight:
                    break
                start, stop = in_flight.popleft()
                rows = pickle.loads(_read_frame(proc.stdout))
                if len(rows) == stop - start:
                    self._answers[start] = rows
        except (OSError, EOFError, ValueError, pickle.UnpicklingError, _struct.error):
            failed = True  # its chunks are read in rows()
        finally:
            with suppress(OSError):
                proc.stdin.close()
            with suppress(OSError):
                proc.stdout.close()
            if proc.wait() != 0 or failed:
                self._failures += 1

    def rows(self) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """One row per submitted task, in order; counts ``workers`` and ``worker_failures``."""
        self._cut(len(self.tasks), start_workers=False)  # the rest (all of a small scan)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        found: list[dict[str, Any] | None] = [None] * len(self.tasks)
        identities = Identities(self.pseudonymize)
        while (chunk := self._take(False)) is not None:  # this process takes its share (or all)
            found[chunk[0] : chunk[1]] = read_chunk(self.tasks[chunk[0] : chunk[1]], identities)
        for feeder in self._feeders:
            feeder.join()
        for start, rows in self._answers.items():
            found[start : start + len(rows)] = rows
        for index, row in enumerate(found):
            if row is None:  # read here: declined by the fast reader, or its worker failed
                task = self.tasks[index]
                found[index] = file_row(task, read_dicom_file(task.path), identities)
        return found, {"workers": len(self._procs), "worker_failures": self._failures}


def _read_frame(stream) -> bytes:
    """One length-prefixed blob from a binary stream (EOFError at its end)."""
    import struct as _struct

    head = stream.read(8)
    if len(head) != 8:
        raise EOFError("the stream ended")
    (size,) = _struct.unpack("<Q", head)
    blob = stream.read(size)
    if len(blob) != size:
        raise EOFError("the stream ended inside a blob")
    return blob


def main() -> None:
    """Worker: the pickled pseudonymizer, then chunks of tasks, on stdin (length-prefixed
    pickles); for each chunk, at once, its list of rows (None: declined) on stdout."""
    import gc
    import pickle
    import queue
    import struct as _struct
    import threading
    from contextlib import suppress

    gc.disable()  # a short-lived process that frees almost nothing (see scan_imaging)
    source, out = sys.stdin.buffer, sys.stdout.buffer
    identities = Identities(pickle.loads(_read_frame(source)))
    blobs: queue.SimpleQueue = queue.SimpleQueue()

    def receive() -> None:  # stdin is always drained: a large answer never blocks the feeder
        with suppress(EOFError, OSError):
            while True:
                blobs.put(_read_frame(source))
        blobs.put(None)

    threading.Thread(target=receive, daemon=True).start()
    while (blob := blobs.get()) is not None:
        rows = read_chunk(pickle.loads(blob), identities, fast_only=True)
        answer = pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL)
        out.write(_struct.pack("<Q", len(answer)) + answer)
        out.flush()


if __name__ == "__main__":
    main()
