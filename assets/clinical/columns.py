"""Which lake column each landed clinical column becomes: a mapping file, then the built-in names.

``column_names.yaml`` (beside this module) holds the names the lake understands without a mapping:
Chinese and common English headers for patient_id, center_id, follow-up durations with their unit
(随访时间(月) -> follow_up_months), events with their usual answers (是否复发 是/否 -> rfs_event
1/0) and a few value codes (性别 男/女 -> sex M/F); a built-in name is not used when the file
already has a column of that name. A mapping file in ``LAKE_HOME/mappings``
(``dagster_project.mappings``) wins over them, column by column. Columns neither names are kept
under their own name. Pure module (no Dagster import).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

from dagster_project.mappings import ColumnRule, Mapping, convert_number
from dagster_project.sheets import normalize_name, split_unit

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class _Builtin:
    names: dict[str, str]  # normalized header -> lake name
    durations: dict[str, str]  # normalized header -> stem (follow_up)
    units: dict[str, str]  # unit text -> suffix
    events: dict[str, str]  # normalized header -> event column
    event_codes: dict[str, object]
    codes: dict[str, dict[str, object]]  # lake name -> {text: value}


def _key(text: object) -> str:
    return unicodedata.normalize("NFKC", str(text)).strip().lower()


@cache
def builtin() -> _Builtin:
    spec = yaml.safe_load((HERE / "column_names.yaml").read_text(encoding="utf-8"))

    def invert(section: dict) -> dict[str, str]:
        return {normalize_name(str(a)): name for name, aliases in section.items() for a in aliases}

    return _Builtin(
        names=invert(spec["names"]),
        durations=invert(spec["durations"]),
        units={_key(k): v for k, v in spec["units"].items()},
        events=invert(spec["events"]),
        event_codes={_key(k): v for k, v in spec["event_codes"].items()},
        codes={n: {_key(k): v for k, v in c.items()} for n, c in spec["codes"].items()},
    )


def known_header_names(mapping: Mapping | None = None) -> frozenset[str]:
    """Normalized names that mark a header row (for header detection)."""
    b = builtin()
    names = set(b.names) | set(b.durations) | set(b.events) | {"patientid", "centerid"}
    if mapping is not None:
        names |= {normalize_name(r.source) for r in mapping.columns}
    return frozenset(names)


Convert = Callable[[str | None], str | None]


@dataclass
class ColumnPlan:
    """Per landed column: its lake name (None: dropped) and a text conversion (or None)."""

    names: list[str | None]
    converts: list[Convert | None]
    constants: dict[str, str] = field(default_factory=dict)
    renamed: dict[str, str] = field(default_factory=dict)  # landed name -> lake name

    def apply(self, cells: list[str | None]) -> list[str | None]:
        out = []
        for i, name in enumerate(self.names):
            if name is None:
                continue
            text = cells[i] if i < len(cells) else None
            convert = self.converts[i]
            out.append(convert(text) if convert and text is not None else text)
        return out + list(self.constants.values())

    @property
    def header(self) -> list[str]:
        return [n for n in self.names if n is not None] + list(self.constants)


def _coded(codes: dict[str, object]) -> Convert:
    def convert(text: str | None) -> str | None:
        if text is None:
            return None
        value = codes.get(_key(text), text)
        return None if value is None else str(value)

    return convert


def _mapped(rule: ColumnRule) -> Convert | None:
    if not rule.values and rule.factor is None:
        return None

    def convert(text: str | None) -> str | None:
        value = rule.code(text)
        text = None if value is None else str(value)
        return convert_number(text, rule.factor)

    return convert


def plan_columns(header: list[str], mapping: Mapping | None = None) -> ColumnPlan:
    """The lake name and conversion of each landed column (see the module docstring)."""
    b = builtin()
    rules = mapping.rules_by_column(header) if mapping else {}
    names: list[str | None] = []
    converts: list[Convert | None] = []
    renamed: dict[str, str] = {}
    present = {h.strip().lower() for h in header}  # a built-in name never shadows a column
    for index, original in enumerate(header):
        if index in rules:
            rule = rules[index]
            names.append(rule.field)
            converts.append(_mapped(rule))
            if rule.field and rule.field != original:
                renamed[original] = rule.field
            continue
        key = normalize_name(original)
        _base, unit = split_unit(original)
        name, convert = None, None
        if key in b.names:
            name = b.names[key]
            convert = _coded(b.codes[name]) if name in b.codes else None
        elif key in b.durations:
            stem = b.durations[key]
            suffix = b.units.get(_key(unit)) if unit else None
            name = (
                f"{stem}_{suffix}" if suffix else (stem if stem == "tumor_size" else f"{stem}_time")
            )
        elif key in b.events:
            name, convert = b.events[key], _coded(b.event_codes)
        if name is None or (name != original and name.lower() in present):
            names.append(original)
            converts.append(None)
        else:
            names.append(name)
            converts.append(convert)
            if name != original:
                renamed[original] = name
    constants = {k: str(v) for k, v in (mapping.constants if mapping else {}).items()}
    for name in list(constants):
        if name in names:
            del constants[name]  # a column of the file wins over the constant
    return ColumnPlan(names, converts, constants, renamed)
