"""Feature extraction for one case under one parameter set, with pyradiomics.

A *case task* is a plain dict (picklable, so it travels to process-pool and dask workers)::

    case_id, patient_key, center_id, image_path, mask_path (absolute), label (int),
    image_sha256, mask_sha256, [source_path: where the case came from, relative to landing/]

A *loader* is a picklable callable ``load(task) -> (sitk image, sitk mask)``; the default reads both
files with ``SimpleITK.ReadImage`` (NRRD, NIfTI, ...). The imaging domain plugs in its own loader
(DICOM series, DICOM SEG, mask QC); a loader refuses a case by raising an exception with ``rule``
and ``reason`` attributes (``CaseRejected``), which becomes a quarantine row with that rule.

``run_case`` is what a worker runs: one case under every parameter set it needs, the case read
once (one loader call) and its normalization / resampling (pyradiomics' ``loadImage``) done once
per group of parameter sets whose preprocessing settings are equal (``preprocessing_key``), and
the shape features once per group whose shape settings are equal too (``shape_key``: a
bin-width variant shares them); the other steps run per parameter set exactly as
``RadiomicsFeatureExtractor.execute`` runs them, so features (``original_firstorder_Mean`` ->
float) and ``diagnostics_*`` (as strings) equal one ``execute`` per pair. It never raises: it
returns one ``CaseResult`` per parameter set carrying either the features or the error.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
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


def _extractor_for(params_path: str | os.PathLike):
    path = Path(params_path).resolve()
    stat = path.stat()
    return _extractor(str(path), (stat.st_mtime_ns, stat.st_size))


# Settings pyradiomics reads only after ``loadImage`` (discretization, texture matrices, filters,
# resegmentation): parameter sets that differ only in these share one preprocessed image. Every
# other setting (normalize*, removeOutliers, resampledPixelSpacing, interpolator, padDistance,
# preCrop, label*, correctMask, minimumROI*, geometryTolerance, additionalInfo, and any setting
# this list does not know) keeps parameter sets apart: unknown means not shared.
AFTER_LOAD_SETTINGS = frozenset(
    {
        "binWidth", "binCount", "voxelArrayShift", "symmetricalGLCM", "weightingNorm",
        "distances", "gldm_a", "force2D", "force2Ddimension", "resegmentRange",
        "resegmentMode", "resegmentShape", "kernelRadius", "maskedKernel", "initValue",
        "voxelBatch", "sigma", "start_level", "level", "wavelet", "gradientUseSpacing",
        "lbp2DRadius", "lbp2DSamples", "lbp2DMethod", "lbp3DLevels", "lbp3DIcosphereRadius",
        "lbp3DIcosphereSubdivision",
    }
)  # fmt: skip


def preprocessing_key(settings: Mapping[str, Any], label: int) -> str:
    """What ``loadImage`` depends on: equal keys give the same preprocessed image and mask."""
    import json

    kept = {k: v for k, v in settings.items() if k not in AFTER_LOAD_SETTINGS}
    kept["label"] = int(label)
    return json.dumps(kept, sort_keys=True, default=repr)


class _Recorder:
    """Forwards calls to pyradiomics' ``GeneralInfo`` and remembers them, so that a shared
    preprocessing adds the same ``diagnostics_*`` entries to every parameter set's result."""

    def __init__(self, target):
        self.target, self.calls = target, []

    def __getattr__(self, name):
        method = getattr(self.target, name)

        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return method(*args, **kwargs)

        return call


class _SharedLoad:
    """``loadImage`` in place of pyradiomics' own: run once per preprocessing key, then replayed
    (the same image and mask objects, the same diagnostics calls) for the other parameter sets;
    and ``computeShape`` once per shape key (``shape``)."""

    def __init__(self):
        self.done: dict[str, tuple[Any, Any, list]] = {}
        self.shapes: dict[str, Any] = {}
        self.key = ""

    def shape(self, extractor, key: str, image, mask, boundingBox, **settings):
        """``computeShape`` once per ``shape_key``; a copy of the same features after that."""
        from radiomics.featureextractor import RadiomicsFeatureExtractor

        if key not in self.shapes:
            self.shapes[key] = RadiomicsFeatureExtractor.computeShape(
                extractor, image, mask, boundingBox, **settings
            )
        return self.shapes[key].copy()

    def __call__(self, image, mask, generalInfo=None, **settings):
        from radiomics.featureextractor import RadiomicsFeatureExtractor

        if self.key not in self.done:
            recorder = None if generalInfo is None else _Recorder(generalInfo)
            loaded = RadiomicsFeatureExtractor.loadImage(image, mask, recorder, **settings)
            self.done[self.key] = (*loaded, recorder.calls if recorder else [])
            return loaded
        image, mask, calls = self.done[self.key]
        if generalInfo is not None:
            for name, args, kwargs in calls:
                getattr(generalInfo, name)(*args, **kwargs)
        return image, mask


# settings that change the shape features beyond the preprocessing (resegmentation with
# resegmentShape, 2D shape)
SHAPE_SETTINGS = (
    "resegmentRange",
    "resegmentMode",
    "resegmentShape",
    "force2D",
    "force2Ddimension",
)


def shape_key(extractor, label: int) -> str:
    """What ``computeShape`` depends on: the preprocessing, the settings above and the enabled
    shape features (shape features come from the mask's geometry, not from grey levels)."""
    import json

    extra = {k: extractor.settings.get(k) for k in SHAPE_SETTINGS}
    extra["enabled"] = {k: extractor.enabledFeatures.get(k, "off") for k in ("shape", "shape2D")}
    return preprocessing_key(extractor.settings, label) + json.dumps(extra, default=repr)


def _execute(extractor, image, mask, label: int, shared: _SharedLoad | None):
    """``extractor.execute`` with ``loadImage`` and ``computeShape`` shared through ``shared``
    (when given): the shape features (on a large ROI, the maximum-diameter search takes longer
    than a filtered image's texture features) are computed once per ``shape_key``."""
    if shared is None:
        return extractor.execute(image, mask, label=label)
    shared.key = preprocessing_key(extractor.settings, label)
    shape = shape_key(extractor, label)
    # instance attributes shadow the class's methods ...
    extractor.loadImage = shared
    extractor.computeShape = functools.partial(shared.shape, extractor, shape)
    try:
        return extractor.execute(image, mask, label=label)
    finally:
        del extractor.loadImage, extractor.computeShape  # ... for this call only (cached)


def _split(result: Mapping[str, Any]) -> tuple[list[tuple[str, float]], dict[str, str]]:
    """pyradiomics' result as features ``[(name, value)]`` and diagnostics ``{key: str}``."""
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
    retry: bool = False  # the machinery failed (a worker died), not the case: try again next run

    @property
    def ok(self) -> bool:
        return not self.rule


def _fail(result: CaseResult, error: Exception, task: Mapping[str, Any]) -> None:
    result.features, result.diagnostics = [], {}
    result.rule = str(getattr(error, "rule", "") or EXTRACTION_FAILED)
    message = getattr(error, "reason", None) or f"{type(error).__name__}: {error}"
    result.error = scrub_paths(str(message), task)


ENABLED_IMAGE_TYPES_KEY = "diagnostics_Configuration_EnabledImageTypes"


def _part_of(full, image_types: dict[str, dict], shape: bool):
    """The extractor ``full`` restricted to some of its image types (and without the shape
    features unless ``shape``): one part of a case split across workers (``schedule``)."""
    import copy

    part = copy.copy(full)  # the attributes replaced below are new objects: ``full`` is untouched
    part.enabledImagetypes = copy.deepcopy(image_types)
    if not shape:
        part.enabledFeatures = {
            name: features
            for name, features in full.enabledFeatures.items()
            if name not in ("shape", "shape2D")
        }
    return part


def run_case(
    task: Mapping[str, Any],
    params: Sequence[tuple],
    loader: Loader | None = None,
) -> list[CaseResult]:
    """Worker entry point: one case under every parameter set of ``params``; never raises.

    ``params`` holds ``(params_id, params_path)`` or, for a part of a case split across workers
    (``schedule``), ``(params_id, params_path, image_types, shape)``: only those image types,
    the shape features only if ``shape``, and ``diagnostics_*`` only with the shape part (with
    the whole parameter set's image types, as one ``execute`` records them).

    The case is read once; parameter sets with equal ``preprocessing_key`` share one
    ``loadImage`` (normalization, resampling, pre-crop). A loader refusal fails every parameter
    set with the loader's rule; a pyradiomics error fails only its own parameter set. ``seconds``
    of a result counts its own work, plus the read for the first one.
    """
    results = [CaseResult(case_id=str(task["case_id"]), params_id=job[0]) for job in params]
    start = time.perf_counter()
    try:
        version = extractor_version()
        image, mask = (loader or read_image_mask)(task)
    except Exception as error:  # the loader's refusal (mask QC, RTSTRUCT, SUV tags) or a bad file
        for result in results:
            _fail(result, error, task)
        results[0].seconds = time.perf_counter() - start
        return results
    shared = _SharedLoad()
    for result, (_, params_path, *part) in zip(results, params, strict=True):
        try:
            result.extractor_version = version
            extractor = full = _extractor_for(params_path)
            image_types, shape = part if part else (None, True)
            if image_types is not None:
                extractor = _part_of(full, image_types, shape)
            result.features, result.diagnostics = _split(
                _execute(extractor, image, mask, int(task["label"]), shared)
            )
            if image_types is not None and not shape:
                result.diagnostics = {}
            elif image_types is not None and ENABLED_IMAGE_TYPES_KEY in result.diagnostics:
                result.diagnostics[ENABLED_IMAGE_TYPES_KEY] = str(full.enabledImagetypes)
            if not result.features:
                result.rule = EXTRACTION_FAILED
                result.error = "pyradiomics computed no feature (check featureClass and imageType in the params file)"
        except Exception as error:  # one bad parameter set must never stop the others
            _fail(result, error, task)
        now = time.perf_counter()
        result.seconds, start = now - start, now
    return results


def merge_parts(parts: Sequence[CaseResult]) -> CaseResult:
    """One (case, parameter set) result from the results of its parts (one part: itself): the
    features of every part, the diagnostics of the shape part; the first failure fails it."""
    if len(parts) == 1:
        return parts[0]
    failed = [part for part in parts if not part.ok]
    if failed:
        return failed[0]
    merged = CaseResult(parts[0].case_id, parts[0].params_id)
    merged.extractor_version = parts[0].extractor_version
    for part in parts:
        merged.features.extend(part.features)
        merged.diagnostics.update(part.diagnostics)
        merged.seconds += part.seconds
    return merged


_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:[^\s'\"]+/)*[^\s'\"]+")


def scrub_paths(message: str, task: Mapping[str, Any]) -> str:
    """Remove absolute paths from an error message: folder names can carry patient identifiers."""
    for key, alias in (("image_path", "<image>"), ("mask_path", "<mask>")):
        value = task.get(key)
        if value:
            message = message.replace(str(value), alias)
    message = _ABSOLUTE_PATH.sub("<path>", message)
    return " ".join(message.split())[:500]
