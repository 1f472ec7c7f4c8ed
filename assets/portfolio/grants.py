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

import re
import unicodedata
from dataclasses import dataclass
from dataclasses import field as dc_field
from datetime import date
from pathlib import Path

import polars as pl

from assets.portfolio.grant_cells import (
    MAX_DURATION_YEARS,
    TARGET,
    Problems,
    amount_and_unit,
    check_amount,
    check_order,
    check_year,
    clean_text,
    clean_title,
    normalize_header,
    relative_path,
    row_label,
    split_keywords,
    wrong_columns,
)
from assets.portfolio.grants_nih import (
    EXPORTER_KEYS,
    PROJECT_IO_KEYS,
    REPORTER_EXPORT_KEYS,
    aggregate_exporter,
    companion_file,
    exporter_rows,
    is_reporter_json,
    parse_nih_project_io,
    parse_nih_rows,
    reporter_export_rows,
    reporter_rows,
)
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
    normalize_name,
    read_sheets,
)

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


# format detection -------------------------------------------------------------------------------
KNOWN_HEADER_KEYS = frozenset(
    {k for names in GRANT_ALIASES.values() for k in names}
    | {"coreprojectnum", "fy", "projectnum", "totalcost", "applicationid"}
    | set(REPORTER_EXPORT_KEYS)
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
    if set(EXPORTER_KEYS) <= keys:
        return "nih_exporter"
    if set(REPORTER_EXPORT_KEYS) <= keys:
        return "nih_reporter_export"
    if set(PROJECT_IO_KEYS) <= keys:
        return "nih_project_io"
    if keys & set(GRANT_ALIASES["grant_id"]):
        cjk = any(_CJK_TEXT.search(h or "") for h in headers)
        units = [normalize_header(h)[1] or "" for h in headers]
        cjk_values = any(_CJK_TEXT.search(c) for row in (sample or [])[:5] for c in row if c)
        if cjk or keys & _NSFC_ONLY or any(_TEN_THOUSAND.search(u) for u in units) or cjk_values:
            return "nsfc"
    return None


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
        else:
            median = _median_amount(sheet, columns["amount"][0])
            if median is not None and median >= YUAN_MEDIAN:
                spec.factor, spec.unit_label = 1.0, "CNY"
                stats["assumed_cny_files"].append(path)
            elif median is not None:  # (None: every cell names its unit, nothing assumed)
                stats["assumed_10k_cny_files"].append(path)
    return spec


YUAN_MEDIAN = 10_000  # a median NSFC amount this large is in 元, not 万元 (that would be 1亿)


def _median_amount(sheet: Sheet, index: int) -> float | None:
    """Median of the amounts written without a unit in the cell (None when there are none)."""
    values = []
    for _p, _l, cells in sheet.rows:
        try:
            value, factor = amount_and_unit(cells[index] if index < len(cells) else None)
        except ValueError:
            continue
        if value is not None and factor is None:
            values.append(value)
    values.sort()
    return values[len(values) // 2] if values else None


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
        record = row_label(sheet, k, position, line)
        where = f"{record} of {path}"
        raw_id = spec.get(cells, "grant_id")
        if raw_id is None and _is_summary_row(cells):
            stats["summary_rows"] += 1  # a 合计 / total line: not a grant
            continue
        stats["landed"] += 1
        extra = [c for c in cells[width:] if c]
        if extra and sheet.kind == "text":
            rejects.append(wrong_columns(path, record, where, len(cells), width))
            continue
        problems = Problems()
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
        amount, cell_factor = check_amount(problems, raw_amount, spec.name("amount"), where)
        start = check_year(
            problems,
            spec.get(cells, "start_year"),
            spec.name("start_year"),
            where,
            "start year",
            this_year + 1,
        )
        end = check_year(
            problems,
            spec.get(cells, "end_year"),
            spec.name("end_year"),
            where,
            "end year",
            this_year + 1 + MAX_DURATION_YEARS,
        )
        period = re.findall(r"(?:19|20)\d{2}", spec.get(cells, "period") or "")
        if period and start is None and "start_year" not in spec.columns:
            start = check_year(
                problems, period[0], spec.name("period"), where, "start year", this_year + 1
            )
        if period and end is None and "end_year" not in spec.columns:
            end = check_year(
                problems,
                period[-1],
                spec.name("period"),
                where,
                "end year",
                this_year + 1 + MAX_DURATION_YEARS,
            )
        check_order(problems, start, end, where)
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
    aggregated, merged_exporter = aggregate_exporter(exporter)
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
    companion = companion_file(sheet.header) if fmt is None else None
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
            "nih_reporter_api": reporter_rows,
            "nih_exporter": exporter_rows,
            "nih_reporter_export": reporter_export_rows,
        }[fmt](sheet)
        records, bad = parse_nih_rows(rows, path, order, width, fmt, stats)
        return records, bad, True
    records, bad = parse_nih_project_io(sheet, path, order, stats)
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
