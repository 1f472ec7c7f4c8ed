"""Versions of a study run: content hashes of the data, the code and the resolved study.

``model_version(resolved spec YAML, data hashes, code version)`` is a content hash, so the same
data with the same seed and code gives the same version (and, as tested, identical metrics);
``code_version`` hashes the study modules that compute a result (``CODE_MODULES``) and the
versions of the libraries they fit with. ``model_versions_row`` is the lake ``model_versions``
row of a training run.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from assets.studies.spec import StudySpec

CODE_MODULES = (
    "spec",
    "split",
    "transformers",
    "pipeline",
    "metrics",
    "ci_flags",
    "combined",
    "explain",
    "calibration",
    "harmonize",
    "heterogeneity",
    "versioning",
    "data",
    "fit",
    "evaluate",
    "plots",
    "store",
    "run",
)
MODEL_VERSIONS_SCHEMA = {
    "study": pl.String,
    "model_version": pl.String,
    "trained_at": pl.Datetime("us", "UTC"),
    "data_version": pl.String,
    "code_version": pl.String,
    "params": pl.String,
    "artifact_path": pl.String,
}


def frame_sha256(frame: pl.DataFrame, key: str = "patient_key") -> str:
    """Content hash of a frame, independent of row and column order."""
    ordered = frame.select(sorted(frame.columns))
    if key in ordered.columns:
        ordered = ordered.sort(key)
    digest = hashlib.sha256()
    for name in ordered.columns:
        series = ordered[name]
        digest.update(f"{name}\x00{series.dtype}\x00".encode())
        digest.update(series.is_null().to_numpy().tobytes())
        if series.dtype.is_numeric() or series.dtype == pl.Boolean:
            digest.update(series.cast(pl.Float64).fill_null(0.0).to_numpy().tobytes())
        else:
            digest.update("\x1f".join(series.cast(pl.String).fill_null("").to_list()).encode())
    return digest.hexdigest()


def code_version() -> str:
    """Hash of this package's study modules and the versions of the libraries they fit with."""
    import sklearn
    import xgboost

    digest = hashlib.sha256()
    folder = Path(__file__).resolve().parent
    for module in CODE_MODULES:
        digest.update((folder / f"{module}.py").read_bytes())
    digest.update(
        f"numpy {np.__version__} sklearn {sklearn.__version__} xgboost {xgboost.__version__}".encode()
    )
    return digest.hexdigest()[:12]


def model_version(spec_yaml_text: str, data_hashes: dict[str, str], code_version: str) -> str:
    """Content-addressed model version: same study text + data + code -> same version."""
    payload = json.dumps(
        {"spec": spec_yaml_text, "data": dict(sorted(data_hashes.items())), "code": code_version},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def data_version(data_hashes: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(sorted(data_hashes.items()))).encode()).hexdigest()[:16]


def model_versions_row(
    spec: StudySpec,
    version: str,
    code: str,
    data_hashes: dict[str, str],
    fitted: dict[str, Any],
    artifact_path: str,
    trained_at: datetime | None = None,
) -> pl.DataFrame:
    """The ``model_versions`` row of a training run (params: tuned parameters, thresholds)."""
    params = {
        "models": {
            name: {
                "best_params": _jsonable(m.best_params),
                "threshold": m.threshold,
                "cv_auc": m.cv_auc,
                "cv_folds": getattr(m, "cv_folds", None),
                "selected_features": m.selected_features,
            }
            for name, m in fitted.items()
        },
        "spec": spec.to_dict(),
    }
    return pl.DataFrame(
        {
            "study": [spec.name],
            "model_version": [version],
            "trained_at": [trained_at or datetime.now(UTC)],
            "data_version": [data_version(data_hashes)],
            "code_version": [code],
            "params": [json.dumps(params, sort_keys=True, default=str)],
            "artifact_path": [artifact_path],
        },
        schema=MODEL_VERSIONS_SCHEMA,
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value
