"""The demo: a generated two-center GIST landing zone plus its own cohorts and study.

Everything here belongs to the demo only. ``generate_demo`` writes the landing zone AND the demo's
cohort SQL (``LAKE_HOME/sql/cohorts/``) and study (``LAKE_HOME/studies/``) into the lake it makes,
so a user's own lake never shows them.
"""

from radlake.demo.generator import generate_demo, simulate_cohort

__all__ = ["generate_demo", "simulate_cohort"]
