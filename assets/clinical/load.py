"""The ``clinical`` table: one typed row per patient from ``landing/clinical/*.csv|*.xlsx``.

Input files
    CSV/TSV (UTF-8 with or without BOM, GB18030, else Windows-1252; separator ``,``, ``;`` or tab)
    and XLSX/XLS (the first worksheet whose columns give patient_id and center_id, else the first
    with data; the other worksheets with data are listed in ``stats['other_sheets']``), read by ``dagster_project.sheets``: title rows above the header are
    skipped (``stats['header_rows']``), a header repeated inside the data is dropped. Columns are
    named by ``columns.py``: a mapping file (``LAKE_HOME/mappings``), then the built-in Chinese and
    English names (患者编号 -> patient_id, 中心 -> center_id, 随访时间(月) -> follow_up_months,
    是否复发 是/否 -> rfs_event 1/0 ...; ``stats['renamed_columns']``). One row per patient;
    ``patient_id`` and ``center_id`` are required (header matched case-insensitively, spaces and
    hyphens read as ``_``); every other column is kept under its own name. Full-width digits are
    read as numbers. A file without the id columns is quarantined with a mapping skeleton.

Row numbers
    A reject's ``record`` is ``row N`` where N is the row number a spreadsheet program shows: the
    header is row 1, the first patient is row 2 (for a CSV: the N-th record, blank lines counted).

Types (per column, in this order)
    1. the schema file (``schema.py``: ``landing/clinical/schema.yaml`` or ``<stem>.schema.yaml``);
    2. the name: ``*_event`` is an event (0/1); ``*_days``, ``*_months``, ``*_years``, ``*_time`` are
       durations (non-negative numbers);
    3. inference over the column's non-empty values in all files: numbers if at least 90 % of them
       parse as numbers (``int`` when all are whole numbers written without a decimal point, else
       ``float``); else ISO dates (``YYYY-MM-DD``) if at least 90 % parse; else text. "A few stray
       strings" therefore means at most 10 % of the values: those rows are quarantined
       (``unparsable_number`` / ``unparsable_date``), the column stays numeric. Above 10 % the column
       is text and nothing is quarantined (declare the type in a schema file to enforce it).
    Declared types (1, 2) are strict: every value that does not fit quarantines its row.
    Numbers use a decimal point (``12.5``; a decimal comma is text). Empty cells and ``NA``,
    ``N/A``, ``NaN``, ``null``, ``None``, ``missing``, ``.``, ``-`` are missing.

Quarantine rules (``Reject.rule``; one reject per row naming its first problem, then the others)
    ``missing_id``, ``unknown_center`` (only when ``LAKE_HOME/centers.yaml`` exists),
    ``unparsable_number``, ``unparsable_date``, ``unparsable_bool``, ``negative_duration``,
    ``invalid_event``, ``value_not_allowed`` / ``missing_value`` (schema ``allowed`` / ``required``),
    ``conflicting_duplicate``; whole files: ``unreadable_file``, ``empty_file``,
    ``missing_id_column``, ``duplicate_column``, ``invalid_schema``.

Duplicates and newer files
    The same patient twice in one file: identical rows (after typing; an empty cell matches any
    value) are merged into one; rows that disagree on a value are ALL quarantined
    (``conflicting_duplicate``): the lake cannot know which is right, so it takes neither.
    The same patient in several files: files are ordered by modification time, then name; a newer
    file's non-empty values replace the older ones, and columns or cells it leaves empty keep the
    older values (a follow-up update may carry only the outcome columns). Older values stay
    readable in ``clinical_history`` (``history.py``).

Accounting (``stats``)
    The unit is a data row; a file rejected as a whole counts as one unit.
    ``landed == ingested + quarantined + merged``; ``ingested`` = patients in the table, ``merged``
    = identical duplicates plus rows replaced by a newer file (``superseded``).

Identifiers
    ``patient_key`` = pseudonymize(center_id, patient_id); the patient id itself (a hospital number
    or a resident identity number) is never stored. Every other column is screened by
    ``dagster_project.phi`` (by name in English, Chinese and pinyin, and by content: identity
    numbers, phones, e-mail, person names, birth dates, free text) before anything is typed or
    written: a flagged column is dropped in every row of its file and becomes one quarantine entry
    (``record`` = ``column <name>``, the rule, the count of non-empty values; never a value).
    Free text is kept only when the schema declares the column ``type: string``. In the kept text
    cells, any value of the file's dropped columns, resident ids, mobile numbers and e-mail
    addresses are replaced by ``[redacted]`` (one ``identifier_in_text`` entry per column). A
    dropped or redacted column counts as one landed and one quarantined unit; the names are in
    ``stats['dropped_identifier_columns']``, with rule and count in ``stats['identifier_columns']``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import yaml

from assets.clinical.columns import known_header_names, plan_columns
from assets.clinical.schema import (
    DEFAULT_DATE_FORMAT,
    ClinicalSchema,
    ColumnSpec,
    SchemaError,
    schema_for,
)
from dagster_project.mappings import Mapping, mapping_for, skeleton
from dagster_project.phi import Finding, Redactor, quotable, screen_columns, shown_header
from dagster_project.quarantine import Reject
from dagster_project.sheets import XLSX_SUFFIXES, SheetError, read_sheets

TARGET_TABLE = "clinical"
CLINICAL_SUFFIXES = (".csv", ".tsv", ".xlsx", ".xlsm", ".xls")
CENTERS_FILE = "centers.yaml"

# Names this table sets itself: a landed column of that name is dropped (and reported).
RESERVED_COLUMNS = frozenset(
    {"patient_key", "source_file", "loaded_at", "valid_from", "valid_to", "is_current"}
)
MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none", "missing", ".", "-", "#n/a"})
EVENT_SUFFIX = "_event"
DURATION_SUFFIXES = ("_days", "_months", "_years", "_time")
STRAY_FRACTION = 0.10  # at most 10 % stray strings keep a column numeric (or date)

_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([ T]00:00(:00(\.0+)?)?)?$")
_TRUE = frozenset({"true", "yes", "y", "t", "1", "1.0"})
_FALSE = frozenset({"false", "no", "n", "f", "0", "0.0"})

Pseudonymize = Callable[[str, object], str]


# --- centers.yaml -------------------------------------------------------------------------------
def load_centers(home: Path) -> set[str] | None:
    """The configured center ids from ``LAKE_HOME/centers.yaml``, or None when there is no such file.

    Accepted shapes: a list (``[C1, C2]``), ``centers: [C1, C2]``, or a mapping whose keys are the
    ids (``centers: {C1: {name: ...}}`` or the same mapping at the top level).
    """
    path = Path(home) / CENTERS_FILE
    if not path.is_file():
        return None
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(
            f"{CENTERS_FILE}: not readable YAML ({exc}); fix or remove the file"
        ) from exc
    if isinstance(raw, dict) and "centers" in raw:
        raw = raw["centers"]
    if isinstance(raw, dict):
        ids = list(raw)
    elif isinstance(raw, list):
        ids = [next(iter(v)) if isinstance(v, dict) and len(v) == 1 else v for v in raw]
    else:
        raise ValueError(
            f"{CENTERS_FILE}: expected a list of center ids or 'centers:' (a list or mapping)"
        )
    if any(isinstance(v, dict | list) or v is None for v in ids):
        raise ValueError(f"{CENTERS_FILE}: center ids must be plain text such as C1")
    return {str(v).strip() for v in ids}


# --- reading ------------------------------------------------------------------------------------
@dataclass
class _Sheet:
    header: list[str]
    rows: list[tuple[int, list[str | None]]]  # (spreadsheet row number, cell texts)
    header_row: int = 1
    renamed: dict[str, str] = field(default_factory=dict)  # landed column -> lake column
    mapping: str | None = None
    landed: list[str] = field(default_factory=list)  # the columns as the file names them
    other_sheets: list[str] = field(default_factory=list)  # worksheets with data not read
    ragged: dict[int, int] = field(default_factory=dict)  # CSV row number -> its field count


class _FileProblem(Exception):
    def __init__(self, rule: str, message: str):
        super().__init__(message)
        self.rule = rule
        self.message = message


def _normalize(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def _read_sheet(path: Path, shown: str, mappings: list[Mapping] | None = None) -> _Sheet:
    """Header + rows of a clinical file, columns named for the lake (``columns.py``: a mapping
    file, then the built-in Chinese/English names); a file-level problem raises ``_FileProblem``."""
    kind = "XLSX workbook" if path.suffix.lower() in XLSX_SUFFIXES + (".xls",) else "CSV"
    mappings = mappings or []
    by_glob = [m for m in mappings if m.files and m.match(shown, list(m.header)) == 2]
    first = by_glob[0] if by_glob else None
    try:
        sheets = read_sheets(path, known_header_names(first), first.header_row if first else None)
    except SheetError as exc:
        if exc.rule == "empty_file":
            raise _FileProblem(
                "empty_file",
                f"empty_file: {shown} has no header and no rows; land a file with data",
            ) from exc
        detail = exc.message.removeprefix("could not be read ")
        raise _FileProblem(
            "unreadable_file",
            f"unreadable_file: {shown} could not be read as a {kind} {detail}; save it as UTF-8 "
            "CSV or .xlsx and land it again",
        ) from exc
    sheet = _patient_sheet(sheets, shown, mappings)
    mapping = mapping_for(mappings, shown, sheet.header)
    body = sheet.rows
    ragged: dict[int, int] = {}
    if kind == "CSV":  # a row with more or fewer fields than the header is not guessed at
        fields = len(sheet.header)
        ragged = {n: len(c) for n, _l, c in body if len(c) < fields or _fields(c) > fields}
        body = [row for row in body if row[0] not in ragged]
    width = max([len(sheet.header)] + [len(cells) for _p, _l, cells in body])
    header = sheet.header + [""] * (width - len(sheet.header))
    # Unnamed columns: kept as column_<n> when they hold data, dropped when empty (Excel leftovers).
    used = {i for _p, _l, cells in body for i, c in enumerate(cells) if c}
    keep = [i for i, name in enumerate(header) if name or i in used]
    landed_names = [header[i] or f"column_{i + 1}" for i in keep]
    plan = plan_columns(landed_names, mapping)
    names = plan.header
    seen: dict[str, str] = {}
    for landed, name in zip(
        [n for n, lake in zip(landed_names, plan.names, strict=True) if lake]
        + list(plan.constants),
        names,
        strict=True,
    ):
        if name in seen:
            a, b = shown_header(seen[name]), shown_header(landed)
            both = f" ('{a}' and '{b}')" if seen[name] != landed else ""
            raise _FileProblem(
                "duplicate_column",
                f"duplicate_column: {shown} has the column '{shown_header(name)}' more than "
                f"once{both}; "
                "rename or remove the copy and land the file again",
            )
        seen[name] = landed
    rows = []
    for number, _line, cells in body:
        padded = cells + [None] * (width - len(cells))
        rows.append((number, plan.apply([_numeric_text(padded[i]) for i in keep])))
    if not rows and not ragged:
        raise _FileProblem(
            "empty_file",
            f"empty_file: {shown} has a header but no data rows; land a file with data",
        )
    return _Sheet(
        names,
        rows,
        header_row=sheet.header_row,
        renamed=plan.renamed,
        mapping=mapping.path if mapping else None,
        landed=landed_names,
        other_sheets=sheet.other_parts,
        ragged=ragged,
    )


def _fields(cells: list[str | None]) -> int:
    """Fields of a CSV row, trailing empty ones not counted."""
    n = len(cells)
    while n and not cells[n - 1]:
        n -= 1
    return n


def _patient_sheet(sheets: list, shown: str, mappings: list[Mapping]):
    """The worksheet that holds the patients: the first whose columns give patient_id and
    center_id (a notes sheet may come first), else the first; the others are named."""
    chosen = sheets[0]
    for candidate in sheets:
        plan = plan_columns(candidate.header, mapping_for(mappings, shown, candidate.header))
        names = {_normalize(n) for n in plan.header}
        if {"patient_id", "center_id"} <= names:
            chosen = candidate
            break
    chosen.other_parts = [s.part for s in sheets if s is not chosen and s.part]
    return chosen


def _mapping_hint(shown: str, sheet: _Sheet) -> str:
    """A ready-to-edit mapping for a file whose id columns were not recognized."""
    guesses = {}
    landed = [shown_header(name) for name in sheet.landed]  # a headerless file's first row
    for name, safe in zip(sheet.landed, landed, strict=True):
        lake = sheet.renamed.get(name, name)
        guesses[safe] = lake if lake.isidentifier() and safe == name else None
    text = skeleton("clinical", shown, landed, guesses, header_row=sheet.header_row)
    return (
        ". To land it as it is, name the id columns (or give center_id under constants:) in "
        f"this mapping and save it in LAKE_HOME/mappings:\n{text}"
    )


def _numeric_text(text: str | None) -> str | None:
    """Full-width digits read as numbers (１２.５ -> 12.5); other text unchanged."""
    if text is None or text.isascii():
        return text
    folded = unicodedata.normalize("NFKC", text).strip()
    return folded if _FLOAT.match(folded) else text


# --- typing -------------------------------------------------------------------------------------
def _is_missing(text: str | None) -> bool:
    return text is None or text.strip().lower() in MISSING_TOKENS


def _convention_type(column: str) -> str | None:
    lowered = column.lower()
    if lowered.endswith(EVENT_SUFFIX) and len(lowered) > len(EVENT_SUFFIX):
        return "event"
    if any(lowered.endswith(s) and len(lowered) > len(s) for s in DURATION_SUFFIXES):
        return "duration"
    return None


def _as_date(text: str, fmt: str | None) -> date | None:
    try:
        if fmt is None or fmt == DEFAULT_DATE_FORMAT:
            return date.fromisoformat(text[:10]) if _ISO_DATE.match(text) else None
        return datetime.strptime(text, fmt).date()
    except ValueError:
        return None


def infer_type(values: list[str]) -> tuple[str, int]:
    """Inferred type of a column from its non-missing texts, and how many values are strays."""
    if not values:
        return "string", 0
    numbers = sum(1 for v in values if _FLOAT.match(v))
    strays = len(values) - numbers
    if numbers and strays <= STRAY_FRACTION * len(values):
        return ("int" if all(_INT.match(v) for v in values if _FLOAT.match(v)) else "float"), strays
    dates = sum(1 for v in values if _as_date(v, None) is not None)
    strays = len(values) - dates
    if dates and strays <= STRAY_FRACTION * len(values):
        return "date", strays
    return "string", 0


@dataclass
class _Typed:
    """The type chosen for one column of one file, and why (for stats)."""

    kind: str
    origin: str  # "schema" | "name" | "inferred"
    spec: ColumnSpec | None = None
    parsed: int = 0  # how many values of the column parsed (for the reason text)
    total: int = 0


def _parse(text: str, typed: _Typed) -> tuple[object, str | None, str | None]:
    """(value, rule, what-was-wrong) for one non-missing cell."""
    kind = typed.kind
    fmt = typed.spec.format if typed.spec else None
    if kind in ("int", "float", "duration"):
        if not _FLOAT.match(text):
            return None, "unparsable_number", "not a number"
        number = float(text)
        if kind == "int":
            if _INT.match(text):
                return int(text), None, None
            if number.is_integer():
                return int(number), None, None
            return None, "unparsable_number", "not a whole number"
        if kind == "duration" and number < 0:
            return number, "negative_duration", "negative"
        return (int(text) if _INT.match(text) else number), None, None
    if kind == "event":
        if _FLOAT.match(text) and float(text) in (0.0, 1.0):
            return int(float(text)), None, None
        return None, "invalid_event", "not 0 or 1"
    if kind == "date":
        parsed = _as_date(text, fmt)
        return (
            (parsed, None, None) if parsed is not None else (None, "unparsable_date", "not a date")
        )
    if kind == "bool":
        lowered = text.lower()
        if lowered in _TRUE:
            return True, None, None
        if lowered in _FALSE:
            return False, None, None
        return None, "unparsable_bool", "not true/false"
    return text, None, None


def _value_problem(
    column: str, text: str, value: object, rule: str, typed: _Typed, where: str
) -> tuple[str, str]:
    """The (rule, sentence) of one bad cell; never shows an identifier column (those are dropped)."""
    shown = text if len(text) <= 40 else text[:37] + "..."
    declared = (
        f"declared {typed.kind} in {typed.spec.source}"
        if typed.origin == "schema" and typed.spec
        else f"a {typed.kind} column by its name"
        if typed.origin == "name"
        else f"{typed.parsed} of {typed.total} values in the column are numbers"
        if typed.kind in ("int", "float")
        else f"{typed.parsed} of {typed.total} values in the column are dates"
    )
    if rule == "unparsable_number":
        what = (
            "not a whole number" if typed.kind == "int" and _FLOAT.match(text) else "not a number"
        )
        return rule, (
            f"unparsable_number: {where} column '{column}' has '{shown}', {what} ({declared}; "
            "correct the value or leave the cell empty, or declare the column as string in a schema file)"
        )
    if rule == "unparsable_date":
        fmt = typed.spec.format if typed.spec and typed.spec.format else "YYYY-MM-DD"
        return rule, (
            f"unparsable_date: {where} column '{column}' has '{shown}', not a date in the format {fmt} "
            f"({declared}; correct the value, or give the date format in a schema file)"
        )
    if rule == "unparsable_bool":
        return rule, (
            f"unparsable_bool: {where} column '{column}' has '{shown}', not true/false/yes/no/1/0 "
            f"({declared}; correct the value or leave the cell empty)"
        )
    if rule == "negative_duration":
        return rule, (
            f"negative_duration: {where} column '{column}' is {shown}, but a follow-up time cannot be "
            "negative (correct the value or leave the cell empty)"
        )
    if rule == "invalid_event":
        return rule, (
            f"invalid_event: {where} column '{column}' is '{shown}', but an event must be 0 or 1 "
            "(recode it: 1 = the event happened, 0 = censored)"
        )
    raise AssertionError(rule)


# --- the load -----------------------------------------------------------------------------------
@dataclass
class _Row:
    order: int  # file order (older first)
    source: str
    number: int  # spreadsheet row number
    texts: dict[str, str | None]
    key: str | None = None
    center: str | None = None
    values: dict[str, object] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def record(self) -> str:
        return f"row {self.number}"

    @property
    def where(self) -> str:
        return f"{self.source} {self.record}"


def file_order(files: list[Path]) -> list[Path]:
    """Older first: by modification time, then by name (the last file is the newest)."""
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name, str(p)))


def _relative(path: Path, landing: Path) -> str:
    try:
        return path.resolve().relative_to(landing.resolve()).as_posix()
    except ValueError:
        return f"clinical/{path.name}"  # outside landing/: never store the absolute path


def load_clinical(
    files: list[Path],
    landing: Path,
    pseudonymize: Pseudonymize,
    centers: set[str] | None = None,
    previous: pl.DataFrame | None = None,
    *,
    loaded_at: datetime | None = None,
    mappings: list[Mapping] | None = None,
) -> tuple[pl.DataFrame, list[Reject], dict]:
    """Load every clinical file into one row per patient; see the module docstring for the rules.

    ``files`` is the full set of clinical files (the table is rebuilt from landing/ on every run).
    ``previous`` is the ``clinical`` table of the last run, if any: patients whose values did not
    change keep its ``loaded_at``, so a re-run over the same files yields the same table.
    """
    loaded_at = loaded_at or datetime.now(UTC)
    rejects: list[Reject] = []
    stats: dict = {
        "landed": 0,
        "ingested": 0,
        "quarantined": 0,
        "merged": 0,
        "superseded": 0,
        "files": len(files),
        "files_quarantined": 0,
        "dropped_identifier_columns": [],
        "identifier_columns": [],
        "dropped_reserved_columns": [],
        "header_rows": {},
        "renamed_columns": {},
        "mappings": {},
        "other_sheets": {},
    }
    rows: list[_Row] = []
    column_rejects: list[Reject] = []  # dropped identifier columns, redacted text columns
    columns: list[str] = []  # landed columns in first-seen order
    schemas: dict[int, ClinicalSchema] = {}
    dropped: set[str] = set()
    reserved: set[str] = set()
    ordered = file_order([Path(f) for f in files])
    loaded: list[tuple[int, str, ClinicalSchema, _Sheet, str, str]] = []
    for order, path in enumerate(ordered):
        shown = _relative(path, landing)
        try:
            schema = schema_for(path, landing)
            sheet = _read_sheet(path, shown, mappings)
        except SchemaError as exc:
            _file_reject(
                rejects,
                stats,
                shown,
                "invalid_schema",
                f"invalid_schema: {shown} was not loaded: {exc}",
            )
            continue
        except _FileProblem as problem:
            _file_reject(rejects, stats, shown, problem.rule, problem.message)
            continue
        if sheet.header_row > 1:
            stats["header_rows"][shown] = sheet.header_row
        if sheet.renamed:
            stats["renamed_columns"][shown] = sheet.renamed
        if sheet.mapping:
            stats["mappings"][shown] = sheet.mapping
        if sheet.other_sheets:
            stats["other_sheets"][shown] = sheet.other_sheets
        normalized = {_normalize(n): n for n in sheet.header}
        missing = [c for c in ("patient_id", "center_id") if c not in normalized]
        if missing:
            _file_reject(
                rejects,
                stats,
                shown,
                "missing_id_column",
                f"missing_id_column: {shown} has no {' and no '.join(missing)} column (found: "
                f"{', '.join(map(shown_header, sheet.header[:12]))}"
                f"{', ...' if len(sheet.header) > 12 else ''}); every "
                "clinical file needs patient_id and center_id columns"
                + _mapping_hint(shown, sheet),
            )
            continue
        loaded.append(
            (order, shown, schema, sheet, normalized["patient_id"], normalized["center_id"])
        )
    # judged over all files: a column flagged in one file is dropped from every file
    findings = _screen_identifiers(loaded)
    for order, shown, schema, sheet, pid_col, center_col in loaded:
        schemas[order] = schema
        for number, fields in sheet.ragged.items():
            stats["landed"] += 1
            reason = (
                f"ragged_row: {shown} row {number} has {fields} fields but the header has "
                f"{len(sheet.header)} (a missing or extra separator); fix the row and land the "
                "file again"
            )
            rejects.append(
                Reject(shown, TARGET_TABLE, "ragged_row", reason, record=f"row {number}")
            )
        index = {name: i for i, name in enumerate(sheet.header)}
        shown = _safe_name(shown, sheet, index, [pid_col, *findings], pseudonymize)
        flagged = _flagged_in_file(findings, sheet, index, (pid_col, center_col), shown, stats)
        kept = []
        for name in sheet.header:
            norm = _normalize(name)
            if name in (pid_col, center_col):
                continue
            if name in flagged:
                dropped.add(name)
            elif norm in RESERVED_COLUMNS:
                reserved.add(name)
            else:
                kept.append(name)
                if name not in columns:
                    columns.append(name)
        quoted = [name for name, reject in flagged.items() if reject.rule != "free_text"]
        redact = Redactor(cells[index[n]] for _, cells in sheet.rows for n in quoted)
        redacted: dict[str, int] = {}
        for number, cells in sheet.rows:
            stats["landed"] += 1
            texts = {name: _redacted(cells[index[name]], redact, name, redacted) for name in kept}
            row = _Row(order, shown, number, texts)
            pid, center = cells[index[pid_col]], cells[index[center_col]]
            if _is_missing(pid):
                row.problems.append(("missing_id", _missing_id(row, "patient_id")))
            if _is_missing(center):
                row.problems.append(("missing_id", _missing_id(row, "center_id")))
            elif centers is not None and center not in centers:
                known = ", ".join(sorted(centers)) or "none"
                row.problems.append(
                    (
                        "unknown_center",
                        f"unknown_center: {row.where} has center_id '{center}', which is not in "
                        f"centers.yaml (known: {known}); add the center to LAKE_HOME/centers.yaml "
                        "or correct the center_id",
                    )
                )
            if not row.problems:
                row.center = center
                row.key = pseudonymize(center, pid)
            rows.append(row)
        column_rejects.extend(
            _redaction_reject(shown, name, n, stats) for name, n in redacted.items()
        )
        column_rejects.extend(flagged.values())
    stats["dropped_identifier_columns"] = sorted(dropped)
    stats["dropped_reserved_columns"] = sorted(reserved)

    typed = _type_columns(rows, columns, schemas, stats)
    for row in rows:
        _type_row(row, typed[row.order], schemas[row.order])

    good = [r for r in rows if not r.problems]
    good, merged = _resolve_duplicates(good)
    stats["merged"] += merged
    for row in rows:
        if row.problems:
            rule, first = row.problems[0]
            extra = "; ".join(sentence for _, sentence in row.problems[1:])
            reason = first + (f". Also: {extra}" if extra else "")
            rejects.append(Reject(row.source, TARGET_TABLE, rule, reason, record=row.record))

    patients, superseded = _newest_values(good, columns)
    stats["merged"] += superseded
    stats["superseded"] = superseded
    table = _build_table(patients, columns, typed, loaded_at, previous)
    rejects.extend(column_rejects)
    stats["ingested"] = table.height
    stats["quarantined"] = len(rejects)
    stats["patients"] = table.height
    stats["rules"] = _count_rules(rejects)
    stats["columns"] = {name: str(dtype) for name, dtype in table.schema.items()}
    return table, rejects, stats


def _screen_identifiers(
    loaded: list[tuple[int, str, ClinicalSchema, _Sheet, str, str]],
) -> dict[str, Finding]:
    """Identifier (and undeclared free-text) columns, judged on their values in all files."""
    values: dict[str, list[str]] = {}
    declared_text: set[str] = set()
    id_columns = {name for *_, pid_col, center_col in loaded for name in (pid_col, center_col)}
    for _, _, schema, sheet, _, _ in loaded:
        declared_text |= {name for name, spec in schema.columns.items() if spec.type == "string"}
        for i, name in enumerate(sheet.header):
            if name not in id_columns:
                column = values.setdefault(name, [])
                column.extend(c for _, cells in sheet.rows if not _is_missing(c := cells[i]))
    found = screen_columns(values, free_text_ok=declared_text)
    return {finding.column: finding for finding in found}


def _flagged_in_file(
    findings: dict[str, Finding],
    sheet: _Sheet,
    index: dict[str, int],
    id_columns: tuple[str, str],
    shown: str,
    stats: dict,
) -> dict[str, Reject]:
    """This file's flagged columns -> their quarantine entries (with this file's value count)."""
    flagged = {}
    for name in sheet.header:
        if name not in findings or name in id_columns:
            continue
        count = sum(1 for _, cells in sheet.rows if not _is_missing(cells[index[name]]))
        finding = replace(findings[name], count=count)
        flagged[name] = finding.reject(shown, TARGET_TABLE)
        stats["landed"] += 1  # a dropped column is one landed unit, quarantined
        stats["identifier_columns"].append(
            {"file": shown, "column": name, "rule": finding.rule, "values": count}
        )
    return flagged


def _safe_name(
    shown: str, sheet: _Sheet, index: dict[str, int], columns: list[str], pseudonymize: Pseudonymize
) -> str:
    """``shown`` with any folder or file name that quotes one of the file's patient ids or
    identifier values (``clinical/张伟_随访.xlsx``) replaced by a keyed digest: the stored
    ``source_file`` and quarantine paths never name a patient."""
    values = {
        text.casefold()
        for name in columns
        if name in index
        for _, cells in sheet.rows
        if quotable(text := (cells[index[name]] or "").strip())
    }
    parts = shown.split("/")
    for i, part in enumerate(parts[1:], start=1):
        folded = part.casefold()
        if any(value in folded for value in values):
            suffix = "".join(Path(part).suffixes[-1:]) if i == len(parts) - 1 else ""
            parts[i] = pseudonymize("clinical-file", "/".join(parts[: i + 1]))[:16] + suffix
    return "/".join(parts)


def _redacted(
    text: str | None, redact: Redactor, column: str, counts: dict[str, int]
) -> str | None:
    """A kept cell with identifiers inside it replaced (numbers and short codes pass unchanged)."""
    if text is None or len(text) < 2 or _FLOAT.match(text):
        return text
    out = redact(text)
    if out != text:
        counts[column] = counts.get(column, 0) + 1
    return out


def _redaction_reject(shown: str, column: str, cells: int, stats: dict) -> Reject:
    stats["landed"] += 1  # like a dropped column: one landed unit, quarantined
    stats["identifier_columns"].append(
        {"file": shown, "column": column, "rule": "identifier_in_text", "values": cells}
    )
    return Reject(
        shown,
        TARGET_TABLE,
        "identifier_in_text",
        f"identifier_in_text: {shown} column '{column}' kept, but {cells} of its cells quoted an "
        "identifier (a value of a dropped identifier column, a resident id, a phone number or an "
        "e-mail address), replaced by [redacted] before loading",
        record=f"column {column}",
    )


def _missing_id(row: _Row, column: str) -> str:
    return (
        f"missing_id: {row.where} has no {column} (every clinical row needs patient_id and "
        f"center_id; fill in the {column} and land the file again)"
    )


def _file_reject(rejects: list[Reject], stats: dict, shown: str, rule: str, reason: str) -> None:
    rejects.append(Reject(shown, TARGET_TABLE, rule, reason))
    stats["landed"] += 1
    stats["files_quarantined"] += 1


def _type_columns(
    rows: list[_Row], columns: list[str], schemas: dict[int, ClinicalSchema], stats: dict
) -> dict[int, dict[str, _Typed]]:
    """The type of each column in each file: schema, then name convention, then joint inference."""
    per_file: dict[int, dict[str, _Typed]] = {order: {} for order in schemas}
    origins: dict[str, str] = {}
    units: dict[str, str] = {}
    for column in columns:
        undeclared = [o for o, s in schemas.items() if not (s.get(column) and s.get(column).type)]
        convention = _convention_type(column)
        if convention:
            default = _Typed(convention, "name")
        else:
            texts = [
                r.texts[column]
                for r in rows
                if r.order in undeclared and column in r.texts and not _is_missing(r.texts[column])
            ]
            kind, strays = infer_type(texts)
            default = _Typed(kind, "inferred", parsed=len(texts) - strays, total=len(texts))
        for order, schema in schemas.items():
            spec = schema.get(column)
            if spec and spec.type:
                per_file[order][column] = _Typed(spec.type, "schema", spec)
            else:
                per_file[order][column] = _Typed(
                    default.kind, default.origin, spec, default.parsed, default.total
                )
            if spec and spec.unit:
                units[column] = spec.unit
        kinds = {f"{t.kind} ({t.origin})" for t in (per_file[o][column] for o in schemas)}
        origins[column] = ", ".join(sorted(kinds))
    stats["column_types"] = origins
    stats["units"] = units
    return per_file


def _type_row(row: _Row, typed: dict[str, _Typed], schema: ClinicalSchema) -> None:
    for column, text in row.texts.items():
        kind = typed[column]
        spec = schema.get(column)
        if _is_missing(text):
            row.values[column] = None
            if spec and spec.required:
                row.problems.append(
                    (
                        "missing_value",
                        f"missing_value: {row.where} column '{column}' is empty, but {spec.source} "
                        "marks it required (fill it in, or drop required: true)",
                    )
                )
            continue
        value, rule, _ = _parse(text, kind)
        if rule:
            row.problems.append(_value_problem(column, text, value, rule, kind, row.where))
            continue
        if spec and spec.allowed is not None and not _allowed(value, spec.allowed):
            shown = text if len(text) <= 40 else text[:37] + "..."
            allowed = ", ".join(str(a) for a in spec.allowed)
            row.problems.append(
                (
                    "value_not_allowed",
                    f"value_not_allowed: {row.where} column '{column}' has '{shown}', not one of the "
                    f"values allowed by {spec.source} ({allowed}); correct the value or extend allowed",
                )
            )
            continue
        row.values[column] = value


def _allowed(value: object, allowed: tuple) -> bool:
    if isinstance(value, bool):
        return value in {a for a in allowed if isinstance(a, bool)} or str(value).lower() in {
            str(a).lower() for a in allowed
        }
    return value in allowed or str(value) in {str(a) for a in allowed}


def _conflicts(a: dict, b: dict) -> list[str]:
    return [c for c in a if c in b and a[c] is not None and b[c] is not None and a[c] != b[c]]


def _resolve_duplicates(rows: list[_Row]) -> tuple[list[_Row], int]:
    """Per file: identical repeats of a patient merge; disagreeing repeats are all quarantined."""
    groups: dict[tuple[int, str], list[_Row]] = {}
    for row in rows:
        groups.setdefault((row.order, row.key), []).append(row)
    kept, merged = [], 0
    for group in groups.values():
        if len(group) == 1:
            kept.append(group[0])
            continue
        conflicting: set[str] = set()
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                conflicting.update(_conflicts(a.values, b.values))
        if conflicting:
            cols = ", ".join(f"'{c}'" for c in sorted(conflicting))
            for row in group:
                others = [str(o.number) for o in group if o is not row]
                rows_text = ("row " if len(others) == 1 else "rows ") + ", ".join(others)
                row.problems.append(
                    (
                        "conflicting_duplicate",
                        f"conflicting_duplicate: {row.where} and {rows_text} are the same patient "
                        f"with different values in {cols} (keep one row per patient; all of these "
                        "rows are quarantined until the file is corrected)",
                    )
                )
            continue
        first = group[0]
        for other in group[1:]:
            for column, value in other.values.items():
                if first.values.get(column) is None:
                    first.values[column] = value
        kept.append(first)
        merged += len(group) - 1
    return kept, merged


def _newest_values(rows: list[_Row], columns: list[str]) -> tuple[list[dict], int]:
    """One record per patient: newer files' non-empty values replace older ones."""
    patients: dict[str, dict] = {}
    superseded = 0
    for row in sorted(rows, key=lambda r: (r.order, r.number)):
        record = patients.get(row.key)
        if record is None:
            record = {
                "patient_key": row.key,
                "center_id": row.center,
                "_first": (row.order, row.number),
            }
            patients[row.key] = record
        else:
            superseded += 1
        for column, value in row.values.items():
            if value is not None:
                record[column] = value
        record["source_file"] = row.source
    ordered = sorted(patients.values(), key=lambda r: r.pop("_first"))
    return ordered, superseded


def _column_dtype(column: str, values: list, typed: dict[int, dict[str, _Typed]]) -> pl.DataType:
    kinds = {t[column].kind for t in typed.values() if column in t}
    mapping = {
        "int": pl.Int64,
        "float": pl.Float64,
        "event": pl.Int64,
        "date": pl.Date,
        "bool": pl.Boolean,
        "string": pl.String,
        "category": pl.String,
    }
    present = [v for v in values if v is not None]
    if kinds == {"duration"}:
        return pl.Int64 if all(isinstance(v, int) for v in present) else pl.Float64
    dtypes = {pl.Float64 if k == "duration" else mapping[k] for k in kinds}
    if len(dtypes) == 1:
        return dtypes.pop()
    if dtypes <= {pl.Int64, pl.Float64}:
        return pl.Float64
    return pl.String  # files typed the column differently (per-file schemas): keep it as text


def _build_table(
    patients: list[dict],
    columns: list[str],
    typed: dict[int, dict[str, _Typed]],
    loaded_at: datetime,
    previous: pl.DataFrame | None,
) -> pl.DataFrame:
    data: dict[str, pl.Series] = {
        "patient_key": pl.Series(
            "patient_key", [p["patient_key"] for p in patients], dtype=pl.String
        ),
        "center_id": pl.Series("center_id", [p["center_id"] for p in patients], dtype=pl.String),
    }
    for column in columns:
        values = [p.get(column) for p in patients]
        dtype = _column_dtype(column, values, typed)
        if dtype == pl.String:
            values = [None if v is None else str(v) for v in values]
        elif dtype == pl.Float64:
            values = [None if v is None else float(v) for v in values]
        data[column] = pl.Series(column, values, dtype=dtype)
    data["source_file"] = pl.Series(
        "source_file", [p["source_file"] for p in patients], dtype=pl.String
    )
    stamps = [loaded_at] * len(patients)
    if previous is not None and previous.height and "loaded_at" in previous.columns:
        stamps = _keep_previous_stamps(patients, columns, previous, stamps)
    data["loaded_at"] = pl.Series("loaded_at", stamps, dtype=pl.Datetime("us", "UTC"))
    return pl.DataFrame(data)


def _keep_previous_stamps(
    patients: list[dict], columns: list[str], previous: pl.DataFrame, stamps: list[datetime]
) -> list[datetime]:
    """Unchanged patients keep the previous run's loaded_at (re-runs are idempotent)."""
    compare = [c for c in ("center_id", *columns) if c]
    before = {r["patient_key"]: r for r in previous.to_dicts()}
    out = []
    for patient, stamp in zip(patients, stamps, strict=True):
        old = before.get(patient["patient_key"])
        same = old is not None and all(old.get(c) == patient.get(c) for c in compare)
        same = same and all(old.get(c) is None for c in old if c not in compare and c not in _META)
        out.append(old["loaded_at"] if same else stamp)
    return out


_META = frozenset({"patient_key", "source_file", "loaded_at"})


def _count_rules(rejects: list[Reject]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reject in rejects:
        counts[reject.rule] = counts.get(reject.rule, 0) + 1
    return dict(sorted(counts.items()))


def clinical_files(landing: Path) -> list[Path]:
    """The clinical data files under ``landing/clinical/`` (schema YAML files are not data)."""
    from dagster_project.lake import iter_files

    return [
        p
        for p in iter_files(Path(landing) / "clinical", CLINICAL_SUFFIXES)
        if not p.name.startswith("~$")
    ]
