"""Domain packages of radlake: pure logic modules plus a thin Dagster layer (``defs.py``)."""
