"""Maintained lookups of the research portfolio: region, fund type, discipline area, imaging terms.

Each lookup is a YAML file beside this module (documented at its top) so that a person can extend
it without touching code: ``regions.yaml`` (institution -> province/region), ``fund_types.yaml``
(original fund type -> English category), ``disciplines.yaml`` (discipline code -> group and area)
and ``imaging_keywords.yaml`` (Chinese/English terms that make a grant imaging-related).
Pure module (no Dagster import).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
_CJK = re.compile(r"[\u3000-\u9fff\uf900-\ufaff]")


def normalize_text(text: str | None) -> str:
    """NFKC (full-width -> ASCII), curly quotes made plain, whitespace collapsed and stripped."""
    if text is None:
        return ""
    text = unicodedata.normalize("NFKC", str(text))
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u200b", "")
    return re.sub(r"\s+", " ", text).strip()


def _load(name: str) -> dict:
    return yaml.safe_load((HERE / name).read_text(encoding="utf-8")) or {}


# regions ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    text: str  # normalized entry
    region: str
    latin: bool  # Latin entries match case-insensitively


@cache
def _region_sections() -> dict[str, list[_Entry]]:
    spec = _load("regions.yaml")
    sections: dict[str, list[_Entry]] = {}
    for section in ("specific", "institutions", "places"):
        entries = []
        for region, names in (spec.get(section) or {}).items():
            for name in names or []:
                text = normalize_text(name)
                entries.append(_Entry(text, str(region), latin=not _CJK.search(text)))
        sections[section] = entries
    return sections


def _matches(name: str, entries: list[_Entry]) -> list[tuple[_Entry, int]]:
    """Entries found in ``name`` with their start offset (Latin ones case-insensitively)."""
    lowered = name.lower()
    found = []
    for entry in entries:
        haystack, needle = (lowered, entry.text.lower()) if entry.latin else (name, entry.text)
        at = haystack.find(needle)
        if at >= 0:
            found.append((entry, at))
    return found


def _single_region(matches: list[tuple[_Entry, int]]) -> str | None:
    """The region of the longest match; None when equally long matches disagree."""
    if not matches:
        return None
    longest = max(len(e.text) for e, _ in matches)
    regions = {e.region for e, _ in matches if len(e.text) == longest}
    return regions.pop() if len(regions) == 1 else None


@lru_cache(maxsize=65536)
def region_for_institution(institution: str | None) -> str | None:
    """Province-level region of a Chinese institution by ``regions.yaml``; None when unknown.

    Rules (documented in regions.yaml): ``specific`` first (longest entry decides); else the
    ``institutions`` matches must all agree, their text is blanked out, and every remaining
    ``places`` match must agree too. Any disagreement or no match at all -> None (never guessed).
    """
    name = normalize_text(institution)
    if not name:
        return None
    sections = _region_sections()
    specific = _matches(name, sections["specific"])
    if specific:
        return _single_region(specific)
    institutions = _matches(name, sections["institutions"])
    region = None
    if institutions:
        if len({e.region for e, _ in institutions}) != 1:
            return None
        region = institutions[0][0].region
        # blank the matched institution names so a city inside them does not count as a place
        chars = list(name)
        for entry, at in institutions:
            for i in range(at, at + len(entry.text)):
                chars[i] = " "
        name = "".join(chars)
    places = {e.region for e, _ in _matches(name, sections["places"])}
    if region is not None:
        return region if places <= {region} else None
    return places.pop() if len(places) == 1 else None


# fund types ---------------------------------------------------------------------------------------
@cache
def _fund_rules() -> dict:
    return _load("fund_types.yaml")


@lru_cache(maxsize=65536)
def fund_type_for(source: str, original: str | None) -> str | None:
    """English fund-type category of an original fund type (NSFC text or NIH activity code)."""
    text = normalize_text(original)
    if not text:
        return None
    rules = _fund_rules()
    if source == "nih":
        code = text.upper()[:3]
        for rule in rules.get("nih", []):
            if code in (rule.get("codes") or []):
                return rule["category"]
        for rule in rules.get("nih", []):
            if any(code.startswith(p) for p in rule.get("prefixes") or []):
                return rule["category"]
        return "other"
    lowered = text.lower()
    for rule in rules.get("nsfc", []):
        if any(term.lower() in lowered for term in rule["contains"]):
            return rule["category"]
    return "other"


# disciplines --------------------------------------------------------------------------------------
@cache
def _disciplines() -> dict:
    return _load("disciplines.yaml")


@lru_cache(maxsize=65536)
def discipline_group_and_area(source: str, code: str | None) -> tuple[str | None, str | None]:
    """(group, area) of a discipline code: NSFC H1809 -> (H18, Imaging ...); NIH CA -> (CA, Cancer)."""
    text = normalize_text(code).upper()
    if not text:
        return None, None
    spec = _disciplines()
    if source == "nih":
        group = text[:2]
        return group, (spec.get("nih_institutes") or {}).get(group)
    group = text[:3] if re.match(r"^[A-Z]\d{2}", text) else text
    area = (spec.get("nsfc_groups") or {}).get(group)
    if area is None and re.match(r"^[A-Z]\d", text):
        area = (spec.get("nsfc_departments") or {}).get(text[0])
    return group, area


# imaging ------------------------------------------------------------------------------------------
@cache
def _imaging_patterns() -> list[tuple[str, re.Pattern]]:
    spec = _load("imaging_keywords.yaml")
    patterns = []
    for term in spec.get("chinese") or []:
        patterns.append((term, re.compile(re.escape(normalize_text(term)))))
    for term in spec.get("english") or []:
        patterns.append((term, re.compile(r"(?<![A-Za-z])" + re.escape(term), re.IGNORECASE)))
    for term in spec.get("acronyms") or []:
        patterns.append(
            (term, re.compile(r"(?<![A-Za-z0-9])" + re.escape(term) + r"(?![A-Za-z0-9])"))
        )
    return patterns


def imaging_terms(*texts: str | None) -> list[str]:
    """The imaging terms (as listed in imaging_keywords.yaml) found in any of the texts."""
    joined = " | ".join(normalize_text(t) for t in texts if t)
    if not joined:
        return []
    return [term for term, pattern in _imaging_patterns() if pattern.search(joined)]
