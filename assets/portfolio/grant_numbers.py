"""Grant numbers as written in papers -> the keys the `grants` table uses.

NIH: a core project number is ACTIVITY + IC + 6-digit serial (``R01CA123456``). Papers write the
same grant in many ways (PubMed ``<GrantID>`` "CA 13208", "CA-13208", "5 P30 CA17065",
"R01 CA123456-01", "1 R01 AM 21104", "5RO1-CA-23692"). The stable part is IC + serial, so the
normalized key is the activity-less core id ``CA013208``; the activity is kept when it can be read
(``P30CA017065``) so an exact core project number can be preferred when linking.
NSFC: the 8-digit approval number (批准号, e.g. 81971612) is the key as it is.
Pure module (no Dagster import).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from assets.portfolio.lookups import normalize_text

# IC code (2 letters not glued to a preceding letter) + 2..6-digit serial (not glued to more digits)
_NIH_IC_SERIAL = re.compile(r"(?<![A-Z])([A-Z]{2})[\s\-#]*(\d{2,6})(?!\d)")
# activity code right before the IC: letter + letter/digit + digit (R01, P30, K08, DP1, UG3);
# "O" typed for "0" (RO1, KO8) is read as zero
_NIH_ACTIVITY = re.compile(r"(?<![A-Z0-9])(?:\d\s*)?([A-Z][0-9A-Z][0-9O])\s*-?\s*$")
# in free text only full core numbers count: activity + IC + 6-digit serial (optional -01A1 suffix)
_NIH_IN_TEXT = re.compile(
    r"(?<![A-Za-z0-9])(?:\d\s?)?([A-Z][0-9A-Z]\d)\s?-?([A-Z]{2})\s?-?(\d{6})(?![0-9])"
)
_NSFC_NUMBER = re.compile(r"(?<![0-9])([1-9]\d{7})(?![0-9])")
# YYYYMMDD dates are 8-digit numbers too: not taken from text unless they are a known grant id
_DATE_SHAPED = re.compile(r"^(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])$")
_NSFC_MENTION = re.compile(
    r"national natural science foundation of china|natural science foundation of china|\bNSFC\b|"
    r"国家自然科学基金|自然科学基金委",
    re.IGNORECASE,
)
_NIH_AGENCY = re.compile(
    r"\bNIH\b|\bADAMHA\b|^PHS HHS$|National Institutes? of Health", re.IGNORECASE
)
NSFC_CONTEXT_CHARS = 300  # an 8-digit number counts when an NSFC mention precedes it this closely


@dataclass(frozen=True)
class GrantKey:
    """A grant reference as found in a paper, with its normalized key (None when not readable)."""

    raw: str
    key: str | None  # NIH: IC + 6-digit serial (CA013208); NSFC: the 8-digit approval number;
    # other funders: the number without spaces; None when an NIH/NSFC number cannot be read
    agency_kind: str  # nih | nsfc | other
    core_project_num: str | None = None  # NIH activity + key when the activity was readable
    agency: str | None = None


def agency_kind(agency: str | None) -> str:
    """nih / nsfc / other from a PubMed <Agency> or MEDLINE GR agency text."""
    text = normalize_text(agency)
    if _NSFC_MENTION.search(text):
        return "nsfc"
    if _NIH_AGENCY.search(text):
        return "nih"
    return "other"


def parse_nih_grant(raw: str, acronym: str | None = None) -> tuple[str | None, str | None]:
    """(key, core_project_num) of an NIH grant string; (None, None) when no IC + serial is found.

    The longest serial wins (so "IR 26 CA 20121" reads CA020121, not IR000026); a bare number
    ("17947") takes its IC from the PubMed <Acronym>.
    """
    text = normalize_text(raw).upper()
    best = None
    for match in _NIH_IC_SERIAL.finditer(text):
        if best is None or len(match.group(2)) >= len(best.group(2)):
            best = match
    if best is None:
        digits = re.fullmatch(r"[#\s]*(\d{2,6})(?:-\d+)?", text)
        ic = normalize_text(acronym).upper()
        if digits and re.fullmatch(r"[A-Z]{2}", ic):
            return f"{ic}{int(digits.group(1)):06d}", None
        return None, None
    key = f"{best.group(1)}{int(best.group(2)):06d}"
    activity = _NIH_ACTIVITY.search(text[: best.start()])
    core = None
    if activity:
        code = activity.group(1)
        code = code[0] + code[1:].replace("O", "0")
        core = f"{code}{key}"
    return key, core


def parse_grant(
    raw: str, agency: str | None = None, acronym: str | None = None, country: str | None = None
) -> GrantKey:
    """Normalize one listed grant (PubMed <Grant>, MEDLINE GR line) by its agency."""
    kind = agency_kind(agency)
    text = normalize_text(raw)
    if kind == "nsfc":
        number = _NSFC_NUMBER.search(text)
        return GrantKey(text, number.group(1) if number else None, kind, None, agency)
    if kind == "nih" or (kind == "other" and normalize_text(country) == "United States"):
        key, core = parse_nih_grant(text, acronym)
        if key or kind == "nih":
            return GrantKey(text, key, "nih", core, agency)
    # another funder's own number: the text without spaces is its key
    return GrantKey(text, re.sub(r"\s+", "", text).upper() or None, "other", None, agency)


def grants_in_text(text: str | None, known_nsfc: frozenset[str] = frozenset()) -> list[GrantKey]:
    """Grant numbers found in free text (abstract, acknowledgement, funding statement).

    NIH: full core project numbers only (R01CA123456, "R01 CA123456-01"). NSFC: 8-digit numbers
    within NSFC_CONTEXT_CHARS after an NSFC mention (YYYYMMDD-shaped dates excluded), or equal
    to a known NSFC approval number.
    """
    text = normalize_text(text)
    if not text:
        return []
    found: dict[str, GrantKey] = {}
    for match in _NIH_IN_TEXT.finditer(text):
        key = f"{match.group(2)}{match.group(3)}"
        core = f"{match.group(1)}{key}"
        found.setdefault(core, GrantKey(match.group(0).strip(), key, "nih", core, None))
    mentions = [m.start() for m in _NSFC_MENTION.finditer(text)]
    for match in _NSFC_NUMBER.finditer(text):
        number = match.group(1)
        near = any(0 <= match.start() - at <= NSFC_CONTEXT_CHARS for at in mentions)
        if (near and not _DATE_SHAPED.match(number)) or number in known_nsfc:
            found.setdefault(number, GrantKey(number, number, "nsfc", None, None))
    return list(found.values())
