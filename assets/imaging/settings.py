"""Per-center imaging settings from the optional ``LAKE_HOME/centers.yaml``.

```yaml
centers:
  C1:
    name: Hospital one
    rtstruct_roi: "GTV.*"        # default ROI (name or regular expression) for RTSTRUCT masks
    slice_gaps: quarantine       # or resample: a missing slice / non-uniform spacing
    gantry_tilt: quarantine      # or resample: a tilted CT series
```

Centers given as a plain list (``centers: [C1, C2]``) have the defaults. The file's list of
valid centers is read by the clinical domain (``assets.clinical.load.load_centers``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

CENTERS_FILE = "centers.yaml"
GEOMETRY_ACTIONS = ("quarantine", "resample")


@dataclass(frozen=True)
class CenterImaging:
    rtstruct_roi: str | None = None
    slice_gaps: str = "quarantine"
    gantry_tilt: str = "quarantine"


DEFAULT = CenterImaging()


def load_imaging_settings(home: Path | None) -> dict[str, CenterImaging]:
    """center_id -> its imaging settings; {} without a centers.yaml. A bad value raises
    ``ValueError`` naming the file, the center, the key and what is allowed."""
    path = Path(home) / CENTERS_FILE if home is not None else None
    if path is None or not path.is_file():
        return {}
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{CENTERS_FILE}: not readable YAML ({exc})") from exc
    if isinstance(raw, dict) and "centers" in raw:
        raw = raw["centers"]
    if not isinstance(raw, dict):
        return {}
    out = {}
    for center, entry in raw.items():
        if not isinstance(entry, dict):
            continue
        values = {}
        roi = entry.get("rtstruct_roi")
        if roi is not None:
            values["rtstruct_roi"] = str(roi)
        for key in ("slice_gaps", "gantry_tilt"):
            if key in entry:
                value = str(entry[key]).strip().lower()
                if value not in GEOMETRY_ACTIONS:
                    raise ValueError(
                        f"{CENTERS_FILE}: center {center}: {key} is {entry[key]!r}; "
                        f"allowed: {', '.join(GEOMETRY_ACTIONS)}"
                    )
                values[key] = value
        out[str(center)] = CenterImaging(**values)
    return out
