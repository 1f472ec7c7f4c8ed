"""Record files as a header and rows: CSV/TSV (any common encoding), XLSX and JSON exports.

The one reader behind the grants and clinical ingests (and mapping files' header signatures):
- text tables: UTF-8 (with or without BOM), UTF-16 with BOM, else GB18030 (Excel on a Chinese
  Windows), else Windows-1252; the separator (``,`` tab ``;``) is sniffed on the header line;
- XLSX: the first worksheet with data (openpyxl, cached values); numbers as written
  (``65``, ``65.5``), dates ISO;
- JSON: one object, a list of objects, an API envelope (``{"results": [...]}``,
  ``{"data": {...}}``, ``{"data": [...]}``) or JSON lines; nested objects become ``parent.child``
  columns, lists of plain values are joined with ``; ``. The raw objects stay in ``records``.

The header is not assumed to be on the first row: :func:`find_header` skips title rows (a merged
title cell, a date line, an empty row) and takes the first row that names a known column, else
the first row that is as wide as the table and is not mostly numbers. Blank rows are dropped and
counted; a row that repeats the header (page breaks in exports) is dropped and counted.
Pure module (no Dagster import).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".tab")
XLSX_SUFFIXES = (".xlsx", ".xlsm")
XLS_SUFFIXES = (".xls",)  # the old binary workbook, still what many hospital/ISIS systems export
JSON_SUFFIXES = (".json", ".jsonl", ".jl", ".ndjson")
RECORD_SUFFIXES = TEXT_SUFFIXES + XLSX_SUFFIXES + XLS_SUFFIXES + JSON_SUFFIXES
ZIP_SUFFIXES = (".zip",)
HEADER_SCAN_ROWS = 30  # title rows above the header are looked for in this many non-blank rows
_NUMBER = re.compile(r"^[+-]?(\d[\d,]*\.?\d*|\.\d+)([eE][+-]?\d+)?%?$")
_PLACEHOLDER = re.compile(r"^Unnamed: \d+$")
_CJK_OR_WIDE = re.compile(r"[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef\u3000-\u303f]")


class SheetError(Exception):
    """A file that cannot be read as a table; ``rule`` is the quarantine rule."""

    def __init__(self, rule: str, message: str):
        super().__init__(message)
        self.rule = rule
        self.message = message


@dataclass
class Sheet:
    """A record file. ``rows`` are (position, line, cells): position is the spreadsheet row
    (XLSX), the CSV record number (header and blank lines counted) or the JSON record number;
    line is the physical line of a text file (None otherwise)."""

    header: list[str]
    rows: list[tuple[int, int | None, list[str | None]]]
    kind: str  # "text" | "xlsx" | "json"
    encoding: str | None = None
    header_row: int = 1  # 1-based row (line for text, spreadsheet row for xlsx) of the header
    title_rows: int = 0  # non-blank rows above the header
    blank_rows: int = 0
    repeated_headers: int = 0
    records: list[dict] = field(default_factory=list)  # JSON only: the raw objects
    part: str | None = None  # worksheet title when the workbook has several with data
    other_parts: list[str] = field(default_factory=list)  # read_sheet: the worksheets not read

    def index(self) -> dict[str, int]:
        """Normalized header name -> first column index."""
        out: dict[str, int] = {}
        for i, name in enumerate(self.header):
            out.setdefault(normalize_name(name), i)
        return out


# names and cells --------------------------------------------------------------------------------
_UNIT = re.compile(r"\s*[(\[]([^()\[\]]*)[)\]]\s*$")


def split_unit(header: str) -> tuple[str, str | None]:
    """("金额（万元）") -> ("金额", "万元"): NFKC, BOM removed, a trailing "(unit)" split off."""
    text = unicodedata.normalize("NFKC", header or "").replace("\ufeff", "").strip()
    match = _UNIT.search(text)
    if match and match.start() > 0:
        return text[: match.start()].strip(), match.group(1).strip()
    return text, None


def normalize_name(header: str) -> str:
    """A header as a comparable key: NFKC, lower case, unit removed, only letters/digits/CJK."""
    base, _unit = split_unit(header)
    return re.sub(r"[^0-9a-z\u3400-\u9fff]", "", base.lower())


def cell_text(value: object) -> str | None:
    """A spreadsheet or JSON value as the text a CSV would hold ('' -> None)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        if (value.hour, value.minute, value.second, value.microsecond) == (0, 0, 0, 0):
            return value.date().isoformat()
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return repr(value)
    text = str(value).strip()
    return text or None


def is_number_text(text: str | None) -> bool:
    return bool(text) and bool(_NUMBER.match(unicodedata.normalize("NFKC", text).strip()))


# header detection -------------------------------------------------------------------------------
def find_header(
    rows: list[list[str | None]], known: frozenset[str] | set[str] = frozenset()
) -> int:
    """Index (into ``rows``, all non-blank) of the header row; see the module docstring."""
    scan = rows[:HEADER_SCAN_ROWS]
    if not scan:
        return 0
    filled = [sum(1 for c in cells if c) for cells in scan]
    if known:
        for i, cells in enumerate(scan):
            if filled[i] >= 2 and any(normalize_name(c) in known for c in cells if c):
                if sum(1 for c in cells if c and _PLACEHOLDER.match(c)) * 2 >= filled[i]:
                    continue
                return i
    width = max(filled)
    for i, cells in enumerate(scan):
        if sum(1 for c in cells if c and _PLACEHOLDER.match(c)) * 2 >= filled[i]:
            continue  # a title row written by pandas above the header ("x, Unnamed: 1, ...")
        values = [c for c in cells if c]
        numbers = sum(1 for c in values if is_number_text(c))
        if filled[i] >= max(2, math.ceil(width / 2)) and numbers * 2 <= len(values):
            return i
    return 0


# reading ----------------------------------------------------------------------------------------
def decode(data: bytes) -> tuple[str, str]:
    """(text, encoding) of a text file; see the module docstring for the order tried."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16"), "utf-16"
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8"), "utf-8-sig"
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("gb18030")
        wide = [c for c in text if ord(c) > 127]
        if wide and sum(1 for c in wide if _CJK_OR_WIDE.match(c)) >= 0.9 * len(wide):
            return text, "gb18030"
    except UnicodeDecodeError:
        pass
    return data.decode("cp1252", errors="replace"), "cp1252"


def read_text(path: Path) -> tuple[str, str]:
    """(text, encoding) of a text file (see :func:`decode`)."""
    return decode(Path(path).read_bytes())


def _delimiter(line: str) -> str:
    counts = {d: line.count(d) for d in (",", "\t", ";")}
    return max(counts, key=lambda d: (counts[d], d == ","))


def _text_rows(data: bytes) -> tuple[list[tuple[int, int | None, list[str | None]]], str]:
    text, encoding = decode(data)
    first = next((line for line in text.splitlines() if line.strip()), "")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(first))
    out = []
    for number, cells in enumerate(reader, start=1):
        out.append(
            (number, reader.line_num, [c.replace("\ufeff", "").strip() or None for c in cells])
        )
    return out, encoding


MERGE_FILL_MAX_BYTES = 20_000_000  # larger workbooks are streamed (no merged-cell information)


def _xlsx_sheets(data: bytes) -> list[tuple[str, list[tuple[int, int | None, list[str | None]]]]]:
    """(worksheet title, rows) of every worksheet that holds data. A cell merged down over
    several rows (中心 over all of a center's patients) gives its value to every row it spans."""
    from openpyxl import load_workbook

    stream = len(data) > MERGE_FILL_MAX_BYTES
    book = load_workbook(io.BytesIO(data), read_only=stream, data_only=True)
    try:
        out = []
        for sheet in book.worksheets:
            values = [list(v) for v in sheet.iter_rows(values_only=True)]
            if not stream:
                _fill_down_merged(sheet, values)
            rows = [(n, None, [cell_text(v) for v in row]) for n, row in enumerate(values, start=1)]
            if any(any(c for c in cells) for _n, _line, cells in rows):
                out.append((sheet.title, rows))
        return out
    finally:
        book.close()


def _fill_down_merged(sheet, values: list[list]) -> None:
    for merged in sheet.merged_cells.ranges:
        if merged.max_row == merged.min_row or merged.min_row > len(values):
            continue  # a merge across columns only (a title) is left as one cell
        column = merged.min_col - 1
        anchor = values[merged.min_row - 1][column]
        for r in range(merged.min_row, min(merged.max_row, len(values))):
            row = values[r]
            row.extend([None] * (column + 1 - len(row)))
            row[column] = anchor


def _xls_sheets(data: bytes) -> list[tuple[str, list[tuple[int, int | None, list[str | None]]]]]:
    """(worksheet title, rows) of an old binary .xls workbook (xlrd): numbers as written."""
    import xlrd

    book = xlrd.open_workbook(file_contents=data)
    out = []
    for sheet in book.sheets():
        rows = []
        for r in range(sheet.nrows):
            cells: list[str | None] = []
            for cell in sheet.row(r):
                value = cell.value
                if cell.ctype in (xlrd.XL_CELL_EMPTY, xlrd.XL_CELL_BLANK, xlrd.XL_CELL_ERROR):
                    value = None
                elif cell.ctype == xlrd.XL_CELL_DATE:
                    value = xlrd.xldate_as_datetime(value, book.datemode)
                elif cell.ctype == xlrd.XL_CELL_BOOLEAN:
                    value = bool(value)
                elif cell.ctype == xlrd.XL_CELL_NUMBER and float(value).is_integer():
                    value = int(value)
                cells.append(cell_text(value))
            rows.append((r + 1, None, cells))
        if any(any(c for c in cells) for _n, _line, cells in rows):
            out.append((sheet.name, rows))
    return out


def _unwrap(value: object) -> list[dict]:
    """The record objects of a JSON document (API envelopes unwrapped)."""
    if isinstance(value, list):
        out: list[dict] = []
        for item in value:
            out.extend(_unwrap(item) if isinstance(item, dict) and _is_envelope(item) else [item])
        return [r for r in out if isinstance(r, dict)]
    if isinstance(value, dict):
        if _is_envelope(value):
            inner = value.get("results", value.get("data"))
            return _unwrap(inner if isinstance(inner, list) else [inner])
        return [value]
    return []


def _is_envelope(value: dict) -> bool:
    results = value.get("results")
    data = value.get("data")
    return isinstance(results, list) or (
        isinstance(data, dict | list) and not any(k in value for k in ("title", "name", "id"))
    )


def flatten(record: dict, prefix: str = "") -> dict[str, str | None]:
    """Nested objects -> ``a.b`` keys; lists of plain values joined with '; '."""
    out: dict[str, str | None] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, list):
            plain = [cell_text(v) for v in value if not isinstance(v, dict | list)]
            nested = [v for v in value if isinstance(v, dict)]
            if nested:
                out[name] = json.dumps(nested, ensure_ascii=False)
            else:
                out[name] = "; ".join(p for p in plain if p) or None
        else:
            out[name] = cell_text(value)
    return out


def _json_records(data: bytes) -> list[dict]:
    text, _encoding = decode(data)
    stripped = text.strip()
    if not stripped:
        return []
    try:
        return _unwrap(json.loads(stripped))
    except json.JSONDecodeError:
        records = []
        for number, line in enumerate(stripped.splitlines(), start=1):
            if line.strip():
                try:
                    records.extend(_unwrap(json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise SheetError(
                        "unreadable_file", f"line {number} is not JSON ({exc.msg})"
                    ) from exc
        return records


def read_sheets(
    path: Path, known: frozenset[str] | set[str] = frozenset(), header_row: int | None = None
) -> list[Sheet]:
    """Every table of a record file: one per worksheet with data (``Sheet.part`` = its title when
    the workbook has several), one per record file inside a ZIP archive (``part`` = the member),
    else one. Raises :class:`SheetError` (rule + message)."""
    path = Path(path)
    try:
        if path.name.lower().endswith(ZIP_SUFFIXES):
            return _zip_sheets(path, known, header_row)
        return _sheets(path.name, path.read_bytes(), known, header_row)
    except SheetError:
        raise
    except Exception as exc:  # any parser error is a quarantined file, never a crashed run
        detail = (str(exc).splitlines() or [type(exc).__name__])[0].replace(str(path), path.name)
        raise SheetError("unreadable_file", f"could not be read ({detail[:200]})") from exc


def _sheets(name: str, data: bytes, known, header_row) -> list[Sheet]:
    name = name.lower()
    if name.endswith(JSON_SUFFIXES):
        return [_json_sheet(data)]
    if name.endswith(XLSX_SUFFIXES + XLS_SUFFIXES):
        parts = _xls_sheets(data) if name.endswith(XLS_SUFFIXES) else _xlsx_sheets(data)
        if not parts:
            raise SheetError("empty_file", "has no header row and no data")
        sheets = []
        for title, raw in parts:
            sheet = _sheet_from_rows(raw, "xlsx", None, known, header_row)
            sheet.part = title if len(parts) > 1 else None
            sheets.append(sheet)
        return sheets
    raw, encoding = _text_rows(data)
    return [_sheet_from_rows(raw, "text", encoding, known, header_row)]


def _zip_sheets(path: Path, known, header_row) -> list[Sheet]:
    """The record files inside a ZIP archive (how NIH ExPORTER distributes its CSV files)."""
    import zipfile

    sheets = []
    with zipfile.ZipFile(path) as archive:
        members = [
            m
            for m in archive.infolist()
            if not m.is_dir()
            and not m.filename.startswith("__MACOSX/")
            and m.filename.lower().endswith(RECORD_SUFFIXES)
        ]
        if not members:
            raise SheetError("empty_file", "holds no CSV/TSV/XLSX/JSON file")
        for member in members:
            for sheet in _sheets(member.filename, archive.read(member), known, header_row):
                inner = f"{member.filename}:{sheet.part}" if sheet.part else member.filename
                sheet.part = inner if len(members) > 1 or sheet.part else None
                sheets.append(sheet)
    return sheets


def read_sheet(
    path: Path, known: frozenset[str] | set[str] = frozenset(), header_row: int | None = None
) -> Sheet:
    """The first table of a record file (see :func:`read_sheets`); ``other_parts`` names the
    other worksheets that hold data."""
    sheets = read_sheets(path, known, header_row)
    first = sheets[0]
    first.other_parts = [s.part for s in sheets[1:] if s.part]
    return first


def _json_sheet(data: bytes) -> Sheet:
    try:
        records = _json_records(data)
    except SheetError:
        raise
    except (OSError, ValueError) as exc:
        raise SheetError("unreadable_file", f"not readable as JSON ({exc})") from exc
    if not records:
        raise SheetError("empty_file", "holds no records")
    flat = [flatten(r) for r in records]
    header: list[str] = []
    seen: set[str] = set()
    for row in flat:
        for key in row:
            if key not in seen:
                seen.add(key)
                header.append(key)
    rows = [(i, None, [row.get(k) for k in header]) for i, row in enumerate(flat, 1)]
    return Sheet(header, rows, "json", records=records)


def _sheet_from_rows(raw, kind, encoding, known, header_row) -> Sheet:
    nonblank = [(i, row) for i, row in enumerate(raw) if any(row[2])]
    if not nonblank:
        raise SheetError("empty_file", "has no header row and no data")
    if header_row is not None:
        at = next((k for k, (_i, row) in enumerate(nonblank) if row[0] >= header_row), None)
        if at is None:
            raise SheetError("empty_file", f"has no row {header_row} (the mapping's header_row)")
    else:
        at = find_header([row[2] for _i, row in nonblank], known)
    raw_index, (position, _line, header_cells) = nonblank[at]
    header = [c or "" for c in header_cells]
    while header and not header[-1]:
        header.pop()  # trailing empty header cells (spreadsheet leftovers, trailing delimiters)
    body = raw[raw_index + 1 :]
    header_keys = [normalize_name(h) for h in header]
    rows, blank, repeated = [], 0, 0
    for row in body:
        cells = row[2]
        if not any(cells):
            blank += 1
            continue
        if (
            cells[0] == header_cells[0]  # cheap first: a repeated header repeats its first cell
            and sum(1 for c in cells if c) >= 2
            and [normalize_name(c or "") for c in cells[: len(header)]] == header_keys[: len(cells)]
        ):
            repeated += 1
            continue
        rows.append(row)
    return Sheet(
        header,
        rows,
        kind,
        encoding=encoding,
        header_row=position,
        title_rows=at,
        blank_rows=blank,
        repeated_headers=repeated,
    )
