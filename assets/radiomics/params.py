"""pyradiomics parameter files: discovery, validation and identity (``params_id``, ``params_sha256``).

A parameter set is one YAML file in pyradiomics' own format (``setting`` / ``imageType`` /
``featureClass``), so a file a user already runs with ``pyradiomics -p`` works here unchanged.
Sources, in order of precedence:

1. ``LAKE_HOME/params/*.yaml`` (and ``*.yml``): the user's files;
2. ``assets/radiomics/params/*.yaml``: the shipped defaults ``ct_default``, ``mr_default`` and ``pt_default`` (PET in SUV).

``params_id`` is the file stem; a user file with the same stem as a shipped one replaces it.
``params_sha256`` is the SHA-256 of the file's *parsed* content written as canonical JSON, so an
edited comment or re-indented file keeps its hash (no pointless re-extraction) while any changed
setting, image type or feature changes it. Files are validated with pyradiomics' own schema
(pykwalify + ``radiomics/schemas``); an invalid file becomes a ``Reject`` and is skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import yaml

from dagster_project.quarantine import Reject

SHIPPED_DIR = Path(__file__).resolve().parent / "params"
PARAMS_SUFFIXES = (".yaml", ".yml")
TARGET_TABLE = "radiomics_features"


# DICOM modality codes a params_id prefix can name ("ct_default" -> CT cases only)
MODALITY_PREFIXES = ("ct", "mr", "pt", "nm", "us", "mg", "cr", "dx")
NUCLEAR_PREFIXES = ("pt", "nm")  # SUV-scaled settings: only for cases known to be PET/NM


class ParamsError(ValueError):
    """A parameter file that pyradiomics would refuse; the message names the file and the problem."""


@dataclass(frozen=True)
class ParamsFile:
    """One parameter set: ``params_id`` (file stem), its file, content hash and origin."""

    params_id: str
    path: Path
    sha256: str
    source: str  # "lake" (LAKE_HOME/params) or "shipped" (assets/radiomics/params)


def read_params(path: str | os.PathLike) -> dict:
    """The parsed YAML of a parameter file (an empty file is pyradiomics' all-defaults ``{}``)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ParamsError(f"{path.name}: not readable as YAML ({error})") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(
            f"{path.name}: top level must be a mapping with setting/imageType/featureClass, "
            f"found {type(data).__name__}"
        )
    return data


def params_sha256(content: dict) -> str:
    """SHA-256 of the parsed parameters as canonical JSON (key order and comments do not count)."""
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def validate_params(path: str | os.PathLike) -> dict:
    """Parse and validate a parameter file with pyradiomics' own schema; returns the parsed dict."""
    import logging

    import pykwalify.core
    import radiomics

    path = Path(path)
    content = read_params(path)
    # pykwalify logs every schema error at ERROR level before raising; the exception says it all
    logging.getLogger("pykwalify").setLevel(logging.CRITICAL)
    schema_file, schema_funcs = radiomics.getParameterValidationFiles()
    try:
        core = pykwalify.core.Core(
            source_data=content, schema_files=[schema_file], extensions=[schema_funcs]
        )
        core.validate(raise_exception=True)
    except Exception as error:  # pykwalify raises SchemaError and, from extension funcs, anything
        message = " ".join(str(error).split())
        raise ParamsError(
            f"{path.name}: rejected by pyradiomics' parameter schema: {message}"
        ) from error
    return content


def params_file(
    path: str | os.PathLike,
    source: str = "lake",
    validate: bool = True,
    validated: Collection[str] = (),
) -> ParamsFile:
    """A ``ParamsFile`` for one path, validated unless ``validate=False`` or its content hash is
    in ``validated`` (parameters the lake already extracted with: they passed the schema then)."""
    path = Path(path).resolve()
    content = read_params(path)
    sha256 = params_sha256(content)
    if validate and sha256 not in validated:
        validate_params(path)  # imports pyradiomics and pykwalify: ~0.3 s in a fresh process
    return ParamsFile(params_id=path.stem, path=path, sha256=sha256, source=source)


def applies_to(params_id: str, modality: str | None) -> bool:
    """Whether a parameter set is meant for a case of this modality.

    A ``params_id`` starting with a modality code and ``_`` (``ct_default``, ``mr_prostate``)
    applies to cases of that modality only; any other ``params_id`` applies to every case. A case
    whose modality is unknown (a bare NIfTI/NRRD volume) gets every parameter set but the
    nuclear-medicine ones (``pt_*``, ``nm_*``: bins in SUV would make thousands of bins on other
    values): give it a ``modality`` column in cases.csv to avoid extracting it with, say, MR
    settings, or to extract a PET volume with ``pt_*``.
    """
    prefix = params_id.split("_", 1)[0].lower() if "_" in params_id else ""
    if prefix not in MODALITY_PREFIXES:
        return True
    if not modality:
        return prefix not in NUCLEAR_PREFIXES
    return prefix == str(modality).strip().lower()


def _candidates(folder: Path | None) -> list[Path]:
    if folder is None or not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in PARAMS_SUFFIXES and not p.name.startswith(".")
    )


def discover_params(
    lake_params_dir: str | os.PathLike | None,
    include_shipped: bool = True,
    landing: str | os.PathLike | None = None,
    validated: Collection[str] = (),
) -> tuple[list[ParamsFile], list[Reject]]:
    """Every usable parameter set: LAKE_HOME/params files override shipped files of the same stem.

    Returns ``(params, rejects)``; an invalid user file is a Reject (rule ``invalid_params``) and its
    ``params_id`` is dropped, never silently replaced by the shipped file of the same name.
    ``landing`` (the lake's landing folder) makes reject paths relative to it, as everywhere else.
    ``validated``: content hashes known to be valid (``incremental.stored_pairs``'
    ``params_sha256``), so a run with nothing new does not load pyradiomics' schema.
    """
    found: dict[str, ParamsFile] = {}
    rejects: list[Reject] = []
    user_dir = Path(lake_params_dir) if lake_params_dir is not None else None
    user_files = _candidates(user_dir)
    stems: dict[str, Path] = {}
    for path in user_files:
        if path.stem in stems:
            rejects.append(
                _reject(
                    path,
                    landing,
                    "duplicate_params_id",
                    f"duplicate_params_id: {path.name} and {stems[path.stem].name} both define "
                    f"params_id '{path.stem}'; {path.name} was skipped (keep one of them)",
                )
            )
            continue
        stems[path.stem] = path
        try:
            found[path.stem] = params_file(path, source="lake", validated=validated)
        except ParamsError as error:
            rejects.append(
                _reject(
                    path,
                    landing,
                    "invalid_params",
                    f"invalid_params: {error} (fix the file; params_id '{path.stem}' is not "
                    "extracted until it validates)",
                )
            )
    if include_shipped:
        for path in _candidates(SHIPPED_DIR):
            if path.stem not in stems:
                found[path.stem] = params_file(path, source="shipped", validated=validated)
    return [found[k] for k in sorted(found)], rejects


def _reject(path: Path, landing: str | os.PathLike | None, rule: str, reason: str) -> Reject:
    where = (
        Path(os.path.relpath(path.resolve(), Path(landing).resolve())).as_posix()
        if landing is not None
        else f"params/{path.name}"
    )
    return Reject(source_path=where, target_table=TARGET_TABLE, rule=rule, reason=reason)
