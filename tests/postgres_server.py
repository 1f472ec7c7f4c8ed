"""A real, throwaway PostgreSQL server for tests: Debian's `postgresql` binaries, initdb in a temporary
folder, one free loopback port, stopped and deleted at the end.

PostgreSQL refuses to run as root: as root (CI) the cluster belongs to the `postgres` system user
that Debian's package creates (or `nobody`), and every server command runs through `runuser`.
`make test` installs the package when missing (the Makefile's `postgres` target).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def postgres_bin() -> Path | None:
    """The folder of initdb/pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3])
    )
    return versions[-1].parent if versions else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def postgres_server(database: str = "dagster") -> Iterator[str]:
    """Start a server, create ``database``, yield its URL, stop the server and delete its files."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        message = "PostgreSQL is not installed (make postgres installs Debian's package)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    prefix: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="radlake-pg-"))
    if os.geteuid() == 0:
        user = next(u for u in ("postgres", "nobody") if _user_exists(u))
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
        prefix = ["runuser", "-u", user, "--"]
    data, port = root / "data", _free_port()

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, text=True, timeout=120)

    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", "radlake", "--auth=trust",
            "-E", "UTF8", "--locale=C", "--no-sync")  # fmt: skip
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"),
            "-o", options, "-w", "-t", "60", "start")  # fmt: skip
        try:
            run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "radlake",
                database)  # fmt: skip
            yield f"postgresql+psycopg2://radlake@127.0.0.1:{port}/{database}"
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    except subprocess.CalledProcessError as error:
        log = root / "server.log"
        detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"{error.cmd}: {error.stderr or error.stdout}\n{detail}") from error
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
