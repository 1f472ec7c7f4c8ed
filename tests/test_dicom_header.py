"""The scan's own DICOM header reader against pydicom, on every real DICOM file we have.

Reference: pydicom (``io.read_header``: ``dcmread(stop_before_pixels=True)``) on the shared
files (pydicom's and highdicom's test files, CT_head, QIN-PROSTATE) and on the test files that
ship inside the installed pydicom package (transfer syntaxes, character sets, private and
undefined-length sequences, truncated files, DICOMDIR). For every file the fast reader answers,
everything the scan takes from a header must equal what pydicom gives; files it declines go to
pydicom in the scan, so they only need to be declined, never misread.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword

from assets.imaging import dicom_header, header_worker
from assets.imaging.dicom_scan import scan_imaging
from assets.imaging.io import ImagingError, read_header, sop_kind
from dagster_project.pseudonym import Pseudonymizer
from tests.conftest import shared_path

PYDICOM_FILES = Path(pydicom.__file__).parent / "data"


def _all_files() -> list[Path]:
    roots = [shared_path("dicom"), PYDICOM_FILES / "test_files", PYDICOM_FILES / "charset_files"]
    return sorted(p for root in roots for p in root.rglob("*") if p.is_file())


def _what_the_scan_takes(dataset) -> dict:
    out = {"kind": sop_kind(dataset), **header_worker.dicom_row(dataset)}
    for name in ("SeriesInstanceUID", "SOPInstanceUID", *header_worker.ID_TAGS):
        value = dataset.get(name)
        out[name] = None if value in (None, "") else str(value).strip()
    return out


def test_wanted_tags_match_the_dicom_dictionary():
    for keyword, (tag, vr) in dicom_header.WANTED.items():
        assert tag_for_keyword(keyword) == tag, keyword
        assert dictionary_VR(tag) == vr, keyword
    # the pydicom fallback reads the same tags
    assert set(header_worker.SCAN_TAGS) == set(dicom_header.WANTED) - {
        "DirectoryRecordSequence",
        "SpecificCharacterSet",
    }


def test_fast_reader_equals_pydicom_on_every_real_file():
    files = _all_files()
    answered, declined, differences = [], [], []
    for path in files:
        try:
            fast = dicom_header.read_header_values(path)
        except dicom_header.Decline:
            declined.append(path)
            continue
        try:
            reference = read_header(path, header_worker.SCAN_TAGS)
        except ImagingError as exc:  # pydicom refuses a file the fast reader read
            differences.append((path.name, f"pydicom: {exc}"))
            continue
        a, b = _what_the_scan_takes(fast), _what_the_scan_takes(reference)
        if a != b:
            differences.append((path.name, {k: (a[k], b[k]) for k in a if a[k] != b[k]}))
        answered.append(path)
    assert not differences, differences
    # it must answer the common case: CT_head, QIN, the demo-like explicit/implicit LE files
    names = {p.name for p in answered}
    assert len(answered) >= 300, (len(answered), len(declined))
    assert {"CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm"} <= names
    assert sum(p.parent.name == "CT_head" for p in answered) == 93
    # and decline what it does not handle: big endian, deflate, ISO 2022 / other character sets
    declined_names = {p.name for p in declined}
    assert {
        "MR_small_bigendian.dcm",
        "image_dfl.dcm",
        "chrRuss.dcm",
        "no_meta.dcm",
    } <= declined_names


def test_truncated_and_damaged_headers_are_declined_or_read_like_pydicom(tmp_path):
    """Cut CT_small.dcm at every byte offset inside its header: the fast reader either declines
    or gives what pydicom gives for the same cut file (a cut at an element boundary is a
    shorter, valid header for both)."""
    source = shared_path("dicom", "pydicom", "CT_small.dcm").read_bytes()
    path = tmp_path / "cut.dcm"
    outcomes = {"declined": 0, "same": 0}
    for cut in range(132, 1400, 3):
        path.write_bytes(source[:cut])
        try:
            fast = dicom_header.read_header_values(path)
        except dicom_header.Decline:
            outcomes["declined"] += 1
            continue
        reference = read_header(path, header_worker.SCAN_TAGS)
        assert _what_the_scan_takes(fast) == _what_the_scan_takes(reference), cut
        outcomes["same"] += 1
    assert outcomes["declined"] > 0 and outcomes["same"] > 0, outcomes


def test_scan_in_worker_processes_equals_scan_in_this_process(tmp_path):
    landing = tmp_path / "landing"
    shutil.copytree(shared_path("dicom", "autoradiomics", "CT_head"), landing / "imaging/A/ct")
    shutil.copytree(
        shared_path("dicom", "autoradiomics", "QIN-PROSTATE-001"), landing / "imaging/B/qin"
    )
    shutil.copytree(shared_path("dicom", "pydicom"), landing / "imaging/C/pydicom")
    pseudonymize = Pseudonymizer(b"test-workers")
    here = scan_imaging(landing, pseudonymize, workers=0)
    there = scan_imaging(landing, pseudonymize, workers=2)
    assert here.stats["workers"] == 0
    assert there.stats["workers"] == 2 and there.stats["worker_failures"] == 0
    assert there.series.equals(here.series)
    assert there.files.equals(here.files)
    assert [(r.rule, r.reason) for r in there.rejects] == [(r.rule, r.reason) for r in here.rejects]
    assert {k: v for k, v in there.stats.items() if k != "workers"} == {
        k: v for k, v in here.stats.items() if k != "workers"
    }
    # CT_head is one series of 93 slices, ordered like pydicom's full read orders them
    ct = there.series.filter(there.series["n_files"] == 93)
    assert ct.height == 1 and ct["modality"][0] == "CT"
