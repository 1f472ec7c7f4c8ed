"""Units of work for a parallel extraction: one per case, a dominant case split by image type.

The limit of a parallel extraction on C workers is the sum of the single-case times divided by C,
but only when no case takes longer than that share: a whole-body PET or a large CT with LoG and
wavelet filters can take most of a small run's time, and one worker then finishes it long after
the others are idle. So:

- **One unit per case** holding every parameter set the case needs: the worker reads the case
  once and shares the preprocessing between parameter sets that allow it (``extract.run_case``).
- **Largest first** (estimated cost, below), so that no big case is left for last.
- **A dominant case is split** into up to C units by image type: the estimated cost of a case
  above ``total / (2 C)`` is split so that each part is about that size at most. Each part
  computes a subset of every parameter set's image types (``Original``, each LoG sigma,
  ``Wavelet``, ...), the shape features go with the first part; the parent merges the parts of
  a (case, parameter set) back into one result. pyradiomics computes each filtered image's
  features independently of the others, so the merged features equal one ``execute``; a split
  case is read (and preprocessed) once per part instead of once.

Estimated cost of a case: its size (``roi_volume_ml`` from the ``cases`` table when every task
has one, else the bytes of its image and mask files) times the summed image-type weights of its
parameter sets (``IMAGE_TYPE_WEIGHTS``: a wavelet decomposition makes 8 images, a LoG sigma one).
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


def image_type_parts(params_path: str | os.PathLike) -> list[tuple[dict[str, dict], float]]:
    """The params file's image types as separable parts ``({type: custom args}, weight)``, LoG
    one part per sigma; pyradiomics' default (no ``imageType``) is ``Original``."""
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
    return parts


def _spread(parts: list[tuple[dict[str, dict], float]], k: int) -> list[dict[str, dict]]:
    """``parts`` in ``k`` bins of about equal weight (largest first into the lightest bin),
    each bin's image types in the file's order, LoG sigmas of one bin merged; no empty bin."""
    k = min(k, len(parts))
    bins: list[list[int]] = [[] for _ in range(k)]
    weights = [0.0] * k
    for index in sorted(range(len(parts)), key=lambda i: -parts[i][1]):
        lightest = min(range(k), key=lambda b: weights[b])
        bins[lightest].append(index)
        weights[lightest] += parts[index][1]
    out = []
    for members in bins:
        merged: dict[str, dict] = {}
        for index in sorted(members):
            ((name, custom),) = parts[index][0].items()
            if name in merged and "sigma" in custom:
                merged[name] = {**merged[name], "sigma": [*merged[name]["sigma"], *custom["sigma"]]}
            else:
                merged[name] = custom
        out.append(merged)
    return out


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
    parts = {p.params_path: image_type_parts(p.params_path) for p in pairs}
    units = []
    for group in by_case.values():
        task = group[0].task
        size = float(task["roi_volume_ml"]) if use_volume else float(_input_bytes(task) or 1)
        weight = sum(sum(w for _, w in parts[p.params_path]) for p in group)
        units.append(Unit(task=task, jobs=[Job(p) for p in group], cost=size * weight))
    total = sum(u.cost for u in units)
    share = total / (2 * max(1, workers))
    out = []
    for unit in units:
        k = min(max(1, workers), math.ceil(unit.cost / share)) if share > 0 else 1
        out.extend(_split(unit, k, parts) if k > 1 else [unit])
    out.sort(key=lambda u: u.cost, reverse=True)
    return out


def _split(unit: Unit, k: int, parts: Mapping[str, list]) -> list[Unit]:
    """``unit`` as up to ``k`` units, each with a share of every parameter set's image types
    (a case whose parameter sets have one image type each stays whole)."""
    if all(len(parts[job.pair.params_path]) == 1 for job in unit.jobs):
        return [unit]
    pieces = [Unit(task=unit.task, cost=unit.cost / k) for _ in range(k)]
    for job in unit.jobs:
        for index, image_types in enumerate(_spread(parts[job.pair.params_path], k)):
            pieces[index].jobs.append(Job(job.pair, image_types, shape=index == 0))
    return [piece for piece in pieces if piece.jobs]
