"""Dagster resources: the lake home (paths, pseudonymizer) and the extraction backend."""

import dagster as dg

from dagster_project.lake import Lake
from dagster_project.pseudonym import Pseudonymizer


class LakeResource(dg.ConfigurableResource):
    """Where the lake lives. ``home`` defaults to LAKE_HOME (or ./lakehouse)."""

    home: str | None = None
    audit: bool = True  # write-audit-publish: every write is audited by the tables' suites

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
