"""Cells of grant records: text, titles, amounts with their units, years, keywords, and the
row checks every grant format shares (one Reject per row naming the file, the record, the rule).
Pure module (no Dagster import).
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

from dagster_project.quarantine import Reject
from dagster_project.sheets import Sheet, normalize_name, split_unit

TARGET = "grants"
YEAR_MIN = 1980
MAX_DURATION_YEARS = 10  # an end year may lie this far beyond next year (multi-year awards)


_LIST_NUMBER = re.compile(r"^\s*(?:\d{1,4}\s*[.、)．）]|[(（]\d{1,4}[)）])\s*(?!\d)")
_KEYWORD_SPLIT = re.compile(r"[;；,，、|]+")
_SPACES = re.compile(r"[\s\u00a0\u3000]+")


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


class Problems:
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


def check_amount(
    problems: Problems, raw: str | None, column: str, where: str
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


def check_year(
    problems: Problems, raw: str | None, column: str, where: str, label: str, upper: int
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


def check_order(problems: Problems, start: int | None, end: int | None, where: str) -> None:
    if start is not None and end is not None and end < start:
        problems.add(
            "end_before_start",
            f"{where} ends in {end}, before it starts in {start} (correct the years and land the "
            f"file again)",
        )


def row_label(sheet: Sheet, k: int, position: int, line: int | None) -> str:
    if sheet.kind == "text":
        return (
            f"row {k} (line {line})"
            if sheet.part is None
            else f"{sheet.part} row {k} (line {line})"
        )
    if sheet.kind == "json":
        return f"record {position}"
    return f"row {position}" if sheet.part is None else f"sheet {sheet.part!r} row {position}"


def wrong_columns(path: str, record: str, where: str, found: int, expected: int) -> Reject:
    return Reject(
        path,
        TARGET,
        "wrong_column_count",
        f"wrong_column_count: {where} has {found} cells but the header has {expected} "
        f"(quote cells that contain the delimiter and land the file again)",
        record=record,
    )


def cell(cells: list[str | None], index: int | None) -> str | None:
    if index is None or index >= len(cells):
        return None
    return clean_text(cells[index])


def int_or_none(raw: str | None) -> int | None:
    try:
        return None if raw is None else int(float(raw))
    except ValueError:
        return None


def year_or_none(raw: str | None) -> int | None:
    try:
        return parse_year(raw)
    except ValueError:
        return None
