"""Grant files (landing/portfolio/grants/**) -> the `grants` table: one row per grant.

Formats, detected from the header (never from the file name); CSV/TSV, XLSX and JSON are read
by ``dagster_project.sheets`` (any common encoding; title rows above the header skipped):
- ``nsfc``: an NSFC export in any of the shapes groups have: the applicant/institution export
  with Chinese headers (批准号, 项目名称, 负责人, 依托单位, 项目类别, 金额（万元）, 批准年份 ...),
  records of the NSFC's public project database with its own English field names (ratifyNo,
  projectName, projectAdmin, dependUnit, supportNum, code, researchTimeScope ...; JSON as the
  database API returns it, or flattened), and per-discipline files as collection tools write
  them (one file per 申请代码 such as C0105.csv / C0501.2019.xlsx: approveText, title, personText,
  money, approveYear, organization ... or project_id, person, institution, money,
  approval_year ...). Numbered titles ("1.聚琥珀酸...") lose their list number.
- ``nih_exporter``: an NIH RePORTER ExPORTER project CSV (RePORTER_PRJ_C_FY<year>.csv; one row per
  application and fiscal year).
- ``nih_reporter_api``: NIH RePORTER API v2 JSON (the ``results`` of ``/v2/projects/search``, an
  envelope or a list of project objects): the same rules as ExPORTER (award_amount = TOTAL_COST).
- ``nih_reporter_export``: the RePORTER website's Export CSV/XLSX (SearchResult_Export: Project
  Number, Fiscal Year, Total Cost, Contact PI / Project Leader, Organization Name ..., with its
  metadata rows above the header): the same rules (Project Number -> core project number).
- ``nih_project_io``: the per-project summary of rnabioco/nihexporter (project_num, n_pubs, n_patents,
  total_cost), e.g. ../shared/data/funding/nih/project_io_NCI_CA_subset.csv.
- ``mapping:<file>``: any other table, through a mapping file in ``LAKE_HOME/mappings/``
  (``dagster_project.mappings``); a mapping wins over the built-in formats.

Decisions (what a user can rely on):
- ``amount`` is in whole currency units of ``currency`` (``amount_unit`` says it: "CNY" / "USD").
  NSFC exports give 万元 (10k CNY): the amount is multiplied by 10 000; ``amount_original`` keeps the
  number as written and ``amount_original_unit`` its unit. An NSFC amount header without a unit
  is read as 万元 (the NSFC export convention) and counted in ``stats["assumed_10k_cny_files"]``,
  unless the column's median is 10 000 or more (that would be 1亿 per grant): then it is read
  as 元 and counted in ``stats["assumed_cny_files"]``.
  A unit written in the cell wins over the column's: "50万" and "65.0（万元）" are 10k CNY,
  "500000元" is CNY. Full-width digits and separators are read (NFKC).
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
- Not records: a read-me/licence, a file that is no table export (.md, .pdf, .docx, images) or a
  code list beside the exports (every column a code or a name, e.g. mainCode, subCode, subName)
  is skipped: listed in ``stats["skipped_files"]`` (the asset's metadata) with the reason, not
  in ``quarantine`` and not counted as landed grants. A 合计/total line is no grant either
  (``stats["summary_rows"]``).
- Quarantine (one Reject per row; ``stats`` units are data rows, a file that cannot be read as a
  grants table counts as one unit): missing_grant_id, amount_not_number, amount_negative,
  year_not_number, year_out_of_range (start year outside 1980..this year + 1; end year outside
  1980..this year + 1 + MAX_DURATION_YEARS), end_before_start, wrong_column_count (a text row
  with non-empty cells beyond the header), unknown_format (with the header and a ready-to-edit
  mapping skeleton in the reason), unreadable_file, empty_file.
Pure module (no Dagster import).
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from dataclasses import field as dc_field
from datetime import date
from pathlib import Path

import polars as pl

from assets.portfolio.lookups import (
    discipline_group_and_area,
    fund_type_for,
    imaging_terms,
    region_for_institution,
)
from dagster_project.mappings import (
    GRANT_FIELDS,
    ColumnRule,
    Mapping,
    mapping_for,
    skeleton,
)
from dagster_project.quarantine import Reject
from dagster_project.sheets import (
    RECORD_SUFFIXES,
    ZIP_SUFFIXES,
    Sheet,
    SheetError,
    cell_text,
    normalize_name,
    read_sheets,
    split_unit,
)

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
GRANT_ALIASES: dict[str, tuple[str, ...]] = {
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
        "ratifyno",
        "approvetext",
        "approvalnum",
        "projectid",
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
        "projectnamec",
        "name",
        "xmmc",
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
        "projectadmin",
        "personincharge",
        "personname",
        "psnname",
        "persontext",
        "person",
        "principalinvestigatorname",
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
        "dependunit",
        "organizationname",
        "orgname",
        "unitname",
        "supportingunit",
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
        "projecttypename",
        "fundtypetext",
        "searchfund",
        "supporttype",
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
        "supportnum",
        "money",
        "approvalamount",
        "approvedmoney",
        "totalfunding",
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
        "ratifyyear",
        "approveyear",
        "approvalyr",
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
        "conclusionyear",
        "endtime",
        "finishyear",
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
        "researchtimescope",
        "执行时间",
        "执行年限",
    ),
    "discipline_code": (
        "申请代码",
        "学科代码",
        "学科分类代码",
        "申请代码1",
        "disciplinecode",
        "applicationcode",
        "subjectcode",
        "codetext",
        "code",
        "applycode",
        "searchcode",
        "学科分类",
    ),
    "keywords": (
        "关键词",
        "中文关键词",
        "关键字",
        "keywords",
        "keyword",
        "projectkeywordc",
        "keywordsc",
    ),
}
# English header names only the NSFC's database and the tools that collect from it use
_NSFC_ONLY = {
    "approvalnumber",
    "approvalno",
    "approvalyear",
    "applicationcode",
    "ratifyno",
    "ratifyyear",
    "approvetext",
    "approveyear",
    "dependunit",
    "supportnum",
    "projectadmin",
    "personincharge",
    "psnname",
    "researchtimescope",
}
# NSFC database project-type codes seen with their names in real records (projectType "218" is
# the 面上项目 of ratifyNo 61370008; 项目类别代码 630 is 青年科学基金项目 in the same export)
NSFC_PROJECT_TYPE_CODES = {"218": "面上项目", "630": "青年科学基金项目"}
_SUMMARY_ROW = {"合计", "总计", "小计", "总和", "total", "sum", "grandtotal", "subtotal"}
_TEN_THOUSAND = re.compile(r"万|10k|10,000|10 000|10000|ten thousand", re.IGNORECASE)
_PLAIN_CURRENCY = re.compile(r"元|yuan|cny|rmb", re.IGNORECASE)
_LIST_NUMBER = re.compile(r"^\s*(?:\d{1,4}\s*[.、)．）]|[(（]\d{1,4}[)）])\s*(?!\d)")
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


MISSING_TEXTS = frozenset(
    {
        "-",
        "--",
        "—",
        "–",
        "/",
        "无",
        "暂无",
        "不详",
        "未知",
        "na",
        "n/a",
        "#n/a",
        "null",
        "none",
        "nan",
    }
)


def is_missing(text: str) -> bool:
    """A cell that says "no value" ("-", "—", "无", "N/A" ...)."""
    return unicodedata.normalize("NFKC", text).strip().lower() in MISSING_TEXTS


_CELL_UNITS = (("亿元", 1e8), ("亿", 1e8), ("万元", 1e4), ("万", 1e4), ("元", 1.0), ("yuan", 1.0))
_CELL_AMOUNT = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(.*)")


def amount_and_unit(raw: str | None) -> tuple[float | None, float | None]:
    """(number, factor of a unit written in the cell) from "55", "55.00", "1,234.5", "¥60",
    "50万", "65.0（万元）", "500000元"; (None, None) when empty. The factor is None when the cell
    names no unit (the column's unit applies).

    Raises ValueError when the text is not a number (the caller quarantines the row)."""
    text = clean_text(raw)
    if text is None or is_missing(text):
        return None, None
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(r"[,\s¥$￥()\[\]]", "", text)
    match = _CELL_AMOUNT.fullmatch(text)
    if not match:
        raise ValueError(raw)
    rest = match.group(2).lower()
    if not rest:
        return float(match.group(1)), None
    for unit, factor in _CELL_UNITS:
        if rest in (unit, unit + "人民币", "人民币" + unit) or rest == unit.lower():
            return float(match.group(1)), factor
    if rest in ("rmb", "cny"):
        return float(match.group(1)), 1.0
    raise ValueError(raw)


def parse_amount(raw: str | None) -> float | None:
    """The number of an amount cell as written (see :func:`amount_and_unit`); None when empty."""
    return amount_and_unit(raw)[0]


def parse_year(raw: str | None) -> int | None:
    """A year from "2019", "2019年", "2019.0", "2019-06-30", "06/30/2019"; None when empty.

    Raises ValueError when no year can be read."""
    text = clean_text(raw)
    if text is None or is_missing(text):
        return None
    text = unicodedata.normalize("NFKC", text)
    match = re.fullmatch(r"(\d{4})(?:\.0+|年.*|[-/.]\d{1,2}(?:[-/.]\d{1,2})?(?:[ T].*)?)?", text)
    if match:
        return int(match.group(1))
    match = re.fullmatch(r"((?:19|20)\d{2})(?:0[1-9]|1[0-2])", text)  # 201912 (year and month)
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
    return normalize_name(header), split_unit(header)[1]


def relative_path(path: Path, landing: Path) -> str:
    """Path relative to landing/ (stored paths never carry absolute locations)."""
    return Path(os.path.relpath(Path(path).resolve(), Path(landing).resolve())).as_posix()


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


def _check_amount(
    problems: _Problems, raw: str | None, column: str, where: str
) -> tuple[float | None, float | None]:
    """(amount as written, factor of a unit written in the cell) or (None, None) on a problem."""
    try:
        value, factor = amount_and_unit(raw)
    except ValueError:
        problems.add(
            "amount_not_number",
            f"{where} has amount {clean_text(raw)!r} in column {column!r}, which is not a number "
            f"(write a plain number such as 55.5 and land the file again)",
        )
        return None, None
    if value is not None and value < 0:
        problems.add(
            "amount_negative",
            f"{where} has a negative amount {clean_text(raw)} in column {column!r} "
            f"(correct the amount and land the file again)",
        )
        return None, None
    return value, factor


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


# format detection -------------------------------------------------------------------------------
_EXPORTER_KEYS = ("coreprojectnum", "fy")
_PROJECT_IO_KEYS = ("projectnum", "totalcost")
# the RePORTER website's "Export" CSV (SearchResult_Export.csv, metadata rows above the header)
_REPORTER_EXPORT_KEYS = ("projectnumber", "fiscalyear", "contactpiprojectleader")
KNOWN_HEADER_KEYS = frozenset(
    {k for names in GRANT_ALIASES.values() for k in names}
    | {"coreprojectnum", "fy", "projectnum", "totalcost", "applicationid"}
    | set(_REPORTER_EXPORT_KEYS)
)
NOT_RECORD_NAME = re.compile(
    r"^(readme|read_me|license|licence|changelog|notes?|说明|使用说明)", re.I
)
_CODE_LIST_WORDS = (
    "code",
    "name",
    "label",
    "desc",
    "level",
    "parent",
    "blacklist",
    "代码",
    "名称",
    "学科",
    "说明",
    "描述",
    "分类",
    "层级",
)
_CJK_TEXT = re.compile(r"[\u3400-\u9fff]")


def detect_format(headers: list[str], sample: list[list[str | None]] | None = None) -> str | None:
    """nsfc / nih_exporter / nih_project_io from the header cells; None when unknown.

    An NSFC file needs a grant-id column (批准号, ratifyNo, approveText ...) and one NSFC cue:
    Chinese headers, an NSFC-only English field name, a 万元 unit, or Chinese text in the first
    data rows (``sample``)."""
    keys = {normalize_header(h)[0] for h in headers}
    if set(_EXPORTER_KEYS) <= keys:
        return "nih_exporter"
    if set(_REPORTER_EXPORT_KEYS) <= keys:
        return "nih_reporter_export"
    if set(_PROJECT_IO_KEYS) <= keys:
        return "nih_project_io"
    if keys & set(GRANT_ALIASES["grant_id"]):
        cjk = any(_CJK_TEXT.search(h or "") for h in headers)
        units = [normalize_header(h)[1] or "" for h in headers]
        cjk_values = any(_CJK_TEXT.search(c) for row in (sample or [])[:5] for c in row if c)
        if cjk or keys & _NSFC_ONLY or any(_TEN_THOUSAND.search(u) for u in units) or cjk_values:
            return "nsfc"
    return None


def is_reporter_json(sheet: Sheet) -> bool:
    """NIH RePORTER API v2 project records (``/v2/projects/search`` results)."""
    keys = set(sheet.header)
    return (
        sheet.kind == "json"
        and "fiscal_year" in keys
        and bool(keys & {"core_project_num", "project_num"})
    )


def not_records_reason(path: Path) -> str | None:
    """Why a landed file is not a grant record file at all (None: it should hold records)."""
    name = path.name
    if NOT_RECORD_NAME.match(name):
        return "a read-me or licence file, not grant records"
    if not name.lower().endswith(RECORD_SUFFIXES + ZIP_SUFFIXES):
        if name.lower().endswith(".et"):
            return None  # a WPS spreadsheet we cannot read: quarantined as unreadable, not skipped
        return f"a {path.suffix or 'suffix-less'} file, not a CSV/TSV/XLSX/JSON record export"
    return None


def is_code_list(header: list[str]) -> bool:
    """A code list beside the exports (申请代码 / 学科名称 ...): every column is a code or a name."""
    keys = [normalize_header(h)[0] for h in header if h]
    named = [k for k in keys if k]
    if len(named) < 2 or set(named) & set(GRANT_ALIASES["grant_id"]):
        return False
    return all(any(w in k for w in _CODE_LIST_WORDS) for k in named)


# ExPORTER files that sit beside the project files but hold no grants
_COMPANIONS = (
    ({"applicationid", "abstracttext"}, "ExPORTER abstracts (APPLICATION_ID, ABSTRACT_TEXT)"),
    ({"pmid", "projectnumber"}, "ExPORTER publication links (PMID, PROJECT_NUMBER)"),
    ({"pmid", "pubtitle"}, "ExPORTER publications (PMID, PUB_TITLE)"),
    ({"patentid", "patenttitle"}, "ExPORTER patents (PATENT_ID, PATENT_TITLE)"),
)


def _companion_file(header: list[str]) -> str | None:
    keys = {normalize_header(h)[0] for h in header}
    for signature, what in _COMPANIONS:
        if signature <= keys:
            return f"{what}, not grant records"
    return None


# one file -> records ----------------------------------------------------------------------------
@dataclass
class _FlatSpec:
    """How the columns of a flat grant table (an NSFC export or a mapped file) become fields."""

    fmt: str  # "nsfc" or "mapping:<mapping file>"
    columns: dict[str, list[int]]  # field -> candidate column indices (first non-empty wins)
    header: list[str]
    factor: float = 10_000.0  # amount column -> whole currency units
    unit_label: str = "10k CNY"
    currency: str = "CNY"
    source: str = "nsfc"
    country: str | None = "China"
    rules: dict[int, ColumnRule] = dc_field(default_factory=dict)  # mapped columns (value codes)
    constants: dict[str, object] = dc_field(default_factory=dict)

    def name(self, field_name: str) -> str:
        indices = self.columns.get(field_name)
        return self.header[indices[0]] if indices else field_name

    def get(self, cells: list[str | None], field_name: str) -> str | None:
        for index in self.columns.get(field_name, ()):
            if index < len(cells):
                value = (
                    self.rules[index].code(cells[index]) if index in self.rules else cells[index]
                )
                text = clean_text(None if value is None else str(value))
                if text is not None:
                    return text
        constant = self.constants.get(field_name)
        return None if constant is None else clean_text(str(constant))


def _nsfc_spec(sheet: Sheet, stats: dict, path: str) -> _FlatSpec:
    columns: dict[str, list[int]] = {}
    keys = [normalize_header(h)[0] for h in sheet.header]
    for field_name, names in GRANT_ALIASES.items():
        found = [keys.index(n) for n in names if n in keys]
        if found:
            columns[field_name] = list(dict.fromkeys(found))
    spec = _FlatSpec("nsfc", columns, sheet.header)
    if "amount" in columns:
        unit = normalize_header(sheet.header[columns["amount"][0]])[1]
        if unit and _TEN_THOUSAND.search(unit):
            pass
        elif unit and _PLAIN_CURRENCY.search(unit):
            spec.factor, spec.unit_label = 1.0, "CNY"
        elif _median_amount(sheet, columns["amount"][0]) >= YUAN_MEDIAN:
            spec.factor, spec.unit_label = 1.0, "CNY"
            stats["assumed_cny_files"].append(path)
        else:
            stats["assumed_10k_cny_files"].append(path)
    return spec


YUAN_MEDIAN = 10_000  # a median NSFC amount this large is in 元, not 万元 (that would be 1亿)


def _median_amount(sheet: Sheet, index: int) -> float:
    values = []
    for _p, _l, cells in sheet.rows:
        try:
            value, factor = amount_and_unit(cells[index] if index < len(cells) else None)
        except ValueError:
            continue
        if value is not None and factor is None:
            values.append(value)
    values.sort()
    return values[len(values) // 2] if values else 0.0


def _mapped_spec(mapping: Mapping, sheet: Sheet) -> _FlatSpec:
    rules = mapping.rules_by_column(sheet.header)
    columns: dict[str, list[int]] = {}
    for index, rule in sorted(rules.items()):
        if rule.field:
            columns.setdefault(rule.field, []).append(index)
    amount_rule = next((r for r in rules.values() if r.field == "amount"), None)
    factor = amount_rule.factor if amount_rule and amount_rule.factor is not None else 1.0
    currency = (amount_rule.currency if amount_rule else None) or str(
        mapping.constants.get("currency") or "CNY"
    ).upper()
    unit_label = currency if factor == 1.0 else f"{factor:g} {currency}"
    if factor == 10_000.0:
        unit_label = f"10k {currency}"
    source = str(mapping.constants.get("source") or mapping.name)
    country = mapping.constants.get("country")
    return _FlatSpec(
        f"mapping:{mapping.path}",
        columns,
        sheet.header,
        factor=factor,
        unit_label=unit_label,
        currency=currency,
        source=source,
        country=None if country is None else str(country),
        rules=rules,
        constants=dict(mapping.constants),
    )


def _label(sheet: Sheet, k: int, position: int, line: int | None) -> str:
    if sheet.kind == "text":
        return (
            f"row {k} (line {line})"
            if sheet.part is None
            else f"{sheet.part} row {k} (line {line})"
        )
    if sheet.kind == "json":
        return f"record {position}"
    return f"row {position}" if sheet.part is None else f"sheet {sheet.part!r} row {position}"


def _is_summary_row(cells: list[str | None]) -> bool:
    first = [normalize_header(c)[0] for c in cells if c][:2]
    return any(f in _SUMMARY_ROW for f in first)


def _grant_id(text: str | None) -> str | None:
    if not text:
        return None
    text = unicodedata.normalize("NFKC", text).replace(" ", "")
    if re.fullmatch(r"\d+\.0+", text):  # a spreadsheet number cell: 81571001.0
        text = text.split(".")[0]
    return text or None


def _parse_flat(sheet: Sheet, spec: _FlatSpec, path: str, order: int, stats: dict):
    this_year = date.today().year
    records, rejects = [], []
    width = len(sheet.header)
    for k, (position, line, cells) in enumerate(sheet.rows, start=1):
        record = _label(sheet, k, position, line)
        where = f"{record} of {path}"
        raw_id = spec.get(cells, "grant_id")
        if raw_id is None and _is_summary_row(cells):
            stats["summary_rows"] += 1  # a 合计 / total line: not a grant
            continue
        stats["landed"] += 1
        extra = [c for c in cells[width:] if c]
        if extra and sheet.kind == "text":
            rejects.append(_wrong_columns(path, record, where, len(cells), width))
            continue
        problems = _Problems()
        grant_id = _grant_id(raw_id)
        if not grant_id:
            problems.add(
                "missing_grant_id",
                f"{where} has no grant id (column {spec.name('grant_id')!r} is empty; add the "
                f"approval number and land the file again)",
            )
        else:
            where = f"{where} (grant {grant_id})"
        raw_amount = spec.get(cells, "amount")
        amount, cell_factor = _check_amount(problems, raw_amount, spec.name("amount"), where)
        start = _check_year(
            problems,
            spec.get(cells, "start_year"),
            spec.name("start_year"),
            where,
            "start year",
            this_year + 1,
        )
        end = _check_year(
            problems,
            spec.get(cells, "end_year"),
            spec.name("end_year"),
            where,
            "end year",
            this_year + 1 + MAX_DURATION_YEARS,
        )
        period = re.findall(r"(?:19|20)\d{2}", spec.get(cells, "period") or "")
        if period and start is None and "start_year" not in spec.columns:
            start = _check_year(
                problems, period[0], spec.name("period"), where, "start year", this_year + 1
            )
        if period and end is None and "end_year" not in spec.columns:
            end = _check_year(
                problems,
                period[-1],
                spec.name("period"),
                where,
                "end year",
                this_year + 1 + MAX_DURATION_YEARS,
            )
        _check_order(problems, start, end, where)
        reject = problems.reject(path, record)
        if reject:
            rejects.append(reject)
            continue
        factor = spec.factor if cell_factor is None else cell_factor
        unit_label = spec.unit_label if cell_factor is None else _unit_label(cell_factor, spec)
        fund_type = spec.get(cells, "fund_type")
        if spec.fmt == "nsfc" and fund_type in NSFC_PROJECT_TYPE_CODES:
            fund_type = NSFC_PROJECT_TYPE_CODES[fund_type]
        records.append(
            {
                "grant_id": grant_id,
                "source": spec.get(cells, "source") or spec.source,
                "title": clean_title(spec.get(cells, "title")),
                "pi": spec.get(cells, "pi"),
                "institution": spec.get(cells, "institution"),
                "country": spec.get(cells, "country") or spec.country,
                "fund_type_original": fund_type,
                "amount": None if amount is None else round(amount * factor, 2),
                "currency": spec.currency,
                "amount_unit": spec.currency,
                "amount_original": raw_amount,
                "amount_original_unit": unit_label if raw_amount is not None else None,
                "start_year": start,
                "end_year": end,
                "discipline_code": _discipline_code(spec.get(cells, "discipline_code")),
                "keywords": split_keywords(spec.get(cells, "keywords")),
                "source_format": spec.fmt,
                "_order": (order, k),
                "_file": path,
            }
        )
    return records, rejects


def _discipline_code(text: str | None) -> str | None:
    """The most specific NSFC code in a cell: "一级：C05，二级：C0501，三级：C050101" -> C050101,
    "H1806 肿瘤影像" -> H1806; a cell without such a code stays as written."""
    codes = re.findall(r"(?<![A-Za-z0-9])[A-L]\d{2}(?:\d{2}){0,2}(?!\d)", text or "")
    return max(codes, key=len) if codes else text


def _unit_label(factor: float, spec: _FlatSpec) -> str:
    if factor == 1.0:
        return spec.currency
    return f"10k {spec.currency}" if factor == 10_000.0 else f"{factor:g} {spec.currency}"


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


def _exporter_rows(sheet: Sheet):
    """(k, record label, cells, {normalized ExPORTER column: text}) of an ExPORTER CSV."""
    index = sheet.index()
    for k, (position, line, cells) in enumerate(sheet.rows, start=1):
        values = {name: _cell(cells, i) for name, i in index.items()}
        yield k, _label(sheet, k, position, line), cells, values


def _reporter_export_rows(sheet: Sheet):
    """The RePORTER website export (Project Number, Fiscal Year, Total Cost, Contact PI / Project
    Leader, Organization Name ...) in ExPORTER terms; a row with only "Total Cost (Sub Projects)"
    is a sub-project (its cost is inside the parent's Total Cost)."""
    index: dict[str, int] = {}
    for i, name in enumerate(sheet.header):  # the brackets are part of these names
        key = re.sub(r"[^0-9a-z]", "", unicodedata.normalize("NFKC", name).lower())
        index.setdefault(key, i)
    for k, (position, line, cells) in enumerate(sheet.rows, start=1):

        def get(name: str, cells: list[str | None] = cells) -> str | None:
            return _cell(cells, index.get(name))

        number = get("projectnumber") or ""
        core = re.sub(r"^\d(?=[A-Z])|-.*$", "", number.replace(" ", "").upper()) or None
        contact = get("contactpiprojectleader")
        sub_only = get("totalcost") is None and get("totalcostsubprojects") is not None
        values = {
            "applicationid": get("applicationid"),
            "coreprojectnum": core,
            "fy": get("fiscalyear"),
            "totalcost": get("totalcost"),
            "subprojectid": "sub-project" if sub_only else None,
            "projecttitle": get("projecttitle"),
            "pinames": f"{contact} (contact)" if contact else None,
            "orgname": get("organizationname"),
            "orgstate": get("organizationstate"),
            "orgcountry": get("organizationcountry"),
            "activity": get("activity"),
            "projectstart": get("projectstartdate"),
            "projectend": get("projectenddate"),
            "projectterms": get("projectterms"),
        }
        yield k, _label(sheet, k, position, line), cells, values


def _reporter_rows(sheet: Sheet):
    """RePORTER API v2 project objects in ExPORTER terms (the same rules apply to both)."""
    for k, project in enumerate(sheet.records, start=1):
        org = project.get("organization") or {}
        pis = project.get("principal_investigators") or []
        names = [
            f"{p.get('full_name') or ''}{' (contact)' if p.get('is_contact_pi') else ''}"
            for p in pis
            if isinstance(p, dict)
        ]
        core = project.get("core_project_num")
        if not core and project.get("project_num"):
            core = re.sub(r"^\d|-.*$", "", str(project["project_num"]))
        values = {
            "applicationid": cell_text(project.get("appl_id")),
            "coreprojectnum": cell_text(core),
            "fy": cell_text(project.get("fiscal_year")),
            "totalcost": cell_text(project.get("award_amount")),
            "subprojectid": cell_text(project.get("subproject_id")),
            "projecttitle": cell_text(project.get("project_title")),
            "pinames": "; ".join(n for n in names if n.strip()) or None,
            "orgname": cell_text(org.get("org_name")),
            "orgstate": cell_text(org.get("org_state")),
            "orgcountry": cell_text(org.get("org_country")),
            "activity": cell_text(project.get("activity_code")),
            "projectstart": cell_text(project.get("project_start_date")),
            "projectend": cell_text(project.get("project_end_date")),
            "projectterms": cell_text(project.get("pref_terms")),
        }
        yield k, f"record {k}", [], values


def _parse_nih_exporter(rows, path: str, order: int, width: int | None, fmt: str, stats: dict):
    this_year = date.today().year
    records, rejects = [], []
    amount_column, id_column = {
        "nih_reporter_api": ("award_amount", "core_project_num"),
        "nih_reporter_export": ("Total Cost", "Project Number"),
    }.get(fmt, ("TOTAL_COST", "CORE_PROJECT_NUM"))
    for k, record, cells, values in rows:
        stats["landed"] += 1
        where = f"{record} of {path}"
        if width is not None and any(c for c in cells[width:]):
            rejects.append(_wrong_columns(path, record, where, len(cells), width))
            continue
        problems = _Problems()
        grant_id = (values.get("coreprojectnum") or "").replace(" ", "").upper() or None
        if not grant_id:
            problems.add(
                "missing_grant_id",
                f"{where} has no grant id (column '{id_column}' is empty; fill it in or "
                f"remove the row, and land the file again)",
            )
        else:
            where = f"{where} (grant {grant_id})"
        raw_amount = values.get("totalcost")
        amount, _factor = _check_amount(problems, raw_amount, amount_column, where)
        fiscal_year = _check_year(
            problems, values.get("fy"), "FY", where, "fiscal year", this_year + 1
        )
        start = _year_or_none(values.get("projectstart"))
        end = _year_or_none(values.get("projectend"))
        reject = problems.reject(path, record)
        if reject:
            rejects.append(reject)
            continue
        subproject = bool(values.get("subprojectid"))
        country = values.get("orgcountry")
        records.append(
            {
                "grant_id": grant_id,
                "source": "nih",
                "title": clean_title(values.get("projecttitle")),
                "pi": _contact_pi(values.get("pinames")),
                "institution": values.get("orgname"),
                "region": values.get("orgstate"),
                "country": country.title() if country else None,
                "fund_type_original": (values.get("activity") or grant_id[:3]).upper(),
                # sub-project cost is already inside the parent row's TOTAL_COST
                "amount": None if subproject else amount,
                "currency": "USD",
                "amount_unit": "USD",
                "amount_original": None if subproject else raw_amount,
                "amount_original_unit": "USD" if raw_amount and not subproject else None,
                "discipline_code": grant_id[3:5],
                "keywords": split_keywords(values.get("projectterms")),
                "source_format": fmt,
                "_fy": fiscal_year,
                "_project_start": start,
                "_project_end": end,
                "_application_id": values.get("applicationid"),
                "_order": (order, k),
                "_file": path,
            }
        )
    return records, rejects


def _year_or_none(raw: str | None) -> int | None:
    try:
        return parse_year(raw)
    except ValueError:
        return None


def _parse_nih_project_io(sheet: Sheet, path: str, order: int, stats: dict):
    index = sheet.index()
    width = len(sheet.header)
    records, rejects = [], []
    for k, (position, line, cells) in enumerate(sheet.rows, start=1):
        stats["landed"] += 1
        record = _label(sheet, k, position, line)
        where = f"{record} of {path}"
        if any(c for c in cells[width:]):
            rejects.append(_wrong_columns(path, record, where, len(cells), width))
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
        amount, _factor = _check_amount(problems, raw_amount, "total_cost", where)
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
                "_order": (order, k),
                "_file": path,
            }
        )
    return records, rejects


def _cell(cells: list[str | None], index: int | None) -> str | None:
    if index is None or index >= len(cells):
        return None
    return clean_text(cells[index])


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
def load_grants(
    files: list[Path],
    landing: Path,
    mappings: list[Mapping] | None = None,
    mapping_errors: dict[str, str] | None = None,
) -> tuple[pl.DataFrame, list[Reject], dict]:
    """Grant files -> (grants table, rejects, stats). See the module docstring for the rules.

    ``mappings``: the grants mappings of ``LAKE_HOME/mappings`` (``mappings.load_mappings``);
    ``mapping_errors``: mapping files that could not be used (named in unknown_format reasons).
    ``stats``: landed / ingested / quarantined / merged (units: data rows; an unreadable file is
    one unit), plus files, formats (file -> format), encodings, header_rows (file -> row of the
    header when not the first), skipped_files (file -> why it holds no records), blank_rows,
    summary_rows, assumed_10k_cny_files, assumed_cny_files.
    """
    mappings = mappings or []
    stats: dict = {
        "landed": 0,
        "ingested": 0,
        "quarantined": 0,
        "merged": 0,
        "files": len(files),
        "formats": {},
        "encodings": {},
        "header_rows": {},
        "skipped_files": {},
        "blank_rows": 0,
        "summary_rows": 0,
        "assumed_10k_cny_files": [],
        "assumed_cny_files": [],
    }
    rejects: list[Reject] = []
    plain: list[dict] = []
    exporter: list[dict] = []
    # newest last: modification time, then path, so "newest file wins" is a plain overwrite
    ordered = sorted(files, key=lambda p: (Path(p).stat().st_mtime, str(p)))
    for order, file in enumerate(ordered):
        path = relative_path(file, landing)
        why = not_records_reason(Path(file))
        if why:
            stats["skipped_files"][path] = why
            continue
        by_glob = [m for m in mappings if m.files and m.match(path, list(m.header)) == 2]
        header_row = by_glob[0].header_row if by_glob else None
        try:
            sheets = read_sheets(Path(file), KNOWN_HEADER_KEYS, header_row)
        except SheetError as problem:
            stats["landed"] += 1
            hint = (
                "save it as UTF-8 CSV or .xlsx and land it again"
                if problem.rule == "unreadable_file"
                else "land an export with its header and records"
            )
            rejects.append(_file_reject(path, problem.rule, f"{path} {problem.message}; {hint}"))
            continue
        for sheet in sheets:
            found = _load_sheet(sheet, path, order, mappings, mapping_errors or {}, stats)
            if found is None:
                continue
            records, bad, into_exporter = found
            (exporter if into_exporter else plain).extend(records)
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


def _load_sheet(
    sheet: Sheet,
    path: str,
    order: int,
    mappings: list[Mapping],
    mapping_errors: dict[str, str],
    stats: dict,
) -> tuple[list[dict], list[Reject], bool] | None:
    """One table of a file -> (records, rejects, ExPORTER-like?); None when it holds no records."""
    shown = path if sheet.part is None else f"{path} [{sheet.part}]"
    if sheet.encoding:
        stats["encodings"][shown] = sheet.encoding
    stats["blank_rows"] += sheet.blank_rows
    mapping = mapping_for(mappings, path, sheet.header)
    if mapping is not None:
        fmt = f"mapping:{mapping.path}"
    elif is_reporter_json(sheet):
        fmt = "nih_reporter_api"
    else:
        fmt = detect_format(sheet.header, [cells for _p, _l, cells in sheet.rows[:5]])
    companion = _companion_file(sheet.header) if fmt is None else None
    if companion:
        stats["skipped_files"][shown] = companion
        return None
    if fmt is None and (
        sum(1 for h in sheet.header if h) < 2 or NOT_RECORD_NAME.match(sheet.part or "")
    ):
        stats["skipped_files"][shown] = "a note (one column or a read-me sheet), not a table"
        return None
    if fmt is None and is_code_list(sheet.header):
        stats["skipped_files"][shown] = (
            f"a code list ({', '.join(h for h in sheet.header if h)}), not grant records"
        )
        return None
    stats["formats"][shown] = fmt
    if sheet.header_row > 1 and sheet.kind != "json":
        stats["header_rows"][shown] = sheet.header_row
    if fmt is None:
        stats["landed"] += 1
        return [], [_unknown_format(shown, path, sheet, mapping_errors)], False
    if mapping is not None:
        records, bad = _parse_flat(sheet, _mapped_spec(mapping, sheet), path, order, stats)
        return records, bad, False
    if fmt == "nsfc":
        records, bad = _parse_flat(sheet, _nsfc_spec(sheet, stats, shown), path, order, stats)
        return records, bad, False
    if fmt in ("nih_reporter_api", "nih_exporter", "nih_reporter_export"):
        width = len(sheet.header) if sheet.kind == "text" else None
        rows = {
            "nih_reporter_api": _reporter_rows,
            "nih_exporter": _exporter_rows,
            "nih_reporter_export": _reporter_export_rows,
        }[fmt](sheet)
        records, bad = _parse_nih_exporter(rows, path, order, width, fmt, stats)
        return records, bad, True
    records, bad = _parse_nih_project_io(sheet, path, order, stats)
    return records, bad, False


def _unknown_format(shown: str, path: str, sheet: Sheet, mapping_errors: dict[str, str]) -> Reject:
    """unknown_format with the header and a ready-to-edit mapping skeleton in the reason."""
    header = ", ".join(h for h in sheet.header[:12] if h)
    guesses = {}
    for name in sheet.header:
        key = normalize_name(name)
        guess = next((f for f, names in GRANT_ALIASES.items() if key in names), None)
        if guess and guess not in guesses.values():
            guesses[name] = guess
    text = (
        f"{shown} matches no known grant format (an NSFC export needs a grant id column such as "
        f"批准号 / ratifyNo / Approval Number; NIH ExPORTER: CORE_PROJECT_NUM, FY; RePORTER API "
        f"JSON: core_project_num, fiscal_year; project_io: project_num, total_cost) and no "
        f"mapping in LAKE_HOME/mappings; header (row {sheet.header_row}): {header}. To land it "
        f"as it is, save this mapping, fill it in and materialize again:\n"
        + skeleton("grants", path, sheet.header, guesses, GRANT_FIELDS, sheet.header_row)
    )
    if mapping_errors:
        text += "\nMapping files not used: " + "; ".join(mapping_errors.values())
    record = "" if sheet.part is None else f"sheet {sheet.part!r}"
    return Reject(path, TARGET, "unknown_format", f"unknown_format: {text}", record=record)


def _file_reject(path: str, rule: str, text: str) -> Reject:
    return Reject(path, TARGET, rule, f"{rule}: {text}", record="")
