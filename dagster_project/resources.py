"""Dagster resources: the lake home (paths, pseudonymizer) and the extraction backend."""

import dagster as dg
from pydantic import PrivateAttr

from dagster_project.lake import Lake
from dagster_project.pseudonym import Pseudonymizer


class LakeResource(dg.ConfigurableResource):
    """Where the lake lives. ``home`` defaults to LAKE_HOME (or ./lakehouse)."""

    home: str | None = None
    audit: bool = True  # write-audit-publish: every write is audited by the tables' suites

    _run_lock: int | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Hold this run's lock file for the life of the process (``instance.reap_dead_runs``)."""
        import fcntl
        import os

        from dagster_project.instance import run_lock_path

        run_id = getattr(context, "run_id", None)
        if not run_id:
            return
        path = run_lock_path(Lake.at(self.home), run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared: each step process holds it
        except BlockingIOError:
            os.close(fd)
            return
        self._run_lock = fd

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        import os

        if self._run_lock is not None:
            os.close(self._run_lock)
            self._run_lock = None

    def lake(self) -> Lake:
        """The lake whose writes are audited before they are published (``quality.audit``)."""
        from quality.audit import audit_tables

        return Lake.at(self.home, auditor=audit_tables if self.audit else None)

    def pseudonymizer(self) -> Pseudonymizer:
        return Pseudonymizer.for_lake(self.lake().home)


class ExtractionBackend(dg.ConfigurableResource):
    """How feature extraction runs: ``local`` (process pool) or ``dask`` (a distributed scheduler).

    ``dask_address``: ``tcp://host:8786`` of a running scheduler (dask-jobqueue, Kubernetes), or
    ``local:N`` for a LocalCluster of N worker processes. ``max_workers`` 0 means all cores.
    """

    kind: str = "local"
    max_workers: int = 0
    dask_address: str = "local:2"
    batch_size: int = 16
