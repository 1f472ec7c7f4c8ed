"""From lake to paper: Table 1, patient flow, reporting checklists, model card (pure, no Dagster)."""
