"""Units of work for a parallel extraction: one per case, a dominant case split by image type.

The limit of a parallel extraction on C workers is the sum of the single-case times divided by C,
but only when no case takes longer than that share: a whole-body PET or a large CT with LoG and
wavelet filters can take most of a small run's time, and one worker then finishes it long after
the others are idle. So:

- **One unit per case** holding every parameter set the case needs: the worker reads the case
  once and shares the preprocessing between parameter sets that allow it (``extract.run_case``).
- **Largest first** (estimated cost, below), so that no big case is left for last.
- **A dominant case is split** into up to C units by image type: the estimated cost of a case
  above ``total / (2 C)`` is split so that each part is about that size at most. The image-type
  parts of all the case's parameter sets (``Original``, each LoG sigma, ``Wavelet``, ...) are
  spread over the units largest first into the lightest, the shape features (and the
  ``diagnostics_*``) of every parameter set go with the first unit, where parameter sets of one
  shape group share them; the parent merges the parts of a (case, parameter set) back into one
  result. pyradiomics computes each filtered image's features independently of the others, so
  the merged features equal one ``execute``; a split case is read (and preprocessed) once per
  part instead of once (a fraction of a second against minutes of features, measured).

Estimated cost of a case: its size (``roi_volume_ml`` from the ``cases`` table when every task
has one, else the bytes of its image and mask files) times the summed weights of its parameter
sets' image types (``IMAGE_TYPE_WEIGHTS``: a wavelet decomposition makes 8 images, a LoG sigma
one) and shape groups (``SHAPE_WEIGHT``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from assets.radiomics.incremental import Pair
from assets.radiomics.params import read_params

# filtered images an image type yields (its relative cost); unknown types count 1
IMAGE_TYPE_WEIGHTS = {"Wavelet": 8, "LBP3D": 3}
# the shape features of a case: on a large ROI the maximum-diameter search costs about as much
# as 5 filtered images' texture features (CT_head, 2.2 l at 1 mm: 38 s vs 7 s for Original)
SHAPE_WEIGHT = 5.0


@dataclass
class Job:
    """One parameter set of a unit: ``image_types`` None = all of them (the case is not split)."""

    pair: Pair
    image_types: dict[str, dict] | None = None
    shape: bool = True  # whether this part computes the shape features

    def worker_args(self) -> tuple[str, str, dict[str, dict] | None, bool]:
        return (self.pair.params_id, self.pair.params_path, self.image_types, self.shape)


@dataclass
class Unit:
    """What one worker call extracts: one case under the jobs' parameter sets (or parts of them)."""

    task: Mapping[str, Any]
    jobs: list[Job] = field(default_factory=list)
    cost: float = 0.0


@dataclass(frozen=True)
class ParamsParts:
    """A parameter set's image types as separable parts ``({type: custom args}, weight)`` (LoG
    one part per sigma), and whether (and with which settings) it computes shape features."""

    parts: tuple[tuple[dict[str, dict], float], ...]
    shape: bool
    shape_group: str  # parameter sets with the same group compute the same shape features


def params_parts(params_path: str | os.PathLike) -> ParamsParts:
    """``ParamsParts`` of a parameter file; pyradiomics' defaults: ``Original``, every class."""
    import json

    from assets.radiomics.extract import AFTER_LOAD_SETTINGS, SHAPE_SETTINGS

    content = read_params(params_path)
    settings = content.get("setting") or {}
    types = content.get("imageType") or {"Original": {}}
    parts: list[tuple[dict[str, dict], float]] = []
    for name, custom in types.items():
        custom = dict(custom or {})
        sigmas = custom.get("sigma", settings.get("sigma"))
        if name == "LoG" and isinstance(sigmas, list) and len(sigmas) > 1:
            parts.extend(({name: {**custom, "sigma": [s]}}, 1.0) for s in sigmas)
        else:
            parts.append(({name: custom}, float(IMAGE_TYPE_WEIGHTS.get(name, 1))))
    classes = content.get("featureClass")
    shape = classes is None or "shape" in classes or "shape2D" in classes
    group = {k: v for k, v in settings.items() if k not in AFTER_LOAD_SETTINGS}
    group |= {k: settings.get(k) for k in SHAPE_SETTINGS}
    group["classes"] = {k: (classes or {}).get(k) for k in ("shape", "shape2D")}
    return ParamsParts(tuple(parts), shape, json.dumps(group, sort_keys=True, default=repr))


def _input_bytes(task: Mapping[str, Any]) -> int:
    """Bytes of a case's image (a file, or the files of a series folder) and mask."""
    total = 0
    for key in ("image_path", "mask_path"):
        path = str(task.get(key) or "")
        try:
            if os.path.isdir(path):
                with os.scandir(path) as entries:
                    total += sum(e.stat().st_size for e in entries if e.is_file())
            elif path:
                total += os.path.getsize(path)
        except OSError:
            continue
    return total


def plan_units(pairs: Sequence[Pair], workers: int) -> list[Unit]:
    """The pairs to extract as units of work, largest estimated cost first (module docstring)."""
    by_case: dict[str, list[Pair]] = {}
    for pair in pairs:
        by_case.setdefault(pair.case_id, []).append(pair)
    tasks = [group[0].task for group in by_case.values()]
    use_volume = bool(tasks) and all(
        isinstance(t.get("roi_volume_ml"), int | float) and t["roi_volume_ml"] > 0 for t in tasks
    )
    info = {path: params_parts(path) for path in {p.params_path for p in pairs}}  # once a file
    units = []
    for group in by_case.values():
        task = group[0].task
        size = float(task["roi_volume_ml"]) if use_volume else float(_input_bytes(task) or 1)
        weight = sum(w for p in group for _, w in info[p.params_path].parts)
        weight += _shape_weight([info[p.params_path] for p in group])
        units.append(Unit(task=task, jobs=[Job(p) for p in group], cost=size * weight))
    total = sum(u.cost for u in units)
    share = total / (2 * max(1, workers))
    out = []
    for unit in units:
        k = min(max(1, workers), math.ceil(unit.cost / share)) if share > 0 else 1
        out.extend(_split(unit, k, info) if k > 1 else [unit])
    out.sort(key=lambda u: u.cost, reverse=True)
    return out


def _shape_weight(infos: Sequence[ParamsParts]) -> float:
    """Shape features are computed once per shape group of a case (``extract.shape_key``)."""
    return SHAPE_WEIGHT * len({i.shape_group for i in infos if i.shape})


def _split(unit: Unit, k: int, info: Mapping[str, ParamsParts]) -> list[Unit]:
    """``unit`` as up to ``k`` units: every parameter set's image-type parts spread over ``k``
    bins of about equal weight (largest first into the lightest bin), the shape features (shared
    by parameter sets of one shape group) in bin 0. A case whose parameter sets have one image
    type each stays whole."""
    jobs = unit.jobs
    if all(len(info[job.pair.params_path].parts) == 1 for job in jobs):
        return [unit]
    weights = [0.0] * k
    weights[0] = _shape_weight([info[job.pair.params_path] for job in jobs])
    items = [
        (weight, j, part)
        for j, job in enumerate(jobs)
        for part, weight in info[job.pair.params_path].parts
    ]
    bins: list[list[tuple[int, dict]]] = [[] for _ in range(k)]
    for weight, j, part in sorted(items, key=lambda item: -item[0]):  # stable: file order kept
        lightest = min(range(k), key=lambda b: weights[b])
        bins[lightest].append((j, part))
        weights[lightest] += weight
    pieces = []
    first = {j: 0 for j, job in enumerate(jobs) if info[job.pair.params_path].shape}
    for index, members in enumerate(bins):
        piece = Unit(task=unit.task, cost=unit.cost * weights[index] / sum(weights))
        for j, job in enumerate(jobs):
            types = _merge([part for member, part in members if member == j])
            if not types and first.get(j) != index:
                continue
            is_first = first.setdefault(j, index) == index
            piece.jobs.append(Job(job.pair, types, shape=is_first))
        if piece.jobs:
            pieces.append(piece)
    return pieces


def _merge(parts: list[dict[str, dict]]) -> dict[str, dict]:
    """Image-type parts of one parameter set as one ``enabledImagetypes`` (LoG sigmas joined)."""
    merged: dict[str, dict] = {}
    for part in parts:
        ((name, custom),) = part.items()
        if name in merged and "sigma" in custom:
            merged[name] = {**merged[name], "sigma": [*merged[name]["sigma"], *custom["sigma"]]}
        else:
            merged[name] = custom
    return merged
