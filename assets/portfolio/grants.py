"""Grant files (landing/portfolio/grants/*.csv) -> the `grants` table: one row per grant.

Formats, detected from the header row (never from the file name):
- ``nsfc``: an NSFC export (批准号, 项目名称, 负责人, 依托单位, 项目类别, 金额（万元）, 批准年份, 结题年份,
  申请代码, 关键词 ... or the English headers "Approval Number", "Project Title" ...). UTF-8, UTF-8
  with BOM, GB18030 (Excel on a Chinese Windows) and UTF-16 with BOM are read.
- ``nih_exporter``: an NIH RePORTER ExPORTER project CSV (RePORTER_PRJ_C_FY<year>.csv; one row per
  application and fiscal year).
- ``nih_project_io``: the per-project summary of rnabioco/nihexporter (project_num, n_pubs, n_patents,
  total_cost), e.g. ../shared/data/funding/nih/project_io_NCI_CA_subset.csv.

Decisions (what a user can rely on):
- ``amount`` is in whole currency units of ``currency`` (``amount_unit`` says it: "CNY" / "USD").
  NSFC exports give 万元 (10k CNY): the amount is multiplied by 10 000; ``amount_original`` keeps the
  number as written and ``amount_original_unit`` its unit. An NSFC amount header without a unit
  is read as 万元 (the NSFC export convention) and counted in ``stats["assumed_10k_cny_files"]``.
- NIH ``grant_id`` is the core project number (R01CA123456). ExPORTER rows of one core project
  (fiscal years, supplements) are aggregated: ``amount`` = sum of TOTAL_COST over its rows
  (sub-project rows are skipped: their cost is already inside the parent's TOTAL_COST; the same
  APPLICATION_ID seen in several files counts once, newest file wins); ``start_year`` = first FY,
  ``end_year`` = year of the latest PROJECT_END (else last FY); title, PI, organisation from the
  latest fiscal year; ``amount_original`` stays null (a sum of years has no single cell).
- The same grant id in several files (or twice in one file) becomes one row; ``source_files`` lists
  every origin. Conflicting values: the newest file wins (file modification time, then path;
  within a file the later row), an empty cell never erases a value, and ``merge_conflicts``
  names the columns that disagreed.
- ``region``: NSFC from the institution through regions.yaml (lookups.region_for_institution);
  NIH from ORG_STATE as written. Unknown stays null. ``fund_type``: fund_types.yaml, with the
  original in ``fund_type_original``. ``is_imaging``: imaging_keywords.yaml on title + keywords.
- Quarantine (one Reject per row; ``stats`` units are data rows, a file that cannot be read as a
  grants table counts as one unit): missing_grant_id, amount_not_number, amount_negative,
  year_not_number, year_out_of_range (start year outside 1980..this year + 1; end year outside
  1980..this year + 1 + MAX_DURATION_YEARS), end_before_start, wrong_column_count,
  unknown_format, unreadable_file, empty_file.
Pure module (no Dagster import).
"""

from __future__ import annotations

import csv
import io
import os
import re
import unicodedata
from datetime import date
from pathlib import Path

import polars as pl

from assets.portfolio.lookups import (
    discipline_group_and_area,
    fund_type_for,
    imaging_terms,
    region_for_institution,
)
from dagster_project.quarantine import Reject

TARGET = "grants"
YEAR_MIN = 1980
MAX_DURATION_YEARS = 10  # an end year may lie this far beyond next year (multi-year awards)

GRANTS_SCHEMA: dict[str, pl.DataType] = {
    "grant_id": pl.String,
    "source": pl.String,
    "title": pl.String,
    "pi": pl.String,
    "institution": pl.String,
    "region": pl.String,
    "country": pl.String,
    "fund_type": pl.String,
    "fund_type_original": pl.String,
    "amount": pl.Float64,
    "currency": pl.String,
    "amount_unit": pl.String,
    "amount_original": pl.String,
    "amount_original_unit": pl.String,
    "start_year": pl.Int32,
    "end_year": pl.Int32,
    "discipline_code": pl.String,
    "discipline_group": pl.String,
    "discipline_area": pl.String,
    "keywords": pl.List(pl.String),
    "is_imaging": pl.Boolean,
    "imaging_terms": pl.List(pl.String),
    "n_fiscal_years": pl.Int32,
    "n_pubs": pl.Int64,
    "n_patents": pl.Int64,
    "source_format": pl.String,
    "source_files": pl.List(pl.String),
    "merge_conflicts": pl.List(pl.String),
}

# header aliases (normalized: NFKC, lowercase, a trailing "(unit)" removed, only letters/digits/CJK)
NSFC_ALIASES: dict[str, tuple[str, ...]] = {
    "grant_id": (
        "批准号",
        "项目批准号",
        "批准编号",
        "资助号",
        "项目编号",
        "approvalnumber",
        "approvalno",
        "grantnumber",
        "grantno",
        "grantid",
        "projectnumber",
        "projectno",
    ),
    "title": (
        "项目名称",
        "题目",
        "项目题目",
        "课题名称",
        "中文名称",
        "title",
        "projecttitle",
        "projectname",
    ),
    "pi": (
        "负责人",
        "项目负责人",
        "主持人",
        "申请人",
        "负责人姓名",
        "pi",
        "principalinvestigator",
        "projectleader",
        "leader",
        "investigator",
    ),
    "institution": (
        "依托单位",
        "单位",
        "申请单位",
        "单位名称",
        "依托单位名称",
        "工作单位",
        "institution",
        "hostinstitution",
        "supportinginstitution",
        "organization",
        "organisation",
        "affiliation",
    ),
    "fund_type": (
        "项目类别",
        "资助类别",
        "项目类型",
        "类别",
        "资助类型",
        "fundtype",
        "fundingtype",
        "programtype",
        "projecttype",
        "projectcategory",
        "category",
        "program",
        "programme",
    ),
    "amount": (
        "金额",
        "资助金额",
        "批准金额",
        "经费",
        "资助经费",
        "直接费用",
        "amount",
        "funding",
        "fundingamount",
        "grantamount",
        "approvedamount",
    ),
    "start_year": (
        "批准年份",
        "批准年度",
        "年份",
        "资助年度",
        "年度",
        "立项年份",
        "批准时间",
        "approvalyear",
        "year",
        "fundingyear",
        "startyear",
    ),
    "end_year": (
        "结题年份",
        "结题年度",
        "结束年份",
        "结题时间",
        "截止年份",
        "endyear",
        "completionyear",
        "conclusionyear",
    ),
    "period": (
        "起止年月",
        "起止时间",
        "研究期限",
        "执行期限",
        "资助期限",
        "period",
        "researchperiod",
        "duration",
    ),
    "discipline_code": (
        "申请代码",
        "学科代码",
        "学科分类代码",
        "申请代码1",
        "disciplinecode",
        "applicationcode",
        "subjectcode",
    ),
    "keywords": ("关键词", "中文关键词", "关键字", "keywords", "keyword"),
}
_NSFC_ONLY = {"approvalnumber", "approvalno", "approvalyear", "applicationcode"}
_TEN_THOUSAND = re.compile(r"万|10k|10,000|10 000|10000|ten thousand", re.IGNORECASE)
_PLAIN_CURRENCY = re.compile(r"元|yuan|cny|rmb", re.IGNORECASE)
_UNIT = re.compile(r"\s*\(([^()]*)\)\s*$")
_LIST_NUMBER = re.compile(r"^\s*(?:\d{1,4}\s*[.、)]|\(\d{1,4}\))\s*(?!\d)")
_KEYWORD_SPLIT = re.compile(r"[;；,，、|]+")
_SPACES = re.compile(r"[\s\u00a0\u3000]+")


# small parsers ----------------------------------------------------------------------------------
def clean_text(value: str | None) -> str | None:
    """Whitespace of export artifacts (NBSP, ideographic space, zero-width) collapsed; '' -> None."""
    if value is None:
        return None
    text = _SPACES.sub(" ", str(value).replace("\u200b", "").replace("\ufeff", "")).strip()
    return text or None


def clean_title(value: str | None) -> str | None:
    """A title without export artifacts: a leading list number ("12." / "12、" / "(12)"), stray
    whitespace and wrapping quotes. "2.5D ..." keeps its number (a digit follows the dot)."""
    text = clean_text(value)
    if text is None:
        return None
    text = _LIST_NUMBER.sub("", text, count=1)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text or None


def parse_amount(raw: str | None) -> float | None:
    """A number as written ("55", "55.00", "1,234.5", "¥60"); None when empty.

    Raises ValueError when the text is not a number (the caller quarantines the row)."""
    text = clean_text(raw)
    if text is None:
        return None
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(r"[,\s¥$￥]", "", text)
    if text.upper() in {"NAN", "INF", "-INF", "+INF", "INFINITY"}:
        raise ValueError(raw)
    return float(text)


def parse_year(raw: str | None) -> int | None:
    """A year from "2019", "2019年", "2019.0", "2019-06-30", "06/30/2019"; None when empty.

    Raises ValueError when no year can be read."""
    text = clean_text(raw)
    if text is None:
        return None
    text = unicodedata.normalize("NFKC", text)
    match = re.fullmatch(r"(\d{4})(?:\.0+|年.*|[-/.]\d{1,2}(?:[-/.]\d{1,2})?(?:[ T].*)?)?", text)
    if match:
        return int(match.group(1))
    match = re.fullmatch(r"\d{1,2}/\d{1,2}/(\d{4})(?: .*)?", text)
    if match:
        return int(match.group(1))
    raise ValueError(raw)


def split_keywords(raw: str | None) -> list[str]:
    text = clean_text(raw)
    if text is None:
        return []
    return [k.strip() for k in _KEYWORD_SPLIT.split(text) if k.strip()]


def normalize_header(header: str) -> tuple[str, str | None]:
    """(alias key, unit) of a header cell: "金额（万元）" -> ("金额", "万元")."""
    text = unicodedata.normalize("NFKC", header or "").replace("\ufeff", "").strip()
    unit = None
    match = _UNIT.search(text)
    if match and match.start() > 0:
        unit = match.group(1).strip()
        text = text[: match.start()]
    key = re.sub(r"[^0-9a-z\u3400-\u9fff]", "", text.lower())
    return key, unit


def relative_path(path: Path, landing: Path) -> str:
    """Path relative to landing/ (stored paths never carry absolute locations)."""
    return Path(os.path.relpath(Path(path).resolve(), Path(landing).resolve())).as_posix()


# reading ----------------------------------------------------------------------------------------
def read_text(path: Path) -> tuple[str, str]:
    """(text, encoding): UTF-16 with BOM, UTF-8 (with or without BOM), else GB18030."""
    data = Path(path).read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16"), "utf-16"
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8"), "utf-8-sig"
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return data.decode("gb18030"), "gb18030"


def _delimiter(header_line: str) -> str:
    counts = {d: header_line.count(d) for d in (",", "\t", ";")}
    return max(counts, key=lambda d: (counts[d], d == ","))


def detect_format(headers: list[str]) -> str | None:
    """nsfc / nih_exporter / nih_project_io from the header cells; None when unknown."""
    keys = {normalize_header(h)[0] for h in headers}
    if {"coreprojectnum", "fy"} <= keys:
        return "nih_exporter"
    if {"projectnum", "totalcost"} <= keys:
        return "nih_project_io"
    if keys & set(NSFC_ALIASES["grant_id"]):
        cjk = any(re.search(r"[\u3400-\u9fff]", h or "") for h in headers)
        units = [normalize_header(h)[1] or "" for h in headers]
        if cjk or keys & _NSFC_ONLY or any(_TEN_THOUSAND.search(u) for u in units):
            return "nsfc"
    return None


class _FileRows:
    """The data rows of one CSV file with their row and line numbers."""

    def __init__(self, text: str):
        lines = text.splitlines()
        first = next((line for line in lines if line.strip()), "")
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(first))
        self.header: list[str] = []
        self.rows: list[tuple[int, int, list[str]]] = []  # (row number, line number, cells)
        self.blank_rows = 0
        for cells in reader:
            if not self.header:
                if any(c.strip() for c in cells):
                    self.header = [c.replace("\ufeff", "").strip() for c in cells]
                continue
            if not any(c.strip() for c in cells):
                self.blank_rows += 1
                continue
            self.rows.append((len(self.rows) + 1, reader.line_num, cells))


# one file -> records ----------------------------------------------------------------------------
class _Problems:
    """Collects a row's rule violations; the first names the Reject's rule, all go in the reason."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, rule: str, text: str) -> None:
        self.items.append((rule, text))

    def reject(self, path: str, record: str) -> Reject | None:
        if not self.items:
            return None
        rule = self.items[0][0]
        reason = "; ".join(f"{r}: {t}" for r, t in self.items)
        return Reject(path, TARGET, rule, reason, record=record)


def _check_amount(problems: _Problems, raw: str | None, column: str, where: str) -> float | None:
    try:
        value = parse_amount(raw)
    except ValueError:
        problems.add(
            "amount_not_number",
            f"{where} has amount {clean_text(raw)!r} in column {column!r}, which is not a number "
            f"(write a plain number such as 55.5 and land the file again)",
        )
        return None
    if value is not None and value < 0:
        problems.add(
            "amount_negative",
            f"{where} has a negative amount {clean_text(raw)} in column {column!r} "
            f"(correct the amount and land the file again)",
        )
        return None
    return value


def _check_year(
    problems: _Problems, raw: str | None, column: str, where: str, label: str, upper: int
) -> int | None:
    try:
        year = parse_year(raw)
    except ValueError:
        problems.add(
            "year_not_number",
            f"{where} has {label} {clean_text(raw)!r} in column {column!r}, which is not a year "
            f"(write a 4-digit year and land the file again)",
        )
        return None
    if year is not None and not YEAR_MIN <= year <= upper:
        problems.add(
            "year_out_of_range",
            f"{where} has {label} {year} in column {column!r}, outside {YEAR_MIN}..{upper} "
            f"(correct the year and land the file again)",
        )
        return None
    return year


def _check_order(problems: _Problems, start: int | None, end: int | None, where: str) -> None:
    if start is not None and end is not None and end < start:
        problems.add(
            "end_before_start",
            f"{where} ends in {end}, before it starts in {start} (correct the years and land the "
            f"file again)",
        )


def _column_map(headers: list[str], aliases: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """field -> column index (first matching header wins)."""
    found: dict[str, int] = {}
    for index, header in enumerate(headers):
        key, _unit = normalize_header(header)
        for field, names in aliases.items():
            if field not in found and key in names:
                found[field] = index
    return found


def _cell(cells: list[str], index: int | None) -> str | None:
    if index is None or index >= len(cells):
        return None
    return clean_text(cells[index])


def _parse_nsfc(table: _FileRows, path: str, order: int, stats: dict):
    columns = _column_map(table.header, NSFC_ALIASES)
    unit = normalize_header(table.header[columns["amount"]])[1] if "amount" in columns else None
    if unit and _TEN_THOUSAND.search(unit):
        factor, unit_label = 10_000.0, "10k CNY"
    elif unit and _PLAIN_CURRENCY.search(unit):
        factor, unit_label = 1.0, "CNY"
    else:
        factor, unit_label = 10_000.0, "10k CNY"
        if "amount" in columns:
            stats["assumed_10k_cny_files"].append(path)
    names = {f: table.header[i] for f, i in columns.items()}
    this_year = date.today().year
    records, rejects = [], []
    for row_no, line_no, cells in table.rows:
        record = f"row {row_no} (line {line_no})"
        where = f"row {row_no} (line {line_no}) of {path}"
        if len(cells) > len(table.header):
            rejects.append(_wrong_columns(path, record, where, len(cells), len(table.header)))
            continue
        problems = _Problems()
        grant_id = _cell(cells, columns.get("grant_id"))
        grant_id = grant_id.replace(" ", "") if grant_id else None
        if not grant_id:
            problems.add(
                "missing_grant_id",
                f"{where} has no grant id (column {names.get('grant_id')!r} is empty; add the "
                f"approval number and land the file again)",
            )
        else:
            where = f"{where} (grant {grant_id})"
        raw_amount = _cell(cells, columns.get("amount"))
        amount = _check_amount(problems, raw_amount, names.get("amount", "amount"), where)
        start = _check_year(
            problems,
            _cell(cells, columns.get("start_year")),
            names.get("start_year", ""),
            where,
            "start year",
            this_year + 1,
        )
        end = _check_year(
            problems,
            _cell(cells, columns.get("end_year")),
            names.get("end_year", ""),
            where,
            "end year",
            this_year + 1 + MAX_DURATION_YEARS,
        )
        period = re.findall(r"(?:19|20)\d{2}", _cell(cells, columns.get("period")) or "")
        if period and start is None and "start_year" not in columns:
            start = _check_year(
                problems, period[0], names["period"], where, "start year", this_year + 1
            )
        if period and end is None and "end_year" not in columns:
            end = _check_year(
                problems,
                period[-1],
                names["period"],
                where,
                "end year",
                this_year + 1 + MAX_DURATION_YEARS,
            )
        _check_order(problems, start, end, where)
        reject = problems.reject(path, record)
        if reject:
            rejects.append(reject)
            continue
        records.append(
            {
                "grant_id": grant_id,
                "source": "nsfc",
                "title": clean_title(_cell(cells, columns.get("title"))),
                "pi": _cell(cells, columns.get("pi")),
                "institution": _cell(cells, columns.get("institution")),
                "country": "China",
                "fund_type_original": _cell(cells, columns.get("fund_type")),
                "amount": None if amount is None else round(amount * factor, 2),
                "currency": "CNY",
                "amount_unit": "CNY",
                "amount_original": raw_amount,
                "amount_original_unit": unit_label if raw_amount is not None else None,
                "start_year": start,
                "end_year": end,
                "discipline_code": _cell(cells, columns.get("discipline_code")),
                "keywords": split_keywords(_cell(cells, columns.get("keywords"))),
                "source_format": "nsfc",
                "_order": (order, row_no),
                "_file": path,
            }
        )
    return records, rejects


def _wrong_columns(path: str, record: str, where: str, found: int, expected: int) -> Reject:
    return Reject(
        path,
        TARGET,
        "wrong_column_count",
        f"wrong_column_count: {where} has {found} cells but the header has {expected} "
        f"(quote cells that contain the delimiter and land the file again)",
        record=record,
    )


def _contact_pi(names: str | None) -> str | None:
    """The contact PI of an ExPORTER PI_NAMEs cell ("A, B (contact); C, D;"), else the first."""
    if not names:
        return None
    parts = [p.strip() for p in names.split(";") if p.strip()]
    for part in parts:
        if "(contact)" in part.lower():
            return clean_text(re.sub(r"\(contact\)", "", part, flags=re.IGNORECASE))
    return clean_text(parts[0]) if parts else None


def _parse_nih_exporter(table: _FileRows, path: str, order: int):
    index = {normalize_header(h)[0]: i for i, h in enumerate(table.header)}

    def cell(cells: list[str], name: str) -> str | None:
        return _cell(cells, index.get(name))

    this_year = date.today().year
    records, rejects = [], []
    for row_no, line_no, cells in table.rows:
        record = f"row {row_no} (line {line_no})"
        where = f"row {row_no} (line {line_no}) of {path}"
        if len(cells) > len(table.header):
            rejects.append(_wrong_columns(path, record, where, len(cells), len(table.header)))
            continue
        problems = _Problems()
        grant_id = (cell(cells, "coreprojectnum") or "").replace(" ", "").upper() or None
        if not grant_id:
            problems.add(
                "missing_grant_id",
                f"{where} has no grant id (column 'CORE_PROJECT_NUM' is empty; fill it in or "
                f"remove the row, and land the file again)",
            )
        else:
            where = f"{where} (grant {grant_id})"
        raw_amount = cell(cells, "totalcost")
        amount = _check_amount(problems, raw_amount, "TOTAL_COST", where)
        fiscal_year = _check_year(
            problems, cell(cells, "fy"), "FY", where, "fiscal year", this_year + 1
        )
        start = _year_or_none(cell(cells, "projectstart"))
        end = _year_or_none(cell(cells, "projectend"))
        reject = problems.reject(path, record)
        if reject:
            rejects.append(reject)
            continue
        subproject = bool(cell(cells, "subprojectid"))
        country = cell(cells, "orgcountry")
        records.append(
            {
                "grant_id": grant_id,
                "source": "nih",
                "title": clean_title(cell(cells, "projecttitle")),
                "pi": _contact_pi(cell(cells, "pinames")),
                "institution": cell(cells, "orgname"),
                "region": cell(cells, "orgstate"),
                "country": country.title() if country else None,
                "fund_type_original": (cell(cells, "activity") or grant_id[:3]).upper(),
                # sub-project cost is already inside the parent row's TOTAL_COST
                "amount": None if subproject else amount,
                "currency": "USD",
                "amount_unit": "USD",
                "amount_original": None if subproject else raw_amount,
                "amount_original_unit": "USD" if raw_amount and not subproject else None,
                "discipline_code": grant_id[3:5],
                "keywords": split_keywords(cell(cells, "projectterms")),
                "source_format": "nih_exporter",
                "_fy": fiscal_year,
                "_project_start": start,
                "_project_end": end,
                "_application_id": cell(cells, "applicationid"),
                "_order": (order, row_no),
                "_file": path,
            }
        )
    return records, rejects


def _year_or_none(raw: str | None) -> int | None:
    try:
        return parse_year(raw)
    except ValueError:
        return None


def _parse_nih_project_io(table: _FileRows, path: str, order: int):
    index = {normalize_header(h)[0]: i for i, h in enumerate(table.header)}
    records, rejects = [], []
    for row_no, line_no, cells in table.rows:
        record = f"row {row_no} (line {line_no})"
        where = f"row {row_no} (line {line_no}) of {path}"
        if len(cells) > len(table.header):
            rejects.append(_wrong_columns(path, record, where, len(cells), len(table.header)))
            continue
        problems = _Problems()
        grant_id = (_cell(cells, index.get("projectnum")) or "").replace(" ", "").upper() or None
        if not grant_id:
            problems.add(
                "missing_grant_id",
                f"{where} has no grant id (column 'project_num' is empty; fill it in or remove "
                f"the row, and land the file again)",
            )
        else:
            where = f"{where} (grant {grant_id})"
        raw_amount = _cell(cells, index.get("totalcost"))
        amount = _check_amount(problems, raw_amount, "total_cost", where)
        reject = problems.reject(path, record)
        if reject:
            rejects.append(reject)
            continue
        records.append(
            {
                "grant_id": grant_id,
                "source": "nih",
                "fund_type_original": grant_id[:3],
                "amount": amount,
                "currency": "USD",
                "amount_unit": "USD",
                "amount_original": raw_amount,
                "amount_original_unit": "USD" if raw_amount is not None else None,
                "discipline_code": grant_id[3:5],
                "n_pubs": _int_or_none(_cell(cells, index.get("npubs"))),
                "n_patents": _int_or_none(_cell(cells, index.get("npatents"))),
                "source_format": "nih_project_io",
                "_order": (order, row_no),
                "_file": path,
            }
        )
    return records, rejects


def _int_or_none(raw: str | None) -> int | None:
    try:
        return None if raw is None else int(float(raw))
    except ValueError:
        return None


# merging ----------------------------------------------------------------------------------------
_MERGED_FIELDS = (
    "source",
    "title",
    "pi",
    "institution",
    "region",
    "country",
    "fund_type_original",
    "amount",
    "currency",
    "amount_unit",
    "amount_original",
    "amount_original_unit",
    "start_year",
    "end_year",
    "discipline_code",
    "keywords",
    "n_fiscal_years",
    "n_pubs",
    "n_patents",
    "source_format",
)


def _aggregate_exporter(rows: list[dict]) -> tuple[list[dict], int]:
    """ExPORTER application rows -> one record per core project; returns (records, rows merged)."""
    by_application: dict[str, dict] = {}
    anonymous = []
    for row in sorted(rows, key=lambda r: r["_order"]):
        if row["_application_id"]:
            by_application[row["_application_id"]] = row  # newest file wins
        else:
            anonymous.append(row)
    unique = list(by_application.values()) + anonymous
    by_grant: dict[str, list[dict]] = {}
    for row in unique:
        by_grant.setdefault(row["grant_id"], []).append(row)
    records = []
    for grant_id, group in by_grant.items():
        group.sort(key=lambda r: (r["_fy"] or 0, r["_order"]))
        latest = dict(group[-1])
        amounts = [r["amount"] for r in group if r["amount"] is not None]
        ends = [r["_project_end"] for r in group if r["_project_end"] is not None]
        years = [r["_fy"] for r in group if r["_fy"] is not None]
        latest.update(
            grant_id=grant_id,
            amount=round(sum(amounts), 2) if amounts else None,
            amount_original=None,  # a sum of fiscal years has no single original cell
            amount_original_unit="USD" if amounts else None,
            start_year=min(years) if years else None,
            end_year=max(ends) if ends else (max(years) if years else None),
            n_fiscal_years=len(set(years)) or None,
            _files=sorted({r["_file"] for r in group}),
            _order=max(r["_order"] for r in group),
        )
        records.append(latest)
    return records, len(rows) - len(records)


def _merge(records: list[dict]) -> tuple[list[dict], int]:
    """Records of the same grant id -> one (newest wins, empty never erases); (rows, merged)."""
    by_grant: dict[str, list[dict]] = {}
    for record in sorted(records, key=lambda r: r["_order"]):
        by_grant.setdefault(record["grant_id"], []).append(record)
    merged_rows = []
    for grant_id, group in by_grant.items():
        out: dict = {"grant_id": grant_id}
        conflicts: set[str] = set()
        files: list[str] = []
        for record in group:  # oldest first: later records overwrite
            for name in record.get("_files") or [record["_file"]]:
                if name not in files:
                    files.append(name)
            for field in _MERGED_FIELDS:
                value = record.get(field)
                if value is None or value == []:
                    continue
                if out.get(field) not in (None, []) and out[field] != value:
                    conflicts.add(field)
                out[field] = value
        out["source_files"] = sorted(files)
        out["merge_conflicts"] = sorted(conflicts)
        merged_rows.append(out)
    return merged_rows, len(records) - len(merged_rows)


def _derive(row: dict) -> dict:
    source = row.get("source") or "nsfc"
    row["fund_type"] = fund_type_for(source, row.get("fund_type_original"))
    if source == "nsfc":
        row["region"] = region_for_institution(row.get("institution"))
    row["discipline_group"], row["discipline_area"] = discipline_group_and_area(
        source, row.get("discipline_code")
    )
    terms = imaging_terms(row.get("title"), *(row.get("keywords") or []))
    row["imaging_terms"] = terms
    row["is_imaging"] = bool(terms)
    row["keywords"] = row.get("keywords") or []
    return row


def frame_from_rows(rows: list[dict], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """A typed frame from row dicts; list columns go through Arrow (polars' per-row path is slow)."""
    import pyarrow as pa

    columns = {}
    for name, dtype in schema.items():
        values = [r.get(name) for r in rows]
        if isinstance(dtype, pl.List):
            columns[name] = pl.from_arrow(pa.array(values, type=pa.list_(pa.string())))
        else:
            columns[name] = pl.Series(name, values, dtype=dtype, strict=False)
    return pl.DataFrame(columns).cast(schema)


def empty_grants() -> pl.DataFrame:
    return pl.DataFrame(schema=GRANTS_SCHEMA)


# entry point ------------------------------------------------------------------------------------
def load_grants(files: list[Path], landing: Path) -> tuple[pl.DataFrame, list[Reject], dict]:
    """Grant CSV files -> (grants table, rejects, stats). See the module docstring for the rules.

    ``stats``: landed / ingested / quarantined / merged (units: data rows; an unreadable file is
    one unit), plus files, formats (file -> format), encodings, blank_rows, assumed_10k_cny_files.
    """
    stats: dict = {
        "landed": 0,
        "ingested": 0,
        "quarantined": 0,
        "merged": 0,
        "files": len(files),
        "formats": {},
        "encodings": {},
        "blank_rows": 0,
        "assumed_10k_cny_files": [],
    }
    rejects: list[Reject] = []
    plain: list[dict] = []
    exporter: list[dict] = []
    # newest last: modification time, then path, so "newest file wins" is a plain overwrite
    ordered = sorted(files, key=lambda p: (Path(p).stat().st_mtime, str(p)))
    for order, file in enumerate(ordered):
        path = relative_path(file, landing)
        try:
            text, encoding = read_text(file)
        except (OSError, UnicodeDecodeError) as exc:
            stats["landed"] += 1
            rejects.append(
                _file_reject(
                    path,
                    "unreadable_file",
                    f"{path} cannot be read as text ({type(exc).__name__}); "
                    f"save it as UTF-8 CSV and land it again",
                )
            )
            continue
        stats["encodings"][path] = encoding
        table = _FileRows(text)
        stats["blank_rows"] += table.blank_rows
        if not table.header:
            stats["landed"] += 1
            rejects.append(
                _file_reject(
                    path,
                    "empty_file",
                    f"{path} has no header row and no data; land a CSV export with its header",
                )
            )
            continue
        fmt = detect_format(table.header)
        stats["formats"][path] = fmt
        if fmt is None:
            stats["landed"] += 1
            shown = ", ".join(table.header[:8])
            rejects.append(
                _file_reject(
                    path,
                    "unknown_format",
                    f"{path} is neither an NSFC export (needs a grant id column such as 批准号 / "
                    f"Approval Number) nor an NIH ExPORTER (CORE_PROJECT_NUM, FY) or project_io "
                    f"(project_num, total_cost) file; header starts with: {shown}. Rename the columns "
                    f"and land it again",
                )
            )
            continue
        stats["landed"] += len(table.rows)
        if fmt == "nsfc":
            records, bad = _parse_nsfc(table, path, order, stats)
            plain.extend(records)
        elif fmt == "nih_exporter":
            records, bad = _parse_nih_exporter(table, path, order)
            exporter.extend(records)
        else:
            records, bad = _parse_nih_project_io(table, path, order)
            plain.extend(records)
        rejects.extend(bad)
    aggregated, merged_exporter = _aggregate_exporter(exporter)
    rows, merged = _merge(plain + aggregated)
    stats["quarantined"] = len(rejects)
    stats["merged"] = merged_exporter + merged
    stats["ingested"] = len(rows)
    if not rows:
        return empty_grants(), rejects, stats
    derived = [_derive(r) for r in rows]
    frame = frame_from_rows(derived, GRANTS_SCHEMA)
    return frame.select(list(GRANTS_SCHEMA)).sort("grant_id"), rejects, stats


def _file_reject(path: str, rule: str, text: str) -> Reject:
    return Reject(path, TARGET, rule, f"{rule}: {text}", record="")
