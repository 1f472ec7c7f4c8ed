"""Feature extraction for one case under one parameter set, with pyradiomics.

A *case task* is a plain dict (picklable, so it travels to process-pool and dask workers)::

    case_id, patient_key, center_id, image_path, mask_path (absolute), label (int),
    image_sha256, mask_sha256, [source_path: where the case came from, relative to landing/]

A *loader* is a picklable callable ``load(task) -> (sitk image, sitk mask)``; the default reads both
files with ``SimpleITK.ReadImage`` (NRRD, NIfTI, ...). The imaging domain plugs in its own loader
(DICOM series, DICOM SEG, mask QC); a loader refuses a case by raising an exception with ``rule``
and ``reason`` attributes (``CaseRejected``), which becomes a quarantine row with that rule.

``extract_case`` returns pyradiomics' features (``original_firstorder_Mean`` -> float) and its
``diagnostics_*`` entries (as strings) separately. ``run_task`` is what a worker runs: it never
raises, it returns a ``CaseResult`` carrying either the features or the error.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

TASK_KEYS = (
    "case_id",
    "patient_key",
    "center_id",
    "image_path",
    "mask_path",
    "label",
    "image_sha256",
    "mask_sha256",
)
DIAGNOSTICS_PREFIX = "diagnostics_"
EXTRACTION_FAILED = "extraction_failed"

Loader = Callable[[Mapping[str, Any]], tuple[Any, Any]]


def read_image_mask(task: Mapping[str, Any]) -> tuple[Any, Any]:
    """Default loader: image and mask with ``SimpleITK.ReadImage`` (NRRD, NIfTI and the like)."""
    import SimpleITK as sitk

    return sitk.ReadImage(str(task["image_path"])), sitk.ReadImage(str(task["mask_path"]))


class _KnownNoise(logging.Filter):
    """Drops pyradiomics' per-case reminder that SumAverage = 2 x JointAverage (not a problem)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("GLCM is symmetrical")


def quiet_radiomics() -> None:
    """pyradiomics logs INFO per case and feature class to stderr: keep WARNING and above only."""
    import radiomics

    radiomics.setVerbosity(logging.WARNING)
    logger = logging.getLogger("radiomics")
    logger.setLevel(logging.WARNING)
    glcm = logging.getLogger("radiomics.glcm")
    if not any(isinstance(f, _KnownNoise) for f in glcm.filters):
        glcm.addFilter(_KnownNoise())


@lru_cache(maxsize=16)
def _extractor(params_path: str, stamp: tuple[int, int]):
    """One validated extractor per parameter file and worker (``stamp`` = mtime, size)."""
    from radiomics import featureextractor

    quiet_radiomics()
    return featureextractor.RadiomicsFeatureExtractor(params_path)


@functools.cache
def extractor_version() -> str:
    """What every feature row carries in ``extractor_version``: the versions of the libraries
    that compute features, e.g. ``pyradiomics v3.1.4; SimpleITK 2.5.7; numpy 2.4.6``. A change of
    any of them re-extracts every case (``incremental.plan_extraction``)."""
    import numpy
    import radiomics
    import SimpleITK

    return (
        f"pyradiomics {radiomics.__version__}; SimpleITK {SimpleITK.Version_VersionString()}; "
        f"numpy {numpy.__version__}"
    )


def extract_case(
    task: Mapping[str, Any], params_path: str | os.PathLike, loader: Loader | None = None
) -> tuple[list[tuple[str, float]], dict[str, str]]:
    """Features ``[(name, value)]`` and diagnostics ``{key: str}`` of one case; raises on failure."""
    path = Path(params_path).resolve()
    stat = path.stat()
    extractor = _extractor(str(path), (stat.st_mtime_ns, stat.st_size))
    image, mask = (loader or read_image_mask)(task)
    result = extractor.execute(image, mask, label=int(task["label"]))
    features: list[tuple[str, float]] = []
    diagnostics: dict[str, str] = {}
    for name, value in result.items():
        if name.startswith(DIAGNOSTICS_PREFIX):
            diagnostics[name] = str(value)
        else:
            features.append((name, _real(value)))
    return features, diagnostics


def _real(value) -> float:
    """A feature value as float. pyradiomics occasionally returns a complex number whose imaginary
    part is rounding noise (e.g. 1-2.6e-17j); keep its real part, and NaN for a truly complex one."""
    number = complex(value)
    if number.imag == 0 or abs(number.imag) <= 1e-9 * max(1.0, abs(number.real)):
        return float(number.real)
    return float("nan")


@dataclass
class CaseResult:
    """What a worker sends back for one (case, params) task: features or an error, never both."""

    case_id: str
    params_id: str
    features: list[tuple[str, float]] = field(default_factory=list)
    diagnostics: dict[str, str] = field(default_factory=dict)
    rule: str = ""  # empty when the extraction succeeded
    error: str = ""
    seconds: float = 0.0
    extractor_version: str = ""

    @property
    def ok(self) -> bool:
        return not self.rule


def run_task(
    task: Mapping[str, Any],
    params_id: str,
    params_path: str | os.PathLike,
    loader: Loader | None = None,
) -> CaseResult:
    """Worker entry point: extract one case and never raise (a failure is part of the result)."""
    start = time.perf_counter()
    result = CaseResult(case_id=str(task["case_id"]), params_id=params_id)
    try:
        result.extractor_version = extractor_version()
        result.features, result.diagnostics = extract_case(task, params_path, loader)
        if not result.features:
            result.rule = EXTRACTION_FAILED
            result.error = "pyradiomics computed no feature (check featureClass and imageType in the params file)"
    except Exception as error:  # one bad case must never stop the run
        result.features, result.diagnostics = [], {}
        result.rule = str(getattr(error, "rule", "") or EXTRACTION_FAILED)
        message = getattr(error, "reason", None) or f"{type(error).__name__}: {error}"
        result.error = scrub_paths(str(message), task)
    result.seconds = time.perf_counter() - start
    return result


_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:[^\s'\"]+/)*[^\s'\"]+")


def scrub_paths(message: str, task: Mapping[str, Any]) -> str:
    """Remove absolute paths from an error message: folder names can carry patient identifiers."""
    for key, alias in (("image_path", "<image>"), ("mask_path", "<mask>")):
        value = task.get(key)
        if value:
            message = message.replace(str(value), alias)
    message = _ABSOLUTE_PATH.sub("<path>", message)
    return " ".join(message.split())[:500]
