"""`radlake serve`: the Dagster webserver and the daemon (sensors, schedules, run queue) on one instance.

On a lab server the instance keeps its runs and events in PostgreSQL (``DAGSTER_PG_URL``, see
``instance.py``), so both processes, every run and the `radlake` command share them; without it,
the same two processes use the local files in DAGSTER_HOME (one machine). The processes run until
one of them ends or radlake receives SIGINT/SIGTERM; then both are stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dagster_project.instance import ensure_dagster_home, pg_url_problem
from dagster_project.lake import Lake

REPO = Path(__file__).resolve().parents[1]
STOP_TIMEOUT_S = 30


class ServeError(Exception):
    pass


def serve_commands(host: str, port: int) -> list[list[str]]:
    """The daemon and the webserver, on the repository's workspace.yaml."""
    bin_dir = Path(sys.executable).parent
    workspace = ["-w", str(REPO / "workspace.yaml")]
    return [
        [str(bin_dir / "dagster-daemon"), "run", *workspace],
        [str(bin_dir / "dagster-webserver"), *workspace, "-h", host, "-p", str(port)],
    ]


def serve(host: str, port: int) -> int:
    url = os.environ.get("DAGSTER_PG_URL")
    if url and (problem := pg_url_problem(url)):
        raise ServeError(problem)
    lake = Lake.at()
    home = ensure_dagster_home(lake)
    config = (home / "dagster.yaml").read_text(encoding="utf-8")
    on_postgres = "postgres_url" in config
    if url and not on_postgres:
        raise ServeError(
            f"DAGSTER_PG_URL is set but {home / 'dagster.yaml'} keeps runs in local files: point "
            "DAGSTER_HOME at a new folder (radlake writes a PostgreSQL dagster.yaml there) or add "
            "the storage section shown in README.md (Running on a lab server)"
        )
    if on_postgres and not url:
        raise ServeError(f"{home / 'dagster.yaml'} reads DAGSTER_PG_URL, which is not set")
    env = {**os.environ, "LAKE_HOME": str(lake.home), "DAGSTER_HOME": str(home)}
    env.setdefault("GX_ANALYTICS_ENABLED", "false")
    storage = "PostgreSQL (DAGSTER_PG_URL)" if on_postgres else f"local files in {home}"
    print(f"radlake serve: runs and events in {storage}; LAKE_HOME={lake.home}", flush=True)
    print(f"radlake serve: Dagster UI on http://{host}:{port}", flush=True)

    processes = [
        subprocess.Popen(command, env=env, cwd=REPO) for command in serve_commands(host, port)
    ]
    stopping = []

    def stop(signum, _frame):
        stopping.append(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    ended: list[subprocess.Popen] = []
    try:
        while not stopping and not ended:
            time.sleep(0.5)
            ended = [p for p in processes if p.poll() is not None]
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if stopping or not ended:
        return 0
    print(f"radlake serve: {Path(ended[0].args[0]).name} exited with {ended[0].returncode}")
    return ended[0].returncode or 1
