"""Mapping files: land a new export format without code (``LAKE_HOME/mappings/*.yaml``).

A mapping says which landed files it applies to and which of their columns is which contract
field; the landed file itself is never changed. The grants, clinical and external-features
ingests all use this one module. Shape (every key but ``target``/``columns`` optional; at least
one of ``files`` and ``header`` is needed)::

    target: clinical                     # grants | clinical | external_features
    description: follow-up export of hospital A
    files: ["clinical/hospital_a_*.xlsx"]  # globs on the path under landing/ (or the file name)
    header: [病人编号, 随访时间(月)]        # header signature: all of these columns present
    header_row: 3                        # 1-based row of the header (default: detected)
    columns:                             # source column -> contract field (null: drop it)
      病人编号: patient_id
      随访时间(月): follow_up_months
      肿瘤直径(mm): {field: tumor_size_cm, factor: 0.1}        # unit conversion
      是否复发: {field: rfs_event, values: {是: 1, 否: 0}}     # value codes
      经费(万元): {field: amount, factor: 10000, currency: CNY} # grants: amount in whole units
    constants: {center_id: C3}           # a value for every row

Matching: a mapping whose ``files`` glob matches wins over one that matches by ``header`` only;
among equals the first file name (sorted) wins; a mapping always wins over the built-in
formats. Column names are compared after NFKC, lower-casing and removing the unit in brackets
and punctuation (``随访时间（月）`` matches ``随访时间(月)``), unless two columns would then collide.
A file of an unknown format is quarantined with :func:`skeleton`, a ready-to-edit mapping.
Pure module (no Dagster import).
"""

from __future__ import annotations

import fnmatch
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dagster_project.sheets import normalize_name

MAPPINGS_DIR = "mappings"
TARGETS = ("grants", "clinical", "external_features")
# contract fields a grants mapping may name (the rest of the grants table is derived)
GRANT_FIELDS = (
    "grant_id",
    "title",
    "pi",
    "institution",
    "fund_type",
    "amount",
    "currency",
    "start_year",
    "end_year",
    "period",
    "discipline_code",
    "keywords",
    "source",
    "country",
)
REQUIRED = {
    "grants": ("grant_id",),
    "clinical": ("patient_id", "center_id"),
    "external_features": (),
}
TOP_KEYS = ("target", "description", "files", "header", "header_row", "columns", "constants")
COLUMN_KEYS = ("field", "factor", "currency", "values")


class MappingError(ValueError):
    """A mapping file that cannot be used: the message names the file, the key and what is allowed."""


@dataclass(frozen=True)
class ColumnRule:
    source: str  # the column as the mapping writes it
    field: str | None  # contract field; None drops the column
    factor: float | None = None
    currency: str | None = None
    values: dict[str, object] | None = None  # normalized source text -> value

    def code(self, text: str | None) -> object:
        """The value a cell's text stands for (value codes; unknown texts unchanged)."""
        if text is None or not self.values:
            return text
        return self.values.get(_value_key(text), text)


@dataclass(frozen=True)
class Mapping:
    name: str  # file stem
    path: str  # "mappings/<file>" (shown in stats and reasons)
    target: str
    columns: tuple[ColumnRule, ...]
    files: tuple[str, ...] = ()
    header: tuple[str, ...] = ()
    header_row: int | None = None
    constants: dict[str, object] = field(default_factory=dict)
    description: str = ""

    def match(self, relpath: str, header: list[str]) -> int:
        """2 = matched by file glob, 1 = by header signature only, 0 = not at all."""
        keys = {normalize_name(h) for h in header if h}
        if self.header and not {normalize_name(h) for h in self.header} <= keys:
            return 0
        if self.files:
            name = relpath.rsplit("/", 1)[-1]
            hit = any(fnmatch.fnmatch(relpath, g) or fnmatch.fnmatch(name, g) for g in self.files)
            return 2 if hit else 0
        return 1

    def rules_by_column(self, header: list[str]) -> dict[int, ColumnRule]:
        """Header index -> rule (exact name first, then the normalized name)."""
        out: dict[int, ColumnRule] = {}
        exact = {h: i for i, h in enumerate(header)}
        normalized: dict[str, int] = {}
        for i, h in enumerate(header):
            normalized.setdefault(normalize_name(h), i)
        for rule in self.columns:
            index = exact.get(rule.source)
            if index is None:
                index = normalized.get(normalize_name(rule.source))
            if index is not None and index not in out:
                out[index] = rule
        return out

    def missing_columns(self, header: list[str]) -> list[str]:
        found = self.rules_by_column(header)
        return [r.source for r in self.columns if r not in found.values()]


def _value_key(text: object) -> str:
    return unicodedata.normalize("NFKC", str(text)).strip().lower()


def _parse_rule(source: str, spec: object, where: str, target: str) -> ColumnRule:
    if spec is None:
        return ColumnRule(source, None)
    if isinstance(spec, str):
        spec = {"field": spec}
    if not isinstance(spec, dict):
        raise MappingError(
            f"{where}: column {source!r} must map to a field name or to "
            "{field: ..., factor: ..., currency: ..., values: {...}}"
        )
    unknown = sorted(set(spec) - set(COLUMN_KEYS))
    if unknown:
        raise MappingError(
            f"{where}: column {source!r} has unknown key(s) {unknown}; allowed: "
            f"{', '.join(COLUMN_KEYS)}"
        )
    name = spec.get("field")
    if name is not None and (not isinstance(name, str) or not name.isidentifier()):
        raise MappingError(
            f"{where}: column {source!r} maps to {name!r}, which is not a field name "
            "(letters, digits and _, no spaces or brackets)"
        )
    if target == "grants" and name is not None and name not in GRANT_FIELDS:
        raise MappingError(
            f"{where}: column {source!r} maps to {name!r}; a grants mapping may name "
            f"{', '.join(GRANT_FIELDS)}"
        )
    factor = spec.get("factor")
    if factor is not None and (isinstance(factor, bool) or not isinstance(factor, int | float)):
        raise MappingError(f"{where}: column {source!r} has factor {factor!r}, not a number")
    values = spec.get("values")
    if values is not None and not isinstance(values, dict):
        raise MappingError(
            f"{where}: column {source!r} has values {values!r}; write value codes as "
            "{source value: value}, e.g. {是: 1, 否: 0}"
        )
    currency = spec.get("currency")
    if target == "grants" and name == "amount" and not currency:
        raise MappingError(
            f"{where}: the amount column {source!r} needs its currency "
            "(e.g. {field: amount, factor: 10000, currency: CNY} for 万元)"
        )
    return ColumnRule(
        str(source),
        name,
        float(factor) if factor is not None else None,
        str(currency).upper() if currency else None,
        {_value_key(k): v for k, v in values.items()} if values else None,
    )


def parse_mapping(raw: object, path: str) -> Mapping:
    """A Mapping from loaded YAML; raises MappingError naming ``path``, the key and what is allowed."""
    if not isinstance(raw, dict):
        raise MappingError(f"{path}: expected a mapping with target: and columns:")
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise MappingError(f"{path}: unknown key(s) {unknown}; allowed: {', '.join(TOP_KEYS)}")
    target = raw.get("target")
    if target not in TARGETS:
        raise MappingError(f"{path}: target is {target!r}; one of {', '.join(TARGETS)}")
    files = raw.get("files") or []
    header = raw.get("header") or []
    for key, value in (("files", files), ("header", header)):
        if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
            raise MappingError(f"{path}: {key} must be a list of texts")
    if not files and not header:
        raise MappingError(
            f"{path}: say which files the mapping applies to: files (globs under landing/) "
            "and/or header (column names that must all be present)"
        )
    header_row = raw.get("header_row")
    if header_row is not None and (not isinstance(header_row, int) or header_row < 1):
        raise MappingError(f"{path}: header_row is {header_row!r}; a row number from 1")
    columns = raw.get("columns")
    if not isinstance(columns, dict) or not columns:
        raise MappingError(f"{path}: columns must map source columns to contract fields")
    rules = tuple(_parse_rule(str(k), v, path, target) for k, v in columns.items())
    constants = raw.get("constants") or {}
    if not isinstance(constants, dict):
        raise MappingError(f"{path}: constants must be a mapping of field: value")
    mapped = {r.field for r in rules if r.field} | set(constants)
    missing = [f for f in REQUIRED[target] if f not in mapped]
    if missing:
        raise MappingError(
            f"{path}: no column or constant gives {', '.join(missing)} (required for {target})"
        )
    return Mapping(
        name=Path(path).stem,
        path=path,
        target=target,
        columns=rules,
        files=tuple(str(f) for f in files),
        header=tuple(str(h) for h in header),
        header_row=header_row,
        constants={str(k): v for k, v in constants.items()},
        description=str(raw.get("description") or ""),
    )


def load_mappings(home: Path, target: str) -> tuple[list[Mapping], dict[str, str]]:
    """The valid mappings for ``target`` in ``LAKE_HOME/mappings/`` (sorted by file name) and
    {mapping file: error} for the files that cannot be used (any target)."""
    folder = Path(home) / MAPPINGS_DIR
    mappings: list[Mapping] = []
    errors: dict[str, str] = {}
    if not folder.is_dir():
        return mappings, errors
    for file in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        shown = f"{MAPPINGS_DIR}/{file.name}"
        try:
            mapping = parse_mapping(yaml.safe_load(file.read_text(encoding="utf-8")), shown)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            errors[shown] = f"{shown}: not readable YAML ({str(exc).splitlines()[0]})"
            continue
        except MappingError as exc:
            errors[shown] = str(exc)
            continue
        if mapping.target == target:
            mappings.append(mapping)
    return mappings, errors


def mapping_for(mappings: list[Mapping], relpath: str, header: list[str]) -> Mapping | None:
    """The mapping that applies to a file (see the module docstring), or None."""
    best, score = None, 0
    for mapping in mappings:
        found = mapping.match(relpath, header)
        if found > score:
            best, score = mapping, found
    return best


def convert_number(text: str | None, factor: float | None) -> str | None:
    """A number's text multiplied by ``factor`` (non-numbers unchanged, for the ingest to judge)."""
    if text is None or factor is None:
        return text
    clean = unicodedata.normalize("NFKC", text).replace(",", "").strip()
    try:
        value = float(clean) * factor
    except ValueError:
        return text
    return repr(round(value, 10))


def skeleton(
    target: str,
    relpath: str,
    header: list[str],
    guesses: dict[str, str] | None = None,
    fields: tuple[str, ...] = (),
    header_row: int | None = None,
) -> str:
    """A ready-to-edit mapping (YAML text) for a file of an unknown format."""
    guesses = guesses or {}
    allowed = ", ".join(fields) if fields else "any name (letters, digits, _)"
    required = ", ".join(REQUIRED[target]) or "none"
    lines = [
        "# save as LAKE_HOME/mappings/<name>.yaml; fill in each column's field (null drops it)",
        f"# fields: {allowed}; required: {required}",
        f"target: {target}",
        f"files: [{_quote(relpath)}]",
    ]
    if header_row and header_row > 1:
        lines.append(f"header_row: {header_row}")
    lines.append("columns:")
    for name in [h for h in header if h]:
        lines.append(f"  {_quote(name)}: {guesses.get(name) or 'null'}")
    if target == "grants":
        lines.append("# amount: {field: amount, factor: 10000, currency: CNY} for 万元")
    return "\n".join(lines)


def _quote(text: str) -> str:
    dumped = yaml.safe_dump(text, allow_unicode=True, default_style=None).strip()
    return dumped.removesuffix("\n...").strip()
