"""Other DuckDB clients for tests: an older DuckDB in its own virtualenv, the DuckDB npm package.

Each is installed once into a cache (``RADLAKE_TEST_CACHE``, default ``~/.cache/radlake-tests``)
keyed by version: built in a temporary folder and renamed into place, so parallel runs never see
half an install. When an install fails (no network), the test fails in CI and is skipped elsewhere.
``digests.py`` / ``digests.mjs`` print every catalog view's row count and row digest.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PYTHON_DUCKDB = "1.4.*"  # the long-term-support line that notebooks pin (issue 21)
NODE_DUCKDB = "1.5.6-r.1"  # @duckdb/node-api: the newest 1.x client, a second engine and language


def _unavailable(message: str):
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _cached(name: str, build: Callable[[Path], None]) -> Path:
    cache = Path(os.environ.get("RADLAKE_TEST_CACHE", Path.home() / ".cache" / "radlake-tests"))
    target = cache / name
    if (target / ".complete").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))
    try:
        build(work)
        (work / ".complete").touch()
        if target.exists() and not (target / ".complete").exists():
            shutil.rmtree(target, ignore_errors=True)  # an incomplete leftover
        with contextlib.suppress(OSError):  # a parallel run renamed its copy first
            os.rename(work, target)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        output = getattr(exc, "stderr", None) or getattr(exc, "output", None) or ""
        _unavailable(f"cannot install test client {name}: {exc} {str(output)[-500:]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def python_duckdb(spec: str = PYTHON_DUCKDB) -> Path:
    """The python of a cached virtualenv holding only ``duckdb==spec``."""

    def build(venv: Path) -> None:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
        subprocess.run(
            [*pip, "-q", f"duckdb=={spec}"], check=True, capture_output=True, text=True, timeout=600
        )

    return _cached(f"python-duckdb-{spec.replace('*', 'x')}", build) / "bin" / "python"


def node_duckdb(version: str = NODE_DUCKDB) -> Path:
    """A cached folder with ``@duckdb/node-api@version`` installed and ``digests.mjs`` beside it."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("node and npm are not installed")

    def build(folder: Path) -> None:
        (folder / "package.json").write_text('{"private": true, "type": "module"}\n')
        command = ["npm", "install", "--no-audit", "--no-fund", f"@duckdb/node-api@{version}"]
        subprocess.run(command, cwd=folder, check=True, capture_output=True, text=True, timeout=600)

    folder = _cached(f"node-duckdb-{version}", build)
    shutil.copyfile(HERE / "digests.mjs", folder / "digests.mjs")  # ESM resolves from its folder
    return folder


def run_digests(command: list[str], cwd: Path) -> dict:
    """Run a digests script; its JSON answer (the DuckDB version and every view's digest)."""
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def python_digests(python: Path, home: Path, cwd: Path, from_cwd: bool = False) -> dict:
    return run_digests(
        [str(python), str(HERE / "digests.py"), str(home), *(["--cwd"] if from_cwd else [])], cwd
    )


def node_digests(folder: Path, home: Path, cwd: Path) -> dict:
    return run_digests(["node", str(folder / "digests.mjs"), str(home)], cwd)
