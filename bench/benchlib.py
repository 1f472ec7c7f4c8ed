"""Shared helpers of the bench scripts: load average, machine facts, timing, tables, JSON results.

Not a benchmark itself. Every measurement records ``os.getloadavg()`` next to it, because other
work may share the machine; results go to ``bench/results/<name>.json`` (git-ignored).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
PACKAGES = (
    "dagster",
    "pydicom",
    "pyradiomics-bhklab",
    "simpleitk",
    "great_expectations",
    "dask",
    "distributed",
    "polars",
    "duckdb",
    "pandas",
    "numpy",
    "scikit-learn",
    "xgboost-cpu",
)


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_total_gb": mem_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
    }


def timed(function: Callable[[], Any]) -> tuple[float, Any, list[float]]:
    """(seconds, return value, load average at the end) of one call."""
    start = time.perf_counter()
    value = function()
    return time.perf_counter() - start, value, load()


def repeat(function: Callable[[], Any], times: int) -> dict[str, Any]:
    """``times`` calls: every time with its load average, and the median."""
    runs = []
    value = None
    for _ in range(times):
        seconds, value, after = timed(function)
        runs.append({"s": round(seconds, 4), "load": after})
    seconds = [r["s"] for r in runs]
    return {
        "median_s": round(statistics.median(seconds), 4),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "runs": runs,
        "value": value,
    }


def run_python(code: str, env: dict[str, str] | None = None) -> float:
    """Wall seconds of ``python -c code`` in a fresh interpreter (started in the repo)."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    return time.perf_counter() - start


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain text table: numbers right-aligned, text left-aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    text = [i == 0 or any(isinstance(r[i], str) for r in rows) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        parts = [
            row[i].ljust(widths[i]) if text[i] else row[i].rjust(widths[i]) for i in range(len(row))
        ]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    return str(value)


def write_result(name: str, result: dict[str, Any], path: Path | None = None) -> Path:
    """Write ``result`` with date, machine and load average to ``bench/results/<name>.json``."""
    path = path or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_at_end": load(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        **result,
    }
    path.write_text(json.dumps(document, indent=2, default=str))
    print(f"results written to {path}")
    return path
