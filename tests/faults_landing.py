"""A landing zone of real public files with faults of many kinds mixed in (for tests/test_faults.py).

Every fault is named (``FAULTS``: class -> the path it put under landing/, relative), so the
campaign can ask, for each one, where it went. Good files come from ../shared/data (pydicom's CT,
the AutoRadiomics prostate MR and masks, NCI project_io grants, MEDLINE records) and from lifelines'
bundled ``rossi`` recidivism data (clinical rows).
"""

from __future__ import annotations

import gzip
import os
import shutil
import zlib
from pathlib import Path

from tests.conftest import shared_path

BOMB_BYTES = 512 << 20  # decompresses to 512 MiB of zeros; ~0.5 MB on disk
HUGE_BYTES = 1 << 30  # a 1 GiB file without a newline (sparse: no disk, no time)


def _rossi(rows: slice, prefix: str):
    from lifelines.datasets import load_rossi

    frame = load_rossi().iloc[rows].reset_index(drop=True)
    frame.insert(0, "center_id", "C1")
    frame.insert(0, "patient_id", [f"{prefix}-{i:04d}" for i in range(len(frame))])
    return frame


def _gzip_bomb(path: Path, size: int = BOMB_BYTES) -> None:
    chunk = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip container
    with open(path, "wb") as out:
        for _ in range(size // len(chunk)):
            out.write(compressor.compress(chunk))
        out.write(compressor.flush())


def build_faulty_landing(landing: Path) -> dict[str, str]:
    """Write good and faulty files under ``landing``; return {fault class: path under landing}."""
    faults: dict[str, str] = {}
    imaging = landing / "imaging" / "C1"
    imaging.mkdir(parents=True)
    ct = shared_path("dicom", "pydicom", "CT_small.dcm").read_bytes()
    prostate = shared_path("dicom", "autoradiomics", "nifti", "prostate")
    # good: a real MR volume with a real one-label mask (naming convention), a real CT slice
    shutil.copy(prostate / "img.nii.gz", imaging / "prostate.nii.gz")
    shutil.copy(prostate / "seg_one_label.nii.gz", imaging / "prostate_mask.nii.gz")
    (imaging / "ct").mkdir()
    (imaging / "ct" / "ct_small.dcm").write_bytes(ct)

    def put(fault: str, relative: str, data: bytes | None = None) -> Path:
        path = landing / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if data is not None:
            path.write_bytes(data)
        faults[fault] = relative
        return path

    corrupt = bytearray(ct)
    corrupt[132:1200] = os.urandom(1068)  # keep the DICM preamble, garble the elements
    put("dicom_corrupt", "imaging/C1/bad/corrupt.dcm", bytes(corrupt))
    put("dicom_truncated", "imaging/C1/bad/truncated.dcm", ct[:300])  # cut inside its header
    mr = shared_path("dicom", "pydicom", "MR_small.dcm").read_bytes()
    # cut inside its pixel data: the header-only scan lists it; a case reading it would reject it
    put("dicom_truncated_pixels", "imaging/C1/mr/truncated_pixels.dcm", mr[: len(mr) * 2 // 3])
    put("dicom_empty_file", "imaging/C1/bad/empty.dcm", b"")
    put("nifti_not_nifti", "imaging/C1/bad/notes.nii.gz", b"this is a text file, not NIfTI\n")
    put("nifti_plain_text", "imaging/C1/bad/plain.nii", b"# not an image\n" * 20)
    img = gzip.decompress((prostate / "img.nii.gz").read_bytes())
    put("nifti_truncated", "imaging/C1/bad/cut.nii.gz", gzip.compress(img[: len(img) // 2]))
    _gzip_bomb(put("gzip_bomb", "imaging/C1/bad/bomb.nii.gz"))
    put(
        "mask_empty",
        "imaging/C1/empty_case_mask.nii.gz",
        (prostate / "seg_empty.nii.gz").read_bytes(),
    )
    shutil.copy(prostate / "img.nii.gz", imaging / "empty_case.nii.gz")
    os.mkfifo(put("fifo", "imaging/C1/bad/pipe.dcm"))
    os.symlink("/nonexistent/target.dcm", put("dangling_symlink", "imaging/C1/bad/dangling.dcm"))
    put("directory_named_like_file", "imaging/C1/bad/folder.dcm/inner.txt", b"x")
    faults["directory_named_like_file"] = "imaging/C1/bad/folder.dcm"
    outside = landing.parent / "outside_landing"
    outside.mkdir(exist_ok=True)
    (outside / "secret.dcm").write_bytes(ct)
    os.symlink(outside / "secret.dcm", put("symlink_leaving_landing", "imaging/C1/bad/escape.dcm"))

    clinical = landing / "clinical"
    clinical.mkdir(parents=True)
    _rossi(slice(0, 40), "ROS").to_csv(clinical / "rossi_utf8.csv", index=False)
    gbk = _rossi(slice(40, 60), "GBK")
    gbk["备注"] = ["随访" if i % 2 else "复发" for i in range(len(gbk))]
    put("csv_gbk", "clinical/rossi_gbk.csv", gbk.to_csv(index=False).encode("gbk"))
    put(
        "csv_utf16",
        "clinical/rossi_utf16.csv",
        _rossi(slice(60, 80), "U16").to_csv(index=False).encode("utf-16"),
    )
    put(
        "csv_bom",
        "clinical/rossi_bom.csv",
        _rossi(slice(80, 100), "BOM").to_csv(index=False).encode("utf-8-sig"),
    )
    _excel_merged_header(
        put("excel_merged_header", "clinical/rossi_merged.xlsx"), _rossi(slice(100, 120), "XLS")
    )
    put("csv_binary_garbage", "clinical/garbage.csv", os.urandom(4096))
    put(
        "csv_ragged_rows",
        "clinical/ragged.csv",
        b"patient_id,center_id,week,arrest\nR-1,C1,20,1\nR-2,C1\nR-3,C1,5,0,7,8\n",
    )
    put("csv_header_only", "clinical/header_only.csv", b"patient_id,center_id,week,arrest\n")
    huge = put("huge_single_line", "clinical/huge.csv")
    with open(huge, "wb") as handle:
        handle.truncate(HUGE_BYTES)  # sparse: 1 GiB of NUL bytes, one "line"

    grants = landing / "portfolio" / "grants"
    grants.mkdir(parents=True)
    lines = shared_path("funding", "nih", "project_io_NCI_CA_subset.csv").read_text().splitlines()
    (grants / "project_io.csv").write_text("\n".join(lines[:201]) + "\n")
    put(
        "grants_truncated_mid_row",
        "portfolio/grants/cut.csv",
        ("\n".join(lines[201:260]))[:-7].encode(),
    )
    pubs = landing / "portfolio" / "publications"
    pubs.mkdir(parents=True)
    shutil.copy(shared_path("publications", "medline", "pubmed_result1.txt"), pubs / "medline.txt")
    put("publications_binary", "portfolio/publications/garbage.nbib", os.urandom(2048))
    return faults


def _excel_merged_header(path: Path, frame) -> None:
    """Two header rows, with 'follow-up' merged over the week and arrest columns (as clinicians
    lay out spreadsheets)."""
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    columns = list(frame.columns)
    week = columns.index("week") + 1
    for j, name in enumerate(columns, start=1):
        sheet.cell(row=1, column=j, value="follow-up" if name in ("week", "arrest") else name)
        sheet.cell(row=2, column=j, value=name)
    sheet.merge_cells(start_row=1, start_column=week, end_row=1, end_column=week + 1)
    for i, row in enumerate(frame.itertuples(index=False), start=3):
        for j, value in enumerate(row, start=1):
            sheet.cell(row=i, column=j, value=value.item() if hasattr(value, "item") else value)
    book.save(path)
