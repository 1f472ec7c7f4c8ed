"""radlake's Dagster code location and lake core (paths, atomic Parquet writes, catalog, CLI)."""
